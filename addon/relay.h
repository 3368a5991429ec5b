// spliceRelay (relay.cc): an allowed proxied connection moved in the kernel (splice), off the JS thread.
#pragma once
#include <napi.h>

void InitRelay(Napi::Env env, Napi::Object exports);
