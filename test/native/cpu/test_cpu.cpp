// test_cpu.cpp - native accuracy tests of the CPU backend (no Node needed). Build and run:
//   bash test/native/cpu/build.sh && build-cpu/test_cpu [seed]
//
// For every method x bits x G x mode (plus head dims 64/96/128/256, GQA ratios 1/4/8, token counts that are not
// multiples of G, random and heavy-tailed data) and for every kernel table the machine has (avx512vnni, avx2,
// portable) it builds a layer
// cache (sink + pages + ring), quantizes it with quantizeRows and checks, against a plain fp64 evaluation on the
// DEQUANTIZED cache:
//  - per element quantization bounds: |x - x^| <= s/2 (sym and asym), hybrid picks the smaller-L1 mode;
//  - key scores (cpuKeyScores) and value sums (cpuValueSum):
//      float paths (fp16 rows, 8-bit KIVI-style): |err| <= 1e-5 * M, M = max over the head's row of Σ|a_i b_i| (normwise
//                                       relative error 1e-5; per element it cannot be, results may cancel to ~0)
//      int8 paths (InnerQ):             |err| <= Σ_j |x^_j| sigma_j / 2 + 1e-5 * M
//      int8 paths (KIVI-style):         keys |err| <= Σ_j |u_j - off| sigma~_j / 2 + 1e-5 * M, sigma~ the scale of the
//                                       folded query q*a of the token group; values |err| <= Σ_t |u_tj - off|
//                                       sigma_t / 2 + 1e-5 * M, sigma_t = max (p*a_g) / 255 over the token's 32-aligned
//                                       slice (contracts in cpu_kernels.h); at 2, 3 and 4 bits
//        where sigma_j is the 8-bit scale of the activation slice holding j (int8 query: max|x|/127; u8 softmax
//        weights: max/255) (derivation in kernels_avx2.cpp /
//        cpu_backend.h): sigma*qi_j - x_j is at most sigma/2 per element, the integer dot product is exact.
//  - the activation quantizers (quantizeI8, quantizeU8) of every table are bit-identical to the portable ones
//    (codes, sigma, sigmaSum), so the int8 bounds above describe every table; softmaxExp and the fused
//    softmaxExpU8 of every table against fp64 (weights, sums, u8 codes; bounds in checkSoftmax);
//  - attend: float paths relative 1e-5 as above; InnerQ: with B = max_t |score error bound|, softmax weights move
//    by at most a factor e^{±2B}, so |o_j - o_ref_j| <= (e^{2B} - 1) Σ_t p_t |V_tj| + value int8 bound + 1e-5 Σ.
// Outputs are poisoned with NaN before every call.
#include <cmath>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <math.h>
#include <random>
#include <string>
#include <vector>

#include "../../../csrc/cpu/cpu_backend.h"
#include "../../../csrc/cpu/cpu_kernels.h"
#include "../../../kernels/quantizer.cuh"

using namespace innerq;

static int failures = 0, checks = 0;
#define CHECK(cond, ...)                        \
  do {                                          \
    checks++;                                   \
    if (!(cond)) {                              \
      if (failures++ < 30) {                    \
        std::printf("FAIL %s:%d: ", __FILE__, __LINE__); \
        std::printf(__VA_ARGS__);               \
        std::printf("\n");                      \
      }                                         \
    }                                           \
  } while (0)

struct Config {
  MatrixFormat kf, vf;
  int qHeads, kvHeads, d;
  int S, qK, qV, extra, P;
  bool heavy, norm;
};

struct Cache {
  Backend* b;
  LayerView v;
  std::vector<uint16_t> K, V;  // raw fp16 [T][kvH][d]
  std::vector<float> f;        // key norm [kvH][d]
  std::vector<uint8_t*> pages;
  uint16_t *sinkK = nullptr, *sinkV = nullptr, *ringK = nullptr, *ringV = nullptr;
  ~Cache() {
    for (auto p : pages) b->release(p);
    for (auto p : {sinkK, sinkV, ringK, ringV}) b->release(p);
  }
};

static uint16_t h(double x) { return doubleToHalfSaturate(x); }

static void fill(std::mt19937_64& rng, std::vector<uint16_t>& x, int T, int H, int d, bool heavy, bool keys) {
  std::normal_distribution<double> n(0, 1);
  std::uniform_real_distribution<double> u(0.05, 1);
  std::vector<double> chanScale(d, 1.0);
  if (keys)  // a few outlier channels, consistent across tokens (the structure of real keys)
    for (int j = 0; j < d; j += 17) chanScale[j] = 10 + 40 * u(rng);
  for (int t = 0; t < T; t++)
    for (int k = 0; k < H; k++)
      for (int j = 0; j < d; j++) {
        double val = n(rng) * chanScale[j];
        if (heavy) val /= std::sqrt(u(rng)) * u(rng) + 0.05;  // heavy tail
        if (t % 7 == 3 && j % 5 == 0) val += 0.5;              // some asymmetric content
        x[((size_t)t * H + k) * d + j] = h(val);
      }
}

static void build(Cache& c, const Config& cf, std::mt19937_64& rng) {
  LayerView& v = c.v;
  v.qHeads = cf.qHeads;
  v.kvHeads = cf.kvHeads;
  v.headDim = cf.d;
  v.keyFormat = cf.kf;
  v.valueFormat = cf.vf;
  v.pageTokens = cf.P;
  v.layout = pageLayout(cf.kf, cf.vf, cf.P, cf.kvHeads, cf.d);
  v.sinkCapacity = cf.S;
  v.quantizedKeys = cf.qK;
  v.quantizedValues = cf.qV;
  const int qmax = cf.qK > cf.qV ? cf.qK : cf.qV, qmin = cf.qK < cf.qV ? cf.qK : cf.qV;
  v.tokens = qmax > 0 ? cf.S + qmax + cf.extra : cf.extra;
  if (qmax == 0 && v.tokens > cf.S) v.tokens = cf.S + cf.extra;  // short prompt: sink + ring only
  const int T = v.tokens, H = cf.kvHeads, d = cf.d, S = cf.S;
  const int ringSpan = T - (T < S ? T : S) - qmin;
  v.ringCapacity = (ringSpan + 127) / 128 * 128 + 128;
  c.K.resize((size_t)T * H * d);
  c.V.resize((size_t)T * H * d);
  fill(rng, c.K, T, H, d, cf.heavy, true);
  fill(rng, c.V, T, H, d, cf.heavy, false);
  c.f.assign((size_t)H * d, 1.0f);
  if (cf.norm) {  // f_j = sqrt(max_t |K|) with a floor, as the cache engine computes it
    for (int k = 0; k < H; k++)
      for (int j = 0; j < d; j++) {
        double m = 0;
        for (int t = S; t < T; t++) m = std::fmax(m, std::fabs(halfToDouble(c.K[((size_t)t * H + k) * d + j])));
        c.f[(size_t)k * d + j] = (float)std::sqrt(std::fmax(m, 1e-4));
      }
    v.keyNorm = v.keyNormHost = c.f.data();
  }
  const size_t rowBytes = (size_t)H * d * 2;
  c.sinkK = (uint16_t*)c.b->allocate(rowBytes * (S > 0 ? S : 1));
  c.sinkV = (uint16_t*)c.b->allocate(rowBytes * (S > 0 ? S : 1));
  c.ringK = (uint16_t*)c.b->allocate(rowBytes * v.ringCapacity);
  c.ringV = (uint16_t*)c.b->allocate(rowBytes * v.ringCapacity);
  for (int t = 0; t < T && t < S; t++) {
    std::memcpy(c.sinkK + (size_t)t * H * d, &c.K[(size_t)t * H * d], rowBytes);
    std::memcpy(c.sinkV + (size_t)t * H * d, &c.V[(size_t)t * H * d], rowBytes);
  }
  for (int t = S + qmin; t < T; t++) {
    const int slot = (t - S) % v.ringCapacity;
    std::memcpy(c.ringK + (size_t)slot * H * d, &c.K[(size_t)t * H * d], rowBytes);
    std::memcpy(c.ringV + (size_t)slot * H * d, &c.V[(size_t)t * H * d], rowBytes);
  }
  v.sinkKeys = c.sinkK;
  v.sinkValues = c.sinkV;
  v.ringKeys = c.ringK;
  v.ringValues = c.ringV;
  const int pagesNeeded = (qmax + cf.P - 1) / cf.P;
  for (int p = 0; p < pagesNeeded; p++) {
    auto* pg = (uint8_t*)c.b->allocate(v.layout.pageBytes);
    std::memset(pg, 0xA5, v.layout.pageBytes);  // garbage, must be overwritten where used
    c.pages.push_back(pg);
  }
  v.pages = c.pages.data();
  v.pageCount = pagesNeeded;
  // quantize in two calls to exercise firstQuantized != 0 (split at a group boundary)
  for (int m = 0; m < 2; m++) {
    const int q = m ? cf.qV : cf.qK;
    const MatrixFormat& f = m ? cf.vf : cf.kf;
    const std::vector<uint16_t>& X = m ? c.V : c.K;
    const int split = f.orientation == kColGrouped ? (q / 2) / f.groupSize * f.groupSize : q / 3;
    const Matrix mm = m ? Matrix::Values : Matrix::Keys;
    if (split > 0) CHECK(c.b->quantizeRows(v, mm, &X[(size_t)S * H * d], 0, split) == Status::Ok, "quantizeRows");
    if (q - split > 0)
      CHECK(c.b->quantizeRows(v, mm, &X[(size_t)(S + split) * H * d], split, q - split) == Status::Ok, "quantizeRows");
  }
}

