// quantize_head.h - one kv head's share of CpuBackend::quantizeRows: normalize the keys (K / f rounded once to
// binary16), quantize every group with THE shared scalar quantizer (kernels/quantizer.cuh: double arithmetic,
// bit-exact with the TypeScript reference and the CUDA kernels) and pack the codes into the page.
//
// Each kernels_*.cpp includes this file, so each instruction-set table compiles it with its own flags: at the
// x86-64 baseline floor and ceil are library calls; with -mavx2 they are single instructions, F16C normalizes the
// keys 4 at a time (normalizeKeys), and the AVX-512 table quantizes 8 doubles per vector (quantizeGroupAvx512).
// The functions are static and `flatten` inlines every callee, so no out-of-line copy of the quantizer's inline
// functions compiled with AVX flags exists that the linker could pick for baseline code.
// FMA contraction cannot change a result: every product the quantizer forms (scale x code, half x 2^k) is exact.
#pragma once
#include <cstring>
#include <vector>

#include "../../kernels/quantizer.cuh"
#include "cpu_kernels.h"

#if defined(__F16C__) && defined(__AVX2__)
#include <immintrin.h>
#endif

namespace innerq {
namespace cpu {

// dst[j] = normalizeKey(src[j], f[j]) for j < n: K / f in double, rounded ONCE to nearest-even binary16, saturating
// at +-65504. The scalar doubleToHalf walks that rounding in branches (most of the prefill time); here the double
// goes to float by ROUND-TO-ODD (truncate, then set the last bit if anything was cut off) and float to half by the
// F16C round-to-nearest-even conversion. Rounding to odd at >= 2 more bits than the target (24 vs 11) and then to
// nearest gives exactly the correctly rounded result (Boldo & Melquiond, "Emulation of FMA and correctly rounded
// sums: proved algorithms using rounding to odd"). Clamping to +-65504 first is the saturation: everything in
// (65504, 65520) rounds to 65504 anyway, and beyond it saturates. Quotients are at least 2^-24 / 256 in magnitude
// or zero, so the float is never subnormal. Keys and f are finite and f > 0 (the facade and keyNormFactor).
static inline void normalizeKeys(const uint16_t* src, const float* f, int n, uint16_t* dst) {
  int j = 0;
#if defined(__F16C__) && defined(__AVX2__)
  const __m256d hi = _mm256_set1_pd(65504.0), lo = _mm256_set1_pd(-65504.0);
  const __m256d absMask = _mm256_castsi256_pd(_mm256_set1_epi64x(0x7fffffffffffffffLL));
  for (; j + 4 <= n; j += 4) {
    const __m128 xf = _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + j)));  // exact
    __m256d q = _mm256_div_pd(_mm256_cvtps_pd(xf), _mm256_cvtps_pd(_mm_loadu_ps(f + j)));         // correctly rounded
    q = _mm256_max_pd(_mm256_min_pd(q, hi), lo);
    // Round to odd: take the nearest float; if its magnitude overshoots q, step it one ulp toward zero (the float's
    // bits minus one, for either sign); then set the last bit when the float is not exactly q.
    __m128 t = _mm256_cvtpd_ps(q);
    const __m256d back = _mm256_cvtps_pd(t);
    const __m256d over = _mm256_cmp_pd(_mm256_and_pd(back, absMask), _mm256_and_pd(q, absMask), _CMP_GT_OQ);
    const __m256d inexact = _mm256_cmp_pd(back, q, _CMP_NEQ_UQ);
    // 64-bit lane masks -> 32-bit lane masks (the low dword of each qword, gathered in order)
    const __m256i pick = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    const __m128i overMask = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(_mm256_castpd_si256(over), pick));
    const __m128i inexactMask = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(_mm256_castpd_si256(inexact), pick));
    __m128i bits = _mm_add_epi32(_mm_castps_si128(t), overMask);                       // mask is -1: one ulp down
    bits = _mm_or_si128(bits, _mm_and_si128(inexactMask, _mm_set1_epi32(1)));         // sticky last bit
    t = _mm_castsi128_ps(bits);
    _mm_storel_epi64(reinterpret_cast<__m128i*>(dst + j), _mm_cvtps_ph(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
#endif
  for (; j < n; j++) dst[j] = normalizeKey(src[j], f[j]);
}

#if defined(__AVX512F__) && defined(__AVX512DQ__)
// quantizeGroup (quantizer.cuh) for n contiguous binary16 values (n = 32, 64 or 128), 8 doubles per vector, with
// the same operations on the same doubles, so the codes, scale and zero are identical:
//  - max |x|, min and max: order-free; the sign of a zero minimum / maximum is fixed afterwards as minOrdered /
//    maxOrdered define it (-0 below +0), since vminpd / vmaxpd return the second operand for equal zeros;
//  - codes: x / s and (x - z) / s are correctly rounded divisions, + 0.5 a correctly rounded add, then floor and
//    clamp, exactly roundClamp; x - z is exact (both are multiples of 2^-24 below 2^17);
//  - the L1 errors of hybrid groups are sums of exact terms (scale x code is exact), so any order gives the same sum.
// The per-group parameters (scales rounded up or down to binary16) come from quantizer.cuh's groupCandidates.
static inline QuantizedGroup quantizeGroupAvx512(const uint16_t* src, int n, int bits, int mode, uint8_t* u) {
  __m512d x[16];
  const int nv = n / 8;
  const __m512d signMask = _mm512_set1_pd(-0.0);
  __m512d vmax = _mm512_setzero_pd(), vlo = _mm512_set1_pd(INFINITY), vhi = _mm512_set1_pd(-INFINITY);
  for (int k = 0; k < nv; k++) {
    x[k] = _mm512_cvtps_pd(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 8 * k))));
    vmax = _mm512_max_pd(vmax, _mm512_andnot_pd(signMask, x[k]));
    vlo = _mm512_min_pd(vlo, x[k]);
    vhi = _mm512_max_pd(vhi, x[k]);
  }
  const double maxAbs = _mm512_reduce_max_pd(vmax);
  double lo = _mm512_reduce_min_pd(vlo), hi = _mm512_reduce_max_pd(vhi);
  if (lo == 0 || hi == 0) {  // the sign of a zero extreme: -0 if any element is -0 (lo), +0 if any is +0 (hi)
    bool negZero = false, posZero = false;
    for (int k = 0; k < nv; k++) {
      const __mmask8 zero = _mm512_cmp_pd_mask(x[k], _mm512_setzero_pd(), _CMP_EQ_OQ);
      const __mmask8 neg = _mm512_movepi64_mask(_mm512_castpd_si512(x[k]));
      negZero |= (zero & neg) != 0;
      posZero |= (zero & (__mmask8)~neg) != 0;
    }
    if (lo == 0) lo = negZero ? -0.0 : 0.0;
    if (hi == 0) hi = posZero ? 0.0 : -0.0;
  }
  bool constantMagnitude = true;  // every nonzero |x| equals maxAbs
  const __m512d vmaxAbs = _mm512_set1_pd(maxAbs);
  for (int k = 0; k < nv; k++) {
    const __mmask8 zero = _mm512_cmp_pd_mask(x[k], _mm512_setzero_pd(), _CMP_EQ_OQ);
    const __mmask8 atMax = _mm512_cmp_pd_mask(_mm512_andnot_pd(signMask, x[k]), vmaxAbs, _CMP_EQ_OQ);
    if ((uint8_t)(zero | atMax) != 0xff) constantMagnitude = false;
  }
  QuantizedGroup q;
  q.zero = 0;
  const GroupCandidates c = groupCandidates(maxAbs, constantMagnitude, lo, hi, bits);
  const uint16_t symScale = c.symScale, asymZero = c.asymZero, asymScale = c.asymScale;
  const double ss = c.ss, za = c.za, sa = c.sa;
  const int qmax = symMaxLevel(bits), off = symOffset(bits), amax = asymMaxCode(bits);
  const __m512d half = _mm512_set1_pd(0.5);
  // roundClamp(v / s, lo, hi) + add for 8 lanes; s == 0 gives `add` + 0 (the scalar code's s > 0 test)
  auto codes = [&](__m512d v, double s, double clo, double chi, int add) {
    if (!(s > 0)) return _mm256_set1_epi32(add);
    __m512d r = _mm512_roundscale_pd(_mm512_add_pd(_mm512_div_pd(v, _mm512_set1_pd(s)), half), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    r = _mm512_min_pd(_mm512_max_pd(r, _mm512_set1_pd(clo)), _mm512_set1_pd(chi));
    return _mm256_add_epi32(_mm512_cvttpd_epi32(r), _mm256_set1_epi32(add));
  };
  auto store = [&](uint8_t* dst, __m256i c) { _mm_storel_epi64(reinterpret_cast<__m128i*>(dst), _mm256_cvtepi32_epi8(c)); };
  const __m512d vza = _mm512_set1_pd(za);
  if (mode == kSym) {
    for (int k = 0; k < nv; k++) store(u + 8 * k, codes(x[k], ss, -qmax, qmax, off));
    q.scale = symScale;
    return q;
  }
  if (mode == kAsym) {
    for (int k = 0; k < nv; k++) store(u + 8 * k, codes(_mm512_sub_pd(x[k], vza), sa, 0, amax, 0));
    q.scale = (uint16_t)(asymScale | 0x8000);
    q.zero = asymZero;
    return q;
  }
  uint8_t ua[128];
  __m512d l1s = _mm512_setzero_pd(), l1a = _mm512_setzero_pd();
  const __m512d vss = _mm512_set1_pd(ss), vsa = _mm512_set1_pd(sa);
  for (int k = 0; k < nv; k++) {
    const __m256i cs = codes(x[k], ss, -qmax, qmax, off), ca = codes(_mm512_sub_pd(x[k], vza), sa, 0, amax, 0);
    store(u + 8 * k, cs);
    store(ua + 8 * k, ca);
    const __m512d vs = _mm512_mul_pd(vss, _mm512_cvtepi32_pd(_mm256_sub_epi32(cs, _mm256_set1_epi32(off))));  // exact
    const __m512d va = _mm512_add_pd(_mm512_mul_pd(vsa, _mm512_cvtepi32_pd(ca)), vza);                         // as asymmetricValue
    l1s = _mm512_add_pd(l1s, _mm512_andnot_pd(signMask, _mm512_sub_pd(x[k], vs)));
    l1a = _mm512_add_pd(l1a, _mm512_andnot_pd(signMask, _mm512_sub_pd(x[k], va)));
  }
  if (_mm512_reduce_add_pd(l1a) < _mm512_reduce_add_pd(l1s)) {  // ties go to symmetric
    std::memcpy(u, ua, (size_t)n);
    q.scale = (uint16_t)(asymScale | 0x8000);
    q.zero = asymZero;
  } else {
    q.scale = symScale;
  }
  return q;
}
#endif

