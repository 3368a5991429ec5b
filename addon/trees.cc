// Detached mount trees and user namespaces, made by the parent before clone: the layers' and
// binds' trees the child attaches (open_tree), and the user namespaces of idmapped mounts.
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "clone.h"
#include "sys.h"

#ifndef CLONE_CLEAR_SIGHAND
#define CLONE_CLEAR_SIGHAND 0x100000000ULL
#endif

// parent. A detached copy of a host mount tree, attributes set, ready for the child to attach
// (open_tree(2), mount_setattr(2)). Opened here, in the host's mount namespace, so the child
// never resolves a host path: a source swapped for a symlink later is not followed.
Napi::Value OpenTree(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::string path = info[0].As<Napi::String>().Utf8Value();
  bool readonly = info[1].ToBoolean();
  int userns = info.Length() > 2 && info[2].IsNumber() ? info[2].As<Napi::Number>().Int32Value() : -1;
  // Open first, read back what was opened, then clone exactly that object: lib/ compares the
  // real path with the one the user named (no window between the check and the clone).
  int src = open(path.c_str(), O_PATH | O_CLOEXEC);
  if (src < 0) return sys_failure(env, "bind", errno, path.c_str());
  char proc[64], real[4096];
  snprintf(proc, sizeof proc, "/proc/self/fd/%d", src);
  ssize_t n = readlink(proc, real, sizeof real - 1);
  if (n < 0) {
    int e = errno;
    close(src);
    return sys_failure(env, "bind", e, path.c_str());
  }
  real[n] = 0;
  int fd = sys_open_tree(src, "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE | AT_EMPTY_PATH);
  int e = errno;
  close(src);
  if (fd < 0) return sys_failure(env, "bind", e, path.c_str());
  struct mount_attr a;
  memset(&a, 0, sizeof a);
  a.attr_set = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | (readonly ? MOUNT_ATTR_RDONLY : 0);
  if (userns >= 0) {
    // An idmapped mount (5.12+): files show the ids the sandbox's range gives them. Only ever
    // asked for read-only trees (layers, the host image's system dirs): lib/ decides.
    a.attr_set |= MOUNT_ATTR_IDMAP;
    a.userns_fd = (uint64_t)userns;
  }
  if (sys_mount_setattr(fd, "", AT_EMPTY_PATH | AT_RECURSIVE, &a) < 0) {
    e = errno;
    close(fd);
    return sys_failure(env, "bind", e, path.c_str());
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("fd", fd);
  out.Set("real", real);
  return out;
}

static int userns_holder(void *arg) {
  // child of MakeUserns; raw syscalls only: waits until the parent has what it needs.
  const int *p = static_cast<int *>(arg);
  rsys1(SYS_close, p[1]);  // our copy of the write end, or the read below never sees EOF
  char c;
  rsys3(SYS_read, p[0], &c, 1);
  return 0;
}

// makeUserns(uidMap, gidMap): an fd of a new user namespace with these maps, for idmapped
// mounts (mount_setattr's userns_fd). A short-lived child holds the namespace while the maps
// are written and the fd is opened; the fd keeps it alive after the child is gone.
// makeUserns(mapper): the same, but the maps are written by mapper(pid), a JS function called
// while the child waits (outside root mode: lib/host/holder.ts runs newuidmap/newgidmap, the
// setuid helpers that may map the caller's subordinate ids); it returns 0 or an errno.
Napi::Value MakeUserns(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  bool by_mapper = info[0].IsFunction();
  if (!by_mapper && (!info[0].IsString() || !info[1].IsString())) {
    Napi::TypeError::New(env, "makeUserns: (uidMap, gidMap) strings or a mapper function").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string uid_map = by_mapper ? "" : info[0].As<Napi::String>().Utf8Value();
  std::string gid_map = by_mapper ? "" : info[1].As<Napi::String>().Utf8Value();
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) return sys_failure(env, "id_map", errno, "pipe2");
  int pidfd = -1;
  struct clone_args a;
  memset(&a, 0, sizeof a);
  a.flags = CLONE_PIDFD | CLONE_NEWUSER | CLONE_CLEAR_SIGHAND;
  a.pidfd = (uint64_t)(uintptr_t)&pidfd;
  a.exit_signal = 0;
  sigset_t all, old;
  sigfillset(&all);
#if HUTCH_CLONE_VM
  static const size_t kStack = 64 * 1024;
  void *stack = mmap(nullptr, kStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  if (stack == MAP_FAILED) {
    int e = errno;
    close(p[0]), close(p[1]);
    return sys_failure(env, "id_map", e, "mmap");
  }
  a.flags |= CLONE_VM;
  a.stack = (uint64_t)(uintptr_t)stack;
  a.stack_size = kStack;
  pthread_sigmask(SIG_SETMASK, &all, &old);
  long pid = hutch_clone3_vm(&a, sizeof a, userns_holder, p);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  int e = pid < 0 ? (int)-pid : 0;
#else
  pthread_sigmask(SIG_SETMASK, &all, &old);
  long pid = sys_clone3(&a);
  if (pid == 0) _exit(userns_holder(p));
  int e = errno;
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
#endif
  int nsfd = -1;
  if (pid > 0) {
    char path[64];
    int r = 0;
    if (by_mapper) {
      Napi::Value got = info[0].As<Napi::Function>().Call({Napi::Number::New(env, (double)pid)});
      // A throw in the mapper stays pending and reaches the caller once the child is gone.
      r = env.IsExceptionPending() ? -EIO : got.IsNumber() ? -got.As<Napi::Number>().Int32Value() : -EINVAL;
    } else {
      snprintf(path, sizeof path, "/proc/%ld/uid_map", pid);
      r = write_file(path, uid_map.data(), uid_map.size());
      if (r == 0) {
        snprintf(path, sizeof path, "/proc/%ld/gid_map", pid);
        r = write_file(path, gid_map.data(), gid_map.size());
      }
    }
    if (r == 0) {
      snprintf(path, sizeof path, "/proc/%ld/ns/user", pid);
      nsfd = open(path, O_RDONLY | O_CLOEXEC);
      if (nsfd < 0) r = -errno;
    }
    e = -r;
    close(p[1]);
    siginfo_t si;
    waitid((idtype_t)P_PIDFD, pidfd, &si, WEXITED | __WALL);
    close(pidfd);
  } else {
    close(p[1]);
  }
  close(p[0]);
#if HUTCH_CLONE_VM
  munmap(stack, kStack);
#endif
  if (env.IsExceptionPending()) {
    if (nsfd >= 0) close(nsfd);
    return env.Undefined();
  }
  if (nsfd < 0) return sys_failure(env, "id_map", e ? e : EINVAL, by_mapper ? "holder user namespace" : "user namespace for idmapped mounts");
  return Napi::Number::New(env, nsfd);
}

int write_file(const char *path, const char *data, size_t len) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return -errno;
  ssize_t n = write(fd, data, len);
  int e = n < 0 ? -errno : (size_t)n != len ? -EIO : 0;
  close(fd);
  return e;
}

