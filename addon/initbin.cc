// The init binary every sandbox execs, copied once per process into a sealed memfd.
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clone.h"

int g_init_fd = -1;

// parent. Copies the init binary into a sealed memfd: every sandbox execs it from there, so
// /proc/<pid>/exe inside never points at a writable host file (CVE-2019-5736).
Napi::Value SetInit(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (g_init_fd >= 0) return Napi::Number::New(env, g_init_fd);
  std::string path = info[0].As<Napi::String>().Utf8Value();
  int src = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (src < 0) return sys_failure(env, "exec_init", errno, path.c_str());
  struct stat st;
  fstat(src, &st);
  int mfd = memfd_create("hutch-init", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (mfd < 0) {
    int e = errno;
    close(src);
    return sys_failure(env, "exec_init", e, "memfd_create");
  }
  off_t off = 0;
  while (off < st.st_size) {
    ssize_t n = sendfile(mfd, src, &off, st.st_size - off);
    if (n <= 0) {
      int e = n < 0 ? errno : EIO;
      close(src);
      close(mfd);
      return sys_failure(env, "exec_init", e, path.c_str());
    }
  }
  close(src);
  // Execute-only, and owned by host root, whom no sandbox maps: the kernel then runs init
  // non-dumpable with its mm's user namespace the host's (fs/exec.c would_dump), so no process
  // inside can ptrace it, read its memory or take its fds (pidfd_getfd), whatever
  // capabilities it holds in the sandbox's user namespace. init never makes itself dumpable.
  fchmod(mfd, 0111);
  if (fcntl(mfd, F_ADD_SEALS, F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE) < 0) {
    int e = errno;
    close(mfd);
    return sys_failure(env, "exec_init", e, "F_ADD_SEALS");
  }
  g_init_fd = mfd;
  return Napi::Number::New(env, mfd);
}

