// clone3 and the parent's side of a sandbox's birth: the plan checked and copied into the
// child's own memory before clone, id maps and cgroup placement written from the parent, then
// the child is released. Blanks (warm starts) are in blank.cc; detached trees and user
// namespaces for idmapped mounts in trees.cc; the init binary in initbin.cc.
#include <fcntl.h>
#include <linux/futex.h>
#include <sys/resource.h>
#include <algorithm>
#include <mutex>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <unordered_map>

#include "clone.h"
#include "steps.h"
#include "sys.h"

#ifndef CLONE_CLEAR_SIGHAND
#define CLONE_CLEAR_SIGHAND 0x100000000ULL
#endif

#if HUTCH_CLONE_VM
#if defined(__x86_64__)
// rdi=args rsi=size rdx=fn rcx=arg. syscall keeps every register but rax, rcx, r11.
asm(R"(
  .text
  .globl hutch_clone3_vm
  .type hutch_clone3_vm,@function
hutch_clone3_vm:
  mov %rdx, %r8
  mov %rcx, %r9
  mov $435, %eax
  syscall
  test %rax, %rax
  jnz 1f
  xor %ebp, %ebp
  mov %r9, %rdi
  call *%r8
  mov %eax, %edi
  mov $231, %eax
  syscall
  hlt
1:
  ret
  .size hutch_clone3_vm, .-hutch_clone3_vm
)");
#elif defined(__aarch64__)
// x0=args x1=size x2=fn x3=arg. svc keeps every register but x0.
asm(R"(
  .text
  .globl hutch_clone3_vm
  .type hutch_clone3_vm,%function
hutch_clone3_vm:
  mov x9, x2
  mov x10, x3
  mov x8, #435
  svc #0
  cbnz x0, 1f
  mov x29, xzr
  mov x30, xzr
  mov x0, x10
  blr x9
  mov x8, #94
  svc #0
1:
  ret
  .size hutch_clone3_vm, .-hutch_clone3_vm
)");
#endif
#endif

// A child started with CLONE_VM runs on a stack we mapped and reads the plan from our heap
// until it execs: both stay alive until EOF on its error pipe (exec done) or its reaping.
struct pending_child {
  std::unique_ptr<plan> p;
  void *stack = nullptr;
  size_t stack_size = 0;
  int go_fd = -1;  // a blank child's go socket, until it is released
};
static std::unordered_map<long, pending_child> g_pending;
static const size_t kChildStack = 256 * 1024;
static const size_t kHolderStack = 16 * 1024;  // child_lock.cc's helper: a few raw syscalls

// Child stacks kept for the next clone (at most kKeptStacks): a fresh one costs an mmap, the
// child's page faults on it (each a trap into this VM's hypervisor) and, when the child is
// released, a munmap. A stack is kept only once nothing runs on it: its child has exec'd (the
// stack was in the old address space, which the exec dropped) or died. What a child left on it
// is this process's own memory, seen next by the next child: our code, before its exec.
static std::mutex g_stacks_mu;
static std::vector<void *> g_stacks;
static const size_t kKeptStacks = 8;

