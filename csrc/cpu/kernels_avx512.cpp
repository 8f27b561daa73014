// kernels_avx512.cpp - AVX-512 kernels: VNNI for the InnerQ integer paths, 512-bit fp16 rows (built with -mavx512f
// -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mavx512bitalg plus the AVX2 flags; only reached after cpuFeatures()
// confirmed all of them, OS support for the zmm state included). The KIVI-style float kernels, the softmax and the
// activation quantizers are the AVX2 ones, and so is every InnerQ shape the fast paths below do not cover (G > 32,
// head dims other than 128/256 for keys, 8-bit codes).
//
// Why these kernels are faster than the AVX2 ones: vpdpbusd multiplies 64 u8 x s8 byte pairs and adds each group of
// four products into a 32-bit lane in ONE instruction, where AVX2 needs maddubs + add + madd (and an hadd tree to
// bring per-block sums into lanes). The kernels are laid out so that no horizontal reduction happens per block:
//
//   lane layout "(row, half)": a zmm holds 16 int32 lanes = 8 rows x 2 halves. Row = token (keys) or channel (values).
//   For one 32-code block per row, four code vectors c_j (j = 0..3) hold, in bytes 8*row + i (i = 0..7), the code
//   of element 8j + i of that row's block. With an activation vector whose qword is x[8j .. 8j+7] in every row,
//   vpdpbusd adds x[8j+4h .. 8j+4h+3] . codes into lane (row, h): after j = 0..3, lane (row, 0) + lane (row, 1) is
//   the block's full dot product. The two halves are only added at the very end (once per 8 rows), because the
//   per-block float work is linear and the halves share the block's parameters: each half is scaled, and the
//   zero-point term (bz * sigmaSum, once per row) goes into the half-0 lane only.
//
// The block format makes c_j cheap: 2-bit byte i holds u[8j+i] in bits 2j..2j+1 (shift + mask), the 3-bit high plane
// is one bit per element (vpshufbitqmb picks bit 8j+i of the row's plane straight into a byte mask, then a masked add
// of 4), and 4-bit byte i holds u[i] | u[i+16] << 4 (nibble masks on qword 0 and 1 of the block).

// GCC 12's avx512fintrin.h builds its merge sources from self-initialised `__Y = __Y` temporaries, which -Wextra's
// -Wmaybe-uninitialized reports at every inlined intrinsic; the values are never read (the masks are all-ones).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <cstring>

#include "cpu_kernels.h"

