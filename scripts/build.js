#!/usr/bin/env node
// Builds the native addon with cmake-js and compiles the TypeScript facade. Run by `npm install`.
// Environment knobs (all optional):
//   INNERQ_CUDA=0      skip the CUDA backend even when nvcc is found (faster local builds)
//   INNERQ_SANITIZE=1  ASan+UBSan build into build-asan/ (used by `npm run test:asan`)
//   INNERQ_DEBUG=1     Debug build type
'use strict';
const { spawnSync } = require('child_process');
const path = require('path');

const root = path.resolve(__dirname, '..');
const env = process.env;
const args = ['compile', `--CDCMAKE_BUILD_TYPE=${env.INNERQ_DEBUG === '1' ? 'Debug' : 'Release'}`];
// Always explicit: CMake caches the option, so a stale OFF from an earlier INNERQ_CUDA=0 build would stick.
args.push(`--CDINNERQ_WITH_CUDA=${env.INNERQ_CUDA === '0' ? 'OFF' : 'ON'}`);
if (env.INNERQ_SANITIZE === '1') args.push('--CDINNERQ_SANITIZE=ON', '--out', 'build-asan');
const parallel = env.CMAKE_BUILD_PARALLEL_LEVEL || '2';

function run(cmd, cmdArgs) {
  const r = spawnSync(cmd, cmdArgs, { cwd: root, stdio: 'inherit', env: { ...env, CMAKE_BUILD_PARALLEL_LEVEL: parallel } });
  if (r.status !== 0) {
    console.error(`innerq build: '${cmd} ${cmdArgs.join(' ')}' failed with exit code ${r.status}`);
    process.exit(r.status || 1);
  }
}

const started = Date.now();
run(process.execPath, [require.resolve('cmake-js/bin/cmake-js'), ...args]);
if (env.INNERQ_SANITIZE !== '1') run(process.execPath, [require.resolve('typescript/bin/tsc'), '-p', 'tsconfig.build.json']);
console.error(`innerq build: done in ${((Date.now() - started) / 1000).toFixed(1)} s`);
