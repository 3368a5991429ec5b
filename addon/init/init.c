/* hutch-init: PID 1 of every sandbox. Static, single-threaded, small.
 *
 * It reaps every zombie, starts each exec request that arrives on the control socket (fd 3)
 * with the credentials, capabilities, rlimits and seccomp program asked for, reports starts,
 * failures and exits (with rusage), delivers kill requests, and when the control socket
 * closes — the owner destroyed the sandbox or died — kills everything and exits, so a sandbox
 * never outlives its owner. Policy is decided by the Node side; init only applies it. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/openat2.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "confine.h"
#include "protocol.h"

#define CTL_FD 3
#define SCRATCH_FD 4 /* the writable layer's tmpfs, held for the host (commit); never inherited */
#define MAX_MSG (1 << 20)

struct exec_slot {
  uint32_t id;
  pid_t pid;
};

/* The first 16 slots are static: most sandboxes never run more at once, and need no malloc. */
static struct exec_slot slots_static[16];
static struct exec_slot *slots = slots_static;
static size_t nslots, capslots = 16;
static uint8_t *msgbuf;

static void send_msg(const void *m, size_t len) {
  ssize_t n;
  do n = send(CTL_FD, m, len, MSG_NOSIGNAL); while (n < 0 && errno == EINTR);
}

static void report_protocol_error(uint32_t id, uint32_t code) {
  struct protocol_error_msg m = {MSG_PROTOCOL_ERROR, id, code, 0};
  send_msg(&m, sizeof m);
}

static struct exec_slot *find_slot_by_id(uint32_t id) {
  for (size_t i = 0; i < nslots; i++)
    if (slots[i].id == id) return &slots[i];
  return NULL;
}

static void remove_slot(struct exec_slot *s) { *s = slots[--nslots]; }

static int add_slot(uint32_t id, pid_t pid) {
  if (nslots == capslots) {
    size_t n = capslots * 2;
    struct exec_slot *p = realloc(slots == slots_static ? NULL : slots, n * sizeof *p);
    if (!p) return -1;
    if (slots == slots_static) memcpy(p, slots_static, sizeof slots_static);
    slots = p, capslots = n;
  }
  slots[nslots].id = id;
  slots[nslots].pid = pid;
  nslots++;
  return 0;
}

/*
 * The argv/envp vector of the exec being started, kept from one exec to the next (grown when
 * short, never freed): musl's malloc hands a freed group's page back at once, so a vector
 * allocated and freed per exec cost an mmap and a munmap each time (each a trap in a VM). The
 * next exec reuses it only after the last one's child has exec'd or died (CLONE_VFORK).
 */
static char **vecbuf;
static size_t veccap;
static char **exec_vec(size_t n) {
  if (n > veccap) {
    size_t cap = n < 64 ? 64 : n;
    char **p = malloc(cap * sizeof *p);
    if (!p) return NULL;
    free(vecbuf);
    vecbuf = p, veccap = cap;
  }
  return vecbuf;
}

#include "exec_child.h"

static void close_fds(const int *fds, int n) {
  for (int i = 0; i < n; i++)
    if (fds[i] >= 0) close(fds[i]);
}

/* The exec child is cloned with CLONE_VM | CLONE_VFORK, as posix_spawn does: it runs on
 * exec_stack in init's memory, init waits (suspended) until it has exec'd or exited, and no
 * copy of init's address space is made only to be thrown away by the exec (fork's page-table
 * copy and copy-on-write faults were most of an exec's cost in init, in a VM where page-table
 * updates trap). Init would wait for that exec anyway (the status pipe, below). The child
 * changes only what is its own: its fd table, signal handlers and mask, rlimits and
 * credentials are copies (no CLONE_FILES, CLONE_SIGHAND, CLONE_THREAD); it writes init's
 * memory only on its stack and errno, both free again when init resumes. Nothing of the
 * sandbox's runs before the exec replaces the shared memory with the program's own.
 * The child calls no libc function that takes a lock: killed half-way (by the sandbox's
 * root, or the OOM killer) it would leave the lock taken in init's memory, and the next exec
 * child would wait on it forever, init with it. So rlimits and ids are set with raw system
 * calls (musl's setrlimit, setgroups and set*id lock around __synccall, its sigaction around
 * SIGABRT's), and nothing
 * allocates; what else it calls is a system call wrapper or a string function. */
