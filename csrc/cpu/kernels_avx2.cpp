// kernels_avx2.cpp - AVX2/FMA/F16C implementation of the CPU kernel table (built with -mavx2 -mfma -mf16c;
// only reached after cpuFeatures() confirmed all three).
//
// Performance notes (2-core Zen 3, see DESIGN.md §3): fp16 kernels are memory-bound, the quantized ones are
// compute-bound, so the quantized kernels are written to minimise instructions per code byte:
//  - InnerQ (keys kRowGrouped, values kColGrouped): codes are multiplied as integers with int8 activations by
//    maddubs (u8 x s8 -> pairs summed in int16) + madd with ones (-> int32); 8 such dot products (8 tokens for
//    keys, 8 channels for values) are reduced together by one hadd tree whose output lanes are exactly the
//    8 results, so the per-group float work (scale, zero point) is a few vertical FMAs per 8 groups.
//  - KIVI-style baselines: the group scale is folded into the activation (q~_j = q_j a_j per key channel group,
//    p~_t = p_t a_t per value token group) and the zero points into one constant per group, so the inner loop
//    is convert-codes-to-float + one FMA per code per query head, vertical over the tokens (keys: a block is 32
//    tokens of one channel) or channels (values: a block is 32 channels of one token), accumulators in
//    registers for up to 4 query heads x 16 lanes.
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "cpu_kernels.h"
#include "quantize_head.h"
#include "simd_common.h"

namespace innerq {
namespace cpu {
namespace {


// ---------------------------------------------------------------------------------------------------------
// fp16 rows. Scores: TB tokens x HB heads = 8 accumulators over the channels, one hadd tree per 8 (t, h) pairs.
template <int HB>
void scoresFp16T(const uint16_t* rows, size_t ld, int n, int d, const float* q, float* s, size_t lds, const uint16_t* next) {
  constexpr int TB = 8 / HB;
  for (int i = 0; i < n; i += TB) {
    const uint16_t* rp[TB];
    for (int t = 0; t < TB; t++) rp[t] = rows + (size_t)(i + t < n ? i + t : n - 1) * ld;  // clamp the tail
    // 24 rows ahead and on into the next page, as the avx512 table (without it this baseline read DRAM at ~23 GB/s
    // where the avx512 one reads ~27)
    constexpr int kAhead = 24;
    for (int t = 0; t < TB; t++) prefetchFp16Row(rows, ld, n, next, i + kAhead + t, d);
    __m256 acc[8];
    for (int k = 0; k < 8; k++) acc[k] = _mm256_setzero_ps();
    for (int j = 0; j < d; j += 8) {
      // The query chunks in registers, each loaded once for the TB tokens: as memory operands of the FMAs the
      // compiler loaded them TB times, and with 2 of every 8 loads being the K rows the loads, not the FMAs, set the
      // pace (10 loads per 8 FMAs at HB = 4).
      __m256 qv[HB];
      for (int h = 0; h < HB; h++) {
        qv[h] = _mm256_loadu_ps(q + h * d + j);
        if (TB > 1) __asm__("" : "+x"(qv[h]));  // keeps GCC from folding the load into each FMA again
      }
      for (int t = 0; t < TB; t++) {
        const __m256 kv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(rp[t] + j)));
        for (int h = 0; h < HB; h++) acc[t * HB + h] = _mm256_fmadd_ps(kv, qv[h], acc[t * HB + h]);
      }
    }
    alignas(32) float out[8];
    _mm256_store_ps(out, hsum8(acc));
    for (int t = 0; t < TB && i + t < n; t++)
      for (int h = 0; h < HB; h++) s[h * lds + i + t] = out[t * HB + h];
  }
}

void scoresFp16(const uint16_t* rows, size_t ld, int n, int d, const float* q, int r, float* s, size_t lds, const uint16_t* next) {
  int h = 0;
  for (; h + 8 <= r; h += 8) scoresFp16T<8>(rows, ld, n, d, q + h * d, s + h * lds, lds, next);
  for (; h + 4 <= r; h += 4) scoresFp16T<4>(rows, ld, n, d, q + h * d, s + h * lds, lds, next);
  for (; h + 2 <= r; h += 2) scoresFp16T<2>(rows, ld, n, d, q + h * d, s + h * lds, lds, next);
  for (; h < r; h++) scoresFp16T<1>(rows, ld, n, d, q + h * d, s + h * lds, lds, next);
}

// Weighted sum: for a tile of tokens (L1-resident after the first channel chunk), CV vectors of channels x HB
// heads of accumulators stay in registers across the tile; each converted V element feeds HB FMAs.
template <int HB, int CV>
void wsumFp16T(const uint16_t* rows, size_t ld, int n, int d, const float* p, size_t ldp, float* out, const uint16_t* next) {
  // 8 tokens per tile: the tile and the next one (prefetched) must stay in L1 through the channel passes; 64-token
  // tiles (16 KiB each at d = 128) thrashed the 32 KiB L1 and ran the value GEMV at 13 GB/s, 8-token tiles at
  // 19 GB/s (cpu_gemv ... 1, 16k tokens, Zen 4).
  constexpr int kTile = 8;
  for (int i0 = 0; i0 < n; i0 += kTile) {
    const int i1 = i0 + kTile < n ? i0 + kTile : n;
    // The tile is read chunk by chunk (stride = row); prefetch the whole next tile before the first chunk pass so
    // that the DRAM stream stays sequential and ahead of the strided L1 reads; after the last tile, the first rows
    // of the next page.
    for (int i = i0 + kTile; i < i0 + 2 * kTile; i++) prefetchFp16Row(rows, ld, n, next, i, d);
    for (int j = 0; j < d; j += 8 * CV) {
      // Per-tile partial sums added to out at the end of the tile: a float error of ~(sqrt(tile) + sqrt(n/tile)) ulp
      // (with 8-token tiles barely below one running sum's ~sqrt(n); the tests' 1e-5 bound holds at 16k tokens).
      __m256 acc[HB][CV];
      for (int h = 0; h < HB; h++)
        for (int c = 0; c < CV; c++) acc[h][c] = _mm256_setzero_ps();
      for (int i = i0; i < i1; i++) {
        __m256 v[CV];
        for (int c = 0; c < CV; c++) v[c] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(rows + (size_t)i * ld + j + 8 * c)));
        for (int h = 0; h < HB; h++) {
          const __m256 w = _mm256_broadcast_ss(p + h * ldp + i);
          for (int c = 0; c < CV; c++) acc[h][c] = _mm256_fmadd_ps(w, v[c], acc[h][c]);
        }
      }
      for (int h = 0; h < HB; h++)
        for (int c = 0; c < CV; c++)
          _mm256_storeu_ps(out + h * d + j + 8 * c, _mm256_add_ps(_mm256_loadu_ps(out + h * d + j + 8 * c), acc[h][c]));
    }
  }
}

void wsumFp16(const uint16_t* rows, size_t ld, int n, int d, const float* p, size_t ldp, int r, float* out, const uint16_t* next) {
  int h = 0;
  for (; h + 8 <= r; h += 8) wsumFp16T<8, 1>(rows, ld, n, d, p + h * ldp, ldp, out + h * d, next);
  for (; h + 4 <= r; h += 4) wsumFp16T<4, 2>(rows, ld, n, d, p + h * ldp, ldp, out + h * d, next);
  for (; h + 2 <= r; h += 2) wsumFp16T<2, 2>(rows, ld, n, d, p + h * ldp, ldp, out + h * d, next);
  for (; h < r; h++) wsumFp16T<1, 4>(rows, ld, n, d, p + h * ldp, ldp, out + h * d, next);
}

// ---------------------------------------------------------------------------------------------------------
// InnerQ keys, integer path. 8 tokens at a time: for each 32-channel slice, unpack the 8 tokens' blocks once,
// then per query head 8 maddubs/madd dot products and one hadd tree give D for the 8 tokens in 8 lanes;
// score += a*(sigma*D) + bz*(sigma*S)  (vertical, 8 tokens per instruction).
template <int BITS>
void scoresRowI8T(const QuantRef& m, const MatrixFormat& f, int d, int t0, int t1, const I8Set& q, int r, float* s,
                  size_t lds) {
  const int G = f.groupSize, n = d / G, spg = G / 32, gb = avxGroupBytes(BITS, G), bb = avxBlockBytes(BITS);
  const float off = (float)avxSymOffset(BITS);
  for (int tb = t0; tb < t1; tb += 8) {
    const int cnt = t1 - tb < 8 ? t1 - tb : 8;
    int tok[8], gidx[8];
    for (int i = 0; i < 8; i++) tok[i] = tb + (i < cnt ? i : cnt - 1);
    __m256 acc[kMaxHeadBlock];
    for (int h = 0; h < r; h++) acc[h] = _mm256_setzero_ps();
    for (int g = 0; g < n; g++) {
      for (int i = 0; i < 8; i++) gidx[i] = tok[i] * n + g;
      __m256 a, bz;
      params8(gather8h(m.scales, gidx), m.zeros, m.zeros ? gather8h(m.zeros, gidx) : _mm_setzero_si128(), off, a, bz);
      for (int sl = 0; sl < spg; sl++) {
        __m256i c[8];
        for (int i = 0; i < 8; i++) c[i] = unpack32<BITS>(m.codes + (size_t)gidx[i] * gb + (size_t)sl * bb);
        const int k = g * spg + sl;
        for (int h = 0; h < r; h++) {
          const __m256i qv = _mm256_loadu_si256((const __m256i*)(q.q + h * q.ldq + k * 32));
          __m256i dv[8];
          for (int i = 0; i < 8; i++) dv[i] = dot32<BITS>(c[i], qv);
          const __m256 D = _mm256_cvtepi32_ps(hsum8(dv));
          acc[h] = _mm256_fmadd_ps(a, _mm256_mul_ps(D, _mm256_broadcast_ss(q.sigma + h * q.lds + k)), acc[h]);
          acc[h] = _mm256_fmadd_ps(bz, _mm256_broadcast_ss(q.sigmaSum + h * q.lds + k), acc[h]);
        }
      }
    }
    for (int h = 0; h < r; h++) storeLeading(s + h * lds + (tb - t0), acc[h], cnt);
  }
}

