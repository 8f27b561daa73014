// kernels_avx512.cpp - AVX-512 kernels: VNNI for the InnerQ integer paths and 512-bit fp16 rows (built with
// -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mavx512bitalg plus the AVX2 flags; only reached
// after cpuFeatures() confirmed all of them, OS support for the zmm state included), plus the softmax numerator and
// the u8 weight quantizer. The query quantizer is the AVX2 one, and so is every InnerQ shape the fast
// paths below do not cover (G > 32, head dims other than 128/256 for keys, 8-bit codes), and so are the KIVI-style
// integer paths (this file's 512-bit float KIVI kernels were retired with the float contract; an AVX-512 port of the
// integer ones needs a host with AVX-512 to test it on).
//
// Why these kernels are faster than the AVX2 ones: vpdpbusd multiplies 64 u8 x s8 byte pairs and adds each group of
// four products into a 32-bit lane in ONE instruction, where AVX2 needs maddubs + add + madd (and an hadd tree to
// bring per-block sums into lanes). Both InnerQ kernels give each 32-bit lane one whole block (32 codes) of one row
// (keys: lane = (block of a pair, token); values: lane = channel), so a block's integer dot product is 8 vpdpbusd
// into one lane and no horizontal reduction happens per block; the float work (scale, zero point) runs once per
// block on 16 distinct lanes. Each kernel's section derives how its code vectors come out of the block format.

// GCC 12's avx512fintrin.h builds its merge sources from self-initialised `__Y = __Y` temporaries, which -Wextra's
// -Wmaybe-uninitialized reports at every inlined intrinsic; the values are never read (the masks are all-ones).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <type_traits>

#include "cpu_kernels.h"
#include "quantize_head.h"
#include "simd_common.h"

namespace innerq {
namespace cpu {
namespace {

// Software prefetch of one line of codes. 4-bit codes go to L2 (T1), narrower ones to L1 (T0). Why: at 4 bits a
// core streams 72 (keys) to 80 (hybrid values) bytes per token and kv head in ~16 cycles, ~17 GB/s, which is about
// what one core's L1 miss buffers sustain at this VM's DRAM latency; a T0 prefetch holds one of them until the line
// arrives, a T1 prefetch only an L2 one, and the demand load then hits L2. Measured (cpu_gemv 2 16384 9, paired
// rounds on a noisy VM, medians): innerq-4 K+V 5-14 % faster in three runs (e.g. 1.048 -> 0.902 ms per layer,
// K 0.476 -> 0.428, V 0.589 -> 0.492); the unchanged 3-bit kernels moved by up to 4.5 % between the two binaries in
// the same runs, which is the noise floor. T1 at 2 and 3 bits measured 1-2 % slower, and the fp16 baseline's row
// prefetch as T1 slower too (K+V 2.56 -> 2.78 ms), so both stay T0.
template <int BITS>
inline void prefetchCodeLine(const void* p) {
  prefetchLine<BITS == 4 ? Prefetch::L2 : Prefetch::L1>(p);
}

// ---------------------------------------------------------------------------------------------------------
// InnerQ keys (kRowGrouped, G = 32, d = 128 or 256): 8 tokens per step, one 128-channel chunk (4 blocks) at a
// time, its blocks in pairs (2bp, 2bp+1). Lane 8p + t (p = 0, 1; t = 0..7) accumulates the whole dot product of
// token t's block 2bp + p: code vector g (g = 0..7) holds in that lane's 4 bytes the codes of the block's elements
// 4g .. 4g+3, and query vector g holds the query's elements 4g .. 4g+3 of slice 2bp + p in the same lane, so
// vpdpbusd over g = 0..7 is the block's integer dot product with no horizontal step (an earlier layout gave each
// token two half-block lanes and paid two permutes and an add per head and block pair to join them). The query
// vectors depend on the head and the block pair only: they are built once per call (KeyQuery) and are vpdpbusd's
// memory operand.
//
// Code vector g from the block format, with W_e = dword e of every lane's block:
//   2-bit (8 bytes): byte i of dword e holds u[8j + 4e + i] in bits 2j..2j+1, so g = 2j + e is (W_e >> 2j) & 3.
//   3-bit: that 2-bit plane, plus a 32-bit high plane (bit i = bit 2 of u[i]): vpshufbitqmb picks bit 4g + i of
//          the lane's plane into a byte mask, and a masked add of 4 completes the codes.
//   4-bit (16 bytes): byte i holds u[i] | u[i+16] << 4, so W_e (e = 0..3) gives g = e (low nibbles) and
//          g = 4 + e (high nibbles).
// Getting W_e is a transpose of the 8 token rows by two-source permutes (shuffle port; vpdpbusd runs on the other).
template <int BITS>
struct KeyChunk;

// The last transpose step of every width: lane 8p + t <- dword 4t + 2p + e of (lo, hi), where lo holds tokens 0..3
// and hi tokens 4..7 as dwords 4(t % 4) + 2p + e (index 16 + 4(t - 4) + ... = 4t + ... for t >= 4).
inline __m512i lanesByPairToken(__m512i lo, __m512i hi, int e) {
  const __m512i idx = _mm512_add_epi32(_mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 2, 6, 10, 14, 18, 22, 26, 30),
                                       _mm512_set1_epi32(e));
  return _mm512_permutex2var_epi32(lo, idx, hi);
}

// 2-bit: a chunk row is 32 bytes = 8 dwords (block b = dwords 2b, 2b+1).
template <>
struct KeyChunk<2> {
  __m512i A[2], B[2];  // pair bp: tokens 0..3 (A) / 4..7 (B); dword 4(t % 4) + 2p + e = dword e of (t, block 2bp+p)
  template <int ROW>
  void load(const uint8_t* row) {  // token t's chunk at row + t*ROW
    __m512i L[4];                  // L[i]: tokens 2i, 2i+1 in dwords 0..7, 8..15
    for (int i = 0; i < 4; i++)
      L[i] = ROW == 32 ? _mm512_loadu_si512(row + 64 * i)  // d = 128: two rows are 64 contiguous bytes
                       : _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(row + 2 * i * ROW))),
                                            _mm256_loadu_si256((const __m256i*)(row + (2 * i + 1) * ROW)), 1);
    fromTokenPairs(L);
  }
  // Token t, block b, dword e is index 16(t/2 % 2) + 8(t % 2) + 2b + e of (L[0], L[1]) (t < 4) or (L[2], L[3]):
  // output dword k = 4(t % 4) + 2p + e of pair bp takes 8(k / 4) + 4bp + k % 4.
  void fromTokenPairs(const __m512i L[4]) {
    for (int bp = 0; bp < 2; bp++) {
      const __m512i idx = _mm512_add_epi32(_mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27),
                                           _mm512_set1_epi32(4 * bp));
      A[bp] = _mm512_permutex2var_epi32(L[0], idx, L[1]);
      B[bp] = _mm512_permutex2var_epi32(L[2], idx, L[3]);
    }
  }
  void pair(int bp, __m512i c[8]) const {
    const __m512i m3 = _mm512_set1_epi8(3);
    for (int e = 0; e < 2; e++) {
      const __m512i W = lanesByPairToken(A[bp], B[bp], e);
      c[e] = _mm512_and_si512(W, m3);
      for (int j = 1; j < 4; j++) c[2 * j + e] = _mm512_and_si512(_mm512_srli_epi32(W, 2 * j), m3);
    }
  }
};

