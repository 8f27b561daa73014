// attention.ts - fp64 decode attention, and an exact model of what the cache stores (windows, key
// normalization, quantized groups), which together give the oracle every backend is tested against.

import { halfToNumber, toHalfBits } from './fp16';
import {
  MatrixFormat,
  Orientation,
  QuantMode,
  groupBytes,
  hasZeros,
  packGroup,
  pageLayout,
  PageLayout,
} from './format';
import { KEY_NORM_FLOOR, dequantizeCodeExact, effectiveBits, keyNormFactor, normalizeKey, quantizeGroup } from './quantizer';

// ---- plain attention ----------------------------------------------------------------------------------------

/** Shape of a decode-attention problem. keys/values are [tokens][kvHeads][headDim], query [qHeads][headDim]. */
export interface AttentionShape {
  tokens: number;
  qHeads: number;
  kvHeads: number;
  headDim: number;
}

/** The kv head serving query head h: floor(h / (qHeads / kvHeads)). */
export function kvHeadOf(h: number, qHeads: number, kvHeads: number): number {
  return Math.floor(h / (qHeads / kvHeads));
}

/** Numbers of a Float32Array/Float64Array/number[]; a Uint16Array is read as binary16 bit patterns. */
export function toNumbers(a: ArrayLike<number> | Uint16Array): Float64Array {
  const out = new Float64Array(a.length);
  if (a instanceof Uint16Array) for (let i = 0; i < a.length; i++) out[i] = halfToNumber(a[i]);
  else for (let i = 0; i < a.length; i++) out[i] = a[i];
  return out;
}

/** softmax in fp64, shifted by the max (stable). */
export function softmax(s: ArrayLike<number>): Float64Array {
  let m = -Infinity;
  for (let i = 0; i < s.length; i++) m = Math.max(m, s[i]);
  const p = new Float64Array(s.length);
  let z = 0;
  for (let i = 0; i < s.length; i++) z += p[i] = Math.exp(s[i] - m);
  for (let i = 0; i < s.length; i++) p[i] /= z;
  return p;
}

/**
 * Decode attention in fp64: out[h] = softmax_t(q_h . K[t, kv(h)] / sqrt(d)) . V[:, kv(h)].
 * keys/values: [tokens][kvHeads][headDim] (a Uint16Array is binary16 bits); query: [qHeads][headDim].
 * Returns [qHeads][headDim].
 */
export function attention(
  keys: ArrayLike<number>,
  values: ArrayLike<number>,
  query: ArrayLike<number>,
  shape: AttentionShape,
): Float64Array {
  const { tokens: T, qHeads, kvHeads, headDim: d } = shape;
  const K = toNumbers(keys),
    V = toNumbers(values),
    Q = toNumbers(query);
  const out = new Float64Array(qHeads * d);
  for (let h = 0; h < qHeads; h++) {
    const kh = kvHeadOf(h, qHeads, kvHeads);
    const s = new Float64Array(T);
    for (let t = 0; t < T; t++) {
      let dot = 0;
      for (let j = 0; j < d; j++) dot += Q[h * d + j] * K[(t * kvHeads + kh) * d + j];
      s[t] = dot / Math.sqrt(d);
    }
    const p = softmax(s);
    for (let t = 0; t < T; t++)
      for (let j = 0; j < d; j++) out[h * d + j] += p[t] * V[(t * kvHeads + kh) * d + j];
  }
  return out;
}

/** Attention probabilities [qHeads][tokens] (for diagnostics: e.g. the mass drawn by sink tokens). */
export function attentionWeights(keys: ArrayLike<number>, query: ArrayLike<number>, shape: AttentionShape): Float64Array {
  const { tokens: T, qHeads, kvHeads, headDim: d } = shape;
  const K = toNumbers(keys),
    Q = toNumbers(query);
  const out = new Float64Array(qHeads * T);
  for (let h = 0; h < qHeads; h++) {
    const kh = kvHeadOf(h, qHeads, kvHeads);
    const s = new Float64Array(T);
    for (let t = 0; t < T; t++) {
      let dot = 0;
      for (let j = 0; j < d; j++) dot += Q[h * d + j] * K[(t * kvHeads + kh) * d + j];
      s[t] = dot / Math.sqrt(d);
    }
    out.set(softmax(s), h * T);
  }
  return out;
}

