// quantize_head.h - one kv head's share of CpuBackend::quantizeRows: normalize the keys (K / f rounded once to
// binary16), quantize every group with THE shared scalar quantizer (kernels/quantizer.cuh: double arithmetic,
// bit-exact with the TypeScript reference and the CUDA kernels) and pack the codes into the page.
//
// Each kernels_*.cpp includes this file, so each instruction-set table compiles it with its own flags. At the
// x86-64 baseline floor, ceil, fmin and fmax are library calls and the double arithmetic runs on SSE2; with
// -mavx2 / -mavx512* they are single instructions and the element loops vectorize (2.2x faster measured on the
// AVX-512 VM). The function is static and `flatten` inlines every callee into it, so no out-of-line copy of the
// quantizer's inline functions compiled with AVX flags exists that the linker could pick for baseline code.
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

static __attribute__((flatten)) void quantizeHeadRows(const QuantizeHeadJob& job) {
  const MatrixFormat& f = job.format;
  const int d = job.d, kh = job.kh, P = job.pageTokens;
  const int G = f.orientation == kColGrouped ? f.groupSize : 1;  // rows handled together
  const float* norm = job.norm ? job.norm + (size_t)kh * d : nullptr;
  std::vector<uint16_t> tmp((size_t)G * d);
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
        const QuantizedGroup qg = quantizeGroup(tmp.data() + (size_t)g * f.groupSize, 1, f.groupSize, f.bits, f.mode, u);
        const size_t gi = (size_t)slot * n + g;
        for (int b = 0; b < f.groupSize / 32; b++) packBlock32(u + 32 * b, f.bits, codes + gi * gb + (size_t)b * blockBytes(f.bits));
        scales[gi] = qg.scale;
        if (zeros) zeros[gi] = qg.zero;
      }
    } else {  // kColGrouped: groups of G tokens of one channel
      const int gb = groupBytes(f.bits, f.groupSize), tg = slot / f.groupSize;
      for (int j = 0; j < d; j++) {
        const QuantizedGroup qg = quantizeGroup(tmp.data() + j, d, f.groupSize, f.bits, f.mode, u);
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