void scoresRowI8Page(const QuantRef& m, const MatrixFormat& f, int d, int t0, int t1, const I8Set& q, int r, float* s,
                 size_t lds) {
  switch (f.bits) {
    case 2: return scoresRowI8T<2>(m, f, d, t0, t1, q, r, s, lds);
    case 3: return scoresRowI8T<3>(m, f, d, t0, t1, q, r, s, lds);
    case 4: return scoresRowI8T<4>(m, f, d, t0, t1, q, r, s, lds);
    default: return scoresRowI8T<8>(m, f, d, t0, t1, q, r, s, lds);
  }
}

// InnerQ values, integer path. 8 channels at a time: their 8 blocks (same token slice) are unpacked once, per
// query head the 8 dot products with the int8 probability slice reduce to 8 lanes = 8 channels, and
// out[j..j+7] += a*(sigma*D) + bz*(sigma*S) with a, bz loaded as 8 contiguous scales/zeros.
template <int BITS>
void wsumColI8T(const QuantRef& m, const MatrixFormat& f, int d, int g0, int g1, const U8Set& p, int r, float* out) {
  const int G = f.groupSize, spg = G / 32, gb = avxGroupBytes(BITS, G), bb = avxBlockBytes(BITS);
  const float off = (float)avxSymOffset(BITS);
  for (int tg = g0; tg < g1; tg++) {
    for (int jb = 0; jb < d; jb += 8) {
      const size_t gi = (size_t)tg * d + jb;
      __m256 a, bz;
      params8(_mm_loadu_si128((const __m128i*)(m.scales + gi)), m.zeros,
              m.zeros ? _mm_loadu_si128((const __m128i*)(m.zeros + gi)) : _mm_setzero_si128(), off, a, bz);
      for (int sl = 0; sl < spg; sl++) {
        __m256i c[8];
        for (int i = 0; i < 8; i++) c[i] = unpack32<BITS>(m.codes + (gi + i) * gb + (size_t)sl * bb);
        const int k = tg * spg + sl;
        for (int h = 0; h < r; h++) {
          const __m256i pv = _mm256_loadu_si256((const __m256i*)(p.q + h * p.ldq + k * 32));
          __m256i dv[8];
          for (int i = 0; i < 8; i++) dv[i] = dotU8<BITS>(c[i], pv);
          const __m256 D = _mm256_cvtepi32_ps(hsum8(dv));
          float* o = out + h * d + jb;
          __m256 acc = _mm256_loadu_ps(o);
          acc = _mm256_fmadd_ps(a, _mm256_mul_ps(D, _mm256_broadcast_ss(p.sigma + h * p.lds + k)), acc);
          acc = _mm256_fmadd_ps(bz, _mm256_broadcast_ss(p.sigmaSum + h * p.lds + k), acc);
          _mm256_storeu_ps(o, acc);
        }
      }
    }
  }
}

void wsumColI8Page(const QuantRef& m, const MatrixFormat& f, int d, int g0, int g1, const U8Set& p, int r, float* out) {
  switch (f.bits) {
    case 2: return wsumColI8T<2>(m, f, d, g0, g1, p, r, out);
    case 3: return wsumColI8T<3>(m, f, d, g0, g1, p, r, out);
    case 4: return wsumColI8T<4>(m, f, d, g0, g1, p, r, out);
    default: return wsumColI8T<8>(m, f, d, g0, g1, p, r, out);
  }
}

// ---------------------------------------------------------------------------------------------------------
// InnerQ fast path for G = 32 and 2/3/4 bits: "lane = block" layout, no per-block horizontal reduction.
//
// Four consecutive 32-code blocks (4 groups of one token for keys, 4 channels of one token group for values)
// are unpacked into four vectors c[k], k = 0..3, whose 64-bit lane L holds codes 8k..8k+7 of block ord[L] as
// bytes. The activation vector for k holds the matching 8 int8 activations in each lane, so
// Σ_k maddubs(c[k], a[k]) accumulates, per lane, the dot product of that block in int16 (8 products of at most
// 15*127 per int16 lane: <= 15240 < 32767 for 4-bit), and one madd leaves 2 int32 per block. One hadd of two
// such quads (two tokens, or channels j..j+3 and j+4..j+7) yields the 8 block dot products D in 8 lanes, in the
// lane order lanePerm below (3-bit keys fold the two quads before a single madd instead, see pairDot); scales are
// permuted into the same order once per 8 blocks (shared by all heads).
// The 2-bit block layout makes c[k] a plain 64-bit shift + mask of one 32-byte load. 3- and 4-bit quads load
// each 128-bit half separately and interleave them with unpack(lo|hi)_epi64, which is why their lane order of
// blocks is (0, 2, 1, 3): no lane-crossing permute (vpermd issues about once per cycle on Zen 3, and the 3-bit
// quad had taken four).
template <int BITS>
inline void loadQuad(const uint8_t* p, __m256i c[4]);

template <>
INNERQ_INLINE void loadQuad<2>(const uint8_t* p, __m256i c[4]) {
  const __m256i v = _mm256_loadu_si256((const __m256i*)p), m = _mm256_set1_epi8(3);
  c[0] = _mm256_and_si256(v, m);
  c[1] = _mm256_and_si256(_mm256_srli_epi64(v, 2), m);
  c[2] = _mm256_and_si256(_mm256_srli_epi64(v, 4), m);
  c[3] = _mm256_and_si256(_mm256_srli_epi64(v, 6), m);
}

template <>
INNERQ_INLINE void loadQuad<3>(const uint8_t* p, __m256i c[4]) {
  // Block g is bytes 12g..12g+11: its 2-bit plane, then its 32-bit high plane. One 16-byte load per block puts
  // both in one 128-bit half (blocks 0 | 1 in X, 2 | 3 in Y; the last 4 bytes of each load are the next block's and
  // unused), so unpacklo_epi64 gives the 2-bit planes in lane order (0, 2, 1, 3) and unpackhi_epi64 the high planes
  // in the low dword of the same lanes. (The loads read 4 bytes past the quad: callers keep a row in bounds, see
  // keysPageAvx2 and valuesPageAvx2.)
  const __m256i X = _mm256_loadu2_m128i((const __m128i*)(p + 12), (const __m128i*)p);
  const __m256i Y = _mm256_loadu2_m128i((const __m128i*)(p + 36), (const __m128i*)(p + 24));
  const __m256i lo = _mm256_unpacklo_epi64(X, Y), H = _mm256_unpackhi_epi64(X, Y);
  const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL), m3 = _mm256_set1_epi8(3),
                four = _mm256_set1_epi8(4);
  for (int k = 0; k < 4; k++) {
    // byte k of the high plane holds bit 2 of codes 8k..8k+7; copy it to the 8 bytes of its lane
    const char a = (char)k, b = (char)(8 + k);
    const __m256i sel = _mm256_setr_epi8(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b, a, a, a, a, a, a, a, a, b, b, b,
                                         b, b, b, b, b);
    const __m256i h = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(H, sel), bit), bit);
    c[k] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi64(lo, 2 * k), m3), _mm256_and_si256(h, four));
  }
}

template <>
INNERQ_INLINE void loadQuad<4>(const uint8_t* p, __m256i c[4]) {
  const __m256i v0 = _mm256_loadu_si256((const __m256i*)p), v1 = _mm256_loadu_si256((const __m256i*)(p + 32));
  const __m256i m = _mm256_set1_epi8(15);
  const __m256i lo0 = _mm256_and_si256(v0, m), hi0 = _mm256_and_si256(_mm256_srli_epi16(v0, 4), m);
  const __m256i lo1 = _mm256_and_si256(v1, m), hi1 = _mm256_and_si256(_mm256_srli_epi16(v1, 4), m);
  c[0] = _mm256_unpacklo_epi64(lo0, lo1);  // codes 0..7 of blocks (0, 2 | 1, 3)
  c[1] = _mm256_unpackhi_epi64(lo0, lo1);  // codes 8..15
  c[2] = _mm256_unpacklo_epi64(hi0, hi1);  // codes 16..23
  c[3] = _mm256_unpackhi_epi64(hi0, hi1);  // codes 24..31
}

template <int BITS>
constexpr int blockOrder(int lane) {
  return BITS >= 3 ? (lane == 1 ? 2 : lane == 2 ? 1 : lane) : lane;
}

// The 8 block dot products of two quads A and B come out in one of two lane orders, lane i holding block
// lanePerm(i) of A0..A3, B0..B3 (4 + for B) in 64-bit lane L of the quads:
//  - hadd(quadDot(A), quadDot(B)) and pairDotHadd(A, B): half i>>2, quad (i>>1)&1, L = (i&1) + 2*(i>>2);
//  - pairDot(A, B) (FOLD): L = i >> 1, A in the even lane, B in the odd one.
template <int BITS, bool FOLD>
constexpr int lanePerm(int i) {
  return FOLD ? 4 * (i & 1) + blockOrder<BITS>(i >> 1) : 4 * ((i >> 1) & 1) + blockOrder<BITS>((i & 1) + 2 * (i >> 2));
}

template <int BITS, bool FOLD>
INNERQ_INLINE __m128i halfPermMask() {  // pshufb mask putting 8 binary16 values into lanePerm order
  alignas(16) char b[16];
  for (int i = 0; i < 8; i++) {
    b[2 * i] = (char)(2 * lanePerm<BITS, FOLD>(i));
    b[2 * i + 1] = (char)(2 * lanePerm<BITS, FOLD>(i) + 1);
  }
  return _mm_load_si128((const __m128i*)b);
}

INNERQ_INLINE __m256i quadDot(const __m256i c[4], const __m256i* a) {
  __m256i s = _mm256_maddubs_epi16(c[0], _mm256_load_si256(a));
  s = _mm256_add_epi16(s, _mm256_maddubs_epi16(c[1], _mm256_load_si256(a + 1)));
  s = _mm256_add_epi16(s, _mm256_maddubs_epi16(c[2], _mm256_load_si256(a + 2)));
  s = _mm256_add_epi16(s, _mm256_maddubs_epi16(c[3], _mm256_load_si256(a + 3)));
  return _mm256_madd_epi16(s, _mm256_set1_epi16(1));
}

