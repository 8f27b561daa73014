// synthetic.ts - a seeded generator of KV caches with the structure real caches show (DESIGN.md §4), so that
// fidelity can be measured without model weights.

/** xoshiro128** PRNG (32-bit state words), seeded through splitmix32. Deterministic for a given seed. */
export class Rng {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;
  private spare: number | null = null;

  constructor(seed: number) {
    let x = seed >>> 0;
    const next = (): number => {
      // splitmix32
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.s0 = next();
    this.s1 = next();
    this.s2 = next();
    this.s3 = next();
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1;
  }

  /** Next uniform 32-bit unsigned integer. */
  nextU32(): number {
    const rotl = (v: number, k: number): number => ((v << k) | (v >>> (32 - k))) >>> 0;
    const result = Math.imul(rotl(Math.imul(this.s1, 5) >>> 0, 7), 9) >>> 0;
    const t = (this.s1 << 9) >>> 0;
    this.s2 = (this.s2 ^ this.s0) >>> 0;
    this.s3 = (this.s3 ^ this.s1) >>> 0;
    this.s1 = (this.s1 ^ this.s2) >>> 0;
    this.s0 = (this.s0 ^ this.s3) >>> 0;
    this.s2 = (this.s2 ^ t) >>> 0;
    this.s3 = rotl(this.s3, 11);
    return result;
  }

  /** Uniform in [0, 1) with 53 random bits. */
  uniform(): number {
    const hi = this.nextU32() >>> 5,
      lo = this.nextU32() >>> 6;
    return (hi * 67108864 + lo) / 9007199254740992;
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.uniform() * n);
  }

  /** Standard normal (Box-Muller, caching the second value). */
  normal(): number {
    if (this.spare !== null) {
      const v = this.spare;
      this.spare = null;
      return v;
    }
    let u = 0;
    while (u === 0) u = this.uniform();
    const v = this.uniform();
    const r = Math.sqrt(-2 * Math.log(u));
    this.spare = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  }

  /** Gamma(shape, 1) by Marsaglia-Tsang. */
  gamma(shape: number): number {
    if (shape < 1) return this.gamma(shape + 1) * Math.pow(this.uniform() || Number.MIN_VALUE, 1 / shape);
    const d = shape - 1 / 3,
      c = 1 / Math.sqrt(9 * d);
    for (;;) {
      let x: number, v: number;
      do {
        x = this.normal();
        v = 1 + c * x;
      } while (v <= 0);
      v = v * v * v;
      const u = this.uniform();
      if (u < 1 - 0.0331 * x * x * x * x) return d * v;
      if (Math.log(u) < 0.5 * x * x + d * (1 - v + Math.log(v))) return d * v;
    }
  }

  /** Student-t with nu degrees of freedom (nu = Infinity gives a normal). */
  studentT(nu: number): number {
    const z = this.normal();
    if (!Number.isFinite(nu)) return z;
    return z / Math.sqrt((2 * this.gamma(nu / 2)) / nu);
  }
}

/**
 * Options of {@link syntheticKV}. Every field is optional; defaults in brackets.
 *
 * Shape:
 * - `tokens` [1024], `kvHeads` [2], `qHeads` [4 * kvHeads] (GQA), `headDim` [128, even], `queries` [4]: number
 *   of decode queries generated (all at position tokens - 1), `seed` [1].
 *
 * Keys (generated pre-RoPE per kv head, then rotated):
 * - `keyMean` [1]: scale of the per-head mean key (a fixed random direction; real keys are far from zero-mean).
 * - `keyNoise` [1]: per-token noise scale around the mean.
 * - `outlierChannels` [4]: channel PAIRS per kv head with large magnitude. Each chosen pair (i, i + d/2) gets a
 *   multiplier drawn in `outlierScale` [[10, 50]] applied to both channels, and a mean of fixed sign, so the
 *   magnitude is consistent across tokens. Pairs are drawn from the low-frequency half of the RoPE spectrum
 *   (as in real models), where rotation is slow.
 * - `ropeBase` [10000]: RoPE base; channel i and i + d/2 (rotate-half convention) are rotated by angle
 *   pos * ropeBase^(-2i/d). Set `rope: false` to skip the rotation.
 *
 * Attention sinks:
 * - `sinkTokens` [4]: the first tokens get an extra component along a per-head unit "sink direction" w that
 *   every query also carries, so they draw most of the attention mass.
 * - `sinkLogitBoost` [ln(tokens) + 2]: how much higher (in logits) a sink token scores than a typical token.
 *   Set 0 to disable sinks.
 *
 * Values:
 * - `valueDof` [3]: Student-t degrees of freedom of the value noise (heavier-tailed than normal; Infinity =
 *   normal). `valueScale` [1], `valueMean` [0.5]: scale of the per-head, per-channel value mean.
 *
 * Queries:
 * - `queryKeyCorrelation` [0.5]: share of the query (pre-RoPE, per channel in units of the key scale) that
 *   follows the mean key direction; the rest is noise. `queryScale` [1]: overall query scale (a temperature:
 *   scores are q.k / sqrt(d)). Outlier channels of the query are NOT scaled up (as in real models), so they
 *   shift all scores of a head together.
 */
