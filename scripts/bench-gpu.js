#!/usr/bin/env node
// npm run bench:gpu - on a CUDA runner: build, run the GPU test suites, then time fp16 / KIVI-style / InnerQ
// decode attention on the cuda backend and write bench/results/gpu-<device>.json (+ .md).
// Without a device it runs the same pipeline end to end on the sim backend at a tiny shape, so the command is
// exercised in CI; those timings measure the CPU emulator and are labelled meaningless.
// Timing: host wall clock around synchronous attend() calls (each ends with a stream synchronize), medians
// from tinybench; and the device time of the attention kernels alone (CUDA events, kernelInfo().deviceAttendMs),
// mean per step, in the table's dev columns.
// Flags: --no-build (skip `npm run build`), --no-test (skip the test suites).
'use strict';
const { spawnSync } = require('child_process');
const fs = require('fs');
const path = require('path');

const root = path.resolve(__dirname, '..');
const args = new Set(process.argv.slice(2));
function run(cmd, cmdArgs, env = {}) {
  console.error(`bench:gpu: ${cmd} ${cmdArgs.join(' ')}`);
  const r = spawnSync(cmd, cmdArgs, { cwd: root, stdio: 'inherit', env: { ...process.env, ...env } });
  if (r.status !== 0) { console.error(`bench:gpu: failed (exit ${r.status})`); process.exit(r.status || 1); }
}

if (!args.has('--no-build')) run('npm', ['run', 'build']);
const { backends } = require(path.join(root, 'dist'));
const b = backends();
const onGpu = b.cuda.devices > 0;
const device = onGpu ? (b.cuda.deviceNames[0] || 'cuda').toLowerCase().replace(/[^a-z0-9]+/g, '-') : 'sim';
if (!args.has('--no-test')) {
  if (onGpu) run('npm', ['run', 'test:gpu']);
  else run(process.execPath, [require.resolve('jest/bin/jest'), 'test/device.test.ts'], {});
}
const out = path.join(root, 'bench', 'results', `gpu-${device}.json`);
const shape = onGpu
  ? ['--context', '4096,16384,32768', '--working-set', '1024']  // distinct layers well past the 50-60 MB L2
  : ['--context', '256', '--layers', '2', '--q-heads', '8', '--kv-heads', '2', '--head-dim', '64', '--working-set', '1',
     '--time', '50', '--min-iterations', '2', '--no-gemv', '--resident-context', '256', '--bound-context', '256'];
run(process.execPath, [path.join(root, 'dist', 'cli', 'main.js'), 'bench', '--backend', onGpu ? 'cuda' : 'sim', ...shape,
  '--json', out, '--markdown', out.replace(/\.json$/, '.md'), '--quiet']);
const j = JSON.parse(fs.readFileSync(out, 'utf8'));
j.note = onGpu
  ? 'cuda backend; ms/step: host wall-clock around synchronous attend() calls (query upload, kernels, output download, stream sync); dev columns: CUDA events around each layer\'s kernels'
  : 'sim backend (CUDA kernels emulated on the CPU): the pipeline ran end to end; these timings are MEANINGLESS for GPU performance';
fs.writeFileSync(out, JSON.stringify(j, null, 2) + '\n');
console.error(`bench:gpu: wrote ${path.relative(root, out)}${onGpu ? '' : ' (sim: timings meaningless)'}`);
