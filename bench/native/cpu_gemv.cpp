// cpu_gemv.cpp - micro-benchmark of the CPU backend's decode GEMVs (not a test). Build with
// test/native/cpu/build.sh, run:   build-cpu/cpu_gemv [threads=2] [tokens=16384] [sweeps=15] [simd=1]
//
// Shape (DESIGN §3): 8 kv heads x 4 query heads each, head_dim 128, sink 32 + quantized pages + fp16 ring tail.
// One layer is quantized with quantizeRows, its pages are copied into as many layers as needed for the working set
// to exceed 4x the 32 MiB L3, and every timed sweep visits all layers in turn (as a decode step does), so the
// figures measure memory, not cache. Reported: median ms per layer over the sweeps, and effective GB/s = bytes of
// the layer's K and/or V (codes, scales, zeros, fp16 windows) / time.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <time.h>
#include <vector>

#include "../../csrc/cpu/cpu_backend.h"
#include "../../kernels/format.cuh"

using namespace innerq;
using Clock = std::chrono::steady_clock;

namespace {

struct Method {
  std::string name;
  MatrixFormat kf, vf;
};

uint16_t toHalfFast(float x) {  // bench data only: round-to-nearest via the F16C-free bit path is unnecessary;
  // values are small normals, so truncating the mantissa (not exact rounding) is fine for timing data.
  uint32_t b;
  std::memcpy(&b, &x, 4);
  const uint32_t sign = (b >> 16) & 0x8000;
  const int e = (int)((b >> 23) & 0xff) - 127 + 15;
  if (e <= 0) return (uint16_t)sign;
  if (e >= 31) return (uint16_t)(sign | 0x7bff);
  return (uint16_t)(sign | (e << 10) | ((b >> 13) & 0x3ff));
}

struct Layer {
  LayerView v;
  std::vector<uint8_t*> pages;
};

double median(std::vector<double> x) {
  std::sort(x.begin(), x.end());
  return x[x.size() / 2];
}
double minimum(const std::vector<double>& x) { return *std::min_element(x.begin(), x.end()); }

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  const int T = argc > 2 ? std::atoi(argv[2]) : 16384;
  const int sweeps = argc > 3 ? std::atoi(argv[3]) : 15;
  const bool simd = argc > 4 ? std::atoi(argv[4]) != 0 : true;
  const int kvH = 8, r = 4, qH = kvH * r, d = 128, S = 32, P = 1024;
  const int quant = (T - S - 96) / 128 * 128;  // quantized tokens; the rest (>= 96) is the fp16 ring tail
  const int ringCap = ((T - S - quant) + 127) / 128 * 128;
  auto backend = makeCpuBackend(threads, simd);
  Backend& b = *backend;
  const CpuFeatures feat = cpuFeatures();
  std::printf("cpu_gemv: tokens %d (sink %d, quantized %d, ring %d), kv heads %d x %d query heads, d %d, threads %d, "
              "kernels %s (avx2 %d f16c %d)\n",
              T, S, quant, T - S - quant, kvH, r, d, cpuBackendThreads(b), cpuBackendKernels(b), feat.avx2, feat.f16c);

  // random K, V rows (fp16), shared by every method
  std::mt19937_64 rng(7);
  std::normal_distribution<float> nd(0, 1);
  std::vector<uint16_t> K((size_t)T * kvH * d), V((size_t)T * kvH * d);
  for (size_t i = 0; i < K.size(); i++) {
    K[i] = toHalfFast(nd(rng) * ((i % d) % 17 == 0 ? 20.f : 1.f));
    V[i] = toHalfFast(nd(rng));
  }
  std::vector<float> norm((size_t)kvH * d);
  for (auto& x : norm) x = 1.0f + (float)(rng() % 100) / 25.0f;
  std::vector<float> query((size_t)qH * d), out((size_t)qH * d), scores((size_t)qH * T), probs((size_t)qH * T);
  for (auto& x : query) x = nd(rng);
  for (int h = 0; h < qH; h++) {  // a plausible attention distribution: mass on the sink and a decaying tail
    double sum = 0;
    for (int t = 0; t < T; t++) sum += probs[(size_t)h * T + t] = (float)std::exp(-(double)(rng() % 1000) / 100.0);
    for (int t = 0; t < T; t++) probs[(size_t)h * T + t] /= (float)sum;
  }
  const size_t rowBytes = (size_t)kvH * d * 2;
  auto* sinkK = (uint16_t*)b.allocate(rowBytes * S);
  auto* sinkV = (uint16_t*)b.allocate(rowBytes * S);
  auto* ringK = (uint16_t*)b.allocate(rowBytes * ringCap);
  auto* ringV = (uint16_t*)b.allocate(rowBytes * ringCap);
  std::memcpy(sinkK, K.data(), rowBytes * S);
  std::memcpy(sinkV, V.data(), rowBytes * S);
  for (int t = S + quant; t < T; t++) {
    std::memcpy(ringK + (size_t)((t - S) % ringCap) * kvH * d, &K[(size_t)t * kvH * d], rowBytes);
    std::memcpy(ringV + (size_t)((t - S) % ringCap) * kvH * d, &V[(size_t)t * kvH * d], rowBytes);
  }

  std::vector<Method> methods;
  methods.push_back({"fp16", {kFp16Rows, 16, 32, kSym}, {kFp16Rows, 16, 32, kSym}});
  for (int bits : {2, 3, 4}) {
    methods.push_back({"kivi-" + std::to_string(bits), {kColGrouped, bits, 32, kAsym}, {kRowGrouped, bits, 32, kAsym}});
    methods.push_back({"innerq-" + std::to_string(bits), {kRowGrouped, bits, 32, kSym}, {kColGrouped, bits, 32, kHybrid}});
  }
  methods.push_back({"innerq K3s/V2h", {kRowGrouped, 3, 32, kSym}, {kColGrouped, 2, 32, kHybrid}});