// Values: u8 weights as the unsigned maddubs operand, codes as the signed one. Per int16 lane: 4 maddubs pairs =
// 8 products of at most 255*15: <= 30600 < 32767 for 4-bit.
INNERQ_INLINE __m256i quadDotU8(const __m256i c[4], const __m256i* a) {
  __m256i s = _mm256_maddubs_epi16(_mm256_load_si256(a), c[0]);
  s = _mm256_add_epi16(s, _mm256_maddubs_epi16(_mm256_load_si256(a + 1), c[1]));
  s = _mm256_add_epi16(s, _mm256_maddubs_epi16(_mm256_load_si256(a + 2), c[2]));
  s = _mm256_add_epi16(s, _mm256_maddubs_epi16(_mm256_load_si256(a + 3), c[3]));
  return _mm256_madd_epi16(s, _mm256_set1_epi16(1));
}

// Keys: a quad's four maddubs products added as a tree, left as int16 sums (4 per block: 8 products each).
INNERQ_INLINE __m256i quadSums16(const __m256i c[4], const __m256i* a) {
  auto mul = [&](int k) INNERQ_INLINE_LAMBDA { return _mm256_maddubs_epi16(c[k], _mm256_load_si256(a + k)); };
  return _mm256_add_epi16(_mm256_add_epi16(mul(0), mul(1)), _mm256_add_epi16(mul(2), mul(3)));
}

// Which key widths use pairDot (below) and its lane order.
template <int BITS>
constexpr bool kFoldKeys = BITS == 3;

// Keys: the 8 block dot products of two quads A and B (two tokens) as int32, lane 2L = block L of A, lane 2L + 1 =
// block L of B. Each lane's four int16 sums are first folded to two (A's by a 32-bit right shift, B's by a left
// shift, so that they land in the two halves of the lane), and one madd with ones finishes both quads: one madd
// instead of one per quad plus a hadd. The folded sums are of 16 products, at most 16 * 15 * 127 = 30480: int16.
// Used for 3-bit keys only: there it measured 14-19 % faster than quadDot + hadd (kernel_cycles A/B, Zen 3); at 2
// and 4 bits, and for values, 5-14 % slower (one more instruction; docs/KERNELS.md, "Zen 3").
INNERQ_INLINE __m256i pairDot(const __m256i ca[4], const __m256i cc[4], const __m256i* a) {
  const __m256i sa = quadSums16(ca, a), sc = quadSums16(cc, a);
  const __m256i fa = _mm256_add_epi16(sa, _mm256_srli_epi64(sa, 32)), fc = _mm256_add_epi16(sc, _mm256_slli_epi64(sc, 32));
  return _mm256_madd_epi16(_mm256_blend_epi32(fa, fc, 0xAA), _mm256_set1_epi16(1));
}

// Keys: the same 8 dot products in the lane order of haddPairs(quadDot(A), quadDot(B)) (lanePerm<BITS, false>),
// through one hadd of int16 sums: per 128-bit half, hadd_epi16 adds neighbouring int16 sums of A's two blocks, then
// of B's, and one madd with ones finishes all four (one hadd and one madd where quadDot + haddPairs take two madds and
// a hadd_epi32). Each hadd output is a sum of 16 products, at most 16 * 15 * 127 = 30480: int16. Used for 2-bit
// keys: 5-20 % faster there in seven A/B runs (kernel_cycles, Zen 3); for 2- and 3-bit values (u8 weights, at most
// 28560) 3-8 % slower, and at 3 and 4 bits the fold above and quadDot + haddPairs stay ahead (docs/KERNELS.md).
INNERQ_INLINE __m256i pairDotHadd(const __m256i ca[4], const __m256i cc[4], const __m256i* a) {
  return _mm256_madd_epi16(_mm256_hadd_epi16(quadSums16(ca, a), quadSums16(cc, a)), _mm256_set1_epi16(1));
}

// The 8 (token, block) dot products of a token pair's quads, in lanePerm<BITS, kFoldKeys<BITS>> order, by the
// reduction that measured fastest at each width.
template <int BITS>
INNERQ_INLINE __m256i keyPairDots(const __m256i ca[4], const __m256i cc[4], const __m256i* a) {
  if (kFoldKeys<BITS>) return pairDot(ca, cc, a);
  if (BITS == 2) return pairDotHadd(ca, cc, a);
  return haddPairs(quadDot(ca, a), quadDot(cc, a));
}

// Joins two float vectors in pairDot's lane order (per 128-bit half: A and B of one block, then of the next): per
// half [x's A, x's B, y's A, y's B], each summed over the half's two blocks.
inline __m256 joinPairs(__m256 x, __m256 y) {
  const __m256d xd = _mm256_castps_pd(x), yd = _mm256_castps_pd(y);
  return _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(xd, yd)), _mm256_castpd_ps(_mm256_unpackhi_pd(xd, yd)));
}

// What the key kernel derives from the query once per run (as the avx512 table does; it used to be rebuilt for every
// 256-token page): quad qd's activation vectors (lane L = codes 8k..8k+7 of slice
// 4qd + blockOrder(L)), and per lanePerm lane the slice's sigma, sigmaSum and symmetric start -2^(b-1) * Σ q.
template <int BITS, bool FOLD, int R, int D>
struct KeyQueryAvx2 {
  static constexpr int NQ = D / 128;
  alignas(32) int8_t act[R][NQ][4][32];
  alignas(32) float sigma[R][NQ][8], sigmaSum[R][NQ][8];
  alignas(32) int32_t start[R][NQ][8];
  void build(const I8Set& q) {
    for (int h = 0; h < R; h++)
      for (int qd = 0; qd < NQ; qd++) {
        for (int k = 0; k < 4; k++)
          for (int L = 0; L < 4; L++)
            std::memcpy(&act[h][qd][k][8 * L], q.q + h * q.ldq + (4 * qd + blockOrder<BITS>(L)) * 32 + 8 * k, 8);
        for (int i = 0; i < 8; i++) {
          const int g = 4 * qd + lanePerm<BITS, FOLD>(i) % 4;
          sigma[h][qd][i] = q.sigma[h * q.lds + g];
          sigmaSum[h][qd][i] = q.sigmaSum[h * q.lds + g];
          int sum = 0;
          for (int e = 0; e < 32; e++) sum += q.q[h * q.ldq + g * 32 + e];
          start[h][qd][i] = -avxSymOffset(BITS) * sum;
        }
      }
  }
};

// Keys, 8 tokens (rows t = 0..7 at codes + t*ROW, scales sc + t*n, zeros zr + t*n), processed as 4 token pairs: per
// pair and quad of groups one hadd (or pairDot) gives the 8 (token, group) dot products; the pairs' float sums are
// joined by a small tree into s[h*lds + t], t < cnt.
// Symmetric-only matrices (ZEROS = false) have bz = -2^(b-1) * a, so a*sigma*D + bz*sigmaSum = a*sigma*(D - 2^(b-1)*S)
// with S the integer sum of the query slice's codes: the offset is added to D as an integer (any ALU port) instead
// of a second FMA per head and token pair (the FMA/multiply ports are this kernel's bottleneck). Their scales have
// clear sign bits, so they convert without the hybrid decoding.
template <int BITS, bool ZEROS, int R, int D>
inline void keyTokens8(const uint8_t* codes, const uint16_t* sc, const uint16_t* zr, const KeyQueryAvx2<BITS, kFoldKeys<BITS>, R, D>& kq,
                       float* s, size_t lds, int cnt) {
  constexpr int n = D / 32, NQ = D / 128, ROW = n * avxBlockBytes(BITS), QB = 4 * avxBlockBytes(BITS);
  constexpr bool FOLD = kFoldKeys<BITS>;
  const __m128i hperm = halfPermMask<BITS, FOLD>();
  const float off = (float)avxSymOffset(BITS);
  // pair p's float sums in lanePerm order: [ta L0, ta L1, tc L0, tc L1 | ta L2, ta L3, tc L2, tc L3], or with FOLD
  // [ta L0, tc L0, ta L1, tc L1 | ta L2, tc L2, ta L3, tc L3] (L: blockOrder)
  auto pairSums = [&](int p, __m256* acc) INNERQ_INLINE_LAMBDA {
    const int ta = 2 * p, tc = 2 * p + 1;
    for (int qd = 0; qd < NQ; qd++) {
      // the pair's 4 + 4 scales (and zeros) of this quad: one 16-byte load when the rows are 4 groups long
      auto pairHalves = [&](const uint16_t* x) {
        const __m128i v = NQ == 1 ? _mm_loadu_si128((const __m128i*)(x + ta * n))
                                  : _mm_unpacklo_epi64(_mm_loadl_epi64((const __m128i*)(x + ta * n + 4 * qd)),
                                                       _mm_loadl_epi64((const __m128i*)(x + tc * n + 4 * qd)));
        return _mm_shuffle_epi8(v, hperm);
      };
      __m256 a, bz;
      if (ZEROS)
        params8(pairHalves(sc), zr, pairHalves(zr), off, a, bz);
      else
        a = bz = _mm256_cvtph_ps(pairHalves(sc));
      __m256i ca[4], cc[4];
      loadQuad<BITS>(codes + ta * ROW + qd * QB, ca);
      loadQuad<BITS>(codes + tc * ROW + qd * QB, cc);
      for (int h = 0; h < R; h++) {
        const __m256i* A = (const __m256i*)kq.act[h][qd];
        __m256i Di = keyPairDots<BITS>(ca, cc, A);
        if (!ZEROS) Di = _mm256_add_epi32(Di, _mm256_load_si256((const __m256i*)kq.start[h][qd]));
        const __m256 x = _mm256_mul_ps(_mm256_cvtepi32_ps(Di), _mm256_load_ps(kq.sigma[h][qd]));
        acc[h] = qd == 0 ? _mm256_mul_ps(a, x) : _mm256_fmadd_ps(a, x, acc[h]);
        if (ZEROS) acc[h] = _mm256_fmadd_ps(bz, _mm256_load_ps(kq.sigmaSum[h][qd]), acc[h]);
      }
    }
  };
  // pairs (0, 1) and (2, 3) are joined as soon as both exist, so that few vectors stay live
  __m256 u[R] = {}, v[R] = {}, y01[R], y23[R];  // (initialised: GCC cannot see that pairSums sets them)
  pairSums(0, u);
  pairSums(1, v);
  for (int h = 0; h < R; h++) y01[h] = FOLD ? joinPairs(u[h], v[h]) : haddPairs(u[h], v[h]);
  pairSums(2, u);
  pairSums(3, v);
  for (int h = 0; h < R; h++) y23[h] = FOLD ? joinPairs(u[h], v[h]) : haddPairs(u[h], v[h]);
  for (int h = 0; h < R; h++) {
    const __m256 res = _mm256_add_ps(_mm256_permute2f128_ps(y01[h], y23[h], 0x20), _mm256_permute2f128_ps(y01[h], y23[h], 0x31));
    storeLeading(s + h * lds, res, cnt);
  }
}