struct exec_child_args {
  const struct exec_req *r;
  const struct rlimit_req *rl;
  const struct sock_filter *prog;
  const char *cwd;
  char **argv, **envp;
  const int *fds;
  int st[2];
};

static char exec_stack[64 * 1024] __attribute__((aligned(64)));

static int exec_child_entry(void *p) {
  struct exec_child_args *a = p;
  close(a->st[0]);
  run_exec_child(a->r, a->rl, a->prog, a->cwd, a->argv, a->envp, a->fds, a->st[1]);
  return 127;
}

#include "listeners.h"

/* Parses one MSG_EXEC, forks, waits for the child's exec (EOF on the status pipe) or its
 * failure, and reports which. */
static void start_exec(size_t len, int *fds, int nfds) {
  /* The cgroup namespace is made here, at the first exec, not in the setup child: on cgroup
   * v1 the host joins the sandbox to its cgroups while the child sets up, and the first exec
   * only arrives once that is done, so its root is the sandbox's own cgroup everywhere. */
  static int cgroupns_done;
  if (!cgroupns_done) {
    cgroupns_done = 1;
    unshare(CLONE_NEWCGROUP);
  }
  struct exec_req r;
  if (len < sizeof r) {
    report_protocol_error(0, EPROTO);
    close_fds(fds, nfds);
    return;
  }
  memcpy(&r, msgbuf, sizeof r);
  int tty = (r.flags & EXEC_TTY) != 0;
  size_t ttylen = tty ? sizeof(struct tty_req) : 0;
  size_t need = sizeof r + ttylen + (size_t)r.nrlimits * sizeof(struct rlimit_req) + r.seccomp_len + r.strings_len;
  if (nfds != (tty ? 0 : 3) || r.nrlimits > 64 || r.seccomp_len % sizeof(struct sock_filter) != 0 ||
      r.seccomp_len > 4096 * sizeof(struct sock_filter) || need != len || r.argc == 0 || r.argc > 1 << 16 ||
      r.envc > 1 << 16 || r.strings_len == 0 || msgbuf[len - 1] != 0 ||
      ((r.flags & EXEC_SECCOMP) && r.seccomp_len == 0) || ((r.flags & EXEC_SECCOMP_NOTIFY) && !(r.flags & EXEC_SECCOMP))) {
    report_protocol_error(r.id, EPROTO);
    close_fds(fds, nfds);
    return;
  }
  if (find_slot_by_id(r.id)) {
    report_protocol_error(r.id, EEXIST);
    close_fds(fds, nfds);
    return;
  }
  const struct rlimit_req *rl = (const struct rlimit_req *)(msgbuf + sizeof r + ttylen);
  const struct sock_filter *prog = (const struct sock_filter *)(msgbuf + sizeof r + ttylen + r.nrlimits * sizeof *rl);
  char *s = (char *)msgbuf + sizeof r + ttylen + r.nrlimits * sizeof *rl + r.seccomp_len;
  char *end = s + r.strings_len;
  /* cwd, argv, envp: count the NUL-ended strings; they must be exactly 1 + argc + envc. */
  size_t want = 1 + (size_t)r.argc + r.envc, got = 0;
  for (char *q = s; q < end; q++)
    if (*q == 0) got++;
  char **vec = got == want ? exec_vec((size_t)r.argc + r.envc + 2) : NULL;
  if (!vec) {
    report_protocol_error(r.id, got == want ? ENOMEM : EPROTO);
    close_fds(fds, nfds);
    return;
  }
  const char *cwd = s;
  char *q = s + strlen(s) + 1;
  char **argv = vec, **envp = vec + r.argc + 1;
  for (uint32_t i = 0; i < r.argc; i++, q += strlen(q) + 1) argv[i] = q;
  argv[r.argc] = NULL;
  for (uint32_t i = 0; i < r.envc; i++, q += strlen(q) + 1) envp[i] = q;
  envp[r.envc] = NULL;

  /* A pty: the child gets its slave as fds 0-2; init keeps the master until MSG_STARTED. */
  int master = -1, ttyfds[3] = {-1, -1, -1};
  if (tty) {
    struct tty_req t;
    memcpy(&t, msgbuf + sizeof r, sizeof t);
    int e = open_pty(&t, r.uid, r.gid, &master, &ttyfds[0]);
    if (e) {
      struct failed_msg f = {MSG_FAILED, r.id, e, XSTEP_FDS};
      send_msg(&f, sizeof f);
      return;
    }
    ttyfds[1] = ttyfds[2] = ttyfds[0];
    fds = ttyfds;
    nfds = 1;
  }
  /* The status channel: a pipe, or with a listener to hand over a socket (SCM_RIGHTS). */
  int notify = (r.flags & EXEC_SECCOMP_NOTIFY) != 0;
  int st[2];
  if ((notify ? socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, st) : pipe2(st, O_CLOEXEC)) < 0) {
    struct failed_msg f = {MSG_FAILED, r.id, errno, XSTEP_FORK};
    send_msg(&f, sizeof f);
    close_fds(fds, nfds);
    if (master >= 0) close(master);
    return;
  }
  struct exec_child_args ca = {&r, rl, prog, cwd, argv, envp, fds, {st[0], st[1]}};
  exec_without_listener = 0;
  pid_t pid = clone(exec_child_entry, exec_stack + sizeof exec_stack, CLONE_VM | CLONE_VFORK | SIGCHLD, &ca);
  int fork_err = errno;
  close(st[1]);
  close_fds(fds, nfds);
  if (pid < 0) {
    close(st[0]);
    if (master >= 0) close(master);
    struct failed_msg f = {MSG_FAILED, r.id, fork_err, XSTEP_FORK};
    send_msg(&f, sizeof f);
    return;
  }
  uint32_t rec[2];
  ssize_t n;
  int lfd = -1;
  for (;;) {
    n = notify ? recv_status(st[0], rec, &lfd) : read(st[0], rec, sizeof rec);
    if (n < 0 && errno == EINTR) continue;
    if (n == (ssize_t)sizeof rec && rec[0] == STATUS_LISTENER) continue;
    break;
  }
  close(st[0]);
  /* Exec'd with a listener that did not reach init (no fd left to receive it, no memory to
   * keep it): its refusals would answer ENOSYS, never reported. It does not run so. */
  int lerr = 0;
  if (exec_without_listener) notify = 0;
  if (n == 0 && notify && (lfd < 0 || add_listener(lfd, r.id, prog, r.seccomp_len) < 0)) {
    lerr = lfd < 0 ? EMFILE : ENOMEM;
    if (lfd >= 0) close(lfd);
    kill(pid, SIGKILL);
    rec[0] = XSTEP_SECCOMP, rec[1] = (uint32_t)lerr;
  } else if (n != 0 && lfd >= 0) {
    close(lfd);
  }
  if (n == (ssize_t)sizeof rec || lerr) {
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (master >= 0) close(master);
    struct failed_msg f = {MSG_FAILED, r.id, (int32_t)rec[1], rec[0]};
    send_msg(&f, sizeof f);
    return;
  }
  if (add_slot(r.id, pid) < 0) {
    kill(pid, SIGKILL);
    if (master >= 0) close(master);
    struct failed_msg f = {MSG_FAILED, r.id, ENOMEM, XSTEP_FORK};
    send_msg(&f, sizeof f);
    return;
  }
  struct started_msg m = {MSG_STARTED, r.id, pid, 0};
  if (master >= 0) {
    send_started_with_fd(&m, master);
    close(master);
  } else {
    send_msg(&m, sizeof m);
  }
}

