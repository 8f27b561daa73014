// kernels_portable.cpp - the portable (no intrinsics) implementation of the CPU kernel table. It implements the
// same arithmetic as kernels_avx2.cpp (the InnerQ paths are the int8-activation integer paths, not float
// dequantization), so that the accuracy bounds tested on it hold for the SIMD path as well.
#include <cmath>
#include <cstring>
#include "cpu_kernels.h"
#include "quantize_head.h"

namespace innerq {
namespace cpu {
namespace {

void quantizeI8(const float* x, int n, int8_t* q, float* sigma, float* sigmaSum);
void quantizeU8(const float* x, int n, uint8_t* q, float* sigma, float* sigmaSum);

// Per-group decode parameters in the form x^ = a*u + bz: symmetric groups have bz = -a*2^(b-1), asymmetric
// (scale sign bit set) have bz = zero.
inline void groupParams(uint16_t scaleBits, const uint16_t* zeros, size_t idx, int bits, float& a, float& bz) {
  a = halfBitsToFloat((uint16_t)(scaleBits & 0x7fff));
  bz = (scaleBits & 0x8000) ? halfBitsToFloat(zeros[idx]) : -a * (float)symOffset(bits);
}

void scoresFp16(const uint16_t* rows, size_t ld, int n, int d, const float* q, int r, float* s, size_t lds, const uint16_t*) {
  float k[kMaxHeadDim];
  for (int i = 0; i < n; i++) {
    for (int j = 0; j < d; j++) k[j] = halfBitsToFloat(rows[i * ld + j]);
    for (int h = 0; h < r; h++) {
      float acc = 0;
      for (int j = 0; j < d; j++) acc += q[h * d + j] * k[j];
      s[h * lds + i] = acc;
    }
  }
}

void wsumFp16(const uint16_t* rows, size_t ld, int n, int d, const float* p, size_t ldp, int r, float* out, const uint16_t*) {
  float v[kMaxHeadDim];
  for (int i = 0; i < n; i++) {
    for (int j = 0; j < d; j++) v[j] = halfBitsToFloat(rows[i * ld + j]);
    for (int h = 0; h < r; h++) {
      const float w = p[h * ldp + i];
      for (int j = 0; j < d; j++) out[h * d + j] += w * v[j];
    }
  }
}

void scoresRowI8Page(const QuantRef& m, const MatrixFormat& f, int d, int t0, int t1, const I8Set& q, int r, float* s,
                 size_t lds) {
  const int G = f.groupSize, n = d / G, spg = G / 32, gb = groupBytes(f.bits, G), bb = blockBytes(f.bits);
  uint8_t u[32];
  for (int t = t0; t < t1; t++) {
    float acc[kMaxHeadBlock] = {0};
    for (int g = 0; g < n; g++) {
      const size_t gi = (size_t)t * n + g;
      float a, bz;
      groupParams(m.scales[gi], m.zeros, gi, f.bits, a, bz);
      for (int sl = 0; sl < spg; sl++) {
        unpackBlock32(m.codes + gi * gb + (size_t)sl * bb, f.bits, u);
        const int k = g * spg + sl;
        for (int h = 0; h < r; h++) {
          const int8_t* qs = q.q + h * q.ldq + k * 32;
          int D = 0;
          for (int e = 0; e < 32; e++) D += (int)u[e] * (int)qs[e];
          acc[h] += a * (q.sigma[h * q.lds + k] * (float)D) + bz * q.sigmaSum[h * q.lds + k];
        }
      }
    }
    for (int h = 0; h < r; h++) s[h * lds + (t - t0)] = acc[h];
  }
}

// KIVI-style 8-bit codes: the float paths (the contract in cpu_kernels.h; kernels_avx2.cpp says why).
void scoresColFloat(const QuantRef& m, const MatrixFormat& f, int d, int g0, int g1, const float* q, int r, float* s,
                size_t lds) {
  const int G = f.groupSize, spg = G / 32, gb = groupBytes(f.bits, G), bb = blockBytes(f.bits);
  uint8_t u[32];
  for (int tg = g0; tg < g1; tg++) {
    float* sg = s + (size_t)(tg - g0) * G;
    for (int h = 0; h < r; h++)
      for (int t = 0; t < G; t++) sg[h * lds + t] = 0;
    for (int j = 0; j < d; j++) {
      const size_t gi = (size_t)tg * d + j;
      float a, bz;
      groupParams(m.scales[gi], m.zeros, gi, f.bits, a, bz);
      for (int sl = 0; sl < spg; sl++) {
        unpackBlock32(m.codes + gi * gb + (size_t)sl * bb, f.bits, u);
        for (int h = 0; h < r; h++) {
          // folded: q~ = q*a per (group, channel), constant c = q*bz
          const float qt = q[h * d + j] * a, c = q[h * d + j] * bz;
          float* o = sg + h * lds + sl * 32;
          for (int e = 0; e < 32; e++) o[e] += qt * (float)u[e] + c;
        }
      }
    }
  }
}

void wsumRowFloat(const QuantRef& m, const MatrixFormat& f, int d, int t0, int t1, const float* p, size_t ldp, int r,
              float* out) {
  const int G = f.groupSize, n = d / G, spg = G / 32, gb = groupBytes(f.bits, G), bb = blockBytes(f.bits);
  uint8_t u[32];
  for (int t = t0; t < t1; t++) {
    for (int g = 0; g < n; g++) {
      const size_t gi = (size_t)t * n + g;
      float a, bz;
      groupParams(m.scales[gi], m.zeros, gi, f.bits, a, bz);
      for (int sl = 0; sl < spg; sl++) {
        unpackBlock32(m.codes + gi * gb + (size_t)sl * bb, f.bits, u);
        for (int h = 0; h < r; h++) {
          const float w = p[h * ldp + (t - t0)], pt = w * a, c = w * bz;  // folded: p~ = p*a
          float* o = out + h * d + g * G + sl * 32;
          for (int e = 0; e < 32; e++) o[e] += pt * (float)u[e] + c;
        }
      }
    }
  }
}

// KIVI-style keys, integer path (contract in cpu_kernels.h): per token group and head, fold the scale into the
// query (q~ = q*a, exact up to one float rounding), quantize q~ to int8 per 32-channel slice, and sum the exact
// integer dot products of each slice with the codes; the zero term Σ q*bz stays float.
void scoresColI8(const QuantRef& m, const MatrixFormat& f, int d, int g0, int g1, const float* q, int r, float* s,
                 size_t lds) {
  if (f.bits == 8) return scoresColFloat(m, f, d, g0, g1, q, r, s, lds);
  const int G = f.groupSize, spg = G / 32, gb = groupBytes(f.bits, G), bb = blockBytes(f.bits), ns = d / 32;
  uint8_t u[kMaxHeadDim][32];
  float qt[kMaxHeadDim], sg[kMaxHeadDim / 32], sS[kMaxHeadDim / 32];
  int8_t qi[kMaxHeadDim];
  for (int tg = g0; tg < g1; tg++) {
    float* sg0 = s + (size_t)(tg - g0) * G;
    for (int h = 0; h < r; h++) {
      float c = 0;
      for (int j = 0; j < d; j++) {
        const size_t gi = (size_t)tg * d + j;
        float a, bz;
        groupParams(m.scales[gi], m.zeros, gi, f.bits, a, bz);
        qt[j] = q[h * d + j] * a;
        c += q[h * d + j] * bz;
      }
      quantizeI8(qt, d, qi, sg, sS);
      // centering (contract in cpu_kernels.h): c += off * (Σ_j q~_j - Σ_k sigma_k * Σ_{j in k} qi_j)
      float sum = 0, ss = 0;
      for (int j = 0; j < d; j++) sum += qt[j];
      for (int k = 0; k < ns; k++) ss += sS[k];
      c += (float)symOffset(f.bits) * (sum - ss);
      for (int sl = 0; sl < spg; sl++) {
        for (int j = 0; j < d; j++) unpackBlock32(m.codes + ((size_t)tg * d + j) * gb + (size_t)sl * bb, f.bits, u[j]);
        for (int e = 0; e < 32; e++) {
          float acc = c;
          for (int k = 0; k < ns; k++) {
            int D = 0;
            for (int j = k * 32; j < k * 32 + 32; j++) D += (int)qi[j] * (int)u[j][e];
            acc += sg[k] * (float)D;
          }
          sg0[h * lds + sl * 32 + e] = acc;
        }
      }
    }
  }
}

void wsumColI8Page(const QuantRef& m, const MatrixFormat& f, int d, int g0, int g1, const U8Set& p, int r, float* out) {
  const int G = f.groupSize, spg = G / 32, gb = groupBytes(f.bits, G), bb = blockBytes(f.bits);
  uint8_t u[32];
  for (int tg = g0; tg < g1; tg++) {
    for (int j = 0; j < d; j++) {
      const size_t gi = (size_t)tg * d + j;
      float a, bz;
      groupParams(m.scales[gi], m.zeros, gi, f.bits, a, bz);
      for (int sl = 0; sl < spg; sl++) {
        unpackBlock32(m.codes + gi * gb + (size_t)sl * bb, f.bits, u);
        const int k = tg * spg + sl;
        for (int h = 0; h < r; h++) {
          const uint8_t* ps = p.q + h * p.ldq + k * 32;
          int D = 0;
          for (int e = 0; e < 32; e++) D += (int)u[e] * (int)ps[e];
          out[h * d + j] += a * (p.sigma[h * p.lds + k] * (float)D) + bz * p.sigmaSum[h * p.lds + k];
        }
      }
    }
  }
}

// KIVI-style values, integer path (contract in cpu_kernels.h): per 32-aligned token slice, channel group and head,
// the weights w_t = p_t*a_{t,g} (>= 0) go to u8 codes (quantizeU8); the integer sums run over centered codes u - off,
// and Σ p_t*(bz + a*off) (zero for symmetric groups) is added in float.
void wsumRowI8(const QuantRef& m, const MatrixFormat& f, int d, int t0, int t1, const float* p, size_t ldp, int r,
               float* out) {
  if (f.bits == 8) return wsumRowFloat(m, f, d, t0, t1, p, ldp, r, out);
  const int G = f.groupSize, n = d / G, spg = G / 32, gb = groupBytes(f.bits, G), bb = blockBytes(f.bits);
  const int off = symOffset(f.bits);
  float w[32], sg, sS;
  uint8_t wi[32], u[32][32];
  for (int sa = t0; sa < t1;) {
    const int se = (sa / 32 + 1) * 32 < t1 ? (sa / 32 + 1) * 32 : t1, cnt = se - sa;
    for (int g = 0; g < n; g++) {
      for (int h = 0; h < r; h++) {
        float z = 0;
        for (int e = 0; e < 32; e++) {
          w[e] = 0;
          if (e >= cnt) continue;
          const size_t gi = (size_t)(sa + e) * n + g;
          float a, bz;
          groupParams(m.scales[gi], m.zeros, gi, f.bits, a, bz);
          const float pt = p[h * ldp + (sa + e - t0)];
          w[e] = pt * a;
          z += pt * (bz + a * (float)off);
        }
        quantizeU8(w, 32, wi, &sg, &sS);
        for (int sl = 0; sl < spg; sl++) {
          for (int e = 0; e < cnt; e++)
            unpackBlock32(m.codes + ((size_t)(sa + e) * n + g) * gb + (size_t)sl * bb, f.bits, u[e]);
          float* o = out + h * d + g * G + sl * 32;
          for (int c = 0; c < 32; c++) {
            int D = 0;
            for (int e = 0; e < cnt; e++) D += (int)wi[e] * ((int)u[e][c] - off);
            o[c] += sg * (float)D + z;
          }
        }
      }
    }
    sa = se;
  }
}

float softmaxExp(float* s, int n, float* maxOut) {
  float mx = -INFINITY;
  for (int i = 0; i < n; i++) mx = s[i] > mx ? s[i] : mx;
  *maxOut = mx;
  double sum = 0;
  for (int i = 0; i < n; i++) {
    s[i] = std::exp(s[i] - mx);
    sum += s[i];
  }
  return (float)sum;
}

void quantizeI8(const float* x, int n, int8_t* q, float* sigma, float* sigmaSum) {
  for (int k = 0; k < n / 32; k++) {
    const float* xs = x + k * 32;
    float m = 0;
    for (int e = 0; e < 32; e++) m = std::fabs(xs[e]) > m ? std::fabs(xs[e]) : m;
    // sigma = max/127 puts the largest element on code +-127; inv is computed the same way as the AVX2 path
    // (127/max, one float division) so both paths produce identical codes.
    // A slice whose max is below 1e-36 counts as zero: 127/m would overflow to Inf, and 0*Inf = NaN made
    // (int)NaN codes (undefined behaviour; UBSan in scripts/asan.sh). Exp weights that small contribute nothing.
    const bool tiny = !(m > 1e-36f);
    const float sg = tiny ? 0.0f : m / 127.0f, inv = tiny ? 0.0f : 127.0f / m;
    int S = 0;
    for (int e = 0; e < 32; e++) {
      float v = std::nearbyint(xs[e] * inv);  // round half to even, like cvtps_epi32
      v = v > 127 ? 127 : v < -127 ? -127 : v;
      q[k * 32 + e] = (int8_t)v;
      S += (int)v;
    }
    sigma[k] = sg;
    sigmaSum[k] = sg * (float)S;
  }
}

void quantizeU8(const float* x, int n, uint8_t* q, float* sigma, float* sigmaSum) {
  for (int k = 0; k < n / 32; k++) {
    const float* xs = x + k * 32;
    float m = 0;
    for (int e = 0; e < 32; e++) m = xs[e] > m ? xs[e] : m;
    // sigma = max/255 puts the largest element on code 255; same formulas as the AVX2 path (identical codes).
    // Below 1e-36 the slice counts as zero (255/m would overflow; see quantizeI8).
    const bool tiny = !(m > 1e-36f);
    const float sg = tiny ? 0.0f : m / 255.0f, inv = tiny ? 0.0f : 255.0f / m;
    int S = 0;
    for (int e = 0; e < 32; e++) {
      float v = std::nearbyint(xs[e] * inv);  // round half to even, like cvtps_epi32
      v = v > 255 ? 255 : v < 0 ? 0 : v;
      q[k * 32 + e] = (uint8_t)v;
      S += (int)v;
    }
    sigma[k] = sg;
    sigmaSum[k] = sg * (float)S;
  }
}

const Kernels kPortable = {"portable", scoresFp16, wsumFp16, scoresRowI8ByPage<scoresRowI8Page>, scoresColI8,
                           wsumColI8ByPage<wsumColI8Page>, wsumRowI8, softmaxExp,
                           quantizeI8, quantizeU8, quantizeHeadRows,
                           softmaxExpU8Composed<softmaxExp, quantizeU8>};

}  // namespace

const Kernels& portableKernels() { return kPortable; }

}  // namespace cpu
}  // namespace innerq