// Page slots [t0, t1) of one page; s[h*lds + (t - t0)]. Prefetches ~3 KiB of codes ahead (the kernel is compute-heavy
// enough that the hardware streamer alone leaves DRAM latency exposed between bursts), on into the next page of the
// walk at the end of this one. The tail (< 8 tokens), and for 3 bits the last 8 rows (loadQuad<3> reads 4 bytes past
// a row's last quad), run on copies of the rows.
template <int BITS, bool ZEROS, int R, int D>
void keysPageAvx2(const QuantRef& m, int t0, int t1, const KeyQueryAvx2<BITS, kFoldKeys<BITS>, R, D>& kq, float* s, size_t lds) {
  constexpr int n = D / 32, ROW = n * avxBlockBytes(BITS);
  constexpr int kAhead = 3072 / ROW / 8 * 8 < 16 ? 16 : 3072 / ROW / 8 * 8;
  const int direct = BITS == 3 ? t1 - 8 : t1;  // 8-token steps that may read the rows in place
  int tb = t0;
  for (; tb + 8 <= direct; tb += 8) {
    if (tb + kAhead < t1)
      prefetchKeyRowsOf<Prefetch::L1, ZEROS, ROW, n>(m.codes, m.scales, m.zeros, (size_t)tb + kAhead, 8);
    else if (m.nextCodes)
      prefetchKeyRowsOf<Prefetch::L1, ZEROS, ROW, n>(m.nextCodes, m.nextScales, m.nextZeros, (size_t)(tb + kAhead - t1), 8);
    keyTokens8<BITS, ZEROS, R, D>(m.codes + (size_t)tb * ROW, m.scales + (size_t)tb * n,
                                  ZEROS ? m.zeros + (size_t)tb * n : nullptr, kq, s + (tb - t0), lds, 8);
  }
  for (; tb < t1; tb += 8) {  // copies of the rows, the missing ones repeating the last token (results not stored)
    const int cnt = t1 - tb < 8 ? t1 - tb : 8;
    alignas(32) uint8_t rows[8 * ROW + 32];
    alignas(32) uint16_t sc[8 * n], zr[8 * n];
    copyKeyRows<ZEROS, ROW, n>(m, tb, cnt, rows, sc, zr);
    keyTokens8<BITS, ZEROS, R, D>(rows, sc, zr, kq, s + (tb - t0), lds, cnt);
  }
}

template <int BITS, bool ZEROS, int R, int D>
void scoresRowFast(const QuantRun& m, int t0, int t1, const I8Set& q, float* s, size_t lds) {
  KeyQueryAvx2<BITS, kFoldKeys<BITS>, R, D> kq;
  kq.build(q);
  forEachRunPage(m, t0, t1, [&](int, const QuantRef& page, int s0, int s1, int offset) {
    keysPageAvx2<BITS, ZEROS, R, D>(page, s0, s1, kq, s + offset, lds);
  });
}

// Values: per token group, 8 channels per step (two quads of consecutive channel blocks); the probability
// slice's 8-token pieces are broadcast to every lane. Accumulates into accMem ([R][d], lanePerm order within each
// 8 channels). Prefetches the token group after next (codes, scales, zeros), on into the next page of the walk.
template <int BITS, int R>
void valuesPageAvx2(const QuantRef& m, int d, int pageGroups, int g0, int g1, const U8Set& p, float* accMem) {
  constexpr int bb = avxBlockBytes(BITS);
  const __m128i hperm = halfPermMask<BITS, false>();
  const float off = (float)avxSymOffset(BITS);
  alignas(32) int64_t act[R][4][4];
  // 3 bits: loadQuad<3> reads 4 bytes past a quad, so the range's last quad (group g1 - 1, channels d - 4 .. d - 1)
  // is read from a copy; every other quad is followed by one this call reads anyway.
  alignas(32) uint8_t lastQuad[4 * bb + 16] = {};
  const uint8_t* lastQuadAt = m.codes + ((size_t)g1 * d - 4) * bb;
  if (BITS == 3 && g1 > g0) std::memcpy(lastQuad, lastQuadAt, 4 * bb);
  for (int tg = g0; tg < g1; tg++) {
    const int ahead = tg + 2;
    const bool here = ahead < pageGroups;  // else group ahead - pageGroups of the next page, if the walk goes on
    const uint8_t* pc = here ? m.codes : m.nextCodes;
    if (pc) {
      const size_t gi = (size_t)(here ? ahead : ahead - pageGroups) * d;
      const uint16_t* ps = here ? m.scales : m.nextScales;
      const uint16_t* pz = here ? m.zeros : m.nextZeros;
      for (int o = 0; o < d * bb; o += 64) prefetchLine<Prefetch::L1>((const char*)(pc + gi * bb + o));
      for (int o = 0; o < d; o += 32) {
        prefetchLine<Prefetch::L1>((const char*)(ps + gi + o));
        if (pz) prefetchLine<Prefetch::L1>((const char*)(pz + gi + o));
      }
    }
    for (int h = 0; h < R; h++)
      for (int k = 0; k < 4; k++) {
        int64_t w;
        std::memcpy(&w, p.q + h * p.ldq + tg * 32 + 8 * k, 8);
        act[h][k][0] = act[h][k][1] = act[h][k][2] = act[h][k][3] = w;
      }
    __m256 sig[R], sigS[R];
    for (int h = 0; h < R; h++) {
      sig[h] = _mm256_broadcast_ss(p.sigma + h * p.lds + tg);
      sigS[h] = _mm256_broadcast_ss(p.sigmaSum + h * p.lds + tg);
    }
    for (int jb = 0; jb < d; jb += 8) {
      const size_t gi = (size_t)tg * d + jb;
      const __m128i sc = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i*)(m.scales + gi)), hperm);
      const __m128i zc = m.zeros ? _mm_shuffle_epi8(_mm_loadu_si128((const __m128i*)(m.zeros + gi)), hperm) : _mm_setzero_si128();
      __m256 a, bz;
      params8(sc, m.zeros, zc, off, a, bz);
      __m256i ca[4], cc[4];
      loadQuad<BITS>(m.codes + gi * bb, ca);
      loadQuad<BITS>(BITS == 3 && m.codes + (gi + 4) * bb == lastQuadAt ? lastQuad : m.codes + (gi + 4) * bb, cc);
      for (int h = 0; h < R; h++) {
        const __m256i* A = (const __m256i*)act[h];
        const __m256 D = _mm256_cvtepi32_ps(haddPairs(quadDotU8(ca, A), quadDotU8(cc, A)));
        float* o = accMem + h * d + jb;
        __m256 x = _mm256_load_ps(o);
        x = _mm256_fmadd_ps(a, _mm256_mul_ps(D, sig[h]), x);
        x = _mm256_fmadd_ps(bz, sigS[h], x);
        _mm256_store_ps(o, x);
      }
    }
  }
}

// Run token groups [g0, g1): one accumulator block for the whole run (zeroed, and un-permuted into out, once per run
// instead of once per 256-token page: r x d floats each time).
template <int BITS, int R>
void wsumColFast(const QuantRun& m, int d, int g0, int g1, const U8Set& p, float* out) {
  alignas(32) float acc[R * kMaxHeadDim];
  std::memset(acc, 0, sizeof(float) * R * d);
  const int pageGroups = m.pageTokens / 32;
  forEachRunPage(m, g0 * 32, g1 * 32, [&](int i, const QuantRef& page, int s0, int s1, int) {
    valuesPageAvx2<BITS, R>(page, d, pageGroups, s0 / 32, s1 / 32, pageWeights(p, i, m.pageTokens), acc);
  });
  for (int h = 0; h < R; h++)
    for (int jb = 0; jb < d; jb += 8)
      for (int i = 0; i < 8; i++) out[h * d + jb + lanePerm<BITS, false>(i)] += acc[h * d + jb + i];
}

template <int BITS>
void wsumColFastR(const QuantRun& m, int d, int g0, int g1, const U8Set& p, int r, float* out) {
  withHeadCount(r, [&](auto R) { wsumColFast<BITS, decltype(R)::value>(m, d, g0, g1, p, out); });
}

// The one dispatch point of the InnerQ integer kernels: G = 32 at 2, 3 and 4 bits (keys: d = 128 or 256) take the
// fast paths above, everything else the generic page kernels.
template <int BITS>
void scoresRowFastB(const QuantRun& m, int d, int t0, int t1, const I8Set& q, int r, float* s, size_t lds) {
  withKeyShape(m, d, r, [&](auto Z, auto D, auto R) {
    scoresRowFast<BITS, decltype(Z)::value, decltype(R)::value, decltype(D)::value>(m, t0, t1, q, s, lds);
  });
}

void scoresRowI8(const QuantRun& m, const MatrixFormat& f, int d, int t0, int t1, const I8Set& q, int r, float* s,
                 size_t lds) {
  if (f.groupSize == 32 && (d == 128 || d == 256)) {
    if (f.bits == 2) return scoresRowFastB<2>(m, d, t0, t1, q, r, s, lds);
    if (f.bits == 3) return scoresRowFastB<3>(m, d, t0, t1, q, r, s, lds);
    if (f.bits == 4) return scoresRowFastB<4>(m, d, t0, t1, q, r, s, lds);
  }
  scoresRowI8ByPage<scoresRowI8Page>(m, f, d, t0, t1, q, r, s, lds);
}

void wsumColI8(const QuantRun& m, const MatrixFormat& f, int d, int g0, int g1, const U8Set& p, int r, float* out) {
  if (f.groupSize == 32) {
    if (f.bits == 2) return wsumColFastR<2>(m, d, g0, g1, p, r, out);
    if (f.bits == 3) return wsumColFastR<3>(m, d, g0, g1, p, r, out);
    if (f.bits == 4) return wsumColFastR<4>(m, d, g0, g1, p, r, out);
  }
  wsumColI8ByPage<wsumColI8Page>(m, f, d, g0, g1, p, r, out);
}

