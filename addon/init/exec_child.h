/* The exec child: everything init's clone(CLONE_VM | CLONE_VFORK) child does between the
 * clone and execve (fds, rlimits, cwd, ids, capabilities, no_new_privs, seccomp and the
 * listener handed to init), plus the few helpers init shares with it. It shares init's memory
 * until the exec: async-signal-safe calls only, no allocation. Included once, by init.c,
 * after protocol.h and confine.h (one static binary; scripts/build-init.sh). */
#ifndef HUTCH_INIT_EXEC_CHILD_H
#define HUTCH_INIT_EXEC_CHILD_H

/* exec child: reports a failed step to init over the status pipe and exits. */
static void die_exec(int status_fd, uint32_t step, int err) {
  uint32_t rec[2] = {step, (uint32_t)err};
  ssize_t n;
  do n = write(status_fd, rec, sizeof rec); while (n < 0 && errno == EINTR);
  _exit(127);
}

static const char *find_env(char **envp, const char *name) {
  size_t len = strlen(name);
  for (char **e = envp; *e; e++)
    if (strncmp(*e, name, len) == 0 && (*e)[len] == '=') return *e + len + 1;
  return NULL;
}

/* exec child: execve with a PATH search as execvpe does (ENOENT/ENOTDIR/EACCES go on to the
 * next directory; EACCES is reported if nothing else was found). */
static int exec_search(char **argv, char **envp) {
  const char *file = argv[0];
  if (strchr(file, '/')) {
    execve(file, argv, envp);
    return errno;
  }
  /* The PATH lib sent (lib/plan/image.ts sandboxEnv gives every process one); init has no
   * default of its own, so a request without PATH searches nothing. */
  const char *path = find_env(envp, "PATH");
  if (!path) return ENOENT;
  int seen_eacces = 0;
  char buf[4096];
  size_t flen = strlen(file);
  for (const char *p = path;; p++) {
    const char *end = strchrnul(p, ':');
    size_t dlen = (size_t)(end - p);
    if (dlen + flen + 2 <= sizeof buf) {
      memcpy(buf, p, dlen);
      size_t off = dlen;
      if (off == 0) buf[off++] = '.';
      buf[off++] = '/';
      memcpy(buf + off, file, flen + 1);
      execve(buf, argv, envp);
      if (errno == EACCES) seen_eacces = 1;
      else if (errno != ENOENT && errno != ENOTDIR) return errno;
    }
    if (*end == 0) break;
    p = end;
  }
  return seen_eacces ? EACCES : ENOENT;
}

/* exec child: closes every fd init keeps for itself (the control socket, the scratch tmpfs,
 * the signalfd) but the status pipe, before any path is resolved: a directory fd reached as
 * /proc/self/fd/N, as cwd or in the program's path, leads outside the sandbox's root
 * (CVE-2024-21626, where runc leaked a host directory fd the same way). */
static int close_init_fds(int status_fd) {
  if (status_fd > 3 && syscall(SYS_close_range, 3, status_fd - 1, 0) < 0) return -1;
  return (int)syscall(SYS_close_range, status_fd + 1, ~0U, 0);
}

/* exec child: enters the working directory without following magic links. /proc/<pid>/fd/N,
 * /proc/<pid>/cwd and /proc/<pid>/root name objects, not paths, and ignore the root: through
 * /proc/1/fd/4 init's own scratch tmpfs (the overlay's upper and work dirs) is reachable while
 * we still hold init's credentials. The path may come from an image's WorkingDir. */
static int enter_cwd(const char *cwd) {
  struct open_how how;
  memset(&how, 0, sizeof how);
  how.flags = O_PATH | O_DIRECTORY | O_CLOEXEC;
  how.resolve = RESOLVE_NO_MAGICLINKS;
  int fd = (int)syscall(SYS_openat2, AT_FDCWD, cwd, &how, sizeof how);
  if (fd < 0) return -1;
  int r = fchdir(fd);
  int e = errno;
  close(fd);
  errno = e;
  return r;
}

/* A pseudo-terminal from the sandbox's own devpts (its ptmx, reached without following any
 * link: /dev is the sandbox's to change), never the host's: the master goes to the host with
 * MSG_STARTED, the slave becomes the process's fds 0-2 and controlling terminal. The slave is
 * the process's user's, as login programs leave it. Returns 0 or an errno. */
