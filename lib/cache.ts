// cache.ts - KVCache: the object users hold. Validates every argument, then calls the native engine.
import * as v from './validate';
import { native, NativeCacheInstance, NativeSnapshot } from './native';
import { chooseBackend } from './backends';
import * as persist from './persist';
import { DeviceBuffer, DeviceDtype, ForeignDevicePointer, checkForeign, elementBytes } from './device';
import { KVCacheOptions, ResolvedOptions, SIM_ORDERS, nativeConfig, resolveOptions, simdLevel } from './options';

export interface KVCacheStats {
  /** Tokens held, summed over layers. */
  tokens: number;
  bytes: {
    /** Quantized codes. */ codes: number;
    /** fp16 scales and zero points. */ scales: number;
    /** fp16 sink and recent windows. */ windows: number;
    /** Everything the cache holds for its tokens (codes + scales + windows + key-norm factors). */ held: number;
    /** What an fp16 cache of the same tokens would hold. */ fp16: number;
    /** Backend memory reserved (whole pages, window buffers). */ allocated: number;
  };
  /** held bytes × 8 / (cached elements of K and V); 16 for an fp16 cache. */
  bitsPerElement: number;
  /** fp16 bytes / held bytes. */
  compressionRatio: number;
  pages: { inUse: number; allocated: number };
}

/** Options of calls that read device memory. */
export interface DeviceCallOptions {
  /** A cudaStream_t (as a BigInt) that produces the inputs: the call waits for it first. Ignored on cpu/sim. */
  stream?: bigint;
}

function streamOf(opts: DeviceCallOptions | undefined): bigint | undefined {
  if (opts === undefined) return undefined;
  const o = v.plainObject(opts, 'opts');
  v.knownKeys(o, 'opts', ['stream']);
  if (o.stream === undefined) return undefined;
  if (typeof o.stream !== 'bigint') throw v.typeError('BigInt cudaStream_t handle', 'opts.stream', o.stream);
  if (o.stream < 0n || o.stream >= 1n << 64n) throw v.rangeError('64-bit stream handle', 'opts.stream', o.stream);
  return o.stream;
}

function disposedError(method: string): Error {
  const e = new Error(`innerq: KVCache.${method}() was called after dispose(); create a new KVCache`);
  (e as Error & { code: string }).code = 'ERR_INNERQ_DISPOSED';
  return e;
}

/**
 * A quantized KV cache for every layer of one sequence. See README for the options; `preset` picks the
 * method, and every other quantization option overrides the preset.
 */
export class KVCache {
  readonly options: Readonly<ResolvedOptions>;
  /** The backend actually running this cache ('auto' resolved). */
  readonly backend: 'cpu' | 'cuda' | 'sim';
  private handle: NativeCacheInstance | null;
  private readonly rowLength: number;
  private readonly tokensPerLayer: number[];

  constructor(options: KVCacheOptions) {
    const o = resolveOptions(options);
    this.options = Object.freeze(o);
    this.backend = chooseBackend(o.backend, o.deviceId);
    if (this.backend !== 'cpu' && ![32, 64, 128, 256].includes(o.headDim)) {
      // The GPU kernels reduce over headDim/8 lanes with shuffles: a power of two (cpu takes any multiple of G).
      throw v.rangeError(`one of 32, 64, 128, 256 on the ${this.backend} backend (the cpu backend also takes other multiples of groupSize)`, 'options.headDim', o.headDim);
    }
    this.rowLength = o.kvHeads * o.headDim;
    this.tokensPerLayer = new Array(o.layers).fill(0);
    this.handle = new (native().NativeCache)(nativeConfig(o), this.backend, {
      threads: o.threads, simd: simdLevel(o.simd), simThreadOrder: SIM_ORDERS.indexOf(o.simThreadOrder), simSeed: o.simSeed, deviceId: o.deviceId,
    });
  }

  private live(method: string): NativeCacheInstance {
    if (!this.handle) throw disposedError(method);
    return this.handle;
  }

  private layerIndex(layer: unknown): number {
    return v.integer(layer, 'layer', 0, this.options.layers - 1);
  }

