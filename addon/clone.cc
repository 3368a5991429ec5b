// clone3 and the parent's side of a sandbox's birth: fds and plan prepared before clone, id
// maps and cgroup placement written from the parent, then the child is released.
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <memory>
#include <string>
#include <unordered_map>

#include "addon.h"
#include "plan.h"
#include "sys.h"

#ifndef CLONE_CLEAR_SIGHAND
#define CLONE_CLEAR_SIGHAND 0x100000000ULL
#endif

static int g_init_fd = -1;  // sealed memfd with the init binary, made once per process

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

void release_child(long pid) {
  auto it = g_pending.find(pid);
  if (it == g_pending.end()) return;
  if (it->second.stack) munmap(it->second.stack, it->second.stack_size);
  if (it->second.go_fd >= 0) close(it->second.go_fd);
  g_pending.erase(it);
}

static int child_entry(void *arg) { run_child(*static_cast<plan *>(arg)); }

static std::string get_str(const Napi::Object &o, const char *key) {
  Napi::Value v = o.Get(key);
  return v.IsString() ? v.As<Napi::String>().Utf8Value() : std::string();
}
static int get_int(const Napi::Object &o, const char *key, int dflt) {
  Napi::Value v = o.Get(key);
  return v.IsNumber() ? v.As<Napi::Number>().Int32Value() : dflt;
}
static std::vector<std::string> get_strs(const Napi::Object &o, const char *key) {
  std::vector<std::string> out;
  Napi::Value v = o.Get(key);
  if (!v.IsArray()) return out;
  Napi::Array a = v.As<Napi::Array>();
  for (uint32_t i = 0; i < a.Length(); i++) {
    Napi::Value e = a.Get(i);
    if (e.IsString()) out.push_back(e.As<Napi::String>().Utf8Value());
  }
  return out;
}

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

static int write_file(const char *path, const char *data, size_t len);

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
Napi::Value MakeUserns(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::string uid_map = info[0].As<Napi::String>().Utf8Value(), gid_map = info[1].As<Napi::String>().Utf8Value();
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
    snprintf(path, sizeof path, "/proc/%ld/uid_map", pid);
    int r = write_file(path, uid_map.data(), uid_map.size());
    if (r == 0) {
      snprintf(path, sizeof path, "/proc/%ld/gid_map", pid);
      r = write_file(path, gid_map.data(), gid_map.size());
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
  if (nsfd < 0) return sys_failure(env, "id_map", e ? e : EINVAL, "user namespace for idmapped mounts");
  return Napi::Number::New(env, nsfd);
}

static int write_file(const char *path, const char *data, size_t len) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return -errno;
  ssize_t n = write(fd, data, len);
  int e = n < 0 ? -errno : (size_t)n != len ? -EIO : 0;
  close(fd);
  return e;
}

// parent. The setup half of a plan, from JS: what the child mounts and where. Throws a
// TypeError (returns false) when a required field is missing.
static bool parse_setup(Napi::Env env, const Napi::Object &o, plan &p) {
  p.hostname = get_str(o, "hostname");
  p.layers_dir = get_str(o, "layersDir");
  p.lowerdirs = get_str(o, "lowerdirs");
  p.scratch_size = get_str(o, "scratchSize");
  p.shm_size = get_str(o, "shmSize");
  p.upper_dir = get_str(o, "upperDir");
  p.legacy_overlay = o.Get("legacyOverlay").ToBoolean();
  p.root_mountpoint = get_str(o, "rootMountpoint");
  p.masked = get_strs(o, "masked");
  p.readonly = get_strs(o, "readonly");
  p.readonly_root = o.Get("readonlyRoot").ToBoolean();
  p.layer_fds.clear();
  Napi::Value lv = o.Get("layerFds");
  if (lv.IsArray()) {
    Napi::Array la = lv.As<Napi::Array>();
    for (uint32_t i = 0; i < la.Length(); i++) p.layer_fds.push_back(la.Get(i).As<Napi::Number>().Int32Value());
  }
  p.binds.clear();
  Napi::Value bv = o.Get("binds");
  if (bv.IsArray()) {
    Napi::Array ba = bv.As<Napi::Array>();
    for (uint32_t i = 0; i < ba.Length(); i++) {
      Napi::Object b = ba.Get(i).As<Napi::Object>();
      p.binds.push_back({get_int(b, "fd", -1), get_str(b, "target"), b.Get("file").ToBoolean()});
    }
  }
  if (p.lowerdirs.empty() || p.layers_dir.empty() || p.root_mountpoint.empty() || p.scratch_size.empty() ||
      p.shm_size.empty()) {
    Napi::TypeError::New(env, "spawn(plan): layersDir, lowerdirs, rootMountpoint, scratchSize, shmSize are required").ThrowAsJavaScriptException();
    return false;
  }
  for (const bind_op &b : p.binds) {
    if (b.tree_fd < 0 || b.target.empty() || b.target[0] == '/') {
      Napi::TypeError::New(env, "spawn(plan): each bind needs fd >= 0 and a relative target").ThrowAsJavaScriptException();
      return false;
    }
  }
  if (p.layer_fds.size() + p.binds.size() > kMaxGoFds) {
    Napi::TypeError::New(env, "spawn(plan): too many layer and bind fds").ThrowAsJavaScriptException();
    return false;
  }
  return true;
}

