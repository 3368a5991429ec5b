// Layer extraction (lib/image/tar.ts): every entry of an image archive is made through fds
// opened beneath the layer's root. A parent directory is opened with openat2(RESOLVE_BENEATH |
// RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV), so no symlink anywhere on
// the way (one the archive made, or one that raced in) can take host root outside the layer;
// the entry itself is made with an *at call on that fd for one path component, and its owner,
// mode, times and xattrs are set on an fd of what was just made or with AT_SYMLINK_NOFOLLOW.
// lib/ keeps the archive's rules (names, parents, hardlink targets, ids, caps); this file is
// the only code that writes to a layer while it is extracted.
//
// Calls are batched: extractBatch runs a list of operations in one crossing from JS, so a
// tree of small files costs one N-API call per few dozen entries.
#include <linux/openat2.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <string>
#include <unordered_map>
#include <vector>

#include "addon.h"
#include "clone.h"
#include "openat2.h"
#include "sys.h"

namespace {

// The operations of extractBatch; lib/image/tar.ts mirrors these numbers (OP).
enum Op {
  kMkdir = 0,     // [op, rel]
  kFile = 1,      // [op, rel, data, uid, gid, mode, mtime]
  kSymlink = 2,   // [op, rel, target, uid, gid, mtime]
  kLink = 3,      // [op, rel, targetRel]
  kWhiteout = 4,  // [op, rel, uid, gid, mtime, xattr form allowed]
  kFifo = 5,      // [op, rel, uid, gid, mode, mtime]
  kRemove = 6,    // [op, rel, isDir]
  kDirMeta = 7,   // [op, rel, uid, gid, mode, mtime, opaque]
};

int openat2_beneath(int dfd, const char *path, int flags) { return openat2_retry(dfd, path, flags, kResolveBeneath); }

// A failure in one operation: errno and the name of the call, for the message lib/ builds.
struct Fail {
  int err = 0;
  const char *step = nullptr;
};

bool fail(Fail &f, const char *step) {
  f.err = errno;
  f.step = step;
  return false;
}

// The directory that holds `rel`, as an O_PATH fd beneath the root, and the last component.
// The last parent opened is kept while a batch runs (most entries share their parent with the
// one before); a removal drops it.
class Parents {
 public:
  explicit Parents(int root) : root_(root) {}
  ~Parents() { drop(); }
  void drop() {
    if (fd_ >= 0 && fd_ != root_) close(fd_);
    fd_ = -1;
    path_.clear();
  }
  // Returns the parent fd (owned by this object) or -1 with errno set.
  int open(const std::string &rel, std::string &base) {
    size_t slash = rel.rfind('/');
    std::string parent = slash == std::string::npos ? std::string() : rel.substr(0, slash);
    base = slash == std::string::npos ? rel : rel.substr(slash + 1);
    if (base.empty() || base == "." || base == "..") {
      errno = EINVAL;
      return -1;
    }
    if (fd_ >= 0 && parent == path_) return fd_;
    drop();
    if (parent.empty()) {
      fd_ = root_;
    } else {
      fd_ = openat2_beneath(root_, parent.c_str(), O_PATH | O_DIRECTORY);
      if (fd_ < 0) return -1;
    }
    path_ = parent;
    return fd_;
  }

