// finite_scan.cpp - firstNonFinite(typedArray): the index of the first NaN/Inf of a Float32Array (or of a
// Uint16Array of binary16 bits), or -1. The facade's finiteness check runs here because a JS loop over a decode
// step's probabilities (qHeads x tokens floats: 2 MiB at 16k tokens) costs more than the value GEMV it guards;
// this loop compiles to a vector compare of the exponent bits. The facade has already checked the type.
#include <cstdint>

#include "binding.h"

namespace innerq {
namespace binding {
namespace {

// Blocks of 1024 elements: a branch-free OR over the block (vectorizes), then the exact index only in the block
// that has one.
template <class T, T kExpMask>
int64_t firstWithFullExponent(const T* x, size_t n) {
  constexpr size_t kBlock = 1024;
  for (size_t b = 0; b < n; b += kBlock) {
    const size_t e = b + kBlock < n ? b + kBlock : n;
    bool any = false;
    for (size_t i = b; i < e; i++) any |= (x[i] & kExpMask) == kExpMask;
    if (any)
      for (size_t i = b; i < e; i++)
        if ((x[i] & kExpMask) == kExpMask) return (int64_t)i;
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
    at = firstWithFullExponent<uint32_t, 0x7f800000u>(static_cast<const uint32_t*>(data), n);  // V8 keeps it aligned
  } else if (n > 0 && type == napi_uint16_array) {
    at = firstWithFullExponent<uint16_t, (uint16_t)0x7c00>(static_cast<const uint16_t*>(data), n);
  } else if (n > 0) {
    Napi::TypeError::New(info.Env(), "firstNonFinite: expected a Float32Array or a Uint16Array").ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  return Napi::Number::New(info.Env(), (double)at);
}

}  // namespace binding
}  // namespace innerq