// ---- cache configuration --------------------------------------------------------------------------------------

export type Method = 'innerq' | 'kivi' | 'fp16';
export type ModeName = 'sym' | 'asym' | 'hybrid';
export type PresetName = 'innerq' | 'innerq-4' | 'kivi-2' | 'kivi-4' | 'fp16';

/** The cache settings that decide what is stored. */
export interface CacheConfig {
  /** innerq: keys row-grouped, values col-grouped; kivi: keys col-grouped, values row-grouped; fp16: none. */
  method: Method;
  keyBits: number;
  valueBits: number;
  keyMode: ModeName;
  valueMode: ModeName;
  groupSize: number;
  sinkTokens: number;
  recentTokens: number;
  keyNorm: boolean;
  /** Tokens per page (a multiple of 128); only the byte layout depends on it. */
  pageTokens?: number;
  /** Override the orientation the method implies. */
  keyOrientation?: Orientation;
  valueOrientation?: Orientation;
}

export const PRESETS: Readonly<Record<PresetName, Readonly<CacheConfig>>> = Object.freeze({
  innerq: Object.freeze<CacheConfig>({
    method: 'innerq', keyBits: 3, valueBits: 2, keyMode: 'sym', valueMode: 'hybrid',
    groupSize: 32, sinkTokens: 32, recentTokens: 96, keyNorm: true,
  }),
  'innerq-4': Object.freeze<CacheConfig>({
    method: 'innerq', keyBits: 4, valueBits: 4, keyMode: 'sym', valueMode: 'hybrid',
    groupSize: 32, sinkTokens: 32, recentTokens: 96, keyNorm: true,
  }),
  'kivi-2': Object.freeze<CacheConfig>({
    method: 'kivi', keyBits: 2, valueBits: 2, keyMode: 'asym', valueMode: 'asym',
    groupSize: 32, sinkTokens: 0, recentTokens: 128, keyNorm: false,
  }),
  'kivi-4': Object.freeze<CacheConfig>({
    method: 'kivi', keyBits: 4, valueBits: 4, keyMode: 'asym', valueMode: 'asym',
    groupSize: 32, sinkTokens: 0, recentTokens: 128, keyNorm: false,
  }),
  fp16: Object.freeze<CacheConfig>({
    method: 'fp16', keyBits: 16, valueBits: 16, keyMode: 'sym', valueMode: 'sym',
    groupSize: 32, sinkTokens: 0, recentTokens: 0, keyNorm: false,
  }),
});

/** A preset with fields overridden. */
export function configFor(preset: PresetName, overrides: Partial<CacheConfig> = {}): CacheConfig {
  return { ...PRESETS[preset], ...overrides };
}

export function modeOf(name: ModeName): QuantMode {
  return name === 'sym' ? QuantMode.Sym : name === 'asym' ? QuantMode.Asym : QuantMode.Hybrid;
}

/** The per-matrix formats (format.cuh MatrixFormat) a configuration implies. */
export function matrixFormats(c: CacheConfig): { keys: MatrixFormat; values: MatrixFormat } {
  const ko =
    c.keyOrientation ??
    (c.method === 'innerq' ? Orientation.RowGrouped : c.method === 'kivi' ? Orientation.ColGrouped : Orientation.Fp16Rows);
  const vo =
    c.valueOrientation ??
    (c.method === 'innerq' ? Orientation.ColGrouped : c.method === 'kivi' ? Orientation.RowGrouped : Orientation.Fp16Rows);
  return {
    keys: { orientation: ko, bits: c.keyBits, groupSize: c.groupSize, mode: modeOf(c.keyMode) },
    values: { orientation: vo, bits: c.valueBits, groupSize: c.groupSize, mode: modeOf(c.valueMode) },
  };
}

