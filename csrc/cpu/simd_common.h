// simd_common.h - AVX2-level helpers shared by kernels_avx2.cpp and kernels_avx512.cpp (both compiled with at least
// -mavx2 -mfma -mf16c). Everything here has internal linkage (anonymous namespace): each including file gets its own
// copy, encoded with its own instruction set, so the linker can never hand one file's AVX-512 encoding to the other.
// Include only from files compiled with the AVX2 flags.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cpu_kernels.h"
#include "prefetch.h"

namespace innerq {
namespace cpu {
namespace {

// Forces inlining of the small helpers of the hot key and value loops (and of their per-token-pair lambdas). With
// dozens of template instances GCC 12 leaves some out of line: the avx2 3-bit key loop called loadQuad<3> twice
// and its pair lambda once per token pair, each call preceded by vzeroupper and the code vectors passed through
// the stack, and rebuilt the constant halfPermMask in a call per 8 tokens.
#define INNERQ_INLINE inline __attribute__((always_inline))
#define INNERQ_INLINE_LAMBDA __attribute__((always_inline))

// The SIMD files must not call the shared inline helpers of format.cuh: in an unoptimised build their out-of-line
// copies would be emitted there with AVX encodings and the linker could pick them for the portable code too.
// Internal-linkage copies (same formulas as format.cuh) avoid that.
constexpr int avxBlockBytes(int bits) { return bits == 2 ? 8 : bits == 3 ? 12 : bits == 4 ? 16 : 32; }
constexpr int avxGroupBytes(int bits, int groupSize) { return (groupSize / 32) * avxBlockBytes(bits); }
constexpr int avxSymOffset(int bits) { return 1 << (bits - 1); }

// The constants of the softmax exp (exp256 in kernels_avx2.cpp, exp512 in kernels_avx512.cpp, which derives them):
// e^x = 2^n * e^r, n = round(x*log2(e)) by adding kExpMagic, r = x - n*ln2 in two Cody-Waite steps (kExpLn2Hi has 10
// significant bits, so n*kExpLn2Hi is exact), e^r by the degree-5 polynomial kExpPoly (highest degree first), fitted
// to the relative error on [-ln2/2, ln2/2]; below kExpFloor the result is 0.
constexpr float kExpLog2e = 1.44269504088896341f, kExpMagic = 12582912.0f /* 1.5 * 2^23 */, kExpFloor = -86.0f;
constexpr float kExpLn2Hi = 0.693359375f, kExpLn2Lo = -2.12194440e-4f;
constexpr float kExpPoly[6] = {0.008297654800117016f, 0.04191538318991661f, 0.16667574644088745f,
                               0.49998894333839417f,  0.9999997019767761f,  1.0000001192092896f};

// ---------------------------------------------------------------------------------------------------------
// code unpacking: 32 codes of one block -> 32 bytes, element e in byte e.
template <int BITS>
inline __m256i unpack32(const uint8_t* p);

template <>
inline __m256i unpack32<2>(const uint8_t* p) {
  // Block byte i holds u[8k+i] in bits 2k..2k+1: broadcast the 8 bytes to the four 64-bit lanes, shift lane k
  // right by 2k, mask -> lane k's bytes are u[8k .. 8k+7].
  int64_t w;
  std::memcpy(&w, p, 8);
  const __m256i v = _mm256_srlv_epi64(_mm256_set1_epi64x(w), _mm256_set_epi64x(6, 4, 2, 0));
  return _mm256_and_si256(v, _mm256_set1_epi8(3));
}

template <>
inline __m256i unpack32<3>(const uint8_t* p) {
  // Bytes 8..11: a 32-bit plane whose bit e is bit 2 of u[e]. Broadcast it, copy byte e/8 of the word to byte e
  // (pshufb works per 128-bit lane, and the word is present in every lane), isolate bit e%8 with the mask
  // 0x8040201008040201 (byte k = 1<<k), compare to get 0xff/0x00, keep 4.
  uint32_t hi;
  std::memcpy(&hi, p + 8, 4);
  const __m256i sel = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3,
                                       3, 3, 3, 3, 3, 3);
  const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
  __m256i h = _mm256_shuffle_epi8(_mm256_set1_epi32((int)hi), sel);
  h = _mm256_cmpeq_epi8(_mm256_and_si256(h, bit), bit);
  return _mm256_or_si256(unpack32<2>(p), _mm256_and_si256(h, _mm256_set1_epi8(4)));
}

template <>
inline __m256i unpack32<4>(const uint8_t* p) {
  // Byte i: low nibble u[i], high nibble u[i+16]: one 16-byte load, the shifted copy in the upper lane.
  const __m128i x = _mm_loadu_si128((const __m128i*)p);
  return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(x, 4), x), _mm256_set1_epi8(15));
}

