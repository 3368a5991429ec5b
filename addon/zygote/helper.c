/*
 * libhutch-zygote: what a forked zygote child does to become a fresh sandbox before any task
 * code runs (docs/templates.md). A zygote (Python through ctypes, anything that can call C)
 * forks once per request and calls hutch_zygote_enter() in the child. The host, on the
 * request's own socket, learns the child's pid, moves it into the cgroup it made for this
 * fork, and sends the plan. Then, in order:
 *
 *   child (C1)  unshare(NEWNS|NEWNET|NEWIPC|NEWUTS|NEWPID|NEWCGROUP) and fork once more: a new
 *               pid namespace holds only the children of the caller. C1 stays outside it,
 *               waits for C2 and reports C2's wait status to the host, then exits. It runs
 *               no task code and the task cannot name it (it is not in the task's pid ns).
 *   task  (C2)  PID 1 of the new pid namespace: hostname; a fresh tmpfs (size = the disk
 *               limit) holding overlay upper/work over the template's root; the template's
 *               bind mounts carried over; a new /dev (own devpts and shm) and a new /proc;
 *               masked and read-only paths; pivot_root; stdio; every other fd closed;
 *               rlimits; ids; capabilities dropped to the kept set; no_new_privs; the
 *               template's seccomp program last. Then it returns 0 to the zygote's code,
 *               which runs the task.
 *
 * A failing step sends {'E', errno, step} on the request socket and the process exits 125.
 * Only raw syscalls and async-signal-safe libc calls: the zygote may have had threads.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <linux/filter.h>
#include <linux/mount.h>
#include <linux/openat2.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../fdmsg.h"
#include "../init/confine.h"
#include "mounts.h"
#include "zygote_internal.h"

#define HZ_MAGIC 0x315a5048u /* "HPZ1" */

/* The plan the host sends (lib/template/plan.ts writes it; little-endian, this layout). */
struct hz_plan {
  uint32_t magic;
  uint32_t uid, gid;
  uint32_t nrlimits;
  uint64_t caps;
  uint32_t seccomp_len; /* bytes of struct sock_filter */
  uint32_t strings_len;
  uint32_t readonly_root;
  uint32_t as_init; /* fork(): the task is hutch's init (the last fd is its binary) */
  uint32_t net_wait; /* the host gives the network namespace a link: say 'L' once it exists */
  uint32_t lower_list; /* before Linux 6.8 (no "lowerdir+"): overlay's layers as one "lowerdir" list */
  uint32_t disk_upper; /* before 6.6 (tmpfs has no user xattrs): upper/ and work/ are in a
                        * directory on the store's disk, sent after the layers */
  uint32_t pad;
  /* then nrlimits x {u32 resource, u32 pad, u64 soft, u64 hard}, the seccomp program, and
   * strings: scratch size, shm size, hostname, then masked, read-only and skipped mount
   * paths, each list ended by an empty string. */
};
/* lib/template/plan.ts writes this header: HEADER there is its size. */
_Static_assert(sizeof(struct hz_plan) == 56, "struct hz_plan: update HEADER in lib/template/plan.ts");
struct hz_rlimit {
  uint32_t resource, pad;
  uint64_t soft, hard;
};

static unsigned char planbuf[1 << 17];
static unsigned char reqbuf[1 << 16];
static int reqlen = -1;
/* Where the request's JSON is: after the 'R' of a prepared fork's request, or the message
 * hutch_zygote_serve received. */
static const unsigned char *reqdata = reqbuf + 1;

static void fail(int ctl, const char *step, int err) {
  unsigned char m[128];
  size_t n = strlen(step);
  if (n > sizeof m - 6) n = sizeof m - 6;
  m[0] = 'E';
  memcpy(m + 1, &err, 4);
  memcpy(m + 5, step, n);
  send(ctl, m, 5 + n, MSG_NOSIGNAL);
  _exit(125);
}
#define CHECK(step, expr)                        \
  do {                                           \
    if ((expr) < 0) fail(ctl, step, errno);      \
  } while (0)

#define HZ_MAX_LAYERS 128
static int layer_fds[HZ_MAX_LAYERS];
static int nlayers, nlayers_total;
/* The writable layer's directory on disk (disk_upper), attached in the scratch as "disk". */
static int disk_fd = -1;

