/*
 * A template fork's new root, piece by piece (addon/zygote/helper.c runs them in order): its
 * writable layer with the image's layers and overlay over them (make_root), a filesystem made
 * and attached below the new root, paths resolved inside it, the template's
 * own mounts carried over, a new /dev, masked and read-only paths, and last the lock that
 * keeps the task from undoing them (a user namespace of its own). Raw syscalls and
 * async-signal-safe libc only, as in all of the helper. Each returns 0, or -1 with errno (and
 * `*where` naming the path it was at).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/mount.h>
#include <linux/openat2.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mounts.h"

static char mountinfo[1 << 16];

int fsconfig_str(int fs, const char *k, const char *v) {
  return (int)syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING, k, v, 0);
}

/* A path inside the new root, as if root were "/" (no escape through symlinks or ".."). */
int open_in(int root, const char *rel, int flags) {
  struct open_how how;
  memset(&how, 0, sizeof how);
  how.flags = (uint64_t)(flags | O_CLOEXEC);
  how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
  while (*rel == '/') rel++;
  if (!*rel) rel = ".";
  return (int)syscall(SYS_openat2, root, rel, &how, sizeof how);
}

int move_onto(int tree, int target) {
  return (int)syscall(SYS_move_mount, tree, "", target, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH);
}

/* "l<i>": where layer i is attached in the scratch fs. */
static void layer_name(char *name, int i) {
  char tmp[8];
  int t = 0, k = 1;
  name[0] = 'l';
  do tmp[t++] = (char)('0' + i % 10), i /= 10; while (i);
  while (t) name[k++] = tmp[--t];
  name[k] = 0;
}

#define STEP(step, expr)   \
  do {                     \
    if ((expr) < 0) {      \
      *where = step;       \
      return -1;           \
    }                      \
  } while (0)

/* A directory `name` made in `dir` and the detached tree `tree` attached on it (tree closed). */
static int attach_at(int dir, const char *name, int tree) {
  if (mkdirat(dir, name, 0755) < 0) return -1;
  int d = openat(dir, name, O_PATH | O_CLOEXEC | O_NOFOLLOW);
  if (d < 0) return -1;
  int r = move_onto(tree, d);
  int e = errno;
  close(d);
  close(tree);
  errno = e;
  return r;
}

int make_root(const char *scratch_size, int disk, const int *layers, int n, int lower_list, int *sfdp, int *holderp,
              const char **where) {
  /* The scratch: a tmpfs of the disk limit's size over the template's /proc for now (it
   * leaves with the old root), holding the layers' mount points and overlay's "root". */
  int fs = (int)syscall(SYS_fsopen, "tmpfs", FSOPEN_CLOEXEC);
  STEP("scratch", fs);
  STEP("scratch", fsconfig_str(fs, "size", scratch_size));
  STEP("scratch", fsconfig_str(fs, "mode", "0755"));
  STEP("scratch", syscall(SYS_fsconfig, fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0));
  int sfd = (int)syscall(SYS_fsmount, fs, FSMOUNT_CLOEXEC, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV);
  STEP("scratch", sfd);
  close(fs);
  int oldproc = open("/proc", O_PATH | O_CLOEXEC | O_DIRECTORY);
  STEP("scratch", oldproc);
  STEP("scratch", move_onto(sfd, oldproc));
  close(oldproc);
  /* upper/ and work/ in the scratch, or (before 6.6, whose tmpfs keeps no user.* xattrs) in
   * the host's directory on the store's disk, attached as "disk": init then holds that as fd
   * 4 instead of the scratch, where commit reads upper/. */
  const char *upper = "upper", *work = "work";
  int holder = sfd;
  if (disk >= 0) {
    STEP("scratch", attach_at(sfd, "disk", disk));
    holder = openat(sfd, "disk", O_PATH | O_CLOEXEC | O_DIRECTORY | O_NOFOLLOW);
    STEP("scratch", holder);
    upper = "disk/upper", work = "disk/work";
  } else {
    STEP("scratch", mkdirat(sfd, "upper", 0755));
    STEP("scratch", mkdirat(sfd, "work", 0755));
  }
  STEP("scratch", mkdirat(sfd, "root", 0755));
  static char name[16];
  for (int i = 0; i < n; i++) {
    layer_name(name, i);
    STEP("layers", attach_at(sfd, name, layers[i]));
  }
  /* Overlay over the image's layers, top first (the host's order), as a fresh sandbox's. */
  fs = (int)syscall(SYS_fsopen, "overlay", FSOPEN_CLOEXEC);
  STEP("overlay", fs);
  STEP("overlay", syscall(SYS_fsconfig, fs, FSCONFIG_SET_FLAG, "userxattr", NULL, 0));
  STEP("overlay", chdir("/proc"));
  if (lower_list) {
    /* Before 6.8: the layers' names in one "lowerdir" value, top first, ':' between (the host
     * refuses an image whose list would not fit a page, lib/plan/plan.ts). */
    static char list[4096];
    size_t at = 0;
    for (int i = 0; i < n; i++) {
      layer_name(name, i);
      size_t k = strlen(name);
      if (at + k + 2 > sizeof list) {
        errno = E2BIG;
        STEP("overlay", -1);
      }
      if (i) list[at++] = ':';
      memcpy(list + at, name, k);
      at += k;
    }
    list[at] = 0;
    STEP("overlay", fsconfig_str(fs, "lowerdir", list));
  } else {
    for (int i = 0; i < n; i++) {
      layer_name(name, i);
      STEP("overlay", fsconfig_str(fs, "lowerdir+", name));
    }
  }
  STEP("overlay", fsconfig_str(fs, "upperdir", upper));
  STEP("overlay", fsconfig_str(fs, "workdir", work));
  STEP("overlay", syscall(SYS_fsconfig, fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0));
  int root = (int)syscall(SYS_fsmount, fs, FSMOUNT_CLOEXEC, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV);
  STEP("overlay", root);
  close(fs);
  int rootdir = openat(sfd, "root", O_PATH | O_CLOEXEC | O_NOFOLLOW);
  STEP("overlay", rootdir);
  STEP("overlay", move_onto(root, rootdir));
  close(rootdir);
  STEP("overlay", chdir("/"));
  *sfdp = sfd;
  *holderp = holder;
  return root;
}

