// spliceRelay(a, b, id): a connection that `ask` allowed (the ask listener of
// lib/network/sni-proxy.ts holds it, connected to its original destination), moved in the
// kernel with splice(2) through a pipe per direction, one thread per direction: the bytes
// never enter JS. a and b are dup'd here; the caller closes its own handles.
// A FIN is passed on as shutdown(SHUT_WR); an error on either side closes both with a reset
// (SO_LINGER 0). Resolves with the bytes moved (a->b + b->a) when both directions are done.
#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <map>
#include <mutex>
#include <thread>
#include <utility>

#include "addon.h"
#include "relay.h"

namespace {

constexpr size_t CHUNK = 1 << 20;

// id -> the relay's two sockets, for relayStop (a sandbox destroyed with connections open).
std::mutex active_mu;
std::map<double, std::pair<int, int>> active;

void reset(int fd) {
  linger l{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
}

// One direction, from -> to, on a thread of its own with blocking sockets: splice into a pipe
// (as much as the socket has, up to the pipe's size), then out until the pipe is empty. No
// poll: each chunk costs two splice calls and the thread sleeps in the kernel between them.
// Returns bytes moved, or -1 after an error. EOF is passed on as shutdown(SHUT_WR).
double pump(int from, int to, bool *failed) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) return *failed = true, -1;
  fcntl(p[1], F_SETPIPE_SZ, CHUNK);
  int sz = fcntl(p[1], F_GETPIPE_SZ);
  size_t cap = sz > 0 ? static_cast<size_t>(sz) : 65536;
  double moved = 0;
  for (;;) {
    ssize_t r = splice(from, nullptr, p[1], nullptr, cap, SPLICE_F_MOVE);
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) {
      shutdown(to, SHUT_WR);
      break;
    }
    if (r < 0) {
      *failed = true;
      break;
    }
    size_t left = static_cast<size_t>(r);
    while (left > 0) {
      ssize_t w = splice(p[0], nullptr, to, nullptr, left, SPLICE_F_MOVE);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        *failed = true;
        break;
      }
      left -= w;
      moved += w;
    }
    if (*failed) break;
  }
  close(p[0]);
  close(p[1]);
  return moved;
}

// Both directions, one thread each; an error on either side resets both (SO_LINGER 0) and
// ends the other direction (shutdown). Returns bytes moved, or -1 after an error.
double relay(int a, int b) {
  for (int fd : {a, b}) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  bool failed_up = false, failed_down = false;
  double up = 0;
  std::thread t([&]() {
    up = pump(a, b, &failed_up);
    if (failed_up) shutdown(a, SHUT_RDWR), shutdown(b, SHUT_RDWR);
  });
  double down = pump(b, a, &failed_down);
  if (failed_down) shutdown(a, SHUT_RDWR), shutdown(b, SHUT_RDWR);
  t.join();
  if (failed_up || failed_down) {
    reset(a);
    reset(b);
    return -1;
  }
  return up + down;
}

Napi::Value SpliceRelay(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int a = fcntl(info[0].As<Napi::Number>().Int32Value(), F_DUPFD_CLOEXEC, 0);
  int b = fcntl(info[1].As<Napi::Number>().Int32Value(), F_DUPFD_CLOEXEC, 0);
  double id = info[2].As<Napi::Number>().DoubleValue();
  auto deferred = std::make_shared<Napi::Promise::Deferred>(env);
  if (a < 0 || b < 0) {
    if (a >= 0) close(a);
    if (b >= 0) close(b);
    deferred->Resolve(Napi::Number::New(env, -1));
    return deferred->Promise();
  }
  auto done = Napi::ThreadSafeFunction::New(env, Napi::Function::New(env, [](const Napi::CallbackInfo &) {}), "spliceRelay", 0, 1);
  done.Unref(env);  // an open connection does not keep the host process alive
  {
    std::lock_guard<std::mutex> g(active_mu);
    active[id] = {a, b};
  }
  std::thread([a, b, id, deferred, done]() mutable {
    double moved = relay(a, b);
    {
      std::lock_guard<std::mutex> g(active_mu);
      active.erase(id);
    }
    close(a);
    close(b);
    done.BlockingCall([deferred, moved](Napi::Env env, Napi::Function) { deferred->Resolve(Napi::Number::New(env, moved)); });
    done.Release();
  }).detach();
  return deferred->Promise();
}

// relayStop(id): ends a relay at once (both sockets shut down; the thread then resets and closes them).
Napi::Value RelayStop(const Napi::CallbackInfo &info) {
  double id = info[0].As<Napi::Number>().DoubleValue();
  std::lock_guard<std::mutex> g(active_mu);
  auto it = active.find(id);
  if (it != active.end()) {
    shutdown(it->second.first, SHUT_RDWR);
    shutdown(it->second.second, SHUT_RDWR);
  }
  return info.Env().Undefined();
}

}  // namespace

void InitRelay(Napi::Env env, Napi::Object exports) {
  exports.Set("spliceRelay", Napi::Function::New(env, SpliceRelay));
  exports.Set("relayStop", Napi::Function::New(env, RelayStop));
}