static void deliver_kill(size_t len) {
  struct kill_req k;
  if (len != sizeof k) {
    report_protocol_error(0, EPROTO);
    return;
  }
  memcpy(&k, msgbuf, sizeof k);
  struct exec_slot *s = find_slot_by_id(k.id);
  if (!s) return; /* already ended: its MSG_EXITED is on the way */
  if (k.signal <= 0 || k.signal >= 65) {
    report_protocol_error(k.id, EINVAL);
    return;
  }
  if (k.group) kill(-s->pid, k.signal);
  kill(s->pid, k.signal);
}

/* Reaps every zombie (orphans of the sandbox included); reports the ones that were execs. */
static void reap_children(void) {
  for (;;) {
    int status;
    struct rusage ru;
    pid_t pid = wait4(-1, &status, WNOHANG, &ru);
    if (pid <= 0) return;
    for (size_t i = 0; i < nslots; i++) {
      if (slots[i].pid != pid) continue;
      flush_dropped(slots[i].id);
      struct exited_msg m = {MSG_EXITED, slots[i].id, status, 0,
                             (uint64_t)ru.ru_utime.tv_sec * 1000000 + (uint64_t)ru.ru_utime.tv_usec,
                             (uint64_t)ru.ru_stime.tv_sec * 1000000 + (uint64_t)ru.ru_stime.tv_usec,
                             (uint64_t)ru.ru_maxrss};
      send_msg(&m, sizeof m);
      remove_slot(&slots[i]);
      break;
    }
  }
}

