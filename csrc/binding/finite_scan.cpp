// finite_scan.cpp - firstNonFinite(typedArray): the index of the first NaN/Inf of a Float32Array (or of a
// Uint16Array of binary16 bits), or -1. The facade's finiteness check runs here because a JS loop over a decode
// step's probabilities (qHeads x tokens floats: 2 MiB at 16k tokens) costs more than the value GEMV it guards;
// its loop compiles to a few vector integer ops per vector. The facade has already checked the type.
#include <cstdint>

#include "binding.h"

namespace innerq {
namespace binding {
namespace {

// Non-finite means an all-ones exponent: (x & ABS) >= EXP. Adding ONE (the lowest exponent bit) carries exactly those
// values into the sign bit: the largest finite magnitude EXP - 1 becomes TOP - 1, EXP becomes TOP, and the largest
// NaN ABS + ONE still fits (float: 0x7fffffff + 0x00800000 = 0x807fffff; binary16: 0x7fff + 0x0400 = 0x83ff). So a
// block is clean when the OR of (x & ABS) + ONE has no sign bit: and/add/or only, which every SIMD width vectorizes
// (the earlier bool-accumulating loop compiled to ~7 GB/s; this runs at cache/memory speed). The exact index is
// searched only in the block that has one.
template <class T, T kAbs, T kOne, T kTop>
int64_t firstWithFullExponent(const T* x, size_t n) {
  constexpr size_t kBlock = 1024;
  for (size_t b = 0; b < n; b += kBlock) {
    const size_t e = b + kBlock < n ? b + kBlock : n;
    T any = 0;
    for (size_t i = b; i < e; i++) any |= (T)((x[i] & kAbs) + kOne);
    if (any & kTop)
      for (size_t i = b; i < e; i++)
        if ((T)((x[i] & kAbs) + kOne) & kTop) return (int64_t)i;
  }
  return -1;
}

}  // namespace

Napi::Value FirstNonFinite(const Napi::CallbackInfo& info) {
  // the C call, not TypedArray::ArrayBuffer(): it also works for views of a SharedArrayBuffer, and gives the data
  // pointer with the view's offset applied (nullptr and length 0 for a detached buffer)
  napi_typedarray_type type;
  size_t n = 0;
  void* data = nullptr;
  if (napi_get_typedarray_info(info.Env(), info[0], &type, &n, &data, nullptr, nullptr) != napi_ok) {
    Napi::TypeError::New(info.Env(), "firstNonFinite: expected a typed array").ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  int64_t at = -1;
  if (n > 0 && type == napi_float32_array) {
    at = firstWithFullExponent<uint32_t, 0x7fffffffu, 0x00800000u, 0x80000000u>(static_cast<const uint32_t*>(data), n);  // V8 keeps it aligned
  } else if (n > 0 && type == napi_uint16_array) {
    at = firstWithFullExponent<uint16_t, 0x7fff, 0x0400, 0x8000>(static_cast<const uint16_t*>(data), n);
  } else if (n > 0) {
    Napi::TypeError::New(info.Env(), "firstNonFinite: expected a Float32Array or a Uint16Array").ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  return Napi::Number::New(info.Env(), (double)at);
}

}  // namespace binding
}  // namespace innerq
