// sim_tests.cpp - every CUDA kernel executed through the sim backend (the cuda backend's own source on cudasim):
//   * quantize kernels: codes, scales and zeros bit-identical to the host quantizeGroup + packBlock32;
//   * attention: randomized shapes and formats vs an fp64 reference over the dequantized cache;
//   * thread orders forward / reversed / shuffled give bit-identical outputs;
//   * planted bugs (missing __syncthreads, out-of-range shuffle lanes, divergent barrier, deadlock, host
//     pointer passed as device memory) are detected: the harness can fail;
//   * stream order: a legacy-stream upload is not seen by a kernel on a non-blocking stream, and a download is not
//     in host memory, until something waits for the stream (the race the first run on a real GPU found).
// Build and run: scripts/sim-tests.sh [seed] [cases]
#ifndef INNERQ_SIM
#define INNERQ_SIM 1
#endif
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "../../../csrc/cuda/device_backend.h"
#include "../../../kernels/device.cuh"

using namespace innerq;

static int failures = 0, checks = 0;
#define EXPECT(cond, ...)                                   \
  do {                                                      \
    checks++;                                               \
    if (!(cond)) {                                          \
      failures++;                                           \
      std::printf("FAIL %s:%d: ", __FILE__, __LINE__);      \
      std::printf(__VA_ARGS__);                             \
      std::printf("\n");                                    \
    }                                                       \
  } while (0)

static std::mt19937 rng;
static double uniform(double a, double b) { return std::uniform_real_distribution<double>(a, b)(rng); }
static int pick(int n) { return (int)(rng() % (unsigned)n); }

// Cache-like data: per-channel magnitudes with a few outlier channels (keys), heavier tails (values),
// occasional constant groups and exact zeros so the guarded quantizer paths run too.
static std::vector<uint16_t> randomRows(int rows, int kvHeads, int d, bool keys) {
  std::vector<double> chanScale((size_t)kvHeads * d);
  for (double& s : chanScale) s = keys && pick(16) == 0 ? uniform(10, 40) : uniform(0.2, 2.0);
  std::vector<uint16_t> out((size_t)rows * kvHeads * d);
  for (int t = 0; t < rows; t++)
    for (int i = 0; i < kvHeads * d; i++) {
      double x = std::normal_distribution<double>(0, 1)(rng) * chanScale[i];
      if (!keys && pick(50) == 0) x *= 6;
      if (pick(200) == 0) x = 0;
      out[(size_t)t * kvHeads * d + i] = doubleToHalfSaturate(x);
    }
  if (rows >= 64 && pick(3) == 0)  // a constant stretch in one channel / row
    for (int t = 0; t < 64; t++) out[(size_t)t * kvHeads * d] = doubleToHalfSaturate(1.5);
  return out;
}

struct DeviceBuffer {
  Backend* b;
  void* p;
  DeviceBuffer(Backend* be, size_t bytes) : b(be), p(be->allocate(bytes)) {}
  ~DeviceBuffer() { b->release(p); }
};

static MatrixFormat randomFormat(int d, bool allowFp16) {
  MatrixFormat f;
  const int o = pick(allowFp16 ? 3 : 2);
  f.orientation = o == 2 ? kFp16Rows : (o == 0 ? kRowGrouped : kColGrouped);
  const int bits[4] = {2, 3, 4, 8};
  f.bits = bits[pick(4)];
  do f.groupSize = 32 << pick(3); while (f.groupSize > d);
  f.mode = pick(3);
  return f;
}

