// attention_scores.cu - instantiation point of the score kernels (one per supported key format).
#include "attention.cuh"
#include "dispatch.cuh"

namespace innerq {
namespace IQ_DEV {

bool launchScores(const AttnParams& p, int source, int listCount, cudaStream_t stream) {
  if (listCount == 0) return true;
  const dim3 grid(listCount, p.kvHeads, p.groupHeads / p.headsPerBlock);
  const int hb = p.headsPerBlock, d = p.headDim;
  IQ_EXPECT_DEVICE(p.chunks, "chunks");
  IQ_EXPECT_DEVICE(p.scores, "scores");
  if (source == kWindowSource || p.key.orientation == kFp16Rows) {
    auto kernel = scoresFp16Kernel;
    IQ_LAUNCH(kernel, grid, dim3(kScoreThreads), (size_t)hb * d * 4, stream, p, source);
    return true;
  }
  if (p.key.orientation == kRowGrouped)
    return dispatchBitsGroup(p.key.bits, p.key.groupSize, [&](auto b, auto g) {
      constexpr int B = decltype(b)::value, G = decltype(g)::value;
      auto kernel = scoresRowGroupedKernel<B, G>;
      const size_t smem = ((size_t)hb * d + hb * (d / G) + (size_t)hb * kScoreThreads * RowGroupedShape<B, G>::kUnitGroups) * 4;
      IQ_LAUNCH(kernel, grid, dim3(kScoreThreads), smem, stream, p);
    });
  return dispatchBitsGroup(p.key.bits, p.key.groupSize, [&](auto b, auto g) {
    constexpr int B = decltype(b)::value, G = decltype(g)::value;
    auto kernel = scoresColGroupedKernel<B, G>;
    IQ_LAUNCH(kernel, grid, dim3(kScoreThreads), (size_t)hb * d * 4, stream, p);
  });
}

}  // namespace dev
}  // namespace innerq
