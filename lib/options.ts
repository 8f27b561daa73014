// options.ts - presets and the validation of KVCache options into the engine's configuration.
import * as v from './validate';
import type { NativeConfig, NativeFormat } from './native';

export type PresetName = 'innerq' | 'innerq-4' | 'kivi-2' | 'kivi-4' | 'fp16';
export type Method = 'innerq' | 'kivi' | 'fp16';
export type QuantMode = 'sym' | 'asym' | 'hybrid';
export type BackendName = 'auto' | 'cpu' | 'cuda' | 'sim';
export type Bits = 2 | 3 | 4 | 8;
export type GroupSize = 32 | 64 | 128;

export const PRESET_NAMES: readonly PresetName[] = ['innerq', 'innerq-4', 'kivi-2', 'kivi-4', 'fp16'];
export const METHODS: readonly Method[] = ['innerq', 'kivi', 'fp16'];
export const MODES: readonly QuantMode[] = ['sym', 'asym', 'hybrid'];
export const BITS: readonly Bits[] = [2, 3, 4, 8];
export const GROUP_SIZES: readonly GroupSize[] = [32, 64, 128];
export const BACKENDS: readonly BackendName[] = ['auto', 'cpu', 'cuda', 'sim'];
export const SIM_ORDERS = ['forward', 'reversed', 'shuffled'] as const;

/** Documented upper bounds (see README "Limits"). */
export const LIMITS = {
  layers: 1024,
  qHeads: 1024,
  kvHeads: 256,
  headDim: 256,
  maxTokens: 1 << 22,
  sinkTokens: 4096,
  recentTokens: 65536,
  pageTokens: 8192,
  threads: 256,
} as const;

/** The quantization settings a preset stands for. Every KVCache option overrides its preset's value. */
export interface QuantSettings {
  method: Method;
  keyBits: Bits;
  valueBits: Bits;
  keyMode: QuantMode;
  valueMode: QuantMode;
  groupSize: GroupSize;
  sinkTokens: number;
  recentTokens: number;
  keyNorm: boolean;
}

export const PRESETS: Readonly<Record<PresetName, Readonly<QuantSettings>>> = {
  // InnerQ paper defaults: 3-bit symmetric keys, 2-bit hybrid values, fp16 sink 32 + recent 96, key norm.
  innerq: { method: 'innerq', keyBits: 3, valueBits: 2, keyMode: 'sym', valueMode: 'hybrid', groupSize: 32, sinkTokens: 32, recentTokens: 96, keyNorm: true },
  'innerq-4': { method: 'innerq', keyBits: 4, valueBits: 4, keyMode: 'sym', valueMode: 'hybrid', groupSize: 32, sinkTokens: 32, recentTokens: 96, keyNorm: true },
  // KIVI-style outer grouping: asymmetric, residual window of 128 fp16 tokens, no sink, no normalization.
  'kivi-2': { method: 'kivi', keyBits: 2, valueBits: 2, keyMode: 'asym', valueMode: 'asym', groupSize: 32, sinkTokens: 0, recentTokens: 128, keyNorm: false },
  'kivi-4': { method: 'kivi', keyBits: 4, valueBits: 4, keyMode: 'asym', valueMode: 'asym', groupSize: 32, sinkTokens: 0, recentTokens: 128, keyNorm: false },
  fp16: { method: 'fp16', keyBits: 8, valueBits: 8, keyMode: 'sym', valueMode: 'sym', groupSize: 32, sinkTokens: 0, recentTokens: 0, keyNorm: false },
};

export interface KVCacheOptions extends Partial<QuantSettings> {
  layers: number;
  qHeads: number;
  kvHeads: number;
  headDim: number;
  maxTokens: number;
  preset?: PresetName;
  /** Tokens per page of the cache's page pool: a multiple of 128 (default 256). */
  pageTokens?: number;
  backend?: BackendName;
  /** cpu backend: worker threads (default: all cores). */
  threads?: number;
  /**
   * cpu backend kernels: true (default) = the best this CPU has (AVX-512 VNNI for the InnerQ integer paths, else
   * AVX2), 'avx2' = never AVX-512, false = the portable C++ kernels.
   */
  simd?: boolean | 'avx2';
  /** cuda backend: which GPU. */
  deviceId?: number;
  /** sim backend: order in which the emulated threads of a block run (exposes races). */
  simThreadOrder?: (typeof SIM_ORDERS)[number];
  /** sim backend: seed for the shuffled thread order. */
  simSeed?: number;
}