template <>
inline __m256i unpack32<8>(const uint8_t* p) {
  return _mm256_loadu_si256((const __m256i*)p);
}

// 32 unsigned codes . 32 int8 activations -> 8 int32 partial sums.
template <int BITS>
inline __m256i dot32(__m256i c, __m256i q) {
  if (BITS == 8) {
    // maddubs would saturate (2*255*127 = 64770 > 32767): widen both to int16 and use madd, exact in int32.
    const __m256i c0 = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(c));
    const __m256i c1 = _mm256_cvtepu8_epi16(_mm256_extracti128_si256(c, 1));
    const __m256i q0 = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(q));
    const __m256i q1 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(q, 1));
    return _mm256_add_epi32(_mm256_madd_epi16(c0, q0), _mm256_madd_epi16(c1, q1));
  }
  // u <= 15, |q| <= 127: a maddubs pair is at most 2*15*127 = 3810, no int16 saturation.
  return _mm256_madd_epi16(_mm256_maddubs_epi16(c, q), _mm256_set1_epi16(1));
}

// 32 unsigned codes . 32 u8 weights (the value path) -> 8 int32 partial sums. The weights are the unsigned operand
// of maddubs and the codes (<= 15) the signed one: a pair is at most 2*255*15 = 7650, no int16 saturation.
template <int BITS>
inline __m256i dotU8(__m256i c, __m256i p) {
  if (BITS == 8) {  // both operands up to 255: widen to int16, madd (pairs <= 2*255*255, exact in int32)
    const __m256i c0 = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(c));
    const __m256i c1 = _mm256_cvtepu8_epi16(_mm256_extracti128_si256(c, 1));
    const __m256i p0 = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(p));
    const __m256i p1 = _mm256_cvtepu8_epi16(_mm256_extracti128_si256(p, 1));
    return _mm256_add_epi32(_mm256_madd_epi16(c0, p0), _mm256_madd_epi16(c1, p1));
  }
  return _mm256_madd_epi16(_mm256_maddubs_epi16(p, c), _mm256_set1_epi16(1));
}

// The one dispatch point that turns a run-time head count r (1..kMaxHeadBlock; larger counts are split into head
// blocks by the caller) into a template argument: calls f(std::integral_constant<int, R>{}) with R = r, so kernels
// written for a fixed R unroll their head loops and keep per-head state in registers.
template <class F>
inline void withHeadCount(int r, F&& f) {
  static_assert(kMaxHeadBlock == 8, "withHeadCount lists the head counts 1..8");
  switch (r) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 6: return f(std::integral_constant<int, 6>{});
    case 7: return f(std::integral_constant<int, 7>{});
    default: return f(std::integral_constant<int, 8>{});
  }
}

