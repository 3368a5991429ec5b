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
#include <linux/filter.h>
#include <linux/mount.h>
#include <linux/openat2.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
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
  /* then nrlimits x {u32 resource, u32 pad, u64 soft, u64 hard}, the seccomp program, and
   * strings: scratch size, shm size, hostname, then masked, read-only and skipped mount
   * paths, each list ended by an empty string. */
};
struct hz_rlimit {
  uint32_t resource, pad;
  uint64_t soft, hard;
};

static unsigned char planbuf[1 << 17];
static unsigned char reqbuf[1 << 16];
static int reqlen = -1;
static char mountinfo[1 << 16];

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

static int fsconfig_str(int fs, const char *k, const char *v) {
  return (int)syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING, k, v, 0);
}

/* A path inside the new root, as if root were "/" (no escape through symlinks or ".."). */
static int open_in(int root, const char *rel, int flags) {
  struct open_how how;
  memset(&how, 0, sizeof how);
  how.flags = (uint64_t)(flags | O_CLOEXEC);
  how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
  while (*rel == '/') rel++;
  if (!*rel) rel = ".";
  return (int)syscall(SYS_openat2, root, rel, &how, sizeof how);
}

static int move_onto(int tree, int target) {
  return (int)syscall(SYS_move_mount, tree, "", target, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH);
}

/* A new filesystem at `target` (below `at`, which is a new-root fd or a directory fd). */
static int fs_at(int at, const char *type, const char *target, unsigned attrs, const char *k1, const char *v1,
                 const char *k2, const char *v2, int *out) {
  int t = open_in(at, target, O_PATH);
  if (t < 0 && errno == ENOENT) {
    if (mkdirat(at, target[0] == '/' ? target + 1 : target, 0755) < 0 && errno != EEXIST) return -1;
    t = open_in(at, target, O_PATH);
  }
  if (t < 0) return -1;
  int fs = (int)syscall(SYS_fsopen, type, FSOPEN_CLOEXEC);
  int r = fs < 0 ? -1 : 0;
  if (r == 0 && k1) r = fsconfig_str(fs, k1, v1);
  if (r == 0 && k2) r = fsconfig_str(fs, k2, v2);
  if (r == 0) r = (int)syscall(SYS_fsconfig, fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0);
  int m = r < 0 ? -1 : (int)syscall(SYS_fsmount, fs, FSMOUNT_CLOEXEC, attrs);
  int e = errno;
  if (fs >= 0) close(fs);
  if (m >= 0) r = move_onto(m, t), e = errno;
  else r = -1;
  close(t);
  if (r == 0 && out) *out = m;
  else if (m >= 0) close(m);
  errno = e;
  return r;
}

static long num(const char **p) {
  long v = 0;
  while (**p >= '0' && **p <= '9') v = v * 10 + (*(*p)++ - '0');
  return v;
}

/* In a string list ended by an empty string. */
static int listed(const char *list, const char *s) {
  for (; *list; list += strlen(list) + 1)
    if (strcmp(list, s) == 0) return 1;
  return 0;
}

/* Makes `path` (absolute) beneath the new root: missing directories, the last one a file
 * unless `dir`; each made in its parent as resolved inside the root. Errors show later. */
static void make_path(int root, char *path, int dir) {
  for (char *s = path + 1;; s++) {
    if (*s != '/' && *s != 0) continue;
    char saved = *s;
    *s = 0;
    char *slash = strrchr(path, '/');
    *slash = 0;
    int parent = open_in(root, slash == path ? "/" : path, O_PATH | O_DIRECTORY);
    *slash = '/';
    if (parent >= 0) {
      if (saved == 0 && !dir) close(openat(parent, slash + 1, O_CREAT | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0644));
      else mkdirat(parent, slash + 1, 0755);
      close(parent);
    }
    *s = saved;
    if (saved == 0) break;
  }
}

/* The template's own mounts directly on its root (host dirs, volumes), carried onto the new
 * root with what is below them; not /proc and /dev (made anew) nor the skipped paths. */
static int read_mountinfo(void) {
  int fd = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  size_t len = 0;
  for (;;) {
    ssize_t k = read(fd, mountinfo + len, sizeof mountinfo - 1 - len);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) break;
    len += (size_t)k;
  }
  close(fd);
  mountinfo[len] = 0;
  return 0;
}

