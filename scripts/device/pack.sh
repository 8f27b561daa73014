#!/usr/bin/env bash
# pack.sh - prepares a run on a lent GPU machine that has CUDA but no Node.js (this workplace's `device` tool:
# only the working tree and named ignored paths travel, 64 MiB at most). Packs into .devcarry/ (git-ignored via
# .git/info/exclude): this machine's node binary, node_modules and the addon built here with nvcc (sm_75..sm_90),
# all xz-compressed (~33 MB), plus the run script. Build first (`npm run build` with nvcc present), then:
#   bash scripts/device/pack.sh
#   device run: command `bash .devcarry/run.sh all` (or test | bench | prof | san), carry [".devcarry", "dist"]
# run.sh writes its logs and bench/results/gpu-*.{json,md} to $OUT.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f build/Release/innerq.node ] || { echo "pack.sh: build the addon first (npm run build)"; exit 1; }
grep -q '^/.devcarry/' .git/info/exclude 2>/dev/null || echo '/.devcarry/' >> .git/info/exclude
mkdir -p .devcarry
xz -T2 -6 -c "$(command -v node)" > .devcarry/node.xz
tar -cf - node_modules | xz -T2 -6 > .devcarry/nm.tar.xz
xz -T2 -6 -c build/Release/innerq.node > .devcarry/innerq.node.xz
cp scripts/device/run.sh .devcarry/run.sh
cp scripts/device/profile-layer.js .devcarry/prof.js
du -sh .devcarry