// ---------------------------------------------------------------------------------------------------------
// Softmax numerator and u8 weights. Per kv head of a decode step they touch r x T floats; at 16k tokens on Zen 3 the
// previous versions (a Taylor exp of degree 7, and softmaxExp then quantizeU8 as four passes over the row) took 12 %
// of an InnerQ step (perf, `innerq` preset).
//
// exp(x) for x <= 0 (scores minus their maximum), relative error <= 2.1e-7, in 12 ops; the same construction as
// kernels_avx512.cpp's exp512 (which derives it in full):
//   t = x*log2(e) + 1.5*2^23 rounds x*log2(e) to the nearest integer n in the low mantissa bits of t, n = t - 1.5*2^23;
//   r = x - n*ln2 in two Cody-Waite steps (0.693359375 has 10 significant bits: n*0.693359375 is exact), |r| <= ln2/2;
//   e^r by a degree-5 polynomial fitted to the relative error on [-ln2/2, ln2/2] (7.5e-8 exact, 2.1e-7 in float);
//   2^n by adding bits(t) << 23 (== n << 23 mod 2^32, as 0x4B400000 << 23 overflows to 0) to the exponent field,
//   valid while the result stays normal: for x > -86, n >= -124. At or below -86 (e^-86 ~ 4e-38, nothing next to
//   the row maximum's weight 1), and for -inf (masked tails), the result is 0.
inline __m256 exp256(__m256 x) {
  const __m256 live = _mm256_cmp_ps(x, _mm256_set1_ps(kExpFloor), _CMP_GT_OQ);
  const __m256 magic = _mm256_set1_ps(kExpMagic);
  const __m256 t = _mm256_fmadd_ps(x, _mm256_set1_ps(kExpLog2e), magic);
  const __m256 n = _mm256_sub_ps(t, magic);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kExpLn2Hi), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kExpLn2Lo), r);
  __m256 y = _mm256_set1_ps(kExpPoly[0]);
  for (int i = 1; i < 6; i++) y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(kExpPoly[i]));
  const __m256i e = _mm256_add_epi32(_mm256_castps_si256(y), _mm256_slli_epi32(_mm256_castps_si256(t), 23));
  return _mm256_and_ps(live, _mm256_castsi256_ps(e));
}

inline float hmax(__m256 v) {
  __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_max_ps(x, _mm_movehl_ps(x, x));
  return _mm_cvtss_f32(_mm_max_ss(x, _mm_movehdup_ps(x)));
}

// 32 codes in [0, 255], as int32 in c[0..3] (elements 0-7, 8-15, ...), stored as bytes at q. The packs interleave
// the 128-bit lanes; the dword permutation (0,4,1,5,2,6,3,7) restores element order.
INNERQ_INLINE void storeCodesU8(const __m256i c[4], uint8_t* q) {
  const __m256i w = _mm256_packus_epi16(_mm256_packs_epi32(c[0], c[1]), _mm256_packs_epi32(c[2], c[3]));
  _mm256_storeu_si256((__m256i*)q, _mm256_permutevar8x32_epi32(w, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
}

// One 32-slice of quantizeU8, from registers: stores the codes at q, leaves them as int32 in c, returns sigma.
// Same formulas as the portable path: sigma = max/255, codes = round_half_even(x * (255/max)) in [0, 255]; below
// 1e-36 the slice counts as zero (see quantizeI8).
INNERQ_INLINE float quantizeSliceU8(const __m256 v[4], uint8_t* q, __m256i c[4]) {
  const float m = hmax(_mm256_max_ps(_mm256_max_ps(v[0], v[1]), _mm256_max_ps(v[2], v[3])));
  const bool tiny = !(m > 1e-36f);
  const float sg = tiny ? 0.0f : m / 255.0f, inv = tiny ? 0.0f : 255.0f / m;
  const __m256 iv = _mm256_set1_ps(inv);
  for (int i = 0; i < 4; i++) {
    c[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], iv));
    c[i] = _mm256_max_epi32(_mm256_min_epi32(c[i], _mm256_set1_epi32(255)), _mm256_setzero_si256());
  }
  storeCodesU8(c, q);
  return sg;
}

// The first k (0..8) lanes of s, the others -inf.
inline __m256 loadLeading(const float* s, int k) {
  alignas(32) static const int32_t kOnes[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  const __m256i m = _mm256_loadu_si256((const __m256i*)(kOnes + 8 - k));
  return _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), _mm256_maskload_ps(s, m), _mm256_castsi256_ps(m));
}

inline double hsumPd(__m256 v) {  // the 8 float lanes summed in double
  const __m256d d = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
  __m128d x = _mm_add_pd(_mm256_castpd256_pd128(d), _mm256_extractf128_pd(d, 1));
  return _mm_cvtsd_f64(_mm_add_sd(x, _mm_unpackhi_pd(x, x)));
}

// Maximum of s[a, b) into mv; two chains hide the max latency.
inline __m256 maxRange(const float* s, int a, int b, __m256 mv) {
  __m256 mv2 = mv;
  int i = a;
  for (; i + 16 <= b; i += 16) {
    mv = _mm256_max_ps(mv, _mm256_loadu_ps(s + i));
    mv2 = _mm256_max_ps(mv2, _mm256_loadu_ps(s + i + 8));
  }
  for (; i + 8 <= b; i += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(s + i));
  if (i < b) mv = _mm256_max_ps(mv, loadLeading(s + i, b - i));
  return _mm256_max_ps(mv, mv2);
}

// s[i] <- exp(s[i] - max) for i in [a, b); returns the sum: float lanes over blocks of 256 elements (32 terms per
// lane), double across blocks, so that the denominator stays accurate to ~1e-7 even at 10^5 tokens.
inline double expStoreRange(float* s, int a, int b, __m256 m8) {
  double total = 0;
  int i = a;
  while (i + 8 <= b) {
    __m256 sum = _mm256_setzero_ps(), sum2 = sum;
    const int end = b - i >= 256 ? i + 256 : b;
    for (; i + 16 <= end; i += 16) {
      const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(s + i), m8));
      const __m256 f = exp256(_mm256_sub_ps(_mm256_loadu_ps(s + i + 8), m8));
      _mm256_storeu_ps(s + i, e);
      _mm256_storeu_ps(s + i + 8, f);
      sum = _mm256_add_ps(sum, e);
      sum2 = _mm256_add_ps(sum2, f);
    }
    if (i + 8 <= end) {
      const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(s + i), m8));
      _mm256_storeu_ps(s + i, e);
      sum = _mm256_add_ps(sum, e);
      i += 8;
    }
    total += hsumPd(_mm256_add_ps(sum, sum2));
  }
  if (i < b) {  // the tail through -inf lanes (exp256 gives 0 there)
    alignas(32) float e[8];
    _mm256_store_ps(e, exp256(_mm256_sub_ps(loadLeading(s + i, b - i), m8)));
    for (int k = 0; i + k < b; k++) {
      s[i + k] = e[k];
      total += e[k];
    }
  }
  return total;
}

float softmaxExp(float* s, int n, float* maxOut) {
  const float mx = hmax(maxRange(s, 0, n, _mm256_set1_ps(-INFINITY)));
  *maxOut = mx;
  return (float)expStoreRange(s, 0, n, _mm256_set1_ps(mx));
}

void quantizeI8(const float* x, int n, int8_t* q, float* sigma, float* sigmaSum) {
  const __m256 absMask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  for (int k = 0; k < n / 32; k++) {
    const float* xs = x + k * 32;
    __m256 v[4];
    for (int i = 0; i < 4; i++) v[i] = _mm256_loadu_ps(xs + 8 * i);
    __m256 mv = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v[0], absMask), _mm256_and_ps(v[1], absMask)),
                              _mm256_max_ps(_mm256_and_ps(v[2], absMask), _mm256_and_ps(v[3], absMask)));
    const float m = hmax(mv);
    // Same formulas as the portable path: sigma = max/127, codes = round_half_even(x * (127/max)).
    // A slice whose max is below 1e-36 counts as zero: 127/m would overflow to Inf, and 0*Inf = NaN made
    // (int)NaN codes (undefined behaviour; UBSan in scripts/asan.sh). Exp weights that small contribute nothing.
    const bool tiny = !(m > 1e-36f);
    const float sg = tiny ? 0.0f : m / 127.0f, inv = tiny ? 0.0f : 127.0f / m;
    const __m256 iv = _mm256_set1_ps(inv);
    __m256i c[4];
    for (int i = 0; i < 4; i++) {
      c[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], iv));  // |x*inv| <= 127 (+1 ulp) rounds into [-127, 127]
      c[i] = _mm256_max_epi32(_mm256_min_epi32(c[i], _mm256_set1_epi32(127)), _mm256_set1_epi32(-127));
    }
    // packs interleave the 128-bit lanes; the dword permutation (0,4,1,5,2,6,3,7) restores element order.
    const __m256i w = _mm256_packs_epi16(_mm256_packs_epi32(c[0], c[1]), _mm256_packs_epi32(c[2], c[3]));
    _mm256_storeu_si256((__m256i*)(q + k * 32), _mm256_permutevar8x32_epi32(w, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    const __m256i sv = _mm256_add_epi32(_mm256_add_epi32(c[0], c[1]), _mm256_add_epi32(c[2], c[3]));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sv), _mm256_extracti128_si256(sv, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
    sigma[k] = sg;
    sigmaSum[k] = sg * (float)_mm_cvtsi128_si32(s4);
  }
}

void quantizeU8(const float* x, int n, uint8_t* q, float* sigma, float* sigmaSum) {
  for (int k = 0; k < n / 32; k++) {
    const float* xs = x + k * 32;
    __m256 v[4];
    for (int i = 0; i < 4; i++) v[i] = _mm256_loadu_ps(xs + 8 * i);
    __m256i c[4];
    const float sg = quantizeSliceU8(v, q + k * 32, c);
    const __m256i sv = _mm256_add_epi32(_mm256_add_epi32(c[0], c[1]), _mm256_add_epi32(c[2], c[3]));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sv), _mm256_extracti128_si256(sv, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
    sigma[k] = sg;
    sigmaSum[k] = sg * (float)_mm_cvtsi128_si32(s4);
  }
}

