// quantize.cu - launch configuration of the quantize-and-append kernels. They take bits, G and mode as runtime
// values: they run once per token (or per G tokens), so specialising them would only lengthen the build.
#include "quantize.cuh"

namespace innerq {
namespace IQ_DEV {

bool launchQuantize(const QuantParams& p, cudaStream_t stream) {
  if (p.count <= 0) return true;
  IQ_EXPECT_DEVICE(p.rows, "rows");
  IQ_EXPECT_DEVICE(p.pages, "pages");
  const MatrixGeometry& m = p.m;
  if (m.orientation == kFp16Rows) {
    const long long total = (long long)p.count * p.kvHeads * p.headDim;
    auto kernel = appendFp16RowsKernel;
    IQ_LAUNCH(kernel, dim3((unsigned)((total + 255) / 256)), dim3(256), 0, stream, p);
    return true;
  }
  const bool bitsOk = m.bits == 2 || m.bits == 3 || m.bits == 4 || m.bits == 8;
  const bool groupOk = m.groupSize == 32 || m.groupSize == 64 || m.groupSize == 128;
  if (!bitsOk || !groupOk || p.headDim % m.groupSize != 0) return false;
  long long warps;
  if (m.orientation == kRowGrouped) {
    warps = (long long)p.count * p.kvHeads * (p.headDim / m.groupSize);
    auto kernel = quantizeRowGroupedKernel;
    IQ_LAUNCH(kernel, dim3((unsigned)((warps + 3) / 4)), dim3(128), 0, stream, p);
  } else {
    if (p.count % m.groupSize != 0 || p.firstQuantized % m.groupSize != 0) return false;
    warps = (long long)(p.count / m.groupSize) * p.kvHeads * p.headDim;
    auto kernel = quantizeColGroupedKernel;
    IQ_LAUNCH(kernel, dim3((unsigned)((warps + 3) / 4)), dim3(128), 0, stream, p);
  }
  return true;
}

}  // namespace dev
}  // namespace innerq
