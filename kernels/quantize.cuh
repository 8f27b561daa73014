// quantize.cuh - quantize-and-append kernels for every page format, composed from quantizer.cuh's per-group
// parameter functions and per-element code functions, so the codes are bit-identical to the host
// quantizeGroup. One warp quantizes one group: lane l holds elements l, l+32, ... (G/32 of them). The group
// reductions (max |x|, min, max, constant magnitude, L1 errors for hybrid) are warp reductions; the L1 sums
// are exact in double (quantizer.cuh header), so their order does not matter. Codes are packed with ballots:
// ballot b of a block is bit-plane b of its 32 codes, from which every lane assembles one output byte.
#pragma once
#include "device.cuh"
#include "attention.cuh"  // MatrixGeometry

namespace innerq {
namespace IQ_DEV {

struct QuantParams {
  const uint16_t* rows;   // [count][kvHeads][headDim] binary16
  int count, firstQuantized, pageTokens, kvHeads, headDim;
  uint8_t* const* pages;  // device array: pages[i] = page (firstQuantized / pageTokens) + i
  MatrixGeometry m;
  const float* keyNorm;   // [kvHeads][headDim] or nullptr (keys only)
};

__device__ __forceinline__ double warpMaxD(double v) {
IQ_UNROLL
  for (int o = 16; o > 0; o >>= 1) v = maxOrdered(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}
__device__ __forceinline__ double warpMinD(double v) {
IQ_UNROLL
  for (int o = 16; o > 0; o >>= 1) v = minOrdered(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}
__device__ __forceinline__ double warpSumD(double v) {  // exact for the sums involved: order-free
IQ_UNROLL
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

constexpr int kMaxBlocksPerGroup = 4;  // G <= 128

// x[k] = element 32k + lane of the group (k < G/32). Writes the packed codes (groupBytes at `codes`) and
// the scale / zero. All lanes of the warp must call it.
__device__ __forceinline__ void warpQuantizeGroup(const double* x, int blocks, int bits, int mode, uint8_t* codes,
                                                  uint16_t* scale, uint16_t* zero) {
  const int lane = threadIdx.x & 31;
  double maxAbs = 0, lo = x[0], hi = x[0];
  IQ_UNROLL
  for (int k = 0; k < kMaxBlocksPerGroup; k++) {  // fully unrolled + guarded: x[] stays in registers
    if (k >= blocks) break;
    maxAbs = maxOrdered(maxAbs, fabs(x[k]));  // signed zeros as Math.min / Math.max (quantizer.cuh)
    lo = minOrdered(lo, x[k]);
    hi = maxOrdered(hi, x[k]);
  }
  maxAbs = warpMaxD(maxAbs);
  lo = warpMinD(lo);
  hi = warpMaxD(hi);
  bool mine = true;
  IQ_UNROLL
  for (int k = 0; k < kMaxBlocksPerGroup; k++) {
    if (k >= blocks) break;
    const double a = fabs(x[k]);
    if (a != 0 && a != maxAbs) mine = false;
  }
  const bool constantMagnitude = __all_sync(kFullMask, mine);
  const GroupCandidates c = groupCandidates(maxAbs, constantMagnitude, lo, hi, bits);
  const uint16_t symScale = c.symScale, asymZero = c.asymZero, asymScale = c.asymScale;
  const double ss = c.ss, za = c.za, sa = c.sa;
  bool asym = mode == kAsym;
  if (mode == kHybrid) {
    double l1s = 0, l1a = 0;
    IQ_UNROLL
    for (int k = 0; k < kMaxBlocksPerGroup; k++) {
      if (k >= blocks) break;
      l1s += fabs(x[k] - symmetricValue(symmetricCode(x[k], ss, bits), ss, bits));
      l1a += fabs(x[k] - asymmetricValue(asymmetricCode(x[k], sa, za, bits), sa, za));
    }
    l1s = warpSumD(l1s);
    l1a = warpSumD(l1a);
    asym = l1a < l1s;  // ties go to symmetric, as in quantizeGroup
  }
  const int bb = blockBytes(bits);
  IQ_UNROLL
  for (int k = 0; k < kMaxBlocksPerGroup; k++) {
    if (k >= blocks) break;
    const int u = asym ? asymmetricCode(x[k], sa, za, bits) : symmetricCode(x[k], ss, bits);
    uint32_t plane[8];
    IQ_UNROLL
    for (int b = 0; b < 8; b++) plane[b] = b < bits ? __ballot_sync(kFullMask, (u >> b) & 1) : 0u;
    if (lane < bb) {
      uint32_t byte = 0;
      if (bits == 8) {
        IQ_UNROLL
        for (int b = 0; b < 8; b++) byte |= ((plane[b] >> lane) & 1u) << b;           // byte e = u[e]
      } else if (bits == 4) {
        IQ_UNROLL
        for (int b = 0; b < 4; b++)
          byte |= (((plane[b] >> lane) & 1u) << b) | (((plane[b] >> (lane + 16)) & 1u) << (4 + b));  // u[i] | u[i+16] << 4
      } else if (lane < 8) {
        for (int kk = 0; kk < 4; kk++)                                                 // bits 2k..2k+1 = u[8k+i] & 3
          byte |= (((plane[0] >> (8 * kk + lane)) & 1u) << (2 * kk)) | (((plane[1] >> (8 * kk + lane)) & 1u) << (2 * kk + 1));
      } else {
        byte = (plane[2] >> (8 * (lane - 8))) & 0xffu;                                 // 3-bit: bit-2 plane, little endian
      }
      codes[k * bb + lane] = (uint8_t)byte;
    }
  }
  if (lane == 0) {
    *scale = asym ? (uint16_t)(asymScale | 0x8000) : symScale;
    if (zero) *zero = asym ? asymZero : (uint16_t)0;
  }
}

__device__ __forceinline__ double loadElement(const QuantParams& p, int row, int head, int channel) {
  uint16_t h = p.rows[((size_t)row * p.kvHeads + head) * p.headDim + channel];
  if (p.keyNorm) h = normalizeKey(h, p.keyNorm[head * p.headDim + channel]);
  return halfToDouble(h);
}

// kRowGrouped: one warp per (row, head, channel group). Lanes read consecutive channels (coalesced).
static __global__ void __launch_bounds__(128) quantizeRowGroupedKernel(QuantParams p) {
  const int n = p.headDim / p.m.groupSize, blocks = p.m.groupSize / 32;
  const long long gid = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
  const long long total = (long long)p.count * p.kvHeads * n;
  if (gid >= total) return;  // whole warps leave together (total is a count of warps)
  const int row = (int)(gid / ((long long)p.kvHeads * n)), head = (int)(gid / n % p.kvHeads), cg = (int)(gid % n);
  const int lane = threadIdx.x & 31;
  double x[kMaxBlocksPerGroup];
  IQ_UNROLL
  for (int k = 0; k < kMaxBlocksPerGroup; k++) x[k] = k < blocks ? loadElement(p, row, head, cg * p.m.groupSize + 32 * k + lane) : 0.0;
  const int qi = p.firstQuantized + row;
  uint8_t* page = p.pages[qi / p.pageTokens - p.firstQuantized / p.pageTokens];
  const size_t gi = (size_t)(qi % p.pageTokens) * n + cg;
  uint8_t* codes = page + p.m.codesOffset + head * p.m.codesHeadBytes + gi * groupBytes(p.m.bits, p.m.groupSize);
  uint16_t* scale = reinterpret_cast<uint16_t*>(page + p.m.scalesOffset + head * p.m.scalesHeadBytes) + gi;
  uint16_t* zero = hasZeros(p.m.mode) ? reinterpret_cast<uint16_t*>(page + p.m.zerosOffset + head * p.m.scalesHeadBytes) + gi : nullptr;
  warpQuantizeGroup(x, blocks, p.m.bits, p.m.mode, codes, scale, zero);
}

// kColGrouped: one warp per (token group, head, channel); lane l holds tokens l, l+32, ... of the group.
// Loads are strided by a row (uncoalesced), acceptable for a kernel that runs once per G tokens.
static __global__ void __launch_bounds__(128) quantizeColGroupedKernel(QuantParams p) {
  const int G = p.m.groupSize, blocks = G / 32, d = p.headDim;
  const long long gid = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
  const long long total = (long long)(p.count / G) * p.kvHeads * d;
  if (gid >= total) return;
  const int tgi = (int)(gid / ((long long)p.kvHeads * d)), head = (int)(gid / d % p.kvHeads), j = (int)(gid % d);
  const int lane = threadIdx.x & 31;
  double x[kMaxBlocksPerGroup];
  IQ_UNROLL
  for (int k = 0; k < kMaxBlocksPerGroup; k++) x[k] = k < blocks ? loadElement(p, tgi * G + 32 * k + lane, head, j) : 0.0;
  const int qi = p.firstQuantized + tgi * G;
  uint8_t* page = p.pages[qi / p.pageTokens - p.firstQuantized / p.pageTokens];
  const size_t gi = (size_t)((qi % p.pageTokens) / G) * d + j;
  uint8_t* codes = page + p.m.codesOffset + head * p.m.codesHeadBytes + gi * groupBytes(p.m.bits, G);
  uint16_t* scale = reinterpret_cast<uint16_t*>(page + p.m.scalesOffset + head * p.m.scalesHeadBytes) + gi;
  uint16_t* zero = hasZeros(p.m.mode) ? reinterpret_cast<uint16_t*>(page + p.m.zerosOffset + head * p.m.scalesHeadBytes) + gi : nullptr;
  warpQuantizeGroup(x, blocks, p.m.bits, p.m.mode, codes, scale, zero);
}

// kFp16Rows pages: a copy into the per-head [slot][d] layout (keys normalized like the quantized formats).
static __global__ void __launch_bounds__(256) appendFp16RowsKernel(QuantParams p) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  const long long total = (long long)p.count * p.kvHeads * p.headDim;
  if (i >= total) return;
  const int row = (int)(i / ((long long)p.kvHeads * p.headDim)), head = (int)(i / p.headDim % p.kvHeads), j = (int)(i % p.headDim);
  uint16_t h = p.rows[i];
  if (p.keyNorm) h = normalizeKey(h, p.keyNorm[head * p.headDim + j]);
  const int qi = p.firstQuantized + row;
  uint8_t* page = p.pages[qi / p.pageTokens - p.firstQuantized / p.pageTokens];
  reinterpret_cast<uint16_t*>(page + p.m.codesOffset + head * p.m.codesHeadBytes)[(size_t)(qi % p.pageTokens) * p.headDim + j] = h;
}

// kernels/quantize.cu. Returns false for an unsupported format.
bool launchQuantize(const QuantParams& p, cudaStream_t stream);

}  // namespace dev
}  // namespace innerq