export interface SyntheticOptions {
  tokens?: number;
  kvHeads?: number;
  qHeads?: number;
  headDim?: number;
  queries?: number;
  seed?: number;
  keyMean?: number;
  keyNoise?: number;
  outlierChannels?: number;
  outlierScale?: [number, number];
  rope?: boolean;
  ropeBase?: number;
  sinkTokens?: number;
  sinkLogitBoost?: number;
  valueDof?: number;
  valueScale?: number;
  valueMean?: number;
  queryKeyCorrelation?: number;
  queryScale?: number;
}

export interface SyntheticKV {
  tokens: number;
  kvHeads: number;
  qHeads: number;
  headDim: number;
  /** [tokens][kvHeads][headDim] (post-RoPE) */
  keys: Float32Array;
  /** [tokens][kvHeads][headDim] */
  values: Float32Array;
  /** [queries][qHeads][headDim] (post-RoPE, at position tokens - 1) */
  queries: Float32Array;
  /** [tokens][kvHeads][headDim] keys before RoPE (and before the sink component) */
  keysPreRope: Float32Array;
  /** per kv head: the outlier channels (both channels of each chosen pair), ascending */
  outlierChannels: number[][];
  /** number of sink tokens generated */
  sinkTokens: number;
  /** the options after defaults */
  options: Required<SyntheticOptions>;
}

/** RoPE angle of channel pair i at position pos. */
export function ropeAngle(pos: number, i: number, headDim: number, base: number): number {
  return pos * Math.pow(base, (-2 * i) / headDim);
}

/** Rotate one head vector x[off .. off+d) in place by RoPE at position pos (rotate-half convention). */
export function applyRope(x: Float32Array | Float64Array, off: number, headDim: number, pos: number, base: number): void {
  const half = headDim / 2;
  for (let i = 0; i < half; i++) {
    const a = ropeAngle(pos, i, headDim, base);
    const c = Math.cos(a),
      s = Math.sin(a);
    const x0 = x[off + i],
      x1 = x[off + i + half];
    x[off + i] = x0 * c - x1 * s;
    x[off + i + half] = x0 * s + x1 * c;
  }
}

