// cache.test.ts - KVCache.attend on every backend against the fp64 reference over the dequantized cache
// (same windows, same normalization), and the cache layout read back byte by byte after every append.
import { KVCache, PRESET_NAMES, PresetName } from '../lib';
import { cacheState, configFor, encodePages, encodeRing, encodeSink, halfToNumber, keyNormRange, quantizedCount, referenceAttention, rowRelativeErrors, sinkHeld, CacheState, QuantizedMatrix } from '../lib/reference';
import { backendCases, maxOf, randomKV, randomVector, rng, testSeed } from './support';

// Tolerances:
//  - float paths (fp16, KIVI-style, and every path of the sim/cuda kernels): relative L2 error per output row
//    (one query head) <= 1e-4 vs the fp64 reference. Products and sums run in fp32 over <= ~1300 tokens.
//  - InnerQ integer paths of the cpu backend: the folded query and the probabilities are quantized to int8 per
//    32-slice once per step (DESIGN.md §3), so the error is not a fixed fraction: every output element is
//    checked against the bound derived in int8Bound() below (the correctness check), and each row's L2 error must
//    stay within INT8_ROW_TOL of the row's attention-weighted value magnitude m_j = Σ_t p_t |v̂_tj| (a fidelity
//    check: that bound is worst-case, ~15x above the typical error, so a coarser int8 step could hide under it).
//    Why m and not the output: both error terms scale with m (int8Bound), while the output itself can nearly cancel
//    (values of both signs), which made a row tolerance relative to the output flaky: with randomKV's 20x outlier
//    key channels folded into the query, the innerq preset's worst row over 600 appends was 2.1-5.4 % of the output
//    in 13 seeds (5.4 % with INNERQ_SEED=823067159, over the 5e-2 this file used to hold) and 1.3-4.6 % of m.
const FLOAT_TOL = 1e-4;
const INT8_ROW_TOL = 8e-2;
const usesInt8 = (label: string, preset: PresetName) => label.startsWith('cpu') && preset.startsWith('innerq');

/**
 * Per-element error bound of the cpu InnerQ integer path against the fp64 reference on the dequantized cache.
 * Scores: each 32-channel slice s of the folded query q' is replaced by σ_s·round(q'/σ_s), σ_s = max|q'_s|/127,
 * so a quantized token's score moves by at most δ_t = Σ_s (σ_s/2)·Σ_{j∈s} |k̂_tj| / √d (fp16 tokens: 0).
 * Softmax: with Δ = max_t δ_t every probability moves by a factor in [e^-2Δ, e^2Δ], so
 * |p̃_t - p_t| <= p_t (e^2Δ - 1). Values: each 32-token slice of quantized value tokens (non-negative weights)
 * is replaced by its unsigned 8-bit image (σ = max p̃/255), an error of at most
 * Σ_slices (max_slice p̃ / 510)·Σ_{t∈slice} |v̂_tj|.
 * fp32 rounding: every score (quantized or fp16 token) is a d-term dot product of a query that was scaled and
 * folded in fp32, so it is off by at most γ_{d+2}·Σ_j |q_j k_tj| / √d (γ_n = n·u / (1 - n·u), u = 2^-24, any
 * summation order); that adds to δ_t before the softmax step above. (A portable-table step at 103 fp16 tokens,
 * d = 128, had a relative error of 1.3e-5 from this alone, over the 1e-5 slack below.) The value sums' own
 * rounding is bounded by 1e-5 of Σ_t p_t|v̂_tj|.
 */
interface Int8Bound { bound: Float64Array; magnitude: Float64Array }