export const OPTION_KEYS: readonly string[] = [
  'layers', 'qHeads', 'kvHeads', 'headDim', 'maxTokens', 'preset', 'method', 'keyBits', 'valueBits', 'keyMode',
  'valueMode', 'groupSize', 'sinkTokens', 'recentTokens', 'keyNorm', 'pageTokens', 'backend', 'threads', 'simd',
  'deviceId', 'simThreadOrder', 'simSeed',
];

export interface ResolvedOptions extends QuantSettings {
  layers: number; qHeads: number; kvHeads: number; headDim: number; maxTokens: number;
  preset: PresetName; pageTokens: number; backend: BackendName; threads: number; simd: boolean | 'avx2';
  deviceId: number; simThreadOrder: (typeof SIM_ORDERS)[number]; simSeed: number;
}

export function resolveOptions(input: unknown): ResolvedOptions {
  const o = v.plainObject(input, 'options');
  v.knownKeys(o, 'options', OPTION_KEYS);
  const need = (k: string) => {
    if (o[k] === undefined) throw v.typeError('positive integer', `options.${k}`, o[k]);
    return o[k];
  };
  const layers = v.integer(need('layers'), 'options.layers', 1, LIMITS.layers);
  const kvHeads = v.integer(need('kvHeads'), 'options.kvHeads', 1, LIMITS.kvHeads);
  const qHeads = v.integer(need('qHeads'), 'options.qHeads', 1, LIMITS.qHeads);
  if (qHeads % kvHeads !== 0) throw v.rangeError(`a multiple of kvHeads (${kvHeads})`, 'options.qHeads', qHeads);
  const headDim = v.integer(need('headDim'), 'options.headDim', 1, LIMITS.headDim);
  const maxTokens = v.integer(need('maxTokens'), 'options.maxTokens', 1, LIMITS.maxTokens);
  const preset = o.preset === undefined ? 'innerq' : v.oneOf(o.preset, 'options.preset', PRESET_NAMES);
  const base = PRESETS[preset];
  const pick = <T>(k: keyof QuantSettings, check: (x: unknown, name: string) => T): T =>
    o[k] === undefined ? (base[k] as unknown as T) : check(o[k], `options.${k}`);
  const method = pick('method', (x, n) => v.oneOf(x, n, METHODS));
  const quantDefaults = method !== 'fp16' && base.method === 'fp16' ? PRESETS.innerq : base;
  const pickQ = <T>(k: keyof QuantSettings, check: (x: unknown, name: string) => T): T =>
    o[k] === undefined ? (quantDefaults[k] as unknown as T) : check(o[k], `options.${k}`);
  const keyBits = pickQ('keyBits', (x, n) => v.oneOf(x, n, BITS));
  const valueBits = pickQ('valueBits', (x, n) => v.oneOf(x, n, BITS));
  const keyMode = pickQ('keyMode', (x, n) => v.oneOf(x, n, MODES));
  const valueMode = pickQ('valueMode', (x, n) => v.oneOf(x, n, MODES));
  const groupSize = pickQ('groupSize', (x, n) => v.oneOf(x, n, GROUP_SIZES));
  const sinkTokens = pickQ('sinkTokens', (x, n) => v.integer(x, n, 0, LIMITS.sinkTokens));
  const recentTokens = pickQ('recentTokens', (x, n) => v.integer(x, n, 0, LIMITS.recentTokens));
  const keyNorm = pickQ('keyNorm', (x, n) => v.boolean(x, n));
  if (method === 'fp16') {
    // An fp16 cache quantizes nothing: settings that only make sense for quantized caches are mistakes.
    for (const k of ['keyBits', 'valueBits', 'keyMode', 'valueMode', 'groupSize', 'keyNorm'] as const) {
      if (o[k] !== undefined) throw v.rangeError(`no ${k} with method 'fp16' (it quantizes nothing)`, `options.${k}`, o[k]);
    }
    for (const k of ['sinkTokens', 'recentTokens'] as const) {
      if (o[k] !== undefined && o[k] !== 0) throw v.rangeError(`0 (or nothing) with method 'fp16'`, `options.${k}`, o[k]);
    }
  } else if (headDim % groupSize !== 0) {
    throw v.rangeError(`a multiple of groupSize (${groupSize}); supported: headDim a multiple of 32, 64 or 128 up to 256 with the matching groupSize`, 'options.headDim', headDim);
  }
  // Every backend reads fp16 rows in 32-channel blocks (the cpu backend rejected other head dims at the first quantize).
  if (method === 'fp16' && headDim % 32 !== 0) throw v.rangeError('a multiple of 32', 'options.headDim', headDim);
  const pageTokens = o.pageTokens === undefined ? 256 : v.integer(o.pageTokens, 'options.pageTokens', 128, LIMITS.pageTokens);
  if (pageTokens % 128 !== 0) throw v.rangeError('a multiple of 128 between 128 and 8192', 'options.pageTokens', pageTokens);
  const backend = o.backend === undefined ? 'auto' : v.oneOf(o.backend, 'options.backend', BACKENDS);
  const threads = o.threads === undefined ? 0 : v.integer(o.threads, 'options.threads', 1, LIMITS.threads);
  const simd = o.simd === undefined ? true : simdChoice(o.simd);
  const deviceId = o.deviceId === undefined ? 0 : v.integer(o.deviceId, 'options.deviceId', 0, 64);
  const simThreadOrder = o.simThreadOrder === undefined ? 'forward' : v.oneOf(o.simThreadOrder, 'options.simThreadOrder', SIM_ORDERS);
  const simSeed = o.simSeed === undefined ? 1 : v.integer(o.simSeed, 'options.simSeed', 0, 0x7fffffff);
  return {
    layers, qHeads, kvHeads, headDim, maxTokens, preset, method, keyBits, valueBits, keyMode, valueMode, groupSize,
    sinkTokens: method === 'fp16' ? 0 : sinkTokens, recentTokens: method === 'fp16' ? 0 : recentTokens,
    keyNorm: method === 'fp16' ? false : keyNorm, pageTokens, backend, threads, simd, deviceId, simThreadOrder, simSeed,
  };
}