namespace innerq {
namespace cpu {
namespace {

// See kernels_avx2.cpp: this file must not emit out-of-line copies of the shared inline helpers.
constexpr int vnniBlockBytes(int bits) { return bits == 2 ? 8 : bits == 3 ? 12 : bits == 4 ? 16 : 32; }
constexpr int vnniSymOffset(int bits) { return 1 << (bits - 1); }

inline __m512i bcastQword(const void* p) {
  int64_t w;
  std::memcpy(&w, p, 8);
  return _mm512_set1_epi64(w);
}

// ---------------------------------------------------------------------------------------------------------
// Code vectors for 8 rows of one block each. BlockSource<BITS> turns the raw bytes into c[0..3] (see top).
//
// 3-bit: the high plane of row r sits in the low dword of qword r of H; selector byte (r, i) of kPlaneSel[j] is
// 8j + i, so vpshufbitqmb returns bit 8j+i of row r's plane, i.e. bit 2 of the code in byte (r, i) of c[j].
inline void addHighPlane(__m512i H, __m512i c[4]) {
  const __m512i four = _mm512_set1_epi8(4);
  for (int j = 0; j < 4; j++) {
    const __m512i sel = _mm512_add_epi8(_mm512_set1_epi64(0x0706050403020100LL), _mm512_set1_epi8((char)(8 * j)));
    const __mmask64 k = _mm512_bitshuffle_epi64_mask(H, sel);
    c[j] = _mm512_mask_add_epi8(c[j], k, c[j], four);
  }
}

// lo: qword r = the 2-bit plane (8 bytes) of row r's block.
inline void splitTwoBit(__m512i lo, __m512i c[4]) {
  const __m512i m3 = _mm512_set1_epi8(3);
  c[0] = _mm512_and_si512(lo, m3);
  c[1] = _mm512_and_si512(_mm512_srli_epi64(lo, 2), m3);
  c[2] = _mm512_and_si512(_mm512_srli_epi64(lo, 4), m3);
  c[3] = _mm512_and_si512(_mm512_srli_epi64(lo, 6), m3);
}

// q0 / q1: qword r = bytes 0..7 / 8..15 of row r's 4-bit block (low nibbles: elements 0..15, high: 16..31).
inline void splitFourBit(__m512i q0, __m512i q1, __m512i c[4]) {
  const __m512i m15 = _mm512_set1_epi8(15);
  c[0] = _mm512_and_si512(q0, m15);
  c[1] = _mm512_and_si512(q1, m15);
  c[2] = _mm512_and_si512(_mm512_srli_epi64(q0, 4), m15);
  c[3] = _mm512_and_si512(_mm512_srli_epi64(q1, 4), m15);
}

// 8 consecutive 3-bit blocks at p (96 bytes: block r = dwords 3r, 3r+1 (2-bit plane), 3r+2 (high plane)):
// two overlapping loads (bytes 0..63 and 32..95) and two dword permutations. Index o of the 96-byte run is lane o
// of A for o < 16, else lane 16 + (o - 8) of the pair (A, B) (B starts at dword 8).
inline void threeBitRun(const uint8_t* p, __m512i c[4]) {
  const __m512i A = _mm512_loadu_si512(p), B = _mm512_loadu_si512(p + 32);
  const __m512i loIdx = _mm512_setr_epi32(0, 1, 3, 4, 6, 7, 9, 10, 12, 13, 15, 24, 26, 27, 29, 30);
  const __m512i hiIdx = _mm512_setr_epi32(2, 2, 5, 5, 8, 8, 11, 11, 14, 14, 25, 25, 28, 28, 31, 31);
  splitTwoBit(_mm512_permutex2var_epi32(A, loIdx, B), c);
  addHighPlane(_mm512_permutex2var_epi32(A, hiIdx, B), c);
}

// ---------------------------------------------------------------------------------------------------------
// InnerQ keys (kRowGrouped, G = 32, d = 128 or 256): 8 tokens per step, one 128-channel chunk (4 blocks) at a
// time. The token rows are transposed in registers so that each block b gives a "(token, half)" vector.
template <int BITS>
struct KeyChunk;

// 2-bit: a chunk row is 32 bytes (4 qwords = blocks 0..3); transpose 8 x 4 qwords with 8 two-source permutes.
template <>
struct KeyChunk<2> {
  __m512i Z[4];  // Z[b]: qword r = block b of row r
  template <int ROW>
  void load(const uint8_t* row) {  // row i at row + i*ROW
    __m512i L[4];
    for (int i = 0; i < 4; i++)
      L[i] = ROW == 32 ? _mm512_loadu_si512(row + 64 * i)  // d = 128: two rows are 64 contiguous bytes
                       : _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(row + 2 * i * ROW))),
                                            _mm256_loadu_si256((const __m256i*)(row + (2 * i + 1) * ROW)), 1);
    // X: blocks 0,1 of rows 0..3 (then 4..7); Y: blocks 2,3
    const __m512i i01 = _mm512_setr_epi64(0, 4, 8, 12, 1, 5, 9, 13), i23 = _mm512_setr_epi64(2, 6, 10, 14, 3, 7, 11, 15);
    const __m512i X0 = _mm512_permutex2var_epi64(L[0], i01, L[1]), Y0 = _mm512_permutex2var_epi64(L[0], i23, L[1]);
    const __m512i X1 = _mm512_permutex2var_epi64(L[2], i01, L[3]), Y1 = _mm512_permutex2var_epi64(L[2], i23, L[3]);
    Z[0] = _mm512_shuffle_i64x2(X0, X1, 0x44);  // 128-bit lanes (X0:0,1 | X1:0,1) = block 0, rows 0..7
    Z[1] = _mm512_shuffle_i64x2(X0, X1, 0xEE);
    Z[2] = _mm512_shuffle_i64x2(Y0, Y1, 0x44);
    Z[3] = _mm512_shuffle_i64x2(Y0, Y1, 0xEE);
  }
  void block(int b, __m512i c[4]) const { splitTwoBit(Z[b], c); }
};