  /**
   * Fill an empty layer with a prompt's keys and values, each [tokens][kvHeads][headDim] as a Float32Array
   * (rounded to fp16), a Uint16Array of fp16 bits, or an 'f16' DeviceBuffer (see createDeviceBuffer).
   * Computes the key normalization from the non-sink tokens.
   */
  prefill(layer: number, keys: Float32Array | Uint16Array | DeviceBuffer, values: Float32Array | Uint16Array | DeviceBuffer, opts?: DeviceCallOptions): void {
    const h = this.live('prefill');
    const l = this.layerIndex(layer);
    const device = keys instanceof DeviceBuffer;
    const n = device ? this.deviceRows(keys, 'keys') : v.tokenRows(keys, 'keys', this.rowLength);
    if (device) {
      if (this.deviceRows(values, 'values') !== n) throw v.rangeError(`'f16' DeviceBuffer of ${n} elements`, 'values', values);
    } else v.tokenRows(values, 'values', this.rowLength, n);
    const tokens = n / this.rowLength;
    if (this.tokensPerLayer[l] !== 0) {
      throw new RangeError(`Expected an empty layer for layer but received ${l} (holding ${this.tokensPerLayer[l]} tokens) of type number; use append() or reset(layer) first`);
    }
    if (tokens > this.options.maxTokens) {
      throw v.rangeError(`at most maxTokens (${this.options.maxTokens}) tokens of ${this.rowLength} elements`, 'keys', keys);
    }
    if (device) h.prefillDevice(l, keys.address, (values as DeviceBuffer).address, tokens, streamOf(opts));
    else h.prefill(l, keys, values as Float32Array | Uint16Array, tokens);
    this.tokensPerLayer[l] = tokens;
  }

  /** Append one token's key and value, each [kvHeads][headDim] (host arrays or 'f16' DeviceBuffers). */
  append(layer: number, key: Float32Array | Uint16Array | DeviceBuffer, value: Float32Array | Uint16Array | DeviceBuffer, opts?: DeviceCallOptions): void {
    const h = this.live('append');
    const l = this.layerIndex(layer);
    const device = key instanceof DeviceBuffer;
    if (device) {
      for (const [b, name] of [[key, 'key'], [value, 'value']] as const) {
        if (this.deviceRows(b, name) !== this.rowLength) throw v.rangeError(`'f16' DeviceBuffer of ${this.rowLength} elements`, name, b);
      }
    } else {
      v.tokenRows(key, 'key', this.rowLength, this.rowLength);
      v.tokenRows(value, 'value', this.rowLength, this.rowLength);
    }
    if (this.tokensPerLayer[l] >= this.options.maxTokens) {
      throw new RangeError(`Expected a layer below maxTokens (${this.options.maxTokens}) for layer but received ${l} (full) of type number; the cache is unchanged`);
    }
    if (device) h.appendDevice(l, key.address, (value as DeviceBuffer).address, streamOf(opts));
    else h.append(l, key, value as Float32Array | Uint16Array);
    this.tokensPerLayer[l]++;
  }

  /** Element count of an 'f16' DeviceBuffer of this backend holding whole token rows. */
  private deviceRows(b: unknown, name: string): number {
    const what = `'f16' DeviceBuffer of this cache's backend (${this.backend}) with a positive multiple of ${this.rowLength} elements`;
    if (!(b instanceof DeviceBuffer)) throw v.typeError(what, name, b);
    if (b.freed) throw v.rangeError(`${what} (it was freed)`, name, b);
    if (b.dtype !== 'f16' || b.backend !== this.backend || b.length === 0 || b.length % this.rowLength !== 0) throw v.rangeError(what, name, b);
    return b.length;
  }

  /**
   * Allocate `length` elements of `dtype` in this cache's backend memory (GPU memory on cuda, emulated device
   * memory on sim, host memory on cpu). Freed by buffer.free() or when the cache is disposed.
   */
  createDeviceBuffer(dtype: DeviceDtype, length: number): DeviceBuffer {
    const h = this.live('createDeviceBuffer');
    const d = v.oneOf(dtype, 'dtype', ['f16', 'f32'] as const);
    const n = v.integer(length, 'length', 1, 2 ** 40);
    const bytes = n * elementBytes(d);
    return new DeviceBuffer(() => this.live('DeviceBuffer'), this.backend, h.deviceAlloc(bytes), bytes, d, true);
  }

  /**
   * Wrap memory another library allocated on this cache's device (e.g. a framework's CUDA tensor) without
   * copying: { address: BigInt, byteLength, dtype }. The caller keeps it alive and owns it. On the sim backend
   * the address must be emulated device memory; a host address is reported as a device error.
   */
  wrapDevicePointer(pointer: ForeignDevicePointer): DeviceBuffer {
    this.live('wrapDevicePointer');
    const p = checkForeign(pointer);
    return new DeviceBuffer(() => this.live('DeviceBuffer'), this.backend, p.address, p.byteLength, p.dtype, false);
  }

