// persist.ts - save a KVCache to bytes or a file and load it back (prompt caching across requests or restarts).
//
// File layout (little-endian; docs/RELIABILITY.md has the full description):
//
//   0   8 B   magic  89 'I' 'Q' 'K' 'V' 0D 0A 1A   (high byte + CR LF SUB catch text-mode transfers)
//   8   u32   format version (FORMAT_VERSION)
//   12  u32   header length H in bytes
//   16  u32   CRC32 of bytes 0..15 and of the header
//   20  H B   header: UTF-8 JSON {options (quantization + shape), geometry, layers: [{tokens, quantizedKeys,
//             quantizedValues, pages, keyNorm, bytes}]}
//   then one section per layer: `bytes` of body followed by a u32 CRC32 of the body. Body =
//             sinkKeys u16[sink·kvHeads·headDim] | sinkValues | ringKeys u16[ring·kvHeads·headDim] | ringValues |
//             pages (pages × pageBytes) | keyNorm f32[kvHeads·headDim] (only when the layer has factors)
//   end 8 B   trailer 'IQKV' 'END' 0A
//
// The byte layout is the engine's backend-independent one (docs/FORMAT.md), so a cache saved on one backend loads
// on any other. Every size is derived from the header and checked against the engine's geometry before anything
// reaches the native restore; every section is checksummed; nothing is restored from a section whose checksum or
// sizes are wrong, and a failed load disposes the half-built cache.
import * as fs from 'fs';
import * as os from 'os';
import * as pathMod from 'path';
import type { KVCache } from './cache';
import type { NativeSnapshot } from './native';
import * as v from './validate';
import { ResolvedOptions, resolveOptions } from './options';

export const FORMAT_VERSION = 1;
export const MAGIC = Uint8Array.from([0x89, 0x49, 0x51, 0x4b, 0x56, 0x0d, 0x0a, 0x1a]);
export const TRAILER = Uint8Array.from([0x49, 0x51, 0x4b, 0x56, 0x45, 0x4e, 0x44, 0x0a]);
const PREFIX_BYTES = 20;
const MAX_HEADER_BYTES = 1 << 24;

/** Runtime options a saved cache may be loaded with (everything else comes from the file). */
export const LOAD_OPTION_KEYS: readonly string[] = ['backend', 'threads', 'simd', 'deviceId', 'simThreadOrder', 'simSeed'];
/** The options stored in a file: the shape and the resolved quantization settings. */
const STORED_KEYS = [
  'layers', 'qHeads', 'kvHeads', 'headDim', 'maxTokens', 'preset', 'method', 'keyBits', 'valueBits', 'keyMode',
  'valueMode', 'groupSize', 'sinkTokens', 'recentTokens', 'keyNorm', 'pageTokens',
] as const;

export type LoadOptions = Partial<Pick<ResolvedOptions, 'backend' | 'threads' | 'simd' | 'deviceId' | 'simThreadOrder' | 'simSeed'>>;

// ---- CRC32 (IEEE 802.3, reflected polynomial 0xEDB88320), slicing-by-8 -----------------------------------
const CRC_TABLES: Uint32Array[] = (() => {
  const t: Uint32Array[] = [];
  for (let k = 0; k < 8; k++) t.push(new Uint32Array(256));
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let i = 0; i < 8; i++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[0][n] = c >>> 0;
  }
  for (let n = 0; n < 256; n++) {
    let c = t[0][n];
    for (let k = 1; k < 8; k++) {
      c = t[0][c & 0xff] ^ (c >>> 8);
      t[k][n] = c >>> 0;
    }
  }
  return t;
})();