// 3-bit: a chunk row is 48 bytes = 12 dwords; block b = dwords 3b, 3b+1 (2-bit plane) and 3b+2 (high plane).
// Per row pair one permute gathers the 2-bit planes into the 2-bit chunk layout; the high planes take 4 + 2 + 4.
template <>
struct KeyChunk<3> {
  KeyChunk<2> lo;
  __m512i Q[2];  // Q[0]: high planes of rows 0..3 (row-major, 4 blocks each), Q[1]: rows 4..7
  template <int ROW>
  void load(const uint8_t* row) {
    __m512i R[8];
    for (int i = 0; i < 8; i++) R[i] = _mm512_maskz_loadu_epi32(0x0fff, row + i * ROW);  // masked: never reads past the row
    const __m512i loIdx = _mm512_setr_epi32(0, 1, 3, 4, 6, 7, 9, 10, 16, 17, 19, 20, 22, 23, 25, 26);
    const __m512i hiIdx = _mm512_setr_epi32(2, 5, 8, 11, 18, 21, 24, 27, 2, 5, 8, 11, 18, 21, 24, 27);
    __m512i L[4], Hp[4];
    for (int i = 0; i < 4; i++) {
      L[i] = _mm512_permutex2var_epi32(R[2 * i], loIdx, R[2 * i + 1]);   // rows 2i, 2i+1: blocks 0..3 as qwords
      Hp[i] = _mm512_permutex2var_epi32(R[2 * i], hiIdx, R[2 * i + 1]);  // dwords 0..7: planes of rows 2i, 2i+1
    }
    const __m512i i01 = _mm512_setr_epi64(0, 4, 8, 12, 1, 5, 9, 13), i23 = _mm512_setr_epi64(2, 6, 10, 14, 3, 7, 11, 15);
    const __m512i X0 = _mm512_permutex2var_epi64(L[0], i01, L[1]), Y0 = _mm512_permutex2var_epi64(L[0], i23, L[1]);
    const __m512i X1 = _mm512_permutex2var_epi64(L[2], i01, L[3]), Y1 = _mm512_permutex2var_epi64(L[2], i23, L[3]);
    lo.Z[0] = _mm512_shuffle_i64x2(X0, X1, 0x44);
    lo.Z[1] = _mm512_shuffle_i64x2(X0, X1, 0xEE);
    lo.Z[2] = _mm512_shuffle_i64x2(Y0, Y1, 0x44);
    lo.Z[3] = _mm512_shuffle_i64x2(Y0, Y1, 0xEE);
    const __m512i iq = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
    Q[0] = _mm512_permutex2var_epi32(Hp[0], iq, Hp[1]);
    Q[1] = _mm512_permutex2var_epi32(Hp[2], iq, Hp[3]);
  }
  void block(int b, __m512i c[4]) const {
    lo.block(b, c);
    // dword 2r of H = plane of (row r, block b): rows 0..3 from Q[0] (index 4r + b), rows 4..7 from Q[1] (16 + ...)
    const __m512i ih = _mm512_add_epi32(_mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28),
                                        _mm512_set1_epi32(b));
    addHighPlane(_mm512_permutex2var_epi32(Q[0], ih, Q[1]), c);
  }
};

// 4-bit: a chunk row is 64 bytes = 8 qwords (block b = qwords 2b, 2b+1): a full 8 x 8 qword transpose.
template <>
struct KeyChunk<4> {
  __m512i C[8];  // C[k] = qword k of rows 0..7
  template <int ROW>
  void load(const uint8_t* row) {
    __m512i R[8], T[8], U[8];
    for (int i = 0; i < 8; i++) R[i] = _mm512_loadu_si512(row + i * ROW);
    for (int i = 0; i < 4; i++) {  // T[2i]: even qwords of rows 2i, 2i+1 interleaved; T[2i+1]: odd qwords
      T[2 * i] = _mm512_unpacklo_epi64(R[2 * i], R[2 * i + 1]);
      T[2 * i + 1] = _mm512_unpackhi_epi64(R[2 * i], R[2 * i + 1]);
    }
    // U: 128-bit lanes regrouped: U[0] = qwords {0, 4} of rows 0..3, U[1] = {2, 6}, U[2] = {1, 5}, U[3] = {3, 7};
    // U[4..7] the same for rows 4..7.
    for (int h = 0; h < 2; h++) {
      U[4 * h + 0] = _mm512_shuffle_i64x2(T[4 * h], T[4 * h + 2], 0x88);
      U[4 * h + 1] = _mm512_shuffle_i64x2(T[4 * h], T[4 * h + 2], 0xDD);
      U[4 * h + 2] = _mm512_shuffle_i64x2(T[4 * h + 1], T[4 * h + 3], 0x88);
      U[4 * h + 3] = _mm512_shuffle_i64x2(T[4 * h + 1], T[4 * h + 3], 0xDD);
    }
    C[0] = _mm512_shuffle_i64x2(U[0], U[4], 0x88);
    C[4] = _mm512_shuffle_i64x2(U[0], U[4], 0xDD);
    C[2] = _mm512_shuffle_i64x2(U[1], U[5], 0x88);
    C[6] = _mm512_shuffle_i64x2(U[1], U[5], 0xDD);
    C[1] = _mm512_shuffle_i64x2(U[2], U[6], 0x88);
    C[5] = _mm512_shuffle_i64x2(U[2], U[6], 0xDD);
    C[3] = _mm512_shuffle_i64x2(U[3], U[7], 0x88);
    C[7] = _mm512_shuffle_i64x2(U[3], U[7], 0xDD);
  }
  void block(int b, __m512i c[4]) const { splitFourBit(C[2 * b], C[2 * b + 1], c); }
};