/** The per-element bound above and, per element, the attention-weighted value magnitude m_j = Σ_t p_t |v̂_tj|. */
function int8Bound(state: CacheState, query: Float32Array, qHeads: number): Int8Bound {
  const { tokens: T, kvHeads, headDim: d, keyNorm, sinkHeld } = state;
  const S = state.config.sinkTokens, r = qHeads / kvHeads;
  const bound = new Float64Array(qHeads * d), magnitude = new Float64Array(qHeads * d);
  for (let h = 0; h < qHeads; h++) {
    const kh = Math.floor(h / r);
    const qf = new Float64Array(d);
    for (let j = 0; j < d; j++) qf[j] = query[h * d + j] * (keyNorm ? keyNorm[kh * d + j] : 1);
    const sigma = new Float64Array(d / 32);
    for (let s = 0; s < d / 32; s++) for (let j = s * 32; j < s * 32 + 32; j++) sigma[s] = Math.max(sigma[s], Math.abs(qf[j]) / 127);
    const scores = new Float64Array(T);
    let delta = 0;
    const u = 2 ** -24, gamma = ((d + 2) * u) / (1 - (d + 2) * u);
    for (let t = 0; t < T; t++) {
      const quantizedKey = t >= S && t - S < state.quantizedKeys;
      let dot = 0, dt = 0, magnitude = 0;
      for (let j = 0; j < d; j++) {
        const k = state.storedKeys[(t * kvHeads + kh) * d + j];
        const term = (quantizedKey ? qf[j] : query[h * d + j]) * k;
        dot += term;
        magnitude += Math.abs(term);
        if (quantizedKey) dt += (sigma[j >> 5] / 2) * Math.abs(k);
      }
      scores[t] = dot / Math.sqrt(d);
      delta = Math.max(delta, (dt + gamma * magnitude) / Math.sqrt(d));
    }
    let m = -Infinity;
    for (const x of scores) m = Math.max(m, x);
    let z = 0;
    const p = scores.map((x) => Math.exp(x - m));
    for (const x of p) z += x;
    for (let t = 0; t < T; t++) p[t] /= z;
    const grow = Math.exp(2 * delta);
    for (let j = 0; j < d; j++) {
      let mass = 0, valueSide = 0;
      for (let t = 0; t < T; t++) mass += p[t] * Math.abs(state.storedValues[(t * kvHeads + kh) * d + j]);
      for (let s0 = sinkHeld; s0 < sinkHeld + state.quantizedValues; s0 += 32) {
        let pmax = 0, vsum = 0;
        for (let t = s0; t < Math.min(s0 + 32, sinkHeld + state.quantizedValues); t++) {
          pmax = Math.max(pmax, p[t]);
          vsum += Math.abs(state.storedValues[(t * kvHeads + kh) * d + j]);
        }
        valueSide += (pmax * grow / 510) * vsum;
      }
      bound[h * d + j] = (grow - 1) * mass + valueSide + 1e-5 * mass + 1e-6;
      magnitude[h * d + j] = mass;
    }
  }
  return { bound, magnitude };
}

/**
 * The state after the first `T` tokens, derived from the state after all of them: quantized groups never change
 * once formed (the reference suite tests that), so only the counts shrink and tokens not yet quantized at T are
 * still their raw fp16 values. Exactly cacheState(config, history, T), at a fraction of its cost.
 */
function stateAt(final: CacheState, T: number, prefillTokens: number): CacheState {
  const c = final.config, row = final.kvHeads * final.headDim, S = c.sinkTokens;
  const qk = quantizedCount(T, final.formats.keys, c), qv = quantizedCount(T, final.formats.values, c);
  const range = keyNormRange(c, final.formats.keys, Math.min(prefillTokens, T), T);
  const storedKeys = final.storedKeys.slice(0, T * row), storedValues = final.storedValues.slice(0, T * row);
  for (let i = (S + qk) * row; i < T * row; i++) storedKeys[i] = halfToNumber(final.keyBits[i]);
  for (let i = (S + qv) * row; i < T * row; i++) storedValues[i] = halfToNumber(final.valueBits[i]);
  const cut = (m: QuantizedMatrix, count: number): QuantizedMatrix => {
    const f = m.format, G = f.groupSize;
    const groups = f.orientation === 1 ? count * final.kvHeads * (final.headDim / G) : f.orientation === 2 ? (count / G) * row : 0;
    return { format: f, count, scales: m.scales.slice(0, groups), zeros: m.zeros.slice(0, groups), codes: m.codes.slice(0, groups * G), rows: m.rows.slice(0, count * row) };
  };
  return {
    ...final, tokens: T, sinkHeld: sinkHeld(T, c), quantizedKeys: qk, quantizedValues: qv,
    keyNorm: range ? final.keyNorm : null, keyNormTokens: range,
    keyBits: final.keyBits.slice(0, T * row), valueBits: final.valueBits.slice(0, T * row), storedKeys, storedValues,
    quantized: { keys: cut(final.quantized.keys, qk), values: cut(final.quantized.values, qv) },
  };
}