// Dequantized element (double) of matrix m at page-quantized index qi, head h, channel j.
static double dequantAt(const std::vector<uint8_t>& page, const MatrixFormat& f, const MatrixLayout& l, int P, int d,
                        int slot, int h, int j) {
  if (f.orientation == kFp16Rows) {
    uint16_t v;
    std::memcpy(&v, page.data() + l.codesOffset + h * l.codesHeadBytes + ((size_t)slot * d + j) * 2, 2);
    return halfToDouble(v);
  }
  size_t gi;
  int e;
  if (f.orientation == kRowGrouped) { gi = (size_t)slot * (d / f.groupSize) + j / f.groupSize; e = j % f.groupSize; }
  else { gi = (size_t)(slot / f.groupSize) * d + j; e = slot % f.groupSize; }
  const uint8_t* g = page.data() + l.codesOffset + h * l.codesHeadBytes + gi * groupBytes(f.bits, f.groupSize);
  uint8_t u[32];
  unpackBlock32(g + (e / 32) * blockBytes(f.bits), f.bits, u);
  uint16_t sb, zb = 0;
  std::memcpy(&sb, page.data() + l.scalesOffset + h * l.scalesHeadBytes + gi * 2, 2);
  if (hasZeros(f.mode)) std::memcpy(&zb, page.data() + l.zerosOffset + h * l.scalesHeadBytes + gi * 2, 2);
  const double s = halfToDouble(sb & 0x7fff);
  return scaleIsAsym(sb) ? s * u[e % 32] + halfToDouble(zb) : s * ((int)u[e % 32] - symOffset(f.bits));
  (void)P;
}

