// quantizer.cuh - THE group quantizer. Every backend (cpu, sim, cuda kernels) calls this one definition, and
// lib/reference/quantizer.ts mirrors it line for line, so codes agree bit for bit everywhere.
//
// Input: G binary16 values (the cache stores fp16-precision data; callers round inputs to fp16 first).
// All arithmetic is in double. Every quantity involved is a multiple of 2^-24 below 2^18 in magnitude, so
// differences, products with codes (< 2^8) and the L1 sums over <= 128 elements are exact in double (order
// free); the divisions x/s and the +0.5 before floor are correctly rounded IEEE operations. Either way the
// result is identical in C++, CUDA and JavaScript.
#pragma once
#include <cmath>
#include "compat.cuh"
#include "fp16.cuh"
#include "format.cuh"

namespace innerq {

struct QuantizedGroup {
  uint16_t scale;  // binary16 bits; sign bit = asymmetric (see format.cuh)
  uint16_t zero;   // binary16 bits; 0 for symmetric groups
};

// Round-half-up on an exactly computed double, then clamp.
IQ_HD int roundClamp(double v, int lo, int hi) {
  double r = floor(v + 0.5);
  if (r < lo) r = lo;
  if (r > hi) r = hi;
  return (int)r;
}

// Minimum and maximum with JavaScript's Math.min / Math.max semantics for non-NaN doubles: -0 is below +0 whatever
// the order. fmin / fmax leave the sign of an equal pair of zeros unspecified (glibc's minsd returns the later
// operand), and the sign of `lo` becomes the sign of an asymmetric group's stored zero point, so a group holding +0
// and -0 at its minimum stored 0x0000 on the cpu against the reference's 0x8000. Plain comparisons, so the host
// compilers inline them (fmin / fmax were library calls at the x86-64 baseline).
IQ_HD bool signBitOf(double a) {
#if defined(__CUDA_ARCH__)
  return __double_as_longlong(a) < 0;
#else
  int64_t bits;
  memcpy(&bits, &a, sizeof bits);
  return bits < 0;
#endif
}
IQ_HD double minOrdered(double a, double b) { return a < b || (a == b && signBitOf(a)) ? a : b; }
IQ_HD double maxOrdered(double a, double b) { return a > b || (a == b && !signBitOf(a)) ? a : b; }

// The quantizer is built from per-group parameter functions and per-element code functions, so that a
// host loop (quantizeGroup below) and a warp-cooperative GPU kernel (reductions by shuffle) compose the same
// arithmetic. Reductions involved are max/min (order-free) and exact double sums (order-free).

// Symmetric: s = max|x| / (2^(b-1)-1), rounded UP to binary16 so that every |x| <= s * qmax and the error of
// every element is at most s/2. A group whose nonzero elements all share one magnitude m uses s = m instead
// (codes -1, 0, +1), so constant groups are exact. An all-zero group gets s = 0 and codes = offset (x^ = 0).
// maxAbs: max |x| over the group; constantMagnitude: every nonzero |x| equals maxAbs.
IQ_HD uint16_t symmetricScale(double maxAbs, bool constantMagnitude, int bits) {
  if (!(maxAbs > 0)) return 0;
  return constantMagnitude ? doubleToHalf(maxAbs, kRoundNearestEven) : doubleToHalf(maxAbs / symMaxLevel(bits), kRoundUp);
}
// Stored (offset) code of x under symmetric scale s (a double holding the binary16 scale).
IQ_HD int symmetricCode(double x, double s, int bits) {
  const int qmax = symMaxLevel(bits);
  return (s > 0 ? roundClamp(x / s, -qmax, qmax) : 0) + symOffset(bits);
}
IQ_HD double symmetricValue(int u, double s, int bits) { return s * (u - symOffset(bits)); }

// Asymmetric: z = min rounded DOWN to binary16, s = (max - z) / (2^b - 1) rounded UP, codes in [0, 2^b-1].
// Every element lies in [z, z + s(2^b-1)], so its error is at most s/2. A constant group gets s = 0, x^ = z = x.
IQ_HD uint16_t asymmetricZero(double lo) { return doubleToHalf(lo, kRoundDown); }
IQ_HD uint16_t asymmetricScale(double hi, double z, int bits) {
  return hi > z ? doubleToHalf((hi - z) / asymMaxCode(bits), kRoundUp) : (uint16_t)0;
}
IQ_HD int asymmetricCode(double x, double s, double z, int bits) {
  return s > 0 ? roundClamp((x - z) / s, 0, asymMaxCode(bits)) : 0;
}
IQ_HD double asymmetricValue(int u, double s, double z) { return s * u + z; }

// Both candidate parameter sets of a group, from its statistics (max |x|, whether every nonzero |x| equals it,
// min, max). The host loop below, the warp-cooperative GPU kernel and the cpu's vector quantizer all call this.
struct GroupCandidates {
  uint16_t symScale, asymZero, asymScale;  // binary16 bits
  double ss, za, sa;                        // the same values as doubles
};
IQ_HD GroupCandidates groupCandidates(double maxAbs, bool constantMagnitude, double lo, double hi, int bits) {
  GroupCandidates c;
  c.symScale = symmetricScale(maxAbs, constantMagnitude, bits);
  c.asymZero = asymmetricZero(lo);
  c.ss = halfToDouble(c.symScale);
  c.za = halfToDouble(c.asymZero);
  c.asymScale = asymmetricScale(hi, c.za, bits);
  c.sa = halfToDouble(c.asymScale);
  return c;
}

// Quantize one group of n (= G) fp16 values read with a stride (in elements). Writes n unpacked codes.
// Hybrid keeps the asymmetric result only when its L1 error is strictly smaller (ties go to symmetric).
IQ_HD QuantizedGroup quantizeGroup(const uint16_t* src, ptrdiff_t stride, int n, int bits, int mode, uint8_t* u) {
  // Host loop (the GPU composes the same primitives across a warp). Each element is converted once, and the
  // hybrid pass keeps both candidate code sets instead of recomputing the winner.
  double x[128];
  double maxAbs = 0, lo = 0, hi = 0;
  for (int i = 0; i < n; i++) {
    x[i] = halfToDouble(src[i * stride]);
    maxAbs = maxOrdered(maxAbs, fabs(x[i]));
    lo = i ? minOrdered(lo, x[i]) : x[i];
    hi = i ? maxOrdered(hi, x[i]) : x[i];
  }
  bool constantMagnitude = true;
  for (int i = 0; i < n; i++)
    if (x[i] != 0 && fabs(x[i]) != maxAbs) constantMagnitude = false;
  QuantizedGroup q;
  q.zero = 0;
  const GroupCandidates c = groupCandidates(maxAbs, constantMagnitude, lo, hi, bits);
  const uint16_t symScale = c.symScale, asymZero = c.asymZero, asymScale = c.asymScale;
  const double ss = c.ss, za = c.za, sa = c.sa;
  if (mode == kSym) {
    for (int i = 0; i < n; i++) u[i] = (uint8_t)symmetricCode(x[i], ss, bits);
    q.scale = symScale;
    return q;
  }
  if (mode == kAsym) {
    for (int i = 0; i < n; i++) u[i] = (uint8_t)asymmetricCode(x[i], sa, za, bits);
    q.scale = (uint16_t)(asymScale | 0x8000);
    q.zero = asymZero;
    return q;
  }
  uint8_t ua[128];
  double l1s = 0, l1a = 0;  // exact sums (see the header comment), so the choice is the same everywhere
  for (int i = 0; i < n; i++) {
    const int cs = symmetricCode(x[i], ss, bits), ca = asymmetricCode(x[i], sa, za, bits);
    u[i] = (uint8_t)cs;
    ua[i] = (uint8_t)ca;
    l1s += fabs(x[i] - symmetricValue(cs, ss, bits));
    l1a += fabs(x[i] - asymmetricValue(ca, sa, za));
  }
  if (l1a < l1s) {  // ties go to symmetric
    for (int i = 0; i < n; i++) u[i] = ua[i];
    q.scale = (uint16_t)(asymScale | 0x8000);
    q.zero = asymZero;
  } else {
    q.scale = symScale;
  }
  return q;
}

// Per-channel key normalization: the stored key is K / f rounded to binary16 (saturating, so a finite key
// never becomes Inf), computed in double. Every backend and the TypeScript reference use this function.
IQ_HD uint16_t normalizeKey(uint16_t keyBits, float f) {
  return doubleToHalfSaturate(halfToDouble(keyBits) / (double)f);
}
// f_j = sqrt(max(maxAbs_j, floor)) where maxAbs_j = max_t |K[t, j]| over the non-sink prefill tokens.
// The floor keeps an all-zero channel from producing f = 0 (a division by zero at quantization time).
constexpr double kKeyNormFloor = 1e-4;
IQ_HD float keyNormFactor(double maxAbs) { return (float)sqrt(maxAbs > kKeyNormFloor ? maxAbs : kKeyNormFloor); }

// Dequantize one code with a group's parameters, in float (what the GEMV kernels compute). For symmetric
// groups this is exact (|s| has 11 significant bits, the level fits in 8 bits); asymmetric rounds once.
IQ_HD float dequantizeCode(int u, uint16_t scaleBits, uint16_t zeroBits, int bits) {
  const float s = halfToFloat((uint16_t)(scaleBits & 0x7fff));
  if (scaleIsAsym(scaleBits)) return s * (float)u + halfToFloat(zeroBits);
  return s * (float)(u - symOffset(bits));
}

}  // namespace innerq