// Scales (or zeros) of 8 tokens for channel chunk ch as 32 binary16 [token][block]; n = scales per token (4 or 8).
inline __m512i chunkHalves(const uint16_t* sc, int n, int ch) {
  if (n == 4) return _mm512_loadu_si512(sc);
  // n == 8: token t's chunk ch is qword 2t + ch of the 128 bytes at sc
  const __m512i A = _mm512_loadu_si512(sc), B = _mm512_loadu_si512(sc + 32);
  return _mm512_permutex2var_epi64(A, _mm512_add_epi64(_mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14), _mm512_set1_epi64(ch)), B);
}

// Lane (r, h) -> lane r of a 256-bit half: sum of the two halves of each row, for two accumulators at once
// (result lanes 0..7 from x, 8..15 from y).
inline __m512 foldHalves(__m512 x, __m512 y) {
  const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  return _mm512_add_ps(_mm512_permutex2var_ps(x, ev, y), _mm512_permutex2var_ps(x, od, y));
}

// Scores for 8 tokens whose code rows and binary16 scales/zeros are given: s[h*lds + i] for i < cnt.
// The group parameters are per (token, block): a = |scale|; for groups with a zero point bz = zero (asymmetric) or
// -a*2^(b-1) (symmetric), and score += a*sigma*D + bz*sigmaSum. Symmetric-only matrices (ZEROS = false) fold the
// offset into the integer sum instead: D - 2^(b-1) * S is exact, where S (the sum of the query slice's codes per
// half) is the accumulator's start value, so the float work is one multiply and one FMA per block and head.
template <int BITS, bool ZEROS, int R, int D>
inline void keyTokens8(const uint8_t* rows, const uint16_t* sc, const uint16_t* zr, const I8Set& q,
                       const __m512i* startS, float* s, size_t lds, int cnt) {
  constexpr int n = D / 32, ROW = n * vnniBlockBytes(BITS);
  __m512 acc[R];
  for (int h = 0; h < R; h++) acc[h] = _mm512_setzero_ps();
  const float off = (float)vnniSymOffset(BITS);
  for (int ch = 0; ch < D / 128; ch++) {
    KeyChunk<BITS> chunk;
    chunk.template load<ROW>(rows + ch * 4 * vnniBlockBytes(BITS));
    // The 8 tokens' 4 scales of this chunk (token t's n scales are at sc + t*n) as 32 binary16: [t][block].
    const __m512i raw = chunkHalves(sc, n, ch);
    const __m512 f0 = _mm512_cvtph_ps(_mm512_castsi512_si256(raw)), f1 = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(raw, 1));
    __m512 z0 = f0, z1 = f1;
    if (ZEROS) {
      const __m512i rz = chunkHalves(zr, n, ch);
      z0 = _mm512_cvtph_ps(_mm512_castsi512_si256(rz));
      z1 = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(rz, 1));
    }
    for (int b = 0; b < 4; b++) {
      // lane (t, half) <- float index 4t + b of (f0 | f1)
      const __m512i ib = _mm512_add_epi32(_mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28),
                                          _mm512_set1_epi32(b));
      const __m512 sg = _mm512_permutex2var_ps(f0, ib, f1);
      const __m512 a = _mm512_abs_ps(sg);
      __m512 bz = a;
      if (ZEROS) {
        const __mmask16 asym = _mm512_test_epi32_mask(_mm512_castps_si512(sg), _mm512_set1_epi32((int)0x80000000u));
        bz = _mm512_mask_blend_ps(asym, _mm512_mul_ps(a, _mm512_set1_ps(-off)), _mm512_permutex2var_ps(z0, ib, z1));
        bz = _mm512_maskz_mov_ps(0x5555, bz);  // the zero-point term once per token: only in its half-0 lane
      }
      const int k = 4 * ch + b;  // block (= group) index in the row
      __m512i c[4];
      chunk.block(b, c);
      for (int h = 0; h < R; h++) {
        const int8_t* qk = q.q + h * q.ldq + 32 * k;
        __m512i Dv = ZEROS ? _mm512_setzero_si512() : startS[h * n + k];
        Dv = _mm512_dpbusd_epi32(Dv, c[0], bcastQword(qk));
        Dv = _mm512_dpbusd_epi32(Dv, c[1], bcastQword(qk + 8));
        Dv = _mm512_dpbusd_epi32(Dv, c[2], bcastQword(qk + 16));
        Dv = _mm512_dpbusd_epi32(Dv, c[3], bcastQword(qk + 24));
        const __m512 x = _mm512_mul_ps(_mm512_cvtepi32_ps(Dv), _mm512_set1_ps(q.sigma[h * q.lds + k]));
        acc[h] = _mm512_fmadd_ps(x, a, acc[h]);
        if (ZEROS) acc[h] = _mm512_fmadd_ps(bz, _mm512_set1_ps(q.sigmaSum[h * q.lds + k]), acc[h]);
      }
    }
  }
  int h = 0;
  alignas(64) float tmp[16];
  for (; h + 2 <= R; h += 2) {
    const __m512 v = foldHalves(acc[h], acc[h + 1]);
    if (cnt == 8) {
      _mm256_storeu_ps(s + h * lds, _mm512_castps512_ps256(v));
      _mm256_storeu_ps(s + (h + 1) * lds, _mm512_extractf32x8_ps(v, 1));
    } else {
      _mm512_store_ps(tmp, v);
      for (int i = 0; i < cnt; i++) {
        s[h * lds + i] = tmp[i];
        s[(h + 1) * lds + i] = tmp[8 + i];
      }
    }
  }
  if (h < R) {
    _mm512_store_ps(tmp, foldHalves(acc[h], acc[h]));
    for (int i = 0; i < cnt; i++) s[h * lds + i] = tmp[i];
  }
}

