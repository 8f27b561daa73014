// soak.test.ts - create, fill (thousands of appends), attend and dispose caches in a loop; resident memory after
// warm-up must stay flat. Default: 200 cycles of 2000 appends (~15 s); INNERQ_SOAK_CYCLES=10000 for the acceptance
// run. Warm-up = the first max(40, cycles/5) cycles. Bound: RSS growth from the end of warm-up to the end
// < max(32 MiB, 5 % of the warm RSS) — Jest + ts-jest and the allocator's per-thread arenas move by tens of MiB;
// a leak of one cache's memory per cycle would grow by ~0.5 MiB per cycle (100 MiB over 200 cycles).
import * as v8 from 'v8';
import * as vm from 'vm';
import { KVCache } from '../lib';
import type { KVCacheOptions } from '../lib';
import { rng, randomVector } from './support';

const CYCLES = Number(process.env.INNERQ_SOAK_CYCLES ?? 200);
const APPENDS = Number(process.env.INNERQ_SOAK_APPENDS ?? 2000);
/** Stop early after this many seconds (at least the warm-up plus as many cycles again run). */
const SECONDS = Number(process.env.INNERQ_SOAK_SECONDS ?? (process.env.INNERQ_SOAK_CYCLES ? 1e9 : 30));
jest.setTimeout(Math.max(180_000, CYCLES * 500));

// A full GC before each RSS sample (disposed caches are already freed natively; this settles the JS side).
v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

test(`soak: ${CYCLES} create/append/attend/dispose cycles keep RSS flat`, async () => {
  const r = rng(42);
  const shapes: KVCacheOptions[] = [
    { layers: 2, qHeads: 8, kvHeads: 2, headDim: 64, maxTokens: 8192, backend: 'cpu', threads: 1 },
    { layers: 2, qHeads: 4, kvHeads: 1, headDim: 128, maxTokens: 8192, backend: 'cpu', preset: 'kivi-2', threads: 1 },
    { layers: 1, qHeads: 4, kvHeads: 2, headDim: 64, maxTokens: 8192, backend: 'cpu', preset: 'fp16', pageTokens: 128, threads: 2 },
  ];
  // Inputs are built once: the soak measures the library, not the test's garbage.
  const rows = shapes.map((o) => {
    const n = o.kvHeads * o.headDim;
    const k = new Float32Array(n * 64), v = new Float32Array(n * 64);
    for (let i = 0; i < k.length; i++) { k[i] = r() * 2 - 1; v[i] = r() * 2 - 1; }
    return { n, k, v, q: randomVector(r, o.qHeads * o.headDim) };
  });
  const warmup = Math.max(40, Math.floor(CYCLES / 5));
  let warmRss = 0, maxRss = 0, appends = 0;
  const t0 = Date.now();
  let cycles = CYCLES;
  for (let cycle = 0; cycle < cycles; cycle++) {
    if (cycle > 2 * warmup && (Date.now() - t0) / 1000 > SECONDS) cycles = cycle + 1;  // this one is the last
    const s = cycle % shapes.length, o = shapes[s], { n, k, v, q } = rows[s];
    const c = new KVCache(o);
    const out = new Float32Array(o.qHeads * o.headDim);
    for (let l = 0; l < o.layers; l++) {
      for (let t = 0; t < APPENDS / o.layers; t++) {
        const off = (t % 64) * n;
        c.append(l, k.subarray(off, off + n), v.subarray(off, off + n));
        appends++;
      }
      c.attend(l, q, out);
      expect(Number.isFinite(out[0])).toBe(true);
    }
    if (cycle % 7 === 0) await c.attendAsync(0, q, out);
    if (cycle % 11 === 0) KVCache.load(c.save(), { backend: 'cpu', threads: 1 }).dispose();
    if (cycle % 13 === 0) c.reset(0);
    c.dispose();
    if (cycle === warmup - 1 || cycle === cycles - 1 || cycle % 100 === 0) {
      gc();
      const rss = process.memoryUsage().rss;
      if (cycle === warmup - 1) warmRss = rss;
      if (cycle >= warmup - 1) maxRss = Math.max(maxRss, rss);
    }
  }
  gc();
  const endRss = process.memoryUsage().rss;
  const MiB = 2 ** 20;
  const bound = Math.max(32 * MiB, 0.05 * warmRss);
  // eslint-disable-next-line no-console
  console.log(`soak: ${cycles} cycles, ${appends} appends in ${((Date.now() - t0) / 1000).toFixed(1)} s; RSS after warm-up ` +
    `${(warmRss / MiB).toFixed(1)} MiB, max ${(maxRss / MiB).toFixed(1)}, end ${(endRss / MiB).toFixed(1)} MiB ` +
    `(growth ${((endRss - warmRss) / MiB).toFixed(1)} MiB, bound ${(bound / MiB).toFixed(0)} MiB)`);
  expect(cycles).toBeGreaterThan(warmup);
  expect(endRss - warmRss).toBeLessThan(bound);
});

// Memory exhaustion: under `ulimit -v` (6 GB of address space) a cache whose windows need ~17 GB fails with
// ERR_INNERQ_OUT_OF_MEMORY, and the process goes on (a small cache works afterwards). Runs over dist/ in a child.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const dist = require('path').resolve(__dirname, '..', 'dist', 'index.js');
(require('fs').existsSync(dist) && process.platform === 'linux' ? test : test.skip)('limits: an allocation failure in the constructor is a clear error', () => {
  const script = `
    const { KVCache } = require(${JSON.stringify(dist)});
    try { new KVCache({ layers: 64, qHeads: 8, kvHeads: 8, headDim: 128, maxTokens: 1 << 20, recentTokens: 65536, backend: 'cpu', threads: 1 }); console.log('constructed'); }
    catch (e) { console.log('error', e.code, e.message); }
    const c = new KVCache({ layers: 1, qHeads: 2, kvHeads: 1, headDim: 32, maxTokens: 16, backend: 'cpu', threads: 1 });
    c.append(0, new Float32Array(32).fill(1), new Float32Array(32).fill(1));
    console.log('after', c.attend(0, new Float32Array(64).fill(1))[0]);`;
  const r = require('child_process').spawnSync('bash', ['-c', `ulimit -v 6000000 && exec "${process.execPath}" -e "$0"`, script], { encoding: 'utf8', timeout: 60_000 });
  expect(r.stdout).toMatch(/^error ERR_INNERQ_OUT_OF_MEMORY innerq: out of memory creating the cache$/m);
  expect(r.stdout).toMatch(/^after 1$/m);
});