// 3-bit: a chunk row is 48 bytes = 12 dwords; block b = dwords 3b, 3b+1 (2-bit plane) and 3b+2 (high plane).
// Per token pair one permute gathers the 2-bit planes into the 2-bit chunk layout, one more the high planes.
template <>
struct KeyChunk<3> {
  KeyChunk<2> lo;
  __m512i Q[2];  // Q[0]: high planes of tokens 0..3 as dwords 4t + b, Q[1]: tokens 4..7
  template <int ROW>
  void load(const uint8_t* row) {
    __m512i L[4], Hp[4];
    if (ROW == 48) {
      // d = 128: the 8 rows are 384 contiguous bytes, read as 6 plain vectors (no masked loads: fewer load ops, and
      // the hardware prefetcher sees an ordinary sequential stream). Rows 2i, 2i+1 are dwords 24i .. 24i+23 of that
      // array, i.e. lanes o .. o+23 of (V[a], V[a+1]) with a = 24i / 16 and o = 24i % 16 (0 or 8); the indices below
      // are the masked path's loIdx/hiIdx with row 2i+1 starting at lane 12 instead of 16, shifted by o.
      __m512i V[6];
      for (int k = 0; k < 6; k++) V[k] = _mm512_loadu_si512(row + 64 * k);
      const __m512i lo0 = _mm512_setr_epi32(0, 1, 3, 4, 6, 7, 9, 10, 12, 13, 15, 16, 18, 19, 21, 22);
      const __m512i hi0 = _mm512_setr_epi32(2, 5, 8, 11, 14, 17, 20, 23, 2, 5, 8, 11, 14, 17, 20, 23);
      const __m512i eight = _mm512_set1_epi32(8);
      for (int i = 0; i < 4; i++) {
        const int a = 24 * i / 16;
        const __m512i lo = (i & 1) ? _mm512_add_epi32(lo0, eight) : lo0, hi = (i & 1) ? _mm512_add_epi32(hi0, eight) : hi0;
        L[i] = _mm512_permutex2var_epi32(V[a], lo, V[a + 1]);   // tokens 2i, 2i+1: 2-bit planes as 2-bit rows
        Hp[i] = _mm512_permutex2var_epi32(V[a], hi, V[a + 1]);  // dwords 0..7: high planes of tokens 2i, 2i+1
      }
    } else {
      __m512i R[8];
      for (int i = 0; i < 8; i++) R[i] = _mm512_maskz_loadu_epi32(0x0fff, row + i * ROW);  // masked: never reads past the row
      const __m512i loIdx = _mm512_setr_epi32(0, 1, 3, 4, 6, 7, 9, 10, 16, 17, 19, 20, 22, 23, 25, 26);
      const __m512i hiIdx = _mm512_setr_epi32(2, 5, 8, 11, 18, 21, 24, 27, 2, 5, 8, 11, 18, 21, 24, 27);
      for (int i = 0; i < 4; i++) {
        L[i] = _mm512_permutex2var_epi32(R[2 * i], loIdx, R[2 * i + 1]);
        Hp[i] = _mm512_permutex2var_epi32(R[2 * i], hiIdx, R[2 * i + 1]);
      }
    }
    lo.fromTokenPairs(L);
    const __m512i iq = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
    Q[0] = _mm512_permutex2var_epi32(Hp[0], iq, Hp[1]);
    Q[1] = _mm512_permutex2var_epi32(Hp[2], iq, Hp[3]);
  }
  void pair(int bp, __m512i c[8]) const {
    lo.pair(bp, c);
    // lane 8p + t <- plane of (t, block 2bp + p) = dword 4t + 2bp + p of (Q[0], Q[1])
    const __m512i H = _mm512_permutex2var_epi32(
        Q[0], _mm512_add_epi32(_mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29), _mm512_set1_epi32(2 * bp)),
        Q[1]);
    // vpshufbitqmb addresses bits within a qword = lanes (2k, 2k + 1): byte i of the low lane takes bit 4g + i, byte i
    // of the high lane bit 32 + 4g + i. Selector bytes (0, 1, 2, 3, 32, 33, 34, 35) + 4g.
    const __m512i four = _mm512_set1_epi8(4);
    for (int g = 0; g < 8; g++) {
      const __mmask64 k = _mm512_bitshuffle_epi64_mask(H, _mm512_set1_epi64(0x2322212003020100LL + g * 0x0404040404040404LL));
      c[g] = _mm512_mask_add_epi8(c[g], k, c[g], four);
    }
  }
};

// 4-bit: a chunk row is 64 bytes = 16 dwords (block b = dwords 4b .. 4b+3); three permute levels per block pair.
template <>
struct KeyChunk<4> {
  __m512i R[8];  // token rows
  template <int ROW>
  void load(const uint8_t* row) {
    for (int i = 0; i < 8; i++) R[i] = _mm512_loadu_si512(row + i * ROW);
  }
  void pair(int bp, __m512i c[8]) const {
    // P[i]: tokens 2i + s (s = 0, 1), dword 8s + 4p + e = dword e of (token, block 2bp + p)
    const __m512i i1 = _mm512_add_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23),
                                        _mm512_set1_epi32(8 * bp));
    __m512i P[4];
    for (int i = 0; i < 4; i++) P[i] = _mm512_permutex2var_epi32(R[2 * i], i1, R[2 * i + 1]);
    const __m512i m15 = _mm512_set1_epi8(15);
    for (int x = 0; x < 2; x++) {
      // M[j]: tokens 4j + u (u = 0..3), dword 4u + 2p + e' = dword 2x + e' of (token, block 2bp + p); token 4j + u
      // is in P[2j + u/2] at 8(u % 2) + 4p + 2x + e'
      const __m512i i2 = _mm512_add_epi32(_mm512_setr_epi32(0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29),
                                          _mm512_set1_epi32(2 * x));
      const __m512i M0 = _mm512_permutex2var_epi32(P[0], i2, P[1]), M1 = _mm512_permutex2var_epi32(P[2], i2, P[3]);
      for (int ep = 0; ep < 2; ep++) {
        const int e = 2 * x + ep;
        const __m512i W = lanesByPairToken(M0, M1, ep);
        c[e] = _mm512_and_si512(W, m15);
        c[4 + e] = _mm512_and_si512(_mm512_srli_epi32(W, 4), m15);
      }
    }
  }
};

inline __m256 sumHalves(__m512 v) { return _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1)); }

// Scales (or zeros) of 8 tokens for channel chunk ch as 32 binary16 [token][block]; n = scales per token (4 or 8).
inline __m512i chunkHalves(const uint16_t* sc, int n, int ch) {
  if (n == 4) return _mm512_loadu_si512(sc);
  // n == 8: token t's chunk ch is qword 2t + ch of the 128 bytes at sc
  const __m512i A = _mm512_loadu_si512(sc), B = _mm512_loadu_si512(sc + 32);
  return _mm512_permutex2var_epi64(A, _mm512_add_epi64(_mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14), _mm512_set1_epi64(ch)), B);
}

// Per (head, block pair) constants of one call, in the lane layout of keyTokens8 (lanes 0..7: block 2p, 8..15:
// block 2p+1): the query vectors, the activation scales sigma and sigma * sum, and for symmetric-only matrices the
// integer start values.
struct KeyQuery {
  static constexpr int kPairs = kMaxHeadBlock * kMaxHeadDim / 64;
  __m512i qv[kPairs * 8];  // [head][pair][g]
  __m512 sigma[kPairs], sigmaSum[kPairs];
  __m512i start[kPairs];

