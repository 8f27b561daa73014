// cpu_kernels.h - internal: the GEMV kernel table of the CPU backend. Two implementations exist:
// kernels_portable.cpp (plain C++, any CPU), kernels_avx2.cpp (AVX2/FMA/F16C, compiled with those flags and selected
// at run time) and kernels_avx512.cpp (the AVX2 table with AVX-512 VNNI InnerQ kernels). All implement exactly the
// same arithmetic contract, so the tests run every table the machine has.
//
// Conventions shared by every kernel:
//  - a kernel sees ONE kv head and at most kMaxHeadBlock query heads (r) of it; the caller loops over blocks.
//  - queries are already multiplied by 1/sqrt(d) (and by the key norm f for quantized segments).
//  - score outputs are written (not accumulated): s[h*lds + i]; value outputs are ACCUMULATED into out[h*d + j].
//  - quantized kernels see one page's slice of one head (QuantRef) and a token range inside that page, except the
//    InnerQ integer kernels, which see a run of consecutive pages (QuantRun) and a token range inside the run.
#pragma once
#include <cstddef>
#include <cstdint>
#include "../../kernels/format.cuh"

namespace innerq {
namespace cpu {

constexpr int kMaxHeadBlock = 8;
constexpr int kMaxHeadDim = 256;

struct QuantRef {
  const uint8_t* codes;    // this head's code slice inside a page
  const uint16_t* scales;  // this head's scale slice
  const uint16_t* zeros;   // this head's zero slice, nullptr when the format has none (kSym)
  // The same head's slices in the page the caller visits next, when the visited range continues there (else
  // nullptr): prefetch hints only, so that a kernel streams into the next page instead of stalling at its start
  // (each page starts a new stream for the codes, the scales and the zeros).
  const uint8_t* nextCodes = nullptr;
  const uint16_t* nextScales = nullptr;
  const uint16_t* nextZeros = nullptr;
  void setNext(const QuantRef& n) {
    nextCodes = n.codes;
    nextScales = n.scales;
    nextZeros = n.zeros;
  }
};

// A run of consecutive cache pages of one kv head's matrix, as the InnerQ kernels take them: run slot t is slot
// t % pageTokens of pages[t / pageTokens]. One call per run instead of one per page, so that what a kernel sets up
// per call (the AVX-512 key kernel's query vectors, the value kernel's accumulators) is paid once per run: at
// 256-token pages that setup was 0.5 (keys) to 1 (values) cycles per token and kv head of ~13.
// pages[i].next* point at pages[i + 1]; the last page's at the page the caller visits after the run, or null.
struct QuantRun {
  const QuantRef* pages;
  int count;       // >= 1
  int pageTokens;  // a multiple of 32 (of 128 through the facade)
};

// Calls fn(i, pages[i], s0, s1, offset) for every page i of the run that overlaps run slots [t0, t1): its page slots
// [s0, s1), whose first one is run slot t0 + offset. For the tables whose kernels work page by page.
template <class F>
inline void forEachRunPage(const QuantRun& run, int t0, int t1, F&& fn) {
  const int P = run.pageTokens;
  for (int i = t0 / P; i < run.count && i * P < t1; i++) {
    const int a = t0 > i * P ? t0 : i * P, b = t1 < (i + 1) * P ? t1 : (i + 1) * P;
    if (b > a) fn(i, run.pages[i], a - i * P, b - i * P, a - t0);
  }
}

// int8-quantized activations (the InnerQ integer path). Row h (query head h of the block) starts at
// q + h*ldq; its 32-element slice k has scale sigma[h*lds + k] and sigmaSum[h*lds + k] = sigma * Σ q (the sum
// of the QUANTIZED slice, so that the zero-point term is consistent with the integer dot product).
struct I8Set {
  const int8_t* q;
  size_t ldq;
  const float* sigma;
  const float* sigmaSum;
  size_t lds;
};

// u8-quantized non-negative weights (the InnerQ value path): as I8Set with codes in [0, 255], sigma = max/255.
struct U8Set {
  const uint8_t* q;
  size_t ldq;
  const float* sigma;
  const float* sigmaSum;
  size_t lds;
};

// Run page i's share of run-relative weights, page-relative (its first slot is run slot i * pageTokens).
inline U8Set pageWeights(const U8Set& p, int i, int pageTokens) {
  const size_t shift = (size_t)i * pageTokens;
  return U8Set{p.q + shift, p.ldq, p.sigma + shift / 32, p.sigmaSum + shift / 32, p.lds};
}

// One kv head's share of CpuBackend::quantizeRows (quantize_head.h): `count` token rows starting at quantized
// index firstQuantized (multiples of G for kColGrouped formats).
struct QuantizeHeadJob {
  const uint16_t* rows;  // [count][ld] binary16 token rows of all kv heads; this head's channels start at kh * d
  size_t ld;
  int kh, d, count, firstQuantized, pageTokens;
  const float* norm;     // keys: the layer's normalization factors [kvHeads][d] (stored keys are K / f), else nullptr
  MatrixFormat format;
  QuantRef (*pageRef)(const void* ctx, int page, int kh);  // this head's slices of page `page`
  const void* ctx;
};

struct Kernels {
  const char* name;
  // fp16 rows: s[h*lds + i] = Σ_j q[h*d + j] * rows[i*ld + j], i in [0, n). next: where the caller's walk goes on
  // (the same head's rows in the next page, same ld) or nullptr; a prefetch hint only, as QuantRef::nextCodes.
  void (*scoresFp16)(const uint16_t* rows, size_t ld, int n, int d, const float* q, int r, float* s, size_t lds,
                     const uint16_t* next);
  // fp16 rows: out[h*d + j] += Σ_i p[h*ldp + i] * rows[i*ld + j]. next: as for scoresFp16.
  void (*wsumFp16)(const uint16_t* rows, size_t ld, int n, int d, const float* p, size_t ldp, int r, float* out,
                   const uint16_t* next);
  // InnerQ keys (kRowGrouped), integer path: run slots [t0, t1); s[h*lds + (t - t0)].
  void (*scoresRowI8)(const QuantRun& m, const MatrixFormat& f, int d, int t0, int t1, const I8Set& q, int r,
                      float* s, size_t lds);
  // KIVI-style keys (kColGrouped), integer path: page token groups [g0, g1); s[h*lds + (t - g0*G)]. q is float (the
  // scale varies per channel and token group, so it is folded per group): for token group g and head h,
  // q~_j = q_j * a_gj (float), quantized with this table's quantizeI8 (int8 per 32-channel slice k, sigma_k), and
  //   s_t = Σ_j q_j * bz_gj + off * (Σ_j q~_j - Σ_k sigma_k Σ_{j in k} qi_j)  +  Σ_k sigma_k * Σ_{j in k} qi_j * u_tj
  // (u: the unsigned code, off = 2^(bits-1), integer sums exact). That is Σ_j q~_j (u_tj - off) through the int8
  // image and Σ_j q~_j off exactly: the codes are centered without a per-token instruction (the correction is one
  // constant per group and head; maddubs needs the codes unsigned), so the int8 rounding of q~ meets u - off, not u,
  // and no longer shifts every token of a group by Σ_j e_j * off alike (which the softmax does not cancel: uncentered,
  // the worst attend row of test/cache.test.ts's kivi cases was 12-22 % of the weighted value magnitude).
  // |s_t - Σ_j q_j * k^_tj| <= Σ_k (sigma_k / 2) Σ_{j in k} |u_tj - off| plus float rounding.
  void (*scoresColI8)(const QuantRef& m, const MatrixFormat& f, int d, int g0, int g1, const float* q, int r,
                      float* s, size_t lds);
  // InnerQ values (kColGrouped), integer path with u8 weights: run token groups [g0, g1). p's slice index k covers
  // run slots 32k .. 32k+31 (p rows are run-relative). Accumulates into out.
  void (*wsumColI8)(const QuantRun& m, const MatrixFormat& f, int d, int g0, int g1, const U8Set& p, int r, float* out);
  // KIVI-style values (kRowGrouped), integer path: page slots [t0, t1); p[h*ldp + (t - t0)] (float, >= 0).
  // Accumulates into out. For head h, channel group g and each 32-slot-aligned slice of [t0, t1) (slot multiples of
  // 32; a partial slice at either end is quantized alone), the weights w_t = p_t * a_tg go through this table's
  // quantizeU8 (sigma = max w / 255; padded with zeros to 32), and with centered codes (off = 2^(bits-1))
  //   out_j += sigma * Σ_t wi_t * (u_tj - off)  +  Σ_t p_t * (bz_tg + a_tg * off)   (the float term is 0 for sym)
  // so the error is at most Σ_slices (sigma / 2) Σ_t |u_tj - off| plus float rounding. Centering halves the
  // int16 partial sums (|u - off| <= off), which lets 3- and 4-bit codes accumulate twice as many tokens in int16.
  // 8-bit codes: float (out_j += Σ_t p_t * (a_tg * u_tj + bz_tg) in fp32), since maddubs would saturate.
  void (*wsumRowI8)(const QuantRef& m, const MatrixFormat& f, int d, int t0, int t1, const float* p, size_t ldp, int r,
                    float* out);
  // Unnormalized, numerically stable softmax of one row (n >= 1): s[i] <- exp(s[i] - max s), returns Σ s[i] and
  // stores max s at *maxOut. The caller divides the value sums by the sum at the end (d multiplies instead of a third
  // pass over T); the max lets it merge rows that were exponentiated in separate chunks (cpu_backend.cpp's attend).
  float (*softmaxExp)(float* s, int n, float* maxOut);
  // Quantize n (multiple of 32) floats to int8 per 32-slice: sigma = max|x|/127, q = round(x/sigma).
  void (*quantizeI8)(const float* x, int n, int8_t* q, float* sigma, float* sigmaSum);
  // Quantize n (multiple of 32) NON-NEGATIVE floats (softmax weights) to unsigned 8 bits per 32-slice:
  // sigma = max/255, q = round(x/sigma) in [0, 255] (negative inputs clamp to 0).
  void (*quantizeU8)(const float* x, int n, uint8_t* q, float* sigma, float* sigmaSum);
  // Prefill / append quantization of one kv head (the shared scalar quantizer, compiled with this table's flags).
  void (*quantizeHead)(const QuantizeHeadJob& job);
  // softmaxExp(s, n, maxOut) and then quantizeU8(s + qa, qn, q, sigma, sigmaSum) in one go (0 <= qa, qa + qn <= n,
  // qn a multiple of 32), except that s[qa, qa + qn) is left unspecified: those weights exist only as u8 codes.
  // Returns Σ exp over all n. The codes may differ from the composition by one where exp rounds differently.
  // Tables without a fused version (portable, avx2) use softmaxExpU8Composed<their softmaxExp, their quantizeU8>.
  float (*softmaxExpU8)(float* s, int n, int qa, int qn, float* maxOut, uint8_t* q, float* sigma, float* sigmaSum);
};

// The run entries of a table whose InnerQ kernels work page by page (PAGE_KEYS / PAGE_VALUES: the per-page
// signatures, page-relative slots, groups and weights).
template <void (*PAGE_KEYS)(const QuantRef&, const MatrixFormat&, int, int, int, const I8Set&, int, float*, size_t)>
void scoresRowI8ByPage(const QuantRun& m, const MatrixFormat& f, int d, int t0, int t1, const I8Set& q, int r, float* s,
                       size_t lds) {
  forEachRunPage(m, t0, t1, [&](int, const QuantRef& page, int s0, int s1, int offset) {
    PAGE_KEYS(page, f, d, s0, s1, q, r, s + offset, lds);
  });
}
template <void (*PAGE_VALUES)(const QuantRef&, const MatrixFormat&, int, int, int, const U8Set&, int, float*)>
void wsumColI8ByPage(const QuantRun& m, const MatrixFormat& f, int d, int g0, int g1, const U8Set& p, int r, float* out) {
  const int G = f.groupSize;
  forEachRunPage(m, g0 * G, g1 * G, [&](int i, const QuantRef& page, int s0, int s1, int) {
    PAGE_VALUES(page, f, d, s0 / G, s1 / G, pageWeights(p, i, m.pageTokens), r, out);
  });
}

// softmaxExpU8 as SOFTMAX then QUANTIZE. Instantiated with a table file's own (internal-linkage) functions, the
// instantiation is internal to that file too, so it never mixes instruction sets across tables.
template <float (*SOFTMAX)(float*, int, float*), void (*QUANTIZE)(const float*, int, uint8_t*, float*, float*)>
float softmaxExpU8Composed(float* s, int n, int qa, int qn, float* maxOut, uint8_t* q, float* sigma, float* sigmaSum) {
  const float z = SOFTMAX(s, n, maxOut);
  if (qn > 0) QUANTIZE(s + qa, qn, q, sigma, sigmaSum);
  return z;
}

const Kernels& portableKernels();
const Kernels& avx2Kernels();  // only call when the CPU has AVX2, FMA and F16C
// The AVX2 table with the InnerQ integer paths replaced by AVX-512 VNNI kernels; only call when cpuFeatures()
// reports avx512vnni (F, BW, VL, DQ, VNNI, BITALG and the OS saving zmm state).
const Kernels& avx512Kernels();

// Fast exact binary16 -> float for the portable path (fp16.cuh's halfToFloat goes through double/ldexp).
inline float halfBitsToFloat(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff, bits;
  if (e == 0) {
    if (m == 0) {
      bits = sign;
    } else {  // subnormal: shift the mantissa up until its leading bit is the implicit one
      e = 113;  // 127 - 15 + 1
      while (!(m & 0x400)) { m <<= 1; e--; }
      bits = sign | (e << 23) | ((m & 0x3ff) << 13);
    }
  } else if (e == 31) {
    bits = sign | 0x7f800000u | (m << 13);
  } else {
    bits = sign | ((e + 112) << 23) | (m << 13);  // rebias 15 -> 127
  }
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}

}  // namespace cpu
}  // namespace innerq
