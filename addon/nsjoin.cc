// Reaching into a sandbox's user + network namespace without host root, for the userspace
// network backend (lib/network/userspace.ts):
//
// The namespaces are a process's (`pid`: its pidfd), or a prepared link's before any process
// is in them (`[usernsFd, netnsFd]`: lib/network/linkpool.ts).
//
// - nsNetlinkSocket(pid, protocol): a netlink socket that belongs to the netns of `pid`. A
//   socket keeps the netns it was made in, so a short-lived child joins the sandbox's user
//   namespace (setns needs CAP_SYS_ADMIN there: the caller has it as the owner of an ancestor
//   user namespace) and then its netns, makes the socket in our shared fd table and exits.
//   A thread cannot do it: setns(CLONE_NEWUSER) refuses a task that shares its thread group.
// - nsSpawn(file, argv, env, fds, joinPid, pdeathsig): execs a program (nft in the sandbox's
//   namespaces; pasta outside them) and returns { pid, pidfd }. With pdeathsig the program is
//   killed by the kernel when this process ends, however it ends (a crash leaves no pasta).
//
// Both clone with CLONE_VM | CLONE_VFORK on a stack of their own (hutch_clone3_vm, sys.h): no
// page-table copy of the Node process, the caller waits only until the exec (or the socket).
// The child runs raw syscalls only (sys.h's rsys*): it shares our memory and errno.
#include <errno.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <string>
#include <vector>

#include "addon.h"
#include "clone.h"
#include "sys.h"

#ifndef CLONE_CLEAR_SIGHAND
#define CLONE_CLEAR_SIGHAND 0x100000000ULL
#endif
#ifndef SOL_NETLINK
#define SOL_NETLINK 270
#endif