  // Symmetric start values: lane 8p + t = -2^(b-1) * (sum of the 32 query codes of slice 2pi + p), so that the
  // integer sum D - 2^(b-1) * S of a symmetric block needs no float work (see keyTokens8).
  template <bool ZEROS, int R, int D>
  void build(const I8Set& q, int symOffset) {
    constexpr int pairs = D / 64;
    for (int h = 0; h < R; h++)
      for (int pi = 0; pi < pairs; pi++) {
        const int k = h * pairs + pi;
        const __m512i X = _mm512_loadu_si512(q.q + h * q.ldq + 64 * pi);  // slices 2pi, 2pi+1 (32 codes each)
        for (int g = 0; g < 8; g++)
          qv[8 * k + g] = _mm512_permutexvar_epi32(
              _mm512_add_epi32(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 8, 8, 8, 8, 8, 8, 8, 8), _mm512_set1_epi32(g)), X);
        const float* sg = q.sigma + h * q.lds + 2 * pi;
        const float* sS = q.sigmaSum + h * q.lds + 2 * pi;
        sigma[k] = _mm512_insertf32x8(_mm512_set1_ps(sg[0]), _mm256_set1_ps(sg[1]), 1);
        sigmaSum[k] = _mm512_insertf32x8(_mm512_set1_ps(sS[0]), _mm256_set1_ps(sS[1]), 1);
        if (!ZEROS) {  // dword sums by vpdpbusd with all-ones weights, then within each 8-dword half
          __m512i t = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(1), X);
          t = _mm512_add_epi32(t, _mm512_shuffle_epi32(t, _MM_PERM_CDAB));
          t = _mm512_add_epi32(t, _mm512_shuffle_epi32(t, _MM_PERM_BADC));
          t = _mm512_add_epi32(t, _mm512_shuffle_i64x2(t, t, _MM_SHUFFLE(2, 3, 0, 1)));
          start[k] = _mm512_mullo_epi32(t, _mm512_set1_epi32(-symOffset));
        }
      }
  }
};

// Scores for NG groups of 8 tokens (rows consecutive) whose code rows and binary16 scales/zeros are given:
// s[h*lds + i] for i < cnt (cnt < 8 * NG only with NG = 1).
// The group parameters are per (token, block): a = |scale|; for groups with a zero point bz = zero (asymmetric) or
// -a*2^(b-1) (symmetric), and score += a*sigma*D + bz*sigmaSum. Symmetric-only matrices (ZEROS = false) fold the
// offset into the integer sum instead: D - 2^(b-1) * S is exact, where S (the sum of the query slice's codes) is
// the accumulator's start value. The float work (convert, scale, accumulate) runs once per block pair and head on
// 16 lanes; the two blocks' lanes are added once per 8 tokens at the end.
// NG = 2 runs two 8-token groups side by side: each query vector then feeds two vpdpbusd and the scheduler finds 2R
// independent chains and both groups' loads in one window. On Zen 5 (single thread, r = 4, d = 128, symmetric keys,
// A/B in one process) that took 3-bit keys from 6.9 to 6.5 TSC cycles per token and kv head L1-resident and from
// 11.8 to 8.4-9.1 from DRAM, 2-bit keys 5.2 -> 4.6 (L1) and 6.8 -> 5.8-6.0 (DRAM). It is used only there
// (see keysPageVnni): 4-bit keys got slower from L2 on (7.2 -> 7.9 L2, 11.5 -> 14.8 DRAM), asymmetric/hybrid keys
// (two more vectors per group) gained nothing (3-bit DRAM 9.8 -> 10.6), and at d = 256 (two channel chunks per
// group) 3-bit keys went 19.4 -> 27.4 from DRAM.
template <int BITS, bool ZEROS, int R, int D, int NG = 1>
inline void keyTokens(const uint8_t* rows, const uint16_t* sc, const uint16_t* zr, const KeyQuery& kq, float* s,
                      size_t lds, int cnt) {
  constexpr int n = D / 32, pairs = D / 64, ROW = n * avxBlockBytes(BITS);
  __m512 acc[NG][R];
  for (int u = 0; u < NG; u++)
    for (int h = 0; h < R; h++) acc[u][h] = _mm512_setzero_ps();
  const float off = (float)avxSymOffset(BITS);
  for (int ch = 0; ch < D / 128; ch++) {
    KeyChunk<BITS> chunk[NG];
    __m512 f0[NG], f1[NG], z0[NG], z1[NG];
    for (int u = 0; u < NG; u++) {
      chunk[u].template load<ROW>(rows + (size_t)8 * u * ROW + ch * 4 * avxBlockBytes(BITS));
      // The 8 tokens' 4 scales of this chunk (token t's n scales are at sc + t*n) as 32 binary16: [t][block].
      const __m512i raw = chunkHalves(sc + 8 * u * n, n, ch);
      f0[u] = _mm512_cvtph_ps(_mm512_castsi512_si256(raw));
      f1[u] = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(raw, 1));
      z0[u] = f0[u];
      z1[u] = f1[u];
      if (ZEROS) {
        const __m512i rz = chunkHalves(zr + 8 * u * n, n, ch);
        z0[u] = _mm512_cvtph_ps(_mm512_castsi512_si256(rz));
        z1[u] = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(rz, 1));
      }
    }
#pragma GCC unroll 2
    for (int bp = 0; bp < 2; bp++) {
      // lane t (< 8) <- float index 4t + 2bp of (f0 | f1), lane 8 + t <- 4t + 2bp + 1
      const __m512i ib = _mm512_add_epi32(_mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29),
                                          _mm512_set1_epi32(2 * bp));
      __m512 a[NG], bz[NG];
      __m512i c[NG][8];
      for (int u = 0; u < NG; u++) {
        const __m512 sg = _mm512_permutex2var_ps(f0[u], ib, f1[u]);
        a[u] = _mm512_abs_ps(sg);
        bz[u] = a[u];
        if (ZEROS) {
          const __mmask16 asym = _mm512_test_epi32_mask(_mm512_castps_si512(sg), _mm512_set1_epi32((int)0x80000000u));
          bz[u] = _mm512_mask_blend_ps(asym, _mm512_mul_ps(a[u], _mm512_set1_ps(-off)), _mm512_permutex2var_ps(z0[u], ib, z1[u]));
        }
        chunk[u].pair(bp, c[u]);
      }
      const int pi = 2 * ch + bp;  // block pair index in the row
      // The heads' dependency chains interleaved (code vector outer, head inner): the scheduler then always finds R
      // independent vpdpbusd (latency 4, one issued per cycle), where head-by-head order left it waiting on one
      // chain; 2-3 % faster L1-resident (build-cpu microbenchmark), as was splitting each chain in two before.
      __m512i Dh[NG][R];
      for (int u = 0; u < NG; u++)
        for (int h = 0; h < R; h++) Dh[u][h] = ZEROS ? _mm512_setzero_si512() : kq.start[h * pairs + pi];
      for (int g = 0; g < 8; g++)
        for (int h = 0; h < R; h++) {
          const __m512i qv = _mm512_load_si512(&kq.qv[8 * (h * pairs + pi) + g]);
          for (int u = 0; u < NG; u++) Dh[u][h] = _mm512_dpbusd_epi32(Dh[u][h], c[u][g], qv);
        }
      for (int u = 0; u < NG; u++)
        for (int h = 0; h < R; h++) {
          const __m512 x = _mm512_mul_ps(_mm512_cvtepi32_ps(Dh[u][h]), kq.sigma[h * pairs + pi]);
          acc[u][h] = _mm512_fmadd_ps(x, a[u], acc[u][h]);
          if (ZEROS) acc[u][h] = _mm512_fmadd_ps(bz[u], kq.sigmaSum[h * pairs + pi], acc[u][h]);
        }
    }
  }
  for (int u = 0; u < NG; u++)
    for (int h = 0; h < R; h++) {
      const __m256 v = sumHalves(acc[u][h]);  // token t: the sums over the even and the odd blocks
      storeLeading(s + h * lds + 8 * u, v, cnt == 8 * NG ? 8 : cnt);  // a tail (cnt < 8) has NG = 1
    }
}

