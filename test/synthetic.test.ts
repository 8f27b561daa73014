// Tests of the synthetic KV generator: determinism, and the structure it promises (outlier channels, RoPE
// pairs, attention sinks, heavy-tailed values, query/key correlation).
import { Rng, syntheticKV, applyRope } from '../lib/synthetic';
import { attentionWeights, cacheState, exactAttention, referenceAttention, rowRelativeErrors, PRESETS, configFor, CacheConfig } from '../lib/reference';

const BASE_SEED = process.env.SEED !== undefined ? Number(process.env.SEED) : (Date.now() ^ (Math.random() * 0x7fffffff)) >>> 0;
function withSeed(fn: (seed: number) => void): void {
  try {
    fn(BASE_SEED);
  } catch (e) {
    (e as Error).message = `[SEED=${BASE_SEED}] ${(e as Error).message}`;
    throw e;
  }
}

describe('Rng', () => {
  test('deterministic, uniform in [0,1), normal moments', () => {
    withSeed((seed) => {
      const a = new Rng(seed),
        b = new Rng(seed);
      for (let i = 0; i < 100; i++) expect(a.nextU32()).toBe(b.nextU32());
      const r = new Rng(seed);
      let su = 0,
        sn = 0,
        sn2 = 0;
      const n = 100000;
      let inRange = true;
      for (let i = 0; i < n; i++) {
        const u = r.uniform();
        if (!(u >= 0 && u < 1)) inRange = false;
        su += u;
        const z = r.normal();
        sn += z;
        sn2 += z * z;
      }
      expect(inRange).toBe(true);
      expect(Math.abs(su / n - 0.5)).toBeLessThan(0.01);
      expect(Math.abs(sn / n)).toBeLessThan(0.02);
      expect(Math.abs(sn2 / n - 1)).toBeLessThan(0.03);
    });
  });
});