#if HUTCH_CLONE_VM
static void *take_stack() {
  {
    std::lock_guard<std::mutex> l(g_stacks_mu);
    if (!g_stacks.empty()) {
      void *s = g_stacks.back();
      g_stacks.pop_back();
      return s;
    }
  }
  return mmap(nullptr, kChildStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
}
#endif

static void give_stack(void *s) {
  {
    std::lock_guard<std::mutex> l(g_stacks_mu);
    if (g_stacks.size() < kKeptStacks) {
      g_stacks.push_back(s);
      return;
    }
  }
  munmap(s, kChildStack);
}

void release_child(long pid) {
  auto it = g_pending.find(pid);
  if (it == g_pending.end()) return;
  if (it->second.stack) give_stack(it->second.stack);
  if (it->second.go_fd >= 0) close(it->second.go_fd);
  g_pending.erase(it);
}

static int child_entry(void *arg) { run_child(*static_cast<plan *>(arg)); }

plan *pending_blank(long pid, int *go_fd) {
  auto it = g_pending.find(pid);
  if (it == g_pending.end() || !it->second.p->blank || it->second.go_fd < 0) return nullptr;
  *go_fd = it->second.go_fd;
  it->second.go_fd = -1;
  return it->second.p.get();
}

static bool type_error(Napi::Env env, const char *fn, const char *what) {
  std::string m = std::string(fn) + ": " + what;
  Napi::TypeError::New(env, m).ThrowAsJavaScriptException();
  return false;
}

bool read_plan(Napi::Env env, const Napi::Value &buf, const Napi::Value &fds, const char *fn, std::vector<uint8_t> &bytes,
               std::vector<int> &fd_list) {
  if (!buf.IsBuffer()) return type_error(env, fn, "the plan must be a Buffer (lib/plan/encode.ts)");
  if (!fds.IsArray()) return type_error(env, fn, "the plan's fds must be an array");
  Napi::Buffer<uint8_t> b = buf.As<Napi::Buffer<uint8_t>>();
  Napi::Array a = fds.As<Napi::Array>();
  fd_list.clear();
  for (uint32_t i = 0; i < a.Length(); i++) {
    Napi::Value e = a.Get(i);
    if (!e.IsNumber() || e.As<Napi::Number>().Int32Value() < 0) return type_error(env, fn, "each plan fd must be a number >= 0");
    fd_list.push_back(e.As<Napi::Number>().Int32Value());
  }
  if (const char *bad = plan_check(b.Data(), b.Length(), fd_list.size())) return type_error(env, fn, bad);
  bytes.assign(b.Data(), b.Data() + b.Length());
  return true;
}

// The plan's own copy, per child: with CLONE_VM the child reads it from our heap until it
// execs (kept with the child in g_pending), never a buffer another setup could write.
static bool take_plan(Napi::Env env, const Napi::CallbackInfo &info, plan &p) {
  std::vector<int> fds;
  if (!read_plan(env, info[0], info[1], "cloneSandbox", p.buf, fds)) return false;
  const plan_header *h = (const plan_header *)p.buf.data();
  p.fd_count = fds.size();
  for (size_t i = 0; i < fds.size(); i++) p.fds[i] = fds[i];
  p.fail_step = h->fail_step;
  p.fail_errno = h->fail_errno;
  return true;
}

static bool req_str(Napi::Env env, const Napi::Object &o, const char *key, const char *fn, std::string &out) {
  Napi::Value v = o.Get(key);
  if (!v.IsString() || v.As<Napi::String>().Utf8Value().empty()) return type_error(env, fn, (std::string(key) + " must be a non-empty string").c_str());
  out = v.As<Napi::String>().Utf8Value();
  return true;
}

bool prepare_clone(Napi::Env env, const Napi::Value &v, const char *fn, plan &p, clone_req &req, cloned &c) {
  if (!v.IsObject()) return type_error(env, fn, "the clone's options must be an object");
  Napi::Object o = v.As<Napi::Object>();
  if (!req_str(env, o, "uidMap", fn, req.uid_map) || !req_str(env, o, "gidMap", fn, req.gid_map)) return false;
  Napi::Value cg = o.Get("cgroupFd");
  if (!cg.IsNumber() || cg.As<Napi::Number>().Int32Value() < -1) return type_error(env, fn, "cgroupFd must be a number (-1: none, cgroup v1)");
  req.cgroup_fd = cg.As<Napi::Number>().Int32Value();
  Napi::Value un = o.Get("userns");
  if (!un.IsUndefined()) {
    if (!un.IsNumber() || un.As<Napi::Number>().Int32Value() < -1) return type_error(env, fn, "userns must be an fd (-1: none)");
    req.userns_fd = un.As<Napi::Number>().Int32Value();
  }
  req.deny_setgroups = o.Get("denySetgroups").ToBoolean().Value();
  Napi::Value lu = o.Get("linkUserns"), ln = o.Get("linkNetns");
  if (!lu.IsUndefined() || !ln.IsUndefined()) {
    if (!lu.IsNumber() || !ln.IsNumber() || lu.As<Napi::Number>().Int32Value() < 0 || ln.As<Napi::Number>().Int32Value() < 0)
      return type_error(env, fn, "linkUserns and linkNetns must both be fds");
    req.link_user_fd = lu.As<Napi::Number>().Int32Value();
    req.link_net_fd = ln.As<Napi::Number>().Int32Value();
  }
  Napi::Value jf = o.Get("joinFiles");
  if (!jf.IsArray()) return type_error(env, fn, "joinFiles must be an array of paths");
  Napi::Array ja = jf.As<Napi::Array>();
  p.join_paths.clear();
  for (uint32_t i = 0; i < ja.Length(); i++) {
    Napi::Value e = ja.Get(i);
    if (!e.IsString()) return type_error(env, fn, "joinFiles must be an array of paths");
    p.join_paths.push_back(e.As<Napi::String>().Utf8Value());
  }
  Napi::Value fs = o.Get("failStep");
  if (!fs.IsUndefined()) {
    // Tests only (lib/plan/testing.ts): a blank's steps before go cannot read its plan.
    if (!fs.IsNumber() || !o.Get("failErrno").IsNumber()) return type_error(env, fn, "failStep and failErrno must be numbers");
    p.fail_step = fs.As<Napi::Number>().Int32Value();
    p.fail_errno = o.Get("failErrno").As<Napi::Number>().Int32Value();
    if (p.fail_step < -1 || p.fail_step >= (int)STEP_COUNT || (p.fail_step >= 0 && p.fail_errno <= 0)) return type_error(env, fn, "failStep out of range");
  }
  p.init_args = {"hutch-init"};
  for (auto &s : p.init_args) p.init_argv.push_back(s.c_str());
  p.init_argv.push_back(nullptr);
  p.init_envp.push_back(nullptr);
  p.init_fd = g_init_fd;
  p.holder_stack.resize(kHolderStack);
  for (const std::string &f : p.join_paths) {
    int fd = open(f.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
      c.fail_step = "cgroup", c.fail_err = -errno, c.fail_path = f;
      return true;
    }
    p.join_fds.push_back(fd);
  }
  return true;
}

// The part of do_clone that runs in the holder user namespace outside root mode: clone3 and
// the id maps. Raw syscalls and our own memory only (it may run in a trampoline, see below).
struct clone_job {
  plan *p = nullptr;
  const clone_req *req = nullptr;
  struct clone_args a;
  int pidfd = -1;
  long pid = -1;
  int clone_err = 0;
  int map_err = 0;
  void *stack = nullptr;
  char path[64] = {0};
};

// Writes one of the new namespace's map files (j.path). Outside root mode: a CLONE_VM child
// shares our mm, and its setresuid in setup makes that mm non-dumpable, which makes every
// /proc/<pid> file of a task on it owned by host root: the next child's map could not be
// opened. Our own process's dumpable state is ours to restore (as it was before any child); a
// concurrent child may clear it again, so retry a few times.
static int write_map(const clone_req &req, const char *path, const char *data, size_t len) {
  int r = write_file(path, data, len);
  bool unprivileged = req.userns_fd >= 0 || req.deny_setgroups;
  for (int k = 0; r == -EACCES && unprivileged && k < 16; k++) {
    rsys2(SYS_prctl, PR_SET_DUMPABLE, 1);
    r = write_file(path, data, len);
  }
  return r;
}

// fd moved to the upper three quarters of RLIMIT_NOFILE (close-on-exec), or left where it is
// when there is no room there. Below 64 it stays: with a few live sandboxes the table stays
// small (every fork of this process, child_process's too, copies it up to its highest fd),
// and a child's copy of 64 fds is nothing.
int move_high(int fd) {
  static int base = -1;
  if (base < 0) {
    struct rlimit rl;
    base = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY ? (int)std::min<rlim_t>(rl.rlim_cur / 4, 1 << 20) : 1024;
    if (base < 64) base = 64;
  }
  if (fd < 64 || fd >= base) return fd;
  int high = fcntl(fd, F_DUPFD_CLOEXEC, base);
  if (high < 0) return fd;
  close(fd);
  return high;
}

// The highest fd the child uses from our table (its plan's, the init binary, its ends of the
// sockets and pipes, the cgroup files it joins, our ends it closes).
static int max_child_fd(const plan &p) {
  int m = std::max({p.init_fd, p.sync_fd, p.err_fd, p.ctl_fd, p.parent_fds[0], p.parent_fds[1], p.parent_fds[2]});
  for (size_t i = 0; i < p.fd_count; i++) m = std::max(m, p.fds[i]);
  for (int fd : p.join_fds) m = std::max(m, fd);
  return m;
}

int write_id_maps(const clone_req &req, long pid, char *path, size_t path_len, int fail) {
  snprintf(path, path_len, "/proc/%ld/uid_map", pid);
  int r = fail < 0 ? fail : write_map(req, path, req.uid_map.data(), req.uid_map.size());
  if (r == 0 && req.deny_setgroups) {
    // A one-id map written by an unprivileged parent: the kernel requires setgroups denied
    // before the gid map (user_namespaces(7)).
    snprintf(path, path_len, "/proc/%ld/setgroups", pid);
    r = write_map(req, path, "deny", 4);
  }
  if (r == 0) {
    snprintf(path, path_len, "/proc/%ld/gid_map", pid);
    r = write_map(req, path, req.gid_map.data(), req.gid_map.size());
  }
  return r;
}

static void clone_and_map(clone_job &j) {
  plan *p = j.p;
  // Block every signal around clone3 so no handler of Node's runs in the child before
  // CLONE_CLEAR_SIGHAND has taken effect; the child clears the mask before exec.
  sigset_t all, old;
  sigfillset(&all);
#if HUTCH_CLONE_VM
  // CLONE_VM: no copy of the Node process's page tables (and no copy-on-write faults in it
  // afterwards); the child runs child_entry on its own stack until it execs init.
  void *stack = take_stack();
  if (stack == MAP_FAILED) {
    j.clone_err = errno;
    snprintf(j.path, sizeof j.path, "mmap");
    return;
  }
  j.a.flags |= CLONE_VM;
  j.a.stack = (uint64_t)(uintptr_t)stack;
  j.a.stack_size = kChildStack;
  // Root mode: the child shares our fd table until it has unshared it down to its own fds
  // (run_child's first step), so the clone copies no table and nothing is closed at its exec
  // for each fd we hold: with 10,000 live sandboxes, those copies were most of a create's CPU.
  // We wait for that step (or the child's death: CLONE_CHILD_CLEARTID) before any fd changes.
  if (j.req->userns_fd < 0) {
    p->unshare_below = max_child_fd(*p) + 1;
    p->files_word = 1;
    j.a.flags |= CLONE_FILES | CLONE_CHILD_CLEARTID;
    j.a.child_tid = (uint64_t)(uintptr_t)&p->files_word;
  }
  pthread_sigmask(SIG_SETMASK, &all, &old);
  long pid = hutch_clone3_vm(&j.a, sizeof j.a, child_entry, p);
  j.clone_err = pid < 0 ? (int)-pid : 0;
  if (pid > 0 && p->unshare_below >= 0) {
    while (__atomic_load_n(&p->files_word, __ATOMIC_ACQUIRE) != 0) rsys6(SYS_futex, (long)&p->files_word, FUTEX_WAIT, 1, 0, 0, 0);
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (pid > 0) j.stack = stack;
  else give_stack(stack);
#else
  pthread_sigmask(SIG_SETMASK, &all, &old);
  long pid = sys_clone3(&j.a);
  if (pid == 0) run_child(*p);
  j.clone_err = errno;
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
#endif
  j.pid = pid;
  if (pid < 0) return;
  // A prepared link's user namespace has its maps already (makeLinkNamespaces).
  if (j.req->link_user_fd >= 0) return;
  j.map_err = write_id_maps(*j.req, pid, j.path, sizeof j.path, p->fail_step == STEP_ID_MAP ? -p->fail_errno : 0);
}

static int clone_job_entry(void *arg) {
  clone_and_map(*static_cast<clone_job *>(arg));
  return 0;
}

// The trampoline of a clone into a prepared link, already in the link's user namespace
// (run_in_userns: the caller owns it, or an ancestor of it, so it has CAP_SYS_ADMIN there):
// joins the link's network namespace, which that user namespace owns, then clones without
// CLONE_NEWUSER | CLONE_NEWNET. The sandbox's pid, ipc and uts namespaces are made by that
// clone, owned by the link's user namespace, as a cold clone's are by the one it makes.
static int link_clone_entry(void *arg) {
  clone_job *j = static_cast<clone_job *>(arg);
  long r = rsys2(SYS_setns, j->req->link_net_fd, CLONE_NEWNET);
  if (r < 0) return (int)r;
  clone_and_map(*j);
  return 0;
}

#if HUTCH_CLONE_VM
struct userns_call {
  int nsfd;
  int (*fn)(void *);
  void *arg;
  int result;
};

static int userns_entry(void *v) {
  userns_call *u = static_cast<userns_call *>(v);
  long r = rsys2(SYS_setns, u->nsfd, CLONE_NEWUSER);
  u->result = r < 0 ? (int)r : u->fn(u->arg);
  return 0;
}
#endif

#if HUTCH_CLONE_VM
long clone_vm_on(uint64_t flags, int *pidfd, void *stack, size_t stack_size, int (*fn)(void *), void *arg) {
  struct clone_args a;
  memset(&a, 0, sizeof a);
  a.flags = flags;
  a.pidfd = (uint64_t)(uintptr_t)pidfd;
  a.exit_signal = 0;  // no SIGCHLD: libuv's handler never sees it
  a.stack = (uint64_t)(uintptr_t)stack;
  a.stack_size = stack_size;
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  long pid = hutch_clone3_vm(&a, sizeof a, fn, arg);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  return pid;
}
#endif

long vfork_task(uint64_t flags, int (*fn)(void *), void *arg, int *pidfd, size_t stack_size) {
#if HUTCH_CLONE_VM
  // CLONE_VM | CLONE_VFORK: a task of our memory that borrows this thread (which waits until it
  // execs or exits) on a stack of its own, with every signal blocked in it. Unlike a thread it
  // may join other namespaces (setns wants a task with its own fs_struct and thread group).
  void *stack = mmap(nullptr, stack_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  if (stack == MAP_FAILED) return -errno;
  long pid = clone_vm_on(flags | CLONE_VM | CLONE_VFORK | (pidfd ? CLONE_PIDFD : 0), pidfd, stack, stack_size, fn, arg);
  munmap(stack, stack_size);  // CLONE_VFORK: the task has exec'd or exited
  return pid;
#else
  (void)flags, (void)fn, (void)arg, (void)pidfd, (void)stack_size;
  return -ENOSYS;
#endif
}

long run_in_userns(int nsfd, int (*fn)(void *), void *arg) {
#if HUTCH_CLONE_VM
  // CLONE_FILES: what the task opens is ours. It exits when fn returns.
  userns_call u = {nsfd, fn, arg, -EIO};
  long pid = vfork_task(CLONE_FILES, userns_entry, &u, nullptr, 1024 * 1024);
  if (pid < 0) return pid;
  siginfo_t si;
  while (waitid(P_PID, (id_t)pid, &si, WEXITED | __WALL) < 0 && errno == EINTR) {
  }
  return u.result;
#else
  (void)nsfd, (void)fn, (void)arg;
  return -ENOSYS;
#endif
}

// parent, any thread (no N-API, no JS): clone3 into new namespaces and write the id maps; the
// child then waits for go. The join fds are closed here either way (the child has its copies).
// On failure everything made here is undone and c.fail_* says why.
void do_clone(plan *p, const clone_req &req, cloned &c) {
  struct fd_list {
    std::vector<int> &fds;
    ~fd_list() {
      for (int fd : fds) close(fd);
    }
  } join_guard{p->join_fds};
  // The tests' failure hook (lib/plan/testing.ts): clone fails as clone3 would.
  if (p->fail_step == STEP_CLONE) {
    c.fail_step = "clone", c.fail_err = -p->fail_errno, c.fail_path = "clone3";
    return;
  }
  // go: a SEQPACKET pair, so a blank child can receive its plan and fds with its go.
  int sync[2], errp[2], ctl[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sync) < 0) {
    c.fail_step = "clone", c.fail_err = -errno, c.fail_path = "socketpair";
    return;
  }
  if (pipe2(errp, O_CLOEXEC) < 0) {
    c.fail_step = "clone", c.fail_err = -errno, c.fail_path = "pipe2";
    close(sync[0]), close(sync[1]);
    return;
  }
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, ctl) < 0) {
    c.fail_step = "clone", c.fail_err = -errno, c.fail_path = "socketpair";
    close(sync[0]), close(sync[1]), close(errp[0]), close(errp[1]);
    return;
  }
  p->sync_fd = sync[0];
  p->err_fd = errp[1];
  p->ctl_fd = ctl[1];
  p->parent_fds[0] = sync[1];
  p->parent_fds[1] = errp[0];
  p->parent_fds[2] = ctl[0];

  clone_job j;
  j.p = p;
  j.req = &req;
  memset(&j.a, 0, sizeof j.a);
  // No CLONE_NEWNS: the child leaves the host's mount namespace for one it makes for its setup
  // (child_lock.cc); a copy made here would only be torn down then, at the cost of an RCU
  // grace period.
  j.a.flags = CLONE_PIDFD | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_CLEAR_SIGHAND;
  j.a.pidfd = (uint64_t)(uintptr_t)&j.pidfd;
  j.a.exit_signal = 0;  // no SIGCHLD: exits are seen on the pidfd, child_process is left alone
  if (req.cgroup_fd >= 0) {
    j.a.flags |= CLONE_INTO_CGROUP;
    j.a.cgroup = (uint64_t)req.cgroup_fd;
  }
  bool link = req.link_user_fd >= 0;
  if (link) {
    // A prepared link (lib/network/linkpool.ts): its user and network namespaces are joined
    // in a trampoline, not made; its maps are written and pasta is attached already.
    j.a.flags &= ~(uint64_t)(CLONE_NEWUSER | CLONE_NEWNET);
  }
  if (link || req.userns_fd >= 0) {
    // Outside root mode the maps name ids of the holder user namespace (lib/host/holder.ts):
    // they can only be written from inside it, so clone and maps run in a trampoline that
    // joined it. CLONE_PARENT makes the sandbox our child all the same (pidfd, waitid).
    j.a.flags |= CLONE_PARENT;
    long r = link ? run_in_userns(req.link_user_fd, link_clone_entry, &j) : run_in_userns(req.userns_fd, clone_job_entry, &j);
    if (r < 0 && j.pid <= 0) {
      close(sync[0]), close(sync[1]), close(errp[0]), close(errp[1]), close(ctl[0]), close(ctl[1]);
      c.fail_step = "clone", c.fail_err = (int)r, c.fail_path = link ? "setns(prepared network link)" : "setns(holder user namespace)";
      return;
    }
  } else {
    clone_and_map(j);
  }
  close(sync[0]);
  close(errp[1]);
  close(ctl[1]);
  if (j.pid < 0) {
    close(sync[1]), close(errp[0]), close(ctl[0]);
    c.fail_step = "clone", c.fail_err = -j.clone_err;
    return;
  }
  c.pid = j.pid;
  c.pidfd = j.pidfd;
  c.go_fd = sync[1];
  c.err_fd = errp[0];
  c.ctl_fd = ctl[0];
  c.stack = j.stack;
  int r = j.map_err;
  // A blank child sets up what it can while it waits for go, and for that needs the maps.
  if (r == 0 && p->blank) {
    ssize_t n = send(c.go_fd, "m", 1, MSG_NOSIGNAL);
    if (n != 1) r = n < 0 ? -errno : -EIO, snprintf(j.path, sizeof j.path, "sync");
  }
  if (r < 0) {
    sys_pidfd_send_signal(c.pidfd, SIGKILL);
    siginfo_t si;
    waitid((idtype_t)P_PIDFD, c.pidfd, &si, WEXITED | __WALL);
    if (c.stack) give_stack(c.stack);  // the child was waited for: dead
    close(c.pidfd), close(c.go_fd), close(c.err_fd), close(c.ctl_fd);
    c = cloned();
    c.fail_step = "id_map", c.fail_err = r, c.fail_path = j.path;
    return;
  }
  fcntl(c.err_fd, F_SETFL, O_NONBLOCK);
  fcntl(c.ctl_fd, F_SETFL, O_NONBLOCK);
  // The fds a live sandbox keeps go high in our table, so the short-lived ones of the next
  // start (its plan's, its sockets) take the low numbers, below what its child copies.
  c.ctl_fd = move_high(c.ctl_fd);
  c.pidfd = move_high(c.pidfd);
}

