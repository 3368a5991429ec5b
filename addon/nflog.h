// NFLOG reader (nflog.cc): packets the sandboxes' forward chains refused, for violations.
// lib/native.ts types these; lib/network/nflog.ts wraps them.
#pragma once
#include <napi.h>

void InitNflog(Napi::Env env, Napi::Object exports);