  private checkAttend(method: string, layer: unknown, query: unknown, out: unknown): [NativeCacheInstance, number, Float32Array, Float32Array] {
    const h = this.live(method);
    const l = this.layerIndex(layer);
    const len = this.options.qHeads * this.options.headDim;
    const q = v.floatVector(query, 'query', len);
    let o: Float32Array;
    if (out === undefined) o = new Float32Array(len);
    else {
      if (!(out instanceof Float32Array)) throw v.typeError(`Float32Array of length ${len}`, 'out', out);
      if (out.length !== len) throw v.rangeError(`Float32Array of length ${len}`, 'out', out);
      o = out;
    }
    if (this.tokensPerLayer[l] === 0) {
      throw new RangeError(`Expected a layer holding at least one token for layer but received ${l} (empty) of type number`);
    }
    return [h, l, q, o];
  }

  /**
   * One decode step of attention for a layer: softmax(q·Kᵀ/√d)·V over every cached token. query is
   * [qHeads][headDim]; query head h uses kv head ⌊h / (qHeads/kvHeads)⌋. Returns [qHeads][headDim]
   * (written into `out` when given).
   */
  attend(layer: number, query: Float32Array, out?: Float32Array): Float32Array;
  /** attend() with the query and output in device memory ('f32' DeviceBuffers of qHeads*headDim elements). */
  attend(layer: number, query: DeviceBuffer, out: DeviceBuffer, opts?: DeviceCallOptions): DeviceBuffer;
  attend(layer: number, query: Float32Array | DeviceBuffer, out?: Float32Array | DeviceBuffer, opts?: DeviceCallOptions): Float32Array | DeviceBuffer {
    if (query instanceof DeviceBuffer) {
      const h = this.live('attend');
      const l = this.layerIndex(layer);
      const len = this.options.qHeads * this.options.headDim;
      const what = `'f32' DeviceBuffer of this cache's backend (${this.backend}) with ${len} elements`;
      for (const [b, name] of [[query, 'query'], [out, 'out']] as const) {
        if (!(b instanceof DeviceBuffer)) throw v.typeError(what, name, b);
        if (b.freed || b.dtype !== 'f32' || b.backend !== this.backend || b.length !== len) throw v.rangeError(what, name, b);
      }
      if (this.tokensPerLayer[l] === 0) {
        throw new RangeError(`Expected a layer holding at least one token for layer but received ${l} (empty) of type number`);
      }
      h.attendDevice(l, query.address, (out as DeviceBuffer).address, streamOf(opts));
      return out as DeviceBuffer;
    }
    const [h, l, q, o] = this.checkAttend('attend', layer, query, out);
    h.attend(l, q, o);
    return o;
  }

