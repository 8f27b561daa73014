// kernels.test.ts - which CPU kernel table a cache runs: options.simd picks it, backends() predicts it, and a
// table the CPU has is never silently skipped (the accuracy of every table is checked in cache.test.ts through
// backendCases(), and natively in test/native/cpu).
import { KVCache, backends } from '../lib';

const shape = { layers: 1, qHeads: 4, kvHeads: 1, headDim: 128, maxTokens: 1024, backend: 'cpu' as const };

test('simd: true runs the best table backends() reports; avx2 and false pick the lower ones', () => {
  const b = backends().cpu;
  // eslint-disable-next-line no-console
  console.log(`cpu kernels here: ${b.kernels} (avx2 ${b.avx2}, avx512vnni ${b.avx512vnni})`);
  const kernelsFor = (simd: boolean | 'avx2') => {
    const c = new KVCache({ ...shape, simd });
    try {
      return c.kernelInfo().kernels;
    } finally {
      c.dispose();
    }
  };
  expect(kernelsFor(true)).toBe(b.kernels);
  expect(kernelsFor('avx2')).toBe(b.simdKernels ? 'avx2' : 'portable');
  expect(kernelsFor(false)).toBe('portable');
  if (b.avx512vnni && b.simdKernels) expect(b.kernels).toBe('avx512vnni');
  if (!b.avx512vnni) expect(b.kernels).not.toBe('avx512vnni');
});
