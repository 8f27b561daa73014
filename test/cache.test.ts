// cache.test.ts - KVCache.attend on every backend against the fp64 reference over the dequantized cache
// (same windows, same normalization), and the cache layout read back byte by byte after every append.
import { KVCache, PRESET_NAMES, PresetName } from '../lib';
import { cacheState, configFor, encodePages, encodeRing, encodeSink, referenceAttention, rowRelativeErrors, CacheState } from '../lib/reference';
import { backendCases, maxOf, randomKV, randomVector, rng, testSeed } from './support';

// Tolerances, per output row (one query head), relative L2 error vs the fp64 reference:
//  - float paths (fp16, KIVI-style): 1e-4. Products and sums run in fp32 over <= ~1300 tokens.
//  - InnerQ integer paths: the query (resp. probabilities) are quantized to int8 per 32-slice once per step
//    (DESIGN.md §3); each slice element is off by at most σ/2 = max|slice|/254, i.e. up to 0.4% of the slice
//    maximum, so scores and outputs carry ~0.1-1% relative error. Bound: 2e-2 per row.
const FLOAT_TOL = 1e-4;
const INT8_TOL = 2e-2;
const tolFor = (preset: PresetName) => (preset.startsWith('innerq') ? INT8_TOL : FLOAT_TOL);

const SHAPES = [
  { ratio: 1, headDim: 64 }, { ratio: 4, headDim: 128 }, { ratio: 8, headDim: 64 },
  { ratio: 1, headDim: 128 }, { ratio: 4, headDim: 64 }, { ratio: 8, headDim: 128 },
];
const KV_HEADS = 2;
const PREFILLS = [1, 31, 127, 128, 129, 1000];

function historyFor(keys: Float32Array, values: Float32Array, headDim: number, prefillTokens: number) {
  return { kvHeads: KV_HEADS, headDim, keys, values, prefillTokens };
}

function checkAttend(cache: KVCache, state: CacheState, query: Float32Array, qHeads: number, tol: number, what: string): number {
  const out = new Float32Array(query.length).fill(NaN);  // poisoned: every element must be written
  cache.attend(0, query, out);
  const ref = referenceAttention(state, query, qHeads);
  const errs = rowRelativeErrors(out, ref, state.headDim);
  const worst = maxOf(errs);
  if (!(worst <= tol)) throw new Error(`${what}: worst row relative error ${worst} > ${tol}`);
  return worst;
}

/** Bytes the reference places (quantized groups), as a 0xff mask: encode a state whose codes/scales are all ones. */
function pageMask(state: CacheState, pageTokens: number): Uint8Array[] {
  const ones: CacheState = { ...state, quantized: {
    keys: { ...state.quantized.keys, codes: state.quantized.keys.codes.map(() => (1 << state.formats.keys.bits) - 1), scales: state.quantized.keys.scales.map(() => 0xffff), zeros: state.quantized.keys.zeros.map(() => 0xffff), rows: state.quantized.keys.rows.map(() => 0xffff) },
    values: { ...state.quantized.values, codes: state.quantized.values.codes.map(() => (1 << state.formats.values.bits) - 1), scales: state.quantized.values.scales.map(() => 0xffff), zeros: state.quantized.values.zeros.map(() => 0xffff), rows: state.quantized.values.rows.map(() => 0xffff) },
  } };
  return encodePages(ones, pageTokens).pages;
}

