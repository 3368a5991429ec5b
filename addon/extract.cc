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

#include "addon.h"
#include "openat2.h"

namespace {

// The operations of extractBatch; lib/image/tar.ts mirrors these numbers (OP).
enum Op {
  kMkdir = 0,     // [op, rel]
  kFile = 1,      // [op, rel, data, uid, gid, mode, mtime]
  kSymlink = 2,   // [op, rel, target, uid, gid, mtime]
  kLink = 3,      // [op, rel, targetRel]
  kWhiteout = 4,  // [op, rel, uid, gid, mtime]
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
    if (ok) ok = fd_meta(fd, num(a, 2), num(a, 3), (int)num(a, 4), dbl(a, 5), f);
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
      bool ok = write_all(fd, data.Data(), data.Length(), f) && fd_meta(fd, num(a, 3), num(a, 4), (int)num(a, 5), dbl(a, 6), f);
      close(fd);
      return ok;
    }
    case kSymlink: {
      std::string target = str(a, 2);
      if (symlinkat(target.c_str(), pfd, b) < 0) return fail(f, "symlinkat");
      return name_meta(pfd, b, num(a, 3), num(a, 4), dbl(a, 5), f);
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
      if (mknodat(pfd, b, S_IFCHR | 0, makedev(0, 0)) < 0) return fail(f, "mknodat");
      return name_meta(pfd, b, num(a, 2), num(a, 3), dbl(a, 4), f);
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
      if (ok) ok = fd_meta(fd, num(a, 2), num(a, 3), (int)num(a, 4), dbl(a, 5), f);
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
  if (size >= 0 && ftruncate(fd, (off_t)size) < 0) ok = fail(f, "ftruncate");
  if (ok) ok = fd_meta(fd, uid, gid, mode, mtime, f);
  close(fd);
  if (!ok) return sys_failure(env, f.step, f.err, nullptr);
  return env.Undefined();
}
