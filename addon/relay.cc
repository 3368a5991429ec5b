// spliceRelay(a, b, first, id): the body of a connection the name-checking proxy allowed
// (lib/network/sni-proxy.ts), moved in the kernel with splice(2) through a pipe per direction,
// on a thread of its own: the bytes never enter JS. `first` (what the proxy read to find the
// SNI/Host) is written to b first. a and b are dup'd here; the caller closes its own handles.
// A FIN is passed on as shutdown(SHUT_WR); an error on either side closes both with a reset
// (SO_LINGER 0). Resolves with the bytes moved (a->b + b->a) when both directions are done.
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include "addon.h"
#include "relay.h"

namespace {

struct Dir {
  int from, to;
  int pipe[2] = {-1, -1};
  size_t queued = 0, cap = 0;
  bool eof = false, done = false;
};

constexpr size_t CHUNK = 1 << 20;

// id -> the relay's two sockets, for relayStop (a sandbox destroyed with connections open).
std::mutex active_mu;
std::map<double, std::pair<int, int>> active;

bool write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EAGAIN) {
      pollfd pf{fd, POLLOUT, 0};
      if (poll(&pf, 1, 30000) <= 0) return false;
      continue;
    }
    if (w <= 0) return false;
    p += w;
    n -= w;
  }
  return true;
}

void reset(int fd) {
  linger l{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
}

// Returns bytes moved, or -1 after an error (both sides then reset).
double relay(int a, int b, const std::string &first) {
  double moved = 0;
  if (!first.empty() && !write_all(b, first.data(), first.size())) {
    reset(a);
    reset(b);
    return -1;
  }
  Dir d[2] = {{a, b}, {b, a}};
  for (auto &x : d) {
    if (pipe2(x.pipe, O_NONBLOCK | O_CLOEXEC) < 0) return -1;
    fcntl(x.pipe[1], F_SETPIPE_SZ, CHUNK);
    int sz = fcntl(x.pipe[1], F_GETPIPE_SZ);
    x.cap = sz > 0 ? static_cast<size_t>(sz) : 65536;
  }
  bool failed = false;
  while (!failed && !(d[0].done && d[1].done)) {
    pollfd pf[4];
    int which[4];
    short kind[4];
    int n = 0;
    for (int i = 0; i < 2; i++) {
      if (!d[i].eof && d[i].queued < d[i].cap) pf[n] = {d[i].from, POLLIN, 0}, which[n] = i, kind[n++] = POLLIN;
      if (d[i].queued > 0) pf[n] = {d[i].to, POLLOUT, 0}, which[n] = i, kind[n++] = POLLOUT;
    }
    if (n == 0) break;
    if (poll(pf, n, -1) < 0) {
      if (errno == EINTR) continue;
      failed = true;
      break;
    }
    for (int k = 0; k < n && !failed; k++) {
      if (pf[k].revents == 0) continue;
      Dir &x = d[which[k]];
      if (kind[k] == POLLIN) {
        ssize_t r = splice(x.from, nullptr, x.pipe[1], nullptr, x.cap - x.queued, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (r == 0) x.eof = true;
        else if (r > 0) x.queued += r;
        else if (errno != EAGAIN && errno != EINTR) failed = true;
      } else {
        ssize_t w = splice(x.pipe[0], nullptr, x.to, nullptr, x.queued, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (w > 0) x.queued -= w, moved += w;
        else if (w < 0 && errno != EAGAIN && errno != EINTR) failed = true;
      }
    }
    for (auto &x : d) {
      if (x.eof && x.queued == 0 && !x.done) {
        shutdown(x.to, SHUT_WR);
        x.done = true;
      }
    }
  }
  for (auto &x : d) {
    close(x.pipe[0]);
    close(x.pipe[1]);
  }
  if (failed) {
    reset(a);
    reset(b);
    return -1;
  }
  return moved;
}

Napi::Value SpliceRelay(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int a = fcntl(info[0].As<Napi::Number>().Int32Value(), F_DUPFD_CLOEXEC, 0);
  int b = fcntl(info[1].As<Napi::Number>().Int32Value(), F_DUPFD_CLOEXEC, 0);
  double id = info[3].As<Napi::Number>().DoubleValue();
  std::string first;
  if (info[2].IsBuffer()) {
    auto buf = info[2].As<Napi::Buffer<char>>();
    first.assign(buf.Data(), buf.Length());
  }
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
  std::thread([a, b, id, first = std::move(first), deferred, done]() mutable {
    double moved = relay(a, b, first);
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
