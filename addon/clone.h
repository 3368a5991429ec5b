// Shared by the files that clone a sandbox's child (addon/clone.cc, blank.cc, trees.cc,
// initbin.cc): the parent's side, on the main thread unless said otherwise.
#pragma once
#include <memory>
#include <string>

#include "addon.h"
#include "plan.h"

extern int g_init_fd;  // sealed memfd with the init binary (initbin.cc), made once per process

// What a clone needs besides the plan, read from JS on the main thread.
struct clone_req {
  std::string uid_map, gid_map;
  int cgroup_fd = -1;
  // Outside root mode: the holder user namespace to clone from (its ids are the maps' outer
  // ids), or -1; and whether to deny setgroups before the gid map (a one-id map).
  int userns_fd = -1;
  bool deny_setgroups = false;
  // A prepared network link (lib/network/linkpool.ts): a user namespace with the sandbox's
  // maps already written, and a network namespace it owns, both joined with setns instead of
  // CLONE_NEWUSER | CLONE_NEWNET; -1: none.
  int link_user_fd = -1, link_net_fd = -1;
};

// What a clone made: the parent's ends, and the CLONE_VM child's stack (to keep with its plan).
struct cloned {
  long pid = -1;
  int pidfd = -1, go_fd = -1, err_fd = -1, ctl_fd = -1;
  void *stack = nullptr;
  // On failure: the step, -errno and the path for the error.
  const char *fail_step = nullptr;
  int fail_err = 0;
  std::string fail_path;
};

// One open/write/close: 0 or -errno.
int write_file(const char *path, const char *data, size_t len);
// Reads the clone's arguments ({ uidMap, gidMap, cgroupFd, joinFiles }, each required and
// checked) and opens the v1 `tasks` files; throws (false) on bad arguments, or sets c.fail_*.
bool prepare_clone(Napi::Env env, const Napi::Value &v, const char *fn, plan &p, clone_req &req, cloned &c);
// Any thread (no N-API): clone3 into new namespaces and write the id maps.
void do_clone(plan *p, const clone_req &req, cloned &c);
// fd moved up to a quarter of RLIMIT_NOFILE or above (close-on-exec); itself when there is no room.
int move_high(int fd);
// Runs fn(arg) in a task of this process's memory that joined the user namespace nsfd, and
// waits for it: fn's result, or -errno when the task could not start or join. fn may use raw
// syscalls and our memory, no N-API and no JS (the calling thread is suspended meanwhile).
long run_in_userns(int nsfd, int (*fn)(void *), void *arg);
// Writes req's maps (setgroups denied first when asked) into the new user namespace of `pid`:
// 0 or -errno, `path` naming the file. `fail` < 0: fail as the tests' hook asks. Raw syscalls
// and our memory only: may run in a trampoline.
int write_id_maps(const clone_req &req, long pid, char *path, size_t path_len, int fail);
// clone3 with `flags` (CLONE_VM among them) running fn(arg) on `stack`, every signal blocked
// around it; no exit signal (reaped with waitid(__WALL)). The child's pid or -errno. Only
// where HUTCH_CLONE_VM.
long clone_vm_on(uint64_t flags, int *pidfd, void *stack, size_t stack_size, int (*fn)(void *), void *arg);
// fn(arg) in a CLONE_VM | CLONE_VFORK task (plus `flags`, and CLONE_PIDFD into *pidfd when
// given) on a stack of its own; this thread waits until it execs or exits. Its pid or -errno;
// the caller reaps it (waitid with __WALL: no exit signal). -ENOSYS without the trampoline.
long vfork_task(uint64_t flags, int (*fn)(void *), void *arg, int *pidfd, size_t stack_size);
void keep_child(std::unique_ptr<plan> p, const cloned &c, bool blank);
// The pending blank child `pid`'s plan and go socket, or nullptr.
plan *pending_blank(long pid, int *go_fd);
Napi::Value failure_of(Napi::Env env, const cloned &c);
Napi::Object cloned_object(Napi::Env env, const cloned &c);
bool check_init(Napi::Env env);
// Checks an encoded plan (a Buffer) and its fds (an array of fd numbers) before anything is
// cloned: throws (false) on anything malformed. Into `bytes` and `fds`, when given.
bool read_plan(Napi::Env env, const Napi::Value &buf, const Napi::Value &fds, const char *fn, std::vector<uint8_t> &bytes,
               std::vector<int> &fd_list);
