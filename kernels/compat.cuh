// compat.cuh - lets one header be compiled by nvcc (device + host) and by a plain C++ compiler
// (the cpu backend, the sim backend, unit tests). Only qualifiers live here; no behaviour.
#pragma once
#include <cstdint>
#include <cstddef>

#if defined(__CUDACC__)
#define IQ_HD __host__ __device__ __forceinline__
#define IQ_DEVICE __device__ __forceinline__
#elif defined(INNERQ_SIM)
// The sim backend defines __host__/__device__ as nothing through its own header.
#define IQ_HD inline
#define IQ_DEVICE inline
#else
#define IQ_HD inline
#define IQ_DEVICE inline
#endif

// The device code's namespace. The addon links the nvcc-compiled kernels (cuda backend) and the same sources
// compiled by the host compiler (sim backend) into one binary: distinct namespaces keep the two sets of
// launchers and kernels from being merged by the linker (identical names, different code). `dev::` works in
// both builds (a namespace alias in the sim).
#if defined(INNERQ_SIM)
#define IQ_DEV dev_sim
namespace innerq {
namespace dev_sim {}
namespace dev = dev_sim;
}  // namespace innerq
#else
#define IQ_DEV dev
#endif