/** Stored bits per element of one matrix (fp16: 16). */
export function matrixBitsPerElement(f: MatrixFormat): number {
  return f.orientation === Orientation.Fp16Rows ? 16 : effectiveBits(f.bits, f.groupSize, f.mode);
}
/** Mean stored bits per element of keys and values in the quantized segment. */
export function configBitsPerElement(c: CacheConfig): number {
  const f = matrixFormats(c);
  return (matrixBitsPerElement(f.keys) + matrixBitsPerElement(f.values)) / 2;
}

// ---- windows --------------------------------------------------------------------------------------------------

/** Tokens held in the fp16 sink: min(tokens, S). */
export function sinkHeld(tokens: number, c: CacheConfig): number {
  return Math.min(tokens, c.sinkTokens);
}

/**
 * Tokens of one matrix that have left the fp16 recent window (quantized-space count), for `tokens` held:
 *   Fp16Rows / RowGrouped: max(0, n - R) (leave one token at a time, exactly R stay fp16);
 *   ColGrouped: G * floor(max(0, n - R) / G) (leave in whole groups: the tail holds R..R+G-1 tokens);
 * where n = tokens - min(tokens, S) are the non-sink tokens. fp16 (method 'fp16') keeps rows fp16 anyway,
 * but windows are still applied if configured.
 */
export function quantizedCount(tokens: number, f: MatrixFormat, c: CacheConfig): number {
  const n = tokens - sinkHeld(tokens, c);
  const beyond = Math.max(0, n - c.recentTokens);
  if (f.orientation === Orientation.ColGrouped) return f.groupSize * Math.floor(beyond / f.groupSize);
  return beyond;
}

/** The floor of the key normalization (alias of KEY_NORM_FLOOR). */
export const KEY_NORM_EPSILON = KEY_NORM_FLOOR;

// ---- the cache model ------------------------------------------------------------------------------------------

/** What the user put into one layer: [tokens][kvHeads][headDim] keys and values. */
export interface KVHistory {
  kvHeads: number;
  headDim: number;
  /** Float32Array / Float64Array / number[] values (rounded to binary16, saturating) or Uint16Array binary16 bits. */
  keys: ArrayLike<number> | Uint16Array;
  values: ArrayLike<number> | Uint16Array;
  /** tokens [0, prefillTokens) arrived in one prefill call, the rest by append (one token at a time). */
  prefillTokens: number;
}

/** One quantized matrix: unpacked codes and per-group scale/zero bits, in quantized-space order. */
export interface QuantizedMatrix {
  format: MatrixFormat;
  /** tokens of this matrix held in quantized form (quantized-space indices 0..count-1 = absolute S..S+count-1) */
  count: number;
  /**
   * Group index:
   *   RowGrouped: ((qi * kvHeads + h) * (d/G) + g)      (token qi, channels g*G .. g*G+G-1)
   *   ColGrouped: ((tg * kvHeads + h) * d + j)          (tokens tg*G .. tg*G+G-1, channel j)
   * codes[group * G + i] is element i of the group; scales[group], zeros[group] (0 when symmetric).
   * Fp16Rows: no groups; rows[(qi * kvHeads + h) * d + j] holds the binary16 bits.
   */
  scales: Uint16Array;
  zeros: Uint16Array;
  codes: Uint8Array;
  rows: Uint16Array;
}

/** Exactly what one layer of the cache holds after `tokens` tokens. */
export interface CacheState {
  config: CacheConfig;
  formats: { keys: MatrixFormat; values: MatrixFormat };
  tokens: number;
  kvHeads: number;
  headDim: number;
  sinkHeld: number;
  quantizedKeys: number;
  quantizedValues: number;
  /** key normalization factors f [kvHeads][headDim] (float32 values), or null (off / not computed yet) */
  keyNorm: Float32Array | null;
  /** absolute token range [from, to) f was computed over, or null */
  keyNormTokens: { from: number; to: number } | null;
  /** the inputs as binary16 bits, [tokens][kvHeads][headDim] */
  keyBits: Uint16Array;
  valueBits: Uint16Array;
  /**
   * The values the cache holds, in double, [tokens][kvHeads][headDim]: binary16 input for fp16 tokens,
   * dequantized values for quantized ones. Quantized KEYS are the dequantized K/f (not multiplied back by f).
   */
  storedKeys: Float64Array;
  storedValues: Float64Array;
  quantized: { keys: QuantizedMatrix; values: QuantizedMatrix };
}