// Dequantized element of the cache (the effective key includes the norm factor).
struct Deq {
  double x;      // dequantized stored value (K/f for keys in pages)
  double input;  // what was quantized (fp16-rounded K/f, or V)
  bool page;
  int u = 0;          // quantized elements: the code
  float scale = 0;    // quantized elements: the group's scale magnitude a (x = a*u + bz)
};

static Deq element(const Cache& c, Matrix m, int a, int k, int j) {
  const LayerView& v = c.v;
  const int S = v.sinkCapacity, d = v.headDim, H = v.kvHeads;
  const bool keys = m == Matrix::Keys;
  const int q = keys ? v.quantizedKeys : v.quantizedValues;
  const std::vector<uint16_t>& X = keys ? c.K : c.V;
  const uint16_t raw = X[((size_t)a * H + k) * d + j];
  if (a < S || a >= S + q) return Deq{halfToDouble(raw), halfToDouble(raw), false};
  const double in = keys && v.keyNormHost ? halfToDouble(doubleToHalfSaturate(halfToDouble(raw) / (double)c.f[(size_t)k * d + j]))
                                          : halfToDouble(raw);
  const MatrixFormat& f = keys ? v.keyFormat : v.valueFormat;
  const MatrixLayout& L = keys ? v.layout.keys : v.layout.values;
  const int i = a - S, page = i / v.pageTokens, slot = i % v.pageTokens;
  const uint8_t* base = v.pages[page];
  const uint8_t* codes = base + L.codesOffset + (size_t)k * L.codesHeadBytes;
  const uint16_t* scales = (const uint16_t*)(base + L.scalesOffset + (size_t)k * L.scalesHeadBytes);
  const uint16_t* zeros = (const uint16_t*)(base + L.zerosOffset + (size_t)k * L.scalesHeadBytes);
  if (f.orientation == kFp16Rows) return Deq{halfToDouble(((const uint16_t*)codes)[(size_t)slot * d + j]), in, true};
  const int G = f.groupSize, gb = groupBytes(f.bits, G);
  size_t gi;
  int e;
  if (f.orientation == kRowGrouped) {
    gi = (size_t)slot * (d / G) + j / G;
    e = j % G;
  } else {
    gi = (size_t)(slot / G) * d + j;
    e = slot % G;
  }
  uint8_t u[32];
  unpackBlock32(codes + gi * gb + (size_t)(e / 32) * blockBytes(f.bits), f.bits, u);
  const uint16_t sb = scales[gi];
  const double s = halfToDouble((uint16_t)(sb & 0x7fff));
  const double x = scaleIsAsym(sb) ? s * u[e % 32] + halfToDouble(zeros[gi]) : s * (u[e % 32] - symOffset(f.bits));
  return Deq{x, in, true, u[e % 32], (float)s};
}

// Per element bounds and the hybrid choice, read back from the pages.
static void checkQuantization(const Cache& c, Matrix m) {
  const LayerView& v = c.v;
  const bool keys = m == Matrix::Keys;
  const MatrixFormat& f = keys ? v.keyFormat : v.valueFormat;
  if (f.orientation == kFp16Rows) return;
  const int q = keys ? v.quantizedKeys : v.quantizedValues, S = v.sinkCapacity, d = v.headDim, G = f.groupSize;
  const MatrixLayout& L = keys ? v.layout.keys : v.layout.values;
  for (int k = 0; k < v.kvHeads; k++) {
    // iterate groups: gather the group's inputs and dequantized values
    const int groupsPerLine = f.orientation == kRowGrouped ? d / G : d;
    const int lines = f.orientation == kRowGrouped ? q : q / G;
    for (int line = 0; line < lines; line++)
      for (int g = 0; g < groupsPerLine; g++) {
        std::vector<double> in(G), out(G);
        for (int e = 0; e < G; e++) {
          const int a = f.orientation == kRowGrouped ? S + line : S + line * G + e;
          const int j = f.orientation == kRowGrouped ? g * G + e : g;
          const Deq dq = element(c, m, a, k, j);
          in[e] = dq.input;
          out[e] = dq.x;
        }
        const int i0 = f.orientation == kRowGrouped ? line : line * G;
        const int page = i0 / v.pageTokens, slot = i0 % v.pageTokens;
        const uint16_t* scales = (const uint16_t*)(v.pages[page] + L.scalesOffset + (size_t)k * L.scalesHeadBytes);
        const size_t gi = f.orientation == kRowGrouped ? (size_t)slot * (d / G) + g : (size_t)(slot / G) * d + g;
        const uint16_t sb = scales[gi];
        const double s = halfToDouble((uint16_t)(sb & 0x7fff));
        bool okB = true;
        for (int e = 0; e < G; e++) okB = okB && std::fabs(in[e] - out[e]) <= s / 2 * (1 + 1e-12) + 1e-300;
        CHECK(okB, "quantization bound s/2 (bits %d G %d mode %d)", f.bits, G, f.mode);
        CHECK(f.mode != kSym || !scaleIsAsym(sb), "sym group flagged asym");
        CHECK(f.mode != kAsym || scaleIsAsym(sb), "asym group not flagged");
        if (f.mode == kHybrid) {
          std::vector<uint16_t> hx(G);
          for (int e = 0; e < G; e++) hx[e] = doubleToHalf(in[e], kRoundNearestEven);
          uint8_t us[128], ua[128];
          const QuantizedGroup qs = quantizeGroup(hx.data(), 1, G, f.bits, kSym, us);
          const QuantizedGroup qa = quantizeGroup(hx.data(), 1, G, f.bits, kAsym, ua);
          double l1s = 0, l1a = 0;
          for (int e = 0; e < G; e++) {
            l1s += std::fabs(in[e] - dequantizeCode(us[e], qs.scale, qs.zero, f.bits));
            l1a += std::fabs(in[e] - dequantizeCode(ua[e], qa.scale, qa.zero, f.bits));
          }
          // float dequantization of asym rounds once; allow a hair of slack on near-ties
          const bool pickedAsym = scaleIsAsym(sb);
          const double tol = 1e-6 * (l1s + l1a);
          CHECK(pickedAsym ? l1a <= l1s + tol : l1s <= l1a + tol, "hybrid chose the larger L1 (sym %g asym %g picked %s)",
                l1s, l1a, pickedAsym ? "asym" : "sym");
        }
      }
  }
}

