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