template <int BITS, bool ZEROS, int R, int D>
void scoresRowVnni(const QuantRef& m, int t0, int t1, const I8Set& q, float* s, size_t lds) {
  constexpr int n = D / 32, ROW = n * vnniBlockBytes(BITS);
  // Symmetric start values: lane (t, half) = -2^(b-1) * (sum of the 16 query codes that half sees), see keyTokens8.
  alignas(64) __m512i startS[ZEROS ? 1 : R * n];
  if (!ZEROS)
    for (int h = 0; h < R; h++)
      for (int k = 0; k < n; k++) {
        int half[2] = {0, 0};
        for (int j = 0; j < 4; j++)
          for (int i = 0; i < 8; i++) half[i / 4] += q.q[h * q.ldq + 32 * k + 8 * j + i];
        const int64_t lo = (uint32_t)(-vnniSymOffset(BITS) * half[0]), hi = (uint32_t)(-vnniSymOffset(BITS) * half[1]);
        startS[h * n + k] = _mm512_set1_epi64((int64_t)((uint64_t)hi << 32 | (uint64_t)lo));
      }
  int tb = t0;
  for (; tb + 8 <= t1; tb += 8) {
    const uint8_t* rows = m.codes + (size_t)tb * ROW;
    // The hardware streamer follows one sequential stream well; a prefetch 2 steps ahead covers the gaps.
    for (int o = 0; o < 8 * ROW; o += 64) _mm_prefetch((const char*)(rows + 16 * ROW + o), _MM_HINT_T0);
    keyTokens8<BITS, ZEROS, R, D>(rows, m.scales + (size_t)tb * n, ZEROS ? m.zeros + (size_t)tb * n : nullptr, q, startS,
                                  s + (tb - t0), lds, 8);
  }
  if (tb < t1) {  // tail: copies of the rows, the missing ones repeating the last token (their results are not stored)
    const int cnt = t1 - tb;
    alignas(64) uint8_t rows[8 * ROW + 64];
    alignas(64) uint16_t sc[8 * n + 32], zr[8 * n + 32];
    for (int i = 0; i < 8; i++) {
      const int t = tb + (i < cnt ? i : cnt - 1);
      std::memcpy(rows + i * ROW, m.codes + (size_t)t * ROW, ROW);
      std::memcpy(sc + i * n, m.scales + (size_t)t * n, 2 * n);
      if (ZEROS) std::memcpy(zr + i * n, m.zeros + (size_t)t * n, 2 * n);
    }
    keyTokens8<BITS, ZEROS, R, D>(rows, sc, zr, q, startS, s + (tb - t0), lds, cnt);
  }
}

template <int BITS, bool ZEROS, int D>
void scoresRowVnniR(const QuantRef& m, int t0, int t1, const I8Set& q, int r, float* s, size_t lds) {
  switch (r) {
    case 1: return scoresRowVnni<BITS, ZEROS, 1, D>(m, t0, t1, q, s, lds);
    case 2: return scoresRowVnni<BITS, ZEROS, 2, D>(m, t0, t1, q, s, lds);
    case 3: return scoresRowVnni<BITS, ZEROS, 3, D>(m, t0, t1, q, s, lds);
    case 4: return scoresRowVnni<BITS, ZEROS, 4, D>(m, t0, t1, q, s, lds);
    case 5: return scoresRowVnni<BITS, ZEROS, 5, D>(m, t0, t1, q, s, lds);
    case 6: return scoresRowVnni<BITS, ZEROS, 6, D>(m, t0, t1, q, s, lds);
    case 7: return scoresRowVnni<BITS, ZEROS, 7, D>(m, t0, t1, q, s, lds);
    default: return scoresRowVnni<BITS, ZEROS, 8, D>(m, t0, t1, q, s, lds);
  }
}