// parent, main thread. Keeps a cloned child's plan and stack until it execs or dies
// (release_child); a blank child also keeps its go socket there.
void keep_child(std::unique_ptr<plan> p, const cloned &c, bool blank) {
  pending_child pc;
  pc.stack = c.stack;
  pc.stack_size = c.stack ? kChildStack : 0;
  pc.p = std::move(p);
  if (blank) pc.go_fd = c.go_fd;
  g_pending.emplace(c.pid, std::move(pc));
}

Napi::Value failure_of(Napi::Env env, const cloned &c) {
  return sys_failure(env, c.fail_step, c.fail_err, c.fail_path.empty() ? nullptr : c.fail_path.c_str());
}

Napi::Object cloned_object(Napi::Env env, const cloned &c) {
  Napi::Object out = Napi::Object::New(env);
  out.Set("pid", (double)c.pid);
  out.Set("pidfd", c.pidfd);
  out.Set("errFd", c.err_fd);
  out.Set("ctlFd", c.ctl_fd);
  return out;
}

// Kills a cloned child that will not be released, and forgets it.
void abandon(cloned &c) {
  sys_pidfd_send_signal(c.pidfd, SIGKILL);
  siginfo_t si;
  waitid((idtype_t)P_PIDFD, c.pidfd, &si, WEXITED | __WALL);
  release_child(c.pid);
  close(c.pidfd), close(c.go_fd), close(c.err_fd), close(c.ctl_fd);
}

