// eval.ts - `innerq eval`: attention-output fidelity of each preset (and InnerQ ablations) against fp64 exact
// attention, run through a real backend, on the synthetic generator or on a user's KV dump.
import { KVCache } from '../cache';
import { backends } from '../backends';
import type { KVCacheOptions, PresetName } from '../options';
import { configBitsPerElement, configFor, cacheState, exactAttention, referenceAttention, rowRelativeErrors, halfBitsToNumbers, CacheConfig, KVHistory } from '../reference';
import { syntheticKV, SyntheticOptions, Rng } from '../synthetic';
import { CliError, MachineInfo, Progress, machineInfo } from './common';
import { DumpLayer, loadDump } from './loaders';

export interface EvalConfig {
  name: string;
  preset: PresetName;
  overrides: Partial<Pick<KVCacheOptions, 'keyBits' | 'valueBits' | 'keyMode' | 'valueMode' | 'keyNorm' | 'sinkTokens' | 'recentTokens'>>;
  /** what the row shows */
  role: 'preset' | 'equal-bits' | 'ablation';
}

/** The rows of the fidelity table: presets, an InnerQ variant at KIVI-2's bits, and the ablations. */
export function evalConfigs(presets: PresetName[], ablations: boolean): EvalConfig[] {
  const out: EvalConfig[] = presets.map((p) => ({ name: p, preset: p, overrides: {}, role: 'preset' as const }));
  if (presets.includes('innerq')) {
    if (presets.includes('kivi-2')) out.push({ name: 'innerq K2 (≤ kivi-2 bits)', preset: 'innerq', overrides: { keyBits: 2 }, role: 'equal-bits' });
    if (ablations) {
      out.push({ name: 'innerq −keyNorm', preset: 'innerq', overrides: { keyNorm: false }, role: 'ablation' });
      out.push({ name: 'innerq −sink (sinkTokens 0)', preset: 'innerq', overrides: { sinkTokens: 0 }, role: 'ablation' });
      out.push({ name: 'innerq −hybrid (values sym)', preset: 'innerq', overrides: { valueMode: 'sym' }, role: 'ablation' });
      out.push({ name: 'innerq −recent (recentTokens 0)', preset: 'innerq', overrides: { recentTokens: 0 }, role: 'ablation' });
    }
  }
  return out;
}

export interface EvalParams {
  source: 'synthetic' | 'dump';
  presets: PresetName[];
  ablations: boolean;
  backend: 'auto' | 'cpu' | 'cuda' | 'sim';
  /** also compare the backend with the fp64 reference over the dequantized cache */
  oracle: boolean;
  /** synthetic: seeds seed, seed+1, ... */
  seed: number;
  seeds: number;
  synthetic: SyntheticOptions;
  /** dump files */
  kv?: string;
  values?: string;
  queriesFile?: string;
  /** queries per layer when the dump has none */
  queries: number;
  /** query heads when the dump has no queries (default kvHeads × 4) */
  qHeads?: number;
}

export interface EvalRow {
  name: string;
  preset: PresetName;
  role: EvalConfig['role'];
  overrides: EvalConfig['overrides'];
  method: string;
  /** stored bits per element of the quantized part (codes + scales/zeros) */
  nominalBits: number;
  /** stats().bitsPerElement of the real cache at this length (fp16 windows included) */
  heldBits: number;
  meanRelErr: number;
  medianRelErr: number;
  maxRelErr: number;
  maxAbsErr: number;
  meanCosine: number;
  minCosine: number;
  /** max row relative error of the backend vs the fp64 reference over the dequantized cache (null: not run) */
  backendVsReference: number | null;
  outputRows: number;
}

export interface EvalResult {
  tool: 'innerq eval';
  machine: MachineInfo;
  parameters: EvalParams;
  backend: string;
  cases: Array<{ name: string; tokens: number; kvHeads: number; qHeads: number; headDim: number; queries: number }>;
  rows: EvalRow[];
  seconds: number;
}

