// device_backend.h - factories of the GPU-kernel backends, as plain C++ (no CUDA types), for the N-API binding.
//   cuda: the kernels on a real GPU (csrc/cuda/device_backend.cu compiled by nvcc; INNERQ_HAVE_CUDA).
//   sim:  the same kernel source and the same backend source compiled by the host compiler against
//         csrc/sim/cudasim.h and executed on the CPU (csrc/sim/*.cpp; INNERQ_HAVE_SIM).
// Without nvcc, csrc/sim/cuda_absent.cpp supplies makeCudaBackend/cudaInfo that report "not compiled".
#pragma once
#include <memory>
#include <string>
#include <vector>
#include "../core/backend.h"

namespace innerq {

struct CudaInfo {
  bool compiled = false;  // the cuda backend is part of this build
  int devices = 0;        // usable devices (0 when the driver or device is missing)
  std::string error;      // why devices == 0: e.g. cudaErrorInsufficientDriver on machines without a driver
  std::vector<std::string> deviceNames;  // cudaDeviceProp::name of each device
};

CudaInfo cudaInfo();
// nullptr with *error set when no device can be used.
std::unique_ptr<Backend> makeCudaBackend(int deviceId, std::string* error);
// threadOrder: 0 forward, 1 reversed, 2 shuffled (seeded by seed) - the order of emulated threads between
// scheduling points; results must not depend on it.
std::unique_ptr<Backend> makeSimBackend(int threadOrder, unsigned seed);

}  // namespace innerq
