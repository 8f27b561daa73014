// cache_wrap.cpp - the NativeCache class: converts JS values to engine calls and Status codes to errors.
#include <cstring>
#include <string>
#include <vector>

#include "backends.h"
#include "binding.h"
#include "../cpu/cpu_backend.h"

namespace innerq {
namespace binding {

namespace {

int intField(const Napi::Object& o, const char* name) { return o.Get(name).As<Napi::Number>().Int32Value(); }

MatrixFormat formatField(const Napi::Object& o) {
  MatrixFormat f;
  f.orientation = intField(o, "orientation");
  f.bits = intField(o, "bits");
  f.groupSize = intField(o, "groupSize");
  f.mode = intField(o, "mode");
  return f;
}

const char* statusCode(Status s) {
  switch (s) {
    case Status::OutOfMemory: return "ERR_INNERQ_OUT_OF_MEMORY";
    case Status::DeviceError: return "ERR_INNERQ_DEVICE";
    case Status::Unsupported: return "ERR_INNERQ_UNSUPPORTED";
    default: return "ERR_INNERQ_INTERNAL";
  }
}

Napi::Error statusError(Napi::Env env, Status s, const std::string& message) {
  Napi::Error e = Napi::Error::New(env, "innerq: " + message);
  e.Set("code", Napi::String::New(env, statusCode(s)));
  return e;
}

Cache& requireCache(Napi::Env env, const std::shared_ptr<CacheState>& st) {
  if (!st->cache) throw Napi::Error::New(env, "innerq: the cache has been disposed");
  return *st->cache;
}

// Token rows arrive as Float32Array (rounded to binary16 here) or Uint16Array (binary16 bits).
const uint16_t* halfRows(const Napi::Value& v, size_t elems, std::vector<uint16_t>* scratch) {
  if (v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_float32_array) {
    Napi::Float32Array a = v.As<Napi::Float32Array>();
    scratch->resize(elems);
    floatToHalfSaturate(a.Data(), scratch->data(), elems);
    return scratch->data();
  }
  return v.As<Napi::Uint16Array>().Data();
}

class AttendWorker : public Napi::AsyncWorker {
 public:
  AttendWorker(Napi::Function cb, std::shared_ptr<CacheState> st, int layer, Napi::Float32Array q, Napi::Float32Array out)
      : Napi::AsyncWorker(cb, "innerq.attendAsync"), state_(std::move(st)), layer_(layer),
        query_(q.Data()), out_(out.Data()) {
    // Keep the caller's arrays alive (and their memory in place) until the work completes.
    queryRef_ = Napi::Persistent(q);
    outRef_ = Napi::Persistent(out);
  }
  void Execute() override {
    std::lock_guard<std::mutex> lock(state_->mutex);
    if (!state_->cache) { SetError("innerq: the cache was disposed before attendAsync ran"); return; }
    status_ = state_->cache->attend(layer_, query_, out_);
    if (status_ != Status::Ok) SetError("innerq: " + state_->cache->lastError());
  }
  void OnError(const Napi::Error& e) override {
    Napi::Error err = Napi::Error::New(Env(), e.Message());
    // status_ stays Ok only when Execute found the cache disposed: the same code as every call after dispose().
    err.Set("code", Napi::String::New(Env(), status_ != Status::Ok ? statusCode(status_) : "ERR_INNERQ_DISPOSED"));
    Callback().Call({err.Value()});
  }

