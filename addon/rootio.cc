// Files inside a running sandbox, opened from the host for writeFile/readFile. The path is
// resolved with openat2(RESOLVE_IN_ROOT) from the sandbox's root (/proc/<init>/root), so a
// symlink planted inside resolves inside and can never reach a host path; only regular files
// on ordinary filesystems are opened (never proc, sysfs or device nodes, which the host's
// credentials would otherwise reach).
#include <linux/magic.h>
#include <linux/openat2.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>

#include <string>

#include "addon.h"
#include "clone.h"
#include "openat2.h"
#include "sys.h"

static int openat2_in(int dfd, const char *path, int flags, int mode) {
  // O_NONBLOCK until the type is checked: opening a FIFO planted inside would otherwise block
  // this (the event loop's) thread until someone opened its other end.
  return openat2_retry(dfd, path, flags | O_NONBLOCK, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS, (unsigned long long)mode);
}

struct open_args {
  int root;
  const char *path;
  int flags, mode;
  uid_t uid;
  gid_t gid;
};

// In run_in_userns's task (raw syscalls only): the open with the sandbox root's fs ids.
static int open_entry(void *v) {
  open_args *a = static_cast<open_args *>(v);
  if (rsys1(SYS_setfsgid, a->gid) < 0 || rsys1(SYS_setfsuid, a->uid) < 0) return -EPERM;
  struct open_how how;
  memset(&how, 0, sizeof how);
  how.flags = (unsigned long long)(a->flags | O_NONBLOCK | O_CLOEXEC);
  how.mode = (unsigned long long)a->mode;
  how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
  long fd;
  do fd = rsys4(SYS_openat2, a->root, a->path, &how, sizeof how);
  while (fd == -EAGAIN || fd == -EINTR);
  return (int)fd;
}

// openInRoot(pid, path, flags, mode, uid, gid[, userns]): fd, or { errno, path }. The open runs with
// this thread's filesystem ids switched to uid:gid (the host ids of the sandbox's root), so
// a file it creates belongs to root inside, and access is checked as that user rather than
// host root (overlay in the sandbox's user namespace refuses ids it cannot map: EOVERFLOW).
// setfsuid/setfsgid are per thread (the raw syscalls; glibc's would be too), restored at once.
Napi::Value OpenInRoot(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int pid = info[0].As<Napi::Number>().Int32Value();
  std::string path = info[1].As<Napi::String>().Utf8Value();
  int flags = info[2].As<Napi::Number>().Int32Value();
  int mode = info[3].As<Napi::Number>().Int32Value();
  int64_t uid = info[4].As<Napi::Number>().Int64Value(), gid = info[5].As<Napi::Number>().Int64Value();
  std::string rootp = "/proc/" + std::to_string(pid) + "/root";
  int root = open(rootp.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (root < 0) return sys_failure(env, nullptr, errno, path.c_str());
  int userns = info.Length() > 6 && info[6].IsNumber() ? info[6].As<Napi::Number>().Int32Value() : -1;
  int fd, e;
  if (userns >= 0) {
    // Outside root mode the sandbox root's ids are ids of the holder user namespace: only a
    // task in it may take them as its filesystem ids (lib/host/ids.ts).
    open_args a = {root, path.c_str(), flags, mode, (uid_t)uid, (gid_t)gid};
    long r = run_in_userns(userns, open_entry, &a);
    fd = r < 0 ? -1 : (int)r;
    e = r < 0 ? (int)-r : 0;
  } else {
    int old_gid = (int)syscall(SYS_setfsgid, (gid_t)gid);
    int old_uid = (int)syscall(SYS_setfsuid, (uid_t)uid);
    fd = openat2_in(root, path.c_str(), flags, mode);
    e = errno;
    syscall(SYS_setfsuid, (uid_t)old_uid);
    syscall(SYS_setfsgid, (gid_t)old_gid);
  }
  close(root);
  if (fd < 0) return sys_failure(env, nullptr, e, path.c_str());
  struct stat st;
  struct statfs sf;
  int bad = 0;
  if (fstat(fd, &st) < 0 || fstatfs(fd, &sf) < 0) bad = errno;
  else if (S_ISDIR(st.st_mode)) bad = EISDIR;
  else if (!S_ISREG(st.st_mode)) bad = EPERM;
  else if (sf.f_type == PROC_SUPER_MAGIC || sf.f_type == SYSFS_MAGIC || sf.f_type == CGROUP_SUPER_MAGIC ||
           sf.f_type == CGROUP2_SUPER_MAGIC || sf.f_type == DEBUGFS_MAGIC || sf.f_type == SECURITYFS_MAGIC)
    bad = EPERM;
  if (!bad && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) < 0) bad = errno;
  if (bad) {
    close(fd);
    return sys_failure(env, nullptr, bad, path.c_str());
  }
  return Napi::Number::New(env, fd);
}
