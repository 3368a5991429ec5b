// A prepared network link's namespaces, for lib/network/linkpool.ts (userspace links made
// ahead, outside host root): makeLinkNamespaces({ uidMap, gidMap, userns, denySetgroups })
// returns { userns, netns } fds of a new user namespace, its maps written exactly as a
// sandbox's (clone.cc's write_id_maps, from the holder namespace when there is one), and a
// network namespace that user namespace owns. pasta, nft and tc are attached to them from
// lib/; a sandbox's clone later joins both with setns (clone.cc, link_clone_entry).
//
// A short-lived task of our memory and fd table made with CLONE_NEWUSER | CLONE_NEWNET waits
// on a futex while the maps are written from the parent namespace (the holder's, in the
// run_in_userns trampoline), then opens both namespaces into our table and exits: the fds
// keep them, no process stays in them. The task runs raw syscalls only (it shares our memory).
#include <fcntl.h>
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "clone.h"
#include "sys.h"

#ifndef CLONE_CLEAR_SIGHAND
#define CLONE_CLEAR_SIGHAND 0x100000000ULL
#endif

namespace {

struct link_make {
  const clone_req *req = nullptr;
  int word = 0;  // 0: wait, 1: maps written, open the namespaces, 2: give up
  int user_fd = -1, net_fd = -1;
  int child_err = 0;
  int err = 0;
  char path[64] = "";
};

#if HUTCH_CLONE_VM
int link_ns_child(void *arg) {
  link_make *m = static_cast<link_make *>(arg);
  while (__atomic_load_n(&m->word, __ATOMIC_ACQUIRE) == 0) rsys6(SYS_futex, (long)&m->word, FUTEX_WAIT, 0, 0, 0, 0);
  if (__atomic_load_n(&m->word, __ATOMIC_ACQUIRE) != 1) return 1;
  long u = rsys4(SYS_openat, AT_FDCWD, "/proc/self/ns/user", O_RDONLY | O_CLOEXEC, 0);
  long n = u < 0 ? u : rsys4(SYS_openat, AT_FDCWD, "/proc/self/ns/net", O_RDONLY | O_CLOEXEC, 0);
  if (n < 0) {
    if (u >= 0) rsys1(SYS_close, u);
    m->child_err = (int)-n;
    return 1;
  }
  m->user_fd = (int)u;
  m->net_fd = (int)n;
  return 0;
}

// In the holder namespace (a trampoline) or on the calling thread when there is none.
int make_link_entry(void *arg) {
  link_make *m = static_cast<link_make *>(arg);
  static const size_t kStack = 64 * 1024;
  void *stack = mmap(nullptr, kStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  if (stack == MAP_FAILED) {
    m->err = -errno;
    snprintf(m->path, sizeof m->path, "mmap");
    return 0;
  }
  long pid = clone_vm_on(CLONE_VM | CLONE_FILES | CLONE_NEWUSER | CLONE_NEWNET | CLONE_CLEAR_SIGHAND, nullptr, stack, kStack, link_ns_child, m);
  if (pid < 0) {
    munmap(stack, kStack);
    m->err = (int)pid;
    snprintf(m->path, sizeof m->path, "clone3");
    return 0;
  }
  int r = write_id_maps(*m->req, pid, m->path, sizeof m->path, 0);
  __atomic_store_n(&m->word, r == 0 ? 1 : 2, __ATOMIC_RELEASE);
  rsys6(SYS_futex, (long)&m->word, FUTEX_WAKE, 1, 0, 0, 0);
  siginfo_t si;
  while (waitid(P_PID, (id_t)pid, &si, WEXITED | __WALL) < 0 && errno == EINTR) {
  }
  munmap(stack, kStack);
  if (r < 0) m->err = r;
  else if (m->user_fd < 0) m->err = -(m->child_err ? m->child_err : EIO), snprintf(m->path, sizeof m->path, "/proc/self/ns");
  return 0;
}
#endif

}  // namespace

Napi::Value MakeLinkNamespaces(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  Napi::Object o = info[0].IsObject() ? info[0].As<Napi::Object>() : Napi::Object::New(env);
  if (!o.Get("uidMap").IsString() || !o.Get("gidMap").IsString()) {
    Napi::TypeError::New(env, "makeLinkNamespaces: { uidMap, gidMap } strings are required").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  clone_req req;
  req.uid_map = o.Get("uidMap").As<Napi::String>().Utf8Value();
  req.gid_map = o.Get("gidMap").As<Napi::String>().Utf8Value();
  Napi::Value un = o.Get("userns");
  req.userns_fd = un.IsNumber() ? un.As<Napi::Number>().Int32Value() : -1;
  req.deny_setgroups = o.Get("denySetgroups").ToBoolean().Value();
#if HUTCH_CLONE_VM
  link_make m;
  m.req = &req;
  if (req.userns_fd >= 0) {
    long r = run_in_userns(req.userns_fd, make_link_entry, &m);
    if (r < 0) return sys_failure(env, "clone", (int)-r, "setns(holder user namespace)");
  } else {
    make_link_entry(&m);
  }
  if (m.err < 0) return sys_failure(env, "id_map", -m.err, m.path);
  Napi::Object out = Napi::Object::New(env);
  out.Set("userns", move_high(m.user_fd));
  out.Set("netns", move_high(m.net_fd));
  return out;
#else
  return sys_failure(env, "clone", ENOSYS, "makeLinkNamespaces");
#endif
}