 private:
  std::shared_ptr<CacheState> state_;
  int layer_;
  const float* query_;
  float* out_;
  Status status_ = Status::Ok;
  Napi::Reference<Napi::Float32Array> queryRef_, outRef_;
};

}  // namespace

void NativeCache::Init(Napi::Env env, Napi::Object exports) {
  Napi::Function cls = DefineClass(env, "NativeCache", {
    InstanceMethod("prefill", &NativeCache::Prefill),
    InstanceMethod("append", &NativeCache::Append),
    InstanceMethod("attend", &NativeCache::Attend),
    InstanceMethod("attendAsync", &NativeCache::AttendAsync),
    InstanceMethod("length", &NativeCache::Length),
    InstanceMethod("stats", &NativeCache::Stats),
    InstanceMethod("keyNormFactors", &NativeCache::KeyNormFactors),
    InstanceMethod("snapshot", &NativeCache::Snapshot),
    InstanceMethod("restore", &NativeCache::Restore),
    InstanceMethod("keyScores", &NativeCache::KeyScores),
    InstanceMethod("valueSum", &NativeCache::ValueSum),
    InstanceMethod("geometry", &NativeCache::Geometry),
    InstanceMethod("deviceAlloc", &NativeCache::DeviceAlloc),
    InstanceMethod("deviceFree", &NativeCache::DeviceFree),
    InstanceMethod("deviceWrite", &NativeCache::DeviceWrite),
    InstanceMethod("deviceRead", &NativeCache::DeviceRead),
    InstanceMethod("prefillDevice", &NativeCache::PrefillDevice),
    InstanceMethod("appendDevice", &NativeCache::AppendDevice),
    InstanceMethod("attendDevice", &NativeCache::AttendDevice),
    InstanceMethod("reset", &NativeCache::Reset),
    InstanceMethod("dispose", &NativeCache::Dispose),
    InstanceMethod("backendName", &NativeCache::BackendName),
  });
  exports.Set("NativeCache", cls);
}

// new NativeCache(config, backendName, backendOptions)
NativeCache::NativeCache(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeCache>(info) {
  Napi::Env env = info.Env();
  const Napi::Object c = info[0].As<Napi::Object>();
  CacheConfig cfg;
  cfg.layers = intField(c, "layers");
  cfg.qHeads = intField(c, "qHeads");
  cfg.kvHeads = intField(c, "kvHeads");
  cfg.headDim = intField(c, "headDim");
  cfg.maxTokens = intField(c, "maxTokens");
  cfg.keyFormat = formatField(c.Get("keyFormat").As<Napi::Object>());
  cfg.valueFormat = formatField(c.Get("valueFormat").As<Napi::Object>());
  cfg.sinkTokens = intField(c, "sinkTokens");
  cfg.recentTokens = intField(c, "recentTokens");
  cfg.pageTokens = intField(c, "pageTokens");
  cfg.keyNorm = c.Get("keyNorm").As<Napi::Boolean>().Value();
  const std::string backendName = info[1].As<Napi::String>().Utf8Value();
  const Napi::Object o = info[2].As<Napi::Object>();
  BackendOptions bo;
  bo.threads = intField(o, "threads");
  bo.simd = intField(o, "simd");
  bo.simThreadOrder = intField(o, "simThreadOrder");
  bo.simSeed = (unsigned)intField(o, "simSeed");
  bo.deviceId = intField(o, "deviceId");
  std::string error;
  std::unique_ptr<Backend> backend = createBackend(backendName, bo, &error);
  if (!backend) {
    Napi::Error e = Napi::Error::New(env, "innerq: cannot start the " + backendName + " backend: " + error);
    e.Set("code", Napi::String::New(env, "ERR_INNERQ_BACKEND_UNAVAILABLE"));
    throw e;
  }
  state_ = std::make_shared<CacheState>();
  try {
    state_->cache = std::make_unique<Cache>(cfg, std::move(backend));
  } catch (const std::bad_alloc&) {
    throw statusError(env, Status::OutOfMemory, "out of memory creating the cache");
  }
}

// prefill(layer, keys, values, tokens)
Napi::Value NativeCache::Prefill(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::lock_guard<std::mutex> lock(state_->mutex);
  Cache& c = requireCache(env, state_);
  const int layer = info[0].As<Napi::Number>().Int32Value(), tokens = info[3].As<Napi::Number>().Int32Value();
  const size_t elems = (size_t)tokens * c.config().kvHeads * c.config().headDim;
  std::vector<uint16_t> ks, vs;
  const Status s = c.prefill(layer, halfRows(info[1], elems, &ks), halfRows(info[2], elems, &vs), tokens);
  if (s != Status::Ok) throw statusError(env, s, c.lastError());
  return env.Undefined();
}

// append(layer, key, value)
Napi::Value NativeCache::Append(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::lock_guard<std::mutex> lock(state_->mutex);
  Cache& c = requireCache(env, state_);
  const int layer = info[0].As<Napi::Number>().Int32Value();
  const size_t elems = (size_t)c.config().kvHeads * c.config().headDim;
  std::vector<uint16_t> ks, vs;
  const Status s = c.append(layer, halfRows(info[1], elems, &ks), halfRows(info[2], elems, &vs));
  if (s != Status::Ok) throw statusError(env, s, c.lastError());
  return env.Undefined();
}

// attend(layer, query Float32Array, out Float32Array)
Napi::Value NativeCache::Attend(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::lock_guard<std::mutex> lock(state_->mutex);
  Cache& c = requireCache(env, state_);
  const int layer = info[0].As<Napi::Number>().Int32Value();
  const Status s = c.attend(layer, info[1].As<Napi::Float32Array>().Data(), info[2].As<Napi::Float32Array>().Data());
  if (s != Status::Ok) throw statusError(env, s, c.lastError());
  return env.Undefined();
}

// attendAsync(layer, query, out, callback(err))
Napi::Value NativeCache::AttendAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    requireCache(env, state_);
  }
  auto* w = new AttendWorker(info[3].As<Napi::Function>(), state_, info[0].As<Napi::Number>().Int32Value(),
                             info[1].As<Napi::Float32Array>(), info[2].As<Napi::Float32Array>());
  w->Queue();
  return env.Undefined();
}

Napi::Value NativeCache::Length(const Napi::CallbackInfo& info) {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return Napi::Number::New(info.Env(), requireCache(info.Env(), state_).length(info[0].As<Napi::Number>().Int32Value()));
}

Napi::Value NativeCache::Stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::lock_guard<std::mutex> lock(state_->mutex);
  const CacheStats s = requireCache(env, state_).stats();
  Napi::Object o = Napi::Object::New(env);
  o.Set("tokens", s.tokens);
  o.Set("codeBytes", s.codeBytes);
  o.Set("scaleBytes", s.scaleBytes);
  o.Set("windowBytes", s.windowBytes);
  o.Set("heldBytes", s.heldBytes);
  o.Set("fp16Bytes", s.fp16Bytes);
  o.Set("allocatedBytes", s.allocatedBytes);
  o.Set("pagesInUse", s.pagesInUse);
  o.Set("pagesAllocated", s.pagesAllocated);
  return o;
}

