// The root filesystem of a sandbox: scratch tmpfs, overlay root, binds, masks, read-only
// paths, pivot_root. Every function runs in the child between clone and exec:
// async-signal-safe, no allocation. Mounts are made through fds (fsopen/fsmount/open_tree/
// move_mount) and targets are resolved with openat2(RESOLVE_IN_ROOT), so a symlink in the
// image cannot send a mount outside the new root (CVE-2024-21626, CVE-2025-31133 class).
#include <linux/openat2.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "child.h"
#include "sys.h"

static int err() { return -errno; }

static int open_in(int dirfd, const char *path, unsigned long flags, unsigned long long resolve) {
  struct open_how how;
  memset(&how, 0, sizeof how);
  how.flags = flags | O_CLOEXEC;
  how.resolve = resolve;
  int fd;
  do fd = (int)syscall(SYS_openat2, dirfd, path, &how, sizeof how); while (fd < 0 && errno == EAGAIN);
  return fd < 0 ? err() : fd;
}

// child; async-signal-safe. A detached tmpfs for the writable layer; its size is the disk quota.
int scratch_in_child(const plan &p, int *scratch_fd) {
  int fs = sys_fsopen("tmpfs", FSOPEN_CLOEXEC);
  if (fs < 0) return err();
  if (sys_fsconfig(fs, FSCONFIG_SET_STRING, "size", p.scratch_size.c_str(), 0) < 0 ||
      sys_fsconfig(fs, FSCONFIG_SET_STRING, "mode", "0755", 0) < 0 ||
      sys_fsconfig(fs, FSCONFIG_CMD_CREATE, nullptr, nullptr, 0) < 0) {
    int e = err();
    close(fs);
    return e;
  }
  int m = sys_fsmount(fs, FSMOUNT_CLOEXEC, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV);
  int e = err();
  close(fs);
  if (m < 0) return e;
  if (mkdirat(m, "upper", 0755) < 0 || mkdirat(m, "work", 0700) < 0) return err();
  *scratch_fd = m;
  return 0;
}

// child; async-signal-safe. The overlay root: layers relative to the store's layers dir and
// upper/work relative to the scratch tmpfs, so mountinfo shows no host path. `userxattr`:
// inside a user namespace overlay keeps whiteouts and opaque dirs in user.overlay.*.
int overlay_in_child(const plan &p, int scratch_fd, int *root_fd, const char **where) {
  int fs = sys_fsopen("overlay", FSOPEN_CLOEXEC);
  *where = "overlay";
  if (fs < 0) return err();
  int r = 0;
  if (sys_fsconfig(fs, FSCONFIG_SET_FLAG, "userxattr", nullptr, 0) < 0) r = err();
  if (r == 0 && chdir(p.layers_dir.c_str()) < 0) {
    *where = p.layers_dir.c_str();
    r = err();
  }
  if (r == 0 && sys_fsconfig(fs, FSCONFIG_SET_STRING, "lowerdir", p.lowerdirs.c_str(), 0) < 0) {
    *where = p.lowerdirs.c_str();
    r = err();
  }
  if (r == 0 && fchdir(scratch_fd) < 0) r = err();
  if (r == 0 && (sys_fsconfig(fs, FSCONFIG_SET_STRING, "upperdir", "upper", 0) < 0 ||
                 sys_fsconfig(fs, FSCONFIG_SET_STRING, "workdir", "work", 0) < 0))
    r = err();
  if (r == 0 && sys_fsconfig(fs, FSCONFIG_CMD_CREATE, nullptr, nullptr, 0) < 0) r = err();
  int m = -1;
  if (r == 0) {
    m = sys_fsmount(fs, FSMOUNT_CLOEXEC, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV);
    if (m < 0) r = err();
  }
  close(fs);
  if (r < 0) return r;
  if (chdir("/") < 0) return err();
  *root_fd = m;
  return 0;
}

// child; async-signal-safe. pivot_root needs the new root attached to our mount tree.
int attach_root_in_child(const plan &p, int root_fd) {
  if (sys_move_mount(root_fd, "", AT_FDCWD, p.root_mountpoint.c_str(), MOVE_MOUNT_F_EMPTY_PATH) < 0) return err();
  return 0;
}