const ORIENTATION = { fp16Rows: 0, rowGrouped: 1, colGrouped: 2 } as const;
const MODE_CODE: Record<QuantMode, number> = { sym: 0, asym: 1, hybrid: 2 };

/** Which way each matrix is grouped: InnerQ groups along the inner dimension of each decode product. */
export function formats(o: QuantSettings): { keyFormat: NativeFormat; valueFormat: NativeFormat } {
  if (o.method === 'fp16') {
    const f = { orientation: ORIENTATION.fp16Rows, bits: 16, groupSize: 32, mode: 0 };
    return { keyFormat: f, valueFormat: { ...f } };
  }
  const keyOrientation = o.method === 'innerq' ? ORIENTATION.rowGrouped : ORIENTATION.colGrouped;
  const valueOrientation = o.method === 'innerq' ? ORIENTATION.colGrouped : ORIENTATION.rowGrouped;
  return {
    keyFormat: { orientation: keyOrientation, bits: o.keyBits, groupSize: o.groupSize, mode: MODE_CODE[o.keyMode] },
    valueFormat: { orientation: valueOrientation, bits: o.valueBits, groupSize: o.groupSize, mode: MODE_CODE[o.valueMode] },
  };
}

export function nativeConfig(o: ResolvedOptions): NativeConfig {
  return {
    layers: o.layers, qHeads: o.qHeads, kvHeads: o.kvHeads, headDim: o.headDim, maxTokens: o.maxTokens,
    ...formats(o), sinkTokens: o.sinkTokens, recentTokens: o.recentTokens, pageTokens: o.pageTokens, keyNorm: o.keyNorm,
  };
}

/** Storage bits per cached element of a quantized matrix: code bits + fp16 scale (+ fp16 zero) per group. */
export function effectiveBits(bits: number, mode: QuantMode, groupSize: number): number {
  return bits + (mode === 'sym' ? 16 : 32) / groupSize;
}

function simdChoice(value: unknown): boolean | 'avx2' {
  if (value === true || value === false || value === 'avx2') return value;
  const what = "true, false or 'avx2'";
  throw typeof value === 'boolean' || typeof value === 'string' ? v.rangeError(what, 'options.simd', value) : v.typeError(what, 'options.simd', value);
}

/** The native kernel choice for options.simd: 0 portable, 1 AVX2 only, 2 the best the CPU has. */
export function simdLevel(simd: boolean | 'avx2'): number {
  return simd === false ? 0 : simd === 'avx2' ? 1 : 2;
}