// Prefetches the code rows [row, row + rows) of one page and their scales (and zeros) into L1 (L2 for 4-bit codes).
template <int BITS, bool ZEROS, int D>
inline void prefetchKeyRows(const uint8_t* codes, const uint16_t* scales, const uint16_t* zeros, size_t row, int rows) {
  prefetchKeyRowsOf<BITS == 4 ? Prefetch::L2 : Prefetch::L1, ZEROS, D / 32 * avxBlockBytes(BITS), D / 32>(codes, scales, zeros, row, rows);
}

// Page slots [t0, t1) of one page; s[h*lds + (t - t0)]. Steps of 8 * NG tokens (NG = 2 for symmetric 2- and 3-bit
// keys at d = 128, see keyTokens), then 8, then a tail.
template <int BITS, bool ZEROS, int R, int D>
void keysPageVnni(const QuantRef& m, int t0, int t1, const KeyQuery& kq, float* s, size_t lds) {
  constexpr int n = D / 32, ROW = n * avxBlockBytes(BITS), NG = BITS <= 3 && !ZEROS && D == 128 ? 2 : 1;
  // The hardware streamer follows one sequential stream well; a prefetch ~3 KiB of codes ahead (64 tokens at 3
  // bits and d = 128; 16 tokens had measured 2-3 % slower steps, paired) covers the gaps, and runs on into the
  // next page (m.nextCodes) at the end of this one, whose first rows would otherwise stall.
  // The scales (and zeros) are streams of their own, prefetched the same distance ahead.
  constexpr int kAhead = 3072 / ROW / 8 * 8 < 16 ? 16 : 3072 / ROW / 8 * 8;
  auto step = [&](int tb, auto G) {
    constexpr int ng = decltype(G)::value;
    if (tb + kAhead < t1)
      prefetchKeyRows<BITS, ZEROS, D>(m.codes, m.scales, m.zeros, (size_t)tb + kAhead, 8 * ng);
    else if (m.nextCodes)
      prefetchKeyRows<BITS, ZEROS, D>(m.nextCodes, m.nextScales, m.nextZeros, (size_t)(tb + kAhead - t1), 8 * ng);
    keyTokens<BITS, ZEROS, R, D, ng>(m.codes + (size_t)tb * ROW, m.scales + (size_t)tb * n,
                                     ZEROS ? m.zeros + (size_t)tb * n : nullptr, kq, s + (tb - t0), lds, 8 * ng);
  };
  int tb = t0;
  for (; tb + 8 * NG <= t1; tb += 8 * NG) step(tb, std::integral_constant<int, NG>{});
  if constexpr (NG > 1)
    for (; tb + 8 <= t1; tb += 8) step(tb, std::integral_constant<int, 1>{});
  if (tb < t1) {  // tail: copies of the rows, the missing ones repeating the last token (their results are not stored)
    const int cnt = t1 - tb;
    alignas(64) uint8_t rows[8 * ROW + 64];
    alignas(64) uint16_t sc[8 * n + 32], zr[8 * n + 32];
    copyKeyRows<ZEROS, ROW, n>(m, tb, cnt, rows, sc, zr);
    keyTokens<BITS, ZEROS, R, D>(rows, sc, zr, kq, s + (tb - t0), lds, cnt);
  }
}

// Run slots [t0, t1). The query vectors are built once per call (8 permutes per head and block pair, ~140 cycles at
// r = 4, d = 128: 0.5 cycles per token when it was once per 256-token page).
template <int BITS, bool ZEROS, int R, int D>
void scoresRowVnni(const QuantRun& m, int t0, int t1, const I8Set& q, float* s, size_t lds) {
  alignas(64) KeyQuery kq;
  kq.build<ZEROS, R, D>(q, avxSymOffset(BITS));
  forEachRunPage(m, t0, t1, [&](int, const QuantRef& page, int s0, int s1, int offset) {
    keysPageVnni<BITS, ZEROS, R, D>(page, s0, s1, kq, s + offset, lds);
  });
}

template <int BITS>
void scoresRowVnniB(const QuantRun& m, int d, int t0, int t1, const I8Set& q, int r, float* s, size_t lds) {
  withKeyShape(m, d, r, [&](auto Z, auto D, auto R) {
    scoresRowVnni<BITS, decltype(Z)::value, decltype(R)::value, decltype(D)::value>(m, t0, t1, q, s, lds);
  });
}

void scoresRowI8(const QuantRun& m, const MatrixFormat& f, int d, int t0, int t1, const I8Set& q, int r, float* s,
                 size_t lds) {
  if (f.groupSize == 32 && (d == 128 || d == 256) && f.bits <= 4) {
    if (f.bits == 2) return scoresRowVnniB<2>(m, d, t0, t1, q, r, s, lds);
    if (f.bits == 3) return scoresRowVnniB<3>(m, d, t0, t1, q, r, s, lds);
    return scoresRowVnniB<4>(m, d, t0, t1, q, r, s, lds);
  }
  avx2Kernels().scoresRowI8(m, f, d, t0, t1, q, r, s, lds);
}

// ---------------------------------------------------------------------------------------------------------
// InnerQ values (kColGrouped, G = 32): lane = channel, 16 channels per vector, no halves. The blocks of 16
// consecutive channels for one token group are contiguous (16 * blockBytes). Code vector k (k = 0..7) holds, in
// dword lane c, the codes of tokens 4k .. 4k+3 of channel c, so vpdpbusd with the probability dword p[4k .. 4k+3]
// broadcast accumulates the whole 32-token dot product of channel c in lane c after k = 0..7: the float work (scale,
// zero point) is then done once per channel, on 16 distinct lanes. Dword e of a block holds those tokens directly
// (4-bit: low nibbles tokens 4e.., high nibbles 16 + 4e..; 2-bit and the 3-bit low plane: bits 2j..2j+1 of dword e
// are tokens 8j + 4e ..), so a vector is a dword gather across the 16 blocks plus a shift and mask.
template <int BITS>
inline void valueCodes16(const uint8_t* p, __m512i cv[8]) {
  const __m512i m3 = _mm512_set1_epi8(3), m15 = _mm512_set1_epi8(15);
  if (BITS == 2) {  // channel c = qword c of A (c < 8) / B
    const __m512i A = _mm512_loadu_si512(p), B = _mm512_loadu_si512(p + 64);
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i E[2] = {_mm512_permutex2var_epi32(A, even, B),
                          _mm512_permutex2var_epi32(A, _mm512_add_epi32(even, _mm512_set1_epi32(1)), B)};
    for (int j = 0; j < 4; j++)
      for (int e = 0; e < 2; e++) cv[2 * j + e] = _mm512_and_si512(_mm512_srli_epi32(E[e], 2 * j), m3);
  } else if (BITS == 3) {  // channel c = dwords 3c, 3c+1 (2-bit plane), 3c+2 (high plane) of 48 dwords in R0..R2
    const __m512i R0 = _mm512_loadu_si512(p), R1 = _mm512_loadu_si512(p + 64), R2 = _mm512_loadu_si512(p + 128);
    const __m512i three = _mm512_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33, 36, 39, 42, 45);
    __m512i G[3];
    for (int x = 0; x < 3; x++) {  // lane c <- dword 3c + x: from R0|R1 below index 32, else from R2
      const __m512i idx = _mm512_add_epi32(three, _mm512_set1_epi32(x));
      const __mmask16 high = _mm512_cmpge_epi32_mask(idx, _mm512_set1_epi32(32));
      G[x] = _mm512_mask_permutexvar_epi32(_mm512_permutex2var_epi32(R0, idx, R1), high,
                                           _mm512_sub_epi32(idx, _mm512_set1_epi32(32)), R2);
    }
    const __m512i four = _mm512_set1_epi8(4);
    for (int j = 0; j < 4; j++)
      for (int e = 0; e < 2; e++) {
        const int k = 2 * j + e;
        __m512i c = _mm512_and_si512(_mm512_srli_epi32(G[e], 2 * j), m3);
        // byte i of dword lane c is token 4k + i; its high bit is bit 4k + i of channel c's plane (lane c of G[2]),
        // which vpshufbitqmb addresses within the qword of lanes (2q, 2q + 1): selector (c % 2) * 32 + 4k + i.
        // bytes (0, 1, 2, 3, 32, 33, 34, 35) + 4k
        const long long sel = 0x2322212003020100LL + k * 0x0404040404040404LL;
        const __mmask64 hb = _mm512_bitshuffle_epi64_mask(G[2], _mm512_set1_epi64(sel));
        cv[k] = _mm512_mask_add_epi8(c, hb, c, four);
      }
  } else {  // 4-bit: channel c = dwords 4c .. 4c+3 of R0..R3 (4 channels each)
    __m512i R[4];
    for (int i = 0; i < 4; i++) R[i] = _mm512_loadu_si512(p + 64 * i);
    const __m512i quad = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28);
    for (int e = 0; e < 4; e++) {
      const __m512i idx = _mm512_add_epi32(quad, _mm512_set1_epi32(e));
      const __m512i G = _mm512_mask_blend_epi32(0xFF00, _mm512_permutex2var_epi32(R[0], idx, R[1]),
                                                _mm512_permutex2var_epi32(R[2], idx, R[3]));
      cv[e] = _mm512_and_si512(G, m15);
      cv[4 + e] = _mm512_and_si512(_mm512_srli_epi32(G, 4), m15);
    }
  }
}

