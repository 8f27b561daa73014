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
