// bench.ts - `innerq bench`: decode-step attention timing per preset, backend and context length.
//
// A decode step runs attention over every layer. Filling 32 layers at 32k tokens per preset would take minutes
// (prefill quantizes every token), so by default the step rotates over enough *distinct* layers (each with its
// own cache memory) to make the working set several times the L3 cache: every layer call then streams its
// cache from DRAM exactly as in a model with all layers filled. `--all-layers` fills every layer.
import * as os from 'os';
import { KVCache } from '../cache';
import { backends } from '../backends';
import { PRESETS, PresetName, effectiveBits } from '../options';
import { BandwidthResult, measureBandwidth } from './bandwidth';
import { CliError, MachineInfo, Progress, humanBytes, machineInfo, quantile, median } from './common';

export interface BenchParams {
  presets: PresetName[];
  backends: Array<'auto' | 'cpu' | 'cuda' | 'sim'>;
  contexts: number[];
  layers: number;
  qHeads: number;
  kvHeads: number;
  headDim: number;
  /** cpu worker threads of the main rows (0 = all cores) */
  threads: number;
  /** cpu kernel table (KVCache's simd option: best = true, avx2 = 'avx2', portable = false) */
  kernels: 'best' | 'avx2' | 'portable';
  quick: boolean;
  /** minimum distinct cache memory per preset, MiB */
  workingSetMiB: number;
  allLayers: boolean;
  /** context of the threads-1 rows (the memory/compute-bound check) */
  boundContext: number | null;
  /** context of the cache-resident rows (1 layer) */
  residentContext: number;
  /** tinybench time budget per task, ms (over all rounds) */
  timeMs: number;
  minIterations: number;
  /** interleaved timing rounds: every task runs in each round, with timeMs / rounds */
  rounds: number;
  gemv: boolean;
  seed: number;
}

export type RowKind = 'step' | 'key-gemv' | 'value-gemv' | 'step-1thread' | 'resident-step' | 'resident-key' | 'resident-value';

export interface BenchRow {
  kind: RowKind;
  preset: PresetName;
  backend: 'cpu' | 'cuda' | 'sim';
  kernels: string;
  threads: number;
  context: number;
  /** layers attended per decode step */
  layers: number;
  /** layers with their own cache memory that the step rotates over */
  distinctLayers: number;
  msPerStep: number;
  msPerLayer: number;
  p10: number;
  p90: number;
  /** median absolute deviation of the per-step samples, ms */
  mad: number;
  samples: number;
  /** stats().bytes.held of one layer */
  bytesPerLayer: number;
  /** bytes held by all `layers` layers (what a full model would hold) */
  cacheBytes: number;
  bitsPerElement: number;
  /** bytes the timed operation reads per step (the whole cache for a step; an estimate of one matrix for a GEMV) */
  bytesReadPerStep: number;
  gbps: number;
  /** measured read bandwidth used as the reference for this row (same thread count) */
  bandwidthGBs: number | null;
  fractionOfBandwidth: number | null;
  speedupVsFp16: number | null;
  speedupVsKivi2: number | null;
  bound: 'memory' | 'compute' | null;
  /**
   * cuda/sim step rows: mean device time of the attention kernels per step, ms (CUDA events around each layer's
   * kernels, kernelInfo().deviceAttendMs; excludes the host copies and the synchronization that msPerStep includes).
   */
  deviceMsPerStep: number | null;
  deviceSpeedupVsFp16: number | null;
  deviceSpeedupVsKivi2: number | null;
}

export interface BoundnessRow {
  preset: PresetName;
  kind: 'step' | 'key-gemv' | 'value-gemv';
  context: number;
  dramGBs: number;
  residentGBs: number | null;
  /** resident GB/s ÷ DRAM GB/s: ≈1 when the kernel is compute-bound, ≫1 when memory-bound */
  residentOverDram: number | null;
  /** time with 1 thread ÷ time with all threads (step rows only) */
  threadScaling: number | null;
  fractionOfBandwidth: number | null;
  bound: 'memory' | 'compute';
  why: string;
}

export interface TargetCheck {
  context: number;
  backend: string;
  innerqVsFp16: number;
  innerqVsKivi2: number;
  fp16FractionOfBandwidth: number | null;
  meetsFp16Target: boolean;
  meetsKivi2Target: boolean;
  text: string;
}