/* One message and the fds that came with it (the image's layers, as detached trees). */

static ssize_t recv_plan(int fd, void *buf, size_t len) {
  struct iovec iov;
  struct msghdr msg;
  static FDMSG_CBUF(c, HZ_MAX_LAYERS);
  fdmsg_init(&msg, &iov, buf, len, c.buf, sizeof c.buf);
  ssize_t n;
  do n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC); while (n < 0 && errno == EINTR);
  if (n < 0) return n;
  nlayers += (int)fdmsg_take(&msg, layer_fds + nlayers, (size_t)(HZ_MAX_LAYERS - nlayers));
  return n;
}

/* What the setup half of a task leaves for its second half (task_finish): a prepared fork
 * returns to the zygote's code between the two (hutch_zygote_task returns 1). */
static struct {
  int ctl, sfd, in, out, err, keep;
  const struct hz_plan *pl;
  const struct hz_rlimit *rl;
  const struct sock_filter *prog;
} st;
static int task_finish(void);
/* hutch_zygote_task's tasks keep the request socket until the zygote's code closes it. */
static int keep_ctl, task_ctl = -1;

/* The task's side: PID 1 of its pid namespace, in its own mount namespace. `session`: call
 * setsid() (not when the caller already leads a session of its own). */
static void become_task(int ctl, const struct hz_plan *pl, const struct hz_rlimit *rl, const struct sock_filter *prog,
                        const char *strings, int in, int out, int err, int keep, int session) {
  const char *scratch = strings;
  const char *shm = scratch + strlen(scratch) + 1;
  const char *hostname = shm + strlen(shm) + 1;
  const char *masked = hostname + strlen(hostname) + 1;
  const char *ro = masked;
  while (*ro) ro += strlen(ro) + 1;
  ro++;
  const char *skip = ro;
  while (*skip) skip += strlen(skip) + 1;
  skip++;
  const char *where = "";
  struct sigaction dfl;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  sigaction(SIGCHLD, &dfl, NULL);
  CHECK("mount-private", mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL));
  CHECK("mountinfo", read_mountinfo());
  /* The writable layer and the image's layers (trees the host opened for this fork), overlay
   * over them, as a fresh sandbox's (mounts.c make_root). */
  int sfd, holder;
  int root = make_root(scratch, disk_fd, layer_fds, nlayers, (int)pl->lower_list, &sfd, &holder, &where);
  if (root < 0) fail(ctl, where, errno);
  disk_fd = -1; /* attached (make_root closes the layers' and the disk's fds) */
  if (carry_mounts(root, skip, &where) < 0) fail(ctl, where, errno);
  if (make_dev(root, shm, &where) < 0) fail(ctl, where, errno);
  /* proc of this pid namespace, from the host (lib/template: procFor): ours cannot make a
   * full one, the template's proc being masked by locked mounts (mount_too_revealing). */
  {
    unsigned char m = 0;
    nlayers = 0;
    ssize_t k = recv_plan(ctl, &m, 1);
    if (k != 1 || m != 'M' || nlayers != 1) fail(ctl, "proc", k < 0 ? errno : EPROTO);
    int t = open_in(root, "proc", O_PATH);
    CHECK("proc", t);
    CHECK("proc", move_onto(layer_fds[0], t));
    close(t);
    close(layer_fds[0]);
  }
  /* The host sends proc at once and moves us into our cgroup meanwhile (the move waits for an
   * RCU grace period): the steps below need no cgroup, so they overlap it; 'C' says we are in
   * it, before our cgroup namespace is made and long before any task code. */
  if (mask_and_readonly(root, masked, ro, &where) < 0) fail(ctl, where, errno);
  CHECK("pivot", fchdir(root));
  CHECK("pivot", syscall(SYS_pivot_root, ".", "."));
  CHECK("pivot", umount2(".", MNT_DETACH));
  CHECK("pivot", chdir("/"));
  close(root);
  /* sfd stays open: init holds it as fd 4 (commit reads the upper dir there); a task's goes
   * with every other fd (task_finish). */
  if (pl->readonly_root) {
    struct mount_attr a;
    memset(&a, 0, sizeof a);
    a.attr_set = MOUNT_ATTR_RDONLY;
    CHECK("readonly", syscall(SYS_mount_setattr, AT_FDCWD, "/", 0, &a, sizeof a));
  }
  if (lock_mounts() < 0) fail(ctl, "lock", errno);
  /* Network, IPC and UTS namespaces of the task's own user namespace (as a fresh sandbox's
   * are its own): its capabilities reach them. */
  CHECK("unshare", unshare(CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS));
  { /* a new network namespace has its loopback down: up, as a created sandbox's */
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    memcpy(ifr.ifr_name, "lo", 3);
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    CHECK("loopback", s < 0 ? -1 : ioctl(s, SIOCGIFFLAGS, &ifr));
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    CHECK("loopback", ioctl(s, SIOCSIFFLAGS, &ifr));
    close(s);
  }
  CHECK("hostname", sethostname(hostname, strlen(hostname)));
  if (pl->net_wait) {
    /* The network namespace exists: the host gives it its link (as a created sandbox's,
     * lib/network) and writes /etc/hosts, then says 'C' (below) once that is done too. */
    unsigned char l = 'L';
    CHECK("network", send(ctl, &l, 1, MSG_NOSIGNAL) == 1 ? 0 : -1);
  }
  if (session) CHECK("session", setsid()); /* no controlling terminal: TIOCSTI reaches nothing outside */
  {
    /* In our cgroup now, and our link made if we have one (the host's 'C'): our cgroup namespace starts there, owned by our own
     * user namespace as the network, IPC and UTS ones are. */
    unsigned char m = 0;
    ssize_t k;
    do k = recv(ctl, &m, 1, 0); while (k < 0 && errno == EINTR);
    if (k != 1 || m != 'C') fail(ctl, "cgroup", k < 0 ? errno : EPROTO);
  }
  CHECK("unshare", unshare(CLONE_NEWCGROUP));
  if (holder != sfd) close(sfd); /* the disk's directory is what init holds */
  st.ctl = ctl, st.sfd = holder, st.in = in, st.out = out, st.err = err, st.keep = keep;
  st.pl = pl, st.rl = rl, st.prog = prog;
}