/** CRC32 of `data`, continuing from `crc` (the CRC of the bytes before it; 0 to start). */
export function crc32(data: Uint8Array, crc = 0): number {
  const [t0, t1, t2, t3, t4, t5, t6, t7] = CRC_TABLES;
  let c = ~crc >>> 0;
  let i = 0;
  const n = data.length;
  for (; i + 8 <= n; i += 8) {
    const a = (c ^ (data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24))) >>> 0;
    c = t7[a & 0xff] ^ t6[(a >>> 8) & 0xff] ^ t5[(a >>> 16) & 0xff] ^ t4[a >>> 24] ^
      t3[data[i + 4]] ^ t2[data[i + 5]] ^ t1[data[i + 6]] ^ t0[data[i + 7]];
  }
  for (; i < n; i++) c = t0[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

// ---- errors ----------------------------------------------------------------------------------------------
export type PersistErrorCode =
  | 'ERR_INNERQ_BAD_MAGIC' | 'ERR_INNERQ_UNSUPPORTED_VERSION' | 'ERR_INNERQ_TRUNCATED' | 'ERR_INNERQ_CORRUPT'
  | 'ERR_INNERQ_INCOMPATIBLE' | 'ERR_INNERQ_TOO_LARGE';

function persistError(code: PersistErrorCode, what: string, name: string, value: unknown, why: string): RangeError {
  const e = new RangeError(`${v.message(what, name, value)}: ${why}`);
  (e as RangeError & { code: string }).code = code;
  return e;
}

// ---- header ----------------------------------------------------------------------------------------------
interface LayerEntry { tokens: number; quantizedKeys: number; quantizedValues: number; pages: number; keyNorm: boolean; bytes: number }
interface Header {
  format: 'innerq-kvcache';
  options: Record<(typeof STORED_KEYS)[number], unknown>;
  geometry: { pageBytes: number; ringCapacity: number };
  layers: LayerEntry[];
  savedFrom?: string;
}

interface Shape { sinkElems: number; ringElems: number; rowElems: number; pageBytes: number }

function shapeOf(o: ResolvedOptions, geometry: { pageBytes: number; ringCapacity: number }): Shape {
  const rowElems = o.kvHeads * o.headDim;
  return { sinkElems: o.sinkTokens * rowElems, ringElems: geometry.ringCapacity * rowElems, rowElems, pageBytes: geometry.pageBytes };
}

/** Quantized tokens of a matrix for a layer of `tokens` tokens (docs/FORMAT.md §6: a function of the count). */
function quantizedCount(o: ResolvedOptions, tokens: number, columnGrouped: boolean): number {
  const n = tokens - Math.min(tokens, o.sinkTokens);
  const over = Math.max(0, n - o.recentTokens);
  const g = columnGrouped ? o.groupSize : 1;
  return Math.floor(over / g) * g;
}

/** What a layer of `tokens` tokens must look like in this configuration. */
function expectedLayer(o: ResolvedOptions, shape: Shape, tokens: number, keyNorm: boolean): LayerEntry {
  // InnerQ groups values over tokens (column-grouped); KIVI-style groups keys over tokens; fp16 rows are per token.
  const qk = quantizedCount(o, tokens, o.method === 'kivi');
  const qv = quantizedCount(o, tokens, o.method === 'innerq');
  const pages = Math.ceil(Math.max(qk, qv) / o.pageTokens);
  const bytes = (2 * shape.sinkElems + 2 * shape.ringElems) * 2 + pages * shape.pageBytes + (keyNorm ? shape.rowElems * 4 : 0);
  return { tokens, quantizedKeys: qk, quantizedValues: qv, pages, keyNorm, bytes };
}

function totalBytes(headerBytes: number, layers: LayerEntry[]): number {
  return PREFIX_BYTES + headerBytes + layers.reduce((s, l) => s + l.bytes + 4, 0) + TRAILER.length;
}

// ---- encoding --------------------------------------------------------------------------------------------
function littleEndian(): void {
  if (os.endianness() !== 'LE') {
    const e = new Error('innerq: saved caches are little-endian; this machine is big-endian');
    (e as Error & { code: string }).code = 'ERR_INNERQ_UNSUPPORTED';
    throw e;
  }
}

function bytesOf(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

function u32(x: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, x >>> 0, true);
  return b;
}

/** Zero the ring slots that hold no live token (stale or never-written memory), so files carry no leftovers. */
function clearStaleRing(snap: NativeSnapshot, o: ResolvedOptions, rowElems: number): void {
  const live = snap.tokens - Math.min(snap.tokens, o.sinkTokens) - Math.min(snap.quantizedKeys, snap.quantizedValues);
  const first = Math.min(snap.quantizedKeys, snap.quantizedValues);
  const cap = snap.ringCapacity;
  const keep = new Uint8Array(cap);
  for (let i = 0; i < live; i++) keep[(first + i) % cap] = 1;
  for (let s = 0; s < cap; s++) {
    if (keep[s]) continue;
    snap.ringKeys.fill(0, s * rowElems, (s + 1) * rowElems);
    snap.ringValues.fill(0, s * rowElems, (s + 1) * rowElems);
  }
  const sinkLive = Math.min(snap.tokens, o.sinkTokens) * rowElems;
  snap.sinkKeys.fill(0, sinkLive);
  snap.sinkValues.fill(0, sinkLive);
}

/** What the cache facade hands this module. */
export interface CacheAccess {
  options: ResolvedOptions;
  backend: string;
  lengths: readonly number[];
  geometry: { pageBytes: number; ringCapacity: number };
  snapshot(layer: number): NativeSnapshot;
  /** Whether a layer holds key-norm factors (without copying the layer). */
  hasKeyNorm(layer: number): boolean;
}

export interface EncodedCache {
  header: Header;
  totalBytes: number;
  /** The file's byte chunks in order (snapshots are taken as the iteration reaches their layer). */
  chunks(): Generator<Uint8Array>;
}

/** Plan the file; `eager` snapshots every layer now (async writers must not see later changes). */
export function encode(c: CacheAccess, eager = false): EncodedCache {
  littleEndian();
  const o = c.options;
  const shape = shapeOf(o, c.geometry);
  const snaps: (NativeSnapshot | null)[] = c.lengths.map((_, l) => (eager ? c.snapshot(l) : null));
  const layers = c.lengths.map((tokens, l) => {
    const s = snaps[l];
    const hasNorm = s ? s.keyNorm !== null : o.keyNorm && c.hasKeyNorm(l);
    return expectedLayer(o, shape, tokens, hasNorm);
  });
  const options = Object.fromEntries(STORED_KEYS.map((k) => [k, o[k]])) as Header['options'];
  const geometry = { pageBytes: c.geometry.pageBytes, ringCapacity: c.geometry.ringCapacity };
  const header: Header = { format: 'innerq-kvcache', options, geometry, layers, savedFrom: c.backend };
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const total = totalBytes(json.length, layers);
  const prefix = new Uint8Array(PREFIX_BYTES);
  prefix.set(MAGIC, 0);
  const dv = new DataView(prefix.buffer);
  dv.setUint32(8, FORMAT_VERSION, true);
  dv.setUint32(12, json.length, true);
  dv.setUint32(16, crc32(json, crc32(prefix.subarray(0, 16))), true);
  function* chunks(): Generator<Uint8Array> {
    yield prefix;
    yield json;
    for (let l = 0; l < layers.length; l++) {
      const s = snaps[l] ?? c.snapshot(l);
      snaps[l] = null;  // let the copy go once written
      const e = layers[l];
      const ok = s.tokens === e.tokens && s.quantizedKeys === e.quantizedKeys && s.quantizedValues === e.quantizedValues &&
        s.pages.length === e.pages && (s.keyNorm !== null) === e.keyNorm && s.ringCapacity === c.geometry.ringCapacity &&
        s.sinkKeys.length === shape.sinkElems && s.ringKeys.length === shape.ringElems &&
        s.pages.every((p) => p.length === shape.pageBytes) && (s.keyNorm === null || s.keyNorm.length === shape.rowElems);
      if (!ok) {
        const err = new Error(`innerq: layer ${l} changed while it was being saved, or its snapshot does not match the format; nothing valid was written`);
        (err as Error & { code: string }).code = 'ERR_INNERQ_INTERNAL';
        throw err;
      }
      clearStaleRing(s, o, shape.rowElems);
      const parts: Uint8Array[] = [bytesOf(s.sinkKeys), bytesOf(s.sinkValues), bytesOf(s.ringKeys), bytesOf(s.ringValues), ...s.pages];
      if (s.keyNorm) parts.push(bytesOf(s.keyNorm));
      let crc = 0;
      for (const p of parts) {
        crc = crc32(p, crc);
        if (p.length) yield p;
      }
      yield u32(crc);
    }
    yield TRAILER;
  }
  return { header, totalBytes: total, chunks };
}

// ---- decoding --------------------------------------------------------------------------------------------
/** A read request from the decoder: `length` bytes at `offset` (the driver guarantees both are in range). */
interface Read { offset: number; length: number }

export interface RestoreTarget {
  /** Build an empty cache from stored + runtime options (throws the constructor's errors). */
  create(options: Record<string, unknown>): KVCache;
  /** Geometry (pageBytes, ringCapacity) and resolved options of a cache built by create(). */
  describe(cache: KVCache): { options: ResolvedOptions; geometry: { pageBytes: number; ringCapacity: number } };
  restore(cache: KVCache, layer: number, snapshot: NativeSnapshot): void;
}

function checkLoadOptions(opts: unknown): Record<string, unknown> {
  if (opts === undefined) return {};
  const o = v.plainObject(opts, 'options');
  v.knownKeys(o, 'options', LOAD_OPTION_KEYS);
  // Validate the runtime options now, so that a later failure to build the cache is the file's fault.
  resolveOptions({ layers: 1, qHeads: 1, kvHeads: 1, headDim: 32, maxTokens: 1, ...o });
  return o;
}

function isInt(x: unknown, min: number, max: number): x is number {
  return typeof x === 'number' && Number.isInteger(x) && x >= min && x <= max;
}

function corrupt(name: string, value: unknown, why: string): RangeError {
  return persistError('ERR_INNERQ_CORRUPT', 'a valid saved innerq cache', name, value, why);
}

/** Parse and check the fixed prefix; returns the header length. */
function checkPrefix(prefix: Uint8Array, total: number, name: string, value: unknown): number {
  const what = 'a saved innerq cache';
  if (total < MAGIC.length || prefix.length < MAGIC.length) throw persistError('ERR_INNERQ_TRUNCATED', what, name, value, `only ${total} bytes, shorter than the magic number`);
  for (let i = 0; i < MAGIC.length; i++) {
    if (prefix[i] !== MAGIC[i]) throw persistError('ERR_INNERQ_BAD_MAGIC', what, name, value, 'wrong magic number (not a saved innerq cache)');
  }
  if (total < PREFIX_BYTES) throw persistError('ERR_INNERQ_TRUNCATED', what, name, value, `only ${total} bytes, shorter than the ${PREFIX_BYTES}-byte prefix`);
  const dv = new DataView(prefix.buffer, prefix.byteOffset, PREFIX_BYTES);
  const version = dv.getUint32(8, true);
  if (version !== FORMAT_VERSION) {
    throw persistError('ERR_INNERQ_UNSUPPORTED_VERSION', what, name, value, `format version ${version}; this innerq reads version ${FORMAT_VERSION}`);
  }
  const h = dv.getUint32(12, true);
  if (h < 2 || h > MAX_HEADER_BYTES) throw corrupt(name, value, `header length ${h} is out of range`);
  if (PREFIX_BYTES + h > total) throw persistError('ERR_INNERQ_TRUNCATED', what, name, value, `the header needs ${PREFIX_BYTES + h} bytes, only ${total} present`);
  return h;
}

function parseHeader(prefix: Uint8Array, json: Uint8Array, name: string, value: unknown): Header {
  const stored = new DataView(prefix.buffer, prefix.byteOffset, PREFIX_BYTES).getUint32(16, true);
  if (crc32(json, crc32(prefix.subarray(0, 16))) !== stored) throw corrupt(name, value, 'header checksum mismatch');
  let h: unknown;
  try {
    h = JSON.parse(Buffer.from(json.buffer, json.byteOffset, json.length).toString('utf8'));
  } catch {
    throw corrupt(name, value, 'the header is not valid JSON');
  }
  const hh = h as Partial<Header>;
  if (!h || typeof h !== 'object' || hh.format !== 'innerq-kvcache' || !hh.options || typeof hh.options !== 'object' ||
      !hh.geometry || typeof hh.geometry !== 'object' || !Array.isArray(hh.layers)) {
    throw corrupt(name, value, 'the header lacks format, options, geometry or layers');
  }
  return hh as Header;
}

/** Options for create(): the stored settings (the quantization ones only when the method quantizes) + runtime. */
function createOptions(stored: Header['options'], runtime: Record<string, unknown>, name: string, value: unknown): Record<string, unknown> {
  for (const k of Object.keys(stored)) if (!(STORED_KEYS as readonly string[]).includes(k)) throw corrupt(name, value, `unknown stored option ${k}`);
  const out: Record<string, unknown> = {};
  for (const k of STORED_KEYS) {
    if (stored[k] === undefined) continue;
    if (stored.method === 'fp16' && ['keyBits', 'valueBits', 'keyMode', 'valueMode', 'groupSize', 'keyNorm', 'sinkTokens', 'recentTokens'].includes(k)) continue;
    out[k] = stored[k];
  }
  return { ...out, ...runtime };
}

function checkLayers(h: Header, o: ResolvedOptions, shape: Shape, name: string, value: unknown): void {
  if (h.layers.length !== o.layers) throw corrupt(name, value, `${h.layers.length} layer entries for ${o.layers} layers`);
  h.layers.forEach((e, l) => {
    if (!e || typeof e !== 'object' || !isInt(e.tokens, 0, o.maxTokens) || typeof e.keyNorm !== 'boolean') {
      throw corrupt(name, value, `layer ${l}: bad token count or key-norm flag`);
    }
    const want = expectedLayer(o, shape, e.tokens, e.keyNorm);
    for (const k of ['quantizedKeys', 'quantizedValues', 'pages', 'bytes'] as const) {
      if (e[k] !== want[k]) throw corrupt(name, value, `layer ${l}: ${k} is ${e[k]}, a layer of ${e.tokens} tokens has ${want[k]}`);
    }
    // Key-norm factors exist only when normalization is on, and quantized keys are stored normalized.
    if (e.keyNorm && (!o.keyNorm || e.tokens <= o.sinkTokens)) throw corrupt(name, value, `layer ${l}: key-norm factors where none can exist`);
    if (!e.keyNorm && o.keyNorm && e.quantizedKeys > 0) throw corrupt(name, value, `layer ${l}: quantized keys without key-norm factors`);
  });
}

/** Split a section body into a snapshot (copies: typed arrays need aligned offsets) and check its values. */
function sectionSnapshot(body: Uint8Array, e: LayerEntry, shape: Shape, o: ResolvedOptions, ringCapacity: number, l: number, name: string, value: unknown): NativeSnapshot {
  let off = 0;
  // Uint8Array.prototype.slice copies (Buffer#slice would not): each field gets its own aligned ArrayBuffer.
  const take = (n: number) => { const b = Uint8Array.prototype.slice.call(body, off, off + n); off += n; return b; };
  const u16 = (elems: number) => new Uint16Array(take(elems * 2).buffer);
  const sinkKeys = u16(shape.sinkElems), sinkValues = u16(shape.sinkElems);
  const ringKeys = u16(shape.ringElems), ringValues = u16(shape.ringElems);
  const pages: Uint8Array[] = [];
  for (let i = 0; i < e.pages; i++) pages.push(take(shape.pageBytes));
  const keyNorm = e.keyNorm ? new Float32Array(take(shape.rowElems * 4).buffer) : null;
  // The checksum held, so these checks only reject files written by something other than innerq.
  const finiteHalves = (a: Uint16Array, from: number, to: number) => {
    for (let i = from; i < to; i++) if ((a[i] & 0x7c00) === 0x7c00) return false;
    return true;
  };
  const sinkLive = Math.min(e.tokens, o.sinkTokens) * shape.rowElems;
  let ok = finiteHalves(sinkKeys, 0, sinkLive) && finiteHalves(sinkValues, 0, sinkLive);
  const first = Math.min(e.quantizedKeys, e.quantizedValues);
  const live = e.tokens - Math.min(e.tokens, o.sinkTokens) - first;
  for (let i = 0; i < live && ok; i++) {
    const s = ((first + i) % ringCapacity) * shape.rowElems;
    ok = finiteHalves(ringKeys, s, s + shape.rowElems) && finiteHalves(ringValues, s, s + shape.rowElems);
  }
  if (!ok) throw corrupt(name, value, `layer ${l}: a window holds a NaN or Inf`);
  if (keyNorm) for (const f of keyNorm) if (!(Number.isFinite(f) && f > 0)) throw corrupt(name, value, `layer ${l}: a key-norm factor is not finite and positive`);
  return {
    tokens: e.tokens, sinkCapacity: o.sinkTokens, quantizedKeys: e.quantizedKeys, quantizedValues: e.quantizedValues,
    ringCapacity, pageTokens: o.pageTokens, pageBytes: shape.pageBytes, sinkKeys, sinkValues, ringKeys, ringValues, pages, keyNorm,
  };
}

/**
 * The load procedure as a generator of reads, so one body serves buffers, sync files and async files.
 * `total` is the input's length; `name`/`value` describe the input in error messages.
 */
function* decode(total: number, runtime: Record<string, unknown>, target: RestoreTarget, name: string, value: unknown): Generator<Read, KVCache, Uint8Array> {
  littleEndian();
  const prefix = yield { offset: 0, length: Math.min(total, PREFIX_BYTES) };
  const hBytes = checkPrefix(prefix, total, name, value);
  const json = yield { offset: PREFIX_BYTES, length: hBytes };
  const header = parseHeader(prefix, json, name, value);
  // Cheap structural checks before any allocation: the sizes must add up to the input's length.
  const layersOk = header.layers.every((e) => e && typeof e === 'object' && isInt(e.bytes, 0, Number.MAX_SAFE_INTEGER));
  if (!layersOk) throw corrupt(name, value, 'a layer entry has no valid byte count');
  const expected = totalBytes(hBytes, header.layers);
  if (total < expected) {
    throw persistError('ERR_INNERQ_TRUNCATED', 'a saved innerq cache', name, value, `${total} bytes, the header describes ${expected}`);
  }
  if (total > expected) throw corrupt(name, value, `${total - expected} bytes after the end of the cache`);
  const g = header.geometry as unknown as Record<string, unknown>;
  if (!isInt(g.pageBytes, 1, 2 ** 40) || !isInt(g.ringCapacity, 0, 2 ** 31)) throw corrupt(name, value, 'bad geometry');
  let cache: KVCache;
  try {
    cache = target.create(createOptions(header.options, runtime, name, value));
  } catch (err) {
    const code = (err as { code?: string }).code;
    // The runtime options were validated: anything but an unavailable backend or memory is the file's fault.
    if (code !== undefined || (err as Error).message.includes('options.deviceId')) throw err;
    throw corrupt(name, value, `the stored options are invalid (${(err as Error).message})`);
  }
  try {
    const d = target.describe(cache);
    for (const k of STORED_KEYS) {
      if (d.options[k] !== header.options[k]) throw corrupt(name, value, `stored option ${k} (${String(header.options[k])}) does not survive validation`);
    }
    if (d.geometry.pageBytes !== g.pageBytes || d.geometry.ringCapacity !== g.ringCapacity) {
      throw persistError('ERR_INNERQ_INCOMPATIBLE', 'a saved innerq cache', name, value,
        `saved with page ${g.pageBytes} B / ring ${g.ringCapacity}, this build lays the same options out as ${d.geometry.pageBytes} B / ${d.geometry.ringCapacity}`);
    }
    const shape = shapeOf(d.options, d.geometry);
    checkLayers(header, d.options, shape, name, value);
    let off = PREFIX_BYTES + hBytes;
    for (let l = 0; l < header.layers.length; l++) {
      const e = header.layers[l];
      const body = yield { offset: off, length: e.bytes };
      const crcBytes = yield { offset: off + e.bytes, length: 4 };
      off += e.bytes + 4;
      const stored = new DataView(crcBytes.buffer, crcBytes.byteOffset, 4).getUint32(0, true);
      if (crc32(body) !== stored) throw corrupt(name, value, `layer ${l} checksum mismatch`);
      if (e.tokens === 0) continue;
      target.restore(cache, l, sectionSnapshot(body, e, shape, d.options, d.geometry.ringCapacity, l, name, value));
    }
    const trailer = yield { offset: off, length: TRAILER.length };
    if (!TRAILER.every((b, i) => trailer[i] === b)) throw corrupt(name, value, 'bad end marker');
    return cache;
  } catch (err) {
    cache.dispose();
    throw err;
  }
}

function isDetached(a: Uint8Array): boolean {
  const buf = a.buffer as ArrayBuffer & { detached?: boolean };
  if (buf.detached !== undefined) return buf.detached;
  if (a.byteLength !== 0) return false;
  try {
    new Uint8Array(buf, 0, 0);  // Node 20 has no ArrayBuffer#detached; a view on a detached buffer throws
    return false;
  } catch {
    return true;
  }
}

function inputName(data: unknown): Uint8Array {
  if (!(data instanceof Uint8Array)) throw v.typeError('Buffer or Uint8Array', 'data', data);
  if (isDetached(data)) throw v.rangeError('Buffer or Uint8Array (its buffer is detached)', 'data', data);
  return data;
}

export function loadBuffer(data: unknown, opts: unknown, target: RestoreTarget): KVCache {
  const bytes = inputName(data);
  const runtime = checkLoadOptions(opts);
  const gen = decode(bytes.length, runtime, target, 'data', data);
  let r = gen.next();
  while (!r.done) r = gen.next(bytes.subarray(r.value.offset, r.value.offset + r.value.length));
  return r.value;
}

function checkPath(p: unknown, name: string): string {
  if (typeof p !== 'string') throw v.typeError('file path string', name, p);
  if (p.length === 0 || p.includes('\0')) throw v.rangeError('non-empty file path without NUL', name, p);
  return p;
}

function shortRead(name: string, p: string): RangeError {
  return persistError('ERR_INNERQ_TRUNCATED', 'a saved innerq cache', name, p, 'the file ended early (changed while being read?)');
}

export function loadFile(p: unknown, opts: unknown, target: RestoreTarget): KVCache {
  const file = checkPath(p, 'path');
  const runtime = checkLoadOptions(opts);
  const fd = fs.openSync(file, 'r');
  try {
    const total = fs.fstatSync(fd).size;
    const gen = decode(total, runtime, target, 'path', file);
    let r = gen.next();
    while (!r.done) {
      const b = Buffer.allocUnsafe(r.value.length);
      const n = r.value.length ? fs.readSync(fd, b, 0, r.value.length, r.value.offset) : 0;
      if (n !== r.value.length) gen.throw(shortRead('path', file));  // the generator disposes the half-built cache
      r = gen.next(b);
    }
    return r.value;
  } finally {
    fs.closeSync(fd);
  }
}

export async function loadFileAsync(p: unknown, opts: unknown, target: RestoreTarget): Promise<KVCache> {
  const file = checkPath(p, 'path');
  const runtime = checkLoadOptions(opts);
  const fh = await fs.promises.open(file, 'r');
  try {
    const total = (await fh.stat()).size;
    const gen = decode(total, runtime, target, 'path', file);
    let r = gen.next();
    while (!r.done) {
      const b = Buffer.allocUnsafe(r.value.length);
      const { bytesRead } = r.value.length ? await fh.read(b, 0, r.value.length, r.value.offset) : { bytesRead: 0 };
      if (bytesRead !== r.value.length) {
        gen.throw(shortRead('path', file));  // the generator disposes the half-built cache and rethrows
      }
      r = gen.next(b);
    }
    return r.value;
  } finally {
    await fh.close();
  }
}

// ---- saving ----------------------------------------------------------------------------------------------
export function saveBuffer(c: CacheAccess): Buffer {
  const enc = encode(c);
  if (enc.totalBytes > (require('buffer') as typeof import('buffer')).constants.MAX_LENGTH) {
    throw persistError('ERR_INNERQ_TOO_LARGE', 'a cache small enough for one Buffer', 'this', `KVCache(${enc.totalBytes} bytes)`,
      'use saveToFile(), which streams one layer at a time');
  }
  const out = Buffer.allocUnsafe(enc.totalBytes);
  let off = 0;
  for (const chunk of enc.chunks()) { out.set(chunk, off); off += chunk.length; }
  if (off !== enc.totalBytes) throw new Error(`innerq: internal: wrote ${off} of ${enc.totalBytes} bytes`);
  return out;
}

function tempPath(file: string): string {
  const dir = pathMod.dirname(file), base = pathMod.basename(file);
  return pathMod.join(dir, `.${base}.${process.pid}.${Math.random().toString(36).slice(2, 10)}.tmp`);
}

function syncDir(dir: string): void {
  // Make the rename itself durable; not possible on every platform (Windows), so best effort.
  try {
    const fd = fs.openSync(dir, 'r');
    try { fs.fsyncSync(fd); } finally { fs.closeSync(fd); }
  } catch { /* ignore */ }
}

/** Write through a temporary file in the same directory, fsync, then rename over `path`. */
export function saveFile(c: CacheAccess, p: unknown): void {
  const file = checkPath(p, 'path');
  const enc = encode(c);
  const tmp = tempPath(file);
  const fd = fs.openSync(tmp, 'wx', 0o644);
  let done = false;
  try {
    let pos = 0;
    for (const chunk of enc.chunks()) {
      let w = 0;
      while (w < chunk.length) w += fs.writeSync(fd, chunk, w, chunk.length - w, pos + w);
      pos += chunk.length;
    }
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    done = true;
    fs.renameSync(tmp, file);
    syncDir(pathMod.dirname(file));
  } catch (e) {
    if (!done) { try { fs.closeSync(fd); } catch { /* already closed */ } }
    try { fs.unlinkSync(tmp); } catch { /* not created or already renamed */ }
    throw e;
  }
}

/** saveFile on the libuv pool. Every layer is snapshotted before the first await, so the file shows one instant. */
export async function saveFileAsync(c: CacheAccess, p: unknown): Promise<void> {
  const file = checkPath(p, 'path');
  const enc = encode(c, true);
  const chunks = Array.from(enc.chunks());
  const tmp = tempPath(file);
  const fh = await fs.promises.open(tmp, 'wx', 0o644);
  let closed = false;
  try {
    let pos = 0;
    for (const chunk of chunks) {
      let w = 0;
      while (w < chunk.length) w += (await fh.write(chunk, w, chunk.length - w, pos + w)).bytesWritten;
      pos += chunk.length;
    }
    await fh.sync();
    await fh.close();
    closed = true;
    await fs.promises.rename(tmp, file);
    syncDir(pathMod.dirname(file));
  } catch (e) {
    if (!closed) await fh.close().catch(() => undefined);
    await fs.promises.unlink(tmp).catch(() => undefined);
    throw e;
  }
}
