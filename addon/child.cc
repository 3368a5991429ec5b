// The setup sequence of a sandbox: runs in the child of clone3. With CLONE_VM (x86_64,
// aarch64) the child shares the Node process's memory and its thread's TLS until exec; in
// any case it is a copy of a multithreaded process (libuv's pool, V8's helpers). Until
// execveat only raw syscalls on memory the parent prepared are allowed here (signal-safety(7)
// and more): no malloc, no C++ exceptions, no locks, no stdio, and no errno (it is the parent
// thread's): every call goes through rsys*(), which returns -errno.
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "child.h"
#include "fdmsg.h"
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

// child; raw syscalls. The tests' failure hook (lib/plan/testing.ts): fails `step` as if its
// call had returned the plan's errno. Never set outside tests (the header says -1).
static void maybe_fail(const plan &p, unsigned step, const char *detail) {
  if (p.fail_step == (int)step) die_step(p.err_fd, step, -p.fail_errno, detail);
}

// child; raw syscalls only. The steps that need nothing of the plan: a blank child takes
// them while it waits for go, any other child right after go. The id maps are written.
static void setup_without_plan(plan &p) {
  // Every mount of the sandbox is made in a namespace owned by a nested user namespace, so
  // that the copy init gets at the end (lock_mounts_in_child) is locked (child_lock.cc). We
  // leave the host's mount namespace for it here: clone3 made none.
  maybe_fail(p, STEP_MOUNT_NS, "unshare(CLONE_NEWUSER|CLONE_NEWNS)");
  CHECK(STEP_MOUNT_NS, setup_mount_ns_in_child(p), "unshare(CLONE_NEWUSER|CLONE_NEWNS)");
  // Then, before anything else, nothing we mount may propagate to the host, nor the host's
  // mounts to us (on a systemd host "/" is shared: the copy starts as its slave).
  maybe_fail(p, STEP_MOUNT_PRIVATE, "/");
  CHECK(STEP_MOUNT_PRIVATE, rsys5(SYS_mount, nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr), "/");
  // A new network namespace has `lo` down.
  maybe_fail(p, STEP_LOOPBACK, "lo");
  CHECK(STEP_LOOPBACK, loopback_up_in_child(), "lo");
}

// child; raw syscalls only. A blank child's go message: the encoded plan into the buffer
// reserved before clone, and the plan's fds as new numbers in its own fd table. Any other
// child's go is one byte: its plan and fds were in place before clone.
static void receive_go(plan &p) {
  char go = 0;
  struct iovec iov;
  struct msghdr msg;
  FDMSG_CBUF(cb, kMaxGoFds);
  if (p.blank) fdmsg_init(&msg, &iov, p.buf.data(), p.buf.size(), cb.buf, sizeof cb.buf);
  else fdmsg_init(&msg, &iov, &go, 1, cb.buf, sizeof cb.buf);
  long n;
  do n = rsys3(SYS_recvmsg, p.sync_fd, &msg, MSG_CMSG_CLOEXEC); while (n == -EINTR);
  if (n < 1) rsys1(SYS_exit_group, 127);  // the parent failed or died: it reports, not us
  rsys1(SYS_close, p.sync_fd);
  if (!p.blank) return;
  // The parent checked this plan (plan_check) before it sent it; what can go wrong here is
  // the message itself.
  const plan_header *h = (const plan_header *)p.buf.data();
  size_t got = 0;
  int *fds = nullptr;
  struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
  if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
    got = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    fds = (int *)CMSG_DATA(c);
  }
  if ((msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) || (size_t)n < sizeof *h || h->magic != HUTCH_PLAN_MAGIC ||
      h->length != (size_t)n || got != h->fd_count)
    die_step(p.err_fd, STEP_SYNC, -EPROTO, "go message");
  p.fd_count = got;
  for (size_t i = 0; i < got; i++) p.fds[i] = fds[i];
  p.fail_step = h->fail_step;
  p.fail_errno = h->fail_errno;
}