/* The task's second half: a prepared fork's request, then init (fork()), or stdio, fds,
 * rlimits, ids, capabilities, no_new_privs and seccomp. Returns 0 in the task. */
static int task_finish(void) {
  int ctl = st.ctl, sfd = st.sfd, in = st.in, out = st.out, err = st.err, keep = st.keep;
  const struct hz_plan *pl = st.pl;
  const struct hz_rlimit *rl = st.rl;
  const struct sock_filter *prog = st.prog;
  int as_init = (int)pl->as_init;
  int initbin = as_init ? layer_fds[nlayers_total - 1] : -1;
  if (in < 0) {
    /* Prepared ahead (`size`): wait here, set up but still privileged, for the task's request:
     * 'R', its JSON (hutch_zygote_request gives it to the zygote) and its 4 fds; or 'I' and
     * 3 fds (control socket, setup pipe, init's binary): become a Sandbox's init (fork()). */
    nlayers = 0;
    ssize_t k = recv_plan(ctl, reqbuf, sizeof reqbuf - 1);
    if (k >= 1 && reqbuf[0] == 'I' && nlayers == 3) {
      as_init = 1;
      in = layer_fds[0], out = layer_fds[1], initbin = layer_fds[2];
    } else {
      if (k < 1 || reqbuf[0] != 'R' || nlayers != 4) fail(ctl, "request", k < 0 ? errno : EPROTO);
      reqlen = (int)k - 1;
      reqdata = reqbuf + 1;
      in = layer_fds[0], out = layer_fds[1], err = layer_fds[2], keep = layer_fds[3];
    }
  }
  if (as_init) {
    /* A Sandbox's init (SandboxTemplate.fork): its control socket on 3 (the request's stdin
     * fd), the writable layer's tmpfs on 4, the setup pipe on 5 (the request's stdout fd);
     * init applies credentials, capabilities, rlimits and seccomp to each exec itself. */
    int want[3] = {in, sfd, out};
    for (int i = 0; i < 3; i++) {
      int d = fcntl(want[i], F_DUPFD_CLOEXEC, 20);
      CHECK("fds", d);
      want[i] = d;
    }
    int bin = fcntl(initbin, F_DUPFD_CLOEXEC, 20);
    CHECK("fds", bin);
    int c = fcntl(ctl, F_DUPFD_CLOEXEC, 20); /* out of the way of 3-5 */
    CHECK("fds", c);
    ctl = c;
    for (int i = 0; i < 3; i++) CHECK("fds", dup2(want[i], 3 + i));
    int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
    CHECK("fds", nul);
    for (int i = 0; i < 3; i++) CHECK("fds", dup2(nul, i));
    unsigned char ok = 'S';
    send(ctl, &ok, 1, MSG_NOSIGNAL);
    if (bin > 6) syscall(SYS_close_range, 6, bin - 1, 0);
    syscall(SYS_close_range, bin + 1, ~0U, 0);
    static char *const argv[] = {"hutch-init", NULL};
    static char *const envp[] = {NULL};
    syscall(SYS_execveat, bin, "", argv, envp, AT_EMPTY_PATH);
    _exit(127);
  }
  /* stdio on 0-2, `keep` (the request's files, or -1) on 3; every other fd goes but the
   * request socket, until after seccomp (the zygote's socket, the layer trees...). */
  int fds[4] = {in, out, err, keep};
  for (int i = 0; i < 4; i++) {
    if (fds[i] < 0) continue;
    int d = fcntl(fds[i], F_DUPFD_CLOEXEC, 10);
    CHECK("fds", d);
    fds[i] = d;
  }
  int c = fcntl(ctl, F_DUPFD_CLOEXEC, 10);
  CHECK("fds", c);
  ctl = c;
  for (int i = 0; i < 4; i++)
    if (fds[i] >= 0) CHECK("fds", dup2(fds[i], i));
  int first = keep >= 0 ? 4 : 3;
  if (ctl > first) syscall(SYS_close_range, first, ctl - 1, 0);
  syscall(SYS_close_range, ctl + 1, ~0U, 0);
  /* Its mount namespace, for the host to hold while the task runs ('N', before the rlimits
   * and seccomp; closed here, before any task code): the task's exit then does not wait for
   * its mounts to be taken apart; the host's close does that later. If it cannot be sent,
   * the host does without. */
  {
    int mntns = open("/proc/self/ns/mnt", O_RDONLY | O_CLOEXEC);
    if (mntns >= 0) {
      hz_send_fds(ctl, 'N', &mntns, 1);
      close(mntns);
    }
  }
  for (uint32_t i = 0; i < pl->nrlimits; i++) {
    struct rlimit lim = {(rlim_t)rl[i].soft, (rlim_t)rl[i].hard};
    CHECK("rlimit", setrlimit((int)rl[i].resource, &lim));
  }
  CHECK("credentials", setgroups(0, NULL));
  CHECK("credentials", setresgid(pl->gid, pl->gid, pl->gid));
  CHECK("capabilities", drop_bounding_caps(pl->caps));
  CHECK("credentials", setresuid(pl->uid, pl->uid, pl->uid));
  CHECK("capabilities", set_caps(pl->uid, pl->caps));
  CHECK("no_new_privs", prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0));
  /* Seccomp last, then the last message. */
  if (pl->seccomp_len > 0) {
    struct sock_fprog fp = {(unsigned short)(pl->seccomp_len / sizeof(struct sock_filter)), (struct sock_filter *)prog};
    CHECK("seccomp", syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fp));
  }
  unsigned char ok = 'S';
  send(ctl, &ok, 1, MSG_NOSIGNAL);
  if (keep_ctl) task_ctl = ctl; /* close-on-exec; the zygote's code closes it before task code */
  else close(ctl);
  return 0;
}