// sigma of the 32-slice containing j, as the backend computes it: levels = 127 for the signed int8 query, 255 for
// the unsigned 8-bit softmax weights.
static float quantSigma(const float* x, int levels, int j) {
  const int k = j / 32;
  float m = 0;
  for (int e = 0; e < 32; e++) m = std::fmax(m, std::fabs(x[k * 32 + e]));
  return m / (float)levels;
}

static double worstRatio = 0;  // max over checks of err / allowed, reported
static double worstFloatRel = 0, worstI8Ratio = 0;  // float paths: err / M; int8 paths: err / derived bound
static double worstKiviRatio = 0;                    // the KIVI-style int8 paths' share of worstI8Ratio

static void runConfig(Backend& b, const Config& cf, std::mt19937_64& rng, const char* label) {
  Cache c;
  c.b = &b;
  build(c, cf, rng);
  const LayerView& v = c.v;
  checkQuantization(c, Matrix::Keys);
  checkQuantization(c, Matrix::Values);
  const int T = v.tokens, Hq = v.qHeads, d = v.headDim, r = Hq / v.kvHeads, S = v.sinkCapacity;
  std::normal_distribution<double> nd(0, 1);
  std::vector<float> query((size_t)Hq * d);
  for (auto& x : query) x = (float)(nd(rng) * (cf.heavy ? 3 : 1));
  const double scale = 1.0 / std::sqrt((double)d);
  // the int8-activation paths of the cpu backend: InnerQ (kRowGrouped keys, kColGrouped values) and KIVI-style
  // (kColGrouped keys, kRowGrouped values) at 2-4 bits; 8-bit KIVI-style codes take float paths (cpu_kernels.h)
  const bool kKivi = cf.kf.orientation == kColGrouped && cf.kf.bits != 8;
  const bool vKivi = cf.vf.orientation == kRowGrouped && cf.vf.bits != 8;
  const bool kI8 = cf.kf.orientation == kRowGrouped || kKivi, vI8 = cf.vf.orientation == kColGrouped || vKivi;

  // ---- key scores
  std::vector<float> scores((size_t)Hq * T, NAN);
  CHECK(cpuKeyScores(b, v, query.data(), scores.data()) == Status::Ok, "cpuKeyScores");
  std::vector<double> ref((size_t)Hq * T), bound((size_t)Hq * T);
  double maxScoreBound = 0;
  for (int hq = 0; hq < Hq; hq++) {
    const int k = hq / r;
    double magMax = 0;  // float paths: normwise relative error over the head's scores
    std::vector<float> qf(d);  // folded scaled query, computed as the backend does (float)
    for (int j = 0; j < d; j++) {
      const float qs = query[(size_t)hq * d + j] * (float)scale;
      qf[j] = v.keyNormHost ? qs * v.keyNormHost[(size_t)k * d + j] : qs;
    }
    for (int a = 0; a < T; a++) {
      double acc = 0, mag = 0, i8 = 0;
      std::vector<Deq> row(d);
      for (int j = 0; j < d; j++) row[j] = element(c, Matrix::Keys, a, k, j);
      // KIVI-style: the kernel folds the group's scales into the query (q~ = qf*a, float) and quantizes q~ per
      // 32-channel slice, with the codes centered, so the bound is Σ_j |u_j - off| * sigma(q~)_j / 2
      std::vector<float> qt(d);
      if (kKivi) for (int j = 0; j < d; j++) qt[j] = qf[j] * row[j].scale;
      for (int j = 0; j < d; j++) {
        const Deq& e = row[j];
        const double qq = e.page ? (double)qf[j] : query[(size_t)hq * d + j] * scale;
        acc += qq * e.x;
        mag += std::fabs(qq * e.x);
        if (e.page && kI8)
          i8 += kKivi ? std::abs(e.u - (1 << (cf.kf.bits - 1))) * quantSigma(qt.data(), 127, j) / 2
                      : std::fabs(e.x) * quantSigma(qf.data(), 127, j) / 2;
      }
      ref[(size_t)hq * T + a] = acc;
      bound[(size_t)hq * T + a] = i8 * (1 + 1e-5);
      magMax = std::fmax(magMax, mag);
    }
    for (int a = 0; a < T; a++) {
      double& bnd = bound[(size_t)hq * T + a];
      bnd += 1e-5 * magMax + 1e-30;
      maxScoreBound = std::fmax(maxScoreBound, bnd);
      const double err = std::fabs(scores[(size_t)hq * T + a] - ref[(size_t)hq * T + a]);
      worstRatio = std::fmax(worstRatio, err / bnd);
      if (kI8) worstI8Ratio = std::fmax(worstI8Ratio, err / bnd);
      else worstFloatRel = std::fmax(worstFloatRel, err / (magMax + 1e-300));
      if (kKivi) worstKiviRatio = std::fmax(worstKiviRatio, err / bnd);
      CHECK(err <= bnd, "%s key score h%d t%d: got %.9g ref %.9g bound %.3g", label, hq, a, scores[(size_t)hq * T + a],
            ref[(size_t)hq * T + a], bnd);
    }
  }

  // ---- value sums with reference softmax weights (fp64 softmax of the reference scores)
  std::vector<float> probs((size_t)Hq * T);
  std::vector<double> pd((size_t)Hq * T);
  for (int hq = 0; hq < Hq; hq++) {
    double mx = -INFINITY, sum = 0;
    for (int a = 0; a < T; a++) mx = std::fmax(mx, ref[(size_t)hq * T + a]);
    for (int a = 0; a < T; a++) sum += (pd[(size_t)hq * T + a] = std::exp(ref[(size_t)hq * T + a] - mx));
    for (int a = 0; a < T; a++) probs[(size_t)hq * T + a] = (float)(pd[(size_t)hq * T + a] /= sum);
  }
  std::vector<float> out((size_t)Hq * d, NAN);
  CHECK(cpuValueSum(b, v, probs.data(), out.data()) == Status::Ok, "cpuValueSum");
  std::vector<float> att((size_t)Hq * d, NAN);
  CHECK(b.attend(v, query.data(), att.data()) == Status::Ok, "attend");
  for (int hq = 0; hq < Hq; hq++) {
    const int k = hq / r;
    const float* pRow = probs.data() + (size_t)hq * T;
    std::vector<double> acc(d, 0), i8(d, 0), accAtt(d, 0), magAtt(d, 0);
    double magMax = 0, magAttMax = 0;
    // KIVI-style values: per 32-aligned slice of quantized tokens and channel group, sigma = max_t (p_t*a_tg)/255
    // (a kernel call that splits a slice quantizes each part with a smaller max); codes centered at off
    const int G = cf.vf.groupSize, ng = d / G, off = 1 << (cf.vf.bits - 1), nSlices = (v.quantizedValues + 31) / 32;
    std::vector<float> sigV(vKivi ? (size_t)nSlices * ng : 0, 0.0f);
    if (vKivi)
      for (int i = 0; i < v.quantizedValues; i++)
        for (int g = 0; g < ng; g++) {
          float& sv = sigV[(size_t)(i / 32) * ng + g];
          sv = std::fmax(sv, pRow[S + i] * element(c, Matrix::Values, S + i, k, g * G).scale / 255.0f);
        }
    for (int j = 0; j < d; j++) {
      double mag = 0;
      for (int a = 0; a < T; a++) {
        const Deq e = element(c, Matrix::Values, a, k, j);
        acc[j] += (double)pRow[a] * e.x;
        mag += std::fabs((double)pRow[a] * e.x);
        accAtt[j] += pd[(size_t)hq * T + a] * e.x;
        magAtt[j] += std::fabs(pd[(size_t)hq * T + a] * e.x);
        if (e.page && vI8)
          i8[j] += vKivi ? std::abs(e.u - off) * (double)sigV[(size_t)((a - S) / 32) * ng + j / G] / 2
                         : std::fabs(e.x) * quantSigma(pRow + S, 255, a - S) / 2;
      }
      magMax = std::fmax(magMax, mag);
      magAttMax = std::fmax(magAttMax, magAtt[j]);
    }
    for (int j = 0; j < d; j++) {
      const double bnd = i8[j] * (1 + 1e-5) + 1e-5 * magMax + 1e-30;
      const double err = std::fabs(out[(size_t)hq * d + j] - acc[j]);
      worstRatio = std::fmax(worstRatio, err / bnd);
      if (vI8) worstI8Ratio = std::fmax(worstI8Ratio, err / bnd);
      else worstFloatRel = std::fmax(worstFloatRel, err / (magMax + 1e-300));
      if (vKivi) worstKiviRatio = std::fmax(worstKiviRatio, err / bnd);
      CHECK(err <= bnd, "%s value sum h%d j%d: got %.9g ref %.9g bound %.3g", label, hq, j, out[(size_t)hq * d + j], acc[j], bnd);
      // attend: softmax perturbation by the score bound, plus the value bound (scaled to the true weights)
      const double attBound =
          (std::exp(2 * maxScoreBound) - 1) * magAttMax + (vI8 ? 1.02 * i8[j] : 0) + 1e-5 * magAttMax + 1e-30;
      const double attErr = std::fabs(att[(size_t)hq * d + j] - accAtt[j]);
      CHECK(attErr <= attBound, "%s attend h%d j%d: got %.9g ref %.9g bound %.3g", label, hq, j, att[(size_t)hq * d + j],
            accAtt[j], attBound);
      if (!kI8 && !vI8) worstRatio = std::fmax(worstRatio, attErr / attBound);
    }
  }
}