// parent. Sends the go message: one byte, and for a blank child the setup's fds (layers then
// binds, in plan order), which it receives as its own (it was cloned before they existed).
static int send_go(int go_fd, const plan &p, bool with_fds) {
  std::vector<int> fds;
  if (with_fds) {
    fds = p.layer_fds;
    for (const bind_op &b : p.binds) fds.push_back(b.tree_fd);
  }
  ssize_t n = send_with_fds(go_fd, "x", 1, fds.data(), fds.size());
  return n == 1 ? 0 : n < 0 ? (int)n : -EIO;
}

// parent. What a clone needs besides the plan, read from JS on the main thread.
struct clone_req {
  std::string uid_map, gid_map;
  int cgroup_fd = -1;
};

// What a clone made: the parent's ends, and the CLONE_VM child's stack (to keep with its plan).
struct cloned {
  long pid = -1;
  int pidfd = -1, go_fd = -1, err_fd = -1, ctl_fd = -1;
  void *stack = nullptr;
  // On failure: the step, -errno and the path for the error.
  const char *fail_step = nullptr;
  int fail_err = 0;
  std::string fail_path;
};

// parent, main thread. Reads the clone's arguments and opens the v1 `tasks` files the child
// joins; throws (returns false) on bad arguments, or sets c.fail_* on a failed open.
static bool prepare_clone(Napi::Env env, const Napi::Object &o, plan &p, clone_req &req, cloned &c) {
  req.uid_map = get_str(o, "uidMap");
  req.gid_map = get_str(o, "gidMap");
  req.cgroup_fd = get_int(o, "cgroupFd", -1);
  p.join_paths = get_strs(o, "joinFiles");
  if (req.uid_map.empty() || req.gid_map.empty()) {
    Napi::TypeError::New(env, "spawn(plan): uidMap, gidMap are required").ThrowAsJavaScriptException();
    return false;
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

// parent, any thread (no N-API, no JS): clone3 into new namespaces and write the id maps; the
// child then waits for go. The join fds are closed here either way (the child has its copies).
// On failure everything made here is undone and c.fail_* says why.
static void do_clone(plan *p, const clone_req &req, cloned &c) {
  struct fd_list {
    std::vector<int> &fds;
    ~fd_list() {
      for (int fd : fds) close(fd);
    }
  } join_guard{p->join_fds};
  // go: a SEQPACKET pair, so a blank child can receive fds with its go.
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

  int pidfd = -1;
  struct clone_args a;
  memset(&a, 0, sizeof a);
  // No CLONE_NEWNS: the child leaves the host's mount namespace for one it makes for its setup
  // (child_lock.cc); a copy made here would only be torn down then, at the cost of an RCU
  // grace period.
  a.flags = CLONE_PIDFD | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_CLEAR_SIGHAND;
  a.pidfd = (uint64_t)(uintptr_t)&pidfd;
  a.exit_signal = 0;  // no SIGCHLD: exits are seen on the pidfd, child_process is left alone
  if (req.cgroup_fd >= 0) {
    a.flags |= CLONE_INTO_CGROUP;
    a.cgroup = (uint64_t)req.cgroup_fd;
  }
  // Block every signal around clone3 so no handler of Node's runs in the child before
  // CLONE_CLEAR_SIGHAND has taken effect; the child clears the mask before exec.
  sigset_t all, old;
  sigfillset(&all);
#if HUTCH_CLONE_VM
  // CLONE_VM: no copy of the Node process's page tables (and no copy-on-write faults in it
  // afterwards); the child runs child_entry on its own stack until it execs init.
  void *stack = mmap(nullptr, kChildStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  if (stack == MAP_FAILED) {
    c.fail_step = "clone", c.fail_err = -errno, c.fail_path = "mmap";
    close(sync[0]), close(sync[1]), close(errp[0]), close(errp[1]), close(ctl[0]), close(ctl[1]);
    return;
  }
  a.flags |= CLONE_VM;
  a.stack = (uint64_t)(uintptr_t)stack;
  a.stack_size = kChildStack;
  pthread_sigmask(SIG_SETMASK, &all, &old);
  long pid = hutch_clone3_vm(&a, sizeof a, child_entry, p);
  int clone_err = pid < 0 ? (int)-pid : 0;
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (pid > 0) c.stack = stack;
  else munmap(stack, kChildStack);
#else
  pthread_sigmask(SIG_SETMASK, &all, &old);
  long pid = sys_clone3(&a);
  if (pid == 0) run_child(*p);
  int clone_err = errno;
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
#endif
  close(sync[0]);
  close(errp[1]);
  close(ctl[1]);
  if (pid < 0) {
    close(sync[1]), close(errp[0]), close(ctl[0]);
    c.fail_step = "clone", c.fail_err = -clone_err;
    return;
  }
  c.pid = pid;
  c.pidfd = pidfd;
  c.go_fd = sync[1];
  c.err_fd = errp[0];
  c.ctl_fd = ctl[0];

  char path[64];
  snprintf(path, sizeof path, "/proc/%ld/uid_map", pid);
  int r = write_file(path, req.uid_map.data(), req.uid_map.size());
  if (r == 0) {
    snprintf(path, sizeof path, "/proc/%ld/gid_map", pid);
    r = write_file(path, req.gid_map.data(), req.gid_map.size());
  }
  // A blank child sets up what it can while it waits for go, and for that needs the maps.
  if (r == 0 && p->blank) {
    ssize_t n = send(c.go_fd, "m", 1, MSG_NOSIGNAL);
    if (n != 1) r = n < 0 ? -errno : -EIO, snprintf(path, sizeof path, "sync");
  }
  if (r < 0) {
    sys_pidfd_send_signal(pidfd, SIGKILL);
    siginfo_t si;
    waitid((idtype_t)P_PIDFD, pidfd, &si, WEXITED | __WALL);
    if (c.stack) munmap(c.stack, kChildStack);
    close(pidfd), close(c.go_fd), close(c.err_fd), close(c.ctl_fd);
    c = cloned();
    c.fail_step = "id_map", c.fail_err = r, c.fail_path = path;
    return;
  }
  fcntl(c.err_fd, F_SETFL, O_NONBLOCK);
  fcntl(c.ctl_fd, F_SETFL, O_NONBLOCK);
}

// parent, main thread. Keeps a cloned child's plan and stack until it execs or dies
// (release_child); a blank child also keeps its go socket there.
static void keep_child(std::unique_ptr<plan> p, const cloned &c, bool blank) {
  pending_child pc;
  pc.stack = c.stack;
  pc.stack_size = c.stack ? kChildStack : 0;
  pc.p = std::move(p);
  if (blank) pc.go_fd = c.go_fd;
  g_pending.emplace(c.pid, std::move(pc));
}

static Napi::Value failure_of(Napi::Env env, const cloned &c) {
  return sys_failure(env, c.fail_step, c.fail_err, c.fail_path.empty() ? nullptr : c.fail_path.c_str());
}

static Napi::Object spawned_object(Napi::Env env, const cloned &c) {
  Napi::Object out = Napi::Object::New(env);
  out.Set("pid", (double)c.pid);
  out.Set("pidfd", c.pidfd);
  out.Set("errFd", c.err_fd);
  out.Set("ctlFd", c.ctl_fd);
  return out;
}

// Kills a cloned child that will not be released, and forgets it.
static void abandon(cloned &c) {
  sys_pidfd_send_signal(c.pidfd, SIGKILL);
  siginfo_t si;
  waitid((idtype_t)P_PIDFD, c.pidfd, &si, WEXITED | __WALL);
  release_child(c.pid);
  close(c.pidfd), close(c.go_fd), close(c.err_fd), close(c.ctl_fd);
}

static bool check_init(Napi::Env env) {
  if (g_init_fd >= 0) return true;
  Napi::Error::New(env, "spawn: setInit() was not called").ThrowAsJavaScriptException();
  return false;
}

// parent. Starts a sandbox: clone3 into new namespaces, maps, placement, release.
// Returns { pid, pidfd, errFd, ctlFd } or a failure { step, errno, path }.
Napi::Value Spawn(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject()) {
    Napi::TypeError::New(env, "spawn(plan): plan must be an object").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (!check_init(env)) return env.Undefined();
  Napi::Object o = info[0].As<Napi::Object>();
  auto p = std::make_unique<plan>();
  clone_req req;
  cloned c;
  if (!parse_setup(env, o, *p) || !prepare_clone(env, o, *p, req, c)) return env.Undefined();
  if (!c.fail_step) do_clone(p.get(), req, c);
  if (c.fail_step) {
    for (int fd : p->join_fds) close(fd);
    return failure_of(env, c);
  }
  plan *raw = p.get();
  keep_child(std::move(p), c, false);
  // The child was cloned after the setup's fds were opened: it has them under the same numbers.
  int e = send_go(c.go_fd, *raw, false);
  if (e < 0) {
    abandon(c);
    return sys_failure(env, "sync", e, nullptr);
  }
  close(c.go_fd);
  return spawned_object(env, c);
}

// The clone of a blank child, on a libuv pool thread: most of its cost is the kernel making a
// network namespace, which need not hold up the event loop. The pool's threads live as long
// as the process, so the child's PR_SET_PDEATHSIG (tied to the thread that cloned it) holds.
class BlankWorker : public Napi::AsyncWorker {
 public:
  BlankWorker(Napi::Env env, std::unique_ptr<plan> p, clone_req req)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), p_(std::move(p)), req_(std::move(req)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override { do_clone(p_.get(), req_, c_); }
  void OnOK() override {
    Napi::Env env = Env();
    if (c_.fail_step) return deferred_.Resolve(failure_of(env, c_));
    keep_child(std::move(p_), c_, true);
    deferred_.Resolve(spawned_object(env, c_));
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::unique_ptr<plan> p_;
  clone_req req_;
  cloned c_;
};

// parent. spawnBlank({ uidMap, gidMap, cgroupFd, joinFiles }): a promise of a blank sandbox —
// cloned into its namespaces and cgroup with its id maps, waiting for the setup half of a plan
// (releaseBlank) — or of a failure. Made ahead of a run so that its clone is off the run's path.
Napi::Value SpawnBlank(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject()) {
    Napi::TypeError::New(env, "spawnBlank(opts): opts must be an object").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (!check_init(env)) return env.Undefined();
  auto p = std::make_unique<plan>();
  p->blank = true;
  clone_req req;
  cloned c;
  if (!prepare_clone(env, info[0].As<Napi::Object>(), *p, req, c)) return env.Undefined();
  if (c.fail_step) {
    for (int fd : p->join_fds) close(fd);
    auto d = Napi::Promise::Deferred::New(env);
    d.Resolve(failure_of(env, c));
    return d.Promise();
  }
  auto *w = new BlankWorker(env, std::move(p), std::move(req));
  Napi::Promise promise = w->Promise();
  w->Queue();
  return promise;
}

// parent. releaseBlank(pid, plan): gives a blank child the setup half of its plan and its fds,
// and lets it go. true, or a failure (the blank is gone: the caller kills and reaps it).
Napi::Value ReleaseBlank(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  long pid = (long)info[0].As<Napi::Number>().Int64Value();
  auto it = g_pending.find(pid);
  if (it == g_pending.end() || !it->second.p->blank || it->second.go_fd < 0) {
    Napi::TypeError::New(env, "releaseBlank: no such blank child").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  // The child is blocked in recvmsg on the go socket and reads none of these before it returns.
  if (!parse_setup(env, info[1].As<Napi::Object>(), *it->second.p)) return env.Undefined();
  int go = it->second.go_fd;
  it->second.go_fd = -1;
  int e = send_go(go, *it->second.p, true);
  close(go);
  if (e < 0) return sys_failure(env, "sync", e, nullptr);
  return Napi::Boolean::New(env, true);
}