export interface BenchResult {
  tool: 'innerq bench';
  machine: MachineInfo;
  parameters: BenchParams;
  bandwidth: BandwidthResult | null;
  memoryEstimateBytes: number;
  rows: BenchRow[];
  boundness: BoundnessRow[];
  targets: TargetCheck[];
  seconds: number;
  /** os.loadavg() when the run ended (machine.loadAverage is at its start): other work disturbs timings */
  loadAverageAfter: number[];
}


/** Bits per cached element (quantized part, no windows) of a preset. */
function nominalBits(p: PresetName): { key: number; value: number } {
  const s = PRESETS[p];
  if (s.method === 'fp16') return { key: 16, value: 16 };
  return { key: effectiveBits(s.keyBits, s.keyMode, s.groupSize), value: effectiveBits(s.valueBits, s.valueMode, s.groupSize) };
}

/** Upper estimate of the bytes one layer of a preset allocates at `tokens` tokens. */
export function estimateLayerBytes(p: PresetName, tokens: number, kvHeads: number, headDim: number): number {
  const row = kvHeads * headDim;
  const b = nominalBits(p);
  const s = PRESETS[p];
  const windows = s.method === 'fp16' ? 0 : (s.sinkTokens + s.recentTokens + 2 * s.groupSize) * row * 2 * 2;
  const pageTokens = 256;
  const paged = Math.ceil(tokens / pageTokens) * pageTokens;
  return Math.ceil((paged * row * (b.key + b.value)) / 8 * 1.05) + windows + 2 ** 20;
}

function distinctLayersFor(p: BenchParams, preset: PresetName, context: number): number {
  if (p.allLayers) return p.layers;
  const per = estimateLayerBytes(preset, context, p.kvHeads, p.headDim);
  return Math.max(1, Math.min(p.layers, Math.max(2, Math.ceil((p.workingSetMiB * 2 ** 20) / per))));
}

/**
 * Host memory the whole run needs at its peak (the largest context, every preset at once, plus the probes).
 * Caches of the cuda backend live in device memory, so only the host-memory backends (cpu, sim) count them.
 */
export function estimateMemory(p: BenchParams, hostBackends = p.backends.filter((b) => b !== 'cuda').length): number {
  let peak = 0;
  const nb = hostBackends;
  for (const ctx of p.contexts) {
    let sum = 0;
    for (const preset of p.presets) sum += nb * distinctLayersFor(p, preset, ctx) * estimateLayerBytes(preset, ctx, p.kvHeads, p.headDim);
    if (p.boundContext === ctx) {
      for (const preset of p.presets) sum += distinctLayersFor(p, preset, ctx) * estimateLayerBytes(preset, ctx, p.kvHeads, p.headDim);
    }
    sum += ctx * p.kvHeads * p.headDim * 2 * 2; // fill data (fp16 keys/values)
    sum += 2 * p.qHeads * ctx * 4; // scores / probs buffers
    peak = Math.max(peak, sum);
  }
  const probe = (p.quick ? 256 : 512) * 2 ** 20;
  return Math.max(peak, probe) + 64 * 2 ** 20;
}

/** Seeded fp16 bit patterns of magnitude 2^-3 .. 2^1 with random signs (timing data). */
function fillData(n: number, seed: number): Uint16Array {
  const out = new Uint16Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    const exp = 12 + (x & 3); // 2^-3 .. 2^0 (times 1.mantissa)
    out[i] = ((x >>> 31) << 15) | (exp << 10) | ((x >>> 8) & 0x3ff);
  }
  return out;
}

function randomQuery(n: number, seed: number): Float32Array {
  const q = new Float32Array(n);
  let x = (seed * 2654435761) >>> 0 || 7;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    q[i] = (x / 4294967296 - 0.5) * 2;
  }
  return q;
}

interface Timing {
  samples: number[];
}

type TinyBench = { Bench: new (o: Record<string, unknown>) => { add(name: string, fn: () => void): unknown; run(): Promise<unknown>; tasks: Array<{ name: string; result: unknown }> } };

let tinybenchModule: TinyBench | null = null;
async function loadTinybench(): Promise<TinyBench> {
  if (!tinybenchModule) {
    // tinybench 6 is ESM-only and tsc emits CommonJS: a Function-wrapped import() is not rewritten to require().
    const load = new Function('m', 'return import(m)') as (m: string) => Promise<TinyBench>;
    tinybenchModule = await load('tinybench');
  }
  return tinybenchModule;
}

