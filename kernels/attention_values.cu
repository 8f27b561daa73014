// attention_values.cu - instantiation point of the PV kernels (one per supported value format) and the merge.
#include "attention.cuh"
#include "dispatch.cuh"

namespace innerq {
namespace IQ_DEV {

bool launchPv(const AttnParams& p, int source, int listCount, cudaStream_t stream) {
  if (listCount == 0) return true;
  const dim3 grid(listCount, p.kvHeads, p.groupHeads / p.headsPerBlock);
  const int hb = p.headsPerBlock, d = p.headDim;
  IQ_EXPECT_DEVICE(p.partialO, "partialO");
  if (source == kWindowSource || p.value.orientation == kFp16Rows) {
    const int lanes = kPvThreads / (d / 8);
    const size_t smem = ((size_t)hb * kChunkTokens + (size_t)lanes * d + 2 * kMaxHeadsPerBlock) * 4;
    auto kernel = pvFp16Kernel;
    IQ_LAUNCH(kernel, grid, dim3(kPvThreads), smem, stream, p, source);
    return true;
  }
  if (p.value.orientation == kColGrouped)
    return dispatchBitsGroup(p.value.bits, p.value.groupSize, [&](auto b, auto g) {
      constexpr int B = decltype(b)::value, G = decltype(g)::value;
      using S = PvColShape<B, G>;
      const int units = d / S::Row::kUnitGroups, threads = units > 128 ? units : 128, lanes = threads / units;
      const size_t smem = ((size_t)hb * S::kPcap + (size_t)hb * S::kMaxGroups + (size_t)lanes * d + 2 * kMaxHeadsPerBlock) * 4;
      auto kernel = pvColGroupedKernel<B, G>;
      IQ_LAUNCH(kernel, grid, dim3(threads), smem, stream, p);
    });
  return dispatchBitsGroup(p.value.bits, p.value.groupSize, [&](auto b, auto g) {
    constexpr int B = decltype(b)::value, G = decltype(g)::value;
    const int threads = d > 128 ? d : 128, lanes = threads / d;
    const size_t smem = ((size_t)hb * kChunkTokens + (size_t)lanes * d + 2 * kMaxHeadsPerBlock) * 4;
    auto kernel = pvRowGroupedKernel<B, G>;
    IQ_LAUNCH(kernel, grid, dim3(threads), smem, stream, p);
  });
}

void launchMerge(const float* partialO, const float* partialM, const float* partialL, int chunkCount, int qHeads,
                 int headDim, float* out, cudaStream_t stream) {
  auto kernel = mergeKernel;
  IQ_EXPECT_DEVICE(out, "out");
  // grid.y: 32 channels per block (headDim is a power of two >= 32, checked by the backend)
  IQ_LAUNCH(kernel, dim3(qHeads, headDim / 32), dim3(32 * kMergeWarps), kMergeSharedBytes, stream, partialO, partialM, partialL, chunkCount, qHeads, headDim, out);
}

}  // namespace dev
}  // namespace innerq