Napi::Value NativeCache::KeyNormFactors(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::lock_guard<std::mutex> lock(state_->mutex);
  const std::vector<float> f = requireCache(env, state_).keyNormFactors(info[0].As<Napi::Number>().Int32Value());
  if (f.empty()) return env.Null();
  Napi::Float32Array a = Napi::Float32Array::New(env, f.size());
  std::memcpy(a.Data(), f.data(), f.size() * sizeof(float));
  return a;
}

Napi::Value NativeCache::Snapshot(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::lock_guard<std::mutex> lock(state_->mutex);
  Cache& c = requireCache(env, state_);
  LayerSnapshot s;
  const Status st = c.snapshot(info[0].As<Napi::Number>().Int32Value(), &s);
  if (st != Status::Ok) throw statusError(env, st, c.lastError());
  auto u16 = [&](const std::vector<uint16_t>& v) {
    Napi::Uint16Array a = Napi::Uint16Array::New(env, v.size());
    if (!v.empty()) std::memcpy(a.Data(), v.data(), v.size() * 2);
    return a;
  };
  Napi::Object o = Napi::Object::New(env);
  o.Set("tokens", s.tokens);
  o.Set("sinkCapacity", s.sinkCapacity);
  o.Set("quantizedKeys", s.quantizedKeys);
  o.Set("quantizedValues", s.quantizedValues);
  o.Set("ringCapacity", s.ringCapacity);
  o.Set("pageTokens", s.pageTokens);
  o.Set("pageBytes", (double)s.pageBytes);
  o.Set("sinkKeys", u16(s.sinkKeys));
  o.Set("sinkValues", u16(s.sinkValues));
  o.Set("ringKeys", u16(s.ringKeys));
  o.Set("ringValues", u16(s.ringValues));
  Napi::Array pages = Napi::Array::New(env, s.pages.size());
  for (size_t i = 0; i < s.pages.size(); i++) {
    Napi::Uint8Array p = Napi::Uint8Array::New(env, s.pages[i].size());
    std::memcpy(p.Data(), s.pages[i].data(), s.pages[i].size());
    pages.Set((uint32_t)i, p);
  }
  o.Set("pages", pages);
  if (s.keyNorm.empty()) o.Set("keyNorm", env.Null());
  else {
    Napi::Float32Array f = Napi::Float32Array::New(env, s.keyNorm.size());
    std::memcpy(f.Data(), s.keyNorm.data(), s.keyNorm.size() * 4);
    o.Set("keyNorm", f);
  }
  return o;
}

