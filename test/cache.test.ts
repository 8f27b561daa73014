// cache.test.ts - KVCache.attend on every backend against the fp64 reference over the dequantized cache
// (same windows, same normalization), and the cache layout read back byte by byte after every append.
import { KVCache, PRESET_NAMES, PresetName } from '../lib';
import { Orientation, cacheState, configFor, encodePages, encodeRing, encodeSink, halfToNumber, keyNormRange, quantizedCount, referenceAttention, rowRelativeErrors, sinkHeld, CacheState, QuantizedMatrix } from '../lib/reference';
import { backendCases, maxOf, randomKV, randomVector, rng, testSeed } from './support';

// Tolerances:
//  - float paths (fp16, and every path of the sim/cuda kernels): relative L2 error per output row (one query head)
//    <= 1e-4 vs the fp64 reference. Products and sums run in fp32 over <= ~1300 tokens.
//  - integer paths of the cpu backend, InnerQ and KIVI-style alike: the operand that meets the codes (the folded
//    query, the probabilities; for KIVI-style each multiplied by its group's scale first) is quantized to int8/u8
//    per 32-slice once per step (DESIGN.md §3, csrc/cpu/cpu_kernels.h), so the error is not a fixed fraction: every
//    output element is checked against the bound derived in int8Bound() below (the correctness check), and each
//    row's L2 error must stay within INT8_ROW_TOL of the row's attention-weighted value magnitude
//    m_j = Σ_t p_t |v̂_tj| (a fidelity check: that bound is worst-case, ~15x above the typical error, so a coarser
//    int8 step could hide under it).
//    Why m and not the output: both error terms scale with m (int8Bound), while the output itself can nearly cancel
//    (values of both signs), which made a row tolerance relative to the output flaky: with randomKV's 20x outlier
//    key channels folded into the query, the innerq preset's worst row over 600 appends was 2.1-5.4 % of the output
//    in 13 seeds (5.4 % with INNERQ_SEED=823067159, over the 5e-2 this file used to hold) and 1.3-4.6 % of m.
//    KIVI-style rows (column-grouped keys) are held to KIVI_ROW_TOL instead. With the key codes still uncentered
//    (the int8 rounding e_j of q~_j = qf_j·a_gj multiplied by u_tj, about 2^(b-1) on average, so every token of a
//    32-token group shared the score shift Σ_j e_j·2^(b-1), which the softmax does not cancel), 11 seeds
//    (INNERQ_SEED=1..10 and 823067159; cpu and cpu-portable alike) gave worst rows of 6-22 % of m after the prefills
//    and 22-31 % (kivi-2, r=8 d=64) and 10-16 % (kivi-4, r=1 d=128) over 600 appends; 0.5 keeps InnerQ's ~1.6x
//    headroom over those. The kernel now centers the key codes through its constant term (cpu_kernels.h), which in
//    an fp64 model of the contract on this file's prefill cases took the worst row from 12.5-22 % of m to 4-10 %;
//    the limit was not tightened after that (not re-measured over the 11 seeds). The other reason KIVI-style rows
//    err more than InnerQ's: a_gj follows randomKV's 20x outlier key channels (no key normalization), so each
//    slice's int8 step is set by its outlier channel.
const FLOAT_TOL = 1e-4;
const INT8_ROW_TOL = 8e-2;
const KIVI_ROW_TOL = 0.5;
/** Presets whose quantized segment the cpu backend reads through its integer kernels (all but fp16). */
const integerPreset = (preset: PresetName) => preset.startsWith('innerq') || preset.startsWith('kivi');
const usesInt8 = (label: string, preset: PresetName) => label.startsWith('cpu') && integerPreset(preset);