// Page token groups [g0, g1) of one page of pageGroups groups, accumulated into accMem [R][d] (p page-relative).
template <int BITS, bool ZEROS, int R>
void valuesPageVnni(const QuantRef& m, int d, int pageGroups, int g0, int g1, const U8Set& p, float* accMem) {
  // Token groups per tile: the next tile's codes are prefetched during this one, so the tile sets how far ahead the
  // prefetches run, and a tile's codes and the next tile's must sit in L1 together. The largest tile of at most 8
  // groups and 12 KiB of codes: at d = 128 8 groups (2-, 3-bit) or 4 (4-bit), at d = 256 4 groups (2-, 3-bit) or 2.
  // Measured on Zen 5 (48 KiB L1; kernel_cycles, one thread, r = 4, hybrid values, A/B in one process, TSC cycles per
  // token and kv head from DRAM), against the 2-group tiles before: d = 128 2-bit 7.5 -> 5.9, 3-bit 9.5 -> 8.2 with
  // 8 groups, 4-bit 10.5 -> 8.5 with 4 (8.7 with 8 groups, which in the 2-thread cpu_gemv was no faster than 2); at
  // d = 256 4-bit codes in 8-group tiles (32 KiB) went 16.7 -> 20.2. (On a 32 KiB-L1 machine 8 groups of 4-bit codes at
  // d = 128 once ran at 13 GB/s and 2 groups at 21 GB/s.)
  constexpr int bb = avxBlockBytes(BITS);
  const int tileGroups = 8 * d * bb <= 12288 ? 8 : 4 * d * bb <= 12288 ? 4 : 2;
  const float off = (float)avxSymOffset(BITS);
  const int chunks = d / 16;
  for (int tt = g0; tt < g1; tt += tileGroups) {
    const int te = tt + tileGroups < g1 ? tt + tileGroups : g1;
    // The next tile's codes (contiguous: token groups are d blocks apart), spread over this tile's chunk passes so
    // that DRAM sees one sequential stream although each pass reads a few cache lines per token group.
    // The last tile prefetches the first tile of the next page (m.nextCodes) when the caller goes on there.
    // The scales and zeros (2 bytes per group) are streams of their own and are prefetched alongside.
    size_t nextGroups = te < g1 ? (size_t)((g1 - te < tileGroups ? g1 - te : tileGroups) * d) : 0;
    const char* next = (const char*)(m.codes + (size_t)te * d * bb);
    const char* nextS = (const char*)(m.scales + (size_t)te * d);
    const char* nextZ = ZEROS ? (const char*)(m.zeros + (size_t)te * d) : nullptr;
    if (te == g1) {
      nextGroups = m.nextCodes ? (size_t)(tileGroups < pageGroups ? tileGroups : pageGroups) * d : 0;  // within that page
      next = (const char*)m.nextCodes;
      nextS = (const char*)m.nextScales;
      nextZ = (const char*)m.nextZeros;
    }
    const size_t nextBytes = nextGroups * bb, perChunk = (nextBytes / chunks + 63) & ~(size_t)63;
    const size_t sBytes = nextGroups * 2, perChunkS = (sBytes / chunks + 63) & ~(size_t)63;
    for (int c = 0; c < chunks; c++) {
      const int j0 = 16 * c;
      for (size_t o = c * perChunk; o < (c + 1) * perChunk && o < nextBytes; o += 64) prefetchCodeLine<BITS>(next + o);
      for (size_t o = c * perChunkS; o < (c + 1) * perChunkS && o < sBytes; o += 64) {
        prefetchLine<Prefetch::L1>(nextS + o);
        if (ZEROS) prefetchLine<Prefetch::L1>(nextZ + o);
      }
      __m512 acc[R];
      for (int h = 0; h < R; h++) acc[h] = _mm512_load_ps(accMem + h * d + j0);
      for (int tg = tt; tg < te; tg++) {
        const size_t gi = (size_t)tg * d + j0;
        __m512i cv[8];
        valueCodes16<BITS>(m.codes + gi * bb, cv);
        const __m512 sg = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(m.scales + gi)));
        const __m512 a = _mm512_abs_ps(sg);
        __m512 bz = _mm512_mul_ps(a, _mm512_set1_ps(-off));
        if (ZEROS)
          bz = _mm512_mask_blend_ps(_mm512_test_epi32_mask(_mm512_castps_si512(sg), _mm512_set1_epi32((int)0x80000000u)), bz,
                                    _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(m.zeros + gi))));
        // R x CH dependency chains, interleaved (code vector outer, head inner) so that the scheduler always finds
        // independent vpdpbusd (latency 4); at least 4 chains in all. Against two chains per head run head by head,
        // this measured 4 % (2-bit), 6 % (4-bit) and 10 % (3-bit) faster L1-resident at r = 4.
        constexpr int CH = R >= 4 ? 1 : R >= 2 ? 2 : 4;
        __m512i D[CH][R];
        for (int c = 0; c < CH; c++)
          for (int h = 0; h < R; h++) D[c][h] = _mm512_setzero_si512();
        for (int k = 0; k < 8; k += CH)
          for (int c = 0; c < CH; c++)
            for (int h = 0; h < R; h++) {
              int32_t w;
              std::memcpy(&w, p.q + h * p.ldq + (size_t)tg * 32 + 4 * (k + c), 4);
              D[c][h] = _mm512_dpbusd_epi32(D[c][h], _mm512_set1_epi32(w), cv[k + c]);  // weights unsigned, codes signed
            }
        for (int h = 0; h < R; h++) {
          for (int c = 1; c < CH; c++) D[0][h] = _mm512_add_epi32(D[0][h], D[c][h]);
          const __m512 x = _mm512_mul_ps(_mm512_cvtepi32_ps(D[0][h]), _mm512_set1_ps(p.sigma[h * p.lds + tg]));
          acc[h] = _mm512_fmadd_ps(x, a, acc[h]);
          acc[h] = _mm512_fmadd_ps(bz, _mm512_set1_ps(p.sigmaSum[h * p.lds + tg]), acc[h]);
        }
      }
      for (int h = 0; h < R; h++) _mm512_store_ps(accMem + h * d + j0, acc[h]);
    }
  }
}

