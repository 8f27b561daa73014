#!/usr/bin/env node
// npm run bench:record — runs `innerq bench` and `innerq eval` at their defaults on this machine and writes
// bench/results/cpu-<cpu model>[-<microarchitecture>]-<cores>c.{json,md,svg} (the JSON holds both runs in full). Extra arguments go
// to `innerq bench` (e.g. `npm run bench:record -- --quick`). Needs the build (`node scripts/build.js`).
// `node bench/record.js --render <results.json>` re-renders the .md and .svg of a recorded .json.
'use strict';
const { spawnSync } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');

const root = path.resolve(__dirname, '..');
const main = path.join(root, 'dist', 'cli', 'main.js');
if (!fs.existsSync(main)) {
  console.error('bench:record: dist/cli/main.js is missing; run `node scripts/build.js` first');
  process.exit(2);
}
const report = require(path.join(root, 'dist', 'cli', 'report.js'));

function render(base, bench, evalResult) {
  fs.writeFileSync(`${base}.md`, `# innerq results: ${bench.machine.cpuModel}, ${bench.machine.cores} cores (${bench.machine.date.slice(0, 10)})\n\n` +
    'Recorded with `npm run bench:record` (`innerq bench` + `innerq eval` at their defaults).\n\n' +
    (bench.note ? `**Note:** ${bench.note}\n\n` : '') +
    report.benchMarkdown(bench) + '\n' + report.evalMarkdown(evalResult));
  fs.writeFileSync(`${base}.svg`, report.svgDocument([report.latencyPanel(bench), report.errorPanel(evalResult)]));
}

if (process.argv[2] === '--render') {
  const file = process.argv[3];
  const j = JSON.parse(fs.readFileSync(file, 'utf8'));
  render(file.replace(/\.json$/, ''), j.bench, j.eval);
  console.error(`bench:record: re-rendered ${file.replace(/\.json$/, '')}.md and .svg`);
  process.exit(0);
}

const outDir = path.join(root, 'bench', 'results');
fs.mkdirSync(outDir, { recursive: true });
const cpus = os.cpus();
const model = (cpus[0] ? cpus[0].model : 'unknown').toLowerCase().replace(/\(r\)|\(tm\)|processor|cpu/g, '').replace(/[^a-z0-9.]+/g, '-').replace(/^-+|-+$/g, '');
// The microarchitecture goes into the name where it is known: VMs of different core designs can report the same
// model string ("AMD EPYC"), and a record must not overwrite another machine class's.
let uarch = null;
try {
  const id = require(path.join(root, 'dist', 'cli', 'common.js')).parseCpuInfo(fs.readFileSync('/proc/cpuinfo', 'utf8'));
  uarch = id && id.microarchitecture;
} catch {
  uarch = null;
}
const base = path.join(outDir, `cpu-${model}${uarch ? `-${uarch}` : ''}-${cpus.length}c`);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'innerq-record-'));

function run(args) {
  const r = spawnSync(process.execPath, [main, ...args], { cwd: root, stdio: ['ignore', 'inherit', 'inherit'] });
  if (r.status !== 0) {
    console.error(`bench:record: innerq ${args[0]} failed with exit code ${r.status}`);
    process.exit(r.status || 1);
  }
}

const benchJson = path.join(tmp, 'bench.json');
const evalJson = path.join(tmp, 'eval.json');
run(['bench', '--progress', '--json', benchJson, ...process.argv.slice(2)]);
run(['eval', '--progress', '--json', evalJson]);
const bench = JSON.parse(fs.readFileSync(benchJson, 'utf8'));
const evalResult = JSON.parse(fs.readFileSync(evalJson, 'utf8'));
fs.writeFileSync(`${base}.json`, JSON.stringify({ bench, eval: evalResult }, null, 2) + '\n');
render(base, bench, evalResult);
fs.rmSync(tmp, { recursive: true, force: true });
console.error(`bench:record: wrote ${path.relative(root, base)}.json, .md and .svg`);