static int carry_mounts(int root, const char *skip, const char **where) {
  long rootid = -1;
  static char mp[4096];
  for (int pass = 0; pass < 2; pass++) {
    for (char *l = mountinfo; *l;) {
      char *nl = strchr(l, '\n');
      if (nl) *nl = 0;
      const char *p = l;
      long id = num(&p);
      p++;
      long parent = num(&p);
      /* skip major:minor and root, to the mount point */
      const char *f = p;
      for (int i = 0; i < 2 && f; i++) f = strchr(f + 1, ' ');
      if (f) {
        f++;
        size_t n = 0;
        while (f[n] && f[n] != ' ' && n < sizeof mp - 1) mp[n] = f[n], n++;
        mp[n] = 0;
        if (pass == 0 && strcmp(mp, "/") == 0) rootid = id;
        if (pass == 1 && parent == rootid && id != rootid && !strchr(mp, '\\') && strcmp(mp, "/proc") != 0 &&
            strcmp(mp, "/dev") != 0 && !listed(skip, mp)) {
          *where = mp;
          int tree = (int)syscall(SYS_open_tree, AT_FDCWD, mp, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE);
          if (tree < 0) return -1;
          struct stat st;
          int t = open_in(root, mp, O_PATH);
          if (t < 0 && errno == ENOENT && fstat(tree, &st) == 0) {
            make_path(root, mp, S_ISDIR(st.st_mode));
            t = open_in(root, mp, O_PATH);
          }
          int r = t < 0 ? -1 : move_onto(tree, t);
          int e = errno;
          if (t >= 0) close(t);
          close(tree);
          if (r < 0) return errno = e, -1;
        }
      }
      if (nl) *nl = '\n';
      if (!nl) break;
      l = nl + 1;
    }
  }
  return 0;
}

/* A new /dev: tmpfs, the template's harmless device nodes bound onto files, a private devpts,
 * shm of the plan's size, the usual symlinks (as a fresh sandbox's, addon/child_mount.cc). */