const SHAPES = [
  { ratio: 1, headDim: 64 }, { ratio: 4, headDim: 128 }, { ratio: 8, headDim: 64 },
  { ratio: 1, headDim: 128 }, { ratio: 4, headDim: 64 }, { ratio: 8, headDim: 128 },
];
const KV_HEADS = 2;
const PREFILLS = [1, 31, 127, 128, 129, 1000];

function historyFor(keys: Float32Array, values: Float32Array, headDim: number, prefillTokens: number) {
  return { kvHeads: KV_HEADS, headDim, keys, values, prefillTokens };
}

interface Expected { state: CacheState; query: Float32Array; ref: Float64Array; int8: Int8Bound | null; layout: ExpectedLayout }

/** Everything a backend's result is compared with, computed once per step for all backends. */
function expect_(state: CacheState, query: Float32Array, qHeads: number, pageTokens: number, ringCapacity: number, int8: boolean): Expected {
  return { state, query, ref: referenceAttention(state, query, qHeads), int8: int8 ? int8Bound(state, query, qHeads) : null,
    layout: expectedLayout(state, pageTokens, ringCapacity) };
}

function checkAttend(cache: KVCache, e: Expected, int8: boolean, what: string): number {
  const out = new Float32Array(e.query.length).fill(NaN);  // poisoned: every element must be written
  cache.attend(0, e.query, out);
  if (!int8) {
    const worst = maxOf(rowRelativeErrors(out, e.ref, e.state.headDim));
    if (!(worst <= FLOAT_TOL)) throw new Error(`${what}: worst row relative error ${worst} > ${FLOAT_TOL}`);
    return worst;
  }
  const { bound, magnitude } = e.int8!;
  for (let i = 0; i < out.length; i++) {
    if (!(Math.abs(out[i] - e.ref[i]) <= bound[i])) throw new Error(`${what}: element ${i} error ${Math.abs(out[i] - e.ref[i])} > derived bound ${bound[i]}`);
  }
  const worst = maxOf(rowRelativeErrors(out, e.ref, e.state.headDim, magnitude));  // ||out - ref|| / ||m|| per row
  if (!(worst <= INT8_ROW_TOL)) throw new Error(`${what}: worst row error ${worst} of the attention-weighted value magnitude > ${INT8_ROW_TOL}`);
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

interface ExpectedLayout {
  sink: { keys: Uint16Array; values: Uint16Array };
  ring: { keys: { rows: Uint16Array; live: Uint8Array }; values: { rows: Uint16Array; live: Uint8Array } };
  pages: Uint8Array[];
  mask: Uint8Array[];
}

function expectedLayout(state: CacheState, pageTokens: number, ringCapacity: number): ExpectedLayout {
  return {
    sink: { keys: encodeSink(state, 'keys'), values: encodeSink(state, 'values') },
    ring: { keys: encodeRing(state, 'keys', ringCapacity), values: encodeRing(state, 'values', ringCapacity) },
    pages: encodePages(state, pageTokens).pages,
    mask: pageMask(state, pageTokens),
  };
}

/** The layer's memory, read back, equals what the reference says the cache holds. */
function checkLayout(cache: KVCache, e: Expected, what: string): void {
  const { state, layout } = e;
  const snap = cache.snapshot(0);
  const fail = (m: string) => { throw new Error(`${what}: ${m}`); };
  if (snap.tokens !== state.tokens) fail(`tokens ${snap.tokens} != ${state.tokens}`);
  if (snap.quantizedKeys !== state.quantizedKeys) fail(`quantizedKeys ${snap.quantizedKeys} != ${state.quantizedKeys}`);
  if (snap.quantizedValues !== state.quantizedValues) fail(`quantizedValues ${snap.quantizedValues} != ${state.quantizedValues}`);
  const row = state.kvHeads * state.headDim;
  for (const which of ['keys', 'values'] as const) {
    const sink = layout.sink[which], got = which === 'keys' ? snap.sinkKeys : snap.sinkValues;
    for (let i = 0; i < state.sinkHeld * row; i++) if (got[i] !== sink[i]) fail(`sink ${which} element ${i}`);
    const ring = layout.ring[which], gotRing = which === 'keys' ? snap.ringKeys : snap.ringValues;
    for (let slot = 0; slot < snap.ringCapacity; slot++) {
      if (!ring.live[slot]) continue;
      for (let i = slot * row; i < (slot + 1) * row; i++) if (gotRing[i] !== ring.rows[i]) fail(`ring ${which} slot ${slot}`);
    }
  }
  const expected = layout.pages, mask = layout.mask;
  if (snap.pages.length < expected.length) fail(`${snap.pages.length} pages < ${expected.length}`);
  for (let p = 0; p < expected.length; p++)
    for (let i = 0; i < expected[p].length; i++)
      if (mask[p][i] && snap.pages[p][i] !== expected[p][i]) fail(`page ${p} byte ${i}: ${snap.pages[p][i]} != ${expected[p][i]}`);
  if ((snap.keyNorm === null) !== (state.keyNorm === null)) fail(`keyNorm presence differs`);
  if (snap.keyNorm && state.keyNorm) for (let i = 0; i < row; i++) if (snap.keyNorm[i] !== state.keyNorm[i]) fail(`keyNorm[${i}]`);
}

// The fp64 reference is the expensive part, so every backend runs on the same inputs inside one loop and
// each expected state is computed once.
describe('KVCache on every backend', () => {
  const cases = backendCases();
  const seed = testSeed('cache.test');
  const make = (preset: PresetName, qHeads: number, headDim: number, maxTokens: number) =>
    cases.map(({ label, options }) => ({ label, cache: new KVCache({ layers: 1, qHeads, kvHeads: KV_HEADS, headDim, maxTokens, preset, ...options }) }));
  /** Prefill one history on every backend; check each cache's layout and attend against one reference. Row error per backend. */
  const prefillAndCheck = (preset: PresetName, qHeads: number, headDim: number, maxTokens: number, keys: Float32Array, values: Float32Array,
    state: CacheState, query: Float32Array, what: string): Map<string, number> => {
    const errors = new Map<string, number>();
    let e: Expected | undefined;
    for (const { label, cache } of make(preset, qHeads, headDim, maxTokens)) {
      cache.prefill(0, keys, values);
      e ??= expect_(state, query, qHeads, cache.options.pageTokens, cache.kernelInfo().ringCapacity, preset.startsWith('innerq'));
      errors.set(label, checkAttend(cache, e, usesInt8(label, preset), `${label} ${preset} ${what}`));
      checkLayout(cache, e, `${label} ${preset} ${what}`);
      cache.dispose();
    }
    return errors;
  };

  test.each(PRESET_NAMES.map((p) => [p]))('%s: attend and layout after prefills of 1..1000 tokens, GQA 1/4/8, d 64/128', (preset) => {
    const r = rng(seed ^ preset.length * 7919);
    const worst = new Map<string, number>();
    for (const { ratio, headDim } of SHAPES) {
      for (const prefill of PREFILLS) {
        const qHeads = KV_HEADS * ratio;
        const { keys, values } = randomKV(r, prefill, KV_HEADS, headDim);
        const state = cacheState(configFor(preset), historyFor(keys, values, headDim, prefill));
        const query = randomVector(r, qHeads * headDim);
        const errors = prefillAndCheck(preset, qHeads, headDim, 2048, keys, values, state, query, `r=${ratio} d=${headDim} prefill=${prefill}`);
        for (const [label, err] of errors) worst.set(label, Math.max(worst.get(label) ?? 0, err));
      }
    }
    for (const [label, w] of worst) console.log(`${label} ${preset}: worst row error (cpu innerq: of the value magnitude, others: of the output) after prefill ${w.toExponential(2)}`);
  });

  // A group whose minimum is zero and holds both +0 and -0: the reference (Math.min) takes -0 whatever the order,
  // so the stored zero point is -0 (0x8000) on every backend, never the sign of whichever zero came last.
  test.each(PRESET_NAMES.map((p) => [p]))('%s: groups of signed zeros store the reference bytes', (preset) => {
    const r = rng(seed ^ 0x5a11);
    const headDim = 64, tokens = 300, qHeads = KV_HEADS * 4, n = tokens * KV_HEADS * headDim;
    const keys = new Float32Array(n), values = new Float32Array(n);
    for (const m of [keys, values]) {
      for (let i = 0; i < n; i++) {
        const u = r();
        m[i] = u < 0.35 ? 0 : u < 0.7 ? -0 : u < 0.85 ? 0.25 + r() : -(0.25 + r());
      }
      // whole groups of nothing but +0 / -0, in both orders, and one-signed groups with zeros
      for (let i = 0; i < 2 * headDim; i++) m[i] = i % 2 ? -0 : 0;
      for (let i = 2 * headDim; i < 4 * headDim; i++) m[i] = i % 2 ? 0 : -0;
      for (let i = 4 * headDim; i < 6 * headDim; i++) m[i] = i % 3 === 0 ? -0 : i % 3 === 1 ? 0 : 1 + r();
    }
    const state = cacheState(configFor(preset), historyFor(keys, values, headDim, tokens));
    prefillAndCheck(preset, qHeads, headDim, 512, keys, values, state, randomVector(r, qHeads * headDim), 'signed zeros');
  });

  test.each(PRESET_NAMES.map((p, i) => [p, i]))('%s: attend and layout after each of 300 appends', (preset, i) => {
    const r = rng(seed ^ ((i as number) + 1) * 104729);
    const { ratio, headDim } = SHAPES[(i as number) % SHAPES.length];
    const qHeads = KV_HEADS * ratio;
    const worst = new Map<string, number>();
    for (const prefill of [1, 129]) {
      const total = prefill + 300;
      const { keys, values } = randomKV(r, total, KV_HEADS, headDim);
      const row = KV_HEADS * headDim;
      const runs = make(preset, qHeads, headDim, total);
      for (const { cache } of runs) cache.prefill(0, keys.subarray(0, prefill * row), values.subarray(0, prefill * row));
      const final = cacheState(configFor(preset), historyFor(keys, values, headDim, prefill));
      for (let t = prefill; t < total; t++) {
        const state = stateAt(final, t + 1, prefill);
        // spot-check the shortcut against the full reference now and then
        if (t % 97 === 0) {
          const full = cacheState(configFor(preset), historyFor(keys, values, headDim, prefill), t + 1);
          expect([state.quantizedKeys, state.quantizedValues, state.keyNorm]).toEqual([full.quantizedKeys, full.quantizedValues, full.keyNorm]);
          expect(state.storedKeys).toEqual(full.storedKeys);
          expect(state.storedValues).toEqual(full.storedValues);
        }
        const query = randomVector(r, qHeads * headDim);
        const info = runs[0].cache.kernelInfo();
        const e = expect_(state, query, qHeads, runs[0].cache.options.pageTokens, info.ringCapacity, preset.startsWith('innerq'));
        for (const { label, cache } of runs) {
          cache.append(0, keys.subarray(t * row, (t + 1) * row), values.subarray(t * row, (t + 1) * row));
          const what = `${label} ${preset} prefill=${prefill} after token ${t}`;
          checkLayout(cache, e, what);
          worst.set(label, Math.max(worst.get(label) ?? 0, checkAttend(cache, e, usesInt8(label, preset), what)));
        }
      }
      for (const { cache } of runs) {
        expect(cache.length(0)).toBe(total);
        expect(() => cache.append(0, keys.subarray(0, row), values.subarray(0, row))).toThrow(RangeError);
        expect(cache.length(0)).toBe(total);
        cache.dispose();
      }
    }
    for (const [label, w] of worst) console.log(`${label} ${preset} r=${ratio} d=${headDim}: worst row error (cpu innerq: of the value magnitude, others: of the output) over 600 appends ${w.toExponential(2)}`);
  });
});