template <int BITS>
void scoresRowVnniB(const QuantRef& m, int d, int t0, int t1, const I8Set& q, int r, float* s, size_t lds) {
  if (m.zeros)
    return d == 128 ? scoresRowVnniR<BITS, true, 128>(m, t0, t1, q, r, s, lds) : scoresRowVnniR<BITS, true, 256>(m, t0, t1, q, r, s, lds);
  return d == 128 ? scoresRowVnniR<BITS, false, 128>(m, t0, t1, q, r, s, lds) : scoresRowVnniR<BITS, false, 256>(m, t0, t1, q, r, s, lds);
}

void scoresRowI8(const QuantRef& m, const MatrixFormat& f, int d, int t0, int t1, const I8Set& q, int r, float* s,
                 size_t lds) {
  if (f.groupSize == 32 && (d == 128 || d == 256) && f.bits <= 4) {
    if (f.bits == 2) return scoresRowVnniB<2>(m, d, t0, t1, q, r, s, lds);
    if (f.bits == 3) return scoresRowVnniB<3>(m, d, t0, t1, q, r, s, lds);
    return scoresRowVnniB<4>(m, d, t0, t1, q, r, s, lds);
  }
  avx2Kernels().scoresRowI8(m, f, d, t0, t1, q, r, s, lds);
}

// ---------------------------------------------------------------------------------------------------------
// InnerQ values (kColGrouped, G = 32): rows = 8 consecutive channels, whose blocks for one token group are
// contiguous (8 * blockBytes). Loop order: tiles of 8 token groups; within a tile channel chunk outer, token groups
// inner, so that the R accumulators stay in registers; each chunk pass reads its own cache lines of the tile.
template <int BITS>
inline void valueRun(const uint8_t* p, __m512i c[4]) {
  if (BITS == 2) {
    splitTwoBit(_mm512_loadu_si512(p), c);
  } else if (BITS == 3) {
    threeBitRun(p, c);
  } else {  // 4-bit: channels 0..3 in A, 4..7 in B, two qwords each
    const __m512i A = _mm512_loadu_si512(p), B = _mm512_loadu_si512(p + 64);
    splitFourBit(_mm512_permutex2var_epi64(A, _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14), B),
                 _mm512_permutex2var_epi64(A, _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15), B), c);
  }
}