/* In the task (hutch_zygote_task's), before any task code: a step of the zygote's own that
 * failed (cwd, files, exec), reported to the host as a setup failure; never returns. */
void hutch_zygote_fail(const char *step, int err) {
  if (task_ctl >= 0) fail(task_ctl, step, err);
  _exit(125);
}

/* In the task, right before task code runs: the request socket closed (exec closes it too). */
void hutch_zygote_close(void) {
  if (task_ctl >= 0) close(task_ctl);
  task_ctl = -1;
}

/* The plan and the image's layers (and init's binary, last, for fork()), checked; exits
 * 125 when the host gave up on the request. */
static void read_plan(int ctl, const struct hz_plan **plp, const struct hz_rlimit **rlp, const struct sock_filter **progp,
                      const char **stringsp) {
  ssize_t n = recv_plan(ctl, planbuf, sizeof planbuf);
  if (n <= 0) _exit(125); /* the host gave up on this request */
  const struct hz_plan *pl = (const struct hz_plan *)planbuf;
  if ((size_t)n < sizeof *pl || pl->magic != HZ_MAGIC ||
      (size_t)n != sizeof *pl + pl->nrlimits * sizeof(struct hz_rlimit) + pl->seccomp_len + pl->strings_len ||
      pl->strings_len == 0 || planbuf[n - 1] != 0 || nlayers < 1 + (pl->as_init ? 1 : 0) + (pl->disk_upper ? 1 : 0))
    fail(ctl, "plan", EINVAL);
  nlayers_total = nlayers;
  if (pl->as_init) nlayers--; /* the last fd is init's binary, not a layer */
  if (pl->disk_upper) disk_fd = layer_fds[--nlayers]; /* the writable layer's directory, after the layers */
  *plp = pl;
  *rlp = (const struct hz_rlimit *)(planbuf + sizeof *pl);
  *progp = (const struct sock_filter *)((const unsigned char *)*rlp + pl->nrlimits * sizeof **rlp);
  *stringsp = (const char *)*progp + pl->seccomp_len;
}