 private:
  int root_;
  int fd_ = -1;
  std::string path_;
};

struct timespec stamp(double seconds) {
  struct timespec t;
  t.tv_sec = (time_t)seconds;
  t.tv_nsec = 0;
  return t;
}

// Outside root mode with subordinate ids, the layer's owners are ids of the holder user
// namespace (lib/host/holder.ts): only a task inside it may give them, so each chown runs in
// run_in_userns (addon/clone.cc). -1: chown here.
int g_owner_userns = -1;

// In the holder mode the owners are given at the end (extractFinish): until then every entry
// stays the caller's, so hardlinks to it and its parent's entries can still be made.
struct Deferred {
  std::string rel;
  uid_t uid;
  gid_t gid;
  int mode;   // re-applied after chown (which clears set-id bits); -1: none
  bool name;  // a symlink or a whiteout: chowned by name in its parent, never opened
};
std::unordered_map<int, std::vector<Deferred>> g_deferred;           // by the layer root's fd
std::unordered_map<int, std::pair<int, std::string>> g_open_rel;     // extractOpen's fd -> (root, rel)

// Records the owner of `rel` for extractFinish and returns true (the caller then skips the
// chown), or false outside the holder mode.
bool defer_owner(int root, const std::string &rel, int64_t uid, int64_t gid, int mode, bool name) {
  if (g_owner_userns < 0 || uid < 0) return false;
  // The layer's root stays the caller's: the store renames it into layers/ (which moving a
  // directory to another parent allows only to its owner); inside, overlay shows the upper
  // layer's root, never a lower one's.
  if (rel.empty() || rel == ".") return true;
  g_deferred[root].push_back({rel, (uid_t)uid, (gid_t)gid, mode, name});
  return true;
}

// Owner, then mode (chown clears set-id bits), then times, all on the entry's own fd.
bool fd_meta(int fd, int64_t uid, int64_t gid, int mode, double mtime, Fail &f) {
  if (uid >= 0 && fchown(fd, (uid_t)uid, (gid_t)gid) < 0) return fail(f, "fchown");
  if (mode >= 0 && fchmod(fd, (mode_t)mode) < 0) return fail(f, "fchmod");
  struct timespec ts[2] = {stamp(mtime), stamp(mtime)};
  if (futimens(fd, ts) < 0) return fail(f, "futimens");
  return true;
}

// Owner and times of a name that cannot be opened for them (a symlink, a 0:0 device).
bool name_meta(int pfd, const char *base, int64_t uid, int64_t gid, double mtime, Fail &f) {
  if (uid >= 0 && fchownat(pfd, base, (uid_t)uid, (gid_t)gid, AT_SYMLINK_NOFOLLOW) < 0) return fail(f, "fchownat");
  struct timespec ts[2] = {stamp(mtime), stamp(mtime)};
  if (utimensat(pfd, base, ts, AT_SYMLINK_NOFOLLOW) < 0) return fail(f, "utimensat");
  return true;
}

// Overlay's xattr whiteout: an empty regular file marked user.overlay.whiteout=y, in a directory
// marked user.overlay.opaque=x ("has xattr whiteouts", not opaque; kept when the directory is
// already marked, e.g. opaque=y, which hides the lower entries anyway). Overlay honours it in a
// lower layer mounted with userxattr, as hutch mounts every overlay.
bool xattr_whiteout(int pfd, const char *base, Fail &f) {
  int fd = openat(pfd, base, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return fail(f, "openat");
  bool ok = fsetxattr(fd, "user.overlay.whiteout", "y", 1, 0) == 0 || fail(f, "fsetxattr");
  close(fd);
  if (!ok) return false;
  int dfd = openat(pfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);  // pfd is O_PATH: no xattrs through it
  if (dfd < 0) return fail(f, "openat");
  if (fsetxattr(dfd, "user.overlay.opaque", "x", 1, XATTR_CREATE) < 0 && errno != EEXIST) ok = fail(f, "fsetxattr");
  close(dfd);
  return ok;
}

bool write_all(int fd, const uint8_t *p, size_t n, Fail &f) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return fail(f, "write");
    }
    p += w;
    n -= (size_t)w;
  }
  return true;
}

int64_t num(const Napi::Array &a, uint32_t i) { return a.Get(i).As<Napi::Number>().Int64Value(); }
double dbl(const Napi::Array &a, uint32_t i) { return a.Get(i).As<Napi::Number>().DoubleValue(); }
std::string str(const Napi::Array &a, uint32_t i) { return a.Get(i).As<Napi::String>().Utf8Value(); }