// The tasks are timed in p.rounds interleaved rounds (every task once per round, time / rounds each) and the
// samples pooled: a shared machine has slow phases lasting seconds (neighbours' memory traffic, a busy core), and
// one long block per task would let such a phase land on one method only, skewing the ratios of the same run.
async function timeTasks(p: BenchParams, tasks: Array<{ name: string; fn: () => void }>): Promise<Map<string, Timing>> {
  const { Bench } = await loadTinybench();
  const out = new Map<string, Timing>();
  for (const t of tasks) out.set(t.name, { samples: [] });
  for (let round = 0; round < p.rounds; round++) {
    const bench = new Bench({
      time: Math.max(1, Math.round(p.timeMs / p.rounds)),
      iterations: Math.max(1, Math.ceil(p.minIterations / p.rounds)),
      warmupTime: round > 0 ? 0 : p.quick ? 20 : 200,
      warmupIterations: round > 0 ? 1 : p.quick ? 1 : 2,
      retainSamples: true,
      throws: true,
    });
    for (const t of tasks) bench.add(t.name, t.fn);
    await bench.run();
    for (const t of bench.tasks) {
      const r = t.result as { state: string; latency?: { samples?: number[] }; error?: Error };
      if (r.state !== 'completed' || !r.latency?.samples) throw r.error ?? new Error(`benchmark task ${t.name} did not complete (${r.state})`);
      out.get(t.name)!.samples.push(...r.latency.samples);
    }
  }
  return out;
}

/** KVCache's simd option for the cpu backend's caches (the other backends ignore it: left unset). */
function simdOption(p: BenchParams, backend: string): boolean | 'avx2' | undefined {
  if (backend !== 'cpu') return undefined;
  return p.kernels === 'avx2' ? 'avx2' : p.kernels !== 'portable';
}

/** The fraction of the cache's bytes one GEMV reads (keys or values), estimated from the formats' bits. */
function matrixShare(preset: PresetName, which: 'key' | 'value'): number {
  const b = nominalBits(preset);
  return (which === 'key' ? b.key : b.value) / (b.key + b.value);
}

