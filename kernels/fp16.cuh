// fp16.cuh - IEEE binary16 conversions with explicit rounding direction, identical on host and device.
// The quantizer needs directed rounding (scale rounded up, zero rounded down) so that its error bound holds
// for the value actually stored; cuda_fp16.h offers that only on the device, so we compute it ourselves
// from doubles. These run once per group at quantization time, never in a GEMV inner loop.
#pragma once
#include <cmath>
#include <cstring>
#include "compat.cuh"

namespace innerq {

enum RoundDir : int { kRoundNearestEven = 0, kRoundUp = 1, kRoundDown = -1 };

// 2^n as a double for -1022 <= n <= 1023, built from its bits (ldexp is a slow library call on the host,
// and these conversions run for every element the cache quantizes).
IQ_HD double pow2(int n) {
  const uint64_t bits = (uint64_t)(n + 1023) << 52;
#if defined(__CUDA_ARCH__)
  return __longlong_as_double((long long)bits);
#else
  double d;
  memcpy(&d, &bits, sizeof d);
  return d;
#endif
}

// Binary exponent of a finite, normal, positive double (what frexp reports, minus one).
IQ_HD int exponentOf(double a) {
#if defined(__CUDA_ARCH__)
  const uint64_t bits = (uint64_t)__double_as_longlong(a);
#else
  uint64_t bits;
  memcpy(&bits, &a, sizeof bits);
#endif
  return (int)((bits >> 52) & 0x7ff) - 1023;
}

// Exact: every binary16 value is a double.
IQ_HD double halfToDouble(uint16_t h) {
  const int sign = h >> 15, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
  double magnitude;
  if (exponent == 0) magnitude = (double)mantissa * pow2(-24);              // subnormal: m * 2^-24
  else if (exponent == 31) magnitude = mantissa ? NAN : INFINITY;
  else magnitude = (double)(mantissa | 0x400) * pow2(exponent - 25);         // 1.m * 2^(e-15) = (1024+m) * 2^(e-25)
  return sign ? -magnitude : magnitude;
}

IQ_HD float halfToFloat(uint16_t h) { return (float)halfToDouble(h); }

// Round |x| to a binary16 with the given direction. Values past the largest finite half (65504) give
// +-Inf for nearest rounding and saturate for directed rounding toward zero.
IQ_HD uint16_t doubleToHalf(double x, int dir) {
  if (x != x) return 0x7e00;
  if (x - x != 0) return x > 0 ? 0x7c00 : 0xfc00;  // +-Inf (Inf - Inf is NaN)
  const uint16_t sign = copysign(1.0, x) < 0 ? 0x8000 : 0;  // keeps the sign of -0
  double a = fabs(x);
  if (a == 0) return sign;
  // Rounding "up" for a negative number moves its magnitude down, and vice versa.
  int magDir = dir;
  if (sign) magDir = -dir;
  // Far below half the smallest subnormal (2^-25): only the rounding direction matters. This also keeps
  // double subnormals (where exponentOf is meaningless) away from the code below.
  if (a < 0x1p-30) return (uint16_t)(sign | (magDir > 0 ? 1 : 0));
  if (a >= 65536.0) return (uint16_t)(sign | (magDir < 0 ? 0x7bff : 0x7c00));  // past the largest half
  int ulpExp = exponentOf(a) - 10;    // 10 fraction bits below the leading bit (weight 2^exponent)
  if (ulpExp < -24) ulpExp = -24;     // subnormal range: fixed ulp 2^-24
  double m = a * pow2(-ulpExp);       // exact (power-of-two scaling); m in [1024, 2048) for normals
  double r;
  if (magDir > 0) r = ceil(m);
  else if (magDir < 0) r = floor(m);
  else {
    r = floor(m);
    const double frac = m - r;
    if (frac > 0.5 || (frac == 0.5 && ((long long)r & 1))) r += 1.0;
  }
  long long mi = (long long)r;
  if (mi >= 2048) { mi >>= 1; ulpExp += 1; }  // carried into the next binade (r == 2048 exactly)
  if (mi < 1024) return (uint16_t)(sign | mi);          // subnormal (ulpExp == -24) or zero
  const int biasedExponent = ulpExp + 10 + 15;
  if (biasedExponent >= 31) return (uint16_t)(sign | (magDir < 0 ? 0x7bff : 0x7c00));
  return (uint16_t)(sign | (biasedExponent << 10) | (mi - 1024));
}

// Round to nearest, saturating at +-65504 instead of overflowing to Inf. Used for cache inputs, so that a
// finite input can never become Inf inside the cache.
IQ_HD uint16_t doubleToHalfSaturate(double x) {
  if (x != x) return 0x7e00;
  if (x > 65504.0) return 0x7bff;
  if (x < -65504.0) return 0xfbff;
  return doubleToHalf(x, kRoundNearestEven);
}

}  // namespace innerq