template <int BITS, bool ZEROS, int R>
void wsumColVnni(const QuantRef& m, int d, int g0, int g1, const U8Set& p, float* out) {
  constexpr int bb = vnniBlockBytes(BITS), kTile = 8;  // token groups per tile
  const float off = (float)vnniSymOffset(BITS);
  const __m512i dup = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
  // Accumulators in the (channel, half) lane layout, [head][chunk]: registers within a tile, L1 between tiles.
  alignas(64) float accMem[R * 2 * kMaxHeadDim];
  std::memset(accMem, 0, sizeof(float) * R * 2 * d);
  const int chunks = d / 8;
  for (int tt = g0; tt < g1; tt += kTile) {
    const int te = tt + kTile < g1 ? tt + kTile : g1;
    // The next tile's codes (contiguous: token groups are d blocks apart), spread over this tile's chunk passes so
    // that DRAM sees one sequential stream although each pass reads one cache line per token group.
    const size_t nextBytes = te < g1 ? (size_t)((g1 - te < kTile ? g1 - te : kTile) * d) * bb : 0;
    const char* next = (const char*)(m.codes + (size_t)te * d * bb);
    const size_t perChunk = (nextBytes / chunks + 63) & ~(size_t)63;
    for (int c = 0; c < chunks; c++) {
      const int j0 = 8 * c;
      for (size_t o = c * perChunk; o < (c + 1) * perChunk && o < nextBytes; o += 64) _mm_prefetch(next + o, _MM_HINT_T0);
      __m512 acc[R];
      for (int h = 0; h < R; h++) acc[h] = _mm512_load_ps(accMem + (h * chunks + c) * 16);
      for (int tg = tt; tg < te; tg++) {
        const size_t gi = (size_t)tg * d + j0;
        __m512i cv[4];
        valueRun<BITS>(m.codes + gi * bb, cv);
        const __m512 sg = _mm512_permutexvar_ps(dup, _mm512_castps256_ps512(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(m.scales + gi)))));
        const __m512 a = _mm512_abs_ps(sg);
        __m512 bz = _mm512_mul_ps(a, _mm512_set1_ps(-off));
        if (ZEROS) {
          const __m512 z = _mm512_permutexvar_ps(dup, _mm512_castps256_ps512(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(m.zeros + gi)))));
          bz = _mm512_mask_blend_ps(_mm512_test_epi32_mask(_mm512_castps_si512(sg), _mm512_set1_epi32((int)0x80000000u)), bz, z);
        }
        bz = _mm512_maskz_mov_ps(0x5555, bz);  // the zero-point term once per channel: only in its half-0 lane
        for (int h = 0; h < R; h++) {
          const uint8_t* pk = p.q + h * p.ldq + (size_t)tg * 32;
          __m512i D = _mm512_dpbusd_epi32(_mm512_setzero_si512(), bcastQword(pk), cv[0]);  // weights unsigned, codes signed
          D = _mm512_dpbusd_epi32(D, bcastQword(pk + 8), cv[1]);
          D = _mm512_dpbusd_epi32(D, bcastQword(pk + 16), cv[2]);
          D = _mm512_dpbusd_epi32(D, bcastQword(pk + 24), cv[3]);
          const __m512 x = _mm512_mul_ps(_mm512_cvtepi32_ps(D), _mm512_set1_ps(p.sigma[h * p.lds + tg]));
          acc[h] = _mm512_fmadd_ps(x, a, acc[h]);
          acc[h] = _mm512_fmadd_ps(bz, _mm512_set1_ps(p.sigmaSum[h * p.lds + tg]), acc[h]);
        }
      }
      for (int h = 0; h < R; h++) _mm512_store_ps(accMem + (h * chunks + c) * 16, acc[h]);
    }
  }
  for (int c = 0; c < chunks; c++) {
    int h = 0;
    for (; h + 2 <= R; h += 2) {
      const __m512 v = foldHalves(_mm512_load_ps(accMem + (h * chunks + c) * 16), _mm512_load_ps(accMem + ((h + 1) * chunks + c) * 16));
      float* o0 = out + h * d + 8 * c;
      float* o1 = out + (h + 1) * d + 8 * c;
      _mm256_storeu_ps(o0, _mm256_add_ps(_mm256_loadu_ps(o0), _mm512_castps512_ps256(v)));
      _mm256_storeu_ps(o1, _mm256_add_ps(_mm256_loadu_ps(o1), _mm512_extractf32x8_ps(v, 1)));
    }
    if (h < R) {
      const __m512 x = _mm512_load_ps(accMem + (h * chunks + c) * 16);
      float* o0 = out + h * d + 8 * c;
      _mm256_storeu_ps(o0, _mm256_add_ps(_mm256_loadu_ps(o0), _mm512_castps512_ps256(foldHalves(x, x))));
    }
  }
}

template <int BITS, bool ZEROS>
void wsumColVnniR(const QuantRef& m, int d, int g0, int g1, const U8Set& p, int r, float* out) {
  switch (r) {
    case 1: return wsumColVnni<BITS, ZEROS, 1>(m, d, g0, g1, p, out);
    case 2: return wsumColVnni<BITS, ZEROS, 2>(m, d, g0, g1, p, out);
    case 3: return wsumColVnni<BITS, ZEROS, 3>(m, d, g0, g1, p, out);
    case 4: return wsumColVnni<BITS, ZEROS, 4>(m, d, g0, g1, p, out);
    case 5: return wsumColVnni<BITS, ZEROS, 5>(m, d, g0, g1, p, out);
    case 6: return wsumColVnni<BITS, ZEROS, 6>(m, d, g0, g1, p, out);
    case 7: return wsumColVnni<BITS, ZEROS, 7>(m, d, g0, g1, p, out);
    default: return wsumColVnni<BITS, ZEROS, 8>(m, d, g0, g1, p, out);
  }
}

void wsumColI8(const QuantRef& m, const MatrixFormat& f, int d, int g0, int g1, const U8Set& p, int r, float* out) {
  if (f.groupSize == 32 && f.bits <= 4) {
    const bool z = m.zeros != nullptr;
    if (f.bits == 2) return z ? wsumColVnniR<2, true>(m, d, g0, g1, p, r, out) : wsumColVnniR<2, false>(m, d, g0, g1, p, r, out);
    if (f.bits == 3) return z ? wsumColVnniR<3, true>(m, d, g0, g1, p, r, out) : wsumColVnniR<3, false>(m, d, g0, g1, p, r, out);
    return z ? wsumColVnniR<4, true>(m, d, g0, g1, p, r, out) : wsumColVnniR<4, false>(m, d, g0, g1, p, r, out);
  }
  avx2Kernels().wsumColI8(m, f, d, g0, g1, p, r, out);
}

