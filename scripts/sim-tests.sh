#!/usr/bin/env bash
# Build and run the native sim tests (test/native/sim) into build-sim/. Usage: scripts/sim-tests.sh [seed] [cases]
# SANITIZE=1 adds AddressSanitizer + UBSan (the fiber switches carry ASan annotations).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build-sim
FLAGS="-std=c++17 -O2 -g -fno-strict-aliasing -DINNERQ_SIM=1 -Wall -Wextra -Wno-unused-parameter"
if [ "${SANITIZE:-0}" = 1 ]; then FLAGS="$FLAGS -O1 -fsanitize=address,undefined -fno-omit-frame-pointer"; fi
${CXX:-g++} $FLAGS test/native/sim/sim_tests.cpp csrc/sim/sim_backend.cpp csrc/sim/sim_kernels.cpp -o build-sim/sim-tests -lpthread
time ./build-sim/sim-tests "$@"