namespace {

const size_t kStack = 64 * 1024;
const int kMaxFds = 8;

enum nsjoin_step { NS_OK = 0, NS_PDEATH, NS_SETNS, NS_FDS, NS_SESSION, NS_SOCKET, NS_EXEC, NS_CAPS };
const char *const kStepNames[] = {"ok", "pdeathsig", "setns", "fds", "setsid", "socket", "exec", "capabilities"};
const int CAP_NET_ADMIN_BIT = 12;

struct nsjoin_req {
  // spawn
  const char *file = nullptr;
  char *const *argv = nullptr;
  char *const *envp = nullptr;
  int fds[kMaxFds];
  int nfds = 0;
  int devnull = -1;
  bool pdeath = false;
  long parent = 0;
  // both
  int joinfd = -1;  // pidfd whose user + net namespaces to join, or -1
  int join_user = -1, join_net = -1;  // or a prepared link's namespaces (lib/network/linkpool.ts)
  // socket
  int protocol = -1;
  int sock = -1;
  // written by the child on failure
  int step = NS_OK;
  int err = 0;
};

// The kernel's struct sigaction for rt_sigaction (not glibc's).
struct ksigaction {
  void *handler;
  unsigned long flags;
  void *restorer;
  uint64_t mask;
};

int fail(nsjoin_req *q, int step, long r) {
  q->step = step;
  q->err = (int)-r;
  return 127;
}

// The namespaces to join: a pidfd's user + net, or a user namespace's fd then a netns's.
long join(const nsjoin_req *q) {
  if (q->joinfd >= 0) return rsys2(SYS_setns, q->joinfd, CLONE_NEWUSER | CLONE_NEWNET);
  long r = rsys2(SYS_setns, q->join_user, CLONE_NEWUSER);
  return r < 0 ? r : rsys2(SYS_setns, q->join_net, CLONE_NEWNET);
}

bool joining(const nsjoin_req *q) { return q->joinfd >= 0 || q->join_user >= 0; }

int socket_child(void *arg) {
  nsjoin_req *q = static_cast<nsjoin_req *>(arg);
  long r = join(q);
  if (r < 0) return fail(q, NS_SETNS, r);
  r = rsys3(SYS_socket, AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, q->protocol);
  if (r < 0) return fail(q, NS_SOCKET, r);
  q->sock = (int)r;
  return 0;
}

int spawn_child(void *arg) {
  nsjoin_req *q = static_cast<nsjoin_req *>(arg);
  long r;
  if (q->pdeath) {
    r = rsys2(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL);
    if (r < 0) return fail(q, NS_PDEATH, r);
    // The parent may have died before the prctl: then nobody would kill us.
    if (rsys0(SYS_getppid) != q->parent) return fail(q, NS_PDEATH, -ESRCH);
  }
  // Its own session: a terminal's ^C to the caller's process group does not reach it.
  r = rsys0(SYS_setsid);
  if (r < 0) return fail(q, NS_SESSION, r);
  if (joining(q)) {
    r = join(q);
    if (r < 0) return fail(q, NS_SETNS, r);
    // setns gave us every capability in the sandbox's user namespace, but our uid is not its
    // root (often not mapped at all), so the exec would drop them: CAP_NET_ADMIN (all nft
    // needs) goes into the inheritable and ambient sets, which an exec keeps.
    struct {
      uint32_t version;
      int pid;
    } hdr = {0x20080522 /* _LINUX_CAPABILITY_VERSION_3 */, 0};
    struct {
      uint32_t effective, permitted, inheritable;
    } data[2];
    r = rsys2(SYS_capget, &hdr, data);
    if (r < 0) return fail(q, NS_CAPS, r);
    data[0].inheritable |= 1u << CAP_NET_ADMIN_BIT;
    r = rsys2(SYS_capset, &hdr, data);
    if (r < 0) return fail(q, NS_CAPS, r);
    r = rsys5(SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_ADMIN_BIT, 0, 0);
    if (r < 0) return fail(q, NS_CAPS, r);
  }
  // Sources first moved above the targets, so that fd i never overwrites a later source.
  int tmp[kMaxFds];
  for (int i = 0; i < q->nfds; i++) {
    int src = q->fds[i] >= 0 ? q->fds[i] : q->devnull;
    r = rsys3(SYS_fcntl, src, F_DUPFD_CLOEXEC, 64);
    if (r < 0) return fail(q, NS_FDS, r);
    tmp[i] = (int)r;
  }
  for (int i = 0; i < q->nfds; i++) {
    r = rsys3(SYS_dup3, tmp[i], i, 0);
    if (r < 0) return fail(q, NS_FDS, r);
  }
  // Everything else closes at exec (Node opens most fds O_CLOEXEC already).
  rsys3(SYS_close_range, (unsigned)q->nfds, ~0U, CLOSE_RANGE_CLOEXEC);
  // Default dispositions: CLONE_CLEAR_SIGHAND resets handled signals, not ignored ones
  // (Node ignores SIGPIPE; pasta refuses to start when SIGPIPE was already ignored).
  ksigaction dfl;
  memset(&dfl, 0, sizeof dfl);
  for (int s = 1; s < 65; s++) {
    if (s == SIGKILL || s == SIGSTOP) continue;
    rsys4(SYS_rt_sigaction, s, &dfl, nullptr, 8);
  }
  uint64_t none = 0;
  rsys4(SYS_rt_sigprocmask, SIG_SETMASK, &none, nullptr, 8);
  r = rsys3(SYS_execve, q->file, q->argv, q->envp);
  return fail(q, NS_EXEC, r);
}

Napi::Value failure(Napi::Env env, const nsjoin_req &q, const char *path) {
  return sys_failure(env, kStepNames[q.step], q.err, path);
}

// Runs fn on a stack of its own in a CLONE_VM | CLONE_VFORK child; returns its pid or -errno.
long vfork_child(nsjoin_req &q, uint64_t flags, int (*fn)(void *), int *pidfd) {
  return vfork_task(flags, fn, &q, pidfd, kStack);
}

void reap_pid(long pid) {
  siginfo_t si;
  int r;
  do r = waitid(P_PID, (id_t)pid, &si, WEXITED | __WALL); while (r < 0 && errno == EINTR);
}

int open_pidfd(int pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }

// The `join` argument: a pid (its pidfd is opened into q.joinfd; 0: none) or [usernsFd, netnsFd]
// (borrowed). -errno when the pidfd cannot be opened.
int read_join(const Napi::Value &v, nsjoin_req &q) {
  if (v.IsArray()) {
    Napi::Array a = v.As<Napi::Array>();
    q.join_user = a.Get(0u).As<Napi::Number>().Int32Value();
    q.join_net = a.Get(1u).As<Napi::Number>().Int32Value();
    return 0;
  }
  int pid = v.As<Napi::Number>().Int32Value();
  if (pid <= 0) return 0;
  q.joinfd = open_pidfd(pid);
  return q.joinfd < 0 ? -errno : 0;
}

// nsNetlinkSocket(pid, protocol): fd, or { step, errno, path }.
Napi::Value NsNetlinkSocket(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  nsjoin_req q;
  q.protocol = info[1].As<Napi::Number>().Int32Value();
  int e = read_join(info[0], q);
  if (e < 0 || !joining(&q)) return sys_failure(env, "pidfd", e < 0 ? -e : EINVAL, nullptr);
  long child = vfork_child(q, CLONE_FILES, socket_child, nullptr);
  if (q.joinfd >= 0) close(q.joinfd);
  if (child < 0) return sys_failure(env, "clone", (int)-child, nullptr);
  reap_pid(child);
  if (q.step != NS_OK) {
    if (q.sock >= 0) close(q.sock);
    return failure(env, q, nullptr);
  }
  int one = 1;
  setsockopt(q.sock, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof one);
  setsockopt(q.sock, SOL_NETLINK, 11 /* NETLINK_EXT_ACK */, &one, sizeof one);
  return Napi::Number::New(env, q.sock);
}

// nsSpawn(file, argv, env, fds, joinPid, pdeathsig): { pid, pidfd }, or { step, errno, path }.
// fds[i] (-1: /dev/null) becomes the child's fd i. joinPid 0: stay in our namespaces; or [usernsFd, netnsFd].
Napi::Value NsSpawn(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::string file = info[0].As<Napi::String>().Utf8Value();
  auto strings = [](const Napi::Array &a) {
    std::vector<std::string> out;
    for (uint32_t i = 0; i < a.Length(); i++) out.push_back(a.Get(i).As<Napi::String>().Utf8Value());
    return out;
  };
  std::vector<std::string> argv_s = strings(info[1].As<Napi::Array>()), env_s = strings(info[2].As<Napi::Array>());
  Napi::Array fds = info[3].As<Napi::Array>();
  bool pdeath = info[5].As<Napi::Boolean>().Value();
  if (fds.Length() > (uint32_t)kMaxFds) return sys_failure(env, "fds", EINVAL, nullptr);
  std::vector<char *> argv, envp;
  for (auto &s : argv_s) argv.push_back(const_cast<char *>(s.c_str()));
  argv.push_back(nullptr);
  for (auto &s : env_s) envp.push_back(const_cast<char *>(s.c_str()));
  envp.push_back(nullptr);

  nsjoin_req q;
  q.file = file.c_str();
  q.argv = argv.data();
  q.envp = envp.data();
  q.nfds = (int)fds.Length();
  for (int i = 0; i < q.nfds; i++) q.fds[i] = fds.Get((uint32_t)i).As<Napi::Number>().Int32Value();
  q.pdeath = pdeath;
  q.parent = getpid();
  q.devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (q.devnull < 0) return sys_failure(env, "fds", errno, "/dev/null");
  int e = read_join(info[4], q);
  if (e < 0) {
    close(q.devnull);
    return sys_failure(env, "pidfd", -e, nullptr);
  }
  int pidfd = -1;
  long pid = vfork_child(q, CLONE_CLEAR_SIGHAND, spawn_child, &pidfd);
  close(q.devnull);
  if (q.joinfd >= 0) close(q.joinfd);
  if (pid < 0) return sys_failure(env, "clone", (int)-pid, nullptr);
  if (q.step != NS_OK) {
    reap_pid(pid);
    close(pidfd);
    return failure(env, q, file.c_str());
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("pid", Napi::Number::New(env, (double)pid));
  o.Set("pidfd", Napi::Number::New(env, pidfd));
  return o;
}

}  // namespace

void InitNsJoin(Napi::Env env, Napi::Object exports) {
  exports.Set("nsNetlinkSocket", Napi::Function::New(env, NsNetlinkSocket));
  exports.Set("nsSpawn", Napi::Function::New(env, NsSpawn));
}