/** Segment of absolute token a for a matrix with `quantized` quantized tokens. */
export function segmentOf(a: number, sinkCapacity: number, quantized: number): 'sink' | 'quantized' | 'recent' {
  if (a < sinkCapacity) return 'sink';
  if (a - sinkCapacity < quantized) return 'quantized';
  return 'recent';
}

/** Key normalization factors over absolute tokens [from, to): f_j = sqrt(max(max_t |K[t,j]|, 1e-4)) as float32. */
export function keyNormFactors(keyBits: Uint16Array, kvHeads: number, headDim: number, from: number, to: number): Float32Array {
  const f = new Float32Array(kvHeads * headDim);
  for (let h = 0; h < kvHeads; h++)
    for (let j = 0; j < headDim; j++) {
      let m = 0;
      for (let t = from; t < to; t++) m = Math.max(m, Math.abs(halfToNumber(keyBits[(t * kvHeads + h) * headDim + j])));
      f[h * headDim + j] = keyNormFactor(m);
    }
  return f;
}

/**
 * The token range f is computed over: the non-sink prefill tokens [S, P) when P > S; otherwise every
 * non-sink token held when the first key is quantized, [S, Tq) with Tq the smallest token count at which
 * quantizedKeys > 0. null when keyNorm is off, or f is not computed yet (tokens < Tq).
 */
export function keyNormRange(c: CacheConfig, keyFormat: MatrixFormat, prefillTokens: number, tokens: number): { from: number; to: number } | null {
  if (!c.keyNorm) return null;
  const S = c.sinkTokens;
  if (prefillTokens > S) return { from: S, to: prefillTokens };
  // first key quantized when the non-sink count reaches R + 1 (one at a time) or R + G (whole groups)
  const step = keyFormat.orientation === Orientation.ColGrouped ? keyFormat.groupSize : 1;
  const tq = S + c.recentTokens + step;
  if (tokens < tq) return null;
  return { from: S, to: tq };
}

function emptyMatrix(format: MatrixFormat): QuantizedMatrix {
  return { format, count: 0, scales: new Uint16Array(0), zeros: new Uint16Array(0), codes: new Uint8Array(0), rows: new Uint16Array(0) };
}

/** Quantize the first `count` quantized-space tokens of one matrix (src: binary16 [tokens][kvHeads][d]). */
function quantizeMatrix(
  src: Uint16Array,
  format: MatrixFormat,
  S: number,
  count: number,
  kvHeads: number,
  d: number,
  stored: Float64Array,
): QuantizedMatrix {
  const m = emptyMatrix(format);
  m.count = count;
  const G = format.groupSize;
  const rowStride = kvHeads * d;
  if (format.orientation === Orientation.Fp16Rows) {
    m.rows = src.slice(S * rowStride, (S + count) * rowStride);
    for (let i = 0; i < m.rows.length; i++) stored[S * rowStride + i] = halfToNumber(m.rows[i]);
    return m;
  }
  const rowGrouped = format.orientation === Orientation.RowGrouped;
  const groups = rowGrouped ? count * kvHeads * (d / G) : (count / G) * kvHeads * d;
  m.scales = new Uint16Array(groups);
  m.zeros = new Uint16Array(groups);
  m.codes = new Uint8Array(groups * G);
  for (let gi = 0; gi < groups; gi++) {
    // first element (absolute index into src) and stride of group gi
    let first: number, stride: number;
    if (rowGrouped) {
      const nG = d / G;
      const g = gi % nG,
        h = Math.floor(gi / nG) % kvHeads,
        qi = Math.floor(gi / (nG * kvHeads));
      first = (S + qi) * rowStride + h * d + g * G;
      stride = 1;
    } else {
      const j = gi % d,
        h = Math.floor(gi / d) % kvHeads,
        tg = Math.floor(gi / (d * kvHeads));
      first = (S + tg * G) * rowStride + h * d + j;
      stride = rowStride;
    }
    const q = quantizeGroup(src, stride, G, format.bits, format.mode, first);
    m.scales[gi] = q.scale;
    m.zeros[gi] = q.zero;
    m.codes.set(q.codes, gi * G);
    for (let i = 0; i < G; i++) stored[first + i * stride] = dequantizeCodeExact(q.codes[i], q.scale, q.zero, format.bits);
  }
  return m;
}

