// module.cpp - module init: registers functions and classes, nothing else.
#include <napi.h>

#include "binding.h"

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("nativeInfo", Napi::Function::New(env, innerq::binding::NativeInfo));
  exports.Set("firstNonFinite", Napi::Function::New(env, innerq::binding::FirstNonFinite));
  innerq::binding::NativeCache::Init(env, exports);
  return exports;
}

NODE_API_MODULE(innerq, Init)