// Error report on realistic data (not a pass/fail check): the production InnerQ shape (K3 sym / V2 hybrid, G 32,
// d 128, key norm, 32 sink tokens, heavy-tailed values, outlier key channels), relative L2 error per output row
// of attend against fp64 on the dequantized cache, split into the two int8-activation sides:
//   scores side: fp64 softmax of the kernel's scores, fp64 value sum (isolates the query-activation error);
//   values side: kernel value sum with the fp64 reference weights (isolates the probability-activation error).
// Simulated query-activation schemes (fp64, not the kernels), to compare options for the scores side:
// 0: 32-slices sigma = max/127 (what the kernels do), 1: 16-slices, 2: 8-slices, 3: 32-slices with an integer
// multiplier per element pair (sigma = max/(127*64), M_pair = ceil(max|pair| / (127 sigma)), q = round(x/(sigma M))).
static double simActivation(const std::vector<double>& x, int scheme, int j) {
  const int w = scheme == 1 ? 16 : scheme == 2 ? 8 : 32, k = j / w * w;
  double m = 0;
  for (int e = 0; e < w; e++) m = std::fmax(m, std::fabs(x[k + e]));
  if (m == 0) return 0;
  double sg = m / 127;
  if (scheme == 3) {
    const double s0 = m / (127.0 * 64), pm = std::fmax(std::fabs(x[j & ~1]), std::fabs(x[j | 1]));
    const double M = std::fmax(1.0, std::ceil(pm / (127 * s0) - 1e-12));
    sg = s0 * M;
  }
  return sg * std::nearbyint(x[j] / sg);
}