/** The layer's memory, read back, equals what the reference says the cache holds. */
function checkLayout(cache: KVCache, state: CacheState, what: string): void {
  const snap = cache.snapshot(0);
  const fail = (m: string) => { throw new Error(`${what}: ${m}`); };
  if (snap.tokens !== state.tokens) fail(`tokens ${snap.tokens} != ${state.tokens}`);
  if (snap.quantizedKeys !== state.quantizedKeys) fail(`quantizedKeys ${snap.quantizedKeys} != ${state.quantizedKeys}`);
  if (snap.quantizedValues !== state.quantizedValues) fail(`quantizedValues ${snap.quantizedValues} != ${state.quantizedValues}`);
  const row = state.kvHeads * state.headDim;
  for (const which of ['keys', 'values'] as const) {
    const sink = encodeSink(state, which), got = which === 'keys' ? snap.sinkKeys : snap.sinkValues;
    for (let i = 0; i < state.sinkHeld * row; i++) if (got[i] !== sink[i]) fail(`sink ${which} element ${i}`);
    const ring = encodeRing(state, which, snap.ringCapacity), gotRing = which === 'keys' ? snap.ringKeys : snap.ringValues;
    for (let slot = 0; slot < snap.ringCapacity; slot++) {
      if (!ring.live[slot]) continue;
      for (let i = slot * row; i < (slot + 1) * row; i++) if (gotRing[i] !== ring.rows[i]) fail(`ring ${which} slot ${slot}`);
    }
  }
  const expected = encodePages(state, snap.pageTokens).pages, mask = pageMask(state, snap.pageTokens);
  if (snap.pages.length < expected.length) fail(`${snap.pages.length} pages < ${expected.length}`);
  for (let p = 0; p < expected.length; p++)
    for (let i = 0; i < expected[p].length; i++)
      if (mask[p][i] && snap.pages[p][i] !== expected[p][i]) fail(`page ${p} byte ${i}: ${snap.pages[p][i]} != ${expected[p][i]}`);
  if ((snap.keyNorm === null) !== (state.keyNorm === null)) fail(`keyNorm presence differs`);
  if (snap.keyNorm && state.keyNorm) for (let i = 0; i < row; i++) if (snap.keyNorm[i] !== state.keyNorm[i]) fail(`keyNorm[${i}]`);
}

describe.each(backendCases())('KVCache on $label', ({ label, options }) => {
  const seed = testSeed(`cache.test ${label}`);

  test.each(PRESET_NAMES.map((p) => [p]))('%s: attend after prefills of 1..1000 tokens, GQA 1/4/8, d 64/128', (preset) => {
    const r = rng(seed ^ preset.length * 7919);
    const worst: number[] = [];
    for (const { ratio, headDim } of SHAPES) {
      for (const prefill of PREFILLS) {
        const qHeads = KV_HEADS * ratio;
        const cache = new KVCache({ layers: 1, qHeads, kvHeads: KV_HEADS, headDim, maxTokens: 2048, preset, ...options });
        const { keys, values } = randomKV(r, prefill, KV_HEADS, headDim);
        cache.prefill(0, keys, values);
        const state = cacheState(configFor(preset), historyFor(keys, values, headDim, prefill));
        const query = randomVector(r, qHeads * headDim);
        worst.push(checkAttend(cache, state, query, qHeads, tolFor(preset), `${label} ${preset} r=${ratio} d=${headDim} prefill=${prefill}`));
        checkLayout(cache, state, `${label} ${preset} prefill=${prefill}`);
        cache.dispose();
      }
    }
    console.log(`${label} ${preset}: worst row error after prefill ${maxOf(worst).toExponential(2)}`);
  });

  test.each(PRESET_NAMES.map((p, i) => [p, i]))('%s: attend and layout after each of 300 appends', (preset, i) => {
    const r = rng(seed ^ (i + 1) * 104729);
    const { ratio, headDim } = SHAPES[(i as number) % SHAPES.length];
    const qHeads = KV_HEADS * ratio;
    let worst = 0;
    for (const prefill of [1, 129]) {
      const total = prefill + 300;
      const { keys, values } = randomKV(r, total, KV_HEADS, headDim);
      const row = KV_HEADS * headDim;
      const cache = new KVCache({ layers: 1, qHeads, kvHeads: KV_HEADS, headDim, maxTokens: total, preset, ...options });
      cache.prefill(0, keys.subarray(0, prefill * row), values.subarray(0, prefill * row));
      const history = historyFor(keys, values, headDim, prefill);
      for (let t = prefill; t < total; t++) {
        cache.append(0, keys.subarray(t * row, (t + 1) * row), values.subarray(t * row, (t + 1) * row));
        const state = cacheState(configFor(preset), history, t + 1);
        checkLayout(cache, state, `${label} ${preset} prefill=${prefill} after token ${t}`);
        worst = Math.max(worst, checkAttend(cache, state, randomVector(r, qHeads * headDim), qHeads, tolFor(preset), `${label} ${preset} prefill=${prefill} token ${t}`));
      }
      expect(cache.length(0)).toBe(total);
      expect(() => cache.append(0, keys.subarray(0, row), values.subarray(0, row))).toThrow(RangeError);
      expect(cache.length(0)).toBe(total);
      cache.dispose();
    }
    console.log(`${label} ${preset} r=${ratio} d=${headDim}: worst row error over 600 appends ${worst.toExponential(2)}`);
  });
});