// child; async-signal-safe. Opens `rel` inside the new root, as if root_fd were "/" (symlinks
// resolve inside it, ".." stops at it); with `create`, missing components are made as
// directories (the last as a file when `is_file`). Returns an O_PATH fd.
int resolve_in_root(int root_fd, const char *rel, bool create, bool is_file, int *out_fd) {
  const unsigned long long res = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
  int fd = open_in(root_fd, rel, O_PATH, res);
  if (fd >= 0 || fd != -ENOENT || !create) {
    if (fd < 0) return fd;
    *out_fd = fd;
    return 0;
  }
  char buf[4096];
  size_t len = strlen(rel);
  if (len >= sizeof buf) return -ENAMETOOLONG;
  memcpy(buf, rel, len + 1);
  // Walk prefixes: open each from the root; make what is missing in its (already resolved) parent.
  int parent = -1;
  size_t start = 0;
  for (size_t i = 0; i <= len; i++) {
    if (buf[i] != '/' && buf[i] != 0) continue;
    if (i == start) { start = i + 1; continue; }
    char saved = buf[i];
    buf[i] = 0;
    int cur = open_in(root_fd, buf, O_PATH, res);
    if (cur == -ENOENT && parent >= 0) {
      const char *name = buf + start;
      int r;
      if (saved == 0 && is_file) {
        int f = openat(parent, name, O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0644);
        r = f < 0 ? err() : (close(f), 0);
      } else {
        r = mkdirat(parent, name, 0755) < 0 ? err() : 0;
      }
      if (r < 0 && r != -EEXIST) { close(parent); return r; }
      cur = open_in(root_fd, buf, O_PATH, res);
    } else if (cur == -ENOENT) {
      // The first component is missing: its parent is the root itself.
      const char *name = buf + start;
      int r;
      if (saved == 0 && is_file) {
        int f = openat(root_fd, name, O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0644);
        r = f < 0 ? err() : (close(f), 0);
      } else {
        r = mkdirat(root_fd, name, 0755) < 0 ? err() : 0;
      }
      if (r < 0 && r != -EEXIST) return r;
      cur = open_in(root_fd, buf, O_PATH, res);
    }
    if (parent >= 0) close(parent);
    if (cur < 0) return cur;
    parent = cur;
    buf[i] = saved;
    start = i + 1;
  }
  if (parent < 0) return -EINVAL;
  *out_fd = parent;
  return 0;
}

static int move_onto(int tree_fd, int target_fd) {
  return sys_move_mount(tree_fd, "", target_fd, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) < 0 ? err() : 0;
}

// child; async-signal-safe. Attaches the detached trees the parent prepared (sources opened
// in the host's mount namespace before clone, attributes already set) at their targets.
int binds_in_child(const plan &p, int root_fd, const char **where) {
  for (const bind_op &b : p.binds) {
    *where = b.target.c_str();
    int t = -1;
    int r = resolve_in_root(root_fd, b.target.c_str(), true, b.is_file, &t);
    if (r < 0) return r;
    r = move_onto(b.tree_fd, t);
    close(t);
    if (r < 0) return r;
  }
  return 0;
}

static int fs_mount_at(int root_fd, const char *fstype, const char *target, unsigned attrs,
                       const char *k1, const char *v1, const char *k2, const char *v2, int *mnt_out) {
  int t = -1;
  int r = resolve_in_root(root_fd, target, true, false, &t);
  if (r < 0) return r;
  int fs = sys_fsopen(fstype, FSOPEN_CLOEXEC);
  if (fs < 0) { r = err(); close(t); return r; }
  if ((k1 && sys_fsconfig(fs, FSCONFIG_SET_STRING, k1, v1, 0) < 0) ||
      (k2 && sys_fsconfig(fs, FSCONFIG_SET_STRING, k2, v2, 0) < 0) ||
      sys_fsconfig(fs, FSCONFIG_CMD_CREATE, nullptr, nullptr, 0) < 0) {
    r = err();
    close(fs);
    close(t);
    return r;
  }
  int m = sys_fsmount(fs, FSMOUNT_CLOEXEC, attrs);
  r = m < 0 ? err() : 0;
  close(fs);
  if (r == 0) r = move_onto(m, t);
  close(t);
  if (r == 0 && mnt_out) *mnt_out = m;
  else if (m >= 0) close(m);
  return r;
}

// child; async-signal-safe. A proc of the sandbox's own pid namespace.
int proc_in_child(int root_fd) {
  return fs_mount_at(root_fd, "proc", "proc", MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
                     nullptr, nullptr, nullptr, nullptr, nullptr);
}

