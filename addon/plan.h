// The layout of a sandbox's setup plan: a versioned flat buffer that lib/plan/encode.ts
// writes and the setup child walks op by op, in order (as bubblewrap's setup_newroot walks its
// SetupOp list). Every decision was made in TypeScript: which mounts, in which order, with
// which options and attributes, which step a failure reports. The addon checks the buffer's
// shape before clone (plan_check) and the child only carries the ops out. The addon exports
// these numbers at load (planLayout) and a test checks that lib/plan/encode.ts agrees.
//
//   header   plan_header (32 bytes, little-endian as the host)
//   ops      op_count times: plan_op (16 bytes), then `nstr` NUL-terminated strings,
//            padded with zeros to a multiple of 8 (`size` counts all of it)
//
// An op's `fd` is an index into the fds that travel with the plan (the detached trees of the
// layers and binds, in order): the parent's own numbers for a child cloned after they were
// opened, or those received with the go message by a blank.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include <string>
#include <vector>

#define HUTCH_PLAN_MAGIC 0x4e4c5048u  // "HPLN"
#define HUTCH_PLAN_VERSION 1u
// The largest plan: a blank's receive buffer is this big (its plan arrives with go).
#define HUTCH_PLAN_MAX (128u * 1024u)

struct plan_header {
  uint32_t magic;
  uint16_t version;
  uint16_t header_size;  // sizeof(plan_header)
  uint32_t length;       // the whole buffer, header included
  uint32_t op_count;
  uint32_t fd_count;     // fds travelling with the plan
  int32_t fail_step;     // tests only (lib/plan/testing.ts): fail this step once, or -1
  int32_t fail_errno;    // the errno the injected failure reports (positive)
  uint32_t reserved;     // zero
};
static_assert(sizeof(plan_header) == 32, "plan_header layout");

struct plan_op {
  uint16_t type;   // plan_op_type
  uint16_t step;   // hutch_step a failure of this op reports (steps.h)
  uint32_t size;   // this op, header and strings and padding, a multiple of 8
  int32_t fd;      // index into the plan's fds, or -1
  uint16_t flags;  // per type, below
  uint16_t nstr;   // NUL-terminated strings after the header
  uint32_t attrs;  // MOUNT_ATTR_* for fsmount / mount_setattr
  uint32_t reserved;
};
static_assert(sizeof(plan_op) == 24, "plan_op layout");

// Op types: the string arguments each takes, in order. The first names what a failure of the
// op is about (the error's path), unless the op says otherwise.
#define HUTCH_PLAN_OPS(X)                                                                        \
  X(HOSTNAME, 1)        /* name */                                                               \
  X(CHDIR_LAYERS, 2)    /* the store's layers dir: later layer names resolve from it */          \
  X(OVERLAY_BEGIN, 3)   /* layer names, top first; fd: first idmapped layer tree or -1 */        \
  X(ROOT_MOUNTPOINT, 4) /* the host dir the root is attached at */                               \
  X(UPPER_DIR, 5)       /* persistent: the on-disk dir holding upper/ and work/ */               \
  X(SETID, 6)           /* "setgroups": become root of the sandbox's user namespace */           \
  X(SCRATCH, 7)         /* "tmpfs", its size in bytes (decimal) */                               \
  X(OVERLAY_FINISH, 8)  /* legacy: mount(2) data up to ",upperdir=" (the child adds the rest) */ \
  X(BIND, 9)            /* target (relative); fd: the detached tree; PATH: then the source, fd -1 */ \
  X(MOUNT, 10)          /* target (in the root), fstype, then key, value pairs for fsconfig */   \
  X(DEV_NODE, 11)       /* host device path, target (relative): a file with the host node bound */ \
  X(SYMLINK, 12)        /* path (in the root), link text */                                      \
  X(MASK, 13)           /* path (relative): /dev/null over a file, an empty ro tmpfs over a dir */ \
  X(READONLY, 14)       /* path (relative): a read-only clone of the subtree over itself */      \
  X(READONLY_ROOT, 15)  /* "/": the root itself read-only (not recursive) */                     \
  X(PIVOT_ROOT, 16)     /* "/" */                                                                \
  X(LOCK_MOUNTS, 17)    /* detail: copy the namespace into the sandbox's user namespace */