// ---------------------------------------------------------------- quantize: bit-exact vs host
static void testQuantize(Backend* be, int cases) {
  int groupsChecked = 0;
  for (int c = 0; c < cases; c++) {
    const int d = 64 << pick(3), kvHeads = 1 + pick(2), P = 128 << pick(2);
    MatrixFormat f = randomFormat(d, true);
    const bool keys = pick(2) == 0;
    MatrixFormat other{kFp16Rows, 0, 0, 0};
    const PageLayout layout = keys ? pageLayout(f, other, P, kvHeads, d) : pageLayout(other, f, P, kvHeads, d);
    const MatrixLayout& ml = keys ? layout.keys : layout.values;
    const int G = f.orientation == kColGrouped ? f.groupSize : 1;
    const int first = (pick(3) * P / 2 + pick(P)) / G * G;
    int count = 1 + pick(P + 40);
    if (G > 1) count = (count + G - 1) / G * G;
    const int pages = (first + count - 1) / P + 1;
    std::vector<uint16_t> rows = randomRows(count, kvHeads, d, keys);
    std::vector<float> norm((size_t)kvHeads * d);
    for (float& x : norm) x = (float)uniform(0.5, 6.0);
    const bool useNorm = keys && pick(2) == 0;
    DeviceBuffer dRows(be, rows.size() * 2), dNorm(be, norm.size() * 4);
    be->upload(dRows.p, rows.data(), rows.size() * 2);
    be->upload(dNorm.p, norm.data(), norm.size() * 4);
    std::vector<DeviceBuffer*> pageBufs;
    std::vector<uint8_t*> pagePtrs;
    for (int i = 0; i < pages; i++) {
      pageBufs.push_back(new DeviceBuffer(be, layout.pageBytes));
      pagePtrs.push_back((uint8_t*)pageBufs.back()->p);
    }
    LayerView v;
    v.qHeads = kvHeads;
    v.kvHeads = kvHeads;
    v.headDim = d;
    v.keyFormat = keys ? f : other;
    v.valueFormat = keys ? other : f;
    v.pageTokens = P;
    v.layout = layout;
    v.pages = pagePtrs.data();
    v.pageCount = pages;
    v.keyNorm = useNorm ? (const float*)dNorm.p : nullptr;
    const Status st = be->quantizeRows(v, keys ? Matrix::Keys : Matrix::Values, (const uint16_t*)dRows.p, first, count);
    EXPECT(st == Status::Ok, "quantizeRows status %d: %s", (int)st, be->lastError().c_str());
    std::vector<std::vector<uint8_t>> got(pages, std::vector<uint8_t>(layout.pageBytes));
    for (int i = 0; i < pages; i++) be->download(got[i].data(), pagePtrs[i], layout.pageBytes);
    auto elem = [&](int row, int h, int j) {
      uint16_t x = rows[((size_t)row * kvHeads + h) * d + j];
      return useNorm ? normalizeKey(x, norm[(size_t)h * d + j]) : x;
    };
    int bad = 0;
    for (int h = 0; h < kvHeads; h++) {
      if (f.orientation == kFp16Rows) {
        for (int r = 0; r < count; r++)
          for (int j = 0; j < d; j++) {
            const int qi = first + r;
            uint16_t g;
            std::memcpy(&g, got[qi / P].data() + ml.codesOffset + h * ml.codesHeadBytes + ((size_t)(qi % P) * d + j) * 2, 2);
            bad += g != elem(r, h, j);
          }
        continue;
      }
      const int gsz = f.groupSize, n = d / gsz;
      const int groups = f.orientation == kRowGrouped ? count * n : (count / gsz) * d;
      for (int gidx = 0; gidx < groups; gidx++) {
        uint16_t src[128];
        int qi;
        size_t gi;
        if (f.orientation == kRowGrouped) {
          const int r = gidx / n, cg = gidx % n;
          for (int e = 0; e < gsz; e++) src[e] = elem(r, h, cg * gsz + e);
          qi = first + r;
          gi = (size_t)(qi % P) * n + cg;
        } else {
          const int tg = gidx / d, j = gidx % d;
          for (int e = 0; e < gsz; e++) src[e] = elem(tg * gsz + e, h, j);
          qi = first + tg * gsz;
          gi = (size_t)((qi % P) / gsz) * d + j;
        }
        uint8_t u[128], packed[128];
        const QuantizedGroup q = quantizeGroup(src, 1, gsz, f.bits, f.mode, u);
        for (int b = 0; b < gsz / 32; b++) packBlock32(u + 32 * b, f.bits, packed + b * blockBytes(f.bits));
        const std::vector<uint8_t>& pg = got[qi / P];
        const int gb = groupBytes(f.bits, gsz);
        uint16_t s, z = 0;
        std::memcpy(&s, pg.data() + ml.scalesOffset + h * ml.scalesHeadBytes + gi * 2, 2);
        if (hasZeros(f.mode)) std::memcpy(&z, pg.data() + ml.zerosOffset + h * ml.scalesHeadBytes + gi * 2, 2);
        const bool same = std::memcmp(pg.data() + ml.codesOffset + h * ml.codesHeadBytes + gi * gb, packed, gb) == 0 &&
                          s == q.scale && (!hasZeros(f.mode) || z == q.zero);
        if (!same && bad < 3)
          std::printf("  mismatch: orient %d bits %d G %d mode %d group %d scale %04x/%04x zero %04x/%04x\n", f.orientation,
                      f.bits, gsz, f.mode, gidx, s, q.scale, z, q.zero);
        bad += !same;
        groupsChecked++;
      }
    }
    EXPECT(bad == 0, "quantize case %d (orient %d bits %d G %d mode %d d %d): %d mismatches", c, f.orientation, f.bits,
           f.groupSize, f.mode, d, bad);
    for (DeviceBuffer* b : pageBufs) delete b;
  }
  std::printf("quantize: %d cases, %d groups bit-exact vs host quantizeGroup\n", cases, groupsChecked);
}

// ---------------------------------------------------------------- attention vs fp64 reference
struct AttnCase {
  int d, kvHeads, r, P, S, T, qK, qV, ring;
  MatrixFormat kf, vf;
  bool norm;
};