// ---------------------------------------------------------------------------------------------------------
// fp16 rows with 512-bit vectors (the baseline must not be handicapped where InnerQ is not: these are the AVX2
// kernels' loop structures with twice the width, so one converted row chunk feeds HB FMAs of 16 lanes).
inline __m256 sumHalves(__m512 v) { return _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1)); }

// Lane i of the result = horizontal sum of v[i], for 8 vectors (as kernels_avx2.cpp's hsum8).
inline __m256 hsum8x(const __m512* v) {
  __m256 h[8];
  for (int k = 0; k < 8; k++) h[k] = sumHalves(v[k]);
  const __m256 a = _mm256_hadd_ps(_mm256_hadd_ps(h[0], h[1]), _mm256_hadd_ps(h[2], h[3]));
  const __m256 b = _mm256_hadd_ps(_mm256_hadd_ps(h[4], h[5]), _mm256_hadd_ps(h[6], h[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
}

// Scores: TB tokens x HB heads = 8 accumulators over the channels (d a multiple of 16), one reduction per 8 pairs.
template <int HB>
void scoresFp16T(const uint16_t* rows, size_t ld, int n, int d, const float* q, float* s, size_t lds) {
  constexpr int TB = 8 / HB;
  for (int i = 0; i < n; i += TB) {
    const uint16_t* rp[TB];
    for (int t = 0; t < TB; t++) rp[t] = rows + (size_t)(i + t < n ? i + t : n - 1) * ld;  // clamp the tail
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

void scoresFp16(const uint16_t* rows, size_t ld, int n, int d, const float* q, int r, float* s, size_t lds) {
  if (d % 16) return avx2Kernels().scoresFp16(rows, ld, n, d, q, r, s, lds);
  int h = 0;
  for (; h + 8 <= r; h += 8) scoresFp16T<8>(rows, ld, n, d, q + h * d, s + h * lds, lds);
  for (; h + 4 <= r; h += 4) scoresFp16T<4>(rows, ld, n, d, q + h * d, s + h * lds, lds);
  for (; h + 2 <= r; h += 2) scoresFp16T<2>(rows, ld, n, d, q + h * d, s + h * lds, lds);
  for (; h < r; h++) scoresFp16T<1>(rows, ld, n, d, q + h * d, s + h * lds, lds);
}

// Weighted sum: as kernels_avx2.cpp's wsumFp16T (token tiles, two-level summation, next tile prefetched), with
// CV vectors of 16 channels x HB heads of accumulators in registers.
template <int HB, int CV>
void wsumFp16T(const uint16_t* rows, size_t ld, int n, int d, const float* p, size_t ldp, float* out) {
  constexpr int kTile = 64;
  for (int i0 = 0; i0 < n; i0 += kTile) {
    const int i1 = i0 + kTile < n ? i0 + kTile : n;
    for (int i = i1; i < i1 + kTile && i < n; i++)
      for (int j = 0; j < d; j += 32) _mm_prefetch((const char*)(rows + (size_t)i * ld + j), _MM_HINT_T0);
    for (int j = 0; j < d; j += 16 * CV) {
      __m512 acc[HB][CV];
      for (int h = 0; h < HB; h++)
        for (int c = 0; c < CV; c++) acc[h][c] = _mm512_setzero_ps();
      for (int i = i0; i < i1; i++) {
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

void wsumFp16(const uint16_t* rows, size_t ld, int n, int d, const float* p, size_t ldp, int r, float* out) {
  if (d % 32) return avx2Kernels().wsumFp16(rows, ld, n, d, p, ldp, r, out);
  int h = 0;
  for (; h + 8 <= r; h += 8) wsumFp16T<8, 1>(rows, ld, n, d, p + h * ldp, ldp, out + h * d);
  for (; h + 4 <= r; h += 4) wsumFp16T<4, 2>(rows, ld, n, d, p + h * ldp, ldp, out + h * d);
  for (; h + 2 <= r; h += 2) wsumFp16T<2, 2>(rows, ld, n, d, p + h * ldp, ldp, out + h * d);
  for (; h < r; h++) wsumFp16T<1, 2>(rows, ld, n, d, p + h * ldp, ldp, out + h * d);
}

Kernels makeTable() {
  Kernels k = avx2Kernels();
  k.name = "avx512vnni";
  k.scoresRowI8 = scoresRowI8;
  k.wsumColI8 = wsumColI8;
  k.scoresFp16 = scoresFp16;
  k.wsumFp16 = wsumFp16;
  return k;
}

}  // namespace

const Kernels& avx512Kernels() {
  static const Kernels table = makeTable();
  return table;
}

}  // namespace cpu
}  // namespace innerq
