// The root filesystem of a sandbox: scratch tmpfs, overlay root, binds, /proc, /dev, masks,
// read-only paths, pivot_root. Every function runs in the child between clone and exec: raw
// syscalls only (rsys*, -errno, errno untouched), no allocation. Mounts are made through fds
// (fsopen/fsmount/open_tree/move_mount) and targets are resolved with
// openat2(RESOLVE_IN_ROOT), so a symlink in the image cannot send a mount outside the new
// root (the CVE-2024-21626 and CVE-2025-31133 class).
#include <linux/openat2.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include "child.h"
#include "sys.h"

static int rclose(int fd) { return (int)rsys1(SYS_close, fd); }

static int open_in(int dirfd, const char *path, unsigned long flags, unsigned long long resolve) {
  struct open_how how;
  memset(&how, 0, sizeof how);
  how.flags = flags | O_CLOEXEC;
  how.resolve = resolve;
  long fd;
  do fd = rsys4(SYS_openat2, dirfd, path, &how, sizeof how); while (fd == -EAGAIN || fd == -EINTR);
  return (int)fd;
}

static int fsconfig_str(int fs, const char *key, const char *value) {
  return (int)rsys5(SYS_fsconfig, fs, FSCONFIG_SET_STRING, key, value, 0);
}
static int fsconfig_create(int fs) { return (int)rsys5(SYS_fsconfig, fs, FSCONFIG_CMD_CREATE, nullptr, nullptr, 0); }
static int move_onto(int tree_fd, int target_fd) {
  return (int)rsys5(SYS_move_mount, tree_fd, "", target_fd, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH);
}

// child; raw syscalls; after the switch to the sandbox's root. A detached tmpfs for the
// writable layer (its size is the disk quota), or the persistent on-disk dir opened earlier.
int scratch_in_child(const plan &p, int persistent_fd, int *scratch_fd) {
  if (persistent_fd >= 0) {
    *scratch_fd = persistent_fd;
    return 0;
  }
  int fs = (int)rsys2(SYS_fsopen, "tmpfs", FSOPEN_CLOEXEC);
  if (fs < 0) return fs;
  int r = fsconfig_str(fs, "size", p.scratch_size.c_str());
  if (r == 0) r = fsconfig_str(fs, "mode", "0755");
  if (r == 0) r = fsconfig_create(fs);
  int m = r < 0 ? r : (int)rsys3(SYS_fsmount, fs, FSMOUNT_CLOEXEC, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV);
  rclose(fs);
  if (m < 0) return m;
  r = (int)rsys3(SYS_mkdirat, m, "upper", 0755);
  if (r == 0) r = (int)rsys3(SYS_mkdirat, m, "work", 0700);
  if (r < 0) return r;
  *scratch_fd = m;
  return 0;
}

// child; raw syscalls. Appends each layer with "lowerdir+" (6.8+: one fsconfig per layer,
// since a single fsconfig string is capped at 256 bytes — four layer names), top first.
// Returns 0 or -errno (the legacy path is chosen by lib/, never here).
static int overlay_layers(int fs, const plan &p, const char **where) {
  char name[256];
  const char *s = p.lowerdirs.c_str();
  for (;;) {
    size_t n = 0;
    while (s[n] && s[n] != ':') n++;
    if (n == 0 || n >= sizeof name) return -EINVAL;
    memcpy(name, s, n);
    name[n] = 0;
    int r = fsconfig_str(fs, "lowerdir+", name);
    if (r < 0) {
      *where = p.lowerdirs.c_str();
      return r;
    }
    if (!s[n]) return 0;
    s += n + 1;
  }
}

static size_t append(char *buf, size_t off, size_t cap, const char *s) {
  while (*s && off + 1 < cap) buf[off++] = *s++;
  buf[off] = 0;
  return off;
}