static double attentionCase(Backend* const* backends, int nb, const AttnCase& c, bool* ordersAgree) {
  const int d = c.d, kvh = c.kvHeads, qh = c.kvHeads * c.r, T = c.T, S = c.S;
  std::vector<uint16_t> K = randomRows(T, kvh, d, true), V = randomRows(T, kvh, d, false);
  std::vector<float> norm((size_t)kvh * d, 1.0f);
  if (c.norm)
    for (int h = 0; h < kvh; h++)
      for (int j = 0; j < d; j++) {
        double m = 1e-3;
        for (int t = S; t < T; t++) m = std::max(m, std::fabs(halfToDouble(K[((size_t)t * kvh + h) * d + j])));
        norm[(size_t)h * d + j] = (float)std::sqrt(m);
      }
  std::vector<float> q((size_t)qh * d);
  for (float& x : q) x = (float)uniform(-1, 1);
  std::vector<std::vector<float>> outs(nb, std::vector<float>((size_t)qh * d));
  const PageLayout layout = pageLayout(c.kf, c.vf, c.P, kvh, d);
  double relErr = 0;
  const size_t rowElems = (size_t)kvh * d;
  for (int bi = 0; bi < nb; bi++) {
    Backend* be = backends[bi];
    const int qmax = std::max(c.qK, c.qV), pages = qmax ? (qmax - 1) / c.P + 1 : 0;
    DeviceBuffer sinkK(be, (size_t)std::max(S, 1) * rowElems * 2), sinkV(be, (size_t)std::max(S, 1) * rowElems * 2);
    DeviceBuffer ringK(be, (size_t)c.ring * rowElems * 2), ringV(be, (size_t)c.ring * rowElems * 2);
    DeviceBuffer dNorm(be, norm.size() * 4), dK(be, K.size() * 2), dV(be, V.size() * 2);
    be->upload(dNorm.p, norm.data(), norm.size() * 4);
    be->upload(dK.p, K.data(), K.size() * 2);
    be->upload(dV.p, V.data(), V.size() * 2);
    const int sinkHeld = std::min(S, T);
    be->upload(sinkK.p, K.data(), (size_t)sinkHeld * rowElems * 2);
    be->upload(sinkV.p, V.data(), (size_t)sinkHeld * rowElems * 2);
    std::vector<uint16_t> ringHostK((size_t)c.ring * rowElems, 0x7e00), ringHostV((size_t)c.ring * rowElems, 0x7e00);
    for (int a = S; a < T; a++) {
      const int slot = (a - S) % c.ring;
      if (a - S >= c.qK) std::memcpy(&ringHostK[(size_t)slot * rowElems], &K[(size_t)a * rowElems], rowElems * 2);
      if (a - S >= c.qV) std::memcpy(&ringHostV[(size_t)slot * rowElems], &V[(size_t)a * rowElems], rowElems * 2);
    }
    be->upload(ringK.p, ringHostK.data(), ringHostK.size() * 2);
    be->upload(ringV.p, ringHostV.data(), ringHostV.size() * 2);
    std::vector<DeviceBuffer*> pageBufs;
    std::vector<uint8_t*> pagePtrs;
    for (int i = 0; i < pages; i++) {
      pageBufs.push_back(new DeviceBuffer(be, layout.pageBytes));
      pagePtrs.push_back((uint8_t*)pageBufs.back()->p);
    }
    LayerView v;
    v.qHeads = qh;
    v.kvHeads = kvh;
    v.headDim = d;
    v.keyFormat = c.kf;
    v.valueFormat = c.vf;
    v.pageTokens = c.P;
    v.layout = layout;
    v.tokens = T;
    v.sinkCapacity = S;
    v.quantizedKeys = c.qK;
    v.quantizedValues = c.qV;
    v.ringCapacity = c.ring;
    v.sinkKeys = (const uint16_t*)sinkK.p;
    v.sinkValues = (const uint16_t*)sinkV.p;
    v.ringKeys = (const uint16_t*)ringK.p;
    v.ringValues = (const uint16_t*)ringV.p;
    v.pages = pagePtrs.data();
    v.pageCount = pages;
    v.keyNorm = c.norm ? (const float*)dNorm.p : nullptr;
    v.keyNormHost = c.norm ? norm.data() : nullptr;
    const uint16_t* rowsK = (const uint16_t*)dK.p + (size_t)S * rowElems;
    const uint16_t* rowsV = (const uint16_t*)dV.p + (size_t)S * rowElems;
    // Append in two calls, as the cache engine does over time.
    const int gk = c.kf.orientation == kColGrouped ? c.kf.groupSize : 1, gv = c.vf.orientation == kColGrouped ? c.vf.groupSize : 1;
    const int splitK = c.qK / 2 / gk * gk, splitV = c.qV / 2 / gv * gv;
    Status st = Status::Ok;
    if (splitK) st = be->quantizeRows(v, Matrix::Keys, rowsK, 0, splitK);
    if (st == Status::Ok && c.qK > splitK) st = be->quantizeRows(v, Matrix::Keys, rowsK + (size_t)splitK * rowElems, splitK, c.qK - splitK);
    if (st == Status::Ok && splitV) st = be->quantizeRows(v, Matrix::Values, rowsV, 0, splitV);
    if (st == Status::Ok && c.qV > splitV) st = be->quantizeRows(v, Matrix::Values, rowsV + (size_t)splitV * rowElems, splitV, c.qV - splitV);
    EXPECT(st == Status::Ok, "quantize for attention: %s", be->lastError().c_str());
    std::fill(outs[bi].begin(), outs[bi].end(), NAN);  // poison: the kernel must write every output
    st = be->attend(v, q.data(), outs[bi].data());
    EXPECT(st == Status::Ok, "attend: %s", be->lastError().c_str());
    if (bi == 0) {
      // fp64 reference on the dequantized cache (what the kernels are meant to compute exactly).
      std::vector<std::vector<uint8_t>> pg(pages, std::vector<uint8_t>(layout.pageBytes));
      for (int i = 0; i < pages; i++) be->download(pg[i].data(), pagePtrs[i], layout.pageBytes);
      double maxRef = 0, maxDiff = 0;
      for (int h = 0; h < qh; h++) {
        const int kv = h / c.r;
        std::vector<double> s(T);
        double m = -1e300;
        for (int a = 0; a < T; a++) {
          double acc = 0;
          const bool inPage = a >= S && a - S < c.qK;
          for (int j = 0; j < d; j++) {
            const double kx = inPage ? dequantAt(pg[(a - S) / c.P], c.kf, layout.keys, c.P, d, (a - S) % c.P, kv, j) * norm[(size_t)kv * d + j]
                                     : halfToDouble(K[((size_t)a * kvh + kv) * d + j]);
            acc += (double)q[(size_t)h * d + j] * kx;
          }
          s[a] = acc / std::sqrt((double)d);
          m = std::max(m, s[a]);
        }
        double l = 0;
        for (int a = 0; a < T; a++) l += (s[a] = std::exp(s[a] - m));
        for (int j = 0; j < d; j++) {
          double o = 0;
          for (int a = 0; a < T; a++) {
            const bool inPage = a >= S && a - S < c.qV;
            const double vx = inPage ? dequantAt(pg[(a - S) / c.P], c.vf, layout.values, c.P, d, (a - S) % c.P, kv, j)
                                     : halfToDouble(V[((size_t)a * kvh + kv) * d + j]);
            o += s[a] * vx;
          }
          o /= l;
          maxRef = std::max(maxRef, std::fabs(o));
          const double diff = std::fabs(o - outs[0][(size_t)h * d + j]);
          maxDiff = std::isnan(diff) ? 1e300 : std::max(maxDiff, diff);
        }
      }
      relErr = maxDiff / std::max(maxRef, 1e-30);
    }
    for (DeviceBuffer* b : pageBufs) delete b;
  }
  *ordersAgree = true;
  for (int bi = 1; bi < nb; bi++) *ordersAgree &= std::memcmp(outs[0].data(), outs[bi].data(), outs[0].size() * 4) == 0;
  return relErr;
}

