// The mechanisms behind the plan's mount ops (addon/plan.h): scratch tmpfs, overlay root,
// binds, new filesystems, device nodes, symlinks, masks, read-only paths, pivot_root. What to
// mount where, with which options, is the plan's (lib/plan/); nothing here decides. Every function runs in the child between clone and exec: raw
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

// child; raw syscalls; after the switch to the sandbox's root. A detached tmpfs of `size`
// bytes for the writable layer (its size is the disk quota), holding upper/ and work/.
int scratch_in_child(const char *size, int *scratch_fd) {
  int fs = (int)rsys2(SYS_fsopen, "tmpfs", FSOPEN_CLOEXEC);
  if (fs < 0) return fs;
  int r = fsconfig_str(fs, "size", size);
  if (r == 0) r = fsconfig_str(fs, "mode", "0755");
  if (r == 0) r = fsconfig_create(fs);
  int m = r < 0 ? r : (int)rsys3(SYS_fsmount, fs, FSMOUNT_CLOEXEC, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV);
  rclose(fs);
  if (m < 0) return m;
  r = (int)rsys3(SYS_mkdirat, m, "upper", 0755);
  if (r == 0) r = (int)rsys3(SYS_mkdirat, m, "work", 0700);
  if (r < 0) {
    rclose(m);
    return r;
  }
  *scratch_fd = m;
  return 0;
}

static size_t append(char *buf, size_t off, size_t cap, const char *s) {
  while (*s && off + 1 < cap) buf[off++] = *s++;
  buf[off] = 0;
  return off;
}

// "/proc/self/fd/<fd>" into buf (32 bytes): a magic link mount(2) follows to the object itself.
static void fd_path(char *buf, int fd) {
  static const char pre[] = "/proc/self/fd/";
  size_t off = 0;
  for (const char *q = pre; *q; q++) buf[off++] = *q;
  char rev[16];
  int k = 0;
  for (int v = fd; v > 0 || k == 0; v /= 10) rev[k++] = (char)('0' + v % 10);
  while (k > 0) buf[off++] = rev[--k];
  buf[off] = 0;
}

