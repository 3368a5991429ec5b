// The setup sequence of a sandbox: runs in the child of clone3, a copy of the Node process
// (multithreaded: libuv's pool, V8's helpers). Until execveat only async-signal-safe calls on
// memory the parent prepared are allowed here (signal-safety(7)): raw syscalls, no malloc, no
// C++ exceptions, no locks, no stdio. glibc's set*id() wrappers are avoided too: in a copy of a
// multithreaded process they broadcast to threads that do not exist here.
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "child.h"
#include "sys.h"

// child; async-signal-safe. Writes the error record and exits; EOF on the pipe never comes.
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
  ssize_t n;
  do n = write(err_fd, &rec, sizeof rec); while (n < 0 && errno == EINTR);
  _exit(127);
}

#define CHECK(step, expr, detail)                             \
  do {                                                        \
    int r_ = (expr);                                          \
    if (r_ < 0) die_step(p.err_fd, (step), r_, (detail));     \
  } while (0)

static int neg_errno(long r) { return r < 0 ? -errno : 0; }

// child; async-signal-safe. One step per line, in the order of DESIGN.md.
[[noreturn]] void run_child(const plan &p) {
  // The parent may die before it releases us: then the sync read sees EOF and we leave.
  CHECK(STEP_SYNC, neg_errno(prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)), "prctl(PR_SET_PDEATHSIG)");
  char go = 0;
  ssize_t n;
  do n = read(p.sync_fd, &go, 1); while (n < 0 && errno == EINTR);
  if (n != 1) _exit(127);  // the parent failed or died: it reports, not us
  close(p.sync_fd);

  // uid_map/gid_map are written: become root of the new user namespace (the host range's
  // first id), so every file and mount made below belongs to the sandbox, not to host root.
  CHECK(STEP_SETID, neg_errno(syscall(SYS_setgroups, 0, nullptr)), "setgroups");
  CHECK(STEP_SETID, neg_errno(syscall(SYS_setresgid, 0, 0, 0)), "setresgid");
  CHECK(STEP_SETID, neg_errno(syscall(SYS_setresuid, 0, 0, 0)), "setresuid");
  // The cgroup namespace is made now, after the parent placed us, so that its root is the
  // sandbox's own cgroup on every driver (on v1 we are placed only after clone).
  CHECK(STEP_CGROUP, neg_errno(unshare(CLONE_NEWCGROUP)), "unshare(CLONE_NEWCGROUP)");

  CHECK(STEP_HOSTNAME, neg_errno(sethostname(p.hostname.c_str(), p.hostname.size())), p.hostname.c_str());
  CHECK(STEP_MOUNT_PRIVATE, sys_mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) < 0 ? -errno : 0, "/");

  int scratch_fd = -1, root_fd = -1;
  const char *where = nullptr;
  CHECK(STEP_SCRATCH, scratch_in_child(p, &scratch_fd), "tmpfs");
  int r = overlay_in_child(p, scratch_fd, &root_fd, &where);
  if (r < 0) die_step(p.err_fd, where == p.layers_dir.c_str() ? STEP_LAYERS : STEP_OVERLAY, r, where);
  CHECK(STEP_ROOT_ATTACH, attach_root_in_child(p, root_fd), p.root_mountpoint.c_str());
  r = binds_in_child(p, root_fd, &where);
  if (r < 0) die_step(p.err_fd, STEP_BIND, r, where);
  CHECK(STEP_PROC, proc_in_child(root_fd), "/proc");
  r = dev_in_child(root_fd, &where);
  if (r < 0) die_step(p.err_fd, STEP_DEV, r, where);
  r = mask_in_child(p, root_fd, &where);
  if (r < 0) die_step(p.err_fd, STEP_MASK, r, where);
  r = readonly_in_child(p, root_fd, &where);
  if (r < 0) die_step(p.err_fd, STEP_READONLY, r, where);
  CHECK(STEP_PIVOT_ROOT, pivot_root_in_child(root_fd), "/");
  CHECK(STEP_LOOPBACK, loopback_up_in_child(), "lo");

  // fds: the control socket becomes init's fd 3 and the scratch tmpfs its fd 4 (so the host
  // can reach the writable layer through /proc/<init>/fd/4 for commit); 0-2 are /dev/null,
  // never the Node process's stdio; everything else is close-on-exec, so init starts with
  // exactly 0-4. Every fd we still need is first moved above 9, where dup2 cannot clobber it.
  int errfd = fcntl(p.err_fd, F_DUPFD_CLOEXEC, 10);
  if (errfd < 0) die_step(p.err_fd, STEP_FDS, -errno, "fcntl");
  int ctl = fcntl(p.ctl_fd, F_DUPFD_CLOEXEC, 10);
  int scratch = fcntl(scratch_fd, F_DUPFD_CLOEXEC, 10);
  int initfd = fcntl(p.init_fd, F_DUPFD_CLOEXEC, 10);
  if (ctl < 0 || scratch < 0 || initfd < 0) die_step(errfd, STEP_FDS, -errno, "fcntl");
  int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (devnull < 0) die_step(errfd, STEP_FDS, -errno, "/dev/null");
  for (int fd = 0; fd < 3; fd++)
    if (dup2(devnull, fd) < 0) die_step(errfd, STEP_FDS, -errno, "dup2");
  if (dup2(ctl, 3) < 0 || dup2(scratch, 4) < 0) die_step(errfd, STEP_FDS, -errno, "dup2");
  if (sys_close_range(5, ~0U, CLOSE_RANGE_CLOEXEC) < 0) die_step(errfd, STEP_FDS, -errno, "close_range");

  // Signal dispositions: CLONE_CLEAR_SIGHAND reset the handled ones; the mask set by the
  // parent around clone3 survives exec, so clear it last.
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  syscall(SYS_execveat, initfd, "", p.init_argv.data(), p.init_envp.data(), AT_EMPTY_PATH);
  die_step(errfd, STEP_EXEC_INIT, -errno, "hutch-init");
}
