#!/usr/bin/env bash
# Builds the CPU backend's native test and micro-benchmark into build-cpu/ (git-ignored), with the same flag
# split as the addon build: *_avx2.cpp get -mavx2 -mfma -mf16c, everything else is portable -O3.
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=build-cpu
mkdir -p "$out"
CXX=${CXX:-g++}
FLAGS="-std=c++17 -O3 -Wall -Wextra -g ${EXTRA_FLAGS:-}"
objs=()
for f in csrc/cpu/*.cpp; do
  o="$out/$(basename "${f%.cpp}").o"
  extra=""
  case "$f" in
    *_avx2.cpp) extra="-mavx2 -mfma -mf16c" ;;
    *_avx512.cpp) extra="-mavx2 -mfma -mf16c -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mavx512bitalg" ;;
  esac
  $CXX $FLAGS $extra -c "$f" -o "$o" &
  objs+=("$o")
done
wait
$CXX $FLAGS test/native/cpu/test_cpu.cpp "${objs[@]}" -o "$out/test_cpu" -pthread
$CXX $FLAGS bench/native/cpu_gemv.cpp "${objs[@]}" -o "$out/cpu_gemv" -pthread
$CXX $FLAGS bench/native/kernel_cycles.cpp "${objs[@]}" -o "$out/kernel_cycles" -pthread
echo "built $out/test_cpu $out/cpu_gemv $out/kernel_cycles"