bool run_op(int root, Parents &parents, const Napi::Array &a, Fail &f) {
  int op = (int)num(a, 0);
  std::string rel = str(a, 1), base;
  if (op == kDirMeta) {
    int fd = openat2_beneath(root, rel.empty() ? "." : rel.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
    if (fd < 0) return fail(f, "openat2");
    bool ok = true;
    if (a.Get(6).ToBoolean().Value() && fsetxattr(fd, "user.overlay.opaque", "y", 1, 0) < 0) ok = fail(f, "fsetxattr");
    int64_t uid = num(a, 2);
    if (defer_owner(root, rel, uid, num(a, 3), (int)num(a, 4), false)) uid = -1;
    if (ok) ok = fd_meta(fd, uid, num(a, 3), (int)num(a, 4), dbl(a, 5), f);
    close(fd);
    return ok;
  }
  int pfd = parents.open(rel, base);
  if (pfd < 0) return fail(f, "openat2");
  const char *b = base.c_str();
  switch (op) {
    case kMkdir:
      if (mkdirat(pfd, b, 0700) < 0) return fail(f, "mkdirat");
      return true;
    case kFile: {
      Napi::Buffer<uint8_t> data = a.Get(2).As<Napi::Buffer<uint8_t>>();
      int fd = openat(pfd, b, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
      if (fd < 0) return fail(f, "openat");
      int64_t uid = num(a, 3);
      if (defer_owner(root, rel, uid, num(a, 4), (int)num(a, 5), false)) uid = -1;
      bool ok = write_all(fd, data.Data(), data.Length(), f) && fd_meta(fd, uid, num(a, 4), (int)num(a, 5), dbl(a, 6), f);
      close(fd);
      return ok;
    }
    case kSymlink: {
      std::string target = str(a, 2);
      if (symlinkat(target.c_str(), pfd, b) < 0) return fail(f, "symlinkat");
      int64_t uid = num(a, 3);
      if (defer_owner(root, rel, uid, num(a, 4), -1, true)) uid = -1;
      return name_meta(pfd, b, uid, num(a, 4), dbl(a, 5), f);
    }
    case kLink: {
      std::string trel = str(a, 2), tbase;
      // The target's parent is opened on its own (the new name's parent stays cached).
      Parents tparents(root);
      int tpfd = tparents.open(trel, tbase);
      if (tpfd < 0) return fail(f, "openat2");
      // No AT_SYMLINK_FOLLOW: a symlink target is linked itself, never followed.
      if (linkat(tpfd, tbase.c_str(), pfd, b, 0) < 0) return fail(f, "linkat");
      return true;
    }
    case kWhiteout:
      if (mknodat(pfd, b, S_IFCHR | 0, makedev(0, 0)) < 0) {
        // EPERM: the store is on overlayfs (which refuses a 0:0 device: it would read as its
        // own whiteout), or a device policy forbids the node. Overlay's other whiteout, when
        // the caller says the kernel has it (Linux 6.8+).
        if (errno != EPERM || !a.Get(5).ToBoolean().Value()) return fail(f, "mknodat");
        if (!xattr_whiteout(pfd, b, f)) return false;
      }
      {
        int64_t uid = num(a, 2);
        if (defer_owner(root, rel, uid, num(a, 3), -1, true)) uid = -1;
        return name_meta(pfd, b, uid, num(a, 3), dbl(a, 4), f);
      }
    case kFifo: {
      if (mkfifoat(pfd, b, 0600) < 0) return fail(f, "mkfifoat");
      // A FIFO opened for reading without blocking: an fd of exactly what was made.
      int fd = openat(pfd, b, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
      if (fd < 0) return fail(f, "openat");
      struct stat st;
      bool ok = fstat(fd, &st) == 0 ? true : fail(f, "fstat");
      if (ok && !S_ISFIFO(st.st_mode)) {
        errno = EEXIST;
        ok = fail(f, "mkfifoat");
      }
      int64_t uid = num(a, 2);
      if (defer_owner(root, rel, uid, num(a, 3), (int)num(a, 4), false)) uid = -1;
      if (ok) ok = fd_meta(fd, uid, num(a, 3), (int)num(a, 4), dbl(a, 5), f);
      close(fd);
      return ok;
    }
    case kRemove: {
      bool dir = a.Get(2).ToBoolean().Value();
      int r = unlinkat(pfd, b, dir ? AT_REMOVEDIR : 0);
      parents.drop();
      if (r < 0) return fail(f, "unlinkat");
      return true;
    }
    default:
      errno = EINVAL;
      return fail(f, "op");
  }
}

}  // namespace

// extractRoot(path): makes `path` (mode 0700, must not exist) and returns an fd of it.
// The directory is under hutch's own store, which nothing else writes.
Napi::Value ExtractRoot(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::string path = info[0].As<Napi::String>().Utf8Value();
  if (mkdir(path.c_str(), 0700) < 0) return sys_failure(env, "mkdir", errno, path.c_str());
  int fd = open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return sys_failure(env, "open", errno, path.c_str());
  g_deferred.erase(fd);  // a list left by an extraction that failed with this fd number
  return Napi::Number::New(env, fd);
}

// extractBatch(rootFd, ops): runs the operations in order; undefined when all succeeded,
// else { index, step, errno, path } of the first that failed (the rest are not run).
Napi::Value ExtractBatch(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int root = info[0].As<Napi::Number>().Int32Value();
  Napi::Array ops = info[1].As<Napi::Array>();
  Parents parents(root);
  uint32_t n = ops.Length();
  Fail f;
  std::string path;
  uint32_t i = 0;
  for (; i < n; i++) {
    Napi::HandleScope scope(env);  // the handles of one operation go with it
    Napi::Array a = ops.Get(i).As<Napi::Array>();
    if (!run_op(root, parents, a, f)) {
      path = str(a, 1);
      break;
    }
  }
  if (i < n) {
    Napi::Object o = sys_failure(env, f.step, f.err, path.c_str());
    o.Set("index", i);
    return o;
  }
  return env.Undefined();
}

// extractOpen(rootFd, rel): a new regular file `rel` (O_EXCL, never through a symlink) open
// for writing, for data that arrives in pieces; extractClose sets its metadata and closes it.
Napi::Value ExtractOpen(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int root = info[0].As<Napi::Number>().Int32Value();
  std::string rel = info[1].As<Napi::String>().Utf8Value(), base;
  Parents parents(root);
  int pfd = parents.open(rel, base);
  if (pfd < 0) return sys_failure(env, "openat2", errno, rel.c_str());
  int fd = openat(pfd, base.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return sys_failure(env, "openat", errno, rel.c_str());
  if (g_owner_userns >= 0) g_open_rel[fd] = {root, rel};
  return Napi::Number::New(env, fd);
}

// extractClose(fd, uid, gid, mode, mtime, size): ftruncate to `size` when >= 0 (a sparse
// file's trailing hole), then owner, mode and times; the fd is closed whatever happens.
Napi::Value ExtractClose(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  int64_t uid = info[1].As<Napi::Number>().Int64Value(), gid = info[2].As<Napi::Number>().Int64Value();
  int mode = info[3].As<Napi::Number>().Int32Value();
  double mtime = info[4].As<Napi::Number>().DoubleValue();
  int64_t size = info[5].As<Napi::Number>().Int64Value();
  Fail f;
  bool ok = true;
  auto open_rel = g_open_rel.find(fd);
  if (open_rel != g_open_rel.end()) {
    if (defer_owner(open_rel->second.first, open_rel->second.second, uid, gid, mode, false)) uid = -1;
    g_open_rel.erase(open_rel);
  }
  if (size >= 0 && ftruncate(fd, (off_t)size) < 0) ok = fail(f, "ftruncate");
  if (ok) ok = fd_meta(fd, uid, gid, mode, mtime, f);
  close(fd);
  if (!ok) return sys_failure(env, f.step, f.err, nullptr);
  return env.Undefined();
}

// setOwnerUserns(fd): the holder user namespace that extraction's chowns run in (-1: none).
Napi::Value SetOwnerUserns(const Napi::CallbackInfo &info) {
  g_owner_userns = info[0].As<Napi::Number>().Int32Value();
  return info.Env().Undefined();
}

namespace {

// Removes `name` beneath dfd, a directory's contents first; never follows a symlink (every
// directory is opened O_NOFOLLOW beneath its parent's fd). Raw syscalls and the stack only:
// it runs in run_in_userns's task. 0 or -errno (ENOENT for `name` itself is success).
int remove_beneath(int dfd, const char *name, int depth) {
  long r = rsys3(SYS_unlinkat, dfd, name, 0);
  if (r == 0 || r == -ENOENT) return 0;
  if (r != -EISDIR && r != -EPERM) return (int)r;
  if (depth > 4096) return -ELOOP;
  long fd = rsys4(SYS_openat, dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0);
  if (fd < 0) return (int)fd;
  char buf[2048];
  int err = 0;
  for (;;) {
    long n = rsys3(SYS_getdents64, fd, buf, sizeof buf);
    if (n <= 0) {
      if (n < 0) err = (int)n;
      break;
    }
    // Removing entries while reading: read again from the start until the directory is empty.
    bool removed = false;
    for (long off = 0; off < n;) {
      struct dirent64_raw {
        uint64_t ino;
        int64_t off;
        unsigned short reclen;
        unsigned char type;
        char name[];
      } *d = (dirent64_raw *)(buf + off);
      off += d->reclen;
      if (d->name[0] == '.' && (d->name[1] == 0 || (d->name[1] == '.' && d->name[2] == 0))) continue;
      int e = remove_beneath((int)fd, d->name, depth + 1);
      if (e < 0) {
        err = e;
        break;
      }
      removed = true;
    }
    if (err < 0) break;
    if (removed) rsys3(SYS_lseek, fd, 0, SEEK_SET);
  }
  rsys1(SYS_close, fd);
  if (err < 0) return err;
  r = rsys3(SYS_unlinkat, dfd, name, AT_REMOVEDIR);
  return r == -ENOENT ? 0 : (int)r;
}

struct remove_args {
  int dfd;
  const char *name;
};

int remove_entry(void *v) {
  remove_args *a = static_cast<remove_args *>(v);
  return remove_beneath(a->dfd, a->name, 0);
}

}  // namespace

// removeTree(parentPath, name, userns): removes parentPath/name and everything beneath it,
// never through a symlink, in the holder user namespace `userns` (its ids own the tree) or
// here (-1). undefined, or a failure { step, errno, path }.
Napi::Value RemoveTree(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::string parent = info[0].As<Napi::String>().Utf8Value(), name = info[1].As<Napi::String>().Utf8Value();
  int userns = info[2].As<Napi::Number>().Int32Value();
  if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..") {
    Napi::TypeError::New(env, "removeTree: name must be one path component").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int dfd = open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return errno == ENOENT ? env.Undefined() : sys_failure(env, "open", errno, parent.c_str());
  remove_args a = {dfd, name.c_str()};
  long r = userns >= 0 ? run_in_userns(userns, remove_entry, &a) : remove_entry(&a);
  close(dfd);
  if (r < 0) return sys_failure(env, "remove", (int)-r, (parent + "/" + name).c_str());
  return env.Undefined();
}

namespace {

struct finish_args {
  int root;
  const std::vector<Deferred> *list;
  size_t failed;  // index of the entry that failed
};

// In the holder namespace (run_in_userns): each recorded entry gets its owner, then its mode
// again. Raw syscalls only; every path resolved beneath the root without a symlink.
int finish_entry(void *v) {
  finish_args *fa = static_cast<finish_args *>(v);
  struct open_how how;
  for (size_t i = 0; i < fa->list->size(); i++) {
    const Deferred &d = (*fa->list)[i];
    fa->failed = i;
    memset(&how, 0, sizeof how);
    how.resolve = kResolveBeneath;
    long r;
    if (d.name) {
      // The parent, then the name itself without following it.
      const char *slash = strrchr(d.rel.c_str(), '/');
      char dir[4096];
      const char *base = d.rel.c_str();
      int pfd = fa->root;
      if (slash) {
        size_t n = (size_t)(slash - d.rel.c_str());
        if (n >= sizeof dir) return -ENAMETOOLONG;
        memcpy(dir, d.rel.c_str(), n);
        dir[n] = 0;
        base = slash + 1;
        how.flags = O_PATH | O_DIRECTORY | O_CLOEXEC;
        long p = rsys4(SYS_openat2, fa->root, dir, &how, sizeof how);
        if (p < 0) return (int)p;
        pfd = (int)p;
      }
      r = rsys5(SYS_fchownat, pfd, base, d.uid, d.gid, AT_SYMLINK_NOFOLLOW);
      if (pfd != fa->root) rsys1(SYS_close, pfd);
      if (r < 0) return (int)r;
      continue;
    }
    how.flags = O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC;
    long fd = rsys4(SYS_openat2, fa->root, d.rel.c_str(), &how, sizeof how);
    if (fd < 0) return (int)fd;
    r = rsys3(SYS_fchown, fd, d.uid, d.gid);
    if (r == 0 && d.mode >= 0) r = rsys2(SYS_fchmod, fd, d.mode);
    rsys1(SYS_close, fd);
    if (r < 0) return (int)r;
  }
  return 0;
}

}  // namespace

// extractFinish(rootFd): in the holder mode, gives every entry recorded for this root its
// owner (inside the holder user namespace) and forgets the list; elsewhere nothing to do.
// undefined, or a failure { step, errno, path }.
Napi::Value ExtractFinish(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int root = info[0].As<Napi::Number>().Int32Value();
  auto it = g_deferred.find(root);
  if (it == g_deferred.end()) return env.Undefined();
  std::vector<Deferred> list = std::move(it->second);
  g_deferred.erase(it);
  if (list.empty()) return env.Undefined();
  finish_args fa = {root, &list, 0};
  long r = run_in_userns(g_owner_userns, finish_entry, &fa);
  if (r < 0) return sys_failure(env, "fchown", (int)-r, fa.failed < list.size() ? list[fa.failed].rel.c_str() : nullptr);
  return env.Undefined();
}

namespace {
struct chown_path_args {
  int fd;
  uid_t uid;
  gid_t gid;
};
int chown_path_entry(void *v) {
  chown_path_args *a = static_cast<chown_path_args *>(v);
  return (int)rsys5(SYS_fchownat, a->fd, "", a->uid, a->gid, AT_EMPTY_PATH);
}
}  // namespace

// chownPath(path, uid, gid, userns): chown of a path hutch made (O_PATH, never followed), in
// the holder user namespace `userns` (its ids) or here (-1). undefined or a failure.
Napi::Value ChownPath(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::string path = info[0].As<Napi::String>().Utf8Value();
  chown_path_args a = {-1, (uid_t)info[1].As<Napi::Number>().Int64Value(), (gid_t)info[2].As<Napi::Number>().Int64Value()};
  int userns = info[3].As<Napi::Number>().Int32Value();
  a.fd = open(path.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC);
  if (a.fd < 0) return sys_failure(env, "open", errno, path.c_str());
  long r = userns >= 0 ? run_in_userns(userns, chown_path_entry, &a) : chown_path_entry(&a);
  close(a.fd);
  if (r < 0) return sys_failure(env, "fchownat", (int)-r, path.c_str());
  return env.Undefined();
}