// Lane j of the result = op-reduction of the 8 lanes of v[j]: a transposing tree (8 -> 4 -> 2 -> 1 partial lanes
// per input, 7 combine steps and one permute) instead of 8 horizontal reductions of ~4 dependent shuffles each.
template <class OP>
inline __m256 reduceTranspose8(const __m256* v, OP op) {
  __m256 z[4], w[2];
  for (int i = 0; i < 4; i++)  // z[i] = [v[2i] folded to 4 lanes | v[2i+1] folded to 4 lanes]
    z[i] = op(_mm256_permute2f128_ps(v[2 * i], v[2 * i + 1], 0x20), _mm256_permute2f128_ps(v[2 * i], v[2 * i + 1], 0x31));
  for (int i = 0; i < 2; i++)  // w[i] = [v[4i], v[4i+2] folded to 2 lanes each | v[4i+1], v[4i+3]]
    w[i] = op(_mm256_shuffle_ps(z[2 * i], z[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
              _mm256_shuffle_ps(z[2 * i], z[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  // t = [v0, v2, v4, v6 | v1, v3, v5, v7]: lane j of the result is lane j/2 + 4*(j%2) of t
  const __m256 t = op(_mm256_shuffle_ps(w[0], w[1], _MM_SHUFFLE(2, 0, 2, 0)), _mm256_shuffle_ps(w[0], w[1], _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm256_permutevar8x32_ps(t, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// softmaxExp with the u8 quantizer fused in for s[qa, qa + qn) (contract in cpu_kernels.h), as the avx512 table
// does: one pass for the row maximum that also leaves each quantized slice's score maximum (in sigma, 8 slices per
// transposing reduction), and one pass that exponentiates and quantizes in registers. A slice's largest weight is
// exp(slice max - max), computed once per slice: the value quantizeU8 finds by scanning the exponentiated slice
// (exp256 of the same input); the codes are round(e * (255 / that)), clamped to 255: quantizeU8's formula.
float softmaxExpU8(float* s, int n, int qa, int qn, float* maxOut, uint8_t* q, float* sigma, float* sigmaSum) {
  const auto vmax = [](__m256 a, __m256 b) { return _mm256_max_ps(a, b); };
  const float* x = s + qa;
  const int slices = qn / 32;
  auto sliceMax = [&](int k) {
    const float* xs = x + 32 * k;
    return _mm256_max_ps(_mm256_max_ps(_mm256_loadu_ps(xs), _mm256_loadu_ps(xs + 8)),
                         _mm256_max_ps(_mm256_loadu_ps(xs + 16), _mm256_loadu_ps(xs + 24)));
  };
  __m256 mv = maxRange(s, qa + qn, n, maxRange(s, 0, qa, _mm256_set1_ps(-INFINITY)));
  int k = 0;
  for (; k + 8 <= slices; k += 8) {
    __m256 m[8];
    for (int j = 0; j < 8; j++) m[j] = sliceMax(k + j);
    const __m256 sm = reduceTranspose8(m, vmax);
    _mm256_storeu_ps(sigma + k, sm);
    mv = _mm256_max_ps(mv, sm);
  }
  for (; k < slices; k++) {
    sigma[k] = hmax(sliceMax(k));
    mv = _mm256_max_ps(mv, _mm256_set1_ps(sigma[k]));
  }
  const float mx = hmax(mv);
  *maxOut = mx;
  const __m256 m8 = _mm256_set1_ps(mx);
  double total = expStoreRange(s, 0, qa, m8) + expStoreRange(s, qa + qn, n, m8);
  const __m256i c255 = _mm256_set1_epi32(255);
  // One slice: weights exp(x - mx) quantized with inv = 255 / (slice's largest weight) and stored as 32 codes;
  // returns the code sums per lane, adds the weights to sum.
  auto slice = [&](const float* xs, __m256 inv, uint8_t* qs, __m256& sum) INNERQ_INLINE_LAMBDA {
    __m256 e[4];
    __m256i c[4];
    for (int i = 0; i < 4; i++) {
      e[i] = exp256(_mm256_sub_ps(_mm256_loadu_ps(xs + 8 * i), m8));
      c[i] = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(e[i], inv)), c255);  // e >= 0: no lower clamp
    }
    sum = _mm256_add_ps(sum, _mm256_add_ps(_mm256_add_ps(e[0], e[1]), _mm256_add_ps(e[2], e[3])));
    storeCodesU8(c, qs);
    return _mm256_add_epi32(_mm256_add_epi32(c[0], c[1]), _mm256_add_epi32(c[2], c[3]));
  };
  k = 0;
  for (; k + 8 <= slices; k += 8) {
    const __m256 top = exp256(_mm256_sub_ps(_mm256_loadu_ps(sigma + k), m8));  // each slice's largest weight
    // below 1e-36 a slice counts as zero, as in quantizeU8; the divisions are the scalar path's
    const __m256 ok = _mm256_cmp_ps(top, _mm256_set1_ps(1e-36f), _CMP_GT_OQ);
    const __m256 sg = _mm256_and_ps(ok, _mm256_div_ps(top, _mm256_set1_ps(255.0f)));
    alignas(32) float inv[8];
    _mm256_store_ps(inv, _mm256_and_ps(ok, _mm256_div_ps(_mm256_set1_ps(255.0f), top)));
    __m256i sums[8];
    __m256 sum = _mm256_setzero_ps();
    for (int j = 0; j < 8; j++) sums[j] = slice(x + 32 * (k + j), _mm256_broadcast_ss(inv + j), q + 32 * (k + j), sum);
    _mm256_storeu_ps(sigma + k, sg);
    // code sums <= 32 * 255: exact as floats, so sigmaSum = sigma * (float)Σ codes exactly as quantizeU8's
    _mm256_storeu_ps(sigmaSum + k, _mm256_mul_ps(sg, _mm256_cvtepi32_ps(hsum8(sums))));
    total += hsumPd(sum);
  }
  for (; k < slices; k++) {
    alignas(32) float top[8];
    _mm256_store_ps(top, exp256(_mm256_set1_ps(sigma[k] - mx)));
    const bool tiny = !(top[0] > 1e-36f);
    const float sg = tiny ? 0.0f : top[0] / 255.0f, inv = tiny ? 0.0f : 255.0f / top[0];
    __m256 sum = _mm256_setzero_ps();
    const __m256i cs = slice(x + 32 * k, _mm256_set1_ps(inv), q + 32 * k, sum);
    alignas(32) int32_t c8[8];
    _mm256_store_si256((__m256i*)c8, cs);
    int codes = 0;
    for (int i = 0; i < 8; i++) codes += c8[i];
    sigma[k] = sg;
    sigmaSum[k] = sg * (float)codes;
    total += hsumPd(sum);
  }
  return (float)total;
}

// ---------------------------------------------------------------------------------------------------------
// KIVI-style baselines, integer paths (contracts in cpu_kernels.h). Outer grouping puts a different scale on every
// (channel, token group) of the keys and every (token, channel group) of the values, so no scale factors out of a
// token's dot product; what the layout does allow is folding the scale into the activation once per group and
// re-quantizing that activation to 8 bits, after which the codes meet the same maddubs integer dot products as
// InnerQ's. Two prices remain that inner grouping does not pay: the fold + re-quantization per group (keys: d x r
// products and r quantizations per token group, i.e. per G tokens; values: r weights per token and channel group),
// and an interleave, because maddubs sums ADJACENT byte pairs and the layout's adjacent codes are the wrong pair
// (keys: consecutive tokens of one channel, but the dot product runs over channels; values: consecutive channels
// of one token, but the sum runs over tokens): two vpunpck per pair of code vectors, shared by all heads.
//
// 8-bit codes stay on the float paths below (scale folded into the query for keys, one dequantized L1 tile shared by
// the heads for values): maddubs would saturate (2*255*127 > 32767 for keys, 2*255*128 for centered values), and
// the widened int16 + madd variant measured 1.1-1.3x SLOWER than float here (the codes are bytes either way, so the
// integer path saves no unpacking, and it adds the fold and re-quantization).

// KIVI-style keys (kColGrouped), 8-bit float path. Per token group: fold q~[h][j] = q[h][j]*a[j], c[h] = Σ_j q[h][j]*bz[j]
// (vectorised over channels). Then per 32-token block and 16-token half: for every channel, convert 16 codes
// to float and FMA them with broadcast q~[h][j] into 2 x HB register accumulators (16 tokens x HB heads).
inline void codesToFloat16(__m256i c, int half, __m256& f0, __m256& f1) {
  const __m128i x = half ? _mm256_extracti128_si256(c, 1) : _mm256_castsi256_si128(c);
  f0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(x));
  f1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(x, 8)));
}

template <int BITS, int HB>
void colKeysPass(const uint8_t* codes, int d, int gb, int sl, int bb, const float* qt, const float* c, float* s,
                 size_t lds) {
  for (int half = 0; half < 2; half++) {
    __m256 acc[HB][2];
    for (int h = 0; h < HB; h++) acc[h][0] = acc[h][1] = _mm256_set1_ps(c[h]);
    for (int j = 0; j < d; j++) {
      __m256 f0, f1;
      codesToFloat16(unpack32<BITS>(codes + (size_t)j * gb + (size_t)sl * bb), half, f0, f1);
      for (int h = 0; h < HB; h++) {
        const __m256 w = _mm256_broadcast_ss(qt + h * kMaxHeadDim + j);
        acc[h][0] = _mm256_fmadd_ps(w, f0, acc[h][0]);
        acc[h][1] = _mm256_fmadd_ps(w, f1, acc[h][1]);
      }
    }
    for (int h = 0; h < HB; h++) {
      _mm256_storeu_ps(s + h * lds + sl * 32 + half * 16, acc[h][0]);
      _mm256_storeu_ps(s + h * lds + sl * 32 + half * 16 + 8, acc[h][1]);
    }
  }
}

template <int BITS>
void scoresColFT(const QuantRef& m, const MatrixFormat& f, int d, int g0, int g1, const float* q, int r, float* s,
                 size_t lds) {
  const int G = f.groupSize, spg = G / 32, gb = avxGroupBytes(BITS, G), bb = avxBlockBytes(BITS);
  const float off = (float)avxSymOffset(BITS);
  alignas(32) float qt[kMaxHeadBlock * kMaxHeadDim];
  float c[kMaxHeadBlock];
  for (int tg = g0; tg < g1; tg++) {
    const size_t gi0 = (size_t)tg * d;
    foldKeyGroup(m, d, gi0, q, r, off, qt, c);
    const uint8_t* codes = m.codes + gi0 * gb;
    float* sg = s + (size_t)(tg - g0) * G;
    for (int sl = 0; sl < spg; sl++) {
      int h = 0;
      for (; h + 4 <= r; h += 4) colKeysPass<BITS, 4>(codes, d, gb, sl, bb, qt + h * kMaxHeadDim, c + h, sg + h * lds, lds);
      for (; h + 2 <= r; h += 2) colKeysPass<BITS, 2>(codes, d, gb, sl, bb, qt + h * kMaxHeadDim, c + h, sg + h * lds, lds);
      for (; h < r; h++) colKeysPass<BITS, 1>(codes, d, gb, sl, bb, qt + h * kMaxHeadDim, c + h, sg + h * lds, lds);
    }
  }
}

// KIVI-style values (kRowGrouped), 8-bit float path. The scale of a token's channel group varies per token, so folding
// it into p (p~ = p*a) would cost a scalar multiply per (token, group, head); instead each 32-code block is
// dequantized ONCE (x^ = a*u + bz: convert + one FMA per 8 codes) into an L1 tile shared by all r query heads, and
// the heads stream the tile with one FMA per code each, 16 channels x up to 4 heads of accumulators in registers.
template <int HB>
void rowValuesTile(const float* xt, int cnt, const float* p, size_t ldp, float* out /* [HB][32] */) {
  for (int half = 0; half < 2; half++) {
    __m256 acc[HB][2];
    for (int h = 0; h < HB; h++) acc[h][0] = acc[h][1] = _mm256_setzero_ps();
    for (int t = 0; t < cnt; t++) {
      const __m256 x0 = _mm256_load_ps(xt + t * 32 + half * 16), x1 = _mm256_load_ps(xt + t * 32 + half * 16 + 8);
      for (int h = 0; h < HB; h++) {
        const __m256 w = _mm256_broadcast_ss(p + h * ldp + t);
        acc[h][0] = _mm256_fmadd_ps(w, x0, acc[h][0]);
        acc[h][1] = _mm256_fmadd_ps(w, x1, acc[h][1]);
      }
    }
    for (int h = 0; h < HB; h++) {  // tile partials; the caller adds them to out (two-level summation)
      _mm256_storeu_ps(out + h * 2 * 16 + half * 16, acc[h][0]);
      _mm256_storeu_ps(out + h * 2 * 16 + half * 16 + 8, acc[h][1]);
    }
  }
}

template <int BITS>
void wsumRowFT(const QuantRef& m, const MatrixFormat& f, int d, int t0, int t1, const float* p, size_t ldp, int r,
               float* out) {
  constexpr int kTile = 64;
  const int G = f.groupSize, n = d / G, spg = G / 32, gb = avxGroupBytes(BITS, G), bb = avxBlockBytes(BITS);
  const float off = (float)avxSymOffset(BITS);
  alignas(32) float xt[kTile * 32];               // dequantized tile: [token][32 channels]
  alignas(32) float part[kMaxHeadBlock * 32];     // per-head partial sums of the tile for the 32 channels
  for (int tt = t0; tt < t1; tt += kTile) {
    const int cnt = t1 - tt < kTile ? t1 - tt : kTile;
    for (int g = 0; g < n; g++) {
      for (int sl = 0; sl < spg; sl++) {
        for (int t = 0; t < cnt; t++) {
          const size_t gi = (size_t)(tt + t) * n + g;
          const uint16_t sb = m.scales[gi];
          const float a = _cvtsh_ss((uint16_t)(sb & 0x7fff));
          const float bz = (sb & 0x8000) ? _cvtsh_ss(m.zeros[gi]) : -a * off;
          const __m256 av = _mm256_set1_ps(a), bv = _mm256_set1_ps(bz);
          const __m256i c = unpack32<BITS>(m.codes + gi * gb + (size_t)sl * bb);
          const __m128i lo = _mm256_castsi256_si128(c), hi = _mm256_extracti128_si256(c, 1);
          _mm256_store_ps(xt + t * 32, _mm256_fmadd_ps(av, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), bv));
          _mm256_store_ps(xt + t * 32 + 8, _mm256_fmadd_ps(av, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))), bv));
          _mm256_store_ps(xt + t * 32 + 16, _mm256_fmadd_ps(av, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), bv));
          _mm256_store_ps(xt + t * 32 + 24, _mm256_fmadd_ps(av, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))), bv));
        }
        const float* pt = p + (tt - t0);
        int h = 0;
        for (; h + 4 <= r; h += 4) rowValuesTile<4>(xt, cnt, pt + h * ldp, ldp, part + h * 32);
        for (; h + 2 <= r; h += 2) rowValuesTile<2>(xt, cnt, pt + h * ldp, ldp, part + h * 32);
        for (; h < r; h++) rowValuesTile<1>(xt, cnt, pt + h * ldp, ldp, part + h * 32);
        const int ch0 = g * G + sl * 32;
        for (h = 0; h < r; h++)
          for (int j = 0; j < 32; j += 8)
            _mm256_storeu_ps(out + h * d + ch0 + j,
                             _mm256_add_ps(_mm256_loadu_ps(out + h * d + ch0 + j), _mm256_load_ps(part + h * 32 + j)));
      }
    }
  }
}

