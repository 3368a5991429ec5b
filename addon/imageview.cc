// Reads of an image's layer trees for lib/image/view.ts, on the libuv pool (never on the event
// loop). Each path is opened beneath its layer directory with openat2(RESOLVE_BENEATH |
// RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV): no symlink in the layer, no
// `..` and no mount crossing can lead the open anywhere else. The open is O_NONBLOCK, so a FIFO
// never blocks it, and fstat decides before any byte is read: only a regular file of at most
// the cap is read. Symlinks of the image are resolved by view.ts itself, inside the image.
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "addon.h"
#include "openat2.h"

namespace {

// openat2 beneath `dir`; -errno on failure.
int open_beneath(const std::string &dir, const std::string &rel, int flags, const char **step) {
  *step = "open layer";
  int dfd = open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return -errno;
  *step = "openat2";
  int fd = openat2_retry(dfd, rel.empty() ? "." : rel.c_str(), flags | O_NOFOLLOW | O_NONBLOCK, kResolveBeneath);
  int e = errno;
  close(dfd);
  return fd < 0 ? -e : fd;
}

class ReadWorker : public Napi::AsyncWorker {
 public:
  ReadWorker(Napi::Env env, std::string dir, std::string rel, size_t max)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), dir_(std::move(dir)), rel_(std::move(rel)), max_(max) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    int fd = open_beneath(dir_, rel_, O_RDONLY, &step_);
    if (fd < 0) {
      err_ = -fd;
      return;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
      err_ = errno;
      step_ = "fstat";
      close(fd);
      return;
    }
    mode_ = st.st_mode;
    size_ = st.st_size;
    if (!S_ISREG(st.st_mode) || (size_t)st.st_size > max_) {
      close(fd);
      return;
    }
    // Read its size and one byte more: a file that grew meanwhile is caught (view.ts checks the cap again).
    data_.resize((size_t)st.st_size + 1);
    size_t got = 0;
    while (got < data_.size()) {
      ssize_t n = read(fd, data_.data() + got, data_.size() - got);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        err_ = errno;
        step_ = "read";
        break;
      }
      if (n == 0) break;
      got += (size_t)n;
    }
    data_.resize(got);
    read_ = err_ == 0;
    close(fd);
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (err_ != 0) return deferred_.Resolve(sys_failure(env, step_, err_, rel_.c_str()));
    Napi::Object o = Napi::Object::New(env);
    o.Set("mode", Napi::Number::New(env, (double)mode_));
    o.Set("size", Napi::Number::New(env, (double)size_));
    if (read_) o.Set("data", Napi::Buffer<char>::Copy(env, data_.data(), data_.size()));
    deferred_.Resolve(o);
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::string dir_, rel_;
  size_t max_;
  const char *step_ = "";
  int err_ = 0;
  mode_t mode_ = 0;
  off_t size_ = 0;
  bool read_ = false;
  std::vector<char> data_;
};

class XattrWorker : public Napi::AsyncWorker {
 public:
  XattrWorker(Napi::Env env, std::string dir, std::string rel, std::string name)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), dir_(std::move(dir)), rel_(std::move(rel)), name_(std::move(name)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    // A directory's mark or a file's (an xattr whiteout); O_NONBLOCK: a FIFO never blocks the open.
    int fd = open_beneath(dir_, rel_, O_RDONLY | O_NONBLOCK, &step_);
    if (fd < 0) {
      err_ = -fd;
      return;
    }
    ssize_t n = fgetxattr(fd, name_.c_str(), buf_, sizeof buf_);
    if (n < 0) {
      if (errno != ENODATA) {
        err_ = errno;
        step_ = "fgetxattr";
      }
    } else {
      len_ = n;
    }
    close(fd);
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (err_ != 0) return deferred_.Resolve(sys_failure(env, step_, err_, rel_.c_str()));
    if (len_ < 0) return deferred_.Resolve(env.Null());
    deferred_.Resolve(Napi::String::New(env, buf_, (size_t)len_));
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::string dir_, rel_, name_;
  const char *step_ = "";
  int err_ = 0;
  ssize_t len_ = -1;
  char buf_[256];
};

bool strings(const Napi::CallbackInfo &info, size_t n, const char *usage) {
  for (size_t i = 0; i < n; i++) {
    if (!info[i].IsString()) {
      Napi::TypeError::New(info.Env(), usage).ThrowAsJavaScriptException();
      return false;
    }
  }
  return true;
}

// viewRead(layerDir, rel, maxBytes): a promise of { mode, size, data? } (data only for a
// regular file of at most maxBytes) or of a failure ({ step, errno, path }).
Napi::Value ViewRead(const Napi::CallbackInfo &info) {
  if (!strings(info, 2, "viewRead(layerDir, rel, maxBytes)") || !info[2].IsNumber()) {
    if (!info.Env().IsExceptionPending()) Napi::TypeError::New(info.Env(), "viewRead(layerDir, rel, maxBytes)").ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  auto *w = new ReadWorker(info.Env(), info[0].As<Napi::String>(), info[1].As<Napi::String>(), (size_t)info[2].As<Napi::Number>().Int64Value());
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// viewXattr(layerDir, rel, name): a promise of the value of an entry's xattr, null when it
// has none, or a failure.
Napi::Value ViewXattr(const Napi::CallbackInfo &info) {
  if (!strings(info, 3, "viewXattr(layerDir, rel, name)")) return info.Env().Undefined();
  auto *w = new XattrWorker(info.Env(), info[0].As<Napi::String>(), info[1].As<Napi::String>(), info[2].As<Napi::String>());
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

}  // namespace

void InitImageView(Napi::Env env, Napi::Object exports) {
  exports.Set("viewRead", Napi::Function::New(env, ViewRead));
  exports.Set("viewXattr", Napi::Function::New(env, ViewXattr));
}
