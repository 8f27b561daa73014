// support.ts - shared test helpers: seeded randomness (seed printed so a failure can be replayed with
// INNERQ_SEED=<seed>), realistic random KV data, and the list of backends to test on this machine.
import { backends } from '../lib';
import type { KVCacheOptions } from '../lib';

/** A fresh seed per run unless INNERQ_SEED is set; printed so a failing run can be replayed. */
export function testSeed(label: string): number {
  const fixed = process.env.INNERQ_SEED;
  const seed = fixed ? Number(fixed) >>> 0 : (Math.random() * 2 ** 32) >>> 0;
  // eslint-disable-next-line no-console
  console.log(`${label}: seed ${seed} (replay with INNERQ_SEED=${seed})`);
  return seed;
}

/** mulberry32: small, fast, good enough for test data. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function gaussian(r: () => number): number {
  const u = Math.max(r(), 1e-12), v = r();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
}

/**
 * Random key/value rows [tokens][kvHeads][headDim]: gaussian, with a few outlier key channels (×20) and a
 * heavy tail on values (occasional ×8), never all zero.
 */
export function randomKV(r: () => number, tokens: number, kvHeads: number, headDim: number): { keys: Float32Array; values: Float32Array } {
  const n = tokens * kvHeads * headDim;
  const keys = new Float32Array(n), values = new Float32Array(n);
  const outlier = new Set([3 % headDim, (headDim / 2 + 7) % headDim]);
  for (let i = 0; i < n; i++) {
    const j = i % headDim;
    keys[i] = gaussian(r) * (outlier.has(j) ? 20 : 1) + 0.3;
    values[i] = gaussian(r) * (r() < 0.02 ? 8 : 1);
  }
  return { keys, values };
}

export function randomVector(r: () => number, n: number, scale = 1): Float32Array {
  const q = new Float32Array(n);
  for (let i = 0; i < n; i++) q[i] = gaussian(r) * scale;
  return q;
}

export interface BackendCase { label: string; options: Partial<KVCacheOptions> }

/**
 * Backends to run here: cpu with its best SIMD kernels, cpu limited to AVX2 when the best is AVX-512 VNNI, cpu
 * forced to the portable kernels, sim (the CUDA kernels executed on the CPU), and cuda when a device exists. Missing ones are reported, never silently
 * dropped: sim must be compiled (CI relies on it), and a missing CUDA device prints why.
 */
export function backendCases(): BackendCase[] {
  const b = backends();
  const cases: BackendCase[] = [{ label: 'cpu', options: { backend: 'cpu' } }];
  if (b.cpu.kernels === 'avx512vnni') cases.push({ label: 'cpu-avx2', options: { backend: 'cpu', simd: 'avx2' } });
  if (b.cpu.simdKernels) cases.push({ label: 'cpu-portable', options: { backend: 'cpu', simd: false } });
  if (b.sim.compiled) cases.push({ label: 'sim', options: { backend: 'sim' } });
  else if (process.env.INNERQ_ALLOW_NO_SIM !== '1') throw new Error('the sim backend is not compiled: CI must run the CUDA kernels through sim');
  if (b.cuda.devices > 0) cases.push({ label: 'cuda', options: { backend: 'cuda' } });
  else if (process.env.INNERQ_REQUIRE_GPU === '1') {
    // `npm run test:gpu` on a CUDA runner: a missing device is a failure, not a skip.
    throw new Error(`INNERQ_REQUIRE_GPU=1 but no CUDA device is usable: ${b.cuda.compiled ? b.cuda.error ?? '0 devices' : 'the addon was built without CUDA'}`);
  } else {
    // eslint-disable-next-line no-console
    console.log(`cuda backend not tested here: ${b.cuda.compiled ? `compiled, but ${b.cuda.error ?? 'no device'}` : 'not compiled'}`);
  }
  // INNERQ_TEST_BACKENDS=cuda (a comma list of labels) narrows the run, e.g. on a CUDA runner whose time is scarce;
  // the cases it drops are printed, and naming a backend that is not available here is an error.
  const only = process.env.INNERQ_TEST_BACKENDS;
  if (only) {
    const want = only.split(',').map((s) => s.trim()).filter(Boolean);
    const missing = want.filter((w) => !cases.some((c) => c.label === w));
    if (missing.length) throw new Error(`INNERQ_TEST_BACKENDS names ${missing.join(', ')}, not available here (available: ${cases.map((c) => c.label).join(', ')})`);
    // eslint-disable-next-line no-console
    console.log(`INNERQ_TEST_BACKENDS=${only}: not testing ${cases.filter((c) => !want.includes(c.label)).map((c) => c.label).join(', ') || 'nothing else'}`);
    return cases.filter((c) => want.includes(c.label));
  }
  return cases;
}

export function maxOf(xs: number[]): number {
  return xs.reduce((m, x) => Math.max(m, x), 0);
}