// int16 accumulators a16[2] of maddubs over byte-pair-interleaved code vectors hold (lo) elements 0-7 | 16-23 and
// (hi) 8-15 | 24-31 of a 32-element block; widen them in element order and add sigma * them to row[0..31].
INNERQ_INLINE void flushPairSums(const __m256i a16[2], __m256 sigma, float* row, __m256 add) {
  const __m256i x[4] = {_mm256_cvtepi16_epi32(_mm256_castsi256_si128(a16[0])),
                        _mm256_cvtepi16_epi32(_mm256_castsi256_si128(a16[1])),
                        _mm256_cvtepi16_epi32(_mm256_extracti128_si256(a16[0], 1)),
                        _mm256_cvtepi16_epi32(_mm256_extracti128_si256(a16[1], 1))};
  for (int i = 0; i < 4; i++)
    _mm256_storeu_ps(row + 8 * i, _mm256_fmadd_ps(sigma, _mm256_cvtepi32_ps(x[i]), _mm256_add_ps(_mm256_loadu_ps(row + 8 * i), add)));
}

// Prefetch `bytes` from p into L1. A KIVI-style kernel asks for its next token group's (keys) or slice's (values)
// codes, scales and zeros while it works on the current one (~2000 cycles of work per 1-1.5 KiB), or, at the end of
// its range, for the first ones of the page the caller visits next (QuantRef::next*), so the DRAM streams stay ahead.
inline void prefetchBytes(const void* p, size_t bytes) {
  for (size_t o = 0; o < bytes; o += 64) prefetchLine<Prefetch::L1>((const char*)p + o);
}

// Keys: one 32-token block of a token group, HB heads. For each 32-channel slice k, channel pairs (j, j+1): the two
// channels' 32 codes interleaved into (token t of j, token t of j+1) byte pairs, one maddubs per head with the
// broadcast int8 pair (qi_j, qi_j+1) gives per token qi_j*u_tj + qi_j+1*u_tj+1 in int16. A pair is at most
// 2*(2^b - 1)*127 (762 / 1778 / 3810 at 2 / 3 / 4 bits), so int16 holds the slice's 16 pairs at 2 and 3 bits
// (12192, 28448) and 8 pairs at 4 (30480): flush every PAIRS pairs. The rows s[h] hold c[h] on entry.
// (Broadcasting the pairs once per token group into an [head][pair] vector table instead, so that maddubs takes a
// memory operand, measured slower: 256 stores per token group at G = 32 cost more than the vpbroadcastw they save.)
template <int BITS, int HB>
void colKeysPassI8(const uint8_t* codes, int d, int gb, const int8_t* qi, const float* sg, float* s, size_t lds) {
  constexpr int PAIRS = BITS == 4 ? 8 : 16;
  for (int k = 0; k < d / 32; k++) {
    for (int j0 = k * 32; j0 < k * 32 + 32; j0 += 2 * PAIRS) {
      __m256i acc[HB][2];
      for (int h = 0; h < HB; h++) acc[h][0] = acc[h][1] = _mm256_setzero_si256();
      for (int j = j0; j < j0 + 2 * PAIRS; j += 2) {
        const __m256i c0 = unpack32<BITS>(codes + (size_t)j * gb), c1 = unpack32<BITS>(codes + (size_t)(j + 1) * gb);
        const __m256i lo = _mm256_unpacklo_epi8(c0, c1), hi = _mm256_unpackhi_epi8(c0, c1);
        for (int h = 0; h < HB; h++) {
          const __m256i w = _mm256_broadcastw_epi16(_mm_loadu_si16(qi + h * kMaxHeadDim + j));
          acc[h][0] = _mm256_add_epi16(acc[h][0], _mm256_maddubs_epi16(lo, w));
          acc[h][1] = _mm256_add_epi16(acc[h][1], _mm256_maddubs_epi16(hi, w));
        }
      }
      for (int h = 0; h < HB; h++) flushPairSums(acc[h], _mm256_broadcast_ss(sg + h * 8 + k), s + h * lds, _mm256_setzero_ps());
    }
  }
}