static int open_pty(const struct tty_req *t, uint32_t uid, uint32_t gid, int *master, int *slave) {
  struct open_how how;
  memset(&how, 0, sizeof how);
  how.flags = O_RDWR | O_NOCTTY | O_CLOEXEC | O_NONBLOCK;
  how.resolve = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
  int m = (int)syscall(SYS_openat2, AT_FDCWD, "/dev/pts/ptmx", &how, sizeof how);
  if (m < 0) return errno;
  int unlock = 0;
  struct winsize ws = {t->rows, t->columns, 0, 0};
  int s = -1;
  if (ioctl(m, TIOCSPTLCK, &unlock) < 0 || ioctl(m, TIOCSWINSZ, &ws) < 0 ||
      (s = ioctl(m, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC)) < 0 || fchown(s, uid, gid) < 0) {
    int e = errno;
    if (s >= 0) close(s);
    close(m);
    return e;
  }
  *master = m;
  *slave = s;
  return 0;
}

/* exec child: the pty on fd 0 becomes the controlling terminal of the new session. */
static int take_controlling_tty(void) { return ioctl(0, TIOCSCTTY, 0); }

/* One message with one fd attached (SCM_RIGHTS). Async-signal-safe: the exec child uses it. */
static ssize_t send_with_fd(int sock, const void *data, size_t len, int fd) {
  struct iovec iov = {(void *)data, len};
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int))];
  } cbuf;
  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  memset(&cbuf, 0, sizeof cbuf);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = cbuf.buf;
  msg.msg_controllen = sizeof cbuf.buf;
  struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(c), &fd, sizeof fd);
  ssize_t n;
  do n = sendmsg(sock, &msg, MSG_NOSIGNAL); while (n < 0 && errno == EINTR);
  return n;
}

/* MSG_STARTED with the pty's master attached. */
static void send_started_with_fd(const struct started_msg *m, int fd) { send_with_fd(CTL_FD, m, sizeof *m, fd); }

/* The signals init ignores, as /proc/self/status's SigIgn shows them once at start (bit s-1
 * for signal s): inherited from the host process (Node ignores SIGPIPE; whoever started Node
 * may have ignored more) or set by init. An exec keeps an ignored signal ignored, so the exec
 * child resets these to the default, and only these: init catches no signal (SIGCHLD is
 * blocked and read from a signalfd), and exec resets caught ones anyway. One read at start
 * instead of 64 sigaction calls per exec. All 64 when the file cannot be read (no /proc). */
static uint64_t ignored_signals = ~0ULL;

static void read_ignored_signals(void) {
  int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  char buf[8192];
  ssize_t n;
  do n = read(fd, buf, sizeof buf - 1); while (n < 0 && errno == EINTR);
  close(fd);
  if (n <= 0) return;
  buf[n] = 0;
  const char *p = strstr(buf, "\nSigIgn:\t");
  if (!p) return;
  p += strlen("\nSigIgn:\t");
  uint64_t m = 0;
  int digits = 0;
  for (; digits < 16; p++, digits++) {
    int v = *p >= '0' && *p <= '9' ? *p - '0' : *p >= 'a' && *p <= 'f' ? *p - 'a' + 10 : -1;
    if (v < 0) return;
    m = m << 4 | (uint64_t)v;
  }
  if (*p == '\n') ignored_signals = m;
}

/* Set by an exec child (it shares init's memory until it execs) that loaded its reporting
 * program without a listener: init then expects none. */
static volatile int exec_without_listener;

/* exec child: a reporting program made plain, in place: each SECCOMP_RET_USER_NOTIF | errno
 * back to SECCOMP_RET_ERRNO | errno (lib/seccomp/bpf.ts reportingAction, reversed). */
static void plain_program(struct sock_filter *p, unsigned short n) {
  for (unsigned short i = 0; i < n; i++)
    if (p[i].code == (BPF_RET | BPF_K) && (p[i].k & SECCOMP_RET_ACTION_FULL) == SECCOMP_RET_USER_NOTIF)
      p[i].k = SECCOMP_RET_ERRNO | (p[i].k & SECCOMP_RET_DATA);
}

/* The status record that carries a seccomp listener (SCM_RIGHTS); failures carry a step. */
#define STATUS_LISTENER 0xfffffffeu

/* exec child: hands its filter's listener to init over the status socket. */
static int send_listener(int status_fd, int fd) {
  uint32_t rec[2] = {STATUS_LISTENER, 0};
  return send_with_fd(status_fd, rec, sizeof rec, fd) == (ssize_t)sizeof rec ? 0 : -1;
}