// restore(layer, snapshotObject): the facade checked every size against this cache's geometry().
Napi::Value NativeCache::Restore(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::lock_guard<std::mutex> lock(state_->mutex);
  Cache& c = requireCache(env, state_);
  const Napi::Object o = info[1].As<Napi::Object>();
  LayerSnapshot s;
  s.tokens = intField(o, "tokens");
  s.quantizedKeys = intField(o, "quantizedKeys");
  s.quantizedValues = intField(o, "quantizedValues");
  auto u16 = [&](const char* name, std::vector<uint16_t>* v) {
    Napi::Uint16Array a = o.Get(name).As<Napi::Uint16Array>();
    v->assign(a.Data(), a.Data() + a.ElementLength());
  };
  u16("sinkKeys", &s.sinkKeys);
  u16("sinkValues", &s.sinkValues);
  u16("ringKeys", &s.ringKeys);
  u16("ringValues", &s.ringValues);
  Napi::Array pages = o.Get("pages").As<Napi::Array>();
  for (uint32_t i = 0; i < pages.Length(); i++) {
    Napi::Uint8Array p = pages.Get(i).As<Napi::Uint8Array>();
    s.pages.emplace_back(p.Data(), p.Data() + p.ElementLength());
  }
  if (o.Get("keyNorm").IsTypedArray()) {
    Napi::Float32Array f = o.Get("keyNorm").As<Napi::Float32Array>();
    s.keyNorm.assign(f.Data(), f.Data() + f.ElementLength());
  }
  const Status st = c.restore(info[0].As<Napi::Number>().Int32Value(), s);
  if (st != Status::Ok) throw statusError(env, st, c.lastError());
  return env.Undefined();
}

// keyScores(layer, query, scores[qHeads][tokens]) / valueSum(layer, probs[qHeads][tokens], out): the two GEMVs
// of a decode step on their own (cpu backend only), for the benchmark's per-kernel rows.
Napi::Value NativeCache::KeyScores(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::lock_guard<std::mutex> lock(state_->mutex);
  Cache& c = requireCache(env, state_);
  const Status s = cpuKeyScores(c.backend(), c.layerView(info[0].As<Napi::Number>().Int32Value()),
                                info[1].As<Napi::Float32Array>().Data(), info[2].As<Napi::Float32Array>().Data());
  if (s != Status::Ok) throw statusError(env, s, "keyScores is available on the cpu backend only");
  return env.Undefined();
}
Napi::Value NativeCache::ValueSum(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::lock_guard<std::mutex> lock(state_->mutex);
  Cache& c = requireCache(env, state_);
  const Status s = cpuValueSum(c.backend(), c.layerView(info[0].As<Napi::Number>().Int32Value()),
                               info[1].As<Napi::Float32Array>().Data(), info[2].As<Napi::Float32Array>().Data());
  if (s != Status::Ok) throw statusError(env, s, "valueSum is available on the cpu backend only");
  return env.Undefined();
}

// geometry(): sizes a snapshot of this cache must have (page bytes, ring capacity) and the kernels in use.
Napi::Value NativeCache::Geometry(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::lock_guard<std::mutex> lock(state_->mutex);
  Cache& c = requireCache(env, state_);
  const LayerView v = c.layerView(0);
  Napi::Object o = Napi::Object::New(env);
  o.Set("pageBytes", (double)v.layout.pageBytes);
  o.Set("ringCapacity", c.ringCapacity());
  o.Set("kernels", std::string(c.backend().name()) == "cpu" ? cpuBackendKernels(c.backend()) : c.backend().name());
  o.Set("threads", std::string(c.backend().name()) == "cpu" ? cpuBackendThreads(c.backend()) : 1);
  const double deviceMs = c.backend().deviceAttendMs();
  o.Set("deviceAttendMs", deviceMs < 0 ? env.Null() : Napi::Number::New(env, deviceMs));
  return o;
}

// ---- device memory (DeviceBuffer). Addresses are BigInts; the facade checked sizes, alignment and dtypes.
namespace {
void* address(const Napi::Value& v) {
  bool lossless = true;
  return reinterpret_cast<void*>((uintptr_t)v.As<Napi::BigInt>().Uint64Value(&lossless));
}
uint64_t streamArg(const Napi::Value& v) {
  if (!v.IsBigInt()) return 0;
  bool lossless = true;
  return v.As<Napi::BigInt>().Uint64Value(&lossless);
}
}  // namespace

