// Reading a sandbox's writable layer for commit (lib/image/commit.ts) through fds the walk
// opened with O_NOFOLLOW: its xattrs (overlay's opaque marks) and its data/hole map. Node has
// neither fgetxattr(2) nor lseek(SEEK_DATA/SEEK_HOLE). Nothing here resolves a path: the
// sandbox may own every name below the upper dir, but not an fd we already hold.
#include <errno.h>
#include <string.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <vector>

#include "addon.h"

#ifndef SEEK_DATA
#define SEEK_DATA 3
#define SEEK_HOLE 4
#endif

// fdXattrs(fd): { name: Buffer } of every xattr the fd's inode carries that this process may
// read, or -errno. Lists are bounded by the kernel (XATTR_LIST_MAX 64 KiB, values 64 KiB).
Napi::Value FdXattrs(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  std::vector<char> names(4096);
  ssize_t n;
  for (;;) {
    n = flistxattr(fd, names.data(), names.size());
    if (n >= 0) break;
    if (errno != ERANGE || names.size() >= 65536) return Napi::Number::New(env, -errno);
    names.resize(65536);
  }
  Napi::Object out = Napi::Object::New(env);
  std::vector<char> value(65536);
  for (ssize_t off = 0; off < n;) {
    const char *name = names.data() + off;
    size_t len = strnlen(name, (size_t)(n - off));
    off += (ssize_t)len + 1;
    if (len == 0) continue;
    ssize_t v = fgetxattr(fd, name, value.data(), value.size());
    if (v < 0) {
      if (errno == ENODATA) continue;  // removed between the list and the read
      return Napi::Number::New(env, -errno);
    }
    out.Set(name, Napi::Buffer<char>::Copy(env, value.data(), (size_t)v));
  }
  return out;
}

// seekData(fd, offset, hole): lseek(fd, offset, hole ? SEEK_HOLE : SEEK_DATA), or -errno
// (-ENXIO: no data at or after offset).
Napi::Value SeekData(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  off_t offset = (off_t)info[1].As<Napi::Number>().Int64Value();
  bool hole = info[2].As<Napi::Boolean>().Value();
  off_t r = lseek(fd, offset, hole ? SEEK_HOLE : SEEK_DATA);
  return Napi::Number::New(env, r < 0 ? (double)-errno : (double)r);
}

void InitUpperIo(Napi::Env env, Napi::Object exports) {
  exports.Set("fdXattrs", Napi::Function::New(env, FdXattrs));
  exports.Set("seekData", Napi::Function::New(env, SeekData));
}