interface Case {
  name: string;
  history: KVHistory;
  tokens: number;
  qHeads: number;
  /** [n][qHeads][headDim] */
  queries: Float64Array | Float32Array;
  nQueries: number;
}

function syntheticCases(p: EvalParams): Case[] {
  const cases: Case[] = [];
  for (let i = 0; i < p.seeds; i++) {
    const g = syntheticKV({ ...p.synthetic, seed: p.seed + i });
    cases.push({
      name: `synthetic seed ${p.seed + i}`,
      history: { kvHeads: g.kvHeads, headDim: g.headDim, keys: g.keys, values: g.values, prefillTokens: g.tokens },
      tokens: g.tokens,
      qHeads: g.qHeads,
      queries: g.queries,
      nQueries: g.options.queries,
    });
  }
  return cases;
}

/**
 * Queries for a dump without any: keys of randomly chosen tokens (from the last half), each channel divided
 * by that channel's RMS over the layer and multiplied by the mean RMS, so outlier channels are not amplified
 * (real queries do not carry the keys' outlier magnitudes). A proxy; supply real queries when you have them.
 */
function proxyQueries(l: DumpLayer, qHeads: number, n: number, seed: number): Float64Array {
  const { tokens, kvHeads, headDim: d } = l;
  const K = l.keys instanceof Uint16Array ? halfBitsToNumbers(l.keys) : Float64Array.from(l.keys);
  const row = kvHeads * d;
  const rms = new Float64Array(row);
  for (let t = 0; t < tokens; t++) for (let i = 0; i < row; i++) rms[i] += K[t * row + i] ** 2;
  let mean = 0;
  for (let i = 0; i < row; i++) {
    rms[i] = Math.sqrt(rms[i] / tokens) || 1;
    mean += rms[i] / row;
  }
  const rng = new Rng(seed);
  const group = qHeads / kvHeads;
  const q = new Float64Array(n * qHeads * d);
  for (let k = 0; k < n; k++)
    for (let h = 0; h < qHeads; h++) {
      const kh = Math.floor(h / group);
      const t = Math.floor(tokens / 2) + rng.int(Math.max(1, tokens - Math.floor(tokens / 2)));
      for (let j = 0; j < d; j++) q[(k * qHeads + h) * d + j] = (K[t * row + kh * d + j] / rms[kh * d + j]) * mean;
    }
  return q;
}

function dumpCases(p: EvalParams): Case[] {
  const layers = loadDump(p.kv!, p.values, p.queriesFile);
  return layers.map((l) => {
    let qHeads: number, queries: Float64Array | Float32Array, n: number;
    if (l.queries) {
      const s = l.queries.shape;
      if (s.length !== 3 || s[2] !== l.headDim || s[1] % l.kvHeads !== 0 || s[0] < 1) {
        throw new CliError(`innerq: queries of layer ${l.layer} must have shape [n][qHeads][${l.headDim}] with qHeads a multiple of kvHeads (${l.kvHeads}), got [${s.join(', ')}]`);
      }
      qHeads = s[1];
      n = s[0];
      queries = l.queries.data instanceof Uint16Array ? halfBitsToNumbers(l.queries.data) : l.queries.data;
    } else {
      qHeads = p.qHeads ?? l.kvHeads * 4;
      if (qHeads % l.kvHeads !== 0) throw new CliError(`innerq: --q-heads ${qHeads} is not a multiple of the dump's kvHeads (${l.kvHeads})`);
      n = p.queries;
      queries = proxyQueries(l, qHeads, n, p.seed + l.layer);
    }
    return {
      name: `${p.kv} layer ${l.layer}`,
      history: { kvHeads: l.kvHeads, headDim: l.headDim, keys: l.keys, values: l.values, prefillTokens: l.tokens },
      tokens: l.tokens,
      qHeads,
      queries,
      nQueries: n,
    };
  });
}