static void reportRealistic(Backend& b, const char* name, std::mt19937_64& rng) {
  double simTot[4] = {0, 0, 0, 0}, simMax[4] = {0, 0, 0, 0};
  double tot[3] = {0, 0, 0}, mx[3] = {0, 0, 0};
  int rows = 0;
  for (int rep = 0; rep < 4; rep++) {
    Config cf;
    cf.kf = MatrixFormat{kRowGrouped, 3, 32, kSym};
    cf.vf = MatrixFormat{kColGrouped, 2, 32, kHybrid};
    cf.kvHeads = 2;
    cf.qHeads = 8;
    cf.d = 128;
    cf.P = 512;
    cf.S = 32;
    cf.qK = 2000;
    cf.qV = 1984;
    cf.extra = 96;
    cf.heavy = rep & 1;
    cf.norm = true;
    Cache c;
    c.b = &b;
    build(c, cf, rng);
    const LayerView& v = c.v;
    const int T = v.tokens, Hq = v.qHeads, d = v.headDim, r = Hq / v.kvHeads;
    std::normal_distribution<double> nd(0, 1);
    std::vector<float> query((size_t)Hq * d);
    for (auto& x : query) x = (float)(nd(rng) * (rep < 2 ? 1.0 : 0.25));  // sharp and flat attention
    std::vector<float> scores((size_t)Hq * T), att((size_t)Hq * d), out((size_t)Hq * d);
    cpuKeyScores(b, v, query.data(), scores.data());
    b.attend(v, query.data(), att.data());
    const double scale = 1.0 / std::sqrt((double)d);
    std::vector<float> probs((size_t)Hq * T);
    std::vector<double> pd(T), pk(T), Vx((size_t)T * d);
    for (int hq = 0; hq < Hq; hq++) {
      const int k = hq / r;
      if (hq % r == 0)
        for (int a = 0; a < T; a++)
          for (int j = 0; j < d; j++) Vx[(size_t)a * d + j] = element(c, Matrix::Values, a, k, j).x;
      double m1 = -INFINITY, m2 = -INFINITY;
      std::vector<double> qfold(d), qs[4];
      for (int j = 0; j < d; j++) qfold[j] = (float)((float)(query[(size_t)hq * d + j] * scale) * c.f[(size_t)k * d + j]);
      for (int sc = 0; sc < 4; sc++) {
        qs[sc].resize(d);
        for (int j = 0; j < d; j++) qs[sc][j] = simActivation(qfold, sc, j);
      }
      std::vector<double> simS[4];
      for (auto& x : simS) x.assign(T, 0);
      for (int a = 0; a < T; a++) {
        double acc = 0;
        for (int j = 0; j < d; j++) {
          const Deq e = element(c, Matrix::Keys, a, k, j);
          double qq = query[(size_t)hq * d + j] * scale;
          if (e.page) qq = qfold[j];
          acc += qq * e.x;
          for (int sc = 0; sc < 4; sc++) simS[sc][a] += (e.page ? qs[sc][j] : qq) * e.x;
        }
        pd[a] = acc;
        pk[a] = scores[(size_t)hq * T + a];
        m1 = std::fmax(m1, pd[a]);
        m2 = std::fmax(m2, pk[a]);
      }
      double s1 = 0, s2 = 0;
      for (int a = 0; a < T; a++) {
        s1 += (pd[a] = std::exp(pd[a] - m1));
        s2 += (pk[a] = std::exp(pk[a] - m2));
      }
      for (int a = 0; a < T; a++) {
        pd[a] /= s1;
        pk[a] /= s2;
        probs[(size_t)hq * T + a] = (float)pd[a];
      }
      std::vector<double> ref(d, 0), refK(d, 0);
      for (int a = 0; a < T; a++)
        for (int j = 0; j < d; j++) {
          ref[j] += pd[a] * Vx[(size_t)a * d + j];
          refK[j] += pk[a] * Vx[(size_t)a * d + j];
        }
      for (int sc = 0; sc < 4; sc++) {  // scores side of the simulated schemes
        double mm = -INFINITY, z = 0, e2 = 0, n2 = 0;
        for (int a = 0; a < T; a++) mm = std::fmax(mm, simS[sc][a]);
        for (int a = 0; a < T; a++) z += (simS[sc][a] = std::exp(simS[sc][a] - mm));
        for (int j = 0; j < d; j++) {
          double o = 0;
          for (int a = 0; a < T; a++) o += simS[sc][a] / z * Vx[(size_t)a * d + j];
          e2 += (o - ref[j]) * (o - ref[j]);
          n2 += ref[j] * ref[j];
        }
        simTot[sc] += std::sqrt(e2 / n2);
        simMax[sc] = std::fmax(simMax[sc], std::sqrt(e2 / n2));
      }
      std::fill(out.begin(), out.end(), 0.0f);
      cpuValueSum(b, v, probs.data(), out.data());
      double n0 = 0, e[3] = {0, 0, 0};
      for (int j = 0; j < d; j++) {
        n0 += ref[j] * ref[j];
        e[0] += (att[(size_t)hq * d + j] - ref[j]) * (att[(size_t)hq * d + j] - ref[j]);
        e[1] += (refK[j] - ref[j]) * (refK[j] - ref[j]);
        e[2] += (out[(size_t)hq * d + j] - ref[j]) * (out[(size_t)hq * d + j] - ref[j]);
      }
      for (int i = 0; i < 3; i++) {
        const double rel = std::sqrt(e[i] / n0);
        tot[i] += rel;
        mx[i] = std::fmax(mx[i], rel);
      }
      rows++;
    }
  }
  std::printf("realistic attend row error (%s, %d rows, mean / max rel L2): attend %.4f / %.4f, scores side %.4f / %.4f, "
              "values side %.4f / %.4f\n",
              name, rows, tot[0] / rows, mx[0], tot[1] / rows, mx[1], tot[2] / rows, mx[2]);
  std::printf("  simulated scores side (mean / max): 32-slice %.4f / %.4f, 16-slice %.4f / %.4f, 8-slice %.4f / %.4f, "
              "pair multipliers %.4f / %.4f\n",
              simTot[0] / rows, simMax[0], simTot[1] / rows, simMax[1], simTot[2] / rows, simMax[2], simTot[3] / rows,
              simMax[3]);
}

// Every table's quantizeI8 / quantizeU8 against the portable one, bit for bit: lengths that exercise batched and
// single-slice paths, with zero slices, tiny slices (below the 1e-36 cut), ties at .5 and a wide dynamic range.
static void checkActivationQuantizers(const std::vector<const cpu::Kernels*>& tables, std::mt19937_64& rng) {
  const cpu::Kernels& ref = cpu::portableKernels();
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  for (int n : {32, 96, 480, 512, 544, 1024, 16 * 32 * 3 + 7 * 32}) {
    for (int trial = 0; trial < 4; trial++) {
      std::vector<float> x(n);
      for (int k = 0; k < n / 32; k++) {
        const int kind = (int)(rng() % 6);
        const float scale = std::ldexp(1.0f, (int)(rng() % 60) - 40);
        for (int e = 0; e < 32; e++) {
          float v = u(rng) * scale;
          if (kind == 0) v = 0.0f;
          if (kind == 1) v = u(rng) * 1e-37f;
          if (kind == 2) v = (float)(rng() % 511) * 0.5f;  // many exact halves
          if (kind == 3 && e % 3 == 0) v = 0.0f;
          x[k * 32 + e] = v;
        }
      }
      std::vector<float> xs(x);  // signed copy for quantizeI8
      for (auto& v : xs) v = rng() & 1 ? -v : v;
      std::vector<uint8_t> qr(n), qt(n);
      std::vector<int8_t> ir(n), it(n);
      std::vector<float> sr(n / 32), st(n / 32), Sr(n / 32), St(n / 32);
      for (const cpu::Kernels* k : tables) {
        ref.quantizeU8(x.data(), n, qr.data(), sr.data(), Sr.data());
        std::fill(qt.begin(), qt.end(), 0xAB);
        std::fill(st.begin(), st.end(), NAN);
        std::fill(St.begin(), St.end(), NAN);
        k->quantizeU8(x.data(), n, qt.data(), st.data(), St.data());
        CHECK(qt == qr && std::memcmp(st.data(), sr.data(), 4 * st.size()) == 0 && std::memcmp(St.data(), Sr.data(), 4 * St.size()) == 0,
              "%s quantizeU8 differs from portable at n %d", k->name, n);
        ref.quantizeI8(xs.data(), n, ir.data(), sr.data(), Sr.data());
        std::fill(it.begin(), it.end(), (int8_t)0x55);
        std::fill(st.begin(), st.end(), NAN);
        std::fill(St.begin(), St.end(), NAN);
        k->quantizeI8(xs.data(), n, it.data(), st.data(), St.data());
        CHECK(it == ir && std::memcmp(st.data(), sr.data(), 4 * st.size()) == 0 && std::memcmp(St.data(), Sr.data(), 4 * St.size()) == 0,
              "%s quantizeI8 differs from portable at n %d", k->name, n);
      }
    }
  }
}

