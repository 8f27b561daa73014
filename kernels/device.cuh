// device.cuh - what every kernel file includes: the platform (nvcc, or the sim emulator with a host compiler),
// the launch and shared-memory macros, and small device helpers (fp16 loads, warp reductions, code unpacking).
#pragma once
#if defined(__CUDACC__)
#include <cuda_runtime.h>
#include <cuda_fp16.h>
// A launch through a kernel pointer variable keeps template commas out of the macro arguments.
#define IQ_LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#define IQ_DYN_SHARED(T, name) \
  extern __shared__ __align__(16) unsigned char iq_dynamic_smem[]; \
  T* name = reinterpret_cast<T*>(iq_dynamic_smem)
#define IQ_EXPECT_DEVICE(p, what) ((void)0)
#define IQ_UNROLL _Pragma("unroll")
#define IQ_UNROLL4 _Pragma("unroll 4")
#elif defined(INNERQ_SIM)
#include "../csrc/sim/cudasim.h"
#define IQ_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ::cudasim::launch(grid, block, smem, stream, [=]() { kernel(__VA_ARGS__); })
#define IQ_DYN_SHARED(T, name) T* name = reinterpret_cast<T*>(::cudasim::dynamicShared())
#define IQ_EXPECT_DEVICE(p, what) ::cudasim::expectDevice(p, what)
#define IQ_UNROLL  // host compilers unroll on their own; g++ would warn about the CUDA pragma
#define IQ_UNROLL4
#else
#error "kernels are compiled by nvcc, or by a host compiler with INNERQ_SIM (csrc/sim/cudasim.h)"
#endif

#include "compat.cuh"
#include "fp16.cuh"
#include "format.cuh"
#include "quantizer.cuh"

namespace innerq {
namespace IQ_DEV {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kMaxHeadsPerBlock = 8;   // GQA heads served by one block (larger ratios use grid.z slices of 8)
constexpr int kChunkTokens = 256;      // flash-decoding split size (tokens per partial softmax): the most a chunk holds
// The host cuts shorter chunks where the grid would otherwise leave SMs idle (chunkTokensFor in device_backend.cu):
constexpr int kMinChunkTokens = 64;    // pages: at least this (and at least the token-group size G of the values)
constexpr int kWindowChunkTokens = 32; // fp16 windows (sink, recent tokens): a few hundred tokens over many blocks

__device__ __forceinline__ float h2f(uint16_t h) { return __half2float(__ushort_as_half(h)); }

// Tiny PTX wrapper with a C fallback (the sim executes the fallback): a non-coherent 128-bit global load.
// __ldg(uint4*) already emits ld.global.nc.v4.u32; the explicit form documents the intent where it matters.
__device__ __forceinline__ uint4 ldg128(const void* p) {
#if defined(__CUDA_ARCH__)
  uint4 r;
  asm volatile("ld.global.nc.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
#else
  return __ldg(reinterpret_cast<const uint4*>(p));
#endif
}

// Word i of a small uint4 array. With i a compile-time constant (unrolled loops) this folds to a register.
__device__ __forceinline__ uint32_t wordOf(const uint4* v, int i) {
  const uint4& q = v[i >> 2];
  switch (i & 3) {
    case 0: return q.x;
    case 1: return q.y;
    case 2: return q.z;
    default: return q.w;
  }
}

template <int BITS>
struct Packing {
  static_assert(BITS == 2 || BITS == 3 || BITS == 4 || BITS == 8, "bit widths 2, 3, 4, 8 only");
  static constexpr int kBlockBytes = BITS == 2 ? 8 : BITS == 3 ? 12 : BITS == 4 ? 16 : 32;  // format.cuh
  static constexpr int kBlockWords = kBlockBytes / 4;
};

// Unpack one 32-element block (words w0.. of a uint4 array starting at word index `base`) into floats
// u[e] - center. Mirrors format.cuh's block packing:
//   2 bits: byte i, bits 2k..2k+1 = u[8k+i]  -> word m (bytes 4m..4m+3), shift 2k, mask 0x03 per byte
//   3 bits: the 2-bit packing in words 0-1, word 2 holds bit 2 of u[e] at bit e
//   4 bits: byte i: low nibble u[i], high nibble u[i+16] -> word m gives u[4m..4m+3] and u[16+4m..]
//   8 bits: byte e = u[e]
template <int BITS>
__device__ __forceinline__ void unpackBlock(const uint4* v, int base, float center, float* u) {
  if (BITS == 2 || BITS == 3) {
IQ_UNROLL
    for (int m = 0; m < 2; m++) {
      const uint32_t w = wordOf(v, base + m);
IQ_UNROLL
      for (int k = 0; k < 4; k++)
IQ_UNROLL
        for (int b = 0; b < 4; b++) {
          int code = (int)((w >> (8 * b + 2 * k)) & 3u);
          if (BITS == 3) code |= (int)((wordOf(v, base + 2) >> (8 * k + 4 * m + b)) & 1u) << 2;
          u[8 * k + 4 * m + b] = (float)code - center;
        }
    }
  } else if (BITS == 4) {
IQ_UNROLL
    for (int m = 0; m < 4; m++) {
      const uint32_t w = wordOf(v, base + m);
IQ_UNROLL
      for (int b = 0; b < 4; b++) {
        u[4 * m + b] = (float)((w >> (8 * b)) & 15u) - center;
        u[16 + 4 * m + b] = (float)((w >> (8 * b + 4)) & 15u) - center;
      }
    }
  } else {
IQ_UNROLL
    for (int m = 0; m < 8; m++) {
      const uint32_t w = wordOf(v, base + m);
IQ_UNROLL
      for (int b = 0; b < 4; b++) u[4 * m + b] = (float)((w >> (8 * b)) & 255u) - center;
    }
  }
}

// One code, element e of a packed block in global memory, read with 32-bit loads (outer-grouped baselines:
// the lanes of a warp read the same block, so the loads coalesce into one or two sectors).
template <int BITS>
__device__ __forceinline__ int codeAt(const uint8_t* block, int e) {
  const uint32_t* w = reinterpret_cast<const uint32_t*>(block);
  if (BITS == 2 || BITS == 3) {
    const int i = e & 7, k = e >> 3;
    int code = (int)((__ldg(w + (i >> 2)) >> (8 * (i & 3) + 2 * k)) & 3u);
    if (BITS == 3) code |= (int)((__ldg(w + 2) >> e) & 1u) << 2;
    return code;
  } else if (BITS == 4) {
    const int i = e & 15;
    return (int)((__ldg(w + (i >> 2)) >> (8 * (i & 3) + 4 * (e >> 4))) & 15u);
  } else {
    return (int)((__ldg(w + (e >> 2)) >> (8 * (e & 3))) & 255u);
  }
}

__device__ __forceinline__ float warpMax(float v) {
IQ_UNROLL
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}
__device__ __forceinline__ float warpSum(float v) {
IQ_UNROLL
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

}  // namespace dev
}  // namespace innerq
