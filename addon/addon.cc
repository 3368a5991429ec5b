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

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  Napi::Array steps = Napi::Array::New(env);
  uint32_t i = 0;
#define X(id, name) steps.Set(i++, name);
  HUTCH_STEPS(X)
#undef X
  exports.Set("steps", steps);
  InitUpperIo(env, exports);
  InitPlanLayout(env, exports);
  exports.Set("setInit", Napi::Function::New(env, SetInit));
  exports.Set("spawn", Napi::Function::New(env, Spawn));
  exports.Set("spawnBlank", Napi::Function::New(env, SpawnBlank));
  exports.Set("releaseBlank", Napi::Function::New(env, ReleaseBlank));
  exports.Set("openTree", Napi::Function::New(env, OpenTree));
  exports.Set("makeUserns", Napi::Function::New(env, MakeUserns));
  exports.Set("reap", Napi::Function::New(env, Reap));
  exports.Set("pidfdKill", Napi::Function::New(env, PidfdKill));
  exports.Set("readSetupError", Napi::Function::New(env, ReadSetupError));
  exports.Set("send", Napi::Function::New(env, Send));
  exports.Set("recv", Napi::Function::New(env, Recv));
  exports.Set("pipe", Napi::Function::New(env, Pipe));
  exports.Set("readSome", Napi::Function::New(env, ReadSome));
  exports.Set("readSmall", Napi::Function::New(env, ReadSmall));
  exports.Set("writeSmall", Napi::Function::New(env, WriteSmall));
  exports.Set("close", Napi::Function::New(env, CloseFd));
  exports.Set("ptyResize", Napi::Function::New(env, PtyResize));
  exports.Set("openInRoot", Napi::Function::New(env, OpenInRoot));
  exports.Set("extractRoot", Napi::Function::New(env, ExtractRoot));
  exports.Set("extractBatch", Napi::Function::New(env, ExtractBatch));
  exports.Set("extractOpen", Napi::Function::New(env, ExtractOpen));
  exports.Set("extractClose", Napi::Function::New(env, ExtractClose));
  exports.Set("setOwnerUserns", Napi::Function::New(env, SetOwnerUserns));
  exports.Set("extractFinish", Napi::Function::New(env, ExtractFinish));
  exports.Set("removeTree", Napi::Function::New(env, RemoveTree));
  InitWatch(env, exports);
  InitNetlink(env, exports);
  InitNflog(env, exports);
  InitRelay(env, exports);
  InitImageView(env, exports);
  return exports;
}

NODE_API_MODULE(hutch, Init)
