// The setup sequence of a sandbox: runs in the child of clone3. With CLONE_VM (x86_64,
// aarch64) the child shares the Node process's memory and its thread's TLS until exec; in
// any case it is a copy of a multithreaded process (libuv's pool, V8's helpers). Until
// execveat only raw syscalls on memory the parent prepared are allowed here (signal-safety(7)
// and more): no malloc, no C++ exceptions, no locks, no stdio, and no errno (it is the parent
// thread's): every call goes through rsys*(), which returns -errno.
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "child.h"
#include "sys.h"

// child; raw syscalls only. Writes the error record and exits; EOF on the pipe never comes.
[[noreturn]] void die_step(int err_fd, unsigned step, int err, const char *detail) {
  struct setup_error rec;
  memset(&rec, 0, sizeof rec);
  rec.step = step;
  rec.err = err < 0 ? -err : err;
  if (detail) {
    size_t i = 0;
    for (; detail[i] && i < sizeof rec.detail - 1; i++) rec.detail[i] = detail[i];
    rec.detail[i] = 0;
  }
  long n;
  do n = rsys3(SYS_write, err_fd, &rec, sizeof rec); while (n == -EINTR);
  for (;;) rsys1(SYS_exit_group, 127);
}

#define CHECK(step, expr, detail)                             \
  do {                                                        \
    long r_ = (expr);                                         \
    if (r_ < 0) die_step(p.err_fd, (step), (int)r_, (detail)); \
  } while (0)

// child; raw syscalls only. The steps that need nothing of the plan's setup half: a blank
// child takes them while it waits for go, any other child right after go. The id maps are
// written.
static void setup_without_plan(plan &p) {
  // Every mount of the sandbox is made in a namespace owned by a nested user namespace, so
  // that the copy init gets at the end (lock_mounts_in_child) is locked (child_lock.cc). We
  // leave the host's mount namespace for it here: clone3 made none.
  CHECK(STEP_MOUNT_NS, setup_mount_ns_in_child(p), "unshare(CLONE_NEWUSER|CLONE_NEWNS)");
  // Then, before anything else, nothing we mount may propagate to the host, nor the host's
  // mounts to us (on a systemd host "/" is shared: the copy starts as its slave).
  CHECK(STEP_MOUNT_PRIVATE, rsys5(SYS_mount, nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr), "/");
  // A new network namespace has `lo` down.
  CHECK(STEP_LOOPBACK, loopback_up_in_child(), "lo");
}

