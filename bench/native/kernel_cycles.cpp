// kernel_cycles.cpp - single-thread micro-benchmark of the quantized kernels alone (not a test): cycles per token
// and kv head (4 query heads x d channels, G = 32) of one kernel table's scoresRowI8 (InnerQ keys; symmetric unless
// told otherwise) and wsumColI8 (InnerQ values, hybrid), on one head's slices in 256-token pages called in runs of 16
// pages, as attend() does; of the KIVI-style scoresColI8 / wsumRowI8 (asym, as the kivi presets; page by page);
// and of its softmaxExpU8 (4 rows of one 8192-token chunk's scores, L2-resident; printed in the L2 column).
// Build with test/native/cpu/build.sh, run:
//   build-cpu/kernel_cycles [kernels=2: 0 portable, 1 avx2, 2 best] [rounds=9] [d=128: 128 or 256] [keys=sym: sym,
//                           asym or hybrid]
// (the avx512 key kernels take different paths for d = 256 and for keys with zero points: check those too.)
// A/B mode: bench/native/kernel_ab.sh <candidate kernels_avx512.cpp> builds build-cpu/kernel_cycles_ab, which times
// the built table (A) and the candidate's avx512 table (B) on the same slices, alternating which goes first each
// round, and prints a row for each. On a shared VM whose speed moves by tens of percent from minute to minute,
// only such same-process comparisons separate a kernel change from the machine's drift.
// Working sets: "L1" 512 tokens called over and over (the kernel's issue rate), "L2" 4096 tokens, "L3" 8 copies of
// 16384 tokens (~7 MiB of 3-bit keys at d = 128), "DRAM" 64 copies (~58 MiB). The sets are timed in interleaved rounds and
// medians are reported. Pin it (taskset -c 0) for steadier figures; on a shared VM the DRAM figures move from
// minute to minute.
//
// Core cycles come from the TSC scaled by the core clock, measured first with a chain of dependent scalar adds (one
// per core cycle); on CPUs whose clock moves under load the scale is an estimate, so TSC cycles are printed too.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>
#if defined(__x86_64__)
#include <x86intrin.h>
#endif

#include "../../csrc/cpu/cpu_backend.h"
#include "../../csrc/cpu/cpu_kernels.h"

#if defined(KERNEL_CYCLES_AB)
namespace innerq {
namespace cpu {
// The candidate's avx512Kernels() or avx2Kernels() (KERNEL_CYCLES_AB_AVX2), renamed in its object file by
// kernel_ab.sh.
#if defined(KERNEL_CYCLES_AB_AVX2)
const Kernels& avx2KernelsCandidate();
#else
const Kernels& avx512KernelsCandidate();
#endif
}  // namespace cpu
}  // namespace innerq
#endif

using namespace innerq;
using namespace innerq::cpu;

