// rtnetlink from the addon (netlink.cc): the per-sandbox link work of lib/network without
// spawning ip/tc. lib/native.ts types these; lib/network/netlink.ts wraps them.
#pragma once
#include <napi.h>

void InitNetlink(Napi::Env env, Napi::Object exports);
