// Warm starts' addon half: a blank child is cloned ahead of its sandbox (cloneBlank, on a libuv
// pool thread) and waits; startBlank sends it the encoded plan and its fds in the go message
// (one SEQPACKET message), received into a buffer reserved before clone. So a blank needs no
// memory shared with this process (CLONE_VM or not), and its plan is its own.
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "clone.h"
#include "steps.h"

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
    deferred_.Resolve(cloned_object(env, c_));
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::unique_ptr<plan> p_;
  clone_req req_;
  cloned c_;
};

// parent. cloneBlank({ uidMap, gidMap, cgroupFd, joinFiles }): a promise of a blank sandbox —
// cloned into its namespaces and cgroup with its id maps, waiting for its plan (startBlank)
// — or of a failure. Made ahead of a run so that its clone is off the run's path.
Napi::Value CloneBlank(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!check_init(env)) return env.Undefined();
  auto p = std::make_unique<plan>();
  p->blank = true;
  // Its plan arrives with go, into this: reserved now, before clone (no allocation after).
  p->buf.resize(HUTCH_PLAN_MAX);
  clone_req req;
  cloned c;
  if (!prepare_clone(env, info[0], "cloneBlank", *p, req, c)) return env.Undefined();
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

// parent. startBlank(pid, plan, fds): gives a blank child its encoded plan and the fds it
// names (one go message) and lets it go. true, or a failure (the blank is gone: the caller
// kills and reaps it); throws on a bad plan, before anything is sent.
Napi::Value StartBlank(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber()) {
    Napi::TypeError::New(env, "startBlank: pid must be a number").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::vector<uint8_t> bytes;
  std::vector<int> fds;
  if (!read_plan(env, info[1], info[2], "startBlank", bytes, fds)) return env.Undefined();
  int go = -1;
  if (!pending_blank((long)info[0].As<Napi::Number>().Int64Value(), &go)) {
    Napi::TypeError::New(env, "startBlank: no such blank child").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  ssize_t n = send_with_fds(go, bytes.data(), bytes.size(), fds.data(), fds.size());
  close(go);
  if (n != (ssize_t)bytes.size()) return sys_failure(env, "sync", n < 0 ? (int)-n : EIO, nullptr);
  return Napi::Boolean::New(env, true);
}