static void testAttention(Backend* const* backends, int nb, int cases) {
  const double tol = 2e-5;  // fp32 accumulation over <= 256 channels and <= 256-token chunks, vs fp64
  double worst = 0;
  for (int i = 0; i < cases; i++) {
    AttnCase c;
    c.d = 64 << pick(3);
    const int rs[3] = {1, 4, 8};
    c.r = rs[pick(3)];
    c.kvHeads = 1 + pick(2);
    c.P = 128 << pick(2);
    c.kf = randomFormat(c.d, i % 5 == 4);
    c.vf = randomFormat(c.d, i % 5 == 4);
    if (i % 3 == 0) { c.kf.orientation = kRowGrouped; c.vf.orientation = kColGrouped; }       // InnerQ
    else if (i % 3 == 1) { c.kf.orientation = kColGrouped; c.vf.orientation = kRowGrouped; }  // KIVI-style
    c.S = pick(4) == 0 ? 0 : 1 + pick(40);
    c.T = 1 + pick(900);
    if (i == 0) c.T = 5;  // shorter than the sink: everything fp16
    const int rest = std::max(0, c.T - c.S);
    auto quantCount = [&](const MatrixFormat& f) {
      const int win = pick(100);
      int qn = std::max(0, rest - win);
      if (f.orientation == kColGrouped) qn = qn / f.groupSize * f.groupSize;
      return qn;
    };
    c.qK = quantCount(c.kf);
    c.qV = quantCount(c.vf);
    c.ring = ((rest - std::min(c.qK, c.qV)) / 128 + 1) * 128;
    c.norm = pick(2) == 0;
    bool agree = false;
    const double err = attentionCase(backends, nb, c, &agree);
    worst = std::max(worst, err);
    EXPECT(err <= tol, "attention case %d: rel err %.3g (d %d r %d kv %d T %d S %d qK %d qV %d K{%d,%d,%d,%d} V{%d,%d,%d,%d})", i,
           err, c.d, c.r, c.kvHeads, c.T, c.S, c.qK, c.qV, c.kf.orientation, c.kf.bits, c.kf.groupSize, c.kf.mode,
           c.vf.orientation, c.vf.bits, c.vf.groupSize, c.vf.mode);
    EXPECT(agree, "attention case %d: thread orders disagree", i);
  }
  std::printf("attention: %d cases x %d thread orders, worst rel err %.3g (tolerance %.0e), orders bit-identical\n", cases, nb,
              worst, tol);
}

