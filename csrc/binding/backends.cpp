// backends.cpp - what this build can run: cpu features, whether sim and cuda were compiled, CUDA devices.
#include <thread>

#include "backends.h"
#include "binding.h"
#include "../cpu/cpu_backend.h"
#if defined(INNERQ_HAVE_SIM) || defined(INNERQ_HAVE_CUDA)
#include "../cuda/device_backend.h"
#endif

namespace innerq {
namespace binding {

#ifdef INNERQ_HAVE_BUILD_INFO
#include "innerq_build_info.h"
#endif
#ifndef INNERQ_BUILD_FLAGS
#define INNERQ_BUILD_FLAGS "unknown"
#endif

Napi::Value NativeInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  const CpuFeatures f = cpuFeatures();
  Napi::Object cpu = Napi::Object::New(env);
  cpu.Set("avx2", f.avx2);
  cpu.Set("fma", f.fma);
  cpu.Set("f16c", f.f16c);
  cpu.Set("avx512vnni", f.avx512vnni);
  cpu.Set("threads", f.threads);
#ifdef INNERQ_HAVE_AVX2_KERNELS
  cpu.Set("avx2KernelsCompiled", true);
#else
  cpu.Set("avx2KernelsCompiled", false);
#endif
#ifdef INNERQ_HAVE_AVX512_KERNELS
  cpu.Set("avx512KernelsCompiled", true);
#else
  cpu.Set("avx512KernelsCompiled", false);
#endif
  out.Set("cpu", cpu);

  Napi::Object sim = Napi::Object::New(env);
#ifdef INNERQ_HAVE_SIM
  sim.Set("compiled", true);
#else
  sim.Set("compiled", false);
#endif
  out.Set("sim", sim);

  Napi::Object cuda = Napi::Object::New(env);
#ifdef INNERQ_HAVE_CUDA
  const CudaInfo ci = cudaInfo();
  cuda.Set("compiled", true);
  cuda.Set("devices", ci.devices);
  if (!ci.error.empty()) cuda.Set("error", ci.error);
  Napi::Array names = Napi::Array::New(env, ci.deviceNames.size());
  for (size_t i = 0; i < ci.deviceNames.size(); i++) names.Set((uint32_t)i, ci.deviceNames[i]);
  cuda.Set("deviceNames", names);
#else
  cuda.Set("compiled", false);
  cuda.Set("devices", 0);
  cuda.Set("error", "the addon was built without the CUDA backend (nvcc was not found or INNERQ_WITH_CUDA=OFF)");
#endif
  out.Set("cuda", cuda);
  out.Set("buildFlags", INNERQ_BUILD_FLAGS);
  return out;
}

std::unique_ptr<Backend> createBackend(const std::string& name, const BackendOptions& o, std::string* error) {
  if (name == "cpu") return makeCpuBackend(o.threads, static_cast<CpuKernels>(o.simd));
#ifdef INNERQ_HAVE_SIM
  if (name == "sim") return makeSimBackend(o.simThreadOrder, o.simSeed);
#endif
#ifdef INNERQ_HAVE_CUDA
  if (name == "cuda") return makeCudaBackend(o.deviceId, error);
#endif
  *error = "backend '" + name + "' is not compiled into this build";
  return nullptr;
}

}  // namespace binding
}  // namespace innerq