Napi::Value NativeCache::DeviceAlloc(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::lock_guard<std::mutex> lock(state_->mutex);
  Cache& c = requireCache(env, state_);
  const size_t bytes = (size_t)info[0].As<Napi::Number>().Int64Value();
  void* p = c.allocateDevice(bytes);
  if (!p) throw statusError(env, Status::OutOfMemory, "out of memory allocating a device buffer of " + std::to_string(bytes) + " bytes");
  return Napi::BigInt::New(env, (uint64_t)(uintptr_t)p);
}

Napi::Value NativeCache::DeviceFree(const Napi::CallbackInfo& info) {
  std::lock_guard<std::mutex> lock(state_->mutex);
  if (!state_->cache) return Napi::Boolean::New(info.Env(), false);  // freed with the cache
  return Napi::Boolean::New(info.Env(), state_->cache->freeDevice(address(info[0])));
}

// deviceWrite(address, typedArray) / deviceRead(address, typedArray): copy the array's bytes in / out.
Napi::Value NativeCache::DeviceWrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::lock_guard<std::mutex> lock(state_->mutex);
  Cache& c = requireCache(env, state_);
  Napi::TypedArray a = info[1].As<Napi::TypedArray>();
  const uint8_t* src = (const uint8_t*)a.ArrayBuffer().Data() + a.ByteOffset();
  const Status s = c.backend().upload(address(info[0]), src, a.ByteLength());
  if (s != Status::Ok) throw statusError(env, s, "writing a device buffer: " + c.backend().lastError());
  return env.Undefined();
}
Napi::Value NativeCache::DeviceRead(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::lock_guard<std::mutex> lock(state_->mutex);
  Cache& c = requireCache(env, state_);
  Napi::TypedArray a = info[1].As<Napi::TypedArray>();
  uint8_t* dst = (uint8_t*)a.ArrayBuffer().Data() + a.ByteOffset();
  const Status s = c.backend().download(dst, address(info[0]), a.ByteLength());
  if (s != Status::Ok) throw statusError(env, s, "reading a device buffer: " + c.backend().lastError());
  return env.Undefined();
}

// prefillDevice(layer, keysAddress, valuesAddress, tokens, stream?)
Napi::Value NativeCache::PrefillDevice(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::lock_guard<std::mutex> lock(state_->mutex);
  Cache& c = requireCache(env, state_);
  Status s = c.backend().waitStream(streamArg(info[4]));
  if (s == Status::Ok)
    s = c.prefill(info[0].As<Napi::Number>().Int32Value(), (const uint16_t*)address(info[1]), (const uint16_t*)address(info[2]),
                  info[3].As<Napi::Number>().Int32Value(), true);
  if (s != Status::Ok) throw statusError(env, s, c.lastError());
  return env.Undefined();
}

// appendDevice(layer, keyAddress, valueAddress, stream?)
Napi::Value NativeCache::AppendDevice(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::lock_guard<std::mutex> lock(state_->mutex);
  Cache& c = requireCache(env, state_);
  Status s = c.backend().waitStream(streamArg(info[3]));
  if (s == Status::Ok)
    s = c.append(info[0].As<Napi::Number>().Int32Value(), (const uint16_t*)address(info[1]), (const uint16_t*)address(info[2]), true);
  if (s != Status::Ok) throw statusError(env, s, c.lastError());
  return env.Undefined();
}

// attendDevice(layer, queryAddress, outAddress, stream?)
Napi::Value NativeCache::AttendDevice(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::lock_guard<std::mutex> lock(state_->mutex);
  Cache& c = requireCache(env, state_);
  Status s = c.backend().waitStream(streamArg(info[3]));
  if (s == Status::Ok)
    s = c.attendDevice(info[0].As<Napi::Number>().Int32Value(), (const float*)address(info[1]), (float*)address(info[2]));
  if (s != Status::Ok) throw statusError(env, s, c.lastError());
  return env.Undefined();
}

Napi::Value NativeCache::Reset(const Napi::CallbackInfo& info) {
  std::lock_guard<std::mutex> lock(state_->mutex);
  requireCache(info.Env(), state_).reset(info[0].As<Napi::Number>().Int32Value());
  return info.Env().Undefined();
}

Napi::Value NativeCache::Dispose(const Napi::CallbackInfo& info) {
  std::lock_guard<std::mutex> lock(state_->mutex);  // waits for an attend in flight on a worker thread
  state_->cache.reset();
  return info.Env().Undefined();
}

Napi::Value NativeCache::BackendName(const Napi::CallbackInfo& info) {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return Napi::String::New(info.Env(), requireCache(info.Env(), state_).backend().name());
}

}  // namespace binding
}  // namespace innerq
