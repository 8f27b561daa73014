#!/usr/bin/env bash
# run.sh - one run on a lent GPU machine (see pack.sh): unpack node, node_modules and the addon built on the dev
# machine, then by mode (all | test | bench | prof | san): the GPU test suites on the cuda backend, sharded over
# processes; the benchmark (scripts/bench-gpu.js); ncu per-kernel times of one layer per preset; compute-sanitizer.
set -u
cd "$(dirname "$0")/.."
t0=$(date +%s)
el() { echo "== [$(( $(date +%s) - t0 )) s] $*"; }
L=/tmp/logs; mkdir -p $L /tmp/nb build/Release
unxz_to() { if command -v xz >/dev/null; then xz -dc "$1" > "$2"; else python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$1" "$2"; fi; }
unxz_to .devcarry/node.xz /tmp/nb/node &
unxz_to .devcarry/innerq.node.xz build/Release/innerq.node &
if command -v xz >/dev/null; then xz -dc .devcarry/nm.tar.xz | tar -xf - & else python3 -c "import tarfile; tarfile.open('.devcarry/nm.tar.xz').extractall('.')" & fi
wait
chmod +x /tmp/nb/node; export PATH=/tmp/nb:$PATH
el "setup done; node $(node --version)"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv; nproc; node -e "console.log(JSON.stringify(require('./dist').backends()))"; } 2>&1 | tee $OUT/gpu.txt

MODE=${1:-all}
if [ -n "${DRY:-}" ]; then export INNERQ_TEST_BACKENDS=cpu; else export INNERQ_REQUIRE_GPU=1 INNERQ_TEST_BACKENDS=cuda; fi
J="node node_modules/jest/bin/jest.js --ci"
if [ "$MODE" = all ] || [ "$MODE" = test ]; then
  el "tests: sharded"
  i=0
  for preset in innerq innerq-4 kivi-2 kivi-4 fp16; do
    for what in "after prefills" "after each of 300"; do
      i=$((i+1))
      timeout 300 $J test/cache.test.ts -t "every backend $preset: attend and layout $what" --json --outputFile=$L/s$i.json > $L/s$i.log 2>&1 &
    done
  done
  timeout 300 $J test/device.test.ts --json --outputFile=$L/dev.json > $L/dev.log 2>&1 &
  timeout 300 $J test/persist.test.ts --json --outputFile=$L/per.json > $L/per.log 2>&1 &
  wait
  el "tests done"
  for f in $L/s*.log $L/dev.log $L/per.log; do echo "######## $f"; cat $f; done > $OUT/tests.log 2>&1
  node -e "
    const fs=require('fs'); let p=0,f=0,sk=0;
    for (const x of fs.readdirSync('$L').filter(n=>n.endsWith('.json'))) {
      const r=JSON.parse(fs.readFileSync('$L/'+x,'utf8')); p+=r.numPassedTests; f+=r.numFailedTests; sk+=r.numPendingTests;
      for (const t of r.testResults) for (const a of t.assertionResults) if (a.status==='failed') console.log('FAILED', x, a.fullName, (a.failureMessages||[]).join('\n').slice(0,1500));
    }
    console.log('GPU TESTS: '+p+' passed, '+f+' failed, '+sk+' skipped (skipped = other presets filtered by -t)');" | tee $OUT/summary.txt
  grep -h "worst row error" $L/s*.log | sed 's/^ *//' | sort -u | tee -a $OUT/summary.txt
fi
if [ "$MODE" = all ] || [ "$MODE" = bench ]; then
  el "bench"
  timeout 300 node scripts/bench-gpu.js --no-build --no-test > $OUT/bench.log 2>&1; echo "bench rc $?" >> $OUT/bench.log
  cp bench/results/gpu-*.json bench/results/gpu-*.md $OUT/ 2>/dev/null
  el "bench done"
fi
if [ "$MODE" = all ] || [ "$MODE" = prof ]; then
  el "ncu per-kernel"
  for ctx in 4096 32768; do for preset in fp16 innerq kivi-2; do
    timeout 60 ncu --clock-control none --kernel-name regex:'scores|pv|merge' --metrics gpu__time_duration.sum,dram__bytes_read.sum,launch__grid_size,launch__block_size,launch__registers_per_thread,sm__warps_active.avg.pct_of_peak_sustained_active --csv node .devcarry/prof.js $preset $ctx > $L/ncu-$preset-$ctx.csv 2>$L/ncu-$preset-$ctx.err
    echo "### $preset $ctx rc $?"; grep prof $L/ncu-$preset-$ctx.err; grep -v '^==' $L/ncu-$preset-$ctx.csv | node -e "
      const lines=require('fs').readFileSync(0,'utf8').trim().split('\n'); if(lines.length<2){process.exit(0)}
      const split=(l)=>l.slice(1,-1).split('\",\"'); const h=split(lines[0]); const I=(n)=>h.indexOf(n);
      const rows={}; for(const l of lines.slice(1)){const r=split(l); const k=r[I('ID')]+' '+r[I('Kernel Name')].slice(0,100); (rows[k]??={})[r[I('Metric Name')]]=r[I('Metric Value')]+' '+r[I('Metric Unit')];}
      for(const [k,v] of Object.entries(rows)) console.log(k, JSON.stringify(v));"
  done; done 2>&1 | tee $OUT/ncu.txt
fi
if [ "$MODE" = all ] || [ "$MODE" = san ]; then
  el "memcheck"
  for tool in memcheck racecheck synccheck; do
    timeout 70 compute-sanitizer --tool $tool --error-exitcode 9 $J -i test/device.test.ts > $OUT/$tool.log 2>&1; echo "$tool rc $?" >> $OUT/$tool.log
    grep -E "Tests:|ERROR SUMMARY|RACECHECK SUMMARY| rc " $OUT/$tool.log
  done
fi
el "all done"