export async function runBench(p: BenchParams, progress: Progress): Promise<BenchResult> {
  const started = Date.now();
  const info = backends();
  const machine = machineInfo();
  const resolved = [...new Set(p.backends.map((b) => (b === 'auto' ? (info.cuda.devices > 0 ? 'cuda' : 'cpu') : b)))] as Array<'cpu' | 'cuda' | 'sim'>;
  // validate shapes and backends before allocating anything (the facade's messages are already clear)
  for (const backend of resolved) {
    for (const preset of p.presets) {
      const c = new KVCache({ layers: 1, qHeads: p.qHeads, kvHeads: p.kvHeads, headDim: p.headDim, maxTokens: 1, preset, backend, threads: p.threads || undefined, simd: simdOption(p, backend) });
      c.dispose();
    }
  }
  const estimate = estimateMemory(p, resolved.filter((b) => b !== 'cuda').length);
  const free = os.freemem();
  if (estimate > free) {
    throw new CliError(
      `innerq: the benchmark would need about ${humanBytes(estimate)} of memory but only ${humanBytes(free)} is available; ` +
        'use fewer --presets, smaller --context, a smaller --working-set, or drop --all-layers',
    );
  }
  const cores = os.cpus().length;
  const mainThreads = p.threads || info.cpu.threads || cores;
  progress.say(`memory estimate ${humanBytes(estimate)} (available ${humanBytes(free)})`);

  let bandwidth: BandwidthResult | null = null;
  if (resolved.includes('cpu')) {
    progress.say('measuring read bandwidth');
    bandwidth = await measureBandwidth(Math.max(1, mainThreads), p.quick);
    progress.say(`read bandwidth: ${Object.entries(bandwidth.gbps).map(([t, g]) => `${t} thread(s) ${g.toFixed(1)} GB/s`).join(', ')}`);
  }
  const bw = (threads: number): number | null => (bandwidth ? bandwidth.gbps[String(threads)] ?? null : null);

  const rows: BenchRow[] = [];
  const row = (kind: RowKind, preset: PresetName, backend: 'cpu' | 'cuda' | 'sim', cache: KVCache, context: number, layers: number, distinct: number, t: Timing, bytesRead: number): BenchRow => {
    const ms = median(t.samples);
    const held = cache.stats().bytes.held / distinct;
    const ki = cache.kernelInfo();
    const gbps = bytesRead / (ms / 1000) / 1e9;
    const ref = backend === 'cpu' ? bw(ki.threads) : null;
    return {
      kind, preset, backend, kernels: ki.kernels, threads: ki.threads, context, layers, distinctLayers: distinct,
      msPerStep: ms, msPerLayer: ms / layers, p10: quantile(t.samples, 0.1), p90: quantile(t.samples, 0.9),
      mad: median(t.samples.map((s) => Math.abs(s - ms))), samples: t.samples.length,
      bytesPerLayer: held, cacheBytes: held * p.layers, bitsPerElement: cache.stats().bitsPerElement,
      bytesReadPerStep: bytesRead, gbps, bandwidthGBs: ref, fractionOfBandwidth: ref ? gbps / ref : null,
      speedupVsFp16: null, speedupVsKivi2: null, bound: null,
      deviceMsPerStep: null, deviceSpeedupVsFp16: null, deviceSpeedupVsKivi2: null,
    };
  };

  const rowLen = p.kvHeads * p.headDim;
  const query = randomQuery(p.qHeads * p.headDim, p.seed);
  const out = new Float32Array(p.qHeads * p.headDim);

  const build = (preset: PresetName, backend: 'cpu' | 'cuda' | 'sim', context: number, distinct: number, data: Uint16Array, threads?: number): KVCache => {
    const cache = new KVCache({ layers: distinct, qHeads: p.qHeads, kvHeads: p.kvHeads, headDim: p.headDim, maxTokens: context, preset, backend, threads, simd: simdOption(p, backend) });
    const t0 = Date.now();
    for (let l = 0; l < distinct; l++) cache.prefill(l, data, data);
    progress.say(`  filled ${preset} on ${backend}${threads ? ` (${threads} thread)` : ''}: ${distinct} layer(s) × ${context} tokens, ${humanBytes(cache.stats().bytes.held)} in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    return cache;
  };

  for (const context of p.contexts) {
    progress.say(`context ${context}: filling caches`);
    const data = fillData(context * rowLen, p.seed + context);
    const scores = new Float32Array(p.qHeads * context);
    const probs = new Float32Array(p.qHeads * context).fill(1 / context);
    const caches: Array<{ preset: PresetName; backend: 'cpu' | 'cuda' | 'sim'; cache: KVCache; distinct: number; threads?: number; attends?: number }> = [];
    try {
      for (const backend of resolved) {
        for (const preset of p.presets) {
          const distinct = distinctLayersFor(p, preset, context);
          caches.push({ preset, backend, cache: build(preset, backend, context, distinct, data, p.threads || undefined), distinct });
        }
      }
      const boundHere = p.boundContext === context && resolved.includes('cpu') && mainThreads > 1;
      if (boundHere) {
        for (const preset of p.presets) {
          const distinct = distinctLayersFor(p, preset, context);
          caches.push({ preset, backend: 'cpu', cache: build(preset, 'cpu', context, distinct, data, 1), distinct, threads: 1 });
        }
      }
      const tasks: Array<{ name: string; fn: () => void }> = [];
      for (const c of caches) {
        const { cache, distinct, preset, backend } = c;
        const key = `${backend}/${preset}/${c.threads ?? 'all'}`;
        c.attends = 0;
        tasks.push({ name: `${key}/step`, fn: () => { for (let l = 0; l < p.layers; l++) cache.attend(l % distinct, query, out); c.attends! += p.layers; } });
        if (p.gemv && backend === 'cpu' && c.threads === undefined) {
          tasks.push({ name: `${key}/key`, fn: () => { for (let l = 0; l < p.layers; l++) cache.keyScores(l % distinct, query, scores); } });
          tasks.push({ name: `${key}/value`, fn: () => { for (let l = 0; l < p.layers; l++) cache.valueSum(l % distinct, probs, out); } });
        }
      }
      progress.say(`context ${context}: timing ${tasks.length} tasks`);
      const timings = await timeTasks(p, tasks);
      for (const c of caches) {
        const key = `${c.backend}/${c.preset}/${c.threads ?? 'all'}`;
        const heldPerLayer = c.cache.stats().bytes.held / c.distinct;
        const kind: RowKind = c.threads === 1 ? 'step-1thread' : 'step';
        const stepRow = row(kind, c.preset, c.backend, c.cache, context, p.layers, c.distinct, timings.get(`${key}/step`)!, heldPerLayer * p.layers);
        const deviceMs = c.cache.kernelInfo().deviceAttendMs;  // the caches are fresh: every attend so far was timed here
        if (deviceMs !== null && c.attends) stepRow.deviceMsPerStep = (deviceMs / c.attends) * p.layers;
        rows.push(stepRow);
        if (timings.has(`${key}/key`)) {
          rows.push(row('key-gemv', c.preset, c.backend, c.cache, context, p.layers, c.distinct, timings.get(`${key}/key`)!, heldPerLayer * p.layers * matrixShare(c.preset, 'key')));
          rows.push(row('value-gemv', c.preset, c.backend, c.cache, context, p.layers, c.distinct, timings.get(`${key}/value`)!, heldPerLayer * p.layers * matrixShare(c.preset, 'value')));
        }
      }
    } finally {
      for (const c of caches) c.cache.dispose();
    }
  }

  // cache-resident rows: one layer, a small context, attended `layers` times per "step"
  if (resolved.includes('cpu')) {
    const context = p.residentContext;
    progress.say(`cache-resident rows: 1 layer × ${context} tokens`);
    const data = fillData(context * rowLen, p.seed + 17);
    const scores = new Float32Array(p.qHeads * context);
    const probs = new Float32Array(p.qHeads * context).fill(1 / context);
    const caches = p.presets.map((preset) => ({ preset, cache: build(preset, 'cpu', context, 1, data, p.threads || undefined) }));
    try {
      const tasks: Array<{ name: string; fn: () => void }> = [];
      for (const { preset, cache } of caches) {
        tasks.push({ name: `${preset}/step`, fn: () => { for (let l = 0; l < p.layers; l++) cache.attend(0, query, out); } });
        if (p.gemv) {
          tasks.push({ name: `${preset}/key`, fn: () => { for (let l = 0; l < p.layers; l++) cache.keyScores(0, query, scores); } });
          tasks.push({ name: `${preset}/value`, fn: () => { for (let l = 0; l < p.layers; l++) cache.valueSum(0, probs, out); } });
        }
      }
      const timings = await timeTasks(p, tasks);
      for (const { preset, cache } of caches) {
        const held = cache.stats().bytes.held;
        rows.push(row('resident-step', preset, 'cpu', cache, context, p.layers, 1, timings.get(`${preset}/step`)!, held * p.layers));
        if (p.gemv) {
          rows.push(row('resident-key', preset, 'cpu', cache, context, p.layers, 1, timings.get(`${preset}/key`)!, held * p.layers * matrixShare(preset, 'key')));
          rows.push(row('resident-value', preset, 'cpu', cache, context, p.layers, 1, timings.get(`${preset}/value`)!, held * p.layers * matrixShare(preset, 'value')));
        }
      }
      for (const r of rows) if (r.kind.startsWith('resident')) { r.fractionOfBandwidth = null; r.bandwidthGBs = null; }
    } finally {
      for (const c of caches) c.cache.dispose();
    }
  }

  // ratios measured in the same run: same kind, backend, context
  for (const r of rows) {
    const find = (preset: PresetName) => rows.find((o) => o.kind === r.kind && o.backend === r.backend && o.context === r.context && o.preset === preset);
    const f = find('fp16');
    const k = find('kivi-2');
    if (f) r.speedupVsFp16 = f.msPerStep / r.msPerStep;
    if (k) r.speedupVsKivi2 = k.msPerStep / r.msPerStep;
    if (r.deviceMsPerStep !== null && f?.deviceMsPerStep) r.deviceSpeedupVsFp16 = f.deviceMsPerStep / r.deviceMsPerStep;
    if (r.deviceMsPerStep !== null && k?.deviceMsPerStep) r.deviceSpeedupVsKivi2 = k.deviceMsPerStep / r.deviceMsPerStep;
  }

  const boundness = classify(p, rows);
  for (const b of boundness) {
    for (const r of rows) {
      if (r.preset === b.preset && r.backend === 'cpu' && (r.kind === b.kind || (b.kind === 'step' && r.kind === 'step-1thread'))) r.bound = b.bound;
    }
  }

  const targets: TargetCheck[] = [];
  for (const backend of resolved) {
    const ctx = p.contexts.includes(16384) ? 16384 : null;
    if (ctx === null) continue;
    const get = (preset: PresetName) => rows.find((r) => r.kind === 'step' && r.backend === backend && r.context === ctx && r.preset === preset);
    const iq = get('innerq'), f = get('fp16'), k = get('kivi-2');
    if (!iq || !f || !k) continue;
    const vf = f.msPerStep / iq.msPerStep, vk = k.msPerStep / iq.msPerStep;
    const frac = f.fractionOfBandwidth;
    const part = (name: string, got: number, want: number): string =>
      got >= want ? `${got.toFixed(2)}× vs ${name} (target ≥ ${want}×: met)` : `${got.toFixed(2)}× vs ${name} (target ≥ ${want}×: MISSED by ${(want / got).toFixed(2)}×)`;
    targets.push({
      context: ctx, backend, innerqVsFp16: vf, innerqVsKivi2: vk, fp16FractionOfBandwidth: frac,
      meetsFp16Target: vf >= 3, meetsKivi2Target: vk >= 1.3,
      text: `${backend} @ ${ctx} tokens: innerq ${iq.msPerStep.toFixed(1)} ms/step; ${part('fp16', vf, 3)}; ${part('kivi-2', vk, 1.3)}; ` +
        `fp16 reads at ${f.gbps.toFixed(1)} GB/s${frac !== null ? ` = ${(frac * 100).toFixed(0)}% of the measured ${f.bandwidthGBs!.toFixed(1)} GB/s` : ''}` +
        (iq.deviceSpeedupVsFp16 !== null && iq.deviceSpeedupVsKivi2 !== null
          ? `; device time of the kernels alone: innerq ${iq.deviceMsPerStep!.toFixed(3)} ms/step, ${iq.deviceSpeedupVsFp16.toFixed(2)}× vs fp16, ${iq.deviceSpeedupVsKivi2.toFixed(2)}× vs kivi-2`
          : ''),
    });
  }

  return { tool: 'innerq bench', machine, parameters: p, bandwidth, memoryEstimateBytes: estimate, rows, boundness, targets, seconds: (Date.now() - started) / 1000, loadAverageAfter: os.loadavg().map((x) => Math.round(x * 100) / 100) };
}

/**
 * Memory- or compute-bound, per preset and kernel (cpu): a memory-bound kernel slows down a lot when its data
 * comes from DRAM instead of the caches (resident GB/s ≫ DRAM GB/s) and runs near the measured bandwidth; a
 * compute-bound one runs at about the same speed either way.
 */
function classify(p: BenchParams, rows: BenchRow[]): BoundnessRow[] {
  const out: BoundnessRow[] = [];
  const ctx = p.boundContext ?? p.contexts[p.contexts.length - 1];
  for (const preset of p.presets) {
    for (const kind of ['step', 'key-gemv', 'value-gemv'] as const) {
      const dram = rows.find((r) => r.kind === kind && r.backend === 'cpu' && r.preset === preset && r.context === ctx);
      if (!dram) continue;
      const residentKind = kind === 'step' ? 'resident-step' : kind === 'key-gemv' ? 'resident-key' : 'resident-value';
      const res = rows.find((r) => r.kind === residentKind && r.preset === preset);
      const one = kind === 'step' ? rows.find((r) => r.kind === 'step-1thread' && r.preset === preset && r.context === ctx) : undefined;
      const ratio = res ? res.gbps / dram.gbps : null;
      const frac = dram.fractionOfBandwidth;
      const scaling = one ? one.msPerStep / dram.msPerStep : null;
      let bound: 'memory' | 'compute';
      let why: string;
      if (frac !== null && frac >= 0.7) {
        bound = 'memory';
        why = `reads at ${(frac * 100).toFixed(0)}% of the measured bandwidth`;
      } else if (ratio !== null && ratio >= 1.5) {
        bound = 'memory';
        why = `${ratio.toFixed(1)}× faster per byte when cache-resident`;
      } else {
        bound = 'compute';
        why = ratio !== null ? `about as fast per byte from DRAM as cache-resident (${ratio.toFixed(2)}×)` : `at ${frac !== null ? (frac * 100).toFixed(0) : '?'}% of bandwidth`;
        if (frac !== null) why += `, ${(frac * 100).toFixed(0)}% of bandwidth`;
      }
      if (scaling !== null) why += `; 1 thread takes ${scaling.toFixed(2)}× the time of ${p.threads || 'all'} thread(s)`;
      out.push({ preset, kind, context: ctx, dramGBs: dram.gbps, residentGBs: res ? res.gbps : null, residentOverDram: ratio, threadScaling: scaling, fractionOfBandwidth: frac, bound, why });
    }
  }
  return out;
}