/* exec child: everything between fork and execve, in the order that keeps each step possible:
 * fds, rlimits, cwd, ids, capabilities, no_new_privs, and seccomp last (nsjail's applyPolicy). */
static void run_exec_child(const struct exec_req *r, const struct rlimit_req *rl, const struct sock_filter *prog,
                           const char *cwd, char **argv, char **envp, const int fds[3], int status_fd) {
  /* The kernel's struct sigaction all zero: SIG_DFL, no flags, no mask (the same layout on
   * x86_64 and arm64). Raw: musl's sigaction takes a lock for SIGABRT. */
  static const unsigned long kdfl[4];
  for (int s = 1; s < 65; s++) /* SIGPIPE is ignored by init (and Node); a parent may ignore more */
    if (ignored_signals & (1ULL << (s - 1))) syscall(SYS_rt_sigaction, s, kdfl, NULL, 8);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  /* A new session: a process group that kill requests reach as a whole, and no controlling
   * terminal, so TIOCSTI cannot push input into a terminal outside. */
  if (setsid() < 0) die_exec(status_fd, XSTEP_FDS, errno);
  for (int i = 0; i < 3; i++)
    if (dup2(fds[i], i) < 0) die_exec(status_fd, XSTEP_FDS, errno);
  if ((r->flags & EXEC_TTY) && take_controlling_tty() < 0) die_exec(status_fd, XSTEP_FDS, errno);
  /* Only 0-2 reach the program: init's own fds are closed now, the status pipe on exec. */
  if (close_init_fds(status_fd) < 0) die_exec(status_fd, XSTEP_FDS, errno);
  for (uint32_t i = 0; i < r->nrlimits; i++) {
    struct rlimit lim = {(rlim_t)rl[i].soft, (rlim_t)rl[i].hard};
    if (syscall(SYS_prlimit64, 0, (int)rl[i].resource, &lim, NULL) < 0) die_exec(status_fd, XSTEP_RLIMIT, errno);
  }
  if (enter_cwd(cwd) < 0) die_exec(status_fd, XSTEP_CWD, errno);
  if ((!(r->flags & EXEC_KEEP_GROUPS) && syscall(SYS_setgroups, 0, NULL) < 0) || syscall(SYS_setresgid, r->gid, r->gid, r->gid) < 0)
    die_exec(status_fd, XSTEP_CREDENTIALS, errno);
  if (drop_bounding_caps(r->caps) < 0) die_exec(status_fd, XSTEP_CAPABILITIES, errno);
  if (syscall(SYS_setresuid, r->uid, r->uid, r->uid) < 0) die_exec(status_fd, XSTEP_CREDENTIALS, errno);
  if (set_caps(r->uid, r->caps) < 0) die_exec(status_fd, XSTEP_CAPABILITIES, errno);
  if ((r->flags & EXEC_NO_NEW_PRIVS) && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
    die_exec(status_fd, XSTEP_CAPABILITIES, errno);
  if (r->flags & EXEC_SECCOMP) {
    struct sock_fprog fp = {(unsigned short)(r->seccomp_len / sizeof(struct sock_filter)), (struct sock_filter *)prog};
    int notify = (r->flags & EXEC_SECCOMP_NOTIFY) != 0;
    long fd = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, notify ? SECCOMP_FILTER_FLAG_NEW_LISTENER : 0, &fp);
    if (fd < 0 && notify && errno == EBUSY) {
      /* A filter above ours has a listener already (hutch itself runs under a supervisor,
       * LXD's or Sysbox's): the kernel allows one per stack. Refuse as the profile says,
       * unreported: the program back to plain errnos, and init told so (shared memory). */
      plain_program((struct sock_filter *)prog, fp.len);
      notify = 0;
      exec_without_listener = 1;
      fd = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fp);
    }
    if (fd < 0) die_exec(status_fd, XSTEP_SECCOMP, errno);
    /* From here on every call goes through the filter. The ones up to the exec (this
     * sendmsg, execve, and write/_exit on failure) are never notifying in a reporting
     * program (lib/seccomp/bpf.ts UNREPORTED_SYSCALLS): init, suspended until the exec,
     * could not answer them. The listener is close-on-exec: init holds the only copy after. */
    if (notify && send_listener(status_fd, (int)fd) < 0) die_exec(status_fd, XSTEP_SECCOMP, errno);
  }
  die_exec(status_fd, XSTEP_EXEC, exec_search(argv, envp));
}

#endif