// The key kernels' dispatch from a run's shape to template arguments: calls f(Z, D, R) with Z =
// std::bool_constant<the matrix has zero points>, D = std::integral_constant<int, d> (d = 128 or 256) and R as
// withHeadCount gives it.
template <class F>
inline void withKeyShape(const QuantRun& m, int d, int r, F&& f) {
  auto withD = [&](auto Z) {
    if (d == 128)
      withHeadCount(r, [&](auto R) { f(Z, std::integral_constant<int, 128>{}, R); });
    else
      withHeadCount(r, [&](auto R) { f(Z, std::integral_constant<int, 256>{}, R); });
  };
  if (m.pages[0].zeros)
    withD(std::true_type{});
  else
    withD(std::false_type{});
}

// Prefetch fp16 row a of a page's run of n rows (stride ld), or, for a >= n, row a - n of the next page (`next`,
// nullptr when the caller does not go on there): every page is a new stream for the hardware prefetcher, so the
// fp16 kernels prefetch a few rows ahead and on into the next page (d halves per row).
inline void prefetchFp16Row(const uint16_t* rows, size_t ld, int n, const uint16_t* next, int a, int d) {
  const uint16_t* pr = a < n ? rows + (size_t)a * ld : next ? next + (size_t)(a - n) * ld : nullptr;
  if (pr)
    for (int j = 0; j < d; j += 32) prefetchLine<Prefetch::L1>((const char*)(pr + j));
}

// Stores the first cnt (1..8) lanes of v at o: whole when cnt == 8, else through a stack copy (a kernel's tail).
inline void storeLeading(float* o, __m256 v, int cnt) {
  if (cnt == 8) {
    _mm256_storeu_ps(o, v);
  } else {
    alignas(32) float tmp[8];
    _mm256_store_ps(tmp, v);
    for (int i = 0; i < cnt; i++) o[i] = tmp[i];
  }
}

// InnerQ key rows (kRowGrouped): prefetches the code rows [row, row + rows) of one page (ROW bytes each, with hint
// CODES) and their scales (and zeros: n = groups per row) into L1. Both tables' key kernels run it a fixed distance
// ahead and on into the next page.
template <Prefetch CODES, bool ZEROS, int ROW, int n>
INNERQ_INLINE void prefetchKeyRowsOf(const uint8_t* codes, const uint16_t* scales, const uint16_t* zeros, size_t row, int rows) {
  for (int o = 0; o < rows * ROW; o += 64) prefetchLine<CODES>((const char*)(codes + row * ROW + o));
  for (int o = 0; o < rows * n; o += 32) prefetchLine<Prefetch::L1>((const char*)(scales + row * n + o));
  if (ZEROS)
    for (int o = 0; o < rows * n; o += 32) prefetchLine<Prefetch::L1>((const char*)(zeros + row * n + o));
}

// A key kernel's tail: copies the 8 rows from slot tb on (ROW code bytes and n scales, zeros, each) into rows, sc
// and zr, rows past cnt repeating the last one (the kernel computes them and does not store their results).
template <bool ZEROS, int ROW, int n>
inline void copyKeyRows(const QuantRef& m, int tb, int cnt, uint8_t* rows, uint16_t* sc, uint16_t* zr) {
  for (int i = 0; i < 8; i++) {
    const int t = tb + (i < cnt ? i : cnt - 1);
    std::memcpy(rows + i * ROW, m.codes + (size_t)t * ROW, ROW);
    std::memcpy(sc + i * n, m.scales + (size_t)t * n, 2 * n);
    if (ZEROS) std::memcpy(zr + i * n, m.zeros + (size_t)t * n, 2 * n);
  }
}