static int make_dev(int root, const char *shm_size, const char **where) {
  static const char *const nodes[] = {"null", "zero", "full", "random", "urandom", "tty"};
  static char src[32];
  int dev = -1;
  *where = "/dev";
  if (fs_at(root, "tmpfs", "dev", MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC, "mode", "0755", "size", "65536", &dev) < 0) return -1;
  int r = 0;
  for (unsigned i = 0; r == 0 && i < sizeof nodes / sizeof nodes[0]; i++) {
    strcpy(src, "/dev/");
    strcat(src, nodes[i]);
    *where = nodes[i];
    int f = openat(dev, nodes[i], O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (f < 0) return -1;
    close(f);
    int tree = (int)syscall(SYS_open_tree, AT_FDCWD, src, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
    if (tree < 0) return -1;
    int t = openat(dev, nodes[i], O_PATH | O_CLOEXEC | O_NOFOLLOW);
    r = t < 0 ? -1 : move_onto(tree, t);
    if (t >= 0) close(t);
    close(tree);
  }
  *where = "/dev/pts";
  if (r == 0) r = fs_at(dev, "devpts", "pts", MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC, "ptmxmode", "0666", "mode", "0620", NULL);
  *where = "/dev/shm";
  if (r == 0) r = fs_at(dev, "tmpfs", "shm", MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, "mode", "1777", "size", shm_size, NULL);
  static const char *const links[][2] = {{"pts/ptmx", "ptmx"}, {"/proc/self/fd", "fd"}, {"/proc/self/fd/0", "stdin"},
                                         {"/proc/self/fd/1", "stdout"}, {"/proc/self/fd/2", "stderr"}};
  for (unsigned i = 0; r == 0 && i < 5; i++) r = symlinkat(links[i][0], dev, links[i][1]);
  close(dev);
  return r;
}

/* Masked paths (a file gets /dev/null over it, a directory an empty read-only tmpfs) and
 * read-only paths (a read-only clone of the subtree over itself); missing ones skipped. */
static int mask_and_readonly(int root, const char *masked, const char *ro, const char **where) {
  for (; *masked; masked += strlen(masked) + 1) {
    *where = masked;
    int t = open_in(root, masked, O_PATH);
    if (t < 0 && errno == ENOENT) continue;
    if (t < 0) return -1;
    struct stat st;
    int r = fstat(t, &st);
    if (r == 0 && S_ISDIR(st.st_mode)) {
      r = fs_at(root, "tmpfs", masked, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC, "size", "0",
                NULL, NULL, NULL);
    } else if (r == 0) {
      int tree = (int)syscall(SYS_open_tree, root, "dev/null", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
      r = tree < 0 ? -1 : move_onto(tree, t);
      if (tree >= 0) close(tree);
    }
    close(t);
    if (r < 0) return -1;
  }
  for (; *ro; ro += strlen(ro) + 1) {
    *where = ro;
    int t = open_in(root, ro, O_PATH);
    if (t < 0 && errno == ENOENT) continue;
    if (t < 0) return -1;
    int tree = (int)syscall(SYS_open_tree, t, "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE | AT_EMPTY_PATH);
    struct mount_attr a;
    memset(&a, 0, sizeof a);
    a.attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    int r = tree < 0 ? -1 : (int)syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH | AT_RECURSIVE, &a, sizeof a);
    if (r == 0) r = move_onto(tree, t);
    if (tree >= 0) close(tree);
    close(t);
    if (r < 0) return -1;
  }
  return 0;
}

#define HZ_MAX_LAYERS 128
static int layer_fds[HZ_MAX_LAYERS];
static int nlayers, nlayers_total;

/* One message and the fds that came with it (the image's layers, as detached trees). */
/* "l<i>": where layer i is attached in the scratch fs. */
static void layer_name(char *name, int i) {
  char tmp[8];
  int t = 0, k = 1;
  name[0] = 'l';
  do tmp[t++] = (char)('0' + i % 10), i /= 10; while (i);
  while (t) name[k++] = tmp[--t];
  name[k] = 0;
}

static ssize_t recv_plan(int fd, void *buf, size_t len) {
  struct iovec iov = {buf, len};
  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  static union {
    char buf[CMSG_SPACE(sizeof(int) * HZ_MAX_LAYERS)];
    struct cmsghdr align;
  } c;
  msg.msg_control = c.buf;
  msg.msg_controllen = sizeof c.buf;
  ssize_t n;
  do n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC); while (n < 0 && errno == EINTR);
  if (n < 0) return n;
  for (struct cmsghdr *h = CMSG_FIRSTHDR(&msg); h; h = CMSG_NXTHDR(&msg, h)) {
    if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS) continue;
    int k = (int)((h->cmsg_len - CMSG_LEN(0)) / sizeof(int));
    for (int i = 0; i < k && nlayers < HZ_MAX_LAYERS; i++) memcpy(&layer_fds[nlayers++], CMSG_DATA(h) + i * sizeof(int), sizeof(int));
  }
  return n;
}

/* The task's side (C2): PID 1 of its pid namespace, in its own mount namespace. */
static void become_task(int ctl, const struct hz_plan *pl, const struct hz_rlimit *rl, const struct sock_filter *prog,
                        const char *strings, int in, int out, int err, int keep) {
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
  CHECK("hostname", sethostname(hostname, strlen(hostname)));
  CHECK("mount-private", mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL));
  CHECK("mountinfo", read_mountinfo());
  /* The writable layer: a tmpfs of the disk limit's size with overlay's upper and work, and
   * the image's layers (trees the host opened for this fork) attached inside it. It goes over
   * the template's /proc for now, which leaves with the old root. */
  int fs = (int)syscall(SYS_fsopen, "tmpfs", FSOPEN_CLOEXEC);
  CHECK("scratch", fs);
  CHECK("scratch", fsconfig_str(fs, "size", scratch));
  CHECK("scratch", fsconfig_str(fs, "mode", "0755"));
  CHECK("scratch", syscall(SYS_fsconfig, fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0));
  int sfd = (int)syscall(SYS_fsmount, fs, FSMOUNT_CLOEXEC, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV);
  CHECK("scratch", sfd);
  close(fs);
  int oldproc = open("/proc", O_PATH | O_CLOEXEC | O_DIRECTORY);
  CHECK("scratch", oldproc);
  CHECK("scratch", move_onto(sfd, oldproc));
  close(oldproc);
  CHECK("scratch", mkdirat(sfd, "upper", 0755));
  CHECK("scratch", mkdirat(sfd, "work", 0755));
  CHECK("scratch", mkdirat(sfd, "root", 0755));
  static char name[16];
  for (int i = 0; i < nlayers; i++) {
    layer_name(name, i);
    CHECK("layers", mkdirat(sfd, name, 0755));
    int d = openat(sfd, name, O_PATH | O_CLOEXEC | O_NOFOLLOW);
    CHECK("layers", d);
    CHECK("layers", move_onto(layer_fds[i], d));
    close(d);
    close(layer_fds[i]);
  }
  /* Overlay over the image's layers, top first (the host's order), as a fresh sandbox's. */
  fs = (int)syscall(SYS_fsopen, "overlay", FSOPEN_CLOEXEC);
  CHECK("overlay", fs);
  CHECK("overlay", syscall(SYS_fsconfig, fs, FSCONFIG_SET_FLAG, "userxattr", NULL, 0));
  CHECK("overlay", chdir("/proc"));
  for (int i = 0; i < nlayers; i++) {
    layer_name(name, i);
    CHECK("overlay", fsconfig_str(fs, "lowerdir+", name));
  }
  CHECK("overlay", fsconfig_str(fs, "upperdir", "upper"));
  CHECK("overlay", fsconfig_str(fs, "workdir", "work"));
  CHECK("overlay", syscall(SYS_fsconfig, fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0));
  int root = (int)syscall(SYS_fsmount, fs, FSMOUNT_CLOEXEC, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV);
  CHECK("overlay", root);
  close(fs);
  int rootdir = openat(sfd, "root", O_PATH | O_CLOEXEC | O_NOFOLLOW);
  CHECK("overlay", rootdir);
  CHECK("overlay", move_onto(root, rootdir));
  close(rootdir);
  CHECK("overlay", chdir("/"));
  if (carry_mounts(root, skip, &where) < 0) fail(ctl, where, errno);
  if (make_dev(root, shm, &where) < 0) fail(ctl, where, errno);
  /* proc of this pid namespace, mounted while the template's proc is still in this mount
   * namespace (a user namespace may mount proc only where one is already fully visible). */
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
  /* The host moved us into our cgroup before it sent proc: our cgroup namespace starts there. */
  CHECK("unshare", unshare(CLONE_NEWCGROUP));
  if (mask_and_readonly(root, masked, ro, &where) < 0) fail(ctl, where, errno);
  CHECK("pivot", fchdir(root));
  CHECK("pivot", syscall(SYS_pivot_root, ".", "."));
  CHECK("pivot", umount2(".", MNT_DETACH));
  CHECK("pivot", chdir("/"));
  close(root);
  if (!pl->as_init) close(sfd); /* init holds it as fd 4 (commit reads the upper dir there) */
  if (pl->readonly_root) {
    struct mount_attr a;
    memset(&a, 0, sizeof a);
    a.attr_set = MOUNT_ATTR_RDONLY;
    CHECK("readonly", syscall(SYS_mount_setattr, AT_FDCWD, "/", 0, &a, sizeof a));
  }
  CHECK("session", setsid()); /* no controlling terminal: TIOCSTI reaches nothing outside */
  if (in < 0) {
    /* Prepared ahead (`size`): wait here, set up but still privileged, for the task's request:
     * 'R', its JSON (hutch_zygote_request gives it to the zygote) and its 4 fds. */
    nlayers = 0;
    ssize_t k = recv_plan(ctl, reqbuf, sizeof reqbuf - 1);
    if (k < 1 || reqbuf[0] != 'R' || nlayers != 4) fail(ctl, "request", k < 0 ? errno : EPROTO);
    reqlen = (int)k - 1;
    in = layer_fds[0], out = layer_fds[1], err = layer_fds[2], keep = layer_fds[3];
  }
  if (pl->as_init) {
    /* A Sandbox's init (SandboxTemplate.fork): its control socket on 3 (the request's stdin
     * fd), the writable layer's tmpfs on 4, the setup pipe on 5 (the request's stdout fd);
     * init applies credentials, capabilities, rlimits and seccomp to each exec itself. */
    int initbin = layer_fds[nlayers_total - 1];
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
  for (uint32_t i = 0; i < pl->nrlimits; i++) {
    struct rlimit lim = {(rlim_t)rl[i].soft, (rlim_t)rl[i].hard};
    CHECK("rlimit", setrlimit((int)rl[i].resource, &lim));
  }
  CHECK("credentials", setgroups(0, NULL));
  CHECK("credentials", setresgid(pl->gid, pl->gid, pl->gid));
  for (int cap = 0; cap < 64; cap++) {
    if (pl->caps & (1ULL << cap)) continue;
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) {
      if (errno == EINVAL) break;
      fail(ctl, "capabilities", errno);
    }
  }
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL) fail(ctl, "capabilities", errno);
  CHECK("credentials", setresuid(pl->uid, pl->uid, pl->uid));
  struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct data[2];
  memset(data, 0, sizeof data);
  if (pl->uid == 0) {
    data[0].effective = data[0].permitted = (uint32_t)pl->caps;
    data[1].effective = data[1].permitted = (uint32_t)(pl->caps >> 32);
  }
  CHECK("capabilities", syscall(SYS_capset, &hdr, data));
  CHECK("no_new_privs", prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0));
  /* Seccomp last, then the last message. */
  if (pl->seccomp_len > 0) {
    struct sock_fprog fp = {(unsigned short)(pl->seccomp_len / sizeof(struct sock_filter)), (struct sock_filter *)prog};
    CHECK("seccomp", syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fp));
  }
  unsigned char ok = 'S';
  send(ctl, &ok, 1, MSG_NOSIGNAL);
  close(ctl);
}