namespace {

uint64_t ticks() {
#if defined(__x86_64__)
  return __rdtsc();
#else
  return (uint64_t)std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
#endif
}

// Core cycles per tick: 4e8 dependent adds take 4e8 core cycles.
double coreCyclesPerTick() {
#if defined(__x86_64__)
  uint64_t x = 1;
  const long n = 100000000;
  const uint64_t t0 = ticks();
  for (long i = 0; i < n; i++) asm volatile("add %0, %0\n\tadd %0, %0\n\tadd %0, %0\n\tadd %0, %0" : "+r"(x));
  return 4.0 * n / (double)(ticks() - t0);
#else
  return 0;  // ticks are nanoseconds here: no core-cycle estimate
#endif
}

struct Slices {  // `copies` runs of `pages` pages of one head's slices
  std::vector<std::vector<QuantRef>> runs;
  std::vector<void*> owned;
  ~Slices() {
    for (void* p : owned) std::free(p);
  }
};

constexpr int kR = 4, kPage = 256, kG = 32, kRunPages = 16;
int headDim = 128;  // from the command line

void build(Slices& s, const MatrixFormat& f, int tokens, int copies, std::mt19937& rng) {
  const int pages = tokens / kPage;
  const size_t codeBytes = (size_t)kPage * headDim * f.bits / 8, halves = (size_t)kPage * headDim / kG;
  auto alloc = [&](size_t n) {
    void* p = std::aligned_alloc(64, (n + 63) & ~(size_t)63);
    s.owned.push_back(p);
    return p;
  };
  s.runs.assign(copies, {});
  for (auto& run : s.runs) {
    for (int p = 0; p < pages; p++) {
      auto* codes = (uint8_t*)alloc(codeBytes);
      auto* scales = (uint16_t*)alloc(halves * 2);
      auto* zeros = (uint16_t*)alloc(halves * 2);
      for (size_t i = 0; i < codeBytes; i++) codes[i] = (uint8_t)rng();
      for (size_t i = 0; i < halves; i++) {  // small normal binary16 scales; hybrid groups flagged at random
        const bool asym = f.mode == kAsym || (f.mode == kHybrid && (rng() & 1));
        scales[i] = (uint16_t)(0x2c00 | (rng() & 0x3ff) | (asym ? 0x8000 : 0));
        zeros[i] = (uint16_t)(0x2c00 | (rng() & 0x3ff));
      }
      run.push_back(QuantRef{codes, scales, f.mode == kSym ? nullptr : zeros});
    }
    for (int p = 0; p + 1 < pages; p++) run[p].setNext(run[p + 1]);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int table = argc > 1 ? std::atoi(argv[1]) : 2;
  const int rounds = argc > 2 ? std::max(1, std::atoi(argv[2])) : 9;
  headDim = argc > 3 ? std::atoi(argv[3]) : 128;
  const std::string keyModeName = argc > 4 ? argv[4] : "sym";
  const QuantMode keyMode = keyModeName == "asym" ? kAsym : keyModeName == "hybrid" ? kHybrid : kSym;
  if ((headDim != 128 && headDim != 256) || (keyMode == kSym && keyModeName != "sym")) {
    std::fprintf(stderr, "kernel_cycles: d must be 128 or 256 and keys sym, asym or hybrid (got %d, %s)\n", headDim, keyModeName.c_str());
    return 2;
  }
  const CpuFeatures feat = cpuFeatures();
  const Kernels& K = table <= 0 ? portableKernels()
                     : table == 1 || !feat.avx512vnni ? (feat.avx2 && feat.fma && feat.f16c ? avx2Kernels() : portableKernels())
                                                      : avx512Kernels();
#if defined(KERNEL_CYCLES_AB) && defined(KERNEL_CYCLES_AB_AVX2)
  if (&K != &avx2Kernels()) {
    std::fprintf(stderr, "kernel_cycles_ab: the candidate is an avx2 table: run with kernels=1 on a CPU with AVX2, FMA and F16C\n");
    return 2;
  }
  const std::vector<const Kernels*> tables = {&K, &avx2KernelsCandidate()};
#elif defined(KERNEL_CYCLES_AB)
  if (!feat.avx512vnni) {
    std::fprintf(stderr, "kernel_cycles_ab: the candidate is an avx512vnni table and this CPU lacks it\n");
    return 2;
  }
  const std::vector<const Kernels*> tables = {&K, &avx512KernelsCandidate()};
#else
  const std::vector<const Kernels*> tables = {&K};
#endif
  const double scale = coreCyclesPerTick();
  std::printf("kernel_cycles: table %s%s, one thread, kv head of %d query heads x d %d, G %d, pages of %d tokens in runs of %d\n",
              K.name, tables.size() > 1 ? " (A) against the candidate table (B)" : "", kR, headDim, kG, kPage, kRunPages);
  if (scale > 0)
    std::printf("core cycles per TSC tick %.3f (dependent adds); figures: median core cycles per token and kv head [TSC ticks]\n", scale);
  else
    std::printf("no TSC on this architecture: figures are median nanoseconds per token and kv head\n");

  struct Set {
    const char* name;
    int tokens, copies;
  };
  const Set sets[] = {{"L1", 512, 1}, {"L2", 4096, 1}, {"L3", 16384, 8}, {"DRAM", 16384, 64}};
  std::mt19937 rng(1);
  std::vector<int8_t> q8(kR * headDim);
  for (auto& x : q8) x = (int8_t)((int)(rng() % 255) - 127);
  std::vector<float> sigma(kR * headDim / 32, 0.01f), sigmaSum(kR * headDim / 32, 0.1f);
  const I8Set q{q8.data(), (size_t)headDim, sigma.data(), sigmaSum.data(), (size_t)headDim / 32};
  const int maxT = 16384;
  std::vector<uint8_t> pu((size_t)kR * maxT);
  for (auto& x : pu) x = (uint8_t)rng();
  std::vector<float> ps((size_t)kR * maxT / 32, 1e-3f), pss((size_t)kR * maxT / 32, 0.1f);
  const U8Set p{pu.data(), (size_t)maxT, ps.data(), pss.data(), (size_t)maxT / 32};
  std::vector<float> scores((size_t)kR * maxT), out((size_t)kR * headDim);

  // the KIVI-style kernels take float activations (they fold the group scales in and quantize per group)
  std::vector<float> qf((size_t)kR * headDim), pf((size_t)kR * maxT);
  for (auto& x : qf) x = (float)((int)(rng() % 2001) - 1000) / 1000.0f;
  for (auto& x : pf) x = (float)(rng() % 1000) * 1e-6f;

  std::printf("%-26s %16s %16s %16s %16s\n", "kernel", "L1", "L2", "L3", "DRAM");
  for (int kivi = 0; kivi < 2; kivi++)
  for (int values = 0; values < 2; values++)
    for (int bits : {2, 3, 4}) {
      const MatrixFormat f = kivi ? (values ? MatrixFormat{kRowGrouped, bits, kG, kAsym} : MatrixFormat{kColGrouped, bits, kG, kAsym})
                                  : (values ? MatrixFormat{kColGrouped, bits, kG, kHybrid} : MatrixFormat{kRowGrouped, bits, kG, keyMode});
      std::vector<Slices> data(4);
      for (int i = 0; i < 4; i++) build(data[i], f, sets[i].tokens, sets[i].copies, rng);
      // ticks per token and kv head of one pass of table K over set i
      const auto timeSet = [&](const Kernels& K, int i) {
        const int tokens = sets[i].tokens, pages = tokens / kPage;
        // L1/L2 sets repeat the same slices until ~16k tokens have been processed, so every figure is per token
        const int repeats = std::max(1, 16384 / tokens);
        const uint64_t t0 = ticks();
        for (int rep = 0; rep < repeats; rep++)
          for (auto& run : data[i].runs)
            for (int p0 = 0; p0 < pages; p0 += kRunPages) {
              const int count = std::min(kRunPages, pages - p0);
              const QuantRun r{run.data() + p0, count, kPage};
              if (kivi) {  // page by page, as attend() calls them
                for (int pg = p0; pg < p0 + count; pg++) {
                  if (values)
                    K.wsumRowI8(run[pg], f, headDim, 0, kPage, pf.data() + (size_t)pg * kPage, (size_t)maxT, kR, out.data());
                  else
                    K.scoresColI8(run[pg], f, headDim, 0, kPage / kG, qf.data(), kR, scores.data() + (size_t)pg * kPage, (size_t)maxT);
                }
              } else if (values) {
                const U8Set pr{p.q + (size_t)p0 * kPage, p.ldq, p.sigma + (size_t)p0 * kPage / 32, p.sigmaSum + (size_t)p0 * kPage / 32, p.lds};
                K.wsumColI8(r, f, headDim, 0, count * kPage / kG, pr, kR, out.data());
              } else {
                K.scoresRowI8(r, f, headDim, 0, count * kPage, q, kR, scores.data() + (size_t)p0 * kPage, (size_t)maxT);
              }
            }
        return (double)(ticks() - t0) / ((double)tokens * data[i].runs.size() * repeats);
      };
      std::vector<std::vector<std::vector<double>>> t(tables.size(), std::vector<std::vector<double>>(4));  // [table][set]
      for (int round = 0; round < rounds + 1; round++)
        for (int i = 0; i < 4; i++)
          for (size_t k = 0; k < tables.size(); k++) {
            const size_t which = (k + round) % tables.size();  // alternate which table goes first
            const double per = timeSet(*tables[which], i);
            if (round > 0) t[which][i].push_back(per);  // round 0 warms up
          }
      for (size_t k = 0; k < tables.size(); k++) {
        char label[64];
        std::snprintf(label, sizeof label, "%s%s %d-bit %s%s", kivi ? "kivi " : "", values ? "values" : "keys", bits,
                      kivi ? "asym" : values ? "hybrid" : keyModeName.c_str(), tables.size() > 1 ? (k ? " B" : " A") : "");
        std::printf("%-26s", label);
        for (auto& x : t[k]) {
          std::sort(x.begin(), x.end());
          const double med = x[x.size() / 2];
          char cell[32];
          if (scale > 0)
            std::snprintf(cell, sizeof cell, "%.1f [%.1f]", med * scale, med);
          else
            std::snprintf(cell, sizeof cell, "%.2f ns", med);
          std::printf(" %16s", cell);
        }
        std::printf("\n");
      }
    }
  // The softmax numerator with the u8 weights (softmaxExpU8) as attend() runs it per work item: kR rows of one chunk
  // of kChunk scores (16k tokens on 2 threads: 2 chunks per kv head), a 32-token sink and a 96-token recent window
  // in float, the rest quantized (L1/L2-resident, as in a step, where the key kernel has just written the scores).
  // Repeated calls re-exponentiate the 128 window weights that the previous call left there: the same work.
  {
    constexpr int kChunk = 8192, kSink = 32, kRecent = 96, qn = kChunk - kSink - kRecent;
    std::normal_distribution<float> g(0.0f, 1.0f);
    std::vector<float> sc((size_t)kR * kChunk), sgm((size_t)kR * qn / 32), sgs((size_t)kR * qn / 32);
    for (auto& x : sc) x = g(rng);
    std::vector<uint8_t> codes((size_t)kR * qn);
    float z = 0;
    const auto timeSoftmax = [&](const Kernels& K) {
      const int repeats = 8;
      const uint64_t t0 = ticks();
      for (int rep = 0; rep < repeats; rep++)
        for (int h = 0; h < kR; h++) {
          float mx;
          z += K.softmaxExpU8(sc.data() + (size_t)h * kChunk, kChunk, kSink, qn, &mx, codes.data() + (size_t)h * qn,
                              sgm.data() + (size_t)h * qn / 32, sgs.data() + (size_t)h * qn / 32);
        }
      return (double)(ticks() - t0) / ((double)kChunk * repeats);
    };
    std::vector<std::vector<double>> t(tables.size());
    for (int round = 0; round < rounds * 4 + 1; round++)
      for (size_t k = 0; k < tables.size(); k++) {
        const size_t which = (k + round) % tables.size();
        const double per = timeSoftmax(*tables[which]);
        if (round > 0) t[which].push_back(per);
      }
    for (size_t k = 0; k < tables.size(); k++) {
      std::sort(t[k].begin(), t[k].end());
      const double med = t[k][t[k].size() / 2];
      char label[64], cell[32];
      std::snprintf(label, sizeof label, "softmax+u8 (%d)%s", kChunk, tables.size() > 1 ? (k ? " B" : " A") : "");
      if (scale > 0)
        std::snprintf(cell, sizeof cell, "%.1f [%.1f]", med * scale, med);
      else
        std::snprintf(cell, sizeof cell, "%.2f ns", med);
      std::printf("%-26s %16s %16s\n", label, "", cell);
    }
    if (z != z) std::printf("(non-finite softmax)\n");
  }
  if (out[0] != out[0] || scores[0] != scores[0]) std::printf("(non-finite output)\n");  // keeps the results live
  return 0;
}