// ---------------------------------------------------------------- planted bugs
__global__ void neighbourRead(float* out, int withBarrier) {
  IQ_DYN_SHARED(float, s);
  s[threadIdx.x] = (float)threadIdx.x + 1.0f;
  if (withBarrier) __syncthreads();  // uniform condition: legal
  out[threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}
__global__ void shuffleOutsideMask(float* out) {
  float v = (float)threadIdx.x;
  if (threadIdx.x < 16) v = __shfl_sync(0x0000ffffu, v, 20);  // lane 20 is not in the mask
  out[threadIdx.x] = v;
}
__global__ void shuffleAbsentLanes(float* out) {  // launched with 48 threads: lanes 16..31 of warp 1 do not exist
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (float)threadIdx.x, 1);
}
__global__ void divergentBarrier(float* out) {
  if (threadIdx.x < 16) __syncthreads();
  else __syncthreads();
  out[threadIdx.x] = 1;
}
__global__ void deadlock(float* out) {
  if (threadIdx.x == 0) __syncthreads();
  else {
    __syncwarp();  // waits for lane 0, which waits at the block barrier for them
    out[threadIdx.x] = 1;
  }
}

static std::string runPlanted(void (*kernel)(float*), int threads, float* out) {
  cudasim::resetErrors();
  IQ_LAUNCH(kernel, dim3(1), dim3(threads), 0, nullptr, out);
  const std::string m = cudaGetLastError() == cudaSuccess ? std::string() : cudasim::lastMessage();
  cudasim::resetErrors();
  return m;
}

