// cuda_absent.cpp - makeCudaBackend / cudaInfo for builds without nvcc (INNERQ_HAVE_CUDA undefined): the
// binding links the same symbols either way and reports the reason instead of failing to load.
#ifndef INNERQ_HAVE_CUDA
#include "../cuda/device_backend.h"

namespace innerq {
CudaInfo cudaInfo() {
  CudaInfo info;
  info.compiled = false;
  info.devices = 0;
  info.error = "the cuda backend was not compiled (nvcc was not found when the addon was built)";
  return info;
}
std::unique_ptr<Backend> makeCudaBackend(int, std::string* error) {
  if (error) *error = cudaInfo().error;
  return nullptr;
}
}  // namespace innerq
#endif