// child; raw syscalls. Before 6.8 (no "lowerdir+"): the legacy mount(2) data string, at the
// root mountpoint, with absolute layer paths and the scratch dirs through /proc/self/fd.
static int fd_path(char *buf, int fd) {
  // "/proc/self/fd/<fd>": a magic link mount(2) follows to the object itself.
  static const char pre[] = "/proc/self/fd/";
  size_t off = 0;
  for (const char *q = pre; *q; q++) buf[off++] = *q;
  char rev[16];
  int k = 0;
  for (int v = fd; v > 0 || k == 0; v /= 10) rev[k++] = (char)('0' + v % 10);
  while (k > 0) buf[off++] = rev[--k];
  buf[off] = 0;
  return 0;
}

static int overlay_legacy(const plan &p, int scratch_fd, int mnt_fd, int parent_fd, int *root_fd, const char **where) {
  static char data[65536];  // the setup child's own copy (CLONE_VM: only this child writes it before exec)
  char fdbuf[16];
  int k = 0;
  char rev[16];
  for (int v = scratch_fd; v > 0 || k == 0; v /= 10) rev[k++] = (char)('0' + v % 10);
  for (int i = 0; i < k; i++) fdbuf[i] = rev[k - 1 - i];
  fdbuf[k] = 0;
  // Layers by name, relative to the store's layers dir (mount(2)'s data holds one page: lib/
  // refuses images whose layer list would not fit).
  size_t off = append(data, 0, sizeof data, "userxattr,lowerdir=");
  off = append(data, off, sizeof data, p.lowerdirs.c_str());
  off = append(data, off, sizeof data, ",upperdir=/proc/self/fd/");
  off = append(data, off, sizeof data, fdbuf);
  off = append(data, off, sizeof data, "/upper,workdir=/proc/self/fd/");
  off = append(data, off, sizeof data, fdbuf);
  off = append(data, off, sizeof data, "/work");
  if (off + 1 >= sizeof data) return -E2BIG;
  *where = p.lowerdirs.c_str();
  // The target and its parent were opened with host root's ids (overlay_begin_in_child's
  // caller): the store's ancestors may be closed to the sandbox's range.
  char target[32];
  fd_path(target, mnt_fd);
  int r = (int)rsys5(SYS_mount, "overlay", target, "overlay", MS_NOSUID | MS_NODEV, data);
  rsys1(SYS_chdir, "/");
  if (r < 0) return r;
  const char *name = p.root_mountpoint.c_str();
  for (const char *q = name; *q; q++)
    if (*q == '/') name = q + 1;
  int fd = (int)rsys4(SYS_openat, parent_fd, name, O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
  if (fd < 0) return fd;
  *root_fd = fd;
  return 1;  // attached already
}

// child; raw syscalls; BEFORE the switch to the sandbox's root, while our fs ids are still the
// host's root (owner of the store's directories, which its range may not traverse when each
// sandbox has a range of its own). Starts the overlay: the lower layers, relative to the
// store's layers dir, so mountinfo shows no host path. `userxattr`: inside a user namespace
// overlay keeps whiteouts and opaque dirs in user.overlay.*. Returns the fs context fd, or
// 0 (on the legacy path *fs_out is -1, see overlay_finish), or -errno.
int overlay_begin_in_child(const plan &p, int *fs_out, const char **where) {
  *where = "overlay";
  *fs_out = -1;
  // Before 6.5 overlay parses its options only at creation (the legacy adapter accepts any
  // key), and "lowerdir+" came in 6.8: lib/ tells us which path this kernel takes. On the
  // legacy path we enter the layers dir now, with host root's ids, and stay there: mount(2)
  // resolves the relative layer names from here later, with the sandbox's.
  if (p.legacy_overlay) {
    int r = (int)rsys1(SYS_chdir, p.layers_dir.c_str());
    if (r < 0) *where = p.layers_dir.c_str();
    return r;
  }
  int fs = (int)rsys2(SYS_fsopen, "overlay", FSOPEN_CLOEXEC);
  if (fs < 0) return fs;
  int r = (int)rsys5(SYS_fsconfig, fs, FSCONFIG_SET_FLAG, "userxattr", nullptr, 0);
  if (r == 0) {
    r = (int)rsys1(SYS_chdir, p.layers_dir.c_str());
    if (r < 0) *where = p.layers_dir.c_str();
  }
  // Per-sandbox id ranges: each layer is first covered, in our mount namespace only, by an
  // idmapped tree the parent prepared, so the layers' stored ids show as this sandbox's.
  for (size_t i = 0; r == 0 && i < p.layer_fds.size(); i++) {
    char name[256];
    const char *s = p.lowerdirs.c_str();
    for (size_t k = 0; k < i; k++) {
      while (*s && *s != ':') s++;
      if (*s) s++;
    }
    size_t n = 0;
    while (s[n] && s[n] != ':' && n < sizeof name - 1) name[n] = s[n], n++;
    name[n] = 0;
    r = (int)rsys5(SYS_move_mount, p.layer_fds[i], "", AT_FDCWD, name, MOVE_MOUNT_F_EMPTY_PATH);
    if (r < 0) *where = p.lowerdirs.c_str();
  }
  // No fallback here: lib/ chose this path from the kernel version (plan.legacy_overlay), so
  // an EINVAL from "lowerdir+" is the kernel refusing a layer, and is reported as such.
  if (r == 0) r = overlay_layers(fs, p, where);
  rsys1(SYS_chdir, "/");
  if (r < 0) {
    rclose(fs);
    return r;
  }
  *fs_out = fs;
  return 0;
}

// child; raw syscalls; after the switch to the sandbox's root (overlay records its mounter's
// credentials at creation: copy-ups must belong to the sandbox). Adds upper and work from the
// scratch fs, creates the overlay and attaches it at the mountpoint opened earlier.
// Returns 0 and the root's fd in *root_fd, or -errno.
int overlay_finish_in_child(const plan &p, int fs, int scratch_fd, int mnt_fd, int parent_fd, int *root_fd,
                            const char **where) {
  *where = "overlay";
  if (fs < 0) {
    int r = overlay_legacy(p, scratch_fd, mnt_fd, parent_fd, root_fd, where);
    return r < 0 ? r : 0;
  }
  int r = (int)rsys1(SYS_fchdir, scratch_fd);
  if (r == 0) r = fsconfig_str(fs, "upperdir", "upper");
  if (r == 0) r = fsconfig_str(fs, "workdir", "work");
  if (r == 0) r = fsconfig_create(fs);
  int m = r < 0 ? r : (int)rsys3(SYS_fsmount, fs, FSMOUNT_CLOEXEC, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV);
  rclose(fs);
  if (m < 0) return m;
  r = (int)rsys1(SYS_chdir, "/");
  if (r == 0) {
    // pivot_root needs the new root attached to our mount tree.
    *where = p.root_mountpoint.c_str();
    r = (int)rsys5(SYS_move_mount, m, "", mnt_fd, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH);
  }
  if (r < 0) return r;
  *root_fd = m;
  return 0;
}

static int make_node(int parent, const char *name, bool is_file) {
  if (is_file) {
    int f = (int)rsys4(SYS_openat, parent, name, O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0644);
    return f < 0 ? f : rclose(f);
  }
  return (int)rsys3(SYS_mkdirat, parent, name, 0755);
}

// child; raw syscalls. Opens `rel` inside the new root, as if root_fd were "/" (symlinks
// resolve inside it, ".." stops at it); with `create`, missing components are made as
// directories (the last as a file when `is_file`) in their already resolved parent.
// Returns 0 and an O_PATH fd in *out_fd, or -errno.
int resolve_in_root(int root_fd, const char *rel, bool create, bool is_file, int *out_fd) {
  const unsigned long long res = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
  int fd = open_in(root_fd, rel, O_PATH, res);
  if (fd >= 0) {
    *out_fd = fd;
    return 0;
  }
  if (fd != -ENOENT || !create) return fd;
  char buf[4096];
  size_t len = strlen(rel);
  if (len >= sizeof buf) return -ENAMETOOLONG;
  memcpy(buf, rel, len + 1);
  int parent = root_fd;  // the root itself is the parent of the first component
  size_t start = 0;
  for (size_t i = 0; i <= len; i++) {
    if (buf[i] != '/' && buf[i] != 0) continue;
    if (i == start) {
      start = i + 1;
      continue;
    }
    char saved = buf[i];
    buf[i] = 0;
    int cur = open_in(root_fd, buf, O_PATH, res);
    if (cur == -ENOENT) {
      int r = make_node(parent, buf + start, saved == 0 && is_file);
      if (r < 0 && r != -EEXIST) {
        if (parent != root_fd) rclose(parent);
        return r;
      }
      cur = open_in(root_fd, buf, O_PATH, res);
    }
    if (parent != root_fd) rclose(parent);
    if (cur < 0) return cur;
    parent = cur;
    buf[i] = saved;
    start = i + 1;
  }
  if (parent == root_fd) return -EINVAL;
  *out_fd = parent;
  return 0;
}

// child; raw syscalls. Attaches the detached trees the parent prepared (sources opened in
// the host's mount namespace before clone, attributes already set) at their targets.
int binds_in_child(const plan &p, int root_fd, const char **where) {
  for (const bind_op &b : p.binds) {
    *where = b.target.c_str();
    int t = -1;
    int r = resolve_in_root(root_fd, b.target.c_str(), true, b.is_file, &t);
    if (r < 0) return r;
    r = move_onto(b.tree_fd, t);
    rclose(t);
    if (r < 0) return r;
  }
  return 0;
}

// child; raw syscalls. A new filesystem of `fstype` at `target` (made if missing), with up to
// two string options; its mount fd in *mnt_out when asked for (the caller closes it).
static int fs_mount_at(int root_fd, const char *fstype, const char *target, unsigned attrs, const char *k1,
                       const char *v1, const char *k2, const char *v2, int *mnt_out) {
  int t = -1;
  int r = resolve_in_root(root_fd, target, true, false, &t);
  if (r < 0) return r;
  int fs = (int)rsys2(SYS_fsopen, fstype, FSOPEN_CLOEXEC);
  if (fs < 0) {
    rclose(t);
    return fs;
  }
  if (k1) r = fsconfig_str(fs, k1, v1);
  if (r == 0 && k2) r = fsconfig_str(fs, k2, v2);
  if (r == 0) r = fsconfig_create(fs);
  int m = r < 0 ? r : (int)rsys3(SYS_fsmount, fs, FSMOUNT_CLOEXEC, attrs);
  rclose(fs);
  if (m < 0) {
    rclose(t);
    return m;
  }
  r = move_onto(m, t);
  rclose(t);
  if (r == 0 && mnt_out) *mnt_out = m;
  else rclose(m);
  return r;
}

// child; raw syscalls. A proc of the sandbox's own pid namespace.
int proc_in_child(int root_fd) {
  return fs_mount_at(root_fd, "proc", "proc", MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC, nullptr, nullptr,
                     nullptr, nullptr, nullptr);
}

// child; raw syscalls. A minimal /dev: tmpfs, the harmless host device nodes bound onto
// files (a user namespace cannot mknod), a private devpts, shm of the plan's size, the usual
// symlinks.
int dev_in_child(const plan &p, int root_fd, const char **where) {
  static const char *const nodes[] = {"null", "zero", "full", "random", "urandom", "tty"};
  static const char *const host[] = {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"};
  int dev = -1;
  *where = "/dev";
  int r = fs_mount_at(root_fd, "tmpfs", "dev", MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC, "mode", "0755", "size", "65536", &dev);
  if (r < 0) return r;
  for (unsigned i = 0; r == 0 && i < sizeof nodes / sizeof nodes[0]; i++) {
    *where = host[i];
    r = make_node(dev, nodes[i], true);
    if (r < 0) break;
    int tree = (int)rsys3(SYS_open_tree, AT_FDCWD, host[i], OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
    if (tree < 0) {
      r = tree;
      break;
    }
    int t = (int)rsys4(SYS_openat, dev, nodes[i], O_PATH | O_CLOEXEC | O_NOFOLLOW, 0);
    r = t < 0 ? t : move_onto(tree, t);
    if (t >= 0) rclose(t);
    rclose(tree);
  }
  if (r == 0) {
    *where = "/dev/pts";
    r = fs_mount_at(dev, "devpts", "pts", MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC, "ptmxmode", "0666", "mode", "0620", nullptr);
  }
  if (r == 0) {
    *where = "/dev/shm";
    r = fs_mount_at(dev, "tmpfs", "shm", MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, "mode", "1777", "size", p.shm_size.c_str(),
                    nullptr);
  }
  if (r == 0) {
    *where = "/dev";
    static const char *const links[][2] = {{"pts/ptmx", "ptmx"}, {"/proc/self/fd", "fd"}, {"/proc/self/fd/0", "stdin"},
                                           {"/proc/self/fd/1", "stdout"}, {"/proc/self/fd/2", "stderr"}};
    for (auto &l : links) {
      r = (int)rsys3(SYS_symlinkat, l[0], dev, l[1]);
      if (r < 0) break;
    }
  }
  rclose(dev);
  return r;
}

// child; raw syscalls. Masked paths: a file gets /dev/null over it, a directory an empty
// read-only tmpfs. A path the kernel does not have is skipped.
int mask_in_child(const plan &p, int root_fd, const char **where) {
  for (const std::string &m : p.masked) {
    *where = m.c_str();
    int t = -1;
    int r = resolve_in_root(root_fd, m.c_str(), false, false, &t);
    if (r == -ENOENT) continue;
    if (r < 0) return r;
    struct stat st;
    r = (int)rsys2(SYS_fstat, t, &st);
    if (r < 0) {
      rclose(t);
      return r;
    }
    if (S_ISDIR(st.st_mode)) {
      rclose(t);
      r = fs_mount_at(root_fd, "tmpfs", m.c_str(), MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
                      "size", "0", nullptr, nullptr, nullptr);
    } else {
      int tree = (int)rsys3(SYS_open_tree, root_fd, "dev/null", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
      r = tree < 0 ? tree : move_onto(tree, t);
      if (tree >= 0) rclose(tree);
      rclose(t);
    }
    if (r < 0) return r;
  }
  return 0;
}

// child; raw syscalls. Read-only paths: a read-only clone of the subtree on top of itself;
// then the root itself when readonlyRootfs asks (non-recursive: binds keep their own mode).
int readonly_in_child(const plan &p, int root_fd, const char **where) {
  for (const std::string &ro : p.readonly) {
    *where = ro.c_str();
    int t = -1;
    int r = resolve_in_root(root_fd, ro.c_str(), false, false, &t);
    if (r == -ENOENT) continue;
    if (r < 0) return r;
    int tree = (int)rsys3(SYS_open_tree, t, "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE | AT_EMPTY_PATH);
    if (tree < 0) {
      rclose(t);
      return tree;
    }
    struct mount_attr a;
    memset(&a, 0, sizeof a);
    a.attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    r = (int)rsys5(SYS_mount_setattr, tree, "", AT_EMPTY_PATH | AT_RECURSIVE, &a, sizeof a);
    if (r == 0) r = move_onto(tree, t);
    rclose(tree);
    rclose(t);
    if (r < 0) return r;
  }
  if (p.readonly_root) {
    *where = "/";
    struct mount_attr a;
    memset(&a, 0, sizeof a);
    a.attr_set = MOUNT_ATTR_RDONLY;
    int r = (int)rsys5(SYS_mount_setattr, root_fd, "", AT_EMPTY_PATH, &a, sizeof a);
    if (r < 0) return r;
  }
  return 0;
}

// child; raw syscalls. pivot_root(".", ".") stacks the old root on the new one; detaching it
// leaves no way back (the trick runc and LXC use; pivot_root(2) NOTES).
int pivot_root_in_child(int root_fd) {
  int r = (int)rsys1(SYS_fchdir, root_fd);
  if (r == 0) r = (int)rsys2(SYS_pivot_root, ".", ".");
  if (r == 0) r = (int)rsys2(SYS_umount2, ".", MNT_DETACH);
  if (r == 0) r = (int)rsys1(SYS_chdir, "/");
  return r;
}
