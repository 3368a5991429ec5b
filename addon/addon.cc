// Module init: the JS-facing functions only. lib/native.ts types them.
#include <napi.h>

#include "addon.h"
#include "netlink.h"
#include "nflog.h"
#include "relay.h"
#include "steps.h"

Napi::Object sys_failure(Napi::Env env, const char *step, int err, const char *path) {
  Napi::Object o = Napi::Object::New(env);
  if (step) o.Set("step", step);
  o.Set("errno", err < 0 ? -err : err);
  if (path) o.Set("path", path);
  return o;
}

void InitPlanLayout(Napi::Env env, Napi::Object exports);  // clone.cc: addon/plan.h's numbers
void InitNsJoin(Napi::Env env, Napi::Object exports);     // nsjoin.cc: the userspace network backend's namespace work
void InitNfqueue(Napi::Env env, Napi::Object exports);    // nfqueue.cc: the name check's netfilter queue

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  Napi::Array steps = Napi::Array::New(env);
  uint32_t i = 0;
#define X(id, name) steps.Set(i++, name);
  HUTCH_STEPS(X)
#undef X
  exports.Set("steps", steps);
  InitUpperIo(env, exports);
  InitPlanLayout(env, exports);
#define X(fn, js) exports.Set(js, Napi::Function::New(env, fn));
  HUTCH_JS_FUNCTIONS(X)
#undef X
  InitWatch(env, exports);
  InitNetlink(env, exports);
  InitNflog(env, exports);
  InitRelay(env, exports);
  InitNfqueue(env, exports);
  InitImageView(env, exports);
  InitNsJoin(env, exports);
  return exports;
}

NODE_API_MODULE(hutch, Init)