  std::printf("%-16s %7s %9s | %9s %7s | %9s %7s | %9s %7s\n", "method", "layers", "MiB/layer", "K ms", "K GB/s", "V ms",
              "V GB/s", "K+V ms", "GB/s");
  double fp16KV = 0;
  const char* only = std::getenv("CPU_GEMV_ONLY");  // comma list of method names to run (default: all)
  for (const Method& m : methods) {
    if (only && m.name != "fp16" && std::string(",") .append(only).append(",").find("," + m.name + ",") == std::string::npos)
      continue;
    const PageLayout layout = pageLayout(m.kf, m.vf, P, kvH, d);
    const int pagesPer = (quant + P - 1) / P;
    const size_t windowBytes = rowBytes * (S + (T - S - quant));
    const size_t kBytes = (size_t)pagesPer * (layout.keys.end - layout.keys.codesOffset) + windowBytes;
    const size_t vBytes = (size_t)pagesPer * (layout.values.end - layout.values.codesOffset) + windowBytes;
    const size_t layerBytes = (size_t)pagesPer * layout.pageBytes + 2 * windowBytes;
    int layers = (int)std::ceil(4.0 * 32 * 1048576 / (double)layerBytes);
    layers = std::max(layers, 4);
    std::vector<Layer> L(layers);
    double quantMs = 0;
    for (int l = 0; l < layers; l++) {
      LayerView& v = L[l].v;
      v.qHeads = qH;
      v.kvHeads = kvH;
      v.headDim = d;
      v.keyFormat = m.kf;
      v.valueFormat = m.vf;
      v.pageTokens = P;
      v.layout = layout;
      v.tokens = T;
      v.sinkCapacity = S;
      v.quantizedKeys = v.quantizedValues = quant;
      v.ringCapacity = ringCap;
      v.sinkKeys = sinkK;  // the small fp16 windows are shared; the pages (the bulk) are per layer
      v.sinkValues = sinkV;
      v.ringKeys = ringK;
      v.ringValues = ringV;
      v.keyNorm = v.keyNormHost = norm.data();
      for (int p = 0; p < pagesPer; p++) {
        auto* pg = (uint8_t*)b.allocate(layout.pageBytes);
        if (!pg) {
          std::printf("out of memory\n");
          return 1;
        }
        if (l > 0) std::memcpy(pg, L[0].pages[p], layout.pageBytes);
        L[l].pages.push_back(pg);
      }
      v.pages = L[l].pages.data();
      v.pageCount = pagesPer;
      if (l == 0) {
        const auto q0 = Clock::now();
        b.quantizeRows(v, Matrix::Keys, &K[(size_t)S * kvH * d], 0, quant);
        b.quantizeRows(v, Matrix::Values, &V[(size_t)S * kvH * d], 0, quant);
        quantMs = std::chrono::duration<double, std::milli>(Clock::now() - q0).count();
      }
    }
    double lastMin = 0, lastCpu = 0;
    auto timeIt = [&](auto&& fn) {
      std::vector<double> per, cpu;
      for (int s = 0; s < sweeps + 1; s++) {
        timespec c0, c1;
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
        const auto t0 = Clock::now();
        for (int l = 0; l < layers; l++) fn(L[l].v);
        const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count() / layers;
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
        if (s) {  // first sweep warms up
          per.push_back(ms);
          cpu.push_back(((c1.tv_sec - c0.tv_sec) * 1e3 + (c1.tv_nsec - c0.tv_nsec) / 1e6) / layers);
        }
      }
      lastMin = minimum(per);
      lastCpu = median(cpu);
      return median(per);
    };
    const double kMs = timeIt([&](const LayerView& v) { cpuKeyScores(b, v, query.data(), scores.data()); });
    const double kMin = lastMin, kCpu = lastCpu;
    const double vMs = timeIt([&](const LayerView& v) { cpuValueSum(b, v, probs.data(), out.data()); });
    const double vMin = lastMin, vCpu = lastCpu;
    const double kvMs = timeIt([&](const LayerView& v) { b.attend(v, query.data(), out.data()); });
    const double kvMin = lastMin, kvCpu = lastCpu;
    if (m.name == "fp16") fp16KV = kvMs;
    std::printf("%-16s %7d %9.2f | %9.3f %7.1f | %9.3f %7.1f | %9.3f %7.1f   x%.2f vs fp16  (min K %.3f V %.3f K+V %.3f; cpu ms K %.3f V %.3f K+V %.3f)\n",
                m.name.c_str(), layers, layerBytes / 1048576.0, kMs, kBytes / kMs / 1e6, vMs, vBytes / vMs / 1e6, kvMs,
                (kBytes + vBytes) / kvMs / 1e6, fp16KV / kvMs, kMin, vMin, kvMin, kCpu, vCpu,
                kvCpu);
    if (m.name != "fp16")
      std::printf("%-16s quantizeRows K+V of one layer (%d tokens x %d heads x %d): %.0f ms = %.1f M elements/s\n", "",
                  quant, kvH, d, quantMs, 2.0 * quant * kvH * d / quantMs / 1e3);
    for (auto& l : L)
      for (auto p : l.pages) b.release(p);
  }
  for (auto p : {sinkK, sinkV, ringK, ringV}) b.release(p);
  return 0;
}