/**
 * Reproduce exactly what one layer of the cache holds after the first `tokens` tokens of `history`
 * (default: all of them): the fp16 sink, the quantized segment of each matrix (codes, scales, zeros and
 * dequantized values, groups aligned to the quantized-space index a - S), the fp16 recent tail, and f.
 *
 * Keys entering the quantized segment are first normalized: fp16saturate(K / f) with the division in double
 * (f as its float32 value); fp16 windows hold the raw binary16 keys.
 */
export function cacheState(config: CacheConfig, history: KVHistory, tokens?: number): CacheState {
  const { kvHeads, headDim: d } = history;
  const rowStride = kvHeads * d;
  const allKeys = toHalfBits(history.keys),
    allValues = toHalfBits(history.values);
  const total = allKeys.length / rowStride;
  const T = tokens ?? total;
  if (!Number.isInteger(T) || T < 0 || T > total) throw new RangeError(`tokens ${T} outside the history (0..${total})`);
  const keyBits = allKeys.slice(0, T * rowStride),
    valueBits = allValues.slice(0, T * rowStride);
  const formats = matrixFormats(config);
  for (const f of [formats.keys, formats.values])
    if (f.orientation !== Orientation.Fp16Rows && (d % f.groupSize !== 0 || f.groupSize % 32 !== 0))
      throw new RangeError(`headDim ${d} must be a multiple of the group size ${f.groupSize} (a multiple of 32)`);
  const S = config.sinkTokens;
  const quantizedKeys = quantizedCount(T, formats.keys, config);
  const quantizedValues = quantizedCount(T, formats.values, config);

  const range = keyNormRange(config, formats.keys, Math.min(history.prefillTokens, T), T);
  const keyNorm = range ? keyNormFactors(keyBits, kvHeads, d, range.from, range.to) : null;

  // keys as handed to the quantizer: K/f rounded to binary16 (saturating) when normalization is on
  let keyInput = keyBits;
  if (keyNorm) {
    keyInput = keyBits.slice();
    for (let t = S; t < S + quantizedKeys; t++)
      for (let h = 0; h < kvHeads; h++)
        for (let j = 0; j < d; j++) {
          const i = t * rowStride + h * d + j;
          keyInput[i] = normalizeKey(keyBits[i], keyNorm[h * d + j]);
        }
  }
  const storedKeys = new Float64Array(T * rowStride),
    storedValues = new Float64Array(T * rowStride);
  for (let i = 0; i < T * rowStride; i++) {
    storedKeys[i] = halfToNumber(keyBits[i]);
    storedValues[i] = halfToNumber(valueBits[i]);
  }
  const qk = quantizeMatrix(keyInput, formats.keys, S, quantizedKeys, kvHeads, d, storedKeys);
  const qv = quantizeMatrix(valueBits, formats.values, S, quantizedValues, kvHeads, d, storedValues);
  return {
    config,
    formats,
    tokens: T,
    kvHeads,
    headDim: d,
    sinkHeld: sinkHeld(T, config),
    quantizedKeys,
    quantizedValues,
    keyNorm,
    keyNormTokens: range,
    keyBits,
    valueBits,
    storedKeys,
    storedValues,
    quantized: { keys: qk, values: qv },
  };
}

/**
 * Keys in the space of the raw query: stored keys, with the quantized segment multiplied back by f
 * (q . (f ⊙ K̂) = (q ⊙ f) . K̂). [tokens][kvHeads][headDim].
 */
