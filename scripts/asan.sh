#!/usr/bin/env bash
# npm run test:asan - AddressSanitizer + UndefinedBehaviorSanitizer (+ LeakSanitizer on the native harnesses):
#   1. the ASan+UBSan addon (INNERQ_SANITIZE=1 node scripts/build.js -> build-asan/Release/innerq.node, no CUDA);
#   2. the cpu backend harness (test/native/cpu/test_cpu.cpp) built with the sanitizers into build-asan-native/;
#   3. the sim harness (SANITIZE=1 scripts/sim-tests.sh);
#   4. a Jest subset (persistence, fuzz, device buffers, validation) on the sanitized addon, libasan preloaded into node
#      (not the RSS soak: ASan's quarantine grows RSS, and its shadow reservation cannot start under `ulimit -v`).
# Any sanitizer report fails the run (halt_on_error, and the logs are grepped as well). Logs: build-asan/logs/.
# Knobs: ASAN_SKIP_BUILD=1 reuses the built addon; ASAN_JEST=0 skips step 4; ASAN_CPU_SEED (default 12345).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
t0=$(date +%s)
logs=build-asan/logs
mkdir -p "$logs" build-asan-native
step() { echo "== asan: $* ($(( $(date +%s) - t0 )) s)"; }
check_log() {  # fail on any sanitizer report, even one that did not stop the program
  if grep -E -n "ERROR: (Address|Leak)Sanitizer|runtime error:|SUMMARY: (Address|UndefinedBehavior|Leak)Sanitizer" "$1" >/dev/null; then
    grep -E -n -m 20 "ERROR: |runtime error:|SUMMARY:" "$1" || true
    echo "== asan: FAILED: sanitizer report in $1"
    exit 1
  fi
}
SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

if [ "${ASAN_SKIP_BUILD:-0}" != 1 ]; then
  step "building the sanitized addon"
  INNERQ_SANITIZE=1 INNERQ_CUDA=0 node scripts/build.js > "$logs/build.log" 2>&1 || { tail -30 "$logs/build.log"; exit 1; }
fi
test -f build-asan/Release/innerq.node

step "cpu harness (ASan+UBSan+LSan)"
CXX=${CXX:-g++}
FLAGS="-std=c++17 -O1 -g -Wall -Wextra $SAN"
objs=()
for f in csrc/cpu/*.cpp; do
  o="build-asan-native/$(basename "${f%.cpp}").o"
  extra=""
  case "$f" in
    *_avx2.cpp) extra="-mavx2 -mfma -mf16c" ;;
    *_avx512.cpp) extra="-mavx2 -mfma -mf16c -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mavx512bitalg" ;;
  esac
  $CXX $FLAGS $extra -c "$f" -o "$o" &
  objs+=("$o")
done
wait
$CXX $FLAGS test/native/cpu/test_cpu.cpp "${objs[@]}" -o build-asan-native/test_cpu -pthread
ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:abort_on_error=0" ./build-asan-native/test_cpu "${ASAN_CPU_SEED:-12345}" > "$logs/test_cpu.log" 2>&1 \
  || { tail -30 "$logs/test_cpu.log"; echo "== asan: FAILED: cpu harness"; exit 1; }
check_log "$logs/test_cpu.log"
grep -E "configs x [0-9]+ kernel tables, [0-9]+ checks, 0 failures" "$logs/test_cpu.log"

step "sim harness (ASan+UBSan+LSan)"
ASAN_OPTIONS="detect_leaks=1:halt_on_error=1" SANITIZE=1 bash scripts/sim-tests.sh > "$logs/sim.log" 2>&1 \
  || { tail -30 "$logs/sim.log"; echo "== asan: FAILED: sim harness"; exit 1; }
check_log "$logs/sim.log"
grep -E "^PASSED: [0-9]+ checks, 0 failures" "$logs/sim.log"

if [ "${ASAN_JEST:-1}" != 0 ]; then
  step "jest subset on the sanitized addon"
  libasan=$($CXX -print-file-name=libasan.so)
  # node itself is not instrumented: no leak detection for it; the fiber stacks of sim need detect_stack_use_after_return=0.
  LD_PRELOAD="$libasan" ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:detect_stack_use_after_return=0" \
    INNERQ_ADDON="$root/build-asan/Release/innerq.node" INNERQ_FUZZ_CASES=${ASAN_FUZZ_CASES:-150} INNERQ_FUZZ_SECONDS=60 \
    INNERQ_SOAK_CYCLES=${ASAN_SOAK_CYCLES:-200} \
    npx jest --runInBand test/persist.test.ts test/fuzz test/device.test.ts test/validation.test.ts > "$logs/jest.log" 2>&1 \
    || { tail -60 "$logs/jest.log"; echo "== asan: FAILED: jest on the sanitized addon"; exit 1; }
  check_log "$logs/jest.log"
  grep -E "^Tests:" "$logs/jest.log"
fi
step "PASSED: zero sanitizer reports"
