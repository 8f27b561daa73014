// build-sync.test.ts - binding.gyp (the CPU-only node-gyp build) must compile the same C++ sources as
// CMakeLists.txt's cpu build: the binding, the engine and the cpu backend. Adding a file to one and not
// the other fails here.
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';

const root = path.resolve(__dirname, '..');
const cppIn = (dir: string) => fs.readdirSync(path.join(root, dir)).filter((f) => f.endsWith('.cpp')).map((f) => `${dir}/${f}`);

test('binding.gyp lists exactly the CPU sources CMake globs', () => {
  const gyp = JSON.parse(fs.readFileSync(path.join(root, 'binding.gyp'), 'utf8')) as { targets: { sources: string[] }[] };
  const gypSources = gyp.targets.flatMap((t) => t.sources).sort();
  const cmakeSources = ['csrc/binding', 'csrc/core', 'csrc/cpu'].flatMap(cppIn).sort();
  expect(gypSources).toEqual(cmakeSources);
  // the AVX2 and AVX-512 files need their own flags in both builds
  for (const suffix of ['_avx2.cpp', '_avx512.cpp']) {
    const target = gyp.targets.find((t) => t.sources.every((s) => s.endsWith(suffix)));
    expect(target?.sources.sort()).toEqual(cmakeSources.filter((s) => s.endsWith(suffix)));
  }
});

test('CMakeLists.txt globs the folders this test assumes', () => {
  const cmake = fs.readFileSync(path.join(root, 'CMakeLists.txt'), 'utf8');
  for (const dir of ['csrc/binding', 'csrc/core', 'csrc/cpu']) expect(cmake).toContain(`\${CMAKE_CURRENT_SOURCE_DIR}/${dir}/*.cpp`);
});

test('the CUDA backend copies only on its own stream (no legacy-stream cudaMemcpy / cudaMemset)', () => {
  // device_backend.cu's stream_ is cudaStreamNonBlocking: a synchronous cudaMemcpy runs on the legacy default
  // stream, is not ordered with it, and returns from pageable memory before its DMA lands. On an H200 that let a
  // prefill's quantize kernel read rows that had not arrived. The sim now defers copies to stream order and shows it
  // only on the paths the tests run; this check covers every call site.
  const files = ['csrc/cuda', 'kernels'].flatMap((dir) =>
    fs.readdirSync(path.join(root, dir)).filter((f) => /\.(cu|cuh)$/.test(f)).map((f) => path.join(root, dir, f)));
  expect(files.length).toBeGreaterThan(3);
  const offenders: string[] = [];
  for (const f of files) {
    fs.readFileSync(f, 'utf8').split('\n').forEach((line, i) => {
      const code = line.replace(/\/\/.*$/, '');
      if (/\bcuda(Memcpy|Memset|Memcpy2D|Memcpy3D)\s*\(/.test(code)) offenders.push(`${path.relative(root, f)}:${i + 1}: ${line.trim()}`);
    });
  }
  expect(offenders).toEqual([]);
});

test('the AVX objects define no weak symbols that the linker could pick for portable code', () => {
  // kernels_avx2.cpp / kernels_avx512.cpp are compiled with -mavx2 (-mavx512*) and run only after cpuFeatures() said
  // yes. An inline function of a shared header (fp16.cuh, quantizer.cuh, ...) that such a file leaves out of line is
  // a weak (COMDAT) symbol, and the linker keeps ONE copy for the whole addon, possibly the AVX one: the portable
  // path would then execute AVX instructions on a CPU without them. The shipped -O3 build inlines everything (checked
  // here on the objects `npm install` built); a -O0 build of kernels_avx2.cpp has 80+ such symbols, e.g.
  // innerq::minOrdered(double, double).
  const objects: string[] = [];
  const walk = (dir: string) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (/^kernels_avx(2|512)(\.cpp)?\.o$/.test(e.name)) objects.push(p);
    }
  };
  const build = path.join(root, 'build');
  if (fs.existsSync(build)) walk(build);
  if (objects.length === 0) throw new Error('no kernels_avx2/kernels_avx512 objects under build/: build the addon first (npm install)');
  const weak: string[] = [];
  for (const o of objects) {
    const out = execFileSync('nm', ['-C', '--defined-only', o], { encoding: 'utf8' });
    for (const line of out.split('\n')) {
      const m = /^[0-9a-f]+ ([WVu]) (.*)$/.exec(line);
      if (m && !m[2].startsWith('DW.ref.')) weak.push(`${path.relative(root, o)}: ${m[1]} ${m[2]}`);
    }
  }
  expect(weak).toEqual([]);
});

test('CPU code prefetches only through prefetchLine (csrc/cpu/prefetch.h)', () => {
  // GCC deletes a call to a function that is not inlined and only prefetches (it counts as `const`), which
  // silently removed the fp16-window and hybrid-key prefetches once; prefetchLine's asm volatile cannot be deleted.
  const dir = path.join(root, 'csrc/cpu');
  const offenders = fs
    .readdirSync(dir)
    .filter((f) => /\.(cpp|h)$/.test(f) && f !== 'prefetch.h')
    .filter((f) => /_mm_prefetch\s*\(|__builtin_prefetch\s*\(/.test(fs.readFileSync(path.join(dir, f), 'utf8')));
  expect(offenders).toEqual([]);
  expect(fs.readFileSync(path.join(dir, 'kernels_avx512.cpp'), 'utf8')).toContain('prefetchLine<');
});