// Where the walk of the plan's ops is: what earlier ops opened for later ones.
struct walk_state {
  int ovl_fs = -1, mnt_fd = -1, parent_fd = -1, scratch_fd = -1, root_fd = -1;
  const char *mountpoint = "";
};

// child; raw syscalls only. Carries out one op of the plan; 0 or -errno, and *where the
// path the failure is about.
static int run_op(plan &p, walk_state &w, const plan_op &op, const char *s, const char **where) {
  int r = 0;
  switch (op.type) {
    case OP_HOSTNAME:
      return (int)rsys2(SYS_sethostname, s, strlen(s));
    case OP_CHDIR_LAYERS:
      // Resolved with host root's ids (the store's dirs may be closed to the sandbox's range);
      // the layer names of OVERLAY_BEGIN (and the legacy mount(2) data) resolve from here.
      return (int)rsys1(SYS_chdir, s);
    case OP_OVERLAY_BEGIN:
      // Legacy: mount(2) at OVERLAY_FINISH resolves the names from our cwd, the layers dir.
      if (op.flags & PLAN_F_LEGACY) return 0;
      return overlay_begin_in_child(p, op, s, &w.ovl_fs, where);
    case OP_ROOT_MOUNTPOINT:
      w.mountpoint = s;
      w.mnt_fd = (int)rsys4(SYS_openat, AT_FDCWD, s, O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
      if (w.mnt_fd < 0) return w.mnt_fd;
      w.parent_fd = (int)rsys4(SYS_openat, w.mnt_fd, "..", O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
      return w.parent_fd < 0 ? w.parent_fd : 0;
    case OP_UPPER_DIR:
      w.scratch_fd = (int)rsys4(SYS_openat, AT_FDCWD, s, O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
      return w.scratch_fd < 0 ? w.scratch_fd : 0;
    case OP_SETID:
      // Become root of the new user namespace (the range's first id), so every file and
      // mount made after this belongs to the sandbox, not to host root.
      // A one-id map written unprivileged denies setgroups (plan: "keep-groups"): the
      // caller's supplementary groups stay, unmapped, as with bubblewrap.
      *where = "setgroups";
      r = s[0] == 's' ? (int)rsys2(SYS_setgroups, 0, nullptr) : 0;
      if (r == 0) *where = "setresgid", r = (int)rsys3(SYS_setresgid, 0, 0, 0);
      if (r == 0) *where = "setresuid", r = (int)rsys3(SYS_setresuid, 0, 0, 0);
      return r;
    case OP_SCRATCH:
      return scratch_in_child(plan_str_next(s), &w.scratch_fd);
    case OP_OVERLAY_FINISH:
      return overlay_finish_in_child(w.ovl_fs, (op.flags & PLAN_F_LEGACY) ? s : nullptr, w.mountpoint, w.scratch_fd,
                                     w.mnt_fd, w.parent_fd, &w.root_fd, where);
    case OP_BIND:
      if (op.flags & PLAN_F_PATH) return bind_path_in_child(w.root_fd, s, plan_str_next(s), op.attrs, (op.flags & PLAN_F_FILE) != 0);
      return bind_in_child(w.root_fd, s, p.fds[op.fd], (op.flags & PLAN_F_FILE) != 0);
    case OP_MOUNT: {
      const char *fstype = plan_str_next(s);
      return mount_in_child(w.root_fd, fstype, s, op.attrs, plan_str_next(fstype), (op.nstr - 2u) / 2u);
    }
    case OP_DEV_NODE:
      return dev_node_in_child(w.root_fd, s, plan_str_next(s));
    case OP_SYMLINK:
      return symlink_in_child(w.root_fd, plan_str_next(s), s);
    case OP_MASK:
      return mask_in_child(w.root_fd, s, op.attrs, plan_str_next(s), (op.nstr - 1u) / 2u);
    case OP_READONLY:
      return readonly_in_child(w.root_fd, s, op.attrs);
    case OP_READONLY_ROOT:
      return root_attrs_in_child(w.root_fd, op.attrs);
    case OP_PIVOT_ROOT:
      return pivot_root_in_child(w.root_fd);
    case OP_LOCK_MOUNTS:
      // The root is complete: from here on the sandbox's mounts are locked (child_lock.cc).
      return lock_mounts_in_child(p);
  }
  return -EPROTO;
}

// child; raw syscalls only. The fixed steps first (sync, cgroup, the mount namespace), then
// the plan's ops in order, then the fds and the exec of init.
[[noreturn]] void run_child(plan &p) {
  // Started on the parent's fd table (CLONE_FILES): a table of our own first, with only the
  // fds below unshare_below (ours are all there), so the clone and this copy cost the same
  // whatever number of fds the parent holds (one per live sandbox). Then the parent may go on.
  if (p.unshare_below >= 0) {
    long u = rsys3(SYS_close_range, (unsigned)p.unshare_below, ~0U, CLOSE_RANGE_UNSHARE);
    // Still on the parent's table: nothing of it may be closed here. The kernel clears
    // files_word and wakes the parent as we exit (CLONE_CHILD_CLEARTID); it reports the failure.
    if (u < 0) rsys1(SYS_exit_group, 127);
    rsys1(SYS_set_tid_address, 0);
    __atomic_store_n(&p.files_word, 0, __ATOMIC_RELEASE);
    rsys3(SYS_futex, (long)&p.files_word, FUTEX_WAKE, 1);
  }
  // The parent may die before it releases us: then the sync read sees EOF and we leave. That
  // needs our copies of the parent's ends closed first (we have a copy of its fd table).
  for (int fd : p.parent_fds) rsys1(SYS_close, fd);
  maybe_fail(p, STEP_SYNC, "prctl(PR_SET_PDEATHSIG)");
  CHECK(STEP_SYNC, rsys2(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL), "prctl(PR_SET_PDEATHSIG)");
  // cgroup v1: join the sandbox's cgroups ourselves, while the parent writes the id maps.
  // "0" in `tasks` moves the writing thread alone, which the kernel does without its global
  // threadgroup lock, so without waiting for an RCU grace period as a pid written to
  // cgroup.procs by the parent does (1-10 ms). We are one thread; everything we start
  // inherits the cgroups. The fds were opened by host root (v1 checks the opener's creds).
  maybe_fail(p, STEP_CGROUP, p.join_paths.empty() ? "CLONE_INTO_CGROUP" : p.join_paths[0].c_str());
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
  receive_go(p);
  if (!p.blank) setup_without_plan(p);

  // The plan's ops, in order: each reports its own step (lib/plan/ decided which).
  const plan_header *h = (const plan_header *)p.buf.data();
  plan_cursor c = {p.buf.data() + h->header_size, p.buf.data() + h->length};
  walk_state w;
  const plan_op *op;
  const char *s;
  while (plan_next(c, &op, &s)) {
    maybe_fail(p, op->step, s);
    const char *where = s;
    int r = run_op(p, w, *op, s, &where);
    if (r < 0) die_step(p.err_fd, op->step, r, where);
  }
  int scratch_fd = w.scratch_fd;

  // fds: the control socket becomes init's fd 3 and the scratch tmpfs its fd 4 (so the host
  // can reach the writable layer through /proc/<init>/fd/4 for commit); 0-2 are /dev/null,
  // never the Node process's stdio; everything else is close-on-exec, so init starts with
  // exactly 0-5 (5: the error pipe, see below). Every fd we still need is first moved above 9, where dup2 cannot clobber it.
  maybe_fail(p, STEP_FDS, "fcntl");
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
  maybe_fail(p, STEP_EXEC_INIT, "hutch-init");
  unsigned long none = 0;
  rsys4(SYS_rt_sigprocmask, SIG_SETMASK, &none, nullptr, sizeof none);
  long e = rsys5(SYS_execveat, initfd, "", p.init_argv.data(), p.init_envp.data(), AT_EMPTY_PATH);
  die_step(errfd, STEP_EXEC_INIT, (int)e, "hutch-init");
}
