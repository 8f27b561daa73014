// backends.h - the one place that turns a backend name into a Backend instance.
#pragma once
#include <memory>
#include <string>

#include "../core/backend.h"

namespace innerq {
namespace binding {

struct BackendOptions {
  int threads = 0;          // cpu: 0 = all cores
  int simd = 2;             // cpu: CpuKernels (0 portable, 1 AVX2 only, 2 the best the CPU has)
  int simThreadOrder = 0;   // sim: 0 forward, 1 reversed, 2 shuffled
  unsigned simSeed = 1;     // sim: seed of the shuffled order
  int deviceId = 0;         // cuda
};

// Returns nullptr and sets *error when the backend is unavailable.
std::unique_ptr<Backend> createBackend(const std::string& name, const BackendOptions& options, std::string* error);

}  // namespace binding
}  // namespace innerq
