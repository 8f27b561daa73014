// cpu_gemv.cpp - micro-benchmark of the CPU backend's decode GEMVs (not a test). Build with
// test/native/cpu/build.sh, run:   build-cpu/cpu_gemv [threads=2] [tokens=16384] [sweeps=15] [kernels=2: 0 portable, 1 avx2, 2 best]
//
// Shape (DESIGN §3): 8 kv heads x 4 query heads each, head_dim 128, sink 32 + quantized pages + fp16 ring tail.
// One layer is quantized with quantizeRows, its pages are copied into as many layers as needed for the working set
// to exceed 4x a 48 MiB L3, and every timed sweep visits all layers in turn (as a decode step does), so the
// figures measure memory, not cache. Reported: median ms per layer over the sweeps, and effective GB/s = bytes of
// the layer's K and/or V (codes, scales, zeros, fp16 windows) / time.
// Pages of 256 tokens (KVCache's default) unless CPU_GEMV_PAGE=<tokens>; CPU_GEMV_LAYERS=1 gives a cache-resident
// run; CPU_GEMV_ONLY=<name,...> limits the methods (fp16 always runs).
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
  const int table = argc > 4 ? std::atoi(argv[4]) : 2;  // CpuKernels: 0 portable, 1 avx2, 2 best
  const int kvH = 8, r = 4, qH = kvH * r, d = 128, S = 32;
  // page tokens: KVCache's default pageTokens (256) unless CPU_GEMV_PAGE says otherwise
  const int P = std::getenv("CPU_GEMV_PAGE") ? std::atoi(std::getenv("CPU_GEMV_PAGE")) : 256;
  const int quant = (T - S - 96) / 128 * 128;  // quantized tokens; the rest (>= 96) is the fp16 ring tail
  const int ringCap = ((T - S - quant) + 127) / 128 * 128;
  auto backend = makeCpuBackend(threads, (CpuKernels)(table < 0 ? 0 : table > 2 ? 2 : table));
  Backend& b = *backend;
  const CpuFeatures feat = cpuFeatures();
  std::printf("cpu_gemv: tokens %d (sink %d, quantized %d, ring %d), pages of %d tokens, kv heads %d x %d query heads, d %d, "
              "threads %d, kernels %s (avx2 %d f16c %d)\n",
              T, S, quant, T - S - quant, P, kvH, r, d, cpuBackendThreads(b), cpuBackendKernels(b), feat.avx2, feat.f16c);

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

  // Build every method's layers first, then time the methods INTERLEAVED (each sweep visits every method in turn),
  // so that background load on a shared machine affects all methods alike instead of whichever ran at that moment.
  struct Run {
    Method m;
    std::vector<Layer> L;
    size_t kBytes, vBytes, layerBytes;
    double quantMs = 0;
    std::vector<double> k, v, kv, kvCpu;
  };
  std::vector<Run> runs;
  const char* only = std::getenv("CPU_GEMV_ONLY");  // comma list of method names to run (default: all)
  for (const Method& m : methods) {
    if (only && m.name != "fp16" && std::string(",").append(only).append(",").find("," + m.name + ",") == std::string::npos)
      continue;
    Run run;
    run.m = m;
    const PageLayout layout = pageLayout(m.kf, m.vf, P, kvH, d);
    const int pagesPer = (quant + P - 1) / P;
    const size_t windowBytes = rowBytes * (S + (T - S - quant));
    run.kBytes = (size_t)pagesPer * (layout.keys.end - layout.keys.codesOffset) + windowBytes;
    run.vBytes = (size_t)pagesPer * (layout.values.end - layout.values.codesOffset) + windowBytes;
    run.layerBytes = (size_t)pagesPer * layout.pageBytes + 2 * windowBytes;
    int layers = (int)std::ceil(4.0 * 48 * 1048576 / (double)run.layerBytes);  // > 4x the largest L3 we run on
    layers = std::max(layers, 4);
    if (const char* e = std::getenv("CPU_GEMV_LAYERS")) layers = std::max(1, std::atoi(e));  // 1 = cache-resident run
    run.L.resize(layers);
    for (int l = 0; l < layers; l++) {
      LayerView& v = run.L[l].v;
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
        if (l > 0) std::memcpy(pg, run.L[0].pages[p], layout.pageBytes);
        run.L[l].pages.push_back(pg);
      }
      v.pages = run.L[l].pages.data();
      v.pageCount = pagesPer;
      if (l == 0) {
        const auto q0 = Clock::now();
        b.quantizeRows(v, Matrix::Keys, &K[(size_t)S * kvH * d], 0, quant);
        b.quantizeRows(v, Matrix::Values, &V[(size_t)S * kvH * d], 0, quant);
        run.quantMs = std::chrono::duration<double, std::milli>(Clock::now() - q0).count();
      }
    }
    runs.push_back(std::move(run));
  }
  auto sweep = [&](Run& run, auto&& fn, std::vector<double>& wall, std::vector<double>* cpu) {
    timespec c0, c1;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
    const auto t0 = Clock::now();
    for (auto& l : run.L) fn(l.v);
    wall.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count() / run.L.size());
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
    if (cpu) cpu->push_back(((c1.tv_sec - c0.tv_sec) * 1e3 + (c1.tv_nsec - c0.tv_nsec) / 1e6) / run.L.size());
  };
  for (int s = 0; s < sweeps + 1; s++)
    for (Run& run : runs) {
      std::vector<double> warm;
      const bool w = s == 0;  // first sweep warms up
      sweep(run, [&](const LayerView& v) { cpuKeyScores(b, v, query.data(), scores.data()); }, w ? warm : run.k, nullptr);
      sweep(run, [&](const LayerView& v) { cpuValueSum(b, v, probs.data(), out.data()); }, w ? warm : run.v, nullptr);
      sweep(run, [&](const LayerView& v) { b.attend(v, query.data(), out.data()); }, w ? warm : run.kv, w ? nullptr : &run.kvCpu);
    }
  std::printf("median ms per layer over %d interleaved sweeps; GB/s = bytes of the layer's K and/or V / time\n", sweeps);
  std::printf("%-16s %6s %9s | %8s %6s | %8s %6s | %8s %6s | %8s %8s | %8s %8s\n", "method", "layers", "MiB/layer", "K ms",
              "GB/s", "V ms", "GB/s", "K+V ms", "GB/s", "vs fp16", "vs kivi", "K+V min", "K+V cpu");
  double fp16KV = 0;
  for (Run& run : runs) {
    const double kMs = median(run.k), vMs = median(run.v), kvMs = median(run.kv);
    if (run.m.name == "fp16") fp16KV = kvMs;
    double kiviKV = 0;
    if (run.m.name.rfind("innerq-", 0) == 0)
      for (Run& o : runs)
        if (o.m.name == "kivi-" + run.m.name.substr(7)) kiviKV = median(o.kv);
    char vsKivi[16] = "";
    if (kiviKV > 0) std::snprintf(vsKivi, sizeof vsKivi, "x%.2f", kiviKV / kvMs);
    std::printf("%-16s %6zu %9.2f | %8.3f %6.1f | %8.3f %6.1f | %8.3f %6.1f | x%7.2f %8s | %8.3f %8.3f\n",
                run.m.name.c_str(), run.L.size(), run.layerBytes / 1048576.0, kMs, run.kBytes / kMs / 1e6, vMs,
                run.vBytes / vMs / 1e6, kvMs, (run.kBytes + run.vBytes) / kvMs / 1e6, fp16KV / kvMs, vsKivi,
                minimum(run.kv), median(run.kvCpu));
  }
  for (Run& run : runs)
    if (run.m.name != "fp16")
      std::printf("quantizeRows %-16s K+V of one layer (%d tokens x %d heads x %d): %.0f ms = %.1f M elements/s\n",
                  run.m.name.c_str(), quant, kvH, d, run.quantMs, 2.0 * quant * kvH * d / run.quantMs / 1e3);
  for (Run& run : runs)
    for (auto& l : run.L)
      for (auto p : l.pages) b.release(p);
  for (auto p : {sinkK, sinkV, ringK, ringV}) b.release(p);
  return 0;
}
