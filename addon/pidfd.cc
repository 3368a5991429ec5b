// Watching fds on Node's event loop: a sandbox's pidfd (exit), its setup error pipe and its
// control socket. One uv_poll per fd on the loop: no thread per sandbox, no threadpool slot
// (node-pty's exit thread and AsyncWorker both cost one), no SIGCHLD handler.
#include <stdio.h>
#include <signal.h>
#include <sys/wait.h>
#include <uv.h>

#include "addon.h"
#include "clone.h"
#include "steps.h"
#include "sys.h"

class Watch : public Napi::ObjectWrap<Watch> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Watch",
                       {InstanceMethod("close", &Watch::Close), InstanceMethod("ref", &Watch::Ref),
                        InstanceMethod("unref", &Watch::Unref)});
  }

  // new Watch(fd, callback): calls callback() each time fd is readable (or hung up).
  explicit Watch(const Napi::CallbackInfo &info) : Napi::ObjectWrap<Watch>(info) {
    Napi::Env env = info.Env();
    int fd = info[0].As<Napi::Number>().Int32Value();
    cb_ = Napi::Persistent(info[1].As<Napi::Function>());
    uv_loop_t *loop = nullptr;
    napi_get_uv_event_loop(env, &loop);
    poll_ = new uv_poll_t;
    int r0 = uv_poll_init(loop, poll_, fd);
    if (r0 != 0) {
      delete poll_;
      poll_ = nullptr;
      Napi::Error::New(env, std::string("uv_poll_init: ") + uv_strerror(r0)).ThrowAsJavaScriptException();
      return;
    }
    poll_->data = this;
    int r = uv_poll_start(poll_, UV_READABLE | UV_DISCONNECT, OnReady);
    if (r != 0) {
      uv_close(reinterpret_cast<uv_handle_t *>(poll_), [](uv_handle_t *h) { delete reinterpret_cast<uv_poll_t *>(h); });
      poll_ = nullptr;
      Napi::Error::New(env, std::string("uv_poll_start: ") + uv_strerror(r)).ThrowAsJavaScriptException();
      return;
    }
    self_ = Napi::Persistent(info.This().As<Napi::Object>());  // alive while polling
  }

 private:
  static void OnReady(uv_poll_t *h, int status, int events) {
    Watch *w = static_cast<Watch *>(h->data);
    if (!w || w->cb_.IsEmpty()) return;
    Napi::Env env = w->cb_.Env();
    Napi::HandleScope scope(env);
    napi_value recv = w->self_.Value();
    w->cb_.MakeCallback(recv, {Napi::Number::New(env, status)}, nullptr);
    // An exception thrown by the callback must reach 'uncaughtException', not vanish in libuv.
    if (env.IsExceptionPending()) {
      Napi::Error e = env.GetAndClearPendingException();
      napi_fatal_exception(env, e.Value());
    }
  }

  void Stop() {
    if (!poll_) return;
    uv_poll_stop(poll_);
    poll_->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t *>(poll_), [](uv_handle_t *h) { delete reinterpret_cast<uv_poll_t *>(h); });
    poll_ = nullptr;
    cb_.Reset();
    self_.Reset();
  }
  Napi::Value Close(const Napi::CallbackInfo &info) {
    Stop();
    return info.Env().Undefined();
  }
  Napi::Value Ref(const Napi::CallbackInfo &info) {
    if (poll_) uv_ref(reinterpret_cast<uv_handle_t *>(poll_));
    return info.Env().Undefined();
  }
  Napi::Value Unref(const Napi::CallbackInfo &info) {
    if (poll_) uv_unref(reinterpret_cast<uv_handle_t *>(poll_));
    return info.Env().Undefined();
  }

  uv_poll_t *poll_ = nullptr;
  Napi::FunctionReference cb_;
  Napi::ObjectReference self_;
};

void InitWatch(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = Watch::Define(env);
  exports.Set("Watch", ctor);
  // Keep the constructor alive for the life of the module.
  auto *ref = new Napi::FunctionReference(Napi::Persistent(ctor));
  env.SetInstanceData(ref);
}

