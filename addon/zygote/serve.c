/*
 * The zygote's side of libhutch-zygote (docs/templates.md, "The zygote protocol"): its next
 * child made PID 1 of a new pid namespace, the table of its live tasks (pidfd, request socket),
 * their ends reaped and reported, and the serving loop in C for a zygote whose own code need
 * not run between requests. What each child then does to become a sandbox is helper.c's.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../fdmsg.h"
#include "zygote_internal.h"

/*
 * One fork per task (the built-in zygotes; docs/templates.md, "The zygote protocol"): the
 * zygote calls hutch_zygote_fork_begin() before its fork(), hutch_zygote_fork_end(pid, ctl)
 * in the parent after it, and hutch_zygote_task() in the child. The child is PID 1 of a new
 * pid namespace from its birth, so no intermediate process is forked (a fork of a large
 * interpreter is most of what a task costs). The zygote, its parent, runs no task code and
 * reports its wait status: it polls the pidfd that fork_end returns and calls
 * hutch_zygote_reap(pidfd) when that is readable.
 */
#ifndef P_PIDFD
#define P_PIDFD 3
#endif
#define HZ_MAX_LIVE 4096
static int self_pidns = -1;
/* The zygote's own fd limit, raised for the 2 fds it holds per live task; each task gets the
 * limit back as the zygote started with (then the plan's rlimits). */
static struct rlimit nofile0;
static struct {
  int pidfd, ctl;
} live[HZ_MAX_LIVE];
static int nlive;

/* In the zygote, before fork(): its next child is PID 1 of a new pid namespace. 0 or -1. */
int hutch_zygote_fork_begin(void) {
  if (self_pidns < 0) {
    self_pidns = open("/proc/self/ns/pid", O_RDONLY | O_CLOEXEC);
    if (self_pidns < 0) return -1;
    /* Statuses are kept until hutch_zygote_reap takes them (not with SIGCHLD ignored). */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(SIGCHLD, &dfl, NULL);
    if (getrlimit(RLIMIT_NOFILE, &nofile0) == 0 && nofile0.rlim_cur < nofile0.rlim_max) {
      struct rlimit more = {nofile0.rlim_max, nofile0.rlim_max};
      setrlimit(RLIMIT_NOFILE, &more);
    }
  }
  /* Back to our own pid namespace for children first: a fork that never happened leaves it. */
  if (setns(self_pidns, CLONE_NEWPID) < 0) return -1;
  return unshare(CLONE_NEWPID);
}

/* In the zygote, after fork() (`pid`, or < 0 when it failed): the next fork is ours again;
 * the task's pidfd goes to the host ('P'); returns that pidfd for the zygote to poll, or -1
 * (the child, if any, killed and reaped; the host sees the request socket close). */
int hutch_zygote_fork_end(int pid, int ctl) {
  int back = setns(self_pidns, CLONE_NEWPID);
  if (pid <= 0) return -1;
  int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
  int c = pidfd < 0 ? -1 : fcntl(ctl, F_DUPFD_CLOEXEC, 3);
  if (back < 0 || c < 0 || nlive == HZ_MAX_LIVE || hz_send_fds(c, 'P', &pidfd, 1) < 0) {
    kill(pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
    }
    if (pidfd >= 0) close(pidfd);
    if (c >= 0) close(c);
    return -1;
  }
  live[nlive].pidfd = pidfd;
  live[nlive].ctl = c;
  nlive++;
  return pidfd;
}

/* In the zygote, when a task's pidfd is readable: its wait status to the host ('X'), its fds
 * closed. 0 when reaped, 1 when it has not ended yet, -1 for a pidfd not ours. */
int hutch_zygote_reap(int pidfd) {
  int i = 0;
  while (i < nlive && live[i].pidfd != pidfd) i++;
  if (i == nlive) return -1;
  siginfo_t si;
  memset(&si, 0, sizeof si);
  struct rusage ru;
  memset(&ru, 0, sizeof ru);
  int r;
  /* The raw waitid: its fifth argument is the task's rusage (glibc's wrapper has none). */
  do r = (int)syscall(SYS_waitid, P_PIDFD, pidfd, &si, WEXITED | WNOHANG, &ru); while (r < 0 && errno == EINTR);
  if (r == 0 && si.si_pid == 0) return 1;
  int status = 9; /* not ours to wait for after all: reported as killed */
  if (r == 0) status = si.si_code == CLD_EXITED ? (si.si_status & 0xff) << 8 : (si.si_status & 0x7f) | (si.si_code == CLD_DUMPED ? 0x80 : 0);
  hz_send_exited(live[i].ctl, status, r == 0 ? &ru : NULL);
  close(live[i].ctl);
  close(pidfd);
  live[i] = live[--nlive];
  return 0;
}