static void testPlantedBugs() {
  float* out = nullptr;
  cudaMalloc(&out, 1024 * 4);
  // Missing __syncthreads: some order reads a neighbour's slot before it is written (poison = NaN).
  bool detected = false, cleanOk = true;
  for (int order = 0; order < 3; order++) {
    cudasim::config().order = order;
    for (int barrier = 0; barrier < 2; barrier++) {
      auto k = neighbourRead;
      IQ_LAUNCH(k, dim3(2), dim3(64), 64 * 4, nullptr, out, barrier);
      bool right = true;
      for (int i = 0; i < 64; i++) right &= out[i] == (float)((i + 1) % 64 + 1);
      if (barrier) cleanOk &= right;
      else detected |= !right;
    }
  }
  cudasim::config().order = 0;
  EXPECT(detected, "missing __syncthreads not detected by any thread order");
  EXPECT(cleanOk, "correct kernel (with __syncthreads) failed");
  std::string m = runPlanted(shuffleOutsideMask, 32, out);
  EXPECT(m.find("not in the mask") != std::string::npos, "out-of-mask shuffle lane not detected: '%s'", m.c_str());
  m = runPlanted(shuffleAbsentLanes, 48, out);
  EXPECT(m.find("absent") != std::string::npos, "shuffle over absent lanes not detected: '%s'", m.c_str());
  m = runPlanted(divergentBarrier, 32, out);
  EXPECT(m.find("divergent barrier") != std::string::npos, "divergent barrier not detected: '%s'", m.c_str());
  m = runPlanted(deadlock, 32, out);
  EXPECT(m.find("deadlock") != std::string::npos, "deadlock not detected: '%s'", m.c_str());
  cudaFree(out);
  std::printf("planted bugs: missing __syncthreads, out-of-mask lane, absent lanes, divergent barrier, deadlock: checked\n");
}

// What a kernel saw of src when it ran.
__global__ void copyFloats(const float* src, float* dst, int n) {
  const int i = threadIdx.x;
  if (i < n) dst[i] = src[i];
}

static void testStreamOrder() {
  const int n = 64;
  float *a = nullptr, *b = nullptr;
  cudaMalloc(&a, n * 4);
  cudaMalloc(&b, n * 4);
  cudaStream_t s = nullptr;
  cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
  std::vector<float> host(n), back(n);
  for (int i = 0; i < n; i++) host[i] = (float)(i + 1);
  auto same = [&](const std::vector<float>& x) { return std::memcmp(x.data(), host.data(), n * 4) == 0; };
  // 1. An upload with cudaMemcpy (legacy stream), then a kernel on a non-blocking stream: nothing orders them.
  cudaMemcpy(a, host.data(), n * 4, cudaMemcpyHostToDevice);
  IQ_LAUNCH(copyFloats, dim3(1), dim3(n), 0, s, a, b, n);
  cudaMemcpyAsync(back.data(), b, n * 4, cudaMemcpyDeviceToHost, s);
  cudaStreamSynchronize(s);
  EXPECT(!same(back), "a kernel on a non-blocking stream saw a legacy-stream upload that nothing waited for");
  // 2. Once the device is synchronized, the upload has landed.
  cudaDeviceSynchronize();
  IQ_LAUNCH(copyFloats, dim3(1), dim3(n), 0, s, a, b, n);
  cudaMemcpyAsync(back.data(), b, n * 4, cudaMemcpyDeviceToHost, s);
  cudaStreamSynchronize(s);
  EXPECT(same(back), "upload missing after cudaDeviceSynchronize");
  // 3. A download is not in host memory before its stream is synchronized.
  std::fill(back.begin(), back.end(), -1.f);
  cudaMemcpyAsync(back.data(), a, n * 4, cudaMemcpyDeviceToHost, s);
  EXPECT(back[0] == -1.f && back[n - 1] == -1.f, "an asynchronous download landed before anything waited for it");
  cudaEvent_t e = nullptr;
  cudaEventCreate(&e);
  cudaEventRecord(e, s);
  cudaEventSynchronize(e);
  EXPECT(same(back), "download missing after cudaEventSynchronize");
  // 4. In one stream, an upload (staged at the call: the host buffer may change at once) precedes the kernel.
  std::vector<float> src = host;
  for (int i = 0; i < n; i++) src[i] = -host[i];
  cudaMemcpyAsync(a, src.data(), n * 4, cudaMemcpyHostToDevice, s);
  src.assign(n, 0.f);
  IQ_LAUNCH(copyFloats, dim3(1), dim3(n), 0, s, a, b, n);
  cudaMemcpyAsync(back.data(), b, n * 4, cudaMemcpyDeviceToHost, s);
  cudaStreamSynchronize(s);
  bool negated = true;
  for (int i = 0; i < n; i++) negated &= back[i] == -host[i];
  EXPECT(negated, "same-stream upload -> kernel -> download out of order");
  EXPECT(cudaGetLastError() == cudaSuccess, "stream-order test raised an error: %s", cudasim::lastMessage().c_str());
  cudaEventDestroy(e);
  cudaStreamDestroy(s);
  cudaFree(a);
  cudaFree(b);
  std::printf("stream order: legacy upload vs non-blocking kernel, unsynchronized download, same-stream order: checked\n");
}