// The group quantizer of this table: the vector one where this file is compiled with AVX-512, else quantizer.cuh's.
static inline QuantizedGroup quantizeContiguousGroup(const uint16_t* src, int n, int bits, int mode, uint8_t* u) {
#if defined(__AVX512F__) && defined(__AVX512DQ__)
  return quantizeGroupAvx512(src, n, bits, mode, u);
#else
  return quantizeGroup(src, 1, n, bits, mode, u);
#endif
}

static __attribute__((flatten)) void quantizeHeadRows(const QuantizeHeadJob& job) {
  const MatrixFormat& f = job.format;
  const int d = job.d, kh = job.kh, P = job.pageTokens;
  const int G = f.orientation == kColGrouped ? f.groupSize : 1;  // rows handled together
  const float* norm = job.norm ? job.norm + (size_t)kh * d : nullptr;
  std::vector<uint16_t> tmp((size_t)G * d), cols(f.orientation == kColGrouped ? (size_t)G * d : 0);
  uint8_t u[128];
  for (int i0 = 0; i0 < job.count; i0 += G) {
    for (int t = 0; t < G; t++) {
      const uint16_t* src = job.rows + (size_t)(i0 + t) * job.ld + (size_t)kh * d;
      uint16_t* dst = tmp.data() + (size_t)t * d;
      if (norm)
        normalizeKeys(src, norm, d, dst);
      else
        std::memcpy(dst, src, sizeof(uint16_t) * d);
    }
    const int qi = job.firstQuantized + i0, page = qi / P, slot = qi % P;
    const QuantRef m = job.pageRef(job.ctx, page, kh);
    uint8_t* codes = const_cast<uint8_t*>(m.codes);
    uint16_t* scales = const_cast<uint16_t*>(m.scales);
    uint16_t* zeros = const_cast<uint16_t*>(m.zeros);
    if (f.orientation == kFp16Rows) {
      std::memcpy((uint16_t*)codes + (size_t)slot * d, tmp.data(), sizeof(uint16_t) * d);
    } else if (f.orientation == kRowGrouped) {  // groups of G channels of one token
      const int n = d / f.groupSize, gb = groupBytes(f.bits, f.groupSize);
      for (int g = 0; g < n; g++) {
        const QuantizedGroup qg = quantizeContiguousGroup(tmp.data() + (size_t)g * f.groupSize, f.groupSize, f.bits, f.mode, u);
        const size_t gi = (size_t)slot * n + g;
        for (int b = 0; b < f.groupSize / 32; b++) packBlock32(u + 32 * b, f.bits, codes + gi * gb + (size_t)b * blockBytes(f.bits));
        scales[gi] = qg.scale;
        if (zeros) zeros[gi] = qg.zero;
      }
    } else {  // kColGrouped: groups of G tokens of one channel
      const int gb = groupBytes(f.bits, f.groupSize), tg = slot / f.groupSize;
      // transposed so that each channel's G tokens are contiguous, [d][G], as quantizeGroupAvx512 reads them
      // (a copy of G x d halves per token group: small next to the quantization itself)
      for (int t = 0; t < G; t++)
        for (int j = 0; j < d; j++) cols[(size_t)j * G + t] = tmp[(size_t)t * d + j];
      for (int j = 0; j < d; j++) {
        const QuantizedGroup qg = quantizeContiguousGroup(cols.data() + (size_t)j * G, f.groupSize, f.bits, f.mode, u);
        const size_t gi = (size_t)tg * d + j;
        for (int b = 0; b < f.groupSize / 32; b++) packBlock32(u + 32 * b, f.bits, codes + gi * gb + (size_t)b * blockBytes(f.bits));
        scales[gi] = qg.scale;
        if (zeros) zeros[gi] = qg.zero;
      }
    }
  }
}

}  // namespace cpu
}  // namespace innerq