/* Reads one message with up to 3 fds; returns its length, 0 at EOF, -1 to ignore. */
static ssize_t read_msg(int *fds, int *nfds) {
  struct iovec iov = {msgbuf, MAX_MSG};
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int) * 8)];
  } cbuf;
  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = cbuf.buf;
  msg.msg_controllen = sizeof cbuf.buf;
  ssize_t n;
  do n = recvmsg(CTL_FD, &msg, MSG_CMSG_CLOEXEC); while (n < 0 && errno == EINTR);
  *nfds = 0;
  if (n < 0) return errno == EAGAIN ? -1 : 0;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
    int *p = (int *)CMSG_DATA(c);
    for (int i = 0; i < k; i++) {
      if (*nfds < 3) fds[(*nfds)++] = p[i];
      else close(p[i]), *nfds = 4; /* too many: malformed */
    }
  }
  if (n > 0 && (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
    uint32_t id = 0;
    if (n >= 8) memcpy(&id, msgbuf + 4, 4);
    report_protocol_error(id, E2BIG);
    close_fds(fds, *nfds < 3 ? *nfds : 3);
    return -1;
  }
  return n;
}

int main(void) {
  /* Not dumpable: the processes init runs cannot ptrace it or read its memory (they lack
   * CAP_SYS_PTRACE), and /proc/1 is theirs to look at only. */
  prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  fcntl(SCRATCH_FD, F_SETFD, FD_CLOEXEC);
  fcntl(CTL_FD, F_SETFD, FD_CLOEXEC);
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  sigprocmask(SIG_BLOCK, &chld, NULL);
  int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
  msgbuf = malloc(MAX_MSG);
  if (sfd < 0 || !msgbuf) return 125;
  signal(SIGPIPE, SIG_IGN);
  read_ignored_signals();
  /* Children that ended before init began (the setup's mount-namespace holder, killed once
   * the mounts are locked: addon/child_lock.cc) sent their SIGCHLD before the signalfd
   * existed: reap them now, or they stay zombies a sandbox's `ps` shows. */
  reap_children();
  /* Running: say so on the setup pipe (the host reads EOF without this as a failed start). */
  {
    uint32_t ready[SETUP_RECORD_SIZE / 4] = {SETUP_READY, 0};
    ssize_t w;
    do w = write(READY_FD, ready, sizeof ready); while (w < 0 && errno == EINTR);
    close(READY_FD);
    if (w != (ssize_t)sizeof ready) return 125;
  }

  for (;;) {
    /* The control socket, the signalfd, then each seccomp listener. */
    struct pollfd *pfd = poll_set(sfd);
    size_t npfd = 2 + nlisteners;
    if (poll(pfd, npfd, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    /* Refusals first: their reports then precede the exit of the process that made them. */
    if (npfd > 2) serve_listeners(pfd + 2, npfd - 2);
    if (pfd[1].revents & POLLIN) {
      struct signalfd_siginfo si;
      while (read(sfd, &si, sizeof si) > 0) {
      }
      reap_children();
    }
    if (pfd[0].revents & (POLLIN | POLLHUP | POLLERR)) {
      int fds[3], nfds;
      ssize_t n = read_msg(fds, &nfds);
      /* SOCK_SEQPACKET reads 0 both for an empty message and at the end: only a hang-up is
       * the end (the owner is gone); an empty message is malformed and ignored. */
      if (n == 0 && (pfd[0].revents & (POLLHUP | POLLERR))) break;
      if (n == 0) {
        report_protocol_error(0, EPROTO);
        continue;
      }
      if (n < 0) continue;
      uint32_t type = 0;
      if (n >= 4) memcpy(&type, msgbuf, 4);
      if (nfds > 3) {
        report_protocol_error(0, EPROTO);
        close_fds(fds, 3);
      } else if (type == MSG_EXEC) {
        start_exec((size_t)n, fds, nfds);
      } else {
        close_fds(fds, nfds);
        if (type == MSG_KILL) deliver_kill((size_t)n);
        else report_protocol_error(0, EPROTO);
      }
    }
  }
  /* The control socket closed: end everything in the sandbox. As PID 1 our exit would take
   * the namespace's other processes with it; kill(-1) first makes it immediate. */
  kill(-1, SIGKILL);
  return 0;
}