export function effectiveKeys(state: CacheState): Float64Array {
  const { kvHeads, headDim: d, keyNorm } = state;
  const K = state.storedKeys.slice();
  if (keyNorm) {
    const S = state.config.sinkTokens;
    for (let t = S; t < S + state.quantizedKeys; t++)
      for (let h = 0; h < kvHeads; h++)
        for (let j = 0; j < d; j++) K[(t * kvHeads + h) * d + j] *= keyNorm[h * d + j];
  }
  return K;
}

/**
 * THE oracle: fp64 attention over the cache as stored (dequantized, same windows). The quantized key
 * segment is scored with q ⊙ f against the stored K/f; fp16 windows with raw q and raw K.
 * query [qHeads][headDim] -> [qHeads][headDim].
 */
export function referenceAttention(state: CacheState, query: ArrayLike<number>, qHeads: number): Float64Array {
  const { tokens: T, kvHeads, headDim: d, keyNorm } = state;
  const S = state.config.sinkTokens;
  const Q = toNumbers(query);
  const out = new Float64Array(qHeads * d);
  for (let h = 0; h < qHeads; h++) {
    const kh = kvHeadOf(h, qHeads, kvHeads);
    const s = new Float64Array(T);
    for (let t = 0; t < T; t++) {
      const normalized = keyNorm !== null && segmentOf(t, S, state.quantizedKeys) === 'quantized';
      let dot = 0;
      for (let j = 0; j < d; j++) {
        const qj = normalized ? Q[h * d + j] * keyNorm[kh * d + j] : Q[h * d + j];
        dot += qj * state.storedKeys[(t * kvHeads + kh) * d + j];
      }
      s[t] = dot / Math.sqrt(d);
    }
    const p = softmax(s);
    for (let t = 0; t < T; t++)
      for (let j = 0; j < d; j++) out[h * d + j] += p[t] * state.storedValues[(t * kvHeads + kh) * d + j];
  }
  return out;
}

/** fp64 attention over the unquantized inputs (as given, not rounded to binary16): the fidelity target. */
export function exactAttention(history: KVHistory, query: ArrayLike<number>, qHeads: number, tokens?: number): Float64Array {
  const rowStride = history.kvHeads * history.headDim;
  const T = tokens ?? history.keys.length / rowStride;
  const K = toNumbers(history.keys).subarray(0, T * rowStride);
  const V = toNumbers(history.values).subarray(0, T * rowStride);
  return attention(K, V, query, { tokens: T, qHeads, kvHeads: history.kvHeads, headDim: history.headDim });
}

/**
 * Relative error ||a - b|| / ||scale|| of each row of width `width` (e.g. one query head's output); `scale`
 * defaults to b (the usual relative error). A row whose scale is all zeros reports the absolute error ||a - b||.
 */
export function rowRelativeErrors(a: ArrayLike<number>, b: ArrayLike<number>, width: number, scale: ArrayLike<number> = b): number[] {
  const out: number[] = [];
  for (let r = 0; r * width < b.length; r++) {
    let num = 0,
      den = 0;
    for (let j = 0; j < width; j++) {
      const x = a[r * width + j],
        y = b[r * width + j],
        z = scale[r * width + j];
      num += (x - y) * (x - y);
      den += z * z;
    }
    out.push(den > 0 ? Math.sqrt(num / den) : Math.sqrt(num));
  }
  return out;
}

// ---- bytes: pages, sink, ring ---------------------------------------------------------------------------------

/**
 * Encode the quantized segments of a state into pages exactly as format.cuh lays them out (scales and zeros
 * as little-endian binary16). Page i holds quantized-space tokens i*P .. i*P+P-1 of both matrices; bytes of
 * tokens a matrix has not quantized yet are left 0 (a backend may leave anything there).
 */
