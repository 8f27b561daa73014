// build-sync.test.ts - binding.gyp (the CPU-only node-gyp build) must compile the same C++ sources as
// CMakeLists.txt's cpu build: the binding, the engine and the cpu backend. Adding a file to one and not
// the other fails here.
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
  // prefill's quantize kernel read rows that had not arrived. The sim executes copies at once and cannot show it.
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