// softmaxExp and softmaxExpU8 of every table (avx512vnni's fused one, the others' composition of the two)
// against fp64, on rows with a wide spread of scores: whole slices far below the maximum (weights under the 1e-36
// cut and under exp's -86 flush), ties, lengths and quantized ranges at every alignment. Bounds: each weight within
// kExpRel (relative) of exp of the same float difference s - max (the subtraction's own rounding is the caller's);
// the sum within 1e-6; sigma within 1e-6 of (largest exact weight of the slice) / 255; codes within 0.5 + 1e-3 of
// exact weight / sigma (rounding plus the exp error); sigmaSum = sigma * Σ codes. Weights under 1e-37 (1e-37 of the
// row maximum's) may come out as 0: the exp kernels flush below e^-86 or e^-87. Worst errors are reported.
static void checkSoftmax(const std::vector<const cpu::Kernels*>& tables, std::mt19937_64& rng) {
  constexpr double kExpRel = 4e-7;
  std::normal_distribution<float> g(0.0f, 1.0f);
  for (const cpu::Kernels* k : tables) {
    double worstExp = 0, worstSum = 0, worstCode = 0;
    for (int n : {1, 7, 32, 33, 100, 512, 545, 1000, 16 * 32 * 3 + 5 * 32 + 9}) {
      for (int trial = 0; trial < 6; trial++) {
        std::vector<float> x(n);
        const float spread = trial % 3 == 0 ? 1.0f : trial % 3 == 1 ? 8.0f : 40.0f;
        for (int i = 0; i < n; i++) x[i] = g(rng) * spread + 3.0f;
        for (int i = 0; i + 32 <= n; i += 32)  // some slices far below the rest (weights ~e^-90 .. e^-200)
          if (rng() % 5 == 0) for (int e = 0; e < 32; e++) x[i + e] -= 90.0f + (float)(rng() % 110);
        if (trial == 5) for (int i = 0; i < n; i += 3) x[i] = x[0];  // ties with the first element
        const float mxRef = *std::max_element(x.begin(), x.end());
        std::vector<double> w(n);
        double zRef = 0;
        for (int i = 0; i < n; i++) zRef += (w[i] = std::exp((double)(x[i] - mxRef)));
        const auto weightOk = [&](float got, int i) {  // relative kExpRel, or ~0 where the exact weight is < 1e-37
          if (w[i] < 1e-37) return got >= 0.0f && got < 1e-36f;
          const double e = std::fabs(got - w[i]) / w[i];
          worstExp = std::max(worstExp, e);
          return e <= kExpRel;
        };
        // softmaxExp
        std::vector<float> s(x);
        float mx = NAN;
        const float z = k->softmaxExp(s.data(), n, &mx);
        CHECK(mx == mxRef, "%s softmaxExp max %g, expected %g (n %d)", k->name, mx, mxRef, n);
        worstSum = std::max(worstSum, std::fabs(z - zRef) / zRef);
        CHECK(std::fabs(z - zRef) <= 1e-6 * zRef, "%s softmaxExp sum %.9g, fp64 %.9g (n %d)", k->name, z, zRef, n);
        int bad = 0;
        for (int i = 0; i < n; i++) bad += !weightOk(s[i], i);
        CHECK(bad == 0, "%s softmaxExp: %d weights off by more than %g (n %d, spread %g)", k->name, bad, kExpRel, n, spread);
        // softmaxExpU8 over [qa, qa + qn) for a few placements
        for (int qa : {0, 1, 5, 32, 37}) {
          for (int slices : {0, 1, 3, 16, 17, 40}) {
            const int qn = 32 * slices;
            if (qa + qn > n || (qn == 0 && qa > 0)) continue;
            std::vector<uint8_t> q(qn + 1, 0xAB);
            std::vector<float> sg(slices + 1, NAN), sS(slices + 1, NAN);
            std::vector<float> t(x);
            float m2 = NAN;
            const float z2 = k->softmaxExpU8(t.data(), n, qa, qn, &m2, q.data(), sg.data(), sS.data());
            CHECK(m2 == mxRef, "%s softmaxExpU8 max %g, expected %g", k->name, m2, mxRef);
            worstSum = std::max(worstSum, std::fabs(z2 - zRef) / zRef);
            CHECK(std::fabs(z2 - zRef) <= 1e-6 * zRef, "%s softmaxExpU8 sum %.9g, fp64 %.9g (n %d qa %d qn %d)", k->name, z2, zRef, n, qa, qn);
            bad = 0;
            for (int i = 0; i < n; i++)
              if (i < qa || i >= qa + qn) bad += !weightOk(t[i], i);
            CHECK(bad == 0, "%s softmaxExpU8: %d window weights off (n %d qa %d qn %d)", k->name, bad, n, qa, qn);
            for (int sl = 0; sl < slices; sl++) {
              double top = 0;
              for (int e = 0; e < 32; e++) top = std::max(top, w[qa + 32 * sl + e]);
              if (std::fabs(top - 1e-36) < 1e-41) continue;  // at the zero-slice cut either answer is right
              if (top <= 1e-36) {
                bool zero = sg[sl] == 0.0f && sS[sl] == 0.0f;
                for (int e = 0; e < 32; e++) zero = zero && q[32 * sl + e] == 0;
                CHECK(zero, "%s softmaxExpU8: slice %d with top weight %g not zero (sigma %g)", k->name, sl, top, sg[sl]);
                continue;
              }
              CHECK(std::fabs(sg[sl] - top / 255) <= 1e-6 * top / 255, "%s softmaxExpU8: slice %d sigma %.9g, expected %.9g",
                    k->name, sl, sg[sl], top / 255);
              int codeSum = 0;
              double worst = 0;
              for (int e = 0; e < 32; e++) {
                codeSum += q[32 * sl + e];
                // a weight under 1e-37 may be flushed to 0 (as weightOk allows): next to the row maximum's weight 1
                // that is nothing, but in a slice whose top is barely above the 1e-36 cut it is worth a few codes
                const double we = w[qa + 32 * sl + e], exact = we / (top / 255), slack = we < 1e-37 ? exact : 0.0;
                worst = std::max(worst, std::max(0.0, std::fabs(q[32 * sl + e] - exact) - slack));
              }
              worstCode = std::max(worstCode, worst);
              CHECK(worst <= 0.5 + 1e-3, "%s softmaxExpU8: slice %d code off by %.4f", k->name, sl, worst);
              CHECK(sS[sl] == sg[sl] * (float)codeSum, "%s softmaxExpU8: slice %d sigmaSum %.9g != sigma * %d", k->name, sl, sS[sl], codeSum);
            }
            CHECK(q[qn] == 0xAB && std::isnan(sg[slices]), "%s softmaxExpU8 wrote past its %d slices", k->name, slices);
          }
        }
      }
    }
    std::printf("softmax (%s): worst weight rel error %.2e (limit %.0e), sum %.2e (limit 1e-6), code %.4f (limit 0.501)\n",
                k->name, worstExp, kExpRel, worstSum, worstCode);
  }
}