/**
 * Per-element error bound of the cpu integer paths against the fp64 reference on the dequantized cache. Every
 * integer kernel replaces the float operand that meets the codes by σ·round(x/σ) per 32-slice (never the codes), an
 * error of at most σ/2 per element; which operand that is depends on the layout of the matrix.
 * Scores, with qf the folded query (query ⊙ keyNorm when key normalization is on, else query):
 *  - InnerQ keys (row-grouped): each 32-channel slice s of qf is replaced by its int8 image, σ_s = max_s |qf| / 127,
 *    so a quantized token's score moves by at most δ_t = Σ_s (σ_s/2)·Σ_{j∈s} |k̂_tj| / √d.
 *  - KIVI-style keys (column-grouped: k̂_tj = a_gj·u_tj + bz_gj for the token group g ∋ t, u the unsigned code,
 *    a = |scale|, bz = the zero (asym) or -a·2^(bits-1) (sym)): per token group the scale is folded into the query,
 *    q~_j = qf_j·a_gj, and q~ goes to int8 per 32-channel slice (σ_gs = max_s |q~| / 127) while Σ_j qf_j·bz_gj
 *    stays float. The int8 image meets the centered code u_tj - off (off = 2^(bits-1); the kernel adds
 *    off·(Σ_j q~_j - Σ_s σ_gs Σ_{j∈s} code_j) to the float term, csrc/cpu/cpu_kernels.h), so
 *    δ_t = Σ_s (σ_gs/2)·Σ_{j∈s} |u_tj - off| / √d.
 *  - fp16 tokens (sink, recent window): δ_t = 0.
 * Softmax: with Δ = max_t δ_t every probability moves by a factor in [e^-2Δ, e^2Δ] (grow = e^2Δ), so
 * |p̃_t - p_t| <= p_t (grow - 1), an output error of at most (grow - 1)·m_j.
 * Values: the weights of each 32-token slice of the quantized segment (aligned to multiples of 32 of the quantized
 * index t - sinkHeld; a kernel call may split a slice further, which only lowers its maximum) are non-negative and go
 * to unsigned 8 bits, σ = max w / 255, with p̃ <= grow·p (the kernel's weights are unnormalized, but the error
 * relative to their sum is the same):
 *  - InnerQ values (column-grouped): w_t = p̃_t meets v̂_tj: Σ_slices (max_slice p̃ / 510)·Σ_{t∈slice} |v̂_tj|.
 *  - KIVI-style values (row-grouped: v̂_tj = a_tg·u_tj + bz_tg for the channel group g ∋ j): w_t = p̃_t·a_tg meets
 *    the centered code u_tj - off (off = 2^(bits-1)) while Σ_t p̃_t·(bz_tg + a_tg·off) stays float:
 *    Σ_slices (max_{t∈slice} p̃_t·a_tg / 510)·Σ_{t∈slice} |u_tj - off|.
 * fp32 rounding: every score (quantized or fp16 token) is a d-term dot product of a query that was scaled and
 * folded in fp32, so it is off by at most γ_{d+2}·M_t / √d (γ_n = n·u / (1 - n·u), u = 2^-24, any summation order)
 * with M_t = Σ_j |q_j k_tj|. KIVI-style keys: the kernel's float sums are Σ_j qf_j·bz_gj, off·Σ_j q~_j,
 * off·Σ_s σ_gs Σ_j code_j (<= 1.13·off·Σ_j |q~_j|, as 16·σ_gs <= 0.13·Σ_{j∈s} |q~_j|) and Σ_s σ_gs·D_ts, the exact
 * integer sums (<= Σ_j |q~_j| u_tj + 0.13·(2^bits - 1)·Σ_j |q~_j|), and no value passes more than d + 2 + 3 + d/32
 * roundings, so M_t = Σ_j |qf_j|·(a_gj (u_tj + 4·off) + |bz_gj|) with γ_{d+d/32+5}. That adds to δ_t before the
 * softmax step above. (A portable-table step at 103 fp16
 * tokens, d = 128, had a relative error of 1.3e-5 from this alone, over the 1e-5 slack below.) The value sums' own
 * rounding is bounded by 1e-5 of m_j.
 */
interface Int8Bound { bound: Float64Array; magnitude: Float64Array }

/** One quantized group's decode parameters: k̂ = a·u + bz (a = |scale|; bz = zero when asym, -a·2^(bits-1) when sym). */
function groupParams(m: QuantizedMatrix, gi: number): { a: number; bz: number } {
  const a = halfToNumber(m.scales[gi] & 0x7fff);
  return { a, bz: m.scales[gi] & 0x8000 ? halfToNumber(m.zeros[gi]) : -a * 2 ** (m.format.bits - 1) };
}

