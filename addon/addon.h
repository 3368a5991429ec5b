// Module-level declarations shared by the JS-facing units of the addon.
#pragma once
#include <napi.h>

// A system failure returned to JS as data ({ step?, errno, path? }); lib/ builds the HutchError
// there, with the stack of the user's call. Programmer errors (wrong argument types) throw.
Napi::Object sys_failure(Napi::Env env, const char *step, int err, const char *path);

// clone.cc (Spawn), blank.cc (SpawnBlank, ReleaseBlank), initbin.cc (SetInit), trees.cc (OpenTree, MakeUserns)
void release_child(long pid);  // frees the stack and plan of a CLONE_VM child that exec'd or died
Napi::Value Spawn(const Napi::CallbackInfo &info);
Napi::Value SpawnBlank(const Napi::CallbackInfo &info);
Napi::Value ReleaseBlank(const Napi::CallbackInfo &info);
Napi::Value SetInit(const Napi::CallbackInfo &info);
Napi::Value OpenTree(const Napi::CallbackInfo &info);
Napi::Value MakeUserns(const Napi::CallbackInfo &info);
// pidfd.cc
void InitWatch(Napi::Env env, Napi::Object exports);
Napi::Value Reap(const Napi::CallbackInfo &info);
Napi::Value PidfdKill(const Napi::CallbackInfo &info);
Napi::Value ReadSetupError(const Napi::CallbackInfo &info);
// fdpass.cc
Napi::Value Send(const Napi::CallbackInfo &info);
Napi::Value Recv(const Napi::CallbackInfo &info);
Napi::Value Pipe(const Napi::CallbackInfo &info);
Napi::Value ReadSome(const Napi::CallbackInfo &info);
ssize_t send_with_fds(int sock, const void *data, size_t len, const int *fds, size_t nfds);
Napi::Value ReadSmall(const Napi::CallbackInfo &info);
Napi::Value WriteSmall(const Napi::CallbackInfo &info);
Napi::Value CloseFd(const Napi::CallbackInfo &info);
Napi::Value PtyResize(const Napi::CallbackInfo &info);
// upperio.cc
void InitUpperIo(Napi::Env env, Napi::Object exports);
// rootio.cc
Napi::Value OpenInRoot(const Napi::CallbackInfo &info);
// extract.cc
Napi::Value ExtractRoot(const Napi::CallbackInfo &info);
Napi::Value ExtractBatch(const Napi::CallbackInfo &info);
Napi::Value ExtractOpen(const Napi::CallbackInfo &info);
Napi::Value ExtractClose(const Napi::CallbackInfo &info);
Napi::Value SetOwnerUserns(const Napi::CallbackInfo &info);
Napi::Value ExtractFinish(const Napi::CallbackInfo &info);
Napi::Value RemoveTree(const Napi::CallbackInfo &info);
// imageview.cc
void InitImageView(Napi::Env env, Napi::Object exports);