/* The request a prepared fork received (its JSON), for the zygote: its length, or -1 when
 * this fork was not prepared ahead (the zygote had the request already). */
int hutch_zygote_request(char *buf, int cap) {
  if (reqlen < 0) return -1;
  int n = reqlen < cap ? reqlen : cap;
  memcpy(buf, reqbuf + 1, (size_t)n);
  return reqlen;
}

/* A one-byte message with n fds. */
static int send_fds(int ctl, unsigned char kind, const int *fds, int n) {
  struct iovec iov = {&kind, 1};
  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  union {
    char buf[CMSG_SPACE(sizeof(int) * 2)];
    struct cmsghdr align;
  } c;
  msg.msg_control = c.buf;
  msg.msg_controllen = CMSG_SPACE(sizeof(int) * n);
  struct cmsghdr *h = CMSG_FIRSTHDR(&msg);
  h->cmsg_level = SOL_SOCKET;
  h->cmsg_type = SCM_RIGHTS;
  h->cmsg_len = CMSG_LEN(sizeof(int) * n);
  memcpy(CMSG_DATA(h), fds, sizeof(int) * n);
  return sendmsg(ctl, &msg, MSG_NOSIGNAL) < 0 ? -1 : 0;
}

/*
 * Called in the zygote's child, right after fork, with the request's socket, the task's
 * stdio, and one more fd the task keeps as fd 3 (or -1): the built-in zygotes read the
 * request's files from it. Returns 0 in the task process, isolated and confined; the intermediate process
 * never returns. The zygote must have closed its own copy of these fds in the parent.
 */
