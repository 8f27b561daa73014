#!/usr/bin/env bash
# kernel_ab.sh - builds build-cpu/kernel_cycles_ab: kernel_cycles timing a kernel table as built from this tree (A)
# against a candidate version of its source file (B) in one process, the two alternating every round (see
# kernel_cycles.cpp). Usage:
#   bench/native/kernel_ab.sh <candidate.cpp>          a copy of csrc/cpu/kernels_avx512.cpp with one change
#   bench/native/kernel_ab.sh --avx2 <candidate.cpp>   a copy of csrc/cpu/kernels_avx2.cpp with one change
#   build-cpu/kernel_cycles_ab [kernels=2] [rounds=9] [d=128] [keys=sym]   (kernels=1 for --avx2; taskset -c 1 for
#                                                                           steadier figures)
# To compare against the last commit instead, give the committed file as the candidate:
#   git show HEAD:csrc/cpu/kernels_avx512.cpp > /tmp/base.cpp && bench/native/kernel_ab.sh /tmp/base.cpp
# The candidate is compiled with the same flags, against this tree's headers, and its table function renamed
# (avx512Kernels() -> avx512KernelsCandidate(), avx2Kernels() -> avx2KernelsCandidate(), by objcopy) so that both
# tables link into one binary; everything else in it is internal. (An avx2 candidate's own calls of avx2Kernels()
# are renamed with it; the tree's avx512 table keeps calling the tree's avx2 table.)
set -euo pipefail
table=avx512
if [ "${1:-}" = "--avx2" ]; then table=avx2; shift; fi
[ $# -eq 1 ] && [ -f "$1" ] || { echo "usage: $0 [--avx2] <candidate kernels_avx512.cpp | kernels_avx2.cpp>" >&2; exit 2; }
candidate=$(realpath "$1")
cd "$(dirname "$0")/../.."
out=build-cpu
CXX=${CXX:-g++}
FLAGS="-std=c++17 -O3 -Wall -Wextra -g ${EXTRA_FLAGS:-}"
AVX2="-mavx2 -mfma -mf16c"
AVX512="$AVX2 -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mavx512bitalg"
bash test/native/cpu/build.sh > /dev/null  # the A side: this tree's objects
# the table function's mangled name (innerq::cpu::avx2Kernels() / avx512Kernels()) and the candidate's, as
# kernel_cycles.cpp declares it
if [ "$table" = avx2 ]; then
  flags=$AVX2; defs="-DKERNEL_CYCLES_AB -DKERNEL_CYCLES_AB_AVX2"
  from=_ZN6innerq3cpu11avx2KernelsEv; to=_ZN6innerq3cpu20avx2KernelsCandidateEv
else
  flags=$AVX512; defs="-DKERNEL_CYCLES_AB"
  from=_ZN6innerq3cpu13avx512KernelsEv; to=_ZN6innerq3cpu22avx512KernelsCandidateEv
fi
cand_obj="$out/candidate_$table.o"
$CXX $FLAGS $flags -Icsrc/cpu -c "$candidate" -o "$cand_obj"
objcopy --redefine-sym "$from=$to" "$cand_obj"
objs=()
for f in csrc/cpu/*.cpp; do objs+=("$out/$(basename "${f%.cpp}").o"); done
$CXX $FLAGS $defs bench/native/kernel_cycles.cpp "${objs[@]}" "$cand_obj" -o "$out/kernel_cycles_ab" -pthread
echo "built $out/kernel_cycles_ab (A: csrc/cpu/kernels_$table.cpp, B: $1)"