/* A fork's first steps: a session of its own (a kill of the zygote's process group must not
 * reach it), off the zygote's stdio (it must not hold the zygote's pipes open), then the plan
 * and the image's layers, which the host sends with the request. */
static void start_fork(int ctl, const struct hz_plan **pl, const struct hz_rlimit **rl, const struct sock_filter **prog,
                       const char **strings) {
  if (setsid() < 0) fail(ctl, "session", errno);
  int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (nul < 0) fail(ctl, "fds", errno);
  for (int i = 0; i < 3; i++)
    if (dup2(nul, i) < 0) fail(ctl, "fds", errno);
  close(nul);
  read_plan(ctl, pl, rl, prog, strings);
}

/* The request a prepared fork received (its JSON), or the one hutch_zygote_serve forked for,
 * for the zygote: its length (cap 0: only that), or -1 when there is none here (the zygote
 * had the request already). */
int hutch_zygote_request(char *buf, int cap) {
  if (reqlen < 0) return -1;
  int n = reqlen < cap ? reqlen : cap;
  if (n > 0) memcpy(buf, reqdata, (size_t)n);
  return reqlen;
}

/* The same request's JSON in place (hutch_zygote_request's length), or NULL: read without a
 * copy into a buffer of the zygote's own (a ctypes buffer of a new size makes a new type). */
const char *hutch_zygote_request_data(void) {
  return reqlen < 0 ? NULL : (const char *)reqdata;
}

/* A one-byte message with n fds. */
/* The task's end to the host: 'X', its wait status (4 bytes), then its ru_maxrss in KiB
 * (8 bytes; 0 when unknown): the largest resident set of the task and what it reaped, the
 * run's memoryPeakBytes where the fork has no memory cgroup of its own. */
void hz_send_exited(int ctl, int status, const struct rusage *ru) {
  unsigned char m[13] = {'X'};
  uint64_t maxrss = ru ? (uint64_t)ru->ru_maxrss : 0;
  memcpy(m + 1, &status, 4);
  memcpy(m + 5, &maxrss, 8);
  send(ctl, m, sizeof m, MSG_NOSIGNAL);
}

int hz_send_fds(int ctl, unsigned char kind, const int *fds, int n) {
  struct iovec iov;
  struct msghdr msg;
  FDMSG_CBUF(c, 2);
  fdmsg_init(&msg, &iov, &kind, 1, c.buf, sizeof c.buf);
  fdmsg_put(&msg, fds, (size_t)n);
  return sendmsg(ctl, &msg, MSG_NOSIGNAL) < 0 ? -1 : 0;
}

/*
 * Called in the zygote's child, right after fork, with the request's socket, the task's
 * stdio, and one more fd the task keeps as fd 3 (or -1): the built-in zygotes read the
 * request's files from it. Returns 0 in the task process, isolated and confined; the intermediate process
 * never returns. The zygote must have closed its own copy of these fds in the parent.
 */