// child; async-signal-safe. A minimal /dev: tmpfs, the harmless host device nodes bound onto
// files (a user namespace cannot mknod), a private devpts, shm.
int dev_in_child(int root_fd, const char **where) {
  static const char *const nodes[] = {"null", "zero", "full", "random", "urandom", "tty"};
  static const char *const host[] = {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"};
  int dev = -1;
  *where = "/dev";
  int r = fs_mount_at(root_fd, "tmpfs", "dev", MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC, "mode", "0755", "size", "65536", &dev);
  if (r < 0) return r;
  for (unsigned i = 0; i < sizeof nodes / sizeof nodes[0]; i++) {
    *where = host[i];
    int f = openat(dev, nodes[i], O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0666);
    if (f < 0) { r = err(); break; }
    close(f);
    int tree = sys_open_tree(AT_FDCWD, host[i], OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
    if (tree < 0) { r = err(); break; }
    int t = openat(dev, nodes[i], O_PATH | O_CLOEXEC | O_NOFOLLOW);
    if (t < 0) { r = err(); close(tree); break; }
    r = move_onto(tree, t);
    close(tree);
    close(t);
    if (r < 0) break;
  }
  if (r == 0) {
    *where = "/dev/pts";
    r = fs_mount_at(dev, "devpts", "pts", MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC, "ptmxmode", "0666", "mode", "0620", nullptr);
  }
  if (r == 0) {
    *where = "/dev/shm";
    r = fs_mount_at(dev, "tmpfs", "shm", MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, "mode", "1777", nullptr, nullptr, nullptr);
  }
  if (r == 0) {
    *where = "/dev";
    static const char *const links[][2] = {{"pts/ptmx", "ptmx"}, {"/proc/self/fd", "fd"}, {"/proc/self/fd/0", "stdin"},
                                           {"/proc/self/fd/1", "stdout"}, {"/proc/self/fd/2", "stderr"}};
    for (auto &l : links)
      if (symlinkat(l[0], dev, l[1]) < 0) { r = err(); break; }
  }
  close(dev);
  return r;
}

// child; async-signal-safe. Masked paths: a file gets /dev/null over it, a directory an empty
// read-only tmpfs. A path the kernel does not have is skipped.
int mask_in_child(const plan &p, int root_fd, const char **where) {
  for (const std::string &m : p.masked) {
    *where = m.c_str();
    int t = -1;
    int r = resolve_in_root(root_fd, m.c_str(), false, false, &t);
    if (r == -ENOENT) continue;
    if (r < 0) return r;
    struct stat st;
    if (fstat(t, &st) < 0) { r = err(); close(t); return r; }
    close(t);
    if (S_ISDIR(st.st_mode)) {
      r = fs_mount_at(root_fd, "tmpfs", m.c_str(), MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
                      "size", "0", nullptr, nullptr, nullptr);
    } else {
      int tree = sys_open_tree(root_fd, "dev/null", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
      if (tree < 0) return err();
      r = resolve_in_root(root_fd, m.c_str(), false, false, &t);
      if (r == 0) { r = move_onto(tree, t); close(t); }
      close(tree);
    }
    if (r < 0) return r;
  }
  return 0;
}

// child; async-signal-safe. Read-only paths: a read-only clone of the subtree on top of itself.
int readonly_in_child(const plan &p, int root_fd, const char **where) {
  for (const std::string &ro : p.readonly) {
    *where = ro.c_str();
    int t = -1;
    int r = resolve_in_root(root_fd, ro.c_str(), false, false, &t);
    if (r == -ENOENT) continue;
    if (r < 0) return r;
    int tree = sys_open_tree(t, "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE | AT_EMPTY_PATH);
    if (tree < 0) { r = err(); close(t); return r; }
    struct mount_attr a;
    memset(&a, 0, sizeof a);
    a.attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    if (sys_mount_setattr(tree, "", AT_EMPTY_PATH | AT_RECURSIVE, &a) < 0) r = err();
    if (r == 0) r = move_onto(tree, t);
    close(tree);
    close(t);
    if (r < 0) return r;
  }
  if (p.readonly_root) {
    *where = "/";
    struct mount_attr a;
    memset(&a, 0, sizeof a);
    a.attr_set = MOUNT_ATTR_RDONLY;
    if (sys_mount_setattr(root_fd, "", AT_EMPTY_PATH, &a) < 0) return err();
  }
  return 0;
}

// child; async-signal-safe. pivot_root(".", ".") stacks the old root on the new one; detaching
// it leaves no way back (the trick runc and LXC use; pivot_root(2) NOTES).
int pivot_root_in_child(int root_fd) {
  if (fchdir(root_fd) < 0) return err();
  if (sys_pivot_root(".", ".") < 0) return err();
  if (sys_umount2(".", MNT_DETACH) < 0) return err();
  if (chdir("/") < 0) return err();
  return 0;
}