// Run token groups [g0, g1) (p run-relative). Accumulators [head][chunk of 16 channels]: registers within a tile,
// L1 between tiles, zeroed and added to out once per call (~250 cycles at r = 4, d = 128: 1 cycle per token when it
// was once per 256-token page).
template <int BITS, bool ZEROS, int R>
void wsumColVnni(const QuantRun& m, int d, int g0, int g1, const U8Set& p, float* out) {
  alignas(64) float accMem[R * kMaxHeadDim];
  std::memset(accMem, 0, sizeof(float) * R * d);
  forEachRunPage(m, g0 * 32, g1 * 32, [&](int i, const QuantRef& page, int s0, int s1, int) {
    valuesPageVnni<BITS, ZEROS, R>(page, d, m.pageTokens / 32, s0 / 32, s1 / 32, pageWeights(p, i, m.pageTokens), accMem);
  });
  for (int h = 0; h < R; h++)
    for (int j = 0; j < d; j += 16)
      _mm512_storeu_ps(out + h * d + j, _mm512_add_ps(_mm512_loadu_ps(out + h * d + j), _mm512_load_ps(accMem + h * d + j)));
}

template <int BITS, bool ZEROS>
void wsumColVnniR(const QuantRun& m, int d, int g0, int g1, const U8Set& p, int r, float* out) {
  withHeadCount(r, [&](auto R) { wsumColVnni<BITS, ZEROS, decltype(R)::value>(m, d, g0, g1, p, out); });
}

void wsumColI8(const QuantRun& m, const MatrixFormat& f, int d, int g0, int g1, const U8Set& p, int r, float* out) {
  if (f.groupSize == 32 && f.bits <= 4) {
    const bool z = m.pages[0].zeros != nullptr;
    if (f.bits == 2) return z ? wsumColVnniR<2, true>(m, d, g0, g1, p, r, out) : wsumColVnniR<2, false>(m, d, g0, g1, p, r, out);
    if (f.bits == 3) return z ? wsumColVnniR<3, true>(m, d, g0, g1, p, r, out) : wsumColVnniR<3, false>(m, d, g0, g1, p, r, out);
    return z ? wsumColVnniR<4, true>(m, d, g0, g1, p, r, out) : wsumColVnniR<4, false>(m, d, g0, g1, p, r, out);
  }
  avx2Kernels().wsumColI8(m, f, d, g0, g1, p, r, out);
}

// ---------------------------------------------------------------------------------------------------------
// fp16 rows with 512-bit vectors (the baseline must not be handicapped where InnerQ is not: these are the AVX2
// kernels' loop structures with twice the width, so one converted row chunk feeds HB FMAs of 16 lanes).

// Lane i of the result = horizontal sum of v[i], for 8 vectors (as kernels_avx2.cpp's hsum8).
inline __m256 hsum8x(const __m512* v) {
  __m256 h[8];
  for (int k = 0; k < 8; k++) h[k] = sumHalves(v[k]);
  const __m256 a = haddPairs(haddPairs(h[0], h[1]), haddPairs(h[2], h[3]));
  const __m256 b = haddPairs(haddPairs(h[4], h[5]), haddPairs(h[6], h[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
}

// Scores: TB tokens x HB heads = 8 accumulators over the channels (d a multiple of 16), one reduction per 8 pairs.
template <int HB>
void scoresFp16T(const uint16_t* rows, size_t ld, int n, int d, const float* q, float* s, size_t lds, const uint16_t* next) {
  constexpr int TB = 8 / HB;
  for (int i = 0; i < n; i += TB) {
    const uint16_t* rp[TB];
    for (int t = 0; t < TB; t++) rp[t] = rows + (size_t)(i + t < n ? i + t : n - 1) * ld;  // clamp the tail
    // Software prefetch kAhead rows ahead: the FMA work per byte is small enough that the DRAM latency between the
    // hardware streamer's requests would otherwise show.
    // Near the end of the rows the prefetch runs on into `next` (the next page), whose first rows would otherwise
    // stall: every page is a new stream for the hardware prefetcher.
    constexpr int kAhead = 24;
    for (int t = 0; t < TB; t++) prefetchFp16Row(rows, ld, n, next, i + kAhead + t, d);
    __m512 acc[8];
    for (int k = 0; k < 8; k++) acc[k] = _mm512_setzero_ps();
    for (int j = 0; j < d; j += 16) {
      for (int t = 0; t < TB; t++) {
        const __m512 kv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(rp[t] + j)));
        for (int h = 0; h < HB; h++) acc[t * HB + h] = _mm512_fmadd_ps(kv, _mm512_loadu_ps(q + h * d + j), acc[t * HB + h]);
      }
    }
    alignas(32) float out[8];
    _mm256_store_ps(out, hsum8x(acc));
    for (int t = 0; t < TB && i + t < n; t++)
      for (int h = 0; h < HB; h++) s[h * lds + i + t] = out[t * HB + h];
  }
}

void scoresFp16(const uint16_t* rows, size_t ld, int n, int d, const float* q, int r, float* s, size_t lds, const uint16_t* next) {
  if (d % 16) return avx2Kernels().scoresFp16(rows, ld, n, d, q, r, s, lds, next);
  int h = 0;
  for (; h + 8 <= r; h += 8) scoresFp16T<8>(rows, ld, n, d, q + h * d, s + h * lds, lds, next);
  for (; h + 4 <= r; h += 4) scoresFp16T<4>(rows, ld, n, d, q + h * d, s + h * lds, lds, next);
  for (; h + 2 <= r; h += 2) scoresFp16T<2>(rows, ld, n, d, q + h * d, s + h * lds, lds, next);
  for (; h < r; h++) scoresFp16T<1>(rows, ld, n, d, q + h * d, s + h * lds, lds, next);
}

// Weighted sum: as kernels_avx2.cpp's wsumFp16T (token tiles, per-tile partial sums, next tile prefetched row by row
// during the first channel pass), with CV vectors of 16 channels x HB heads of accumulators in registers.
template <int HB, int CV>
void wsumFp16T(const uint16_t* rows, size_t ld, int n, int d, const float* p, size_t ldp, float* out, const uint16_t* next) {
  // 8 tokens per tile, as in kernels_avx2.cpp (64-token tiles overflowed L1 together with the prefetched next tile:
  // 18.5 GB/s, 8-token tiles 27 GB/s; cpu_gemv, 16k tokens).
  constexpr int kTile = 8;
  for (int i0 = 0; i0 < n; i0 += kTile) {
    const int i1 = i0 + kTile < n ? i0 + kTile : n;
    for (int j = 0; j < d; j += 16 * CV) {
      __m512 acc[HB][CV];
      for (int h = 0; h < HB; h++)
        for (int c = 0; c < CV; c++) acc[h][c] = _mm512_setzero_ps();
      for (int i = i0; i < i1; i++) {
        // during the first channel pass, row i's counterpart in the next tile (one row per row: a steady stream),
        // which after the last tile is the start of `next` (the next page)
        if (j == 0) prefetchFp16Row(rows, ld, n, next, i + kTile, d);
        __m512 v[CV];
        for (int c = 0; c < CV; c++) v[c] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(rows + (size_t)i * ld + j + 16 * c)));
        for (int h = 0; h < HB; h++) {
          const __m512 w = _mm512_set1_ps(p[h * ldp + i]);
          for (int c = 0; c < CV; c++) acc[h][c] = _mm512_fmadd_ps(w, v[c], acc[h][c]);
        }
      }
      for (int h = 0; h < HB; h++)
        for (int c = 0; c < CV; c++)
          _mm512_storeu_ps(out + h * d + j + 16 * c, _mm512_add_ps(_mm512_loadu_ps(out + h * d + j + 16 * c), acc[h][c]));
    }
  }
}