/* In the zygote's child (hutch_zygote_task): what the zygote holds for its other tasks (their
 * pidfds and request sockets, its own pid namespace) closed, and its fd limit as it started. */
void hz_drop_zygote_state(void) {
  for (int i = 0; i < nlive; i++) close(live[i].pidfd), close(live[i].ctl);
  nlive = 0;
  if (self_pidns >= 0) close(self_pidns), self_pidns = -1;
  if (nofile0.rlim_max != 0) setrlimit(RLIMIT_NOFILE, &nofile0);
}

/*
 * The whole serving loop of step 4-5 (docs/templates.md, "The zygote protocol") in C, for a
 * zygote whose own code need not run between requests (the built-in Python zygote): it polls
 * the zygote's socket `sock` and its tasks' pidfds, reaps and reports ended tasks, and forks
 * one child per request (fork_begin, fork, fork_end), all without running the interpreter.
 * So the zygote writes none of its heap while forks live: every page it wrote after a fork
 * would stay in that fork as a private copy (copy-on-write keeps the old page for the fork).
 *
 * Returns in a forked child what hutch_zygote_task returns (0: a task, its JSON from
 * hutch_zygote_request; 1: a prepared fork, hutch_zygote_ready next), or in the zygote -1
 * when the host's end closed (or an error of its own: errno): exit then. `before`, `parent`
 * and `child` (each may be NULL) run around each fork() as a runtime needs (Python:
 * PyOS_BeforeFork, PyOS_AfterFork_Parent, PyOS_AfterFork_Child, as os.fork calls them).
 */
static unsigned char zreq[1 << 20];
static struct pollfd zpoll[1 + HZ_MAX_LIVE];
int hutch_zygote_serve(int sock, void (*before)(void), void (*parent)(void), void (*child)(void)) {
  for (;;) {
    int n = 0;
    zpoll[n].fd = sock, zpoll[n].events = POLLIN, zpoll[n].revents = 0, n++;
    for (int i = 0; i < nlive; i++) zpoll[n].fd = live[i].pidfd, zpoll[n].events = POLLIN, zpoll[n].revents = 0, n++;
    int r = poll(zpoll, (nfds_t)n, -1);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return -1;
    /* Ended tasks first (reap changes live[]: by pidfd, not by index). */
    for (int i = 1; i < n; i++)
      if (zpoll[i].revents) hutch_zygote_reap(zpoll[i].fd);
    if (!zpoll[0].revents) continue;
    int fds[8];
    struct iovec iov;
    struct msghdr msg;
    FDMSG_CBUF(c, 8);
    fdmsg_init(&msg, &iov, zreq, sizeof zreq - 1, c.buf, sizeof c.buf);
    ssize_t k;
    do k = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC); while (k < 0 && errno == EINTR);
    if (k < 0 && errno == EAGAIN) continue;
    if (k < 0) return -1;
    int nfds = (int)fdmsg_take(&msg, fds, 8);
    if (k == 0 && nfds == 0) return -1; /* the host is gone */
    zreq[k] = 0;
    int prepared = nfds == 1 && memmem(zreq, (size_t)k, "\"prepared\"", 10) != NULL;
    if (!prepared && nfds != 5) {
      for (int i = 0; i < nfds; i++) close(fds[i]);
      continue; /* not a request (docs: ignored, its fds closed) */
    }
    if (prepared) fds[1] = fds[2] = fds[3] = fds[4] = -1;
    pid_t pid = -1;
    if (hutch_zygote_fork_begin() == 0) {
      if (before) before();
      pid = fork();
      if (pid == 0) {
        close(sock);
        if (child) child();
        if (!prepared) hz_request_is(zreq, (int)k);
        return hutch_zygote_task(fds[0], fds[1], fds[2], fds[3], fds[4]);
      }
      if (parent) parent();
    }
    hutch_zygote_fork_end(pid, fds[0]);
    for (int i = 0; i < 5; i++)
      if (fds[i] >= 0) close(fds[i]);
  }
}