// _mm256_hadd_epi32 / _mm256_hadd_ps without vphaddd / vhaddps: those are 3 ops that issue once per two cycles on
// Zen 3 and Zen 4 (8 back to back took 16 cycles here), while two vshufps (even / odd elements of each 128-bit
// lane of x and y) and one add give the same lanes, [x0+x1, x2+x3, y0+y1, y2+y3 | same for the high half], at
// about a quarter of that in the kernels' instruction mix. The sums are the same additions, so bit-identical.
inline __m256 haddPairs(__m256 x, __m256 y) {
  return _mm256_add_ps(_mm256_shuffle_ps(x, y, _MM_SHUFFLE(2, 0, 2, 0)), _mm256_shuffle_ps(x, y, _MM_SHUFFLE(3, 1, 3, 1)));
}
inline __m256i haddPairs(__m256i x, __m256i y) {
  const __m256 a = _mm256_castsi256_ps(x), b = _mm256_castsi256_ps(y);
  return _mm256_add_epi32(_mm256_castps_si256(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0))),
                          _mm256_castps_si256(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1))));
}

// Lane i of the result = horizontal sum of v[i] (int32), for 8 vectors.
inline __m256i hsum8(const __m256i* v) {
  const __m256i a = haddPairs(haddPairs(v[0], v[1]), haddPairs(v[2], v[3]));
  const __m256i b = haddPairs(haddPairs(v[4], v[5]), haddPairs(v[6], v[7]));
  // per 128-bit lane a = [v0 v1 v2 v3] partials (low half / high half of each vector), b = [v4..v7]
  return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
}
inline __m256 hsum8(const __m256* v) {
  const __m256 a = haddPairs(haddPairs(v[0], v[1]), haddPairs(v[2], v[3]));
  const __m256 b = haddPairs(haddPairs(v[4], v[5]), haddPairs(v[6], v[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
}

inline float hsum(__m256 v) {
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  x = _mm_add_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}

// Group parameters for 8 groups given their 8 binary16 scales (and zeros): x^ = a*u + bz, a = |scale|,
// bz = zero for asymmetric groups (scale sign bit set) and -a*2^(b-1) for symmetric ones. blendv selects on the
// float sign bit, which is the fp16 sign bit after conversion.
inline void params8(__m128i scaleBits, const uint16_t* zeros, __m128i zeroBits, float offset, __m256& a, __m256& bz) {
  const __m256 sc = _mm256_cvtph_ps(scaleBits);
  a = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), sc);
  bz = _mm256_mul_ps(a, _mm256_set1_ps(-offset));
  if (zeros) bz = _mm256_blendv_ps(bz, _mm256_cvtph_ps(zeroBits), sc);
}

inline __m128i gather8h(const uint16_t* base, const int* idx) {
  return _mm_setr_epi16((short)base[idx[0]], (short)base[idx[1]], (short)base[idx[2]], (short)base[idx[3]],
                        (short)base[idx[4]], (short)base[idx[5]], (short)base[idx[6]], (short)base[idx[7]]);
}

// KIVI-style keys: a token group's scale and zero point per channel folded into the query, so that the inner loop
// is convert + FMA: q~[h][j] = q[h][j] * a[j] (qt, row stride kMaxHeadDim) and c[h] = Σ_j q[h][j] * bz[j].
// gi0 = the group's first scale index (token group * d).
inline void foldKeyGroup(const QuantRef& m, int d, size_t gi0, const float* q, int r, float off, float* qt, float* c) {
  for (int h = 0; h < r; h++) {
    __m256 cacc = _mm256_setzero_ps();
    for (int j = 0; j < d; j += 8) {
      __m256 a, bz;
      params8(_mm_loadu_si128((const __m128i*)(m.scales + gi0 + j)), m.zeros,
              m.zeros ? _mm_loadu_si128((const __m128i*)(m.zeros + gi0 + j)) : _mm_setzero_si128(), off, a, bz);
      const __m256 qv = _mm256_loadu_ps(q + h * d + j);
      _mm256_storeu_ps(qt + h * kMaxHeadDim + j, _mm256_mul_ps(qv, a));
      cacc = _mm256_fmadd_ps(qv, bz, cacc);
    }
    c[h] = hsum(cacc);
  }
}

}  // namespace
}  // namespace cpu
}  // namespace innerq