/** Generate a synthetic KV cache and decode queries. See {@link SyntheticOptions} for the knobs. */
export function syntheticKV(options: SyntheticOptions = {}): SyntheticKV {
  const tokens = options.tokens ?? 1024;
  const kvHeads = options.kvHeads ?? 2;
  const o: Required<SyntheticOptions> = {
    tokens,
    kvHeads,
    qHeads: options.qHeads ?? 4 * kvHeads,
    headDim: options.headDim ?? 128,
    queries: options.queries ?? 4,
    seed: options.seed ?? 1,
    keyMean: options.keyMean ?? 1,
    keyNoise: options.keyNoise ?? 1,
    outlierChannels: options.outlierChannels ?? 4,
    outlierScale: options.outlierScale ?? [10, 50],
    rope: options.rope ?? true,
    ropeBase: options.ropeBase ?? 10000,
    sinkTokens: Math.min(options.sinkTokens ?? 4, tokens),
    sinkLogitBoost: options.sinkLogitBoost ?? Math.log(tokens) + 2,
    valueDof: options.valueDof ?? 3,
    valueScale: options.valueScale ?? 1,
    valueMean: options.valueMean ?? 0.5,
    queryKeyCorrelation: options.queryKeyCorrelation ?? 0.5,
    queryScale: options.queryScale ?? 1,
  };
  const { qHeads, headDim: d } = o;
  if (d % 2 !== 0) throw new RangeError(`headDim must be even, got ${d}`);
  if (qHeads % kvHeads !== 0) throw new RangeError(`qHeads (${qHeads}) must be a multiple of kvHeads (${kvHeads})`);
  const half = d / 2;
  const rng = new Rng(o.seed);
  const row = kvHeads * d;

  // per-head structure
  const channelScale = new Float64Array(row).fill(1);
  const keyMu = new Float64Array(row);
  const sinkDir = new Float64Array(row);
  const outliers: number[][] = [];
  for (let h = 0; h < kvHeads; h++) {
    for (let j = 0; j < d; j++) keyMu[h * d + j] = o.keyMean * rng.normal();
    // outlier pairs from the low-frequency half of the pairs [half/2, half)
    const candidates: number[] = [];
    for (let i = Math.floor(half / 2); i < half; i++) candidates.push(i);
    const chosen: number[] = [];
    for (let k = 0; k < Math.min(o.outlierChannels, candidates.length); k++) {
      const pick = candidates.splice(rng.int(candidates.length), 1)[0];
      chosen.push(pick, pick + half);
      const mult = o.outlierScale[0] + (o.outlierScale[1] - o.outlierScale[0]) * rng.uniform();
      const sign = rng.uniform() < 0.5 ? -1 : 1;
      for (const j of [pick, pick + half]) {
        channelScale[h * d + j] = mult;
        keyMu[h * d + j] = sign * (1.5 + 0.5 * rng.uniform()) * Math.max(o.keyMean, 0.5); // consistent sign
      }
    }
    outliers.push(chosen.sort((a, b) => a - b));
    // sink direction: a unit vector on a few of the lowest-frequency non-outlier pairs
    let norm = 0;
    for (let i = half - 1, used = 0; i >= 0 && used < 4; i--) {
      if (chosen.includes(i)) continue;
      for (const j of [i, i + half]) {
        sinkDir[h * d + j] = rng.normal();
        norm += sinkDir[h * d + j] ** 2;
      }
      used++;
    }
    norm = Math.sqrt(norm);
    for (let j = 0; j < d; j++) sinkDir[h * d + j] /= norm;
  }

  // keys
  const keysPre = new Float32Array(tokens * row);
  const keys = new Float32Array(tokens * row);
  const tmp = new Float64Array(d);
  // every query carries beta * w, every sink key lambda * w, so a sink token's logit exceeds a typical token's
  // by about beta * lambda / sqrt(d) = sinkLogitBoost.
  const beta = 2 * o.queryScale;
  const lambda = o.sinkTokens > 0 ? (o.sinkLogitBoost * Math.sqrt(d)) / beta : 0;
  for (let t = 0; t < tokens; t++)
    for (let h = 0; h < kvHeads; h++) {
      for (let j = 0; j < d; j++) tmp[j] = channelScale[h * d + j] * (keyMu[h * d + j] + o.keyNoise * rng.normal());
      for (let j = 0; j < d; j++) keysPre[t * row + h * d + j] = tmp[j];
      if (o.rope) applyRope(tmp, 0, d, t, o.ropeBase);
      if (t < o.sinkTokens) for (let j = 0; j < d; j++) tmp[j] += lambda * sinkDir[h * d + j];
      for (let j = 0; j < d; j++) keys[t * row + h * d + j] = tmp[j];
    }

  // values: per-head channel means + Student-t noise
  const values = new Float32Array(tokens * row);
  const valueMu = new Float64Array(row);
  for (let i = 0; i < row; i++) valueMu[i] = o.valueMean * rng.normal();
  for (let t = 0; t < tokens; t++)
    for (let i = 0; i < row; i++) values[t * row + i] = o.valueScale * (valueMu[i] + rng.studentT(o.valueDof));

  // queries: correlated with the mean key direction (in units of the key scale), rotated to the last position
  const group = qHeads / kvHeads;
  const queries = new Float32Array(o.queries * qHeads * d);
  const pos = tokens - 1;
  const c = o.queryKeyCorrelation;
  for (let n = 0; n < o.queries; n++)
    for (let qh = 0; qh < qHeads; qh++) {
      const h = Math.floor(qh / group);
      for (let j = 0; j < d; j++) tmp[j] = (c * keyMu[h * d + j] + Math.sqrt(Math.max(0, 1 - c * c)) * rng.normal()) / channelScale[h * d + j];
      if (o.rope) applyRope(tmp, 0, d, pos, o.ropeBase);
      for (let j = 0; j < d; j++) queries[(n * qHeads + qh) * d + j] = o.queryScale * tmp[j] + beta * sinkDir[h * d + j];
    }
  return { tokens, kvHeads, qHeads, headDim: d, keys, values, queries, keysPreRope: keysPre, outlierChannels: outliers, sinkTokens: o.sinkTokens, options: o };
}