static void testHostPointerDetected(Backend* be) {
  // A host pointer where device rows belong: the sim reports it instead of reading host memory silently.
  const int d = 64, P = 128;
  MatrixFormat kf{kRowGrouped, 4, 32, kSym}, vf{kFp16Rows, 0, 0, 0};
  const PageLayout layout = pageLayout(kf, vf, P, 1, d);
  DeviceBuffer page(be, layout.pageBytes);
  uint8_t* pages[1] = {(uint8_t*)page.p};
  std::vector<uint16_t> hostRows = randomRows(4, 1, d, true);
  LayerView v;
  v.qHeads = 1; v.kvHeads = 1; v.headDim = d; v.keyFormat = kf; v.valueFormat = vf; v.pageTokens = P; v.layout = layout;
  v.pages = pages; v.pageCount = 1;
  const Status st = be->quantizeRows(v, Matrix::Keys, hostRows.data(), 0, 4);
  EXPECT(st == Status::DeviceError && be->lastError().find("not emulated device memory") != std::string::npos,
         "host pointer passed as device rows not detected (status %d, '%s')", (int)st, be->lastError().c_str());
  cudasim::resetErrors();
  std::vector<uint8_t> sink(16);
  EXPECT(be->download(sink.data(), hostRows.data(), 16) == Status::DeviceError, "download from a host pointer not detected");
  cudasim::resetErrors();
}

int main(int argc, char** argv) {
  const unsigned seed = argc > 1 ? (unsigned)std::atoi(argv[1]) : 12345u;
  const int cases = argc > 2 ? std::atoi(argv[2]) : 40;
  rng.seed(seed);
  std::printf("sim tests, seed %u\n", seed);
  std::unique_ptr<Backend> fwd = makeSimBackend(0, seed), rev = makeSimBackend(1, seed), shuf = makeSimBackend(2, seed);
  Backend* all[3] = {fwd.get(), rev.get(), shuf.get()};
  testPlantedBugs();
  testStreamOrder();
  testHostPointerDetected(fwd.get());
  testQuantize(fwd.get(), cases * 2);
  testAttention(all, 3, cases);
  std::printf("%s: %d checks, %d failures\n", failures ? "FAILED" : "PASSED", checks, failures);
  return failures ? 1 : 0;
}