export function encodePages(state: CacheState, pageTokens: number): { layout: PageLayout; pages: Uint8Array[] } {
  const { kvHeads, headDim: d } = state;
  const layout = pageLayout(state.formats.keys, state.formats.values, pageTokens, kvHeads, d);
  const n = Math.ceil(Math.max(state.quantizedKeys, state.quantizedValues) / pageTokens);
  const pages: Uint8Array[] = [];
  for (let i = 0; i < n; i++) pages.push(new Uint8Array(layout.pageBytes));
  const put16 = (page: Uint8Array, off: number, v: number): void => {
    page[off] = v & 0xff;
    page[off + 1] = (v >> 8) & 0xff;
  };
  for (const which of ['keys', 'values'] as const) {
    const m = state.quantized[which];
    const f = m.format;
    const L = layout[which];
    const G = f.groupSize;
    if (f.orientation === Orientation.Fp16Rows) {
      for (let qi = 0; qi < m.count; qi++) {
        const page = pages[Math.floor(qi / pageTokens)],
          slot = qi % pageTokens;
        for (let h = 0; h < kvHeads; h++)
          for (let j = 0; j < d; j++)
            put16(page, L.codesOffset + h * L.codesHeadBytes + (slot * d + j) * 2, m.rows[(qi * kvHeads + h) * d + j]);
      }
      continue;
    }
    const gb = groupBytes(f.bits, G);
    const zeros = hasZeros(f.mode);
    const groups = m.scales.length;
    for (let gi = 0; gi < groups; gi++) {
      let page: Uint8Array, h: number, cell: number; // cell: index of the group inside its head's slice
      if (f.orientation === Orientation.RowGrouped) {
        const nG = d / G;
        const g = gi % nG,
          qi = Math.floor(gi / (nG * kvHeads));
        h = Math.floor(gi / nG) % kvHeads;
        page = pages[Math.floor(qi / pageTokens)];
        cell = (qi % pageTokens) * nG + g; // [P][n]
      } else {
        const j = gi % d,
          tg = Math.floor(gi / (d * kvHeads));
        h = Math.floor(gi / d) % kvHeads;
        const qi = tg * G;
        page = pages[Math.floor(qi / pageTokens)];
        cell = Math.floor((qi % pageTokens) / G) * d + j; // [P/G][d]
      }
      packGroup(m.codes.subarray(gi * G, gi * G + G), f.bits, G, page, L.codesOffset + h * L.codesHeadBytes + cell * gb);
      put16(page, L.scalesOffset + h * L.scalesHeadBytes + cell * 2, m.scales[gi]);
      if (zeros) put16(page, L.zerosOffset + h * L.scalesHeadBytes + cell * 2, m.zeros[gi]);
    }
  }
  return { layout, pages };
}

/** The fp16 sink buffer [sinkCapacity][kvHeads][headDim] (rows past sinkHeld are 0). */
export function encodeSink(state: CacheState, which: 'keys' | 'values'): Uint16Array {
  const rowStride = state.kvHeads * state.headDim;
  const out = new Uint16Array(state.config.sinkTokens * rowStride);
  const src = which === 'keys' ? state.keyBits : state.valueBits;
  out.set(src.subarray(0, state.sinkHeld * rowStride));
  return out;
}

/**
 * The fp16 recent ring [ringCapacity][kvHeads][headDim] of one matrix: token a of the fp16 tail sits in slot
 * (a - S) % ringCapacity. `live[slot]` is 1 for slots holding a tail token (others are 0 here; a backend may
 * hold stale rows there).
 */
export function encodeRing(state: CacheState, which: 'keys' | 'values', ringCapacity: number): { rows: Uint16Array; live: Uint8Array } {
  const rowStride = state.kvHeads * state.headDim;
  const S = state.config.sinkTokens;
  const q = which === 'keys' ? state.quantizedKeys : state.quantizedValues;
  const src = which === 'keys' ? state.keyBits : state.valueBits;
  const rows = new Uint16Array(ringCapacity * rowStride);
  const live = new Uint8Array(ringCapacity);
  const first = state.sinkHeld + q;
  if (state.tokens - first > ringCapacity) throw new RangeError(`ring capacity ${ringCapacity} < fp16 tail ${state.tokens - first}`);
  for (let a = first; a < state.tokens; a++) {
    const slot = (a - S) % ringCapacity;
    rows.set(src.subarray(a * rowStride, (a + 1) * rowStride), slot * rowStride);
    live[slot] = 1;
  }
  return { rows, live };
}