// reap(pidfd): null while the process runs, else { code, signal } (waitid(P_PIDFD)).
// __WALL: our children have no exit signal, so they count as "clone" children.
Napi::Value Reap(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int pidfd = info[0].As<Napi::Number>().Int32Value();
  siginfo_t si;
  memset(&si, 0, sizeof si);
  if (waitid((idtype_t)P_PIDFD, pidfd, &si, WEXITED | WNOHANG | __WALL) < 0) return sys_failure(env, nullptr, errno, nullptr);
  if (si.si_pid == 0) return env.Null();
  release_child(si.si_pid);
  Napi::Object o = Napi::Object::New(env);
  if (si.si_code == CLD_EXITED) {
    o.Set("code", si.si_status);
    o.Set("signal", env.Null());
  } else {
    o.Set("code", env.Null());
    o.Set("signal", si.si_status);
  }
  return o;
}

// pidfdKill(pidfd, signal): true, or false when the process is already gone.
Napi::Value PidfdKill(const Napi::CallbackInfo &info) {
  int pidfd = info[0].As<Napi::Number>().Int32Value();
  int sig = info[1].As<Napi::Number>().Int32Value();
  return Napi::Boolean::New(info.Env(), sys_pidfd_send_signal(pidfd, sig) == 0);
}

// pidfdOpen(pid): a new pidfd (O_CLOEXEC by the kernel) of one of this process's own children,
// or { errno }. Race-free for a child not yet reaped: its pid, zombie or not, stays its own until
// this process waits for it (lib/runtime/control.ts parks an idle sandbox's pidfd this way).
Napi::Value PidfdOpen(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  long pid = (long)info[0].As<Napi::Number>().Int64Value();
  long fd = syscall(SYS_pidfd_open, pid, 0);
  if (fd < 0) return sys_failure(env, "pidfd", errno, nullptr);
  return Napi::Number::New(env, (double)move_high((int)fd));
}

// readSetupError(errFd, pid): undefined while nothing arrived, null once init said "ready"
// (the child's stack and plan are freed), or { step, errno, path }: the child's record, or
// step exec_init (ESRCH, with the wait status) on EOF without "ready".
Napi::Value ReadSetupError(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  struct setup_error rec;
  ssize_t n;
  do n = read(fd, &rec, sizeof rec); while (n < 0 && errno == EINTR);
  if (n < 0 && errno == EAGAIN) return env.Undefined();
  long pid = info.Length() > 1 && info[1].IsNumber() ? (long)info[1].As<Napi::Number>().Int64Value() : 0;
  if (n > 0 && (size_t)n == sizeof rec && rec.step == SETUP_READY) {
    if (pid > 0) release_child(pid);
    return env.Null();
  }
  if (n == 0) {
    // EOF without "ready": the child died after exec (init itself failed) or was killed.
    // Its wait status goes into the detail; WNOWAIT leaves reaping to the sandbox's watch.
    char detail[96] = "hutch-init ended before it was ready";
    if (pid > 0) {
      siginfo_t si{};
      int w;
      do w = waitid(P_PID, (id_t)pid, &si, WEXITED | WNOWAIT); while (w < 0 && errno == EINTR);
      if (w == 0 && si.si_pid == pid) {
        snprintf(detail, sizeof detail, "hutch-init ended before it was ready (%s %d)",
                 si.si_code == CLD_EXITED ? "exit status" : "signal", si.si_status);
      }
      release_child(pid);
    }
    return sys_failure(env, "exec_init", ESRCH, detail);
  }
  if (n < 0) return sys_failure(env, "sync", errno, nullptr);
  if ((size_t)n != sizeof rec || rec.step >= STEP_COUNT) return sys_failure(env, "sync", EPROTO, nullptr);
  static const char *const names[] = {
#define X(id, name) name,
      HUTCH_STEPS(X)
#undef X
  };
  rec.detail[sizeof rec.detail - 1] = 0;
  return sys_failure(env, names[rec.step], rec.err, rec.detail);
}