enum plan_op_type : uint16_t {
#define X(id, n) OP_##id = n,
  HUTCH_PLAN_OPS(X)
#undef X
  OP_MAX
};

// flags
#define PLAN_F_LEGACY 1u  // OVERLAY_BEGIN/FINISH: mount(2) data (kernels before 6.8)
#define PLAN_F_FILE 2u    // BIND: create the target as a file when missing
#define PLAN_F_PATH 4u    // BIND: the child clones the source path itself (user mode: the parent may not), attrs set

// The most fds one go message carries to a blank child (the kernel's SCM_MAX_FD).
static const size_t kMaxGoFds = 253;

// A plan's op, checked: its strings located.
struct plan_cursor {
  const uint8_t *at;   // the next op
  const uint8_t *end;  // the end of the buffer
};

// parent, before clone: 0 when `buf` is a well-formed plan with `nfds` fds, else a static
// message naming what is wrong (the caller throws it before anything is cloned).
const char *plan_check(const uint8_t *buf, size_t len, size_t nfds);
// child (or parent): the next op and its first string (or ""); false at the end. Only on a
// buffer plan_check accepted.
bool plan_next(plan_cursor &c, const plan_op **op, const char **s0);
// child: the string after `s` (strings are consecutive, NUL-terminated).
static inline const char *plan_str_next(const char *s) {
  while (*s) s++;
  return s + 1;
}

struct plan {
  // A blank child is cloned before its setup is known: its plan (into `buf`, HUTCH_PLAN_MAX
  // reserved before clone) and fds come with the go message.
  bool blank = false;
  std::vector<uint8_t> buf;  // the encoded plan, per child (never shared between setups)
  size_t fd_count = 0;
  int fds[kMaxGoFds];        // the plan's fds, by index
  int fail_step = -1;        // tests only: from the header (or cloneBlank's options)
  int fail_errno = 0;

  std::vector<std::string> init_args;
  std::vector<const char *> init_argv;  // points into init_args, NULL-terminated
  std::vector<const char *> init_envp;  // empty, NULL-terminated: init needs no environment

  // Set up by clone.cc before clone.
  int init_fd = -1;    // sealed memfd holding the init binary
  int sync_fd = -1;    // go: one byte (a blank's: the plan and its fds) on a SEQPACKET socket
  int err_fd = -1;     // child writes a setup_error record; close-on-exec, so EOF means exec happened
  int ctl_fd = -1;     // the child's end of the control socket; becomes fd 3 of init
  std::vector<int> join_fds;  // v1 `tasks` files, opened by the parent: the child writes "0" to each
  std::vector<std::string> join_paths;  // their paths, for the error record
  // The helper that makes the setup mount namespace (child_lock.cc): its stack (CLONE_VM) and
  // the pipe it reports on, made by the child.
  std::vector<char> holder_stack;
  int holder_pipe[2] = {-1, -1};
  int holder_pid = -1;
  // CLONE_FILES (clone.cc clone_and_map): the child starts on the parent's fd table, unshares
  // it at once keeping only fds below `unshare_below` (close_range CLOSE_RANGE_UNSHARE), then
  // sets `files_word` to 0 and wakes the parent, which waits for that before it touches any fd.
  // 0 / -1: the child got its own copy of the whole table at clone.
  uint32_t files_word = 0;
  int unshare_below = -1;
  int parent_fds[3] = {-1, -1, -1};  // the parent's ends (sync write, error read, control): the
                                     // child closes its copies first, or the parent's death
                                     // would never reach it as EOF
};

// child.cc: the setup sequence. Runs in the child between clone and exec: async-signal-safe
// only, no allocation. Never returns.
[[noreturn]] void run_child(plan &p);