/** The per-element bound above and, per element, the attention-weighted value magnitude m_j = Σ_t p_t |v̂_tj|. */
function int8Bound(state: CacheState, query: Float32Array, qHeads: number): Int8Bound {
  const { tokens: T, kvHeads, headDim: d, keyNorm, sinkHeld } = state;
  const S = state.config.sinkTokens, r = qHeads / kvHeads;
  const qk = state.quantized.keys, qv = state.quantized.values;
  const kiviKeys = qk.format.orientation === Orientation.ColGrouped, kiviValues = qv.format.orientation === Orientation.RowGrouped;
  const quantizedKeys = qk.format.orientation === Orientation.Fp16Rows ? 0 : state.quantizedKeys;
  const quantizedValues = qv.format.orientation === Orientation.Fp16Rows ? 0 : state.quantizedValues;
  const bound = new Float64Array(qHeads * d), magnitude = new Float64Array(qHeads * d);
  const u = 2 ** -24, gammaOf = (n: number) => (n * u) / (1 - n * u), gamma = gammaOf(d + 2), gammaKivi = gammaOf(d + d / 32 + 5);
  for (let h = 0; h < qHeads; h++) {
    const kh = Math.floor(h / r);
    const qf = new Float64Array(d);
    for (let j = 0; j < d; j++) qf[j] = query[h * d + j] * (keyNorm ? keyNorm[kh * d + j] : 1);
    // InnerQ keys: σ_s over qf alone, once per step
    const sigma = new Float64Array(d / 32);
    if (!kiviKeys) for (let s = 0; s < d / 32; s++) for (let j = s * 32; j < s * 32 + 32; j++) sigma[s] = Math.max(sigma[s], Math.abs(qf[j]) / 127);
    const scores = new Float64Array(T);
    let delta = 0;
    for (let t = 0; t < T; t++) {
      const quantizedKey = t >= S && t - S < quantizedKeys;
      let dot = 0, dt = 0, rounding = 0;  // rounding: the fp32 term γ·M_t
      if (quantizedKey && kiviKeys) {
        const G = qk.format.groupSize, qi = t - S, tg = Math.floor(qi / G), base = (tg * kvHeads + kh) * d;
        const off = 2 ** (qk.format.bits - 1);
        let magnitude = 0;
        // σ_gs over q~ = qf·a of this token group (recomputed per token: cheap next to the reference itself)
        for (let s = 0; s < d / 32; s++) {
          let smax = 0, usum = 0;
          for (let j = s * 32; j < s * 32 + 32; j++) {
            const { a, bz } = groupParams(qk, base + j), code = qk.codes[(base + j) * G + (qi % G)];
            smax = Math.max(smax, Math.abs(qf[j] * a) / 127);
            usum += Math.abs(code - off);
            dot += qf[j] * state.storedKeys[(t * kvHeads + kh) * d + j];
            magnitude += Math.abs(qf[j]) * (a * (code + 4 * off) + Math.abs(bz));
          }
          dt += (smax / 2) * usum;
        }
        rounding = gammaKivi * magnitude;
      } else {
        let magnitude = 0;
        for (let j = 0; j < d; j++) {
          const k = state.storedKeys[(t * kvHeads + kh) * d + j];
          const term = (quantizedKey ? qf[j] : query[h * d + j]) * k;
          dot += term;
          magnitude += Math.abs(term);
          if (quantizedKey) dt += (sigma[j >> 5] / 2) * Math.abs(k);
        }
        rounding = gamma * magnitude;
      }
      scores[t] = dot / Math.sqrt(d);
      delta = Math.max(delta, (dt + rounding) / Math.sqrt(d));
    }
    let m = -Infinity;
    for (const x of scores) m = Math.max(m, x);
    let z = 0;
    const p = scores.map((x) => Math.exp(x - m));
    for (const x of p) z += x;
    for (let t = 0; t < T; t++) p[t] /= z;
    const grow = Math.exp(2 * delta);
    const valueSide = new Float64Array(d);
    const end = sinkHeld + quantizedValues;
    for (let s0 = sinkHeld; s0 < end; s0 += 32) {
      const s1 = Math.min(s0 + 32, end);
      if (kiviValues) {
        const G = qv.format.groupSize, off = 2 ** (qv.format.bits - 1);
        for (let g = 0; g < d / G; g++) {
          let wmax = 0;
          for (let t = s0; t < s1; t++) wmax = Math.max(wmax, p[t] * groupParams(qv, ((t - sinkHeld) * kvHeads + kh) * (d / G) + g).a);
          for (let i = 0; i < G; i++) {
            let usum = 0;
            for (let t = s0; t < s1; t++) usum += Math.abs(qv.codes[(((t - sinkHeld) * kvHeads + kh) * (d / G) + g) * G + i] - off);
            valueSide[g * G + i] += (wmax * grow / 510) * usum;
          }
        }
      } else {
        let pmax = 0;
        for (let t = s0; t < s1; t++) pmax = Math.max(pmax, p[t]);
        for (let j = 0; j < d; j++) {
          let vsum = 0;
          for (let t = s0; t < s1; t++) vsum += Math.abs(state.storedValues[(t * kvHeads + kh) * d + j]);
          valueSide[j] += (pmax * grow / 510) * vsum;
        }
      }
    }
    for (let j = 0; j < d; j++) {
      let mass = 0;
      for (let t = 0; t < T; t++) mass += p[t] * Math.abs(state.storedValues[(t * kvHeads + kh) * d + j]);
      bound[h * d + j] = (grow - 1) * mass + valueSide[j] + 1e-5 * mass + 1e-6;
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
  const tol = e.state.formats.keys.orientation === Orientation.ColGrouped ? KIVI_ROW_TOL : INT8_ROW_TOL;
  if (!(worst <= tol)) throw new Error(`${what}: worst row error ${worst} of the attention-weighted value magnitude > ${tol}`);
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
      e ??= expect_(state, query, qHeads, cache.options.pageTokens, cache.kernelInfo().ringCapacity, integerPreset(preset));
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
    for (const [label, w] of worst) console.log(`${label} ${preset}: worst row error (cpu innerq/kivi: of the value magnitude, others: of the output) after prefill ${w.toExponential(2)}`);
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
        const e = expect_(state, query, qHeads, runs[0].cache.options.pageTokens, info.ringCapacity, integerPreset(preset));
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
    for (const [label, w] of worst) console.log(`${label} ${preset} r=${ratio} d=${headDim}: worst row error (cpu innerq/kivi: of the value magnitude, others: of the output) over 600 appends ${w.toExponential(2)}`);
  });
});
