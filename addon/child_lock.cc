// Locking the sandbox's mounts against everything that runs inside it, whatever capabilities
// it was given. The kernel locks mounts when it copies a mount namespace into one owned by a
// different user namespace (copy_mnt_ns, fs/namespace.c): each copy keeps its read-only,
// nosuid, nodev, noexec and atime flags for good (MNT_LOCK_*), and each child is locked over
// its mountpoint (MNT_LOCKED). No capability undoes either: mount_setattr, a remount or a
// clone of the mount cannot clear a locked flag, umount and move_mount refuse a locked mount.
//
// So the setup child makes every mount of the sandbox in a setup mount namespace owned by a
// user namespace nested in the sandbox's (setup_mount_ns_in_child), and once its root is
// complete copies that namespace into a new one owned by the sandbox's own user namespace
// (lock_mounts_in_child): the one init and everything it starts live in. The processes keep
// the sandbox's user namespace, which still owns its pid, network, UTS and IPC namespaces, so
// a granted capability means what it meant; only the mounts set up by hutch became immovable.
//
// Every function here runs in the setup child between clone and exec: raw syscalls only
// (rsys*, -errno), no allocation.
#include <string.h>
#include <sys/syscall.h>
#include <poll.h>
#include <signal.h>

#include "child.h"
#include "sys.h"

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

// The helper of setup_mount_ns_in_child, in its own task (CLONE_VM: on the stack the plan
// holds; CLONE_FILES at first: our fd table): becomes the sandbox's root (its own credentials
// only: ours stay host root's, to open the store's paths), makes the setup user and mount
// namespaces, opens its mount namespace into the shared fd table and reports the fd on the
// pipe. Then it leaves the shared table, closes its copy of it, and waits to be killed: its
// death (off our path) frees the setup namespace, a synchronize_rcu our own exit from it would
// pay. A new user namespace needs an owner mapped in its parent, which host root is not in
// the sandbox's. Its own /proc/thread-self needs no ptrace access check, as a pidfd or another
// task's /proc/<pid>/ns would (the shared memory is not dumpable once a task changed its ids).
static int hold_setup_ns(void *arg) {
  const plan *p = static_cast<const plan *>(arg);
  long r = rsys3(SYS_setresgid, 0, 0, 0);
  if (r == 0) r = rsys3(SYS_setresuid, 0, 0, 0);
  if (r == 0) r = rsys1(SYS_unshare, CLONE_NEWUSER | CLONE_NEWNS);
  if (r == 0) r = rsys4(SYS_openat, AT_FDCWD, "/proc/thread-self/ns/mnt", O_RDONLY | O_CLOEXEC, 0);
  int v = (int)r;
  long n;
  do n = rsys3(SYS_write, p->holder_pipe[1], &v, sizeof v); while (n == -EINTR);
  if (rsys1(SYS_unshare, CLONE_FILES) == 0) rsys3(SYS_close_range, 0, ~0U, 0);
  for (;;) rsys4(SYS_ppoll, nullptr, 0, nullptr, nullptr);
  return 0;
}

// child; raw syscalls; first of all mount steps (the id maps are written). Moves this child
// from the host's mount namespace (clone3 made none: a copy there would only be torn down)
// into a copy of it owned by a user namespace nested in the sandbox's. This child keeps its
// user namespace, where it holds every capability, and so the capabilities over the nested
// one that it needs to mount there. The helper stays until lock_mounts_in_child.
int setup_mount_ns_in_child(plan &p) {
  int fds[2];
  int r = (int)rsys2(SYS_pipe2, fds, O_CLOEXEC);
  if (r < 0) return r;
  p.holder_pipe[0] = fds[0];
  p.holder_pipe[1] = fds[1];
  int pidfd = -1;
  struct clone_args a;
  memset(&a, 0, sizeof a);
  a.flags = CLONE_PIDFD | CLONE_FILES;
  a.pidfd = (uint64_t)(uintptr_t)&pidfd;
  a.exit_signal = SIGCHLD;  // init reaps it (reap_children), whenever it is gone
#if HUTCH_CLONE_VM
  a.flags |= CLONE_VM;
  a.stack = (uint64_t)(uintptr_t)p.holder_stack.data();
  a.stack_size = p.holder_stack.size();
  long pid = hutch_clone3_vm(&a, sizeof a, hold_setup_ns, &p);
#else
  long pid = rsys2(SYS_clone3, &a, sizeof a);
  if (pid == 0) rsys1(SYS_exit, hold_setup_ns(&p));
#endif
  int v = pid < 0 ? (int)pid : -EPROTO;
  if (pid >= 0) {
    // Its report, or its death (a readable pidfd) without one.
    struct pollfd pf[2] = {{fds[0], POLLIN, 0}, {pidfd, POLLIN, 0}};
    long k;
    do k = rsys4(SYS_ppoll, pf, 2, nullptr, nullptr); while (k == -EINTR);
    if (pf[0].revents & POLLIN) {
      long n;
      do n = rsys3(SYS_read, fds[0], &v, sizeof v); while (n == -EINTR);
      if (n != (long)sizeof v) v = -EPROTO;
    }
  }
  rsys1(SYS_close, fds[0]);
  rsys1(SYS_close, fds[1]);
  if (v >= 0) {
    r = (int)rsys2(SYS_setns, v, CLONE_NEWNS);
    rsys1(SYS_close, v);
  } else {
    r = v;
  }
  if (pid >= 0) {
    if (r < 0) rsys4(SYS_pidfd_send_signal, pidfd, SIGKILL, nullptr, 0);
    rsys1(SYS_close, pidfd);
  }
  // Its pid stays its own until it is reaped, by us (init) only: no pidfd needs to be kept
  // (a blank holds only its own four fds while it waits).
  if (r == 0) p.holder_pid = (int)pid;
  return r;
}

// child; raw syscalls; after pivot_root, the last mount step. Copies the setup mount namespace
// into a new one owned by our own user namespace: every mount in the copy is locked. Then the
// helper goes: its exit frees the setup namespace (nothing else holds it), off our path.
int lock_mounts_in_child(plan &p) {
  int r = (int)rsys1(SYS_unshare, CLONE_NEWNS);
  rsys2(SYS_kill, p.holder_pid, SIGKILL);
  p.holder_pid = -1;
  return r;
}