// child; raw syscalls only. One step per line, in the order of DESIGN.md.
[[noreturn]] void run_child(plan &p) {
  // The parent may die before it releases us: then the sync read sees EOF and we leave. That
  // needs our copies of the parent's ends closed first (we have a copy of its fd table).
  for (int fd : p.parent_fds) rsys1(SYS_close, fd);
  CHECK(STEP_SYNC, rsys2(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL), "prctl(PR_SET_PDEATHSIG)");
  // cgroup v1: join the sandbox's cgroups ourselves, while the parent writes the id maps.
  // "0" in `tasks` moves the writing thread alone, which the kernel does without its global
  // threadgroup lock, so without waiting for an RCU grace period as a pid written to
  // cgroup.procs by the parent does (1-10 ms). We are one thread; everything we start
  // inherits the cgroups. The fds were opened by host root (v1 checks the opener's creds).
  for (size_t i = 0; i < p.join_fds.size(); i++) {
    long w;
    do w = rsys3(SYS_write, p.join_fds[i], "0", 1); while (w == -EINTR);
    if (w < 0) die_step(p.err_fd, STEP_CGROUP, (int)w, p.join_paths[i].c_str());
    rsys1(SYS_close, p.join_fds[i]);
  }
  // A blank child (cloned ahead of its sandbox, maybe from a libuv pool thread) must not hold
  // anything of the process but its own four fds while it waits: a copy of a pipe's write end
  // that Node or libuv has just made (uv_spawn's exec-error pipe, a child's stdio) would keep
  // its reader from ever seeing EOF. Its setup's fds come with the go message.
  if (p.blank) {
    int keep[4] = {p.sync_fd, p.err_fd, p.ctl_fd, p.init_fd};
    for (int i = 1; i < 4; i++)
      for (int j = i; j > 0 && keep[j - 1] > keep[j]; j--) {
        int t = keep[j];
        keep[j] = keep[j - 1];
        keep[j - 1] = t;
      }
    unsigned from = 0;
    for (int i = 0; i < 4; i++) {
      if ((unsigned)keep[i] > from) rsys3(SYS_close_range, from, (unsigned)keep[i] - 1, 0);
      from = (unsigned)keep[i] + 1;
    }
    rsys3(SYS_close_range, from, ~0U, 0);
    // The parent says when the id maps are written (setup_mount_ns_in_child needs them).
    char maps = 0;
    long m;
    do m = rsys3(SYS_read, p.sync_fd, &maps, 1); while (m == -EINTR);
    if (m != 1) rsys1(SYS_exit_group, 127);  // the parent failed or died: it reports, not us
    setup_without_plan(p);
  }
  // Wait for go. A blank child gets the setup's fds with it, as new numbers in its own fd
  // table: they replace the parent's numbers in the plan, in order.
  char go = 0;
  struct iovec iov = {&go, 1};
  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(struct cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * kMaxGoFds)];
  msg.msg_control = cbuf;
  msg.msg_controllen = sizeof cbuf;
  long n;
  do n = rsys3(SYS_recvmsg, p.sync_fd, &msg, MSG_CMSG_CLOEXEC); while (n == -EINTR);
  if (n != 1) rsys1(SYS_exit_group, 127);  // the parent failed or died: it reports, not us
  rsys1(SYS_close, p.sync_fd);
  if (p.blank) {
    size_t want = p.layer_fds.size() + p.binds.size(), got = 0;
    int *fds = nullptr;
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      got = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      fds = (int *)CMSG_DATA(c);
    }
    if (got != want || (msg.msg_flags & MSG_CTRUNC)) die_step(p.err_fd, STEP_SYNC, -EPROTO, "go message");
    size_t k = 0;
    for (size_t i = 0; i < p.layer_fds.size(); i++) p.layer_fds[i] = fds[k++];
    for (size_t i = 0; i < p.binds.size(); i++) p.binds[i].tree_fd = fds[k++];
  }

  if (!p.blank) setup_without_plan(p);
  CHECK(STEP_HOSTNAME, rsys2(SYS_sethostname, p.hostname.c_str(), p.hostname.size()), p.hostname.c_str());

  // Still host root's fs ids: open what lies in the store (its dirs may be closed to this
  // sandbox's own range) — the layers, the mountpoint, a persistent layer's dir.
  int ovl_fs = -1, mnt_fd = -1, persistent_fd = -1, scratch_fd = -1, root_fd = -1;
  const char *where = nullptr;
  int r = overlay_begin_in_child(p, &ovl_fs, &where);
  if (r < 0) die_step(p.err_fd, where == p.layers_dir.c_str() ? STEP_LAYERS : STEP_OVERLAY, r, where);
  mnt_fd = (int)rsys4(SYS_openat, AT_FDCWD, p.root_mountpoint.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
  if (mnt_fd < 0) die_step(p.err_fd, STEP_ROOT_ATTACH, mnt_fd, p.root_mountpoint.c_str());
  int parent_fd = (int)rsys4(SYS_openat, mnt_fd, "..", O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
  if (parent_fd < 0) die_step(p.err_fd, STEP_ROOT_ATTACH, parent_fd, p.root_mountpoint.c_str());
  if (!p.upper_dir.empty()) {
    persistent_fd = (int)rsys4(SYS_openat, AT_FDCWD, p.upper_dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
    if (persistent_fd < 0) die_step(p.err_fd, STEP_SCRATCH, persistent_fd, p.upper_dir.c_str());
  }

  // Now become root of the new user namespace (the range's first id), so every file and mount
  // made below belongs to the sandbox, not to host root.
  CHECK(STEP_SETID, rsys2(SYS_setgroups, 0, nullptr), "setgroups");
  CHECK(STEP_SETID, rsys3(SYS_setresgid, 0, 0, 0), "setresgid");
  CHECK(STEP_SETID, rsys3(SYS_setresuid, 0, 0, 0), "setresuid");
  // The cgroup namespace is made by init at the first exec (see init.c, start_exec).

  CHECK(STEP_SCRATCH, scratch_in_child(p, persistent_fd, &scratch_fd), p.upper_dir.empty() ? "tmpfs" : p.upper_dir.c_str());
  r = overlay_finish_in_child(p, ovl_fs, scratch_fd, mnt_fd, parent_fd, &root_fd, &where);
  if (r < 0) die_step(p.err_fd, where == p.root_mountpoint.c_str() ? STEP_ROOT_ATTACH : STEP_OVERLAY, r, where);
  r = binds_in_child(p, root_fd, &where);
  if (r < 0) die_step(p.err_fd, STEP_BIND, r, where);
  CHECK(STEP_PROC, proc_in_child(root_fd), "/proc");
  r = dev_in_child(p, root_fd, &where);
  if (r < 0) die_step(p.err_fd, STEP_DEV, r, where);
  r = mask_in_child(p, root_fd, &where);
  if (r < 0) die_step(p.err_fd, STEP_MASK, r, where);
  r = readonly_in_child(p, root_fd, &where);
  if (r < 0) die_step(p.err_fd, STEP_READONLY, r, where);
  CHECK(STEP_PIVOT_ROOT, pivot_root_in_child(root_fd), "/");
  // The root is complete: from here on the sandbox's mounts are locked (child_lock.cc).
  CHECK(STEP_LOCK_MOUNTS, lock_mounts_in_child(p), "unshare(CLONE_NEWNS)");

  // fds: the control socket becomes init's fd 3 and the scratch tmpfs its fd 4 (so the host
  // can reach the writable layer through /proc/<init>/fd/4 for commit); 0-2 are /dev/null,
  // never the Node process's stdio; everything else is close-on-exec, so init starts with
  // exactly 0-5 (5: the error pipe, see below). Every fd we still need is first moved above 9, where dup2 cannot clobber it.
  int errfd = (int)rsys3(SYS_fcntl, p.err_fd, F_DUPFD_CLOEXEC, 10);
  if (errfd < 0) die_step(p.err_fd, STEP_FDS, errfd, "fcntl");
  int ctl = (int)rsys3(SYS_fcntl, p.ctl_fd, F_DUPFD_CLOEXEC, 10);
  int scratch = (int)rsys3(SYS_fcntl, scratch_fd, F_DUPFD_CLOEXEC, 10);
  int initfd = (int)rsys3(SYS_fcntl, p.init_fd, F_DUPFD_CLOEXEC, 10);
  if (ctl < 0 || scratch < 0 || initfd < 0) die_step(errfd, STEP_FDS, ctl < 0 ? ctl : scratch < 0 ? scratch : initfd, "fcntl");
  int devnull = (int)rsys4(SYS_openat, AT_FDCWD, "/dev/null", O_RDWR | O_CLOEXEC, 0);
  if (devnull < 0) die_step(errfd, STEP_FDS, devnull, "/dev/null");
  if (devnull < 10) devnull = (int)rsys3(SYS_fcntl, devnull, F_DUPFD_CLOEXEC, 10);  // 0-2 may be free (a blank's)
  if (devnull < 0) die_step(errfd, STEP_FDS, devnull, "fcntl");
  for (int fd = 0; fd < 3; fd++) {
    long d = rsys3(SYS_dup3, devnull, fd, 0);
    if (d < 0) die_step(errfd, STEP_FDS, (int)d, "dup3");
  }
  long d1 = rsys3(SYS_dup3, ctl, 3, 0), d2 = rsys3(SYS_dup3, scratch, 4, 0);
  if (d1 < 0 || d2 < 0) die_step(errfd, STEP_FDS, (int)(d1 < 0 ? d1 : d2), "dup3");
  // The error pipe goes on as init's fd 5: init says "ready" there once it runs.
  long d3 = rsys3(SYS_dup3, errfd, READY_FD, 0);
  if (d3 < 0) die_step(errfd, STEP_FDS, (int)d3, "dup3");
  long cr = rsys3(SYS_close_range, READY_FD + 1, ~0U, CLOSE_RANGE_CLOEXEC);
  if (cr < 0) die_step(errfd, STEP_FDS, (int)cr, "close_range");

  // Becoming the user namespace's root (setid) changed our credentials, and that cleared
  // PR_SET_PDEATHSIG (commit_creds): armed again, last, so that init dies with its owner even
  // while frozen (pause, commit), when the EOF of its control socket cannot reach it.
  long pd = rsys2(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL);
  if (pd < 0) die_step(errfd, STEP_FDS, (int)pd, "prctl(PR_SET_PDEATHSIG)");

  // Signal dispositions: CLONE_CLEAR_SIGHAND reset the handled ones; the mask set by the
  // parent around clone3 survives exec, so clear it last.
  unsigned long none = 0;
  rsys4(SYS_rt_sigprocmask, SIG_SETMASK, &none, nullptr, sizeof none);
  long e = rsys5(SYS_execveat, initfd, "", p.init_argv.data(), p.init_envp.data(), AT_EMPTY_PATH);
  die_step(errfd, STEP_EXEC_INIT, (int)e, "hutch-init");
}