  /** attend() on a worker thread. The query is copied, so the caller may reuse it at once. */
  attendAsync(layer: number, query: Float32Array, out?: Float32Array): Promise<Float32Array> {
    try {
      const [h, l, q, o] = this.checkAttend('attendAsync', layer, query, out);
      const qCopy = Float32Array.from(q);
      return new Promise((resolve, reject) => {
        h.attendAsync(l, qCopy, o, (err) => (err ? reject(err) : resolve(o)));
      });
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /** Tokens held by a layer. */
  length(layer: number): number {
    this.live('length');
    return this.tokensPerLayer[this.layerIndex(layer)];
  }

  /** Forget every token of a layer (its pages return to the pool). */
  reset(layer: number): void {
    const h = this.live('reset');
    const l = this.layerIndex(layer);
    h.reset(l);
    this.tokensPerLayer[l] = 0;
  }

  /** Memory held, per kind, and the resulting bits per element and compression ratio. */
  stats(): KVCacheStats {
    const s = this.live('stats').stats();
    const elements = s.tokens * this.rowLength * 2;
    return {
      tokens: s.tokens,
      bytes: { codes: s.codeBytes, scales: s.scaleBytes, windows: s.windowBytes, held: s.heldBytes, fp16: s.fp16Bytes, allocated: s.allocatedBytes },
      bitsPerElement: elements ? (s.heldBytes * 8) / elements : 0,
      compressionRatio: s.heldBytes ? s.fp16Bytes / s.heldBytes : 0,
      pages: { inUse: s.pagesInUse, allocated: s.pagesAllocated },
    };
  }

  /**
   * The per-channel key normalization factors f of a layer, [kvHeads][headDim], or null when key
   * normalization is off or not computed yet. Stored keys are K/f and the query is multiplied by f.
   * To fold f into a model's weights instead (W_k columns ÷ f, W_q columns × f), f must be RoPE-pair
   * consistent (f[j] = f[j + headDim/2]); rotary embeddings mix each such pair, so otherwise folding
   * before RoPE is not equivalent.
   */
  keyNormFactors(layer: number): Float32Array | null {
    const h = this.live('keyNormFactors');
    return h.keyNormFactors(this.layerIndex(layer));
  }

  /** Raw copy of a layer's memory (sink, ring, pages, factors), for inspection and tests. */
  snapshot(layer: number): NativeSnapshot {
    const h = this.live('snapshot');
    return h.snapshot(this.layerIndex(layer));
  }

  /**
   * The key GEMV of a decode step alone (cpu backend only; for benchmarks): scores[h][t] = q_h·K_t/√d over
   * every token of the layer, key normalization folded in. Returns [qHeads][length(layer)].
   */
  keyScores(layer: number, query: Float32Array, scores?: Float32Array): Float32Array {
    const h = this.live('keyScores');
    const l = this.layerIndex(layer);
    const q = v.floatVector(query, 'query', this.options.qHeads * this.options.headDim);
    const n = this.options.qHeads * this.tokensPerLayer[l];
    const out = scores ?? new Float32Array(n);
    if (!(out instanceof Float32Array) || out.length !== n) throw v.rangeError(`Float32Array of length ${n}`, 'scores', out);
    h.keyScores(l, q, out);
    return out;
  }

  /**
   * The value GEMV of a decode step alone (cpu backend only; for benchmarks): out[h] = Σ_t probs[h][t]·V_t.
   * probs is [qHeads][length(layer)], non-negative.
   */
  valueSum(layer: number, probs: Float32Array, out?: Float32Array): Float32Array {
    const h = this.live('valueSum');
    const l = this.layerIndex(layer);
    const p = v.floatVector(probs, 'probs', this.options.qHeads * this.tokensPerLayer[l]);
    const len = this.options.qHeads * this.options.headDim;
    const o = out ?? new Float32Array(len);
    if (!(o instanceof Float32Array) || o.length !== len) throw v.rangeError(`Float32Array of length ${len}`, 'out', o);
    h.valueSum(l, p, o);
    return o;
  }

  /**
   * Which kernels run this cache ('avx512vnni' / 'avx2' / 'portable' on cpu, else the backend name) and with how many
   * threads. deviceAttendMs (cuda/sim; null on cpu): cumulative device time of the attention kernels of every attend()
   * so far, from events recorded on the backend's stream (gaps between kernel launches included, host copies not).
   */
  kernelInfo(): { kernels: string; threads: number; pageBytes: number; ringCapacity: number; deviceAttendMs: number | null } {
    return this.live('kernelInfo').geometry();
  }

  /** Release all memory. Idempotent; any later call except dispose() throws. */
  dispose(): void {
    if (!this.handle) return;
    this.handle.dispose();
    this.handle = null;
  }

  get disposed(): boolean {
    return this.handle === null;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  // ---- persistence (lib/persist.ts; format in docs/RELIABILITY.md) ----

  private persistAccess(method: string): persist.CacheAccess {
    const h = this.live(method);
    return {
      options: this.options, backend: this.backend, lengths: this.tokensPerLayer.slice(), geometry: h.geometry(),
      snapshot: (l) => h.snapshot(l), hasKeyNorm: (l) => h.keyNormFactors(l) !== null,
    };
  }

  private static readonly restoreTarget: persist.RestoreTarget = {
    create: (o) => new KVCache(o as unknown as KVCacheOptions),
    describe: (c) => ({ options: c.options, geometry: c.live('load').geometry() }),
    restore: (c, layer, snapshot) => {
      c.live('load').restore(layer, snapshot);
      c.tokensPerLayer[layer] = snapshot.tokens;
    },
  };

  /** Every layer as one Buffer (versioned header, per-layer CRC32); KVCache.load() restores it bit-exactly. */
  save(): Buffer {
    return persist.saveBuffer(this.persistAccess('save'));
  }

  /** save() streamed to a file one layer at a time, through a temporary file + fsync + rename. */
  saveToFile(path: string): void {
    persist.saveFile(this.persistAccess('saveToFile'), path);
  }

  /** saveToFile() with asynchronous I/O; the layers are copied before it returns, later changes are not saved. */
  saveToFileAsync(path: string): Promise<void> {
    try {
      return persist.saveFileAsync(this.persistAccess('saveToFileAsync'), path);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /** A cache from save()'s bytes, on any backend; options: backend, threads, simd, deviceId, simThreadOrder, simSeed. */
  static load(data: Uint8Array, options?: persist.LoadOptions): KVCache {
    return persist.loadBuffer(data, options, KVCache.restoreTarget);
  }

  static loadFromFile(path: string, options?: persist.LoadOptions): KVCache {
    return persist.loadFile(path, options, KVCache.restoreTarget);
  }

  static loadFromFileAsync(path: string, options?: persist.LoadOptions): Promise<KVCache> {
    return persist.loadFileAsync(path, options, KVCache.restoreTarget);
  }
}