int hutch_zygote_enter(int ctl, int in, int out, int err, int keep) {
  /* 0. A session of its own (a kill of the zygote's process group must not reach its forks)
   * and off the zygote's stdio (a fork must not hold the zygote's pipes open). */
  if (setsid() < 0) fail(ctl, "session", errno);
  int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (nul < 0) fail(ctl, "fds", errno);
  for (int i = 0; i < 3; i++)
    if (dup2(nul, i) < 0) fail(ctl, "fds", errno);
  close(nul);
  /* 1. The plan and the image's layers: the host sends them with the request. */
  ssize_t n = recv_plan(ctl, planbuf, sizeof planbuf);
  if (n <= 0) _exit(125); /* the host gave up on this request */
  const struct hz_plan *pl = (const struct hz_plan *)planbuf;
  if ((size_t)n < sizeof *pl || pl->magic != HZ_MAGIC ||
      (size_t)n != sizeof *pl + pl->nrlimits * sizeof(struct hz_rlimit) + pl->seccomp_len + pl->strings_len ||
      pl->strings_len == 0 || planbuf[n - 1] != 0 || nlayers < (pl->as_init ? 2 : 1))
    fail(ctl, "plan", EINVAL);
  nlayers_total = nlayers;
  if (pl->as_init) nlayers--; /* the last fd is init's binary, not a layer */
  const struct hz_rlimit *rl = (const struct hz_rlimit *)(planbuf + sizeof *pl);
  const struct sock_filter *prog = (const struct sock_filter *)((const unsigned char *)rl + pl->nrlimits * sizeof *rl);
  const char *strings = (const char *)prog + pl->seccomp_len;
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
    become_task(ctl, pl, rl, prog, strings, in, out, err, keep);
    return 0;
  }
  /* 3. C1: no task code runs here. Both pidfds to the host, which moves both processes into
   * the fork's cgroup and makes the task's proc while the task sets up its mounts; then how
   * the task ended; then go. */
  {
    int pf[2] = {(int)syscall(SYS_pidfd_open, getpid(), 0), (int)syscall(SYS_pidfd_open, task, 0)};
    if (pf[0] < 0 || pf[1] < 0 || send_fds(ctl, 'P', pf, 2) < 0) {
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
  pid_t w;
  do w = waitpid(task, &status, 0); while (w < 0 && errno == EINTR);
  unsigned char m[5] = {'X'};
  memcpy(m + 1, &status, 4);
  send(ctl, m, 5, MSG_NOSIGNAL);
  _exit(0);
}
