// cpu_backend.h - the CPU backend: host memory, quantization into pages, and decode attention on the
// compressed cache with fused dequantize+GEMV kernels (AVX-512 VNNI for the InnerQ integer paths and AVX2/FMA/F16C
// for the rest when the CPU has them, else portable C++), spread over a small persistent thread pool.
//
// Numerics (see cpu_kernels.h and the report in test/native/cpu/README.md):
//  - fp16 rows and KIVI-style formats (kColGrouped keys, kRowGrouped values) are float paths: they match an fp64
//    evaluation on the dequantized cache to ~1e-6 relative.
//  - InnerQ formats (kRowGrouped keys, kColGrouped values) use the int8-activation integer path: the (folded,
//    scaled) query is quantized once per step to int8 per 32-element slice with sigma = max|x|/127, the
//    (non-negative) probability vector to UNSIGNED 8 bits per 32-token slice with sigma = max/255. Per group of codes, the error against the exact dot product on the dequantized cache is
//        |err| <= Σ_j |x^_j| * sigma_slice(j) / 2      (+ float rounding, ~1e-6 relative to Σ_j |x^_j q_j|)
//    because sigma*qi_j differs from x_j by at most sigma/2 and the integer dot product is exact.
#pragma once
#include <memory>
#include "../core/backend.h"

namespace innerq {

struct CpuFeatures {
  bool avx2, fma, f16c;
  // AVX-512 F+BW+VL+DQ+VNNI+BITALG, with the OS saving the zmm/opmask state (what kernels_avx512.cpp needs).
  bool avx512vnni;
  int threads;  // hardware threads (std::thread::hardware_concurrency, at least 1)
};
CpuFeatures cpuFeatures();

// Which kernel table a CPU backend runs. kBest: AVX-512 VNNI if present, else AVX2, else portable. kAvx2: never
// the AVX-512 table (the tests run every table the machine has). kPortable: plain C++ on any CPU.
enum class CpuKernels : int { kPortable = 0, kAvx2 = 1, kBest = 2 };

// threads: worker count including the caller (0 = all hardware threads). The returned object is a CpuBackend.
// A table the CPU lacks falls back to the next one down (cpuBackendKernels names the one chosen).
std::unique_ptr<Backend> makeCpuBackend(int threads, CpuKernels kernels);
inline std::unique_ptr<Backend> makeCpuBackend(int threads, bool allowSimd) {
  return makeCpuBackend(threads, allowSimd ? CpuKernels::kBest : CpuKernels::kPortable);
}

// Separate GEMV entry points (benchmarks, and the Node layer's per-GEMV timing). `backend` must come from
// makeCpuBackend (else Status::Unsupported). Calls on one backend must not overlap (attend included).
//
// cpuKeyScores: scores[h*view.tokens + a] = (q_h . K_a) / sqrt(d) for every query head h and token a, with the
//   key norm folded into the query for the quantized segment (exactly the logits attend() feeds its softmax).
//   query: [qHeads][headDim]; scores: [qHeads][tokens] host floats.
// cpuValueSum: out[h][:] = Σ_a probs[h*view.tokens + a] * V_a (probs need not be normalized but must be
//   non-negative; InnerQ values quantize each 32-token slice of probs to u8 exactly as attend does).
// cpuBackendKernels: "avx512vnni", "avx2" or "portable" (which kernel table the backend runs).
Status cpuKeyScores(Backend& backend, const LayerView& view, const float* query, float* scores);
Status cpuValueSum(Backend& backend, const LayerView& view, const float* probs, float* out);
const char* cpuBackendKernels(const Backend& backend);
int cpuBackendThreads(const Backend& backend);

}  // namespace innerq
