// attention.cuh - decode attention over a paged, partly quantized KV cache (flash-decoding structure).
//
// The token range of a layer is cut on the host into chunks of at most kChunkTokens tokens, each with ONE
// storage kind per matrix (fp16 window rows, or one page). Then, per step:
//   1. scores kernels (one launch per key storage kind) write s[h][t] = q_h . K_t / sqrt(d) for every token;
//   2. PV kernels (one launch per value storage kind), one block per (chunk, kv head, <=8 query heads):
//      softmax over the chunk (max m, p = exp(s - m), l = sum p), then o = sum_t p_t V_t -> partial (o, m, l);
//   3. the merge kernel combines the partials: o = sum_c e^(m_c - M) o_c / sum_c e^(m_c - M) l_c.
// The fp16 sink and recent windows are just chunks of another storage kind, so they are segments of the same
// softmax. Every block serves all query heads of a GQA group from one read of its kv head's data.
// Keys in pages are stored as K/f, so the quantized-key kernels read the folded query q ⊙ f / sqrt(d) and the
// fp16 window kernels the plain q / sqrt(d) (both prepared on the host once per step).
// All reductions have a fixed order, so results do not depend on thread scheduling (the sim checks this).
#pragma once
#include "device.cuh"

namespace innerq {
namespace IQ_DEV {

// Geometry of one matrix inside a page (format.cuh), flattened for kernels.
struct MatrixGeometry {
  int orientation, bits, groupSize, mode;
  size_t codesOffset, scalesOffset, zerosOffset, codesHeadBytes, scalesHeadBytes;
};

enum SourceKind : int { kWindowSource = 0, kPageSource = 1 };

struct Chunk {
  int token;   // absolute index of the first token
  int count;   // 1..kChunkTokens
  // Window source: base = address of the chunk's first row (kv head 0), slot unused.
  // Page source: base = the page, slot = page slot of the first token.
  const uint8_t* keyBase;
  const uint8_t* valueBase;
  int keySlot, valueSlot;
  int keyKind, valueKind;  // SourceKind
};

struct AttnParams {
  const Chunk* chunks;
  const int* list;        // the chunk indices this launch serves: block x serves chunks[list[x]]
  int kvHeads, headDim;
  int groupHeads;         // r = qHeads / kvHeads
  int headsPerBlock;      // min(r, 8); grid.z = r / headsPerBlock
  int windowStride;       // binary16 elements between consecutive window rows (kvHeads * headDim)
  MatrixGeometry key, value;
  const float* query;        // [qHeads][d], q / sqrt(d)          (fp16 windows)
  const float* queryFolded;  // [qHeads][d], q ⊙ f / sqrt(d)      (pages)
  float* scores;             // [qHeads][scoreStride], by absolute token
  int scoreStride;
  float* partialO;           // [chunkCount][qHeads][d]
  float* partialM;           // [chunkCount][qHeads]
  float* partialL;
  int qHeads;
};

// ------------------------------------------------------------------ scores: fp16 rows (windows, fp16 pages)
// A lane group of d/8 lanes owns one token row: each lane loads 16 bytes (8 channels) with one 128-bit load,
// consecutive lanes consecutive 16-byte pieces of the row (coalesced), dots them with every query head of the
// group, and the group reduces by shuffles of width d/8 (fixed tree: order-free results).
// Non-template kernels are static: several .cu files include this header, and each launches its own copy.
static __global__ void __launch_bounds__(128) scoresFp16Kernel(AttnParams p, int source) {
  const Chunk c = p.chunks[p.list[blockIdx.x]];
  const int kvh = blockIdx.y, hb = p.headsPerBlock, d = p.headDim;
  const int h0 = kvh * p.groupHeads + blockIdx.z * hb;
  IQ_DYN_SHARED(float, q);  // [hb][d]
  const float* qsrc = source == kPageSource ? p.queryFolded : p.query;
  for (int i = threadIdx.x; i < hb * d; i += blockDim.x) q[i] = qsrc[(size_t)h0 * d + i];
  __syncthreads();
  const uint16_t* base;
  size_t rowStride;
  if (source == kPageSource) {
    base = reinterpret_cast<const uint16_t*>(c.keyBase + p.key.codesOffset + kvh * p.key.codesHeadBytes) + (size_t)c.keySlot * d;
    rowStride = d;
  } else {
    base = reinterpret_cast<const uint16_t*>(c.keyBase) + (size_t)kvh * d;
    rowStride = p.windowStride;
  }
  const int lanesPerToken = d / 8, sub = threadIdx.x % lanesPerToken, tk = threadIdx.x / lanesPerToken;
  const int tokensPerPass = blockDim.x / lanesPerToken;
  // Unrolled so that several passes' row loads are in flight per thread: a pass is one 16-byte load followed by
  // a dependent dot and shuffle tree, and one load at a time per thread leaves HBM latency-bound.
IQ_UNROLL4
  for (int t0 = 0; t0 < c.count; t0 += tokensPerPass) {  // uniform bound: every lane reaches the shuffles
    const int t = t0 + tk;
    float acc[kMaxHeadsPerBlock];
IQ_UNROLL
    for (int h = 0; h < kMaxHeadsPerBlock; h++) acc[h] = 0.f;
    if (t < c.count) {
      const uint4 raw = ldg128(base + (size_t)t * rowStride + sub * 8);
      float x[8];
      const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
IQ_UNROLL
      for (int i = 0; i < 4; i++) {
        x[2 * i] = h2f((uint16_t)(w[i] & 0xffff));
        x[2 * i + 1] = h2f((uint16_t)(w[i] >> 16));
      }
IQ_UNROLL
      for (int h = 0; h < kMaxHeadsPerBlock; h++)
        if (h < hb) {
          const float* qh = q + h * d + sub * 8;
IQ_UNROLL
          for (int i = 0; i < 8; i++) acc[h] = fmaf(x[i], qh[i], acc[h]);
        }
    }
IQ_UNROLL
    for (int h = 0; h < kMaxHeadsPerBlock; h++)
      if (h < hb)
        for (int o = lanesPerToken / 2; o > 0; o >>= 1) acc[h] += __shfl_xor_sync(kFullMask, acc[h], o, lanesPerToken);
    if (t < c.count && sub == 0)
IQ_UNROLL
      for (int h = 0; h < kMaxHeadsPerBlock; h++)
        if (h < hb) p.scores[(size_t)(h0 + h) * p.scoreStride + c.token + t] = acc[h];
  }
}

// ------------------------------------------------------------------ scores: InnerQ keys (kRowGrouped pages)
// Groups of G channels of one token, stored [slot][n = d/G][groupBytes] per head: the codes of a head are one
// flat array of groups. A thread owns a UNIT of U whole groups, U * groupBytes = lcm(groupBytes, 16) bytes, so
// that it reads its codes with 128-bit loads only (e.g. 2-bit G32: 8-byte groups, U = 2; 3-bit G32: 12-byte
// groups, 48-byte units, U = 4); consecutive threads own consecutive units (coalesced). Per group it unpacks
// the codes once, forms the integer-code dot product sum_e (u_e - c) q'_e for every query head (c = the
// symmetric offset, or 0 for asymmetric groups) and applies the scale once: s * dot, plus z * Q_g for an
// asymmetric group, Q_g = sum of q' over the group's channels (computed once per block). Per-group partial
// scores go to shared memory and are summed per token in channel order (deterministic).
template <int BITS, int G>
struct RowGroupedShape {
  static_assert(G == 32 || G == 64 || G == 128, "group sizes 32, 64, 128 only");
  static constexpr int kGroupBytes = (G / 32) * Packing<BITS>::kBlockBytes;
  static constexpr int kUnitBytes = kGroupBytes % 16 == 0 ? kGroupBytes : (kGroupBytes == 8 ? 16 : 48);  // lcm(., 16)
  static constexpr int kUnitGroups = kUnitBytes / kGroupBytes;
  static constexpr int kUnitVectors = kUnitBytes / 16;
  static_assert(kUnitBytes % kGroupBytes == 0 && kUnitBytes % 16 == 0, "unit must be whole groups and 16-byte pieces");
};

constexpr int kScoreThreads = 128;

template <int BITS, int G>
__global__ void __launch_bounds__(kScoreThreads) scoresRowGroupedKernel(AttnParams p) {
  using S = RowGroupedShape<BITS, G>;
  const Chunk c = p.chunks[p.list[blockIdx.x]];
  const int kvh = blockIdx.y, hb = p.headsPerBlock, d = p.headDim, n = d / G;
  const int h0 = kvh * p.groupHeads + blockIdx.z * hb;
  IQ_DYN_SHARED(float, smem);
  float* q = smem;                          // [hb][d]
  float* qsum = q + hb * d;                 // [hb][n]
  float* part = qsum + hb * n;              // [hb][kScoreThreads * U]
  for (int i = threadIdx.x; i < hb * d; i += blockDim.x) q[i] = p.queryFolded[(size_t)h0 * d + i];
  __syncthreads();
  for (int i = threadIdx.x; i < hb * n; i += blockDim.x) {
    float s = 0.f;
    for (int j = 0; j < G; j++) s += q[(i / n) * d + (i % n) * G + j];
    qsum[i] = s;
  }
  __syncthreads();
  const uint8_t* codes = c.keyBase + p.key.codesOffset + kvh * p.key.codesHeadBytes;
  const uint16_t* scales = reinterpret_cast<const uint16_t*>(c.keyBase + p.key.scalesOffset + kvh * p.key.scalesHeadBytes);
  const uint16_t* zeros = hasZeros(p.key.mode)
      ? reinterpret_cast<const uint16_t*>(c.keyBase + p.key.zerosOffset + kvh * p.key.scalesHeadBytes) : nullptr;
  const int g0 = c.keySlot * n, g1 = (c.keySlot + c.count) * n;  // the chunk's groups
  constexpr int kTileGroups = kScoreThreads * S::kUnitGroups;     // a multiple of n (n <= 8): tokens never straddle tiles
  const int tileTokens = kTileGroups / n;
  const float center = (float)symOffset(BITS);
  for (int ts = (g0 / kTileGroups) * kTileGroups; ts < g1; ts += kTileGroups) {
    const int unit = ts / S::kUnitGroups + threadIdx.x;
    const int gb = unit * S::kUnitGroups;
    if (gb + S::kUnitGroups > g0 && gb < g1) {
      uint4 v[S::kUnitVectors];
IQ_UNROLL
      for (int k = 0; k < S::kUnitVectors; k++) v[k] = ldg128(codes + (size_t)unit * S::kUnitBytes + 16 * k);
IQ_UNROLL
      for (int ug = 0; ug < S::kUnitGroups; ug++) {
        const int gi = gb + ug;
        if (gi < g0 || gi >= g1) continue;
        const int ch = gi % n;
        const uint16_t sb = __ldg(scales + gi);
        const bool asym = scaleIsAsym(sb);
        const float s = h2f((uint16_t)(sb & 0x7fff));
        float acc[kMaxHeadsPerBlock];
IQ_UNROLL
        for (int h = 0; h < kMaxHeadsPerBlock; h++) acc[h] = 0.f;
IQ_UNROLL
        for (int blk = 0; blk < G / 32; blk++) {
          float u[32];
          unpackBlock<BITS>(v, (ug * S::kGroupBytes + blk * Packing<BITS>::kBlockBytes) / 4, asym ? 0.f : center, u);
IQ_UNROLL
          for (int h = 0; h < kMaxHeadsPerBlock; h++)
            if (h < hb) {
              const float* qh = q + h * d + ch * G + blk * 32;
IQ_UNROLL
              for (int e = 0; e < 32; e++) acc[h] = fmaf(u[e], qh[e], acc[h]);
            }
        }
        const float z = asym && zeros ? h2f(__ldg(zeros + gi)) : 0.f;
IQ_UNROLL
        for (int h = 0; h < kMaxHeadsPerBlock; h++)
          if (h < hb) part[h * kTileGroups + (gi - ts)] = asym ? fmaf(s, acc[h], z * qsum[h * n + ch]) : s * acc[h];
      }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < hb * tileTokens; i += blockDim.x) {
      const int h = i / tileTokens, tt = i % tileTokens, slot = ts / n + tt;
      if (slot < c.keySlot || slot >= c.keySlot + c.count) continue;
      float s = 0.f;
      for (int ch = 0; ch < n; ch++) s += part[h * kTileGroups + tt * n + ch];
      p.scores[(size_t)(h0 + h) * p.scoreStride + c.token + (slot - c.keySlot)] = s;
    }
    __syncthreads();
  }
}

// ------------------------------------------------------------------ scores: KIVI keys (kColGrouped pages)
// Groups run along tokens, so a token's key is spread over d groups. A thread owns one token and walks the
// channels; the 32 lanes of a warp own 32 consecutive tokens = one packed block per channel, so each step reads
// one block (broadcast) and one scale per warp. Dequantize-then-dot, as the outer layout forces.
template <int BITS, int G>
__global__ void __launch_bounds__(kScoreThreads) scoresColGroupedKernel(AttnParams p) {
  static_assert(G == 32 || G == 64 || G == 128, "group sizes 32, 64, 128 only");
  constexpr int kGroupBytes = (G / 32) * Packing<BITS>::kBlockBytes;
  const Chunk c = p.chunks[p.list[blockIdx.x]];
  const int kvh = blockIdx.y, hb = p.headsPerBlock, d = p.headDim;
  const int h0 = kvh * p.groupHeads + blockIdx.z * hb;
  IQ_DYN_SHARED(float, q);  // [hb][d]
  for (int i = threadIdx.x; i < hb * d; i += blockDim.x) q[i] = p.queryFolded[(size_t)h0 * d + i];
  __syncthreads();
  const uint8_t* codes = c.keyBase + p.key.codesOffset + kvh * p.key.codesHeadBytes;
  const uint16_t* scales = reinterpret_cast<const uint16_t*>(c.keyBase + p.key.scalesOffset + kvh * p.key.scalesHeadBytes);
  const uint16_t* zeros = hasZeros(p.key.mode)
      ? reinterpret_cast<const uint16_t*>(c.keyBase + p.key.zerosOffset + kvh * p.key.scalesHeadBytes) : nullptr;
  const int first = c.keySlot & ~31;  // warp-aligned so a warp's tokens share one block
  const float center = (float)symOffset(BITS);
  for (int slot = first + threadIdx.x; slot < c.keySlot + c.count; slot += blockDim.x) {
    if (slot < c.keySlot) continue;
    const int tg = slot / G, e = slot % G;
    float acc[kMaxHeadsPerBlock];
IQ_UNROLL
    for (int h = 0; h < kMaxHeadsPerBlock; h++) acc[h] = 0.f;
IQ_UNROLL4  // several channels' loads in flight per thread (see scoresFp16Kernel)
    for (int j = 0; j < d; j++) {
      const size_t gi = (size_t)tg * d + j;
      const int u = codeAt<BITS>(codes + gi * kGroupBytes + (e / 32) * Packing<BITS>::kBlockBytes, e % 32);
      const uint16_t sb = __ldg(scales + gi);
      const float s = h2f((uint16_t)(sb & 0x7fff));
      const float x = scaleIsAsym(sb) ? fmaf(s, (float)u, zeros ? h2f(__ldg(zeros + gi)) : 0.f) : s * ((float)u - center);
IQ_UNROLL
      for (int h = 0; h < kMaxHeadsPerBlock; h++)
        if (h < hb) acc[h] = fmaf(x, q[h * d + j], acc[h]);
    }
IQ_UNROLL
    for (int h = 0; h < kMaxHeadsPerBlock; h++)
      if (h < hb) p.scores[(size_t)(h0 + h) * p.scoreStride + c.token + (slot - c.keySlot)] = acc[h];
  }
}

// ------------------------------------------------------------------ softmax of one chunk
// Loads the chunk's scores into pbuf[h][k] (k = lead + t: `lead` empty slots in front so token-grouped
// values can address whole groups), replaces them by p = exp(s - m), padding by 0, and records m and
// l = sum p. Warp w handles heads w, w + warps, ...: lane-strided partial results, then a fixed shuffle tree.
__device__ __forceinline__ void chunkSoftmax(const AttnParams& p, const Chunk& c, int h0, int lead, int len, int pcap,
                                             float* pbuf, float* mOut, float* lOut, int chunkIndex) {
  const int hb = p.headsPerBlock;
  for (int i = threadIdx.x; i < hb * len; i += blockDim.x) {
    const int h = i / len, k = i % len, t = k - lead;
    pbuf[h * pcap + k] = (t >= 0 && t < c.count) ? p.scores[(size_t)(h0 + h) * p.scoreStride + c.token + t] : -INFINITY;
  }
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  for (int h = warp; h < hb; h += warps) {
    float m = -INFINITY;
    for (int k = lane; k < len; k += 32) m = fmaxf(m, pbuf[h * pcap + k]);
    m = warpMax(m);  // finite: the chunk holds at least one token
    float l = 0.f;
    for (int k = lane; k < len; k += 32) {
      const int t = k - lead;
      const float e = (t >= 0 && t < c.count) ? expf(pbuf[h * pcap + k] - m) : 0.f;
      pbuf[h * pcap + k] = e;
      l += e;
    }
    l = warpSum(l);
    if (lane == 0) {
      mOut[h] = m;
      lOut[h] = l;
      p.partialM[(size_t)chunkIndex * p.qHeads + h0 + h] = m;
      p.partialL[(size_t)chunkIndex * p.qHeads + h0 + h] = l;
    }
  }
  __syncthreads();
}

// Sum `lanes` partial vectors red[lanes][d] in lane order and store the chunk's partial output of head h.
__device__ __forceinline__ void storePartial(const AttnParams& p, const float* red, int lanes, int chunkIndex, int head) {
  const int d = p.headDim;
  for (int j = threadIdx.x; j < d; j += blockDim.x) {
    float s = 0.f;
    for (int l = 0; l < lanes; l++) s += red[l * d + j];
    p.partialO[((size_t)chunkIndex * p.qHeads + head) * d + j] = s;
  }
}

// ------------------------------------------------------------------ PV: fp16 rows (windows, fp16 pages)
// d/8 threads cover a row with 128-bit loads (8 channels each); 128/(d/8) token lanes take every TL-th token.
constexpr int kPvThreads = 128;
static __global__ void __launch_bounds__(kPvThreads) pvFp16Kernel(AttnParams p, int source) {
  const int ci = p.list[blockIdx.x];
  const Chunk c = p.chunks[ci];
  const int kvh = blockIdx.y, hb = p.headsPerBlock, d = p.headDim;
  const int h0 = kvh * p.groupHeads + blockIdx.z * hb;
  const int cu = d / 8, tl = blockDim.x / cu;
  IQ_DYN_SHARED(float, smem);
  float* pbuf = smem;                                  // [hb][kChunkTokens]
  float* red = pbuf + hb * kChunkTokens;               // [tl][d]
  float* ml = red + tl * d;                            // m[hb], l[hb]
  chunkSoftmax(p, c, h0, 0, c.count, kChunkTokens, pbuf, ml, ml + kMaxHeadsPerBlock, ci);
  const uint16_t* base;
  size_t rowStride;
  if (source == kPageSource) {
    base = reinterpret_cast<const uint16_t*>(c.valueBase + p.value.codesOffset + kvh * p.value.codesHeadBytes) + (size_t)c.valueSlot * d;
    rowStride = d;
  } else {
    base = reinterpret_cast<const uint16_t*>(c.valueBase) + (size_t)kvh * d;
    rowStride = p.windowStride;
  }
  const int unit = threadIdx.x % cu, lane = threadIdx.x / cu;
  float acc[kMaxHeadsPerBlock][8];
IQ_UNROLL
  for (int h = 0; h < kMaxHeadsPerBlock; h++)
IQ_UNROLL
    for (int i = 0; i < 8; i++) acc[h][i] = 0.f;
IQ_UNROLL4  // several rows' loads in flight per thread (see scoresFp16Kernel)
  for (int t = lane; t < c.count; t += tl) {
    const uint4 raw = ldg128(base + (size_t)t * rowStride + unit * 8);
    const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
    float x[8];
IQ_UNROLL
    for (int i = 0; i < 4; i++) {
      x[2 * i] = h2f((uint16_t)(w[i] & 0xffff));
      x[2 * i + 1] = h2f((uint16_t)(w[i] >> 16));
    }
IQ_UNROLL
    for (int h = 0; h < kMaxHeadsPerBlock; h++)
      if (h < hb) {
        const float pt = pbuf[h * kChunkTokens + t];
IQ_UNROLL
        for (int i = 0; i < 8; i++) acc[h][i] = fmaf(pt, x[i], acc[h][i]);
      }
  }
IQ_UNROLL
  for (int h = 0; h < kMaxHeadsPerBlock; h++)
    if (h < hb) {
IQ_UNROLL
      for (int i = 0; i < 8; i++) red[lane * d + unit * 8 + i] = acc[h][i];
      __syncthreads();
      storePartial(p, red, tl, ci, h0 + h);
      __syncthreads();
    }
}

// ------------------------------------------------------------------ PV: InnerQ values (kColGrouped pages)
// Groups of G tokens of one channel, stored [token group][d][groupBytes] per head. A thread owns a unit of U
// groups = U consecutive channels of one token group (128-bit loads, consecutive threads consecutive units),
// forms sum_t (u_t - c) p_t for every query head and applies the scale once per group, plus z * P_g for an
// asymmetric group (P_g = sum of p over the group's tokens, computed once per block). Padding tokens of a
// partially covered group have p = 0.
template <int BITS, int G>
struct PvColShape {
  using Row = RowGroupedShape<BITS, G>;  // same group/unit geometry, along tokens instead of channels
  static constexpr int kMaxGroups = (kChunkTokens + 2 * G - 2) / G + 1;
  static constexpr int kPcap = kMaxGroups * G;
};

template <int BITS, int G>
__global__ void __launch_bounds__(256, 1) pvColGroupedKernel(AttnParams p) {
  using S = typename PvColShape<BITS, G>::Row;
  constexpr int kPcap = PvColShape<BITS, G>::kPcap;
  const int ci = p.list[blockIdx.x];
  const Chunk c = p.chunks[ci];
  const int kvh = blockIdx.y, hb = p.headsPerBlock, d = p.headDim;
  const int h0 = kvh * p.groupHeads + blockIdx.z * hb;
  const int units = d / S::kUnitGroups, lanes = blockDim.x / units;
  const int firstGroup = c.valueSlot / G, lastGroup = (c.valueSlot + c.count - 1) / G;
  const int groups = lastGroup - firstGroup + 1, lead = c.valueSlot - firstGroup * G, len = groups * G;
  IQ_DYN_SHARED(float, smem);
  float* pbuf = smem;                          // [hb][kPcap]
  float* psum = pbuf + hb * kPcap;             // [hb][kMaxGroups]
  float* red = psum + hb * PvColShape<BITS, G>::kMaxGroups;  // [lanes][d]
  float* ml = red + lanes * d;
  chunkSoftmax(p, c, h0, lead, len, kPcap, pbuf, ml, ml + kMaxHeadsPerBlock, ci);
  for (int i = threadIdx.x; i < hb * groups; i += blockDim.x) {
    const int h = i / groups, g = i % groups;
    float s = 0.f;
    for (int e = 0; e < G; e++) s += pbuf[h * kPcap + g * G + e];
    psum[h * PvColShape<BITS, G>::kMaxGroups + g] = s;
  }
  __syncthreads();
  const uint8_t* codes = c.valueBase + p.value.codesOffset + kvh * p.value.codesHeadBytes;
  const uint16_t* scales = reinterpret_cast<const uint16_t*>(c.valueBase + p.value.scalesOffset + kvh * p.value.scalesHeadBytes);
  const uint16_t* zeros = hasZeros(p.value.mode)
      ? reinterpret_cast<const uint16_t*>(c.valueBase + p.value.zerosOffset + kvh * p.value.scalesHeadBytes) : nullptr;
  const int unit = threadIdx.x % units, lane = threadIdx.x / units;
  const float center = (float)symOffset(BITS);
  float acc[kMaxHeadsPerBlock][S::kUnitGroups];
IQ_UNROLL
  for (int h = 0; h < kMaxHeadsPerBlock; h++)
IQ_UNROLL
    for (int ug = 0; ug < S::kUnitGroups; ug++) acc[h][ug] = 0.f;
  // Not unrolled: on an H200 unrolling by 4 raised registers 116 -> 122 and took 42.7 instead of 39.2 us per
  // layer at 32k tokens (ncu), unlike the other kernels here.
  for (int g = lane; g < groups; g += lanes) {
    const size_t tileUnit = ((size_t)(firstGroup + g) * d) / S::kUnitGroups + unit;  // d is a multiple of U
    uint4 v[S::kUnitVectors];
IQ_UNROLL
    for (int k = 0; k < S::kUnitVectors; k++) v[k] = ldg128(codes + tileUnit * S::kUnitBytes + 16 * k);
IQ_UNROLL
    for (int ug = 0; ug < S::kUnitGroups; ug++) {
      const size_t gi = tileUnit * S::kUnitGroups + ug;
      const uint16_t sb = __ldg(scales + gi);
      const bool asym = scaleIsAsym(sb);
      const float s = h2f((uint16_t)(sb & 0x7fff));
      const float z = asym && zeros ? h2f(__ldg(zeros + gi)) : 0.f;
      float dot[kMaxHeadsPerBlock];
IQ_UNROLL
      for (int h = 0; h < kMaxHeadsPerBlock; h++) dot[h] = 0.f;
IQ_UNROLL
      for (int blk = 0; blk < G / 32; blk++) {
        float u[32];
        unpackBlock<BITS>(v, (ug * S::kGroupBytes + blk * Packing<BITS>::kBlockBytes) / 4, asym ? 0.f : center, u);
IQ_UNROLL
        for (int h = 0; h < kMaxHeadsPerBlock; h++)
          if (h < hb) {
            const float* ph = pbuf + h * kPcap + g * G + blk * 32;
IQ_UNROLL
            for (int e = 0; e < 32; e++) dot[h] = fmaf(u[e], ph[e], dot[h]);
          }
      }
IQ_UNROLL
      for (int h = 0; h < kMaxHeadsPerBlock; h++)
        if (h < hb) acc[h][ug] += asym ? fmaf(s, dot[h], z * psum[h * PvColShape<BITS, G>::kMaxGroups + g]) : s * dot[h];
    }
  }
IQ_UNROLL
  for (int h = 0; h < kMaxHeadsPerBlock; h++)
    if (h < hb) {
IQ_UNROLL
      for (int ug = 0; ug < S::kUnitGroups; ug++) red[lane * d + unit * S::kUnitGroups + ug] = acc[h][ug];
      __syncthreads();
      storePartial(p, red, lanes, ci, h0 + h);
      __syncthreads();
    }
}

// ------------------------------------------------------------------ PV: KIVI values (kRowGrouped pages)
// Groups of G channels of one token: the scale changes with the token, so nothing factors out of the token
// sum. A thread owns one channel (lanes of a warp read one packed block: broadcast loads); token lanes split
// the chunk. Dequantize-then-accumulate, as the outer layout forces.
template <int BITS, int G>
__global__ void __launch_bounds__(256) pvRowGroupedKernel(AttnParams p) {
  static_assert(G == 32 || G == 64 || G == 128, "group sizes 32, 64, 128 only");
  constexpr int kGroupBytes = (G / 32) * Packing<BITS>::kBlockBytes;
  const int ci = p.list[blockIdx.x];
  const Chunk c = p.chunks[ci];
  const int kvh = blockIdx.y, hb = p.headsPerBlock, d = p.headDim, n = d / G;
  const int h0 = kvh * p.groupHeads + blockIdx.z * hb;
  const int lanes = blockDim.x / d;
  IQ_DYN_SHARED(float, smem);
  float* pbuf = smem;                         // [hb][kChunkTokens]
  float* red = pbuf + hb * kChunkTokens;      // [lanes][d]
  float* ml = red + lanes * d;
  chunkSoftmax(p, c, h0, 0, c.count, kChunkTokens, pbuf, ml, ml + kMaxHeadsPerBlock, ci);
  const uint8_t* codes = c.valueBase + p.value.codesOffset + kvh * p.value.codesHeadBytes;
  const uint16_t* scales = reinterpret_cast<const uint16_t*>(c.valueBase + p.value.scalesOffset + kvh * p.value.scalesHeadBytes);
  const uint16_t* zeros = hasZeros(p.value.mode)
      ? reinterpret_cast<const uint16_t*>(c.valueBase + p.value.zerosOffset + kvh * p.value.scalesHeadBytes) : nullptr;
  const int j = threadIdx.x % d, lane = threadIdx.x / d, cg = j / G, e = j % G;
  const float center = (float)symOffset(BITS);
  float acc[kMaxHeadsPerBlock];
IQ_UNROLL
  for (int h = 0; h < kMaxHeadsPerBlock; h++) acc[h] = 0.f;
IQ_UNROLL4  // several tokens' loads in flight per thread (see scoresFp16Kernel)
  for (int t = lane; t < c.count; t += lanes) {
    const size_t gi = (size_t)(c.valueSlot + t) * n + cg;
    const int u = codeAt<BITS>(codes + gi * kGroupBytes + (e / 32) * Packing<BITS>::kBlockBytes, e % 32);
    const uint16_t sb = __ldg(scales + gi);
    const float s = h2f((uint16_t)(sb & 0x7fff));
    const float x = scaleIsAsym(sb) ? fmaf(s, (float)u, zeros ? h2f(__ldg(zeros + gi)) : 0.f) : s * ((float)u - center);
IQ_UNROLL
    for (int h = 0; h < kMaxHeadsPerBlock; h++)
      if (h < hb) acc[h] = fmaf(pbuf[h * kChunkTokens + t], x, acc[h]);
  }
IQ_UNROLL
  for (int h = 0; h < kMaxHeadsPerBlock; h++)
    if (h < hb) {
      red[lane * d + j] = acc[h];
      __syncthreads();
      storePartial(p, red, lanes, ci, h0 + h);
      __syncthreads();
    }
}

// ------------------------------------------------------------------ merge of the partials
// out = sum_c e^(m_c-M) o_c / sum_c e^(m_c-M) l_c with M = max_c m_c. Block (head h, 32 channels), 8 warps: the
// block finds M, warp w sums the chunks c = w, w + 8, ... for its lane's channel, and warp 0 adds the 8 slices in
// order (a fixed order: thread-order-free). One thread per channel looping over every chunk took 70 us per layer
// at 32k tokens on an H200 (a dependent chain of 2 x 128 loads on 32 blocks); this spreads it over 8x the warps.
constexpr int kMergeWarps = 8;
constexpr size_t kMergeSharedBytes = (kMergeWarps * 33 + kMergeWarps) * sizeof(float);
static __global__ void __launch_bounds__(32 * kMergeWarps) mergeKernel(const float* partialO, const float* partialM, const float* partialL,
                                                   int chunkCount, int qHeads, int headDim, float* out) {
  IQ_DYN_SHARED(float, smem);
  float* slices = smem;                      // [warp][33]: lanes' partial o, then the warp's partial l
  float* maxes = slices + kMergeWarps * 33;  // [warp]
  const int h = blockIdx.x, j = blockIdx.y * 32 + threadIdx.x % 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float m = -INFINITY;
  for (int c = threadIdx.x; c < chunkCount; c += blockDim.x) m = fmaxf(m, partialM[(size_t)c * qHeads + h]);
  m = warpMax(m);
  if (lane == 0) maxes[warp] = m;
  __syncthreads();
  float M = maxes[0];
  for (int w = 1; w < kMergeWarps; w++) M = fmaxf(M, maxes[w]);
  float l = 0.f, o = 0.f;
IQ_UNROLL4
  for (int c = warp; c < chunkCount; c += kMergeWarps) {
    const float w = expf(partialM[(size_t)c * qHeads + h] - M);
    l = fmaf(w, partialL[(size_t)c * qHeads + h], l);
    o = fmaf(w, partialO[((size_t)c * qHeads + h) * headDim + j], o);
  }
  slices[warp * 33 + lane] = o;
  if (lane == 0) slices[warp * 33 + 32] = l;
  __syncthreads();
  if (warp == 0) {
    float so = 0.f, sl = 0.f;
    for (int w = 0; w < kMergeWarps; w++) {
      so += slices[w * 33 + lane];
      sl += slices[w * 33 + 32];
    }
    out[(size_t)h * headDim + j] = so / sl;
  }
}

// ------------------------------------------------------------------ launchers (kernels/attention_*.cu)
// Each returns false for an unsupported format (bits/G); the caller checks cudaGetLastError afterwards.
// grid = (chunks in list, kvHeads, groupHeads / headsPerBlock).
bool launchScores(const AttnParams& p, int source, int listCount, cudaStream_t stream);
bool launchPv(const AttnParams& p, int source, int listCount, cudaStream_t stream);
void launchMerge(const float* partialO, const float* partialM, const float* partialL, int chunkCount, int qHeads,
                 int headDim, float* out, cudaStream_t stream);

}  // namespace dev
}  // namespace innerq
