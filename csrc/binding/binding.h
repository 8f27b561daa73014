// binding.h - the N-API surface used by lib/native.ts. Arguments arrive already validated by the
// TypeScript facade; this layer only converts types, keeps inputs alive during async work, and turns
// Status codes into JavaScript errors.
#pragma once
#include <napi.h>

#include <memory>
#include <mutex>

#include "../core/cache.h"

namespace innerq {
namespace binding {

Napi::Value NativeInfo(const Napi::CallbackInfo& info);
// The index of the first NaN/Inf of a Float32Array or of a Uint16Array of binary16 bits, or -1 (finite_scan.cpp).
Napi::Value FirstNonFinite(const Napi::CallbackInfo& info);

// Shared between the JS object and in-flight async work, so dispose() during an attendAsync is safe:
// the worker keeps the state alive and finds cache == nullptr if it runs after dispose.
struct CacheState {
  std::mutex mutex;
  std::unique_ptr<Cache> cache;
};

class NativeCache : public Napi::ObjectWrap<NativeCache> {
 public:
  static void Init(Napi::Env env, Napi::Object exports);
  explicit NativeCache(const Napi::CallbackInfo& info);

 private:
  Napi::Value Prefill(const Napi::CallbackInfo& info);
  Napi::Value Append(const Napi::CallbackInfo& info);
  Napi::Value Attend(const Napi::CallbackInfo& info);
  Napi::Value AttendAsync(const Napi::CallbackInfo& info);
  Napi::Value Length(const Napi::CallbackInfo& info);
  Napi::Value Stats(const Napi::CallbackInfo& info);
  Napi::Value KeyNormFactors(const Napi::CallbackInfo& info);
  Napi::Value Snapshot(const Napi::CallbackInfo& info);
  Napi::Value Restore(const Napi::CallbackInfo& info);
  Napi::Value KeyScores(const Napi::CallbackInfo& info);
  Napi::Value ValueSum(const Napi::CallbackInfo& info);
  Napi::Value Geometry(const Napi::CallbackInfo& info);
  Napi::Value DeviceAlloc(const Napi::CallbackInfo& info);
  Napi::Value DeviceFree(const Napi::CallbackInfo& info);
  Napi::Value DeviceWrite(const Napi::CallbackInfo& info);
  Napi::Value DeviceRead(const Napi::CallbackInfo& info);
  Napi::Value PrefillDevice(const Napi::CallbackInfo& info);
  Napi::Value AppendDevice(const Napi::CallbackInfo& info);
  Napi::Value AttendDevice(const Napi::CallbackInfo& info);
  Napi::Value Reset(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  Napi::Value BackendName(const Napi::CallbackInfo& info);

  std::shared_ptr<CacheState> state_;
};

}  // namespace binding
}  // namespace innerq
