#!/usr/bin/env bash
# kernel_ab.sh - builds build-cpu/kernel_cycles_ab: kernel_cycles timing the built avx512 table (A, from
# csrc/cpu/kernels_avx512.cpp as it is now) against a candidate version of that file (B) in one process, the two
# alternating every round (see kernel_cycles.cpp). Usage:
#   bench/native/kernel_ab.sh <candidate.cpp>        e.g. a copy of csrc/cpu/kernels_avx512.cpp with one change
#   build-cpu/kernel_cycles_ab [kernels=2] [rounds=9] [d=128] [keys=sym]     (taskset -c 1 for steadier figures)
# To compare against the last commit instead, give the committed file as the candidate:
#   git show HEAD:csrc/cpu/kernels_avx512.cpp > /tmp/base.cpp && bench/native/kernel_ab.sh /tmp/base.cpp
# The candidate is compiled with the same flags, against this tree's headers, and its avx512Kernels() renamed to
# avx512KernelsCandidate() (objcopy) so that both tables link into one binary; everything else in it is internal.
set -euo pipefail
[ $# -eq 1 ] && [ -f "$1" ] || { echo "usage: $0 <candidate kernels_avx512.cpp>" >&2; exit 2; }
candidate=$(realpath "$1")
cd "$(dirname "$0")/../.."
out=build-cpu
CXX=${CXX:-g++}
FLAGS="-std=c++17 -O3 -Wall -Wextra -g ${EXTRA_FLAGS:-}"
AVX512="-mavx2 -mfma -mf16c -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mavx512bitalg"
bash test/native/cpu/build.sh > /dev/null  # the A side: this tree's objects
$CXX $FLAGS $AVX512 -Icsrc/cpu -c "$candidate" -o "$out/candidate_avx512.o"
# the mangled name of innerq::cpu::avx512Kernels() and of the declaration kernel_cycles.cpp makes for the candidate
objcopy --redefine-sym _ZN6innerq3cpu13avx512KernelsEv=_ZN6innerq3cpu22avx512KernelsCandidateEv "$out/candidate_avx512.o"
objs=()
for f in csrc/cpu/*.cpp; do objs+=("$out/$(basename "${f%.cpp}").o"); done
$CXX $FLAGS -DKERNEL_CYCLES_AB bench/native/kernel_cycles.cpp "${objs[@]}" "$out/candidate_avx512.o" -o "$out/kernel_cycles_ab" -pthread
echo "built $out/kernel_cycles_ab (A: csrc/cpu/kernels_avx512.cpp, B: $1)"