// child; raw syscalls. Before 6.8 (no "lowerdir+"): mount(2) at the root mountpoint with the
// data lib/ prepared ("userxattr,lowerdir=<names>", names relative to the layers dir, which is
// still our cwd) and the scratch dirs through /proc/self/fd. The data is built on this
// child's own stack: mount(2) copies one page of it, and lib/ refuses a plan whose data would
// not fit (two setups at once never share it).
static int overlay_legacy(const char *data_prefix, const char *mountpoint, int scratch_fd, int mnt_fd, int parent_fd,
                          int *root_fd, const char **where) {
  char data[4096];
  char fdp[32];
  fd_path(fdp, scratch_fd);
  size_t off = append(data, 0, sizeof data, data_prefix);
  off = append(data, off, sizeof data, ",upperdir=");
  off = append(data, off, sizeof data, fdp);
  off = append(data, off, sizeof data, "/upper,workdir=");
  off = append(data, off, sizeof data, fdp);
  off = append(data, off, sizeof data, "/work");
  if (off + 1 >= sizeof data) return -E2BIG;
  // The target and its parent were opened with host root's ids (ROOT_MOUNTPOINT, before
  // SETID): the store's ancestors may be closed to the sandbox's range.
  char target[32];
  fd_path(target, mnt_fd);
  int r = (int)rsys5(SYS_mount, "overlay", target, "overlay", MS_NOSUID | MS_NODEV, data);
  rsys1(SYS_chdir, "/");
  if (r < 0) return r;
  const char *name = mountpoint;
  for (const char *q = mountpoint; *q; q++)
    if (*q == '/') name = q + 1;
  *where = mountpoint;
  int fd = (int)rsys4(SYS_openat, parent_fd, name, O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
  if (fd < 0) return fd;
  *root_fd = fd;
  return 0;
}

// child; raw syscalls; BEFORE the switch to the sandbox's root, while our fs ids are still the
// host's root (owner of the store's directories, which its range may not traverse when each
// sandbox has a range of its own), with the layers dir as cwd (CHDIR_LAYERS). Starts the
// overlay: `userxattr` (inside a user namespace overlay keeps whiteouts and opaque dirs in
// user.overlay.*), then each layer by name, top first, with "lowerdir+" (6.8+: one fsconfig
// per layer, since one fsconfig string is capped at 256 bytes). Where the plan has idmapped
// trees of the layers (per-sandbox id ranges), each layer is first covered by its tree, in our
// mount namespace only. Returns 0 and the fs context in *fs_out, or -errno.
int overlay_begin_in_child(const plan &p, const plan_op &op, const char *names, int *fs_out, const char **where) {
  *where = names;
  int fs = (int)rsys2(SYS_fsopen, "overlay", FSOPEN_CLOEXEC);
  if (fs < 0) return fs;
  int r = (int)rsys5(SYS_fsconfig, fs, FSCONFIG_SET_FLAG, "userxattr", nullptr, 0);
  const char *s = names;
  for (unsigned i = 0; r == 0 && i < op.nstr; i++, s = plan_str_next(s)) {
    *where = s;
    if (op.fd >= 0) r = (int)rsys5(SYS_move_mount, p.fds[op.fd + i], "", AT_FDCWD, s, MOVE_MOUNT_F_EMPTY_PATH);
    if (r == 0) r = fsconfig_str(fs, "lowerdir+", s);
  }
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
// scratch fs, creates the overlay and attaches it at the mountpoint opened earlier; on the
// legacy path (`legacy_data`), one mount(2) does it all. Returns 0 and the root's fd in
// *root_fd, or -errno.
int overlay_finish_in_child(int fs, const char *legacy_data, const char *mountpoint, int scratch_fd, int mnt_fd,
                            int parent_fd, int *root_fd, const char **where) {
  *where = "overlay";
  if (legacy_data) return overlay_legacy(legacy_data, mountpoint, scratch_fd, mnt_fd, parent_fd, root_fd, where);
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
    *where = mountpoint;
    r = (int)rsys5(SYS_move_mount, m, "", mnt_fd, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH);
  }
  if (r < 0) {
    rclose(m);
    return r;
  }
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

// child; raw syscalls. Attaches a detached tree the parent prepared (its source opened in
// the host's mount namespace before clone, attributes already set) at `target`.
int bind_in_child(int root_fd, const char *target, int tree_fd, bool is_file) {
  int t = -1;
  int r = resolve_in_root(root_fd, target, true, is_file, &t);
  if (r < 0) return r;
  r = move_onto(tree_fd, t);
  rclose(t);
  return r;
}

// child; raw syscalls. User mode (PLAN_F_PATH): the parent may not clone host mounts, so the
// child clones `source` in its own mount namespace (a copy of the host's, owned by the
// sandbox's user namespace), sets `attrs` and attaches it. It resolves the path with the
// caller's own rights only: no more than the caller could read anyway.
int bind_path_in_child(int root_fd, const char *target, const char *source, unsigned attrs, bool is_file) {
  int tree = (int)rsys3(SYS_open_tree, AT_FDCWD, source, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE);
  if (tree < 0) return tree;
  struct mount_attr a;
  for (size_t i = 0; i < sizeof a; i++) ((char *)&a)[i] = 0;
  a.attr_set = attrs;
  int r = (int)rsys5(SYS_mount_setattr, tree, "", AT_EMPTY_PATH | AT_RECURSIVE, &a, sizeof a);
  if (r == 0) r = bind_in_child(root_fd, target, tree, is_file);
  rclose(tree);
  return r;
}

// child; raw syscalls. A new filesystem of `fstype` at `target` (made if missing, resolved in
// the root), configured with `npairs` key/value strings starting at `kv`, mounted with
// `attrs` (MOUNT_ATTR_*).
int mount_in_child(int root_fd, const char *fstype, const char *target, unsigned attrs, const char *kv, unsigned npairs) {
  int t = -1;
  int r = resolve_in_root(root_fd, target, true, false, &t);
  if (r < 0) return r;
  int fs = (int)rsys2(SYS_fsopen, fstype, FSOPEN_CLOEXEC);
  if (fs < 0) {
    rclose(t);
    return fs;
  }
  for (unsigned i = 0; r == 0 && i < npairs; i++) {
    const char *v = plan_str_next(kv);
    r = fsconfig_str(fs, kv, v);
    kv = plan_str_next(v);
  }
  if (r == 0) r = fsconfig_create(fs);
  int m = r < 0 ? r : (int)rsys3(SYS_fsmount, fs, FSMOUNT_CLOEXEC, attrs);
  rclose(fs);
  if (m < 0) {
    rclose(t);
    return m;
  }
  r = move_onto(m, t);
  rclose(t);
  rclose(m);
  return r;
}

// child; raw syscalls. A harmless host device node bound onto a file at `target` (a user
// namespace cannot mknod).
int dev_node_in_child(int root_fd, const char *host, const char *target) {
  int t = -1;
  int r = resolve_in_root(root_fd, target, true, true, &t);
  if (r < 0) return r;
  int tree = (int)rsys3(SYS_open_tree, AT_FDCWD, host, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
  r = tree < 0 ? tree : move_onto(tree, t);
  if (tree >= 0) rclose(tree);
  rclose(t);
  return r;
}

// child; raw syscalls. A symlink at `path` (its parent resolved in the root) reading `text`.
int symlink_in_child(int root_fd, const char *text, const char *path) {
  const char *name = path;
  for (const char *q = path; *q; q++)
    if (*q == '/') name = q + 1;
  char dir[4096];
  size_t n = (size_t)(name - path);
  if (n >= sizeof dir) return -ENAMETOOLONG;
  memcpy(dir, path, n);
  dir[n] = 0;
  int parent = root_fd;
  if (n > 0) {
    int r = resolve_in_root(root_fd, dir, false, false, &parent);
    if (r < 0) return r;
  }
  int r = (int)rsys3(SYS_symlinkat, text, parent, name);
  if (parent != root_fd) rclose(parent);
  return r;
}

// child; raw syscalls. A masked path: a file gets /dev/null over it, a directory an empty
// tmpfs mounted with `dir_attrs` and the `npairs` options at `kv`. A path the kernel does not
// have is skipped.
int mask_in_child(int root_fd, const char *path, unsigned dir_attrs, const char *kv, unsigned npairs) {
  int t = -1;
  int r = resolve_in_root(root_fd, path, false, false, &t);
  if (r == -ENOENT) return 0;
  if (r < 0) return r;
  struct stat st;
  r = (int)rsys2(SYS_fstat, t, &st);
  if (r < 0) {
    rclose(t);
    return r;
  }
  if (S_ISDIR(st.st_mode)) {
    rclose(t);
    return mount_in_child(root_fd, "tmpfs", path, dir_attrs, kv, npairs);
  }
  int tree = (int)rsys3(SYS_open_tree, root_fd, "dev/null", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
  r = tree < 0 ? tree : move_onto(tree, t);
  if (tree >= 0) rclose(tree);
  rclose(t);
  return r;
}

// child; raw syscalls. A read-only path: a clone of the subtree, `attrs` set recursively, on
// top of itself. A path the kernel does not have is skipped.
int readonly_in_child(int root_fd, const char *path, unsigned attrs) {
  int t = -1;
  int r = resolve_in_root(root_fd, path, false, false, &t);
  if (r == -ENOENT) return 0;
  if (r < 0) return r;
  int tree = (int)rsys3(SYS_open_tree, t, "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE | AT_EMPTY_PATH);
  if (tree < 0) {
    rclose(t);
    return tree;
  }
  struct mount_attr a;
  memset(&a, 0, sizeof a);
  a.attr_set = attrs;
  r = (int)rsys5(SYS_mount_setattr, tree, "", AT_EMPTY_PATH | AT_RECURSIVE, &a, sizeof a);
  if (r == 0) r = move_onto(tree, t);
  rclose(tree);
  rclose(t);
  return r;
}

// child; raw syscalls. `attrs` on the root mount itself (not recursive: binds keep their own).
int root_attrs_in_child(int root_fd, unsigned attrs) {
  struct mount_attr a;
  memset(&a, 0, sizeof a);
  a.attr_set = attrs;
  return (int)rsys5(SYS_mount_setattr, root_fd, "", AT_EMPTY_PATH, &a, sizeof a);
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