void wsumFp16(const uint16_t* rows, size_t ld, int n, int d, const float* p, size_t ldp, int r, float* out, const uint16_t* next) {
  if (d % 32) return avx2Kernels().wsumFp16(rows, ld, n, d, p, ldp, r, out, next);
  int h = 0;
  for (; h + 8 <= r; h += 8) wsumFp16T<8, 1>(rows, ld, n, d, p + h * ldp, ldp, out + h * d, next);
  for (; h + 4 <= r; h += 4) wsumFp16T<4, 2>(rows, ld, n, d, p + h * ldp, ldp, out + h * d, next);
  for (; h + 2 <= r; h += 2) wsumFp16T<2, 2>(rows, ld, n, d, p + h * ldp, ldp, out + h * d, next);
  for (; h < r; h++) wsumFp16T<1, 2>(rows, ld, n, d, p + h * ldp, ldp, out + h * d, next);
}

// ---------------------------------------------------------------------------------------------------------
// Softmax numerator and u8 weights with 512-bit vectors (per kv head of a decode step they touch r x T floats,
// ~10% of an InnerQ step with the AVX2 versions). The u8 quantizer rounds x * (255/max) to nearest-even exactly as
// the AVX2 one, so both tables produce the same codes from the same weights.
//
// exp(x) for x <= 0 (scores minus their maximum), relative error <= 2.1e-7, in 11 ops (kernels_avx2.cpp's exp256 is
// the same construction; the constants are in simd_common.h):
//   t = x*log2(e) + 1.5*2^23: adding the magic constant rounds x*log2(e) to the nearest integer n, which lands in
//       the low mantissa bits of t (bits(t) = 0x4B400000 + n for |n| < 2^22), and n = t - 1.5*2^23 exactly;
//   r = x - n*ln2 in two steps (Cody-Waite: ln2 = 0.693359375 + (-2.12194440e-4), the first part exact in 10 bits,
//       so n*0.693359375 is exact), |r| <= ln2/2;
//   e^r by a degree-5 polynomial fitted to the relative error on [-ln2/2, ln2/2] (Lawson iteration; 7.5e-8 in exact
//       arithmetic, 2.1e-7 evaluated in float);
//   2^n by adding n << 23 to the exponent field: bits(t) << 23 == n << 23 (mod 2^32), because 0x4B400000 << 23
//       overflows to 0. Valid while the result stays normal: for x > -86, n >= -124 and e^r >= 0.70, so the
//       exponent stays >= 2. Below -86 (e^-86 ~ 4e-38: nothing next to the row maximum's weight 1) the result is 0,
//       as for -inf (masked tails).
// (vscalefps would do 2^n in one instruction but takes two cycles per vector on Zen 4, and the 7th-degree Taylor
// polynomial the AVX2 exp used until 2026-12-07 needs two more FMAs; this version made the softmax ~20 % cheaper.)
inline __m512 exp512(__m512 x) {
  const __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(kExpFloor), _CMP_GT_OQ);
  const __m512 magic = _mm512_set1_ps(kExpMagic);
  const __m512 t = _mm512_fmadd_ps(x, _mm512_set1_ps(kExpLog2e), magic);
  const __m512 n = _mm512_sub_ps(t, magic);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kExpLn2Hi), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kExpLn2Lo), r);
  __m512 y = _mm512_set1_ps(kExpPoly[0]);
  for (int i = 1; i < 6; i++) y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(kExpPoly[i]));
  return _mm512_castsi512_ps(_mm512_maskz_add_epi32(live, _mm512_castps_si512(y), _mm512_slli_epi32(_mm512_castps_si512(t), 23)));
}

// Maximum of s[a, b) into mv (masked tail).
inline __m512 maxRange(const float* s, int a, int b, __m512 mv) {
  int i = a;
  for (; i + 16 <= b; i += 16) mv = _mm512_max_ps(mv, _mm512_loadu_ps(s + i));
  if (i < b) mv = _mm512_max_ps(mv, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), (__mmask16)((1u << (b - i)) - 1), s + i));
  return mv;
}

// s[i] <- exp(s[i] - mx) for i in [a, b); returns the sum (float lanes per 512 elements, double across them).
inline double expStoreRange(float* s, int a, int b, __m512 m16) {
  double total = 0;
  int i = a;
  while (i < b) {
    __m512 sum = _mm512_setzero_ps();
    for (int e = 0; e < 32 && i < b; e++, i += 16) {
      const __mmask16 k = b - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (b - i)) - 1);
      const __m512 x = exp512(_mm512_sub_ps(_mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), k, s + i), m16));
      _mm512_mask_storeu_ps(s + i, k, x);
      sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(k, x));
    }
    const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(sum)), hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(sum, 1));
    total += _mm512_reduce_add_pd(_mm512_add_pd(lo, hi));
  }
  return total;
}

float softmaxExp(float* s, int n, float* maxOut) {
  const float mx = _mm512_reduce_max_ps(maxRange(s, 0, n, _mm512_set1_ps(-INFINITY)));
  *maxOut = mx;
  return (float)expStoreRange(s, 0, n, _mm512_set1_ps(mx));
}

// Lane j of the result = op-reduction of the 16 lanes of v[j]: a transposing tree (16 -> 8 -> 4 -> 2 -> 1 partial
// lanes per input) of 15 combine steps, instead of 16 horizontal reductions of ~4 dependent shuffles each.
template <class OP>
inline __m512 reduceTranspose16(const __m512* v, OP op) {
  __m512 z[8], w[4], u[2];
  for (int i = 0; i < 8; i++)  // z[i] = [v[2i] folded to 8 lanes | v[2i+1] folded to 8 lanes]
    z[i] = op(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
              _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  for (int i = 0; i < 4; i++)  // w[i]: 128-bit block b = input 4i + b folded to 4 lanes
    w[i] = op(_mm512_shuffle_f32x4(z[2 * i], z[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
              _mm512_shuffle_f32x4(z[2 * i], z[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  for (int i = 0; i < 2; i++)  // u[i]: block b = inputs 8i + b, 8i + 4 + b folded to 2 lanes each
    u[i] = op(_mm512_shuffle_ps(w[2 * i], w[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
              _mm512_shuffle_ps(w[2 * i], w[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  // lane 4b + i = input b + 4i; permute so that lane j = input j (input j sits at lane 4 * (j % 4) + j / 4)
  const __m512 t = op(_mm512_shuffle_ps(u[0], u[1], _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_ps(u[0], u[1], _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), t);
}

// One slice: codes round(x * inv) clamped to [0, 255] stored at q; returns the per-lane sums of the two code halves.
inline __m512i quantizeSliceU8(const float* x, __m512 inv, uint8_t* q) {
  const __m512i lo = _mm512_setzero_si512(), hi = _mm512_set1_epi32(255);
  const __m512i c0 = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x), inv)), lo), hi);
  const __m512i c1 = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + 16), inv)), lo), hi);
  _mm_storeu_si128((__m128i*)q, _mm512_cvtepi32_epi8(c0));
  _mm_storeu_si128((__m128i*)(q + 16), _mm512_cvtepi32_epi8(c1));
  return _mm512_add_epi32(c0, c1);
}

void quantizeU8(const float* x, int n, uint8_t* q, float* sigma, float* sigmaSum) {
  const auto vmax = [](__m512 a, __m512 b) { return _mm512_max_ps(a, b); };
  const auto vadd = [](__m512 a, __m512 b) { return _mm512_add_ps(a, b); };
  int k = 0;
  // 16 slices at a time: their maxima and code sums come out of one transposing reduction each, as vectors
  for (; k + 16 <= n / 32; k += 16) {
    __m512 m[16];
    for (int j = 0; j < 16; j++) m[j] = _mm512_max_ps(_mm512_loadu_ps(x + 32 * (k + j)), _mm512_loadu_ps(x + 32 * (k + j) + 16));
    const __m512 mx = reduceTranspose16(m, vmax);
    // below 1e-36 a slice counts as zero (see kernels_avx2.cpp's quantizeI8); divisions as the scalar path's
    const __mmask16 ok = _mm512_cmp_ps_mask(mx, _mm512_set1_ps(1e-36f), _CMP_GT_OQ);
    const __m512 sg = _mm512_maskz_div_ps(ok, mx, _mm512_set1_ps(255.0f));
    const __m512 inv = _mm512_maskz_div_ps(ok, _mm512_set1_ps(255.0f), mx);
    __m512 sums[16];
    for (int j = 0; j < 16; j++) {  // integer sums <= 510 per lane: their float sums stay exact
      const __m512 iv = _mm512_permutexvar_ps(_mm512_set1_epi32(j), inv);
      sums[j] = _mm512_cvtepi32_ps(quantizeSliceU8(x + 32 * (k + j), iv, q + 32 * (k + j)));
    }
    _mm512_storeu_ps(sigma + k, sg);
    _mm512_storeu_ps(sigmaSum + k, _mm512_mul_ps(sg, reduceTranspose16(sums, vadd)));
  }
  for (; k < n / 32; k++) {
    const float m = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_loadu_ps(x + 32 * k), _mm512_loadu_ps(x + 32 * k + 16)));
    const bool tiny = !(m > 1e-36f);
    const float sg = tiny ? 0.0f : m / 255.0f, inv = tiny ? 0.0f : 255.0f / m;
    sigma[k] = sg;
    sigmaSum[k] = sg * (float)_mm512_reduce_add_epi32(quantizeSliceU8(x + 32 * k, _mm512_set1_ps(inv), q + 32 * k));
  }
}