// quantizeHead (quantize_head.h) is one source compiled with each table's flags: every table must write the same
// page bytes as the portable one (which runs the quantizer at the x86-64 baseline), for every format, with and
// without key normalization, on data with constant, zero, sign-symmetric, subnormal and near-overflow groups.
static void checkQuantizeHeads(const std::vector<const cpu::Kernels*>& tables, std::mt19937_64& rng) {
  const cpu::Kernels& ref = cpu::portableKernels();
  const int d = 128, H = 2;
  {
    // Key normalization alone (fp16-row pages store K / f as is): every finite binary16 key, against factors
    // from 2^-7 (quotients past 65504 saturate) to 2^8, compared with the scalar normalizeKey element by element.
    std::vector<uint16_t> keys;
    for (uint32_t b = 0; b < 65536; b++)
      if (((b >> 10) & 0x1f) != 0x1f) keys.push_back((uint16_t)b);
    const int T = (int)((keys.size() + (size_t)H * d - 1) / ((size_t)H * d));
    keys.resize((size_t)T * H * d, 0x3c00);
    std::shuffle(keys.begin(), keys.end(), rng);
    std::vector<float> f((size_t)H * d);
    std::uniform_real_distribution<double> e(-7.0, 8.0);
    for (auto& v : f) v = (float)std::exp2(e(rng));
    f[0] = 1.0f;
    f[1] = 0.0078125f;
    std::vector<uint16_t> out((size_t)T * d * H);
    struct Ctx { uint16_t* base; int T, d; };
    Ctx ctx{out.data(), T, d};
    for (const cpu::Kernels* k : tables) {
      std::fill(out.begin(), out.end(), (uint16_t)0x7e01);
      cpu::QuantizeHeadJob job{};
      job.rows = keys.data();
      job.ld = (size_t)H * d;
      job.d = d;
      job.count = T;
      job.pageTokens = T;
      job.norm = f.data();
      job.format = MatrixFormat{kFp16Rows, 16, 32, 0};
      job.ctx = &ctx;
      job.pageRef = [](const void* p, int, int kh) {
        const Ctx& c = *static_cast<const Ctx*>(p);
        cpu::QuantRef r;
        r.codes = reinterpret_cast<const uint8_t*>(c.base + (size_t)kh * c.T * c.d);
        r.scales = nullptr;
        r.zeros = nullptr;
        return r;
      };
      for (int kh = 0; kh < H; kh++) {
        job.kh = kh;
        k->quantizeHead(job);
      }
      long bad = 0;
      for (int kh = 0; kh < H; kh++)
        for (int t = 0; t < T; t++)
          for (int j = 0; j < d; j++) {
            const uint16_t want = normalizeKey(keys[((size_t)t * H + kh) * d + j], f[(size_t)kh * d + j]);
            if (out[((size_t)kh * T + t) * d + j] != want && bad++ < 3)
              std::printf("  %s: key %04x / f %g -> %04x, expected %04x\n", k->name, keys[((size_t)t * H + kh) * d + j],
                          f[(size_t)kh * d + j], out[((size_t)kh * T + t) * d + j], want);
          }
      CHECK(bad == 0, "%s key normalization differs from normalizeKey in %ld of %zu elements", k->name, bad, keys.size());
    }
  }
  std::normal_distribution<double> gauss(0.0, 1.0);
  for (int orientation : {(int)kRowGrouped, (int)kColGrouped})
    for (int bits : {2, 3, 4, 8})
      for (int G : {32, 64, 128})
        for (int mode = 0; mode < 3; mode++)
          for (bool norm : {false, true}) {
            const int P = 2 * G, count = 4 * G;  // two pages per call: the page change is exercised
            std::vector<uint16_t> rows((size_t)count * H * d);
            for (size_t b = 0; b < rows.size() / 32; b++) {
              const int kind = (int)(rng() % 8);
              const double scale = std::ldexp(1.0, (int)(rng() % 30) - 20), c = gauss(rng) * scale;
              for (int e = 0; e < 32; e++) {
                double x = gauss(rng) * scale;
                if (kind == 1) x = c;                                      // constant
                if (kind == 2) x = 0;                                      // all zero
                if (kind == 3) x = (rng() & 1) ? c : -c;                   // one magnitude, both signs
                if (kind == 4) x = gauss(rng) * 1e-6;                      // subnormal halves
                if (kind == 5) x = (rng() & 1 ? 1 : -1) * (60000.0 + 5000.0 * (double)(rng() % 1000) / 1000.0);  // near overflow
                if (kind == 6) x = std::pow(gauss(rng), 3) * scale * 50;   // heavy tail
                if (kind == 7) x = rng() % 3 == 0 ? -0.0 : rng() % 2 ? 0.0 : std::fabs(gauss(rng)) * scale;  // +-0 at the minimum
                rows[b * 32 + e] = doubleToHalfSaturate(x);
              }
            }
            std::vector<float> f((size_t)H * d);
            for (auto& v : f) v = (float)std::exp(gauss(rng) * 2.0);
            const size_t region = (size_t)P * d * 4;  // bytes per (page, head) for codes, and again for scales / zeros
            struct Ctx { uint8_t *codes, *scales, *zeros; size_t region; int H; };
            auto run = [&](const cpu::Kernels& k, std::vector<uint8_t>& codes, std::vector<uint8_t>& scales, std::vector<uint8_t>& zeros) {
              codes.assign(2 * H * region, 0xA5);
              scales.assign(2 * H * region, 0xA5);
              zeros.assign(2 * H * region, 0xA5);
              Ctx ctx{codes.data(), scales.data(), zeros.data(), region, H};
              cpu::QuantizeHeadJob job{};
              job.rows = rows.data();
              job.ld = (size_t)H * d;
              job.d = d;
              job.count = count;
              job.firstQuantized = 0;
              job.pageTokens = P;
              job.norm = norm ? f.data() : nullptr;
              job.format = MatrixFormat{orientation, bits, G, mode};
              job.ctx = &ctx;
              job.pageRef = [](const void* p, int page, int kh) {
                const Ctx& c = *static_cast<const Ctx*>(p);
                const size_t at = ((size_t)page * c.H + kh) * c.region;
                cpu::QuantRef r;
                r.codes = c.codes + at;
                r.scales = (const uint16_t*)(c.scales + at);
                r.zeros = (const uint16_t*)(c.zeros + at);
                return r;
              };
              for (int kh = 0; kh < H; kh++) {
                job.kh = kh;
                k.quantizeHead(job);
              }
            };
            std::vector<uint8_t> c0, s0, z0, c1, s1, z1;
            run(ref, c0, s0, z0);
            // the reference itself must have written something: not all poison
            CHECK(std::count(s0.begin(), s0.end(), (uint8_t)0xA5) < (long)s0.size(), "portable quantizeHead wrote no scales");
            for (const cpu::Kernels* k : tables) {
              run(*k, c1, s1, z1);
              CHECK(c1 == c0 && s1 == s0 && z1 == z0, "%s quantizeHead differs from portable: orientation %d bits %d G %d mode %d norm %d",
                    k->name, orientation, bits, G, mode, (int)norm);
            }
          }
}