bool check_init(Napi::Env env) {
  if (g_init_fd >= 0) return true;
  Napi::Error::New(env, "cloneSandbox: setInit() was not called").ThrowAsJavaScriptException();
  return false;
}

// parent. cloneSandbox(plan, fds, clone): starts a sandbox from its encoded plan (lib/plan/encode.ts)
// and the fds it names: clone3 into new namespaces, maps, placement, release. Returns
// { pid, pidfd, errFd, ctlFd } or a failure { step, errno, path }; throws on a bad argument.
Napi::Value CloneSandbox(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!check_init(env)) return env.Undefined();
  auto p = std::make_unique<plan>();
  clone_req req;
  cloned c;
  if (!take_plan(env, info, *p) || !prepare_clone(env, info[2], "cloneSandbox", *p, req, c)) return env.Undefined();
  if (!c.fail_step) do_clone(p.get(), req, c);
  if (c.fail_step) {
    for (int fd : p->join_fds) close(fd);
    return failure_of(env, c);
  }
  keep_child(std::move(p), c, false);
  // The child was cloned after the plan's fds were opened: it has them under the same numbers.
  ssize_t n = send(c.go_fd, "x", 1, MSG_NOSIGNAL);
  if (n != 1) {
    // The child is gone before go (its sync or cgroup step failed): its record, when it wrote
    // one, says why; the send's own errno (EPIPE) would only say that it is gone.
    int e = n < 0 ? errno : EIO;
    struct setup_error rec;
    ssize_t k = read(c.err_fd, &rec, sizeof rec);
    abandon(c);
    if (k == (ssize_t)sizeof rec && rec.step < STEP_COUNT) {
      rec.detail[sizeof rec.detail - 1] = 0;
      return sys_failure(env, step_name(rec.step), rec.err, rec.detail);
    }
    return sys_failure(env, "sync", e, nullptr);
  }
  close(c.go_fd);
  return cloned_object(env, c);
}