describe('syntheticKV', () => {
  test('same seed, same data; different seed, different data; shapes', () => {
    withSeed((seed) => {
      const a = syntheticKV({ tokens: 200, seed }),
        b = syntheticKV({ tokens: 200, seed }),
        c = syntheticKV({ tokens: 200, seed: seed + 1 });
      expect(a.keys).toEqual(b.keys);
      expect(a.values).toEqual(b.values);
      expect(a.queries).toEqual(b.queries);
      expect(a.keys).not.toEqual(c.keys);
      expect(a.keys.length).toBe(200 * 2 * 128);
      expect(a.values.length).toBe(200 * 2 * 128);
      expect(a.queries.length).toBe(4 * 8 * 128);
      expect(a.keys.every(Number.isFinite) && a.values.every(Number.isFinite) && a.queries.every(Number.isFinite)).toBe(true);
    });
  });

  test('outlier key channels are 10-50x larger, consistently across tokens', () => {
    withSeed((seed) => {
      const g = syntheticKV({ tokens: 512, kvHeads: 2, headDim: 128, seed });
      const d = g.headDim,
        row = g.kvHeads * d;
      for (let h = 0; h < g.kvHeads; h++) {
        const meanAbs = new Float64Array(d);
        for (let t = g.sinkTokens; t < g.tokens; t++) for (let j = 0; j < d; j++) meanAbs[j] += Math.abs(g.keysPreRope[t * row + h * d + j]);
        const normal = Array.from(meanAbs)
          .filter((_, j) => !g.outlierChannels[h].includes(j))
          .sort((x, y) => x - y);
        const median = normal[normal.length >> 1];
        expect(g.outlierChannels[h].length).toBe(8);
        for (const j of g.outlierChannels[h]) {
          const ratio = meanAbs[j] / median;
          expect(ratio).toBeGreaterThan(8);
          expect(ratio).toBeLessThan(120);
          // consistent: the sign of the pre-RoPE outlier channel is the same for (almost) every token
          let pos = 0;
          for (let t = 0; t < g.tokens; t++) if (g.keysPreRope[t * row + h * d + j] > 0) pos++;
          expect(Math.max(pos, g.tokens - pos) / g.tokens).toBeGreaterThan(0.9);
        }
      }
    });
  });

  test('keys are the RoPE rotation of the pre-RoPE keys (pairs j, j + d/2) outside the sink tokens', () => {
    withSeed((seed) => {
      const g = syntheticKV({ tokens: 300, kvHeads: 1, headDim: 64, seed });
      const d = 64,
        half = 32;
      for (let t = g.sinkTokens; t < g.tokens; t += 17) {
        const x = Float64Array.from(g.keysPreRope.subarray(t * d, t * d + d));
        applyRope(x, 0, d, t, 10000);
        for (let j = 0; j < d; j++) expect(Math.abs(x[j] - g.keys[t * d + j])).toBeLessThan(1e-3 * (1 + Math.abs(x[j])));
        for (let i = 0; i < half; i++) {
          const pre = Math.hypot(g.keysPreRope[t * d + i], g.keysPreRope[t * d + i + half]);
          const post = Math.hypot(g.keys[t * d + i], g.keys[t * d + i + half]);
          expect(Math.abs(pre - post)).toBeLessThan(1e-4 * (1 + pre));
        }
      }
    });
  });

  // The sinks' share depends on the seed's draw (over 3000 seeds: 0.16 .. 0.93, median 0.67, for 4 of 1024 tokens);
  // without the boost it stays at their token share (max 0.016). The bounds below hold with a wide margin for every
  // seed, where the former "most of the mass" (> 0.5) failed for some (seed 656122552: 0.38).
  test('sink tokens draw far more than their share of the attention mass; without the boost they do not', () => {
    withSeed((seed) => {
      const mass = (boost?: number): number => {
        const g = syntheticKV({ tokens: 1024, kvHeads: 2, headDim: 64, seed, queries: 2, sinkLogitBoost: boost });
        let m = 0;
        for (let n = 0; n < 2; n++) {
          const q = g.queries.subarray(n * g.qHeads * g.headDim, (n + 1) * g.qHeads * g.headDim);
          const w = attentionWeights(g.keys, q, { tokens: g.tokens, qHeads: g.qHeads, kvHeads: g.kvHeads, headDim: g.headDim });
          for (let h = 0; h < g.qHeads; h++) for (let t = 0; t < g.sinkTokens; t++) m += w[h * g.tokens + t];
        }
        return m / (2 * g.qHeads);
      };
      const withSinks = mass(), without = mass(0);
      expect(withSinks).toBeGreaterThan(0.1);  // 25x the 4 sinks' token share of 1024
      expect(without).toBeLessThan(0.05);
      expect(withSinks).toBeGreaterThan(5 * without);
    });
  });

  test('values are heavier-tailed than normal', () => {
    withSeed((seed) => {
      const g = syntheticKV({ tokens: 2000, kvHeads: 1, headDim: 64, seed });
      const d = 64;
      let k4 = 0,
        k2 = 0;
      for (let j = 0; j < d; j++) {
        let mean = 0;
        for (let t = 0; t < g.tokens; t++) mean += g.values[t * d + j] / g.tokens;
        for (let t = 0; t < g.tokens; t++) {
          const x = g.values[t * d + j] - mean;
          k2 += x * x;
          k4 += x * x * x * x;
        }
      }
      const n = g.tokens * d;
      expect(k4 / n / (k2 / n) ** 2).toBeGreaterThan(4.5); // normal: 3
    });
  });

  test('queries are correlated with keys (queryKeyCorrelation)', () => {
    withSeed((seed) => {
      const meanCos = (c: number): number => {
        const g = syntheticKV({ tokens: 400, kvHeads: 1, headDim: 64, seed, rope: false, sinkLogitBoost: 0, queryKeyCorrelation: c, queries: 8 });
        const d = 64;
        let s = 0,
          n = 0;
        for (let q = 0; q < 8 * g.qHeads; q++)
          for (let t = 0; t < g.tokens; t += 5) {
            let dot = 0,
              nq = 0,
              nk = 0;
            for (let j = 0; j < d; j++) {
              // outlier channels excluded (the query is not scaled up there, so they would dominate |k|)
              if (g.outlierChannels[0].includes(j)) continue;
              const qj = g.queries[q * d + j],
                kj = g.keys[t * d + j];
              dot += qj * kj;
              nq += qj * qj;
              nk += kj * kj;
            }
            s += dot / Math.sqrt(nq * nk);
            n++;
          }
        return s / n;
      };
      expect(meanCos(0.9)).toBeGreaterThan(meanCos(0) + 0.1);
      expect(Math.abs(meanCos(0))).toBeLessThan(0.15);
    });
  });

  test('fidelity on the generator: innerq beats kivi-2 at about the same bits; keyNorm, sink and hybrid each help', () => {
    withSeed((seed) => {
      const g = syntheticKV({ tokens: 1024, kvHeads: 2, headDim: 128, seed, queries: 2 });
      const hist = { kvHeads: g.kvHeads, headDim: g.headDim, keys: g.keys, values: g.values, prefillTokens: g.tokens };
      const err = (c: CacheConfig): number => {
        const st = cacheState(c, hist);
        let e = 0;
        for (let n = 0; n < 2; n++) {
          const q = g.queries.subarray(n * g.qHeads * g.headDim, (n + 1) * g.qHeads * g.headDim);
          const r = rowRelativeErrors(referenceAttention(st, q, g.qHeads), exactAttention(hist, q, g.qHeads), g.headDim);
          e += r.reduce((a, b) => a + b, 0) / r.length;
        }
        return e / 2;
      };
      const innerq = err(PRESETS.innerq);
      expect(innerq).toBeLessThan(err(PRESETS['kivi-2']));
      expect(innerq).toBeLessThan(err(configFor('innerq', { keyNorm: false })));
      expect(innerq).toBeLessThan(err(configFor('innerq', { sinkTokens: 0 })));
      expect(innerq).toBeLessThan(err(configFor('innerq', { valueMode: 'sym' })));
    });
  });
});