int main(int argc, char** argv) {
  const unsigned long seed = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 12345;
  std::mt19937_64 rng(seed);
  const CpuFeatures feat = cpuFeatures();
  std::printf("cpu: avx2 %d fma %d f16c %d avx512vnni %d threads %d, seed %lu\n", feat.avx2, feat.fma, feat.f16c,
              feat.avx512vnni, feat.threads, seed);
  // Every kernel table this machine can run: the best one, AVX2 on its own when the best is AVX-512, portable.
  auto simd = makeCpuBackend(2, CpuKernels::kBest);
  auto portable = makeCpuBackend(2, CpuKernels::kPortable);
  std::vector<Backend*> tables = {simd.get()};
  std::unique_ptr<Backend> avx2;
  if (std::string(cpuBackendKernels(*simd)) == "avx512vnni") {
    avx2 = makeCpuBackend(2, CpuKernels::kAvx2);
    tables.push_back(avx2.get());
  }
  tables.push_back(portable.get());
  std::printf("kernels:");
  for (Backend* b : tables) std::printf(" %s", cpuBackendKernels(*b));
  std::printf("\n");
  {
    std::vector<const cpu::Kernels*> direct;
    if (feat.avx512vnni) direct.push_back(&cpu::avx512Kernels());
    if (feat.avx2 && feat.fma && feat.f16c) direct.push_back(&cpu::avx2Kernels());
    const int before = checks;
    checkActivationQuantizers(direct, rng);
    std::printf("activation quantizers: %zu table(s) bit-identical to portable, %d checks\n", direct.size(), checks - before);
    const int beforeQ = checks;
    checkQuantizeHeads(direct, rng);
    direct.push_back(&cpu::portableKernels());
    std::mt19937_64 softmaxRng(seed * 31 + 7);  // its own stream: the configs below see the same data as without it
    checkSoftmax(direct, softmaxRng);
    std::printf("quantizeHead: %zu table(s) byte-identical to portable over 144 formats, %d checks\n", direct.size(), checks - beforeQ);
  }
  auto runAll = [&](const Config& cf, uint64_t configSeed, const char* label) {
    for (Backend* b : tables) {
      std::mt19937_64 r(configSeed);  // the same data for every table
      runConfig(*b, cf, r, label);
    }
  };
  const int bitsList[] = {2, 3, 4, 8}, gList[] = {32, 64, 128}, dList[] = {64, 96, 128, 256}, rList[] = {1, 4, 8};
  int counter = 0, configs = 0;
  if (std::getenv("TEST_CPU_REPORT_ONLY")) {  // just the realistic-data error report
    for (Backend* b : tables) {
      std::mt19937_64 r(seed * 7 + 1);
      reportRealistic(*b, cpuBackendKernels(*b), r);
    }
    return 0;
  }
  for (int method = 0; method < 3; method++)  // 0 InnerQ, 1 KIVI-style, 2 fp16 pages
    for (int bits : bitsList)
      for (int G : gList)
        for (int mode = 0; mode < 3; mode++) {
          if (method == 2 && (bits != 2 || G != 32 || mode)) continue;
          counter++;
          Config cf;
          const int vbits = bitsList[(counter + 1) % 4];
          if (method == 0) {
            cf.kf = MatrixFormat{kRowGrouped, bits, G, mode};
            cf.vf = MatrixFormat{kColGrouped, vbits, G, (mode + 1) % 3};
          } else if (method == 1) {
            cf.kf = MatrixFormat{kColGrouped, bits, G, mode};
            cf.vf = MatrixFormat{kRowGrouped, vbits, G, (mode + 2) % 3};
          } else {
            cf.kf = MatrixFormat{kFp16Rows, 16, 32, 0};
            cf.vf = MatrixFormat{kFp16Rows, 16, 32, 0};
          }
          int d = dList[counter % 4];
          if (d % G) d = G == 128 ? 128 : 128;
          if (d == 96 && G != 32) d = 128;
          const int rr = rList[counter % 3];
          cf.kvHeads = rr == 8 ? 1 : 2;
          cf.qHeads = cf.kvHeads * rr;
          cf.d = d;
          cf.P = counter % 2 ? 128 : 256;
          cf.S = counter % 4 == 0 ? 0 : (counter % 4 == 1 ? 5 : 32);
          std::uniform_int_distribution<int> qd(1, 700);
          const int colG = G;
          int qK = qd(rng), qV = qd(rng);
          if (cf.kf.orientation == kColGrouped) qK = qK / colG * colG;
          if (cf.vf.orientation == kColGrouped) qV = qV / colG * colG;
          if (counter % 11 == 0) qK = qV = 0;  // short prompt: all fp16
          cf.qK = qK;
          cf.qV = qV;
          cf.extra = 1 + counter % 61;
          cf.heavy = counter % 2 == 0;
          cf.norm = method != 1 || counter % 3 == 0;
          char label[160];
          std::snprintf(label, sizeof label, "[m%d b%d/%d G%d mode%d d%d r%d S%d qK%d qV%d T+%d heavy%d]", method, bits,
                        vbits, G, mode, d, rr, cf.S, qK, qV, cf.extra, cf.heavy);
          runAll(cf, rng(), label);
          configs++;
        }
  // The G = 32 fast paths (lane-per-block InnerQ kernels) at the production shapes, every bit width and head ratio
  // (r = 1, 2, 3: the avx512 value kernel runs 4 or 2 dependency chains per head below r = 4).
  for (int bits : {2, 3, 4})
    for (int d : {128, 256})
      for (int rr : {1, 2, 3, 4, 8}) {
        counter++;
        Config cf;
        cf.kf = MatrixFormat{kRowGrouped, bits, 32, counter % 3};
        cf.vf = MatrixFormat{kColGrouped, 2 + (counter % 3), 32, (counter + 1) % 3};
        cf.kvHeads = rr == 8 ? 1 : 2;
        cf.qHeads = cf.kvHeads * rr;
        cf.d = d;
        cf.P = 128;
        cf.S = 32;
        cf.qK = 200 + counter * 7 % 300;
        cf.qV = (200 + counter * 13 % 300) / 32 * 32;
        cf.extra = 3 + counter % 40;
        cf.heavy = counter % 2;
        cf.norm = true;
        char label[160];
        std::snprintf(label, sizeof label, "[fast b%d/%d d%d r%d qK%d qV%d]", bits, cf.vf.bits, d, rr, cf.qK, cf.qV);
        runAll(cf, rng(), label);
        configs++;
      }
  // Long layers with one or two kv heads: the backend splits each head's tokens into several chunks whose partial
  // value sums are merged (and pages hold 512 tokens, so chunks span several pages). m3: 128-token pages and ~4.6k
  // tokens, so that the single-threaded key and value phases (two chunks per head) hand the InnerQ kernels more
  // pages than one run holds (PageRuns::kRunPages = 16) and split them into several runs.
  for (int method = 0; method < 4; method++) {
    Config cf;
    if (method == 3) {
      cf.kf = MatrixFormat{kRowGrouped, 4, 32, kHybrid};
      cf.vf = MatrixFormat{kColGrouped, 3, 32, kHybrid};
    } else if (method == 0) {
      cf.kf = MatrixFormat{kRowGrouped, 3, 32, kSym};
      cf.vf = MatrixFormat{kColGrouped, 2, 32, kHybrid};
    } else if (method == 1) {
      cf.kf = MatrixFormat{kColGrouped, 2, 32, kAsym};
      cf.vf = MatrixFormat{kRowGrouped, 2, 32, kAsym};
    } else {
      cf.kf = cf.vf = MatrixFormat{kFp16Rows, 16, 32, 0};
    }
    cf.kvHeads = method == 0 ? 2 : 1;  // two heads: attend cuts only the last head's last chunk into pieces
    cf.qHeads = 4 * cf.kvHeads;
    cf.d = 128;
    cf.P = method == 3 ? 128 : 512;
    cf.S = 32;
    cf.qK = method == 3 ? 4601 : method == 1 ? 2976 : 2999;
    cf.qV = method == 3 ? 4576 : 2944;
    cf.extra = 97;
    cf.heavy = method == 2;
    cf.norm = method == 0 || method == 3;
    char label[160];
    std::snprintf(label, sizeof label, "[long m%d T%d]", method, cf.S + cf.qK + cf.extra);
    runAll(cf, rng(), label);
    auto one = makeCpuBackend(1, true);  // single-threaded pool path
    std::mt19937_64 r3(rng());
    runConfig(*one, cf, r3, label);
    configs++;
  }
  for (Backend* b : tables) {
    std::mt19937_64 r(seed * 7 + 1);
    reportRealistic(*b, cpuBackendKernels(*b), r);
  }
  std::printf("%d configs x %zu kernel tables, %d checks, %d failures, worst err/bound %.3f\n", configs, tables.size(), checks, failures,
              worstRatio);
  std::printf("float paths: worst normwise relative error %.2e (limit 1e-5); int8 paths: worst err / derived bound %.3f "
              "(KIVI-style %.3f)\n",
              worstFloatRel, worstI8Ratio, worstKiviRatio);
  return failures ? 1 : 0;
}