export function runEval(p: EvalParams, progress: Progress): EvalResult {
  const started = Date.now();
  const info = backends();
  const backend = p.backend === 'auto' ? (info.cuda.devices > 0 ? 'cuda' : 'cpu') : p.backend;
  const cases = p.source === 'synthetic' ? syntheticCases(p) : dumpCases(p);
  const configs = evalConfigs(p.presets, p.ablations);
  // shape checks through the facade before any work (clear TypeError/RangeError messages)
  for (const c of cases) {
    for (const cfg of configs) {
      new KVCache({ layers: 1, qHeads: c.qHeads, kvHeads: c.history.kvHeads, headDim: c.history.headDim, maxTokens: c.tokens, preset: cfg.preset, ...cfg.overrides, backend }).dispose();
    }
  }
  const rows: EvalRow[] = [];
  for (const cfg of configs) {
    progress.say(`eval ${cfg.name}`);
    const refConfig: CacheConfig = configFor(cfg.preset, cfg.overrides as Partial<CacheConfig>);
    const rel: number[] = [];
    const cos: number[] = [];
    let maxAbs = 0,
      vsRef: number | null = p.oracle ? 0 : null,
      heldBits = 0;
    for (const c of cases) {
      const d = c.history.headDim;
      const cache = new KVCache({ layers: 1, qHeads: c.qHeads, kvHeads: c.history.kvHeads, headDim: d, maxTokens: c.tokens, preset: cfg.preset, ...cfg.overrides, backend });
      try {
        cache.prefill(0, c.history.keys as Float32Array | Uint16Array, c.history.values as Float32Array | Uint16Array);
        heldBits += cache.stats().bitsPerElement / cases.length;
        const state = p.oracle ? cacheState(refConfig, c.history) : null;
        for (let n = 0; n < c.nQueries; n++) {
          const qLen = c.qHeads * d;
          const q = Float32Array.from(c.queries.subarray(n * qLen, (n + 1) * qLen));
          const out = cache.attend(0, q);
          const exact = exactAttention(c.history, q, c.qHeads);
          rel.push(...rowRelativeErrors(out, exact, d));
          for (let h = 0; h < c.qHeads; h++) {
            let dot = 0, na = 0, nb = 0;
            for (let j = 0; j < d; j++) {
              const a = out[h * d + j], b = exact[h * d + j];
              dot += a * b;
              na += a * a;
              nb += b * b;
              maxAbs = Math.max(maxAbs, Math.abs(a - b));
            }
            cos.push(na > 0 && nb > 0 ? dot / Math.sqrt(na * nb) : na === nb ? 1 : 0);
          }
          if (state && vsRef !== null) {
            const ref = referenceAttention(state, q, c.qHeads);
            vsRef = Math.max(vsRef, ...rowRelativeErrors(out, ref, d));
          }
        }
      } finally {
        cache.dispose();
      }
    }
    const sorted = [...rel].sort((a, b) => a - b);
    rows.push({
      name: cfg.name, preset: cfg.preset, role: cfg.role, overrides: cfg.overrides, method: refConfig.method,
      nominalBits: configBitsPerElement(refConfig), heldBits,
      meanRelErr: rel.reduce((a, b) => a + b, 0) / rel.length,
      medianRelErr: sorted[sorted.length >> 1],
      maxRelErr: sorted[sorted.length - 1],
      maxAbsErr: maxAbs,
      meanCosine: cos.reduce((a, b) => a + b, 0) / cos.length,
      minCosine: Math.min(...cos),
      backendVsReference: vsRef,
      outputRows: rel.length,
    });
  }
  return {
    tool: 'innerq eval',
    machine: machineInfo(),
    parameters: p,
    backend,
    cases: cases.map((c) => ({ name: c.name, tokens: c.tokens, kvHeads: c.history.kvHeads, qHeads: c.qHeads, headDim: c.history.headDim, queries: c.nQueries })),
    rows,
    seconds: (Date.now() - started) / 1000,
  };
}