// softmaxExp with the u8 quantizer fused in for s[qa, qa + qn) (see cpu_kernels.h). Over a decode step these two
// touch every score of every query head; run separately they made four passes over the row (max, exp + store, slice
// max, quantize), ~12 % of an InnerQ step at 16k tokens. Here: one pass for the row maximum that also leaves each
// quantized slice's score maximum (in sigma, 16 slices per transposing reduction), and one pass that exponentiates
// and quantizes in registers. A slice's largest weight is exp(slice max - max), computed once per slice, which is
// the value quantizeU8 finds by scanning the exponentiated slice (exp512 is the same function of the same input);
// the codes are round(e * (255 / that)), clamped to 255, exactly quantizeU8's formula.
float softmaxExpU8(float* s, int n, int qa, int qn, float* maxOut, uint8_t* q, float* sigma, float* sigmaSum) {
  const auto vmax = [](__m512 a, __m512 b) { return _mm512_max_ps(a, b); };
  const auto vadd = [](__m512 a, __m512 b) { return _mm512_add_ps(a, b); };
  const float* x = s + qa;
  const int slices = qn / 32;
  __m512 mv = maxRange(s, qa + qn, n, maxRange(s, 0, qa, _mm512_set1_ps(-INFINITY)));
  int k = 0;
  for (; k + 16 <= slices; k += 16) {
    __m512 m[16];
    for (int j = 0; j < 16; j++) m[j] = _mm512_max_ps(_mm512_loadu_ps(x + 32 * (k + j)), _mm512_loadu_ps(x + 32 * (k + j) + 16));
    const __m512 sm = reduceTranspose16(m, vmax);
    _mm512_storeu_ps(sigma + k, sm);
    mv = _mm512_max_ps(mv, sm);
  }
  for (; k < slices; k++) {
    const float sm = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_loadu_ps(x + 32 * k), _mm512_loadu_ps(x + 32 * k + 16)));
    sigma[k] = sm;
    mv = _mm512_max_ps(mv, _mm512_set1_ps(sm));
  }
  const float mx = _mm512_reduce_max_ps(mv);
  *maxOut = mx;
  const __m512 m16 = _mm512_set1_ps(mx);
  double total = expStoreRange(s, 0, qa, m16) + expStoreRange(s, qa + qn, n, m16);
  const __m512i c255 = _mm512_set1_epi32(255);
  // One slice: weights exp(x - mx) quantized with inv = 255 / (slice's largest weight); returns the code sums per
  // lane, adds the weights to sum.
  const auto slice = [&](const float* xs, __m512 inv, uint8_t* qs, __m512& sum) {
    const __m512 e0 = exp512(_mm512_sub_ps(_mm512_loadu_ps(xs), m16)), e1 = exp512(_mm512_sub_ps(_mm512_loadu_ps(xs + 16), m16));
    sum = _mm512_add_ps(sum, _mm512_add_ps(e0, e1));
    const __m512i c0 = _mm512_min_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(e0, inv)), c255);  // e >= 0: no lower clamp
    const __m512i c1 = _mm512_min_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(e1, inv)), c255);
    _mm_storeu_si128((__m128i*)qs, _mm512_cvtepi32_epi8(c0));
    _mm_storeu_si128((__m128i*)(qs + 16), _mm512_cvtepi32_epi8(c1));
    return _mm512_add_epi32(c0, c1);
  };
  k = 0;
  for (; k + 16 <= slices; k += 16) {
    const __m512 top = exp512(_mm512_sub_ps(_mm512_loadu_ps(sigma + k), m16));  // each slice's largest weight
    // below 1e-36 a slice counts as zero, as in quantizeU8
    const __mmask16 ok = _mm512_cmp_ps_mask(top, _mm512_set1_ps(1e-36f), _CMP_GT_OQ);
    const __m512 sg = _mm512_maskz_div_ps(ok, top, _mm512_set1_ps(255.0f));
    const __m512 inv = _mm512_maskz_div_ps(ok, _mm512_set1_ps(255.0f), top);
    __m512 sums[16], sum = _mm512_setzero_ps();
    for (int j = 0; j < 16; j++) {  // integer sums <= 510 per lane: their float sums stay exact
      const __m512 iv = _mm512_permutexvar_ps(_mm512_set1_epi32(j), inv);
      sums[j] = _mm512_cvtepi32_ps(slice(x + 32 * (k + j), iv, q + 32 * (k + j), sum));
    }
    _mm512_storeu_ps(sigma + k, sg);
    _mm512_storeu_ps(sigmaSum + k, _mm512_mul_ps(sg, reduceTranspose16(sums, vadd)));
    const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(sum)), hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(sum, 1));
    total += _mm512_reduce_add_pd(_mm512_add_pd(lo, hi));
  }
  for (; k < slices; k++) {
    const float top = _mm512_cvtss_f32(exp512(_mm512_set1_ps(sigma[k] - mx)));
    const bool tiny = !(top > 1e-36f);
    const float sg = tiny ? 0.0f : top / 255.0f, inv = tiny ? 0.0f : 255.0f / top;
    __m512 sum = _mm512_setzero_ps();
    const int codes = _mm512_reduce_add_epi32(slice(x + 32 * k, _mm512_set1_ps(inv), q + 32 * k, sum));
    sigma[k] = sg;
    sigmaSum[k] = sg * (float)codes;
    total += _mm512_reduce_add_ps(sum);
  }
  return (float)total;
}

Kernels makeTable() {
  Kernels k = avx2Kernels();
  k.name = "avx512vnni";
  k.scoresRowI8 = scoresRowI8;
  k.wsumColI8 = wsumColI8;
  k.scoresFp16 = scoresFp16;
  k.wsumFp16 = wsumFp16;
  k.softmaxExp = softmaxExp;
  k.quantizeU8 = quantizeU8;
  k.softmaxExpU8 = softmaxExpU8;
  k.quantizeHead = quantizeHeadRows;  // this file's AVX-512 compile of quantize_head.h
  return k;
}

}  // namespace

const Kernels& avx512Kernels() {
  static const Kernels table = makeTable();
  return table;
}

}  // namespace cpu
}  // namespace innerq
