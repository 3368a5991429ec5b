// spliceRelay (relay.cc): a connection `ask` allowed, moved in the kernel (splice), off the JS thread.
#pragma once
#include <napi.h>

void InitRelay(Napi::Env env, Napi::Object exports);