template <int BITS>
void scoresColI8T(const QuantRef& m, const MatrixFormat& f, int d, int g0, int g1, const float* q, int r, float* s,
                  size_t lds) {
  const int G = f.groupSize, spg = G / 32, gb = avxGroupBytes(BITS, G), bb = avxBlockBytes(BITS);
  const float off = (float)avxSymOffset(BITS);
  alignas(32) float qt[kMaxHeadBlock * kMaxHeadDim];
  alignas(32) int8_t qi[kMaxHeadBlock * kMaxHeadDim];
  float c[kMaxHeadBlock], sg[kMaxHeadBlock * 8], sS[kMaxHeadBlock * 8];
  for (int tg = g0; tg < g1; tg++) {
    const size_t gi0 = (size_t)tg * d;
    const bool last = tg + 1 == g1;  // then the next page's first token group, if the walk goes on there
    if (!last || m.nextCodes) {
      prefetchBytes(last ? m.nextCodes : m.codes + (gi0 + d) * gb, (size_t)d * gb);
      prefetchBytes(last ? m.nextScales : m.scales + gi0 + d, (size_t)d * 2);
      if (m.zeros) prefetchBytes(last ? m.nextZeros : m.zeros + gi0 + d, (size_t)d * 2);
    }
    foldKeyGroup(m, d, gi0, q, r, off, qt, c);  // qt = q*a, c = Σ q*bz
    for (int h = 0; h < r; h++) {
      quantizeI8(qt + h * kMaxHeadDim, d, qi + h * kMaxHeadDim, sg + h * 8, sS + h * 8);
      // centering (contract in cpu_kernels.h): c += off * (Σ_j q~_j - Σ_k sigma_k * Σ_{j in k} qi_j)
      __m256 t = _mm256_setzero_ps();
      for (int j = 0; j < d; j += 8) t = _mm256_add_ps(t, _mm256_load_ps(qt + h * kMaxHeadDim + j));
      float sum = hsum(t), ss = 0;
      for (int k = 0; k < d / 32; k++) ss += sS[h * 8 + k];
      c[h] += off * (sum - ss);
    }
    const uint8_t* codes = m.codes + gi0 * gb;
    float* sgRows = s + (size_t)(tg - g0) * G;
    for (int sl = 0; sl < spg; sl++) {
      for (int h = 0; h < r; h++)
        for (int i = 0; i < 32; i += 8) _mm256_storeu_ps(sgRows + h * lds + sl * 32 + i, _mm256_set1_ps(c[h]));
      const uint8_t* cs = codes + (size_t)sl * bb;
      int h = 0;
      for (; h + 4 <= r; h += 4)
        colKeysPassI8<BITS, 4>(cs, d, gb, qi + h * kMaxHeadDim, sg + h * 8, sgRows + h * lds + sl * 32, lds);
      for (; h + 2 <= r; h += 2) colKeysPassI8<BITS, 2>(cs, d, gb, qi + h * kMaxHeadDim, sg + h * 8, sgRows + h * lds + sl * 32, lds);
      for (; h < r; h++) colKeysPassI8<BITS, 1>(cs, d, gb, qi + h * kMaxHeadDim, sg + h * 8, sgRows + h * lds + sl * 32, lds);
    }
  }
}

void scoresColI8(const QuantRef& m, const MatrixFormat& f, int d, int g0, int g1, const float* q, int r, float* s,
                 size_t lds) {
  switch (f.bits) {
    case 2: return scoresColI8T<2>(m, f, d, g0, g1, q, r, s, lds);
    case 3: return scoresColI8T<3>(m, f, d, g0, g1, q, r, s, lds);
    case 4: return scoresColI8T<4>(m, f, d, g0, g1, q, r, s, lds);
    default: return scoresColFT<8>(m, f, d, g0, g1, q, r, s, lds);  // float: see the 8-bit note above
  }
}

// Values: one 32-channel block of channel group g over one slice of cnt <= 32 tokens, HB heads. Token pairs
// (e, e+1): the two tokens' 32 codes, centered (u - off, signed bytes), interleaved into (token e, token e+1) byte
// pairs per channel; one maddubs per head with the broadcast u8 weight pair (wi_e, wi_e+1) (the unsigned operand)
// gives per channel wi_e*(u_e - off) + wi_e+1*(u_e+1 - off) in int16. |u - off| <= off, so a pair is at most
// 2*255*off (1020 / 2040 / 4080 at 2 / 3 / 4 bits): int16 holds the slice's 16 pairs at 2 and 3 bits (16320, 32640)
// and 8 at 4 (32640). The float term z[h] (Σ p*(bz + a*off)) is added with the first flush.
template <int BITS, int HB>
void rowValuesPassI8(const uint8_t* codes, size_t tokenStride, int cnt, const uint8_t* wi, const float* sg,
                     const float* z, float* out, int d) {
  constexpr int PAIRS = BITS == 4 ? 8 : 16;
  const __m256i offv = _mm256_set1_epi8((char)(1 << (BITS - 1)));
  auto load = [&](int e) INNERQ_INLINE_LAMBDA {  // token e's centered codes; zero past the slice (weight 0 there)
    return e < cnt ? _mm256_sub_epi8(unpack32<BITS>(codes + (size_t)e * tokenStride), offv) : _mm256_setzero_si256();
  };
  bool first = true;
  for (int e0 = 0; e0 < cnt; e0 += 2 * PAIRS) {
    __m256i acc[HB][2];
    for (int h = 0; h < HB; h++) acc[h][0] = acc[h][1] = _mm256_setzero_si256();
    const int e1 = e0 + 2 * PAIRS < cnt ? e0 + 2 * PAIRS : cnt;
    for (int e = e0; e < e1; e += 2) {
      const __m256i a = load(e), b = load(e + 1);
      const __m256i lo = _mm256_unpacklo_epi8(a, b), hi = _mm256_unpackhi_epi8(a, b);
      for (int h = 0; h < HB; h++) {
        const __m256i w = _mm256_broadcastw_epi16(_mm_loadu_si16(wi + h * 32 + e));
        acc[h][0] = _mm256_add_epi16(acc[h][0], _mm256_maddubs_epi16(w, lo));
        acc[h][1] = _mm256_add_epi16(acc[h][1], _mm256_maddubs_epi16(w, hi));
      }
    }
    for (int h = 0; h < HB; h++)
      flushPairSums(acc[h], _mm256_set1_ps(sg[h]), out + h * d, first ? _mm256_set1_ps(z[h]) : _mm256_setzero_ps());
    first = false;
  }
}

template <int BITS>
void wsumRowI8T(const QuantRef& m, const MatrixFormat& f, int d, int t0, int t1, const float* p, size_t ldp, int r,
                float* out) {
  const int G = f.groupSize, n = d / G, spg = G / 32, gb = avxGroupBytes(BITS, G), bb = avxBlockBytes(BITS);
  const float off = (float)avxSymOffset(BITS);
  alignas(32) float a32[32], b32[32];
  alignas(32) uint8_t wi[kMaxHeadBlock * 32];  // zero past the slice, so an odd slice's last pair reads a 0 weight
  float sg[kMaxHeadBlock], z[kMaxHeadBlock];
  for (int sa = t0; sa < t1;) {
    const int se = (sa / 32 + 1) * 32 < t1 ? (sa / 32 + 1) * 32 : t1, cnt = se - sa;
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    if (se < t1 || m.nextCodes) {  // the next slice's rows, or the next page's first 32 (see prefetchBytes)
      const size_t row = (size_t)(se < t1 ? se : 0) * n, rows = (size_t)32 * n;
      prefetchBytes(se < t1 ? m.codes + row * gb : m.nextCodes, rows * gb);
      prefetchBytes(se < t1 ? m.scales + row : m.nextScales, rows * 2);
      if (m.zeros) prefetchBytes(se < t1 ? m.zeros + row : m.nextZeros, rows * 2);
    }
    for (int g = 0; g < n; g++) {
      // a and b' = bz + a*off of the slice's tokens for group g (zero past the slice), gathered 8 tokens at a time
      for (int e0 = 0; e0 < 32; e0 += 8) {
        int idx[8];
        for (int i = 0; i < 8; i++) idx[i] = (sa + (e0 + i < cnt ? e0 + i : cnt - 1)) * n + g;
        __m256 a, bz;
        params8(gather8h(m.scales, idx), m.zeros, m.zeros ? gather8h(m.zeros, idx) : _mm_setzero_si128(), off, a, bz);
        const __m256 live = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(cnt - e0), lane));
        _mm256_store_ps(a32 + e0, _mm256_and_ps(a, live));
        _mm256_store_ps(b32 + e0, _mm256_and_ps(_mm256_fmadd_ps(a, _mm256_set1_ps(off), bz), live));
      }
      for (int h = 0; h < r; h++) {
        const float* ph = p + h * ldp + (sa - t0);
        __m256 zs = _mm256_setzero_ps(), w[4];
        __m256i codes[4];
        for (int i = 0; i < 4; i++) {
          const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32(cnt - 8 * i), lane);
          const __m256 pv = _mm256_maskload_ps(ph + 8 * i, live);  // never reads past the slice
          w[i] = _mm256_mul_ps(pv, _mm256_load_ps(a32 + 8 * i));
          zs = _mm256_fmadd_ps(pv, _mm256_load_ps(b32 + 8 * i), zs);
        }
        sg[h] = quantizeSliceU8(w, wi + h * 32, codes);  // = quantizeU8 of the 32 weights
        z[h] = hsum(zs);
      }
      for (int sl = 0; sl < spg; sl++) {
        const uint8_t* codes = m.codes + ((size_t)sa * n + g) * gb + (size_t)sl * bb;
        const size_t stride = (size_t)n * gb;
        float* o = out + g * G + sl * 32;
        int h = 0;
        for (; h + 4 <= r; h += 4) rowValuesPassI8<BITS, 4>(codes, stride, cnt, wi + h * 32, sg + h, z + h, o + h * d, d);
        for (; h + 2 <= r; h += 2) rowValuesPassI8<BITS, 2>(codes, stride, cnt, wi + h * 32, sg + h, z + h, o + h * d, d);
        for (; h < r; h++) rowValuesPassI8<BITS, 1>(codes, stride, cnt, wi + h * 32, sg + h, z + h, o + h * d, d);
      }
    }
    sa = se;
  }
}

void wsumRowI8(const QuantRef& m, const MatrixFormat& f, int d, int t0, int t1, const float* p, size_t ldp, int r,
               float* out) {
  switch (f.bits) {
    case 2: return wsumRowI8T<2>(m, f, d, t0, t1, p, ldp, r, out);
    case 3: return wsumRowI8T<3>(m, f, d, t0, t1, p, ldp, r, out);
    case 4: return wsumRowI8T<4>(m, f, d, t0, t1, p, ldp, r, out);
    default: return wsumRowFT<8>(m, f, d, t0, t1, p, ldp, r, out);  // float: see the 8-bit note above
  }
}

const Kernels kAvx2 = {"avx2", scoresFp16, wsumFp16, scoresRowI8, scoresColI8, wsumColI8, wsumRowI8, softmaxExp, quantizeI8,
                       quantizeU8, quantizeHeadRows,
                       softmaxExpU8};

}  // namespace

const Kernels& avx2Kernels() { return kAvx2; }

}  // namespace cpu
}  // namespace innerq