// planLayout: addon/plan.h's numbers, for the test that lib/plan/encode.ts agrees with them.
void InitPlanLayout(Napi::Env env, Napi::Object exports) {
  Napi::Object l = Napi::Object::New(env);
  l.Set("magic", (double)HUTCH_PLAN_MAGIC);
  l.Set("version", HUTCH_PLAN_VERSION);
  l.Set("max", HUTCH_PLAN_MAX);
  l.Set("maxFds", (double)kMaxGoFds);
  l.Set("headerSize", (double)sizeof(plan_header));
  l.Set("opSize", (double)sizeof(plan_op));
  Napi::Object off = Napi::Object::New(env);
#define OFF(s, f) off.Set(#s "." #f, (double)offsetof(s, f));
  OFF(plan_header, magic) OFF(plan_header, version) OFF(plan_header, header_size) OFF(plan_header, length)
  OFF(plan_header, op_count) OFF(plan_header, fd_count) OFF(plan_header, fail_step) OFF(plan_header, fail_errno)
  OFF(plan_op, type) OFF(plan_op, step) OFF(plan_op, size) OFF(plan_op, fd) OFF(plan_op, flags) OFF(plan_op, nstr)
  OFF(plan_op, attrs)
#undef OFF
  l.Set("offsets", off);
  Napi::Object ops = Napi::Object::New(env);
#define X(id, n) ops.Set(#id, n);
  HUTCH_PLAN_OPS(X)
#undef X
  l.Set("ops", ops);
  Napi::Object flags = Napi::Object::New(env);
  flags.Set("LEGACY", PLAN_F_LEGACY);
  flags.Set("FILE", PLAN_F_FILE);
  flags.Set("PATH", PLAN_F_PATH);
  flags.Set("MOUNT_ATTR_RDONLY", MOUNT_ATTR_RDONLY);
  flags.Set("MOUNT_ATTR_NOSUID", MOUNT_ATTR_NOSUID);
  flags.Set("MOUNT_ATTR_NODEV", MOUNT_ATTR_NODEV);
  flags.Set("MOUNT_ATTR_NOEXEC", MOUNT_ATTR_NOEXEC);
  l.Set("flags", flags);
  exports.Set("planLayout", l);
}
