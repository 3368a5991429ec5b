// Module-level declarations shared by the JS-facing units of the addon.
#pragma once
#include <napi.h>

// A system failure returned to JS as data ({ step?, errno, path? }); lib/ builds the HutchError
// there, with the stack of the user's call. Programmer errors (wrong argument types) throw.
Napi::Object sys_failure(Napi::Env env, const char *step, int err, const char *path);

void release_child(long pid);  // clone.cc: frees the stack and plan of a CLONE_VM child that exec'd or died
ssize_t send_with_fds(int sock, const void *data, size_t len, const int *fds, size_t nfds);  // fdpass.cc

// The addon's JS functions: X(C++ function, name in JS), by the unit that defines them.
// Declared here; addon.cc exports each under its JS name.
#define HUTCH_JS_FUNCTIONS(X)                                                                     \
  /* clone.cc, blank.cc, initbin.cc, trees.cc, linkns.cc */                                       \
  X(SetInit, "setInit") X(CloneSandbox, "cloneSandbox") X(CloneBlank, "cloneBlank") X(StartBlank, "startBlank") \
  X(OpenTree, "openTree") X(MakeUserns, "makeUserns") X(MakeLinkNamespaces, "makeLinkNamespaces")       \
  /* pidfd.cc */                                                                                  \
  X(Reap, "reap") X(PidfdKill, "pidfdKill") X(PidfdOpen, "pidfdOpen")                           \
  X(ReadSetupError, "readSetupError")                                                             \
  /* fdpass.cc */                                                                                 \
  X(Send, "send") X(Recv, "recv") X(Pipe, "pipe") X(ReadSome, "readSome") X(ReadSmall, "readSmall") \
  X(WriteSmall, "writeSmall") X(CloseFd, "close") X(PtyResize, "ptyResize")                       \
  /* rootio.cc */                                                                                 \
  X(OpenInRoot, "openInRoot")                                                                     \
  /* extract.cc */                                                                                \
  X(ExtractRoot, "extractRoot") X(ExtractBatch, "extractBatch") X(ExtractOpen, "extractOpen")     \
  X(ExtractClose, "extractClose") X(ExtractFinish, "extractFinish")                               \
  /* extract.cc: the holder user namespace outside root mode (lib/host/ids.ts) */                  \
  X(SetOwnerUserns, "setOwnerUserns") X(RemoveTree, "removeTree") X(ChownPath, "chownPath")
#define X(fn, js) Napi::Value fn(const Napi::CallbackInfo &info);
HUTCH_JS_FUNCTIONS(X)
#undef X

// The units that export more than functions (classes, constants) do it themselves.
// pidfd.cc
void InitWatch(Napi::Env env, Napi::Object exports);
// upperio.cc
void InitUpperIo(Napi::Env env, Napi::Object exports);
// imageview.cc
void InitImageView(Napi::Env env, Napi::Object exports);