/* A new filesystem at `target` (below `at`, which is a new-root fd or a directory fd). */
int fs_at(int at, const char *type, const char *target, unsigned attrs, const char *k1, const char *v1,
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
int read_mountinfo(void) {
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

int carry_mounts(int root, const char *skip, const char **where) {
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
int make_dev(int root, const char *shm_size, const char **where) {
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
int mask_and_readonly(int root, const char *masked, const char *ro, const char **where) {
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

/*
 * The task's mounts locked against it, as a created sandbox's are: a user namespace of its
 * own below the template's, with a copy of its mount namespace. The kernel locks every mount
 * of a copy made for a less privileged user namespace, so not even a task given SYS_ADMIN
 * can unmount a mask or remount a read-only path. Its ids map 1:1 onto the template's: the
 * maps are written by a child that stays in the template's user namespace (the writer must be
 * in the parent namespace, with CAP_SETUID/CAP_SETGID there). 0, or -1 with errno.
 */
static char idmaps[2][512];
static char mapper_stack[16384] __attribute__((aligned(16)));
static int mapper_pipe[2];
static int mapper_err;

static int write_file(const char *path, const char *data) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = write(fd, data, strlen(data));
  int e = errno;
  close(fd);
  errno = e;
  return n == (ssize_t)strlen(data) ? 0 : -1;
}

static int mapper(void *arg) {
  (void)arg;
  char c;
  ssize_t k;
  do k = read(mapper_pipe[0], &c, 1); while (k < 0 && errno == EINTR);
  if (k != 1) _exit(1);
  /* The task is PID 1 of this pid namespace, and /proc is its namespace's. */
  if (write_file("/proc/1/uid_map", idmaps[0]) < 0 || write_file("/proc/1/gid_map", idmaps[1]) < 0) {
    mapper_err = errno;
    _exit(1);
  }
  _exit(0);
}

/* "inside outside count" lines of our own map as "inside inside count": the same ids. */
static int identity_map(const char *path, char *out, size_t cap) {
  static char buf[512];
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return errno = EINVAL, -1;
  buf[n] = 0;
  size_t o = 0;
  for (char *l = buf; *l;) {
    while (*l == ' ') l++;
    char *a = l;
    while (*l >= '0' && *l <= '9') l++;
    size_t alen = (size_t)(l - a);
    while (*l == ' ') l++;
    while (*l >= '0' && *l <= '9') l++; /* outside: not ours to name */
    while (*l == ' ') l++;
    char *c = l;
    while (*l >= '0' && *l <= '9') l++;
    size_t clen = (size_t)(l - c);
    while (*l && *l != '\n') l++;
    if (*l) l++;
    if (alen == 0 || clen == 0) continue;
    if (o + 2 * alen + clen + 3 >= cap) return errno = E2BIG, -1;
    memcpy(out + o, a, alen), o += alen, out[o++] = ' ';
    memcpy(out + o, a, alen), o += alen, out[o++] = ' ';
    memcpy(out + o, c, clen), o += clen, out[o++] = '\n';
  }
  out[o] = 0;
  return o > 0 ? 0 : (errno = EINVAL, -1);
}

int lock_mounts(void) {
  if (identity_map("/proc/self/uid_map", idmaps[0], sizeof idmaps[0]) < 0 ||
      identity_map("/proc/self/gid_map", idmaps[1], sizeof idmaps[1]) < 0)
    return -1;
  if (pipe2(mapper_pipe, O_CLOEXEC) < 0) return -1;
  mapper_err = 0;
  int pid = clone(mapper, mapper_stack + sizeof mapper_stack, CLONE_VM | SIGCHLD, NULL);
  int e = errno;
  if (pid < 0) {
    close(mapper_pipe[0]), close(mapper_pipe[1]);
    return errno = e, -1;
  }
  int r = unshare(CLONE_NEWUSER | CLONE_NEWNS);
  e = errno;
  if (r == 0) r = write(mapper_pipe[1], "g", 1) == 1 ? 0 : -1, e = errno;
  close(mapper_pipe[1]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  close(mapper_pipe[0]);
  if (r < 0) return errno = e, -1;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return errno = mapper_err ? mapper_err : EPERM, -1;
  return 0;
}
