// fidelity.test.ts - through the real backends: attention-output error vs fp64 attention over the UNQUANTIZED
// cache on the synthetic realistic generator (outlier key channels, RoPE, attention sinks, heavy-tailed values).
// InnerQ must beat KIVI-style at about the same bits per element, and each of key normalization, the sink
// window and hybrid values must earn its place.
import { KVCache, KVCacheOptions } from '../lib';
import { configBitsPerElement, configFor, exactAttention, rowRelativeErrors } from '../lib/reference';
import { syntheticKV } from '../lib/synthetic';
import { testSeed } from './support';

const cases: { name: string; preset: 'innerq' | 'kivi-2' | 'kivi-4' | 'innerq-4' | 'fp16'; overrides: Partial<KVCacheOptions> }[] = [
  { name: 'innerq', preset: 'innerq', overrides: {} },
  { name: 'innerq, keyNorm off', preset: 'innerq', overrides: { keyNorm: false } },
  { name: 'innerq, no sink', preset: 'innerq', overrides: { sinkTokens: 0 } },
  { name: 'innerq, values sym (no hybrid)', preset: 'innerq', overrides: { valueMode: 'sym' } },
  { name: 'kivi-2', preset: 'kivi-2', overrides: {} },
  { name: 'innerq-4', preset: 'innerq-4', overrides: {} },
  { name: 'kivi-4', preset: 'kivi-4', overrides: {} },
  { name: 'fp16', preset: 'fp16', overrides: {} },
];

describe.each([['cpu'], ['sim']] as const)('fidelity on %s', (backend) => {
  test('innerq < kivi-2 at ~equal bits; keyNorm, sink and hybrid each reduce the error', () => {
    const seed = testSeed(`fidelity ${backend}`);
    const g = syntheticKV({ tokens: 1024, kvHeads: 2, qHeads: 8, headDim: 128, seed, queries: 4 });
    const hist = { kvHeads: g.kvHeads, headDim: g.headDim, keys: g.keys, values: g.values, prefillTokens: g.tokens };
    const qLen = g.qHeads * g.headDim;
    const exact = Array.from({ length: 4 }, (_, n) => exactAttention(hist, g.queries.subarray(n * qLen, (n + 1) * qLen), g.qHeads));
    const err = new Map<string, number>();
    const rows: string[] = [];
    for (const c of cases) {
      const cache = new KVCache({ layers: 1, qHeads: g.qHeads, kvHeads: g.kvHeads, headDim: g.headDim, maxTokens: g.tokens, preset: c.preset, backend, ...c.overrides });
      cache.prefill(0, g.keys, g.values);
      let e = 0;
      for (let n = 0; n < 4; n++) {
        const out = cache.attend(0, g.queries.subarray(n * qLen, (n + 1) * qLen));
        const r = rowRelativeErrors(out, exact[n], g.headDim);
        e += r.reduce((a, b) => a + b, 0) / r.length / 4;
      }
      const bits = c.preset === 'fp16' ? 16 : configBitsPerElement(configFor(c.preset, c.overrides as never));
      err.set(c.name, e);
      rows.push(`${c.name.padEnd(32)} ${bits.toFixed(2).padStart(6)} bits/elem   mean row rel. error ${e.toExponential(2)}   (stats: ${cache.stats().bitsPerElement.toFixed(2)} bits incl. windows)`);
      cache.dispose();
    }
    console.log(`fidelity on ${backend} (1024 tokens, 2 kv heads x 4, d 128, seed ${seed}):\n${rows.join('\n')}`);
    const e = (k: string) => err.get(k)!;
    expect(e('innerq')).toBeLessThan(e('kivi-2'));
    expect(e('innerq')).toBeLessThan(e('innerq, keyNorm off'));
    expect(e('innerq')).toBeLessThan(e('innerq, no sink'));
    expect(e('innerq')).toBeLessThan(e('innerq, values sym (no hybrid)'));
    expect(e('innerq-4')).toBeLessThan(e('kivi-4'));
    expect(e('fp16')).toBeLessThan(e('innerq-4'));
  });
});