int hutch_zygote_enter(int ctl, int in, int out, int err, int keep) {
  /* 0-1. Its own session, off the zygote's stdio; the plan and the image's layers. */
  const struct hz_plan *pl;
  const struct hz_rlimit *rl;
  const struct sock_filter *prog;
  const char *strings;
  start_fork(ctl, &pl, &rl, &prog, &strings);
  /* 2. New namespaces (the cgroup one later, in the task, once the host has moved it into
   * this fork's cgroup), and the task's process: PID 1 of the new pid namespace. */
  struct sigaction dfl;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  sigaction(SIGCHLD, &dfl, NULL);
  CHECK("unshare", unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWPID));
  pid_t task = fork();
  CHECK("fork", task);
  if (task == 0) {
    become_task(ctl, pl, rl, prog, strings, in, out, err, keep, 1);
    return task_finish();
  }
  /* 3. C1: no task code runs here. Both pidfds to the host, which moves both processes into
   * the fork's cgroup and makes the task's proc while the task sets up its mounts; then how
   * the task ended; then go. */
  {
    int pf[2] = {(int)syscall(SYS_pidfd_open, getpid(), 0), (int)syscall(SYS_pidfd_open, task, 0)};
    if (pf[0] < 0 || pf[1] < 0 || hz_send_fds(ctl, 'P', pf, 2) < 0) {
      kill(task, SIGKILL);
      fail(ctl, "pidfd", errno);
    }
    close(pf[0]);
    close(pf[1]);
  }
  if (in >= 0) close(in);
  if (out >= 0) close(out);
  if (err >= 0) close(err);
  if (keep >= 0) close(keep);
  int status = 0;
  struct rusage ru;
  memset(&ru, 0, sizeof ru);
  pid_t w;
  do w = wait4(task, &status, 0, &ru); while (w < 0 && errno == EINTR);
  hz_send_exited(ctl, status, &ru);
  _exit(0);
}

/* In the zygote's child (serve.c): the request it was forked for, read by hutch_zygote_request. */
void hz_request_is(const unsigned char *data, int len) {
  reqdata = data;
  reqlen = len;
}

/*
 * In the zygote's child, after fork() between fork_begin and fork_end, with the request's
 * socket, stdio and files fd (as hutch_zygote_enter). Returns 0 in the task, isolated and
 * confined; 1 in a fork prepared ahead (`{"prepared": true}`): set up, still privileged,
 * running only the zygote's code, which may warm up and then calls hutch_zygote_ready().
 * Never returns for a fork() request (the process becomes init) nor on failure.
 */
int hutch_zygote_task(int ctl, int in, int out, int err, int keep) {
  hz_drop_zygote_state(); /* what the zygote holds for its other tasks never reaches this one */
  const struct hz_plan *pl;
  const struct hz_rlimit *rl;
  const struct sock_filter *prog;
  const char *strings;
  start_fork(ctl, &pl, &rl, &prog, &strings);
  if (getpid() != 1) fail(ctl, "pidns", EINVAL); /* fork_begin was not called */
  CHECK("unshare", unshare(CLONE_NEWNS)); /* net, ipc, uts: later, in its own user namespace */
  become_task(ctl, pl, rl, prog, strings, in, out, err, keep, 0);
  keep_ctl = 1;
  if (in < 0 && !pl->as_init) return 1;
  return task_finish();
}

/* In a prepared fork (hutch_zygote_task returned 1): waits for the task's request, then the
 * privilege drop; returns 0 in the task (hutch_zygote_request gives the request). */
int hutch_zygote_ready(void) {
  return task_finish();
}

/* In the task, before task code: its environment ("K=V\0" strings, `len` bytes) as the C
 * environ at once (one pointer), instead of an unsetenv/putenv per variable, each of which
 * writes (copies) more of the zygote's pages. 0, or -1 (ENOMEM). */
extern char **environ;
int hutch_zygote_environ(const char *block, int len) {
  char *copy = malloc((size_t)len + 1);
  if (!copy) return -1;
  memcpy(copy, block, (size_t)len);
  copy[len] = 0;
  int n = 0;
  for (int i = 0; i < len; i += (int)strlen(copy + i) + 1) n++;
  char **env = malloc(sizeof(char *) * ((size_t)n + 1));
  if (!env) return -1;
  n = 0;
  for (int i = 0; i < len; i += (int)strlen(copy + i) + 1) env[n++] = copy + i;
  env[n] = NULL;
  environ = env;
  return 0;
}
