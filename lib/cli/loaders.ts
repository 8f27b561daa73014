// loaders.ts - KV dumps for `innerq eval --kv`: NumPy .npy files and safetensors files.
// Every check fails with a CliError (one clear line, exit code 2).
import * as fs from 'fs';
import * as path from 'path';
import { CliError } from './common';

/** A tensor read from a file: f32 as Float32Array, f16 as Uint16Array of binary16 bits. */
export interface Tensor {
  dtype: 'f32' | 'f16';
  shape: number[];
  data: Float32Array | Uint16Array;
}

function readAll(file: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : code === 'EISDIR' ? 'is a directory' : (e as Error).message;
    throw new CliError(`innerq: cannot read ${file}: ${why}`);
  }
}

function typed(buf: Buffer, offset: number, bytes: number, dtype: 'f32' | 'f16'): Float32Array | Uint16Array {
  // copy into a fresh, aligned buffer (file offsets need not be aligned)
  const copy = new Uint8Array(bytes);
  copy.set(buf.subarray(offset, offset + bytes));
  return dtype === 'f32' ? new Float32Array(copy.buffer) : new Uint16Array(copy.buffer);
}

const product = (shape: number[]): number => shape.reduce((a, b) => a * b, 1);

/** Parses a NumPy .npy file (format versions 1-3, little-endian float32 or float16, C order). */
export function loadNpy(file: string): Tensor {
  const buf = readAll(file);
  const bad = (why: string): CliError => new CliError(`innerq: ${file} is not a usable .npy file: ${why}`);
  if (buf.length < 10 || buf[0] !== 0x93 || buf.toString('latin1', 1, 6) !== 'NUMPY') throw bad('missing the \\x93NUMPY magic');
  const major = buf[6];
  let headerLen: number, start: number;
  if (major === 1) {
    headerLen = buf.readUInt16LE(8);
    start = 10;
  } else if (major === 2 || major === 3) {
    if (buf.length < 12) throw bad('truncated header');
    headerLen = buf.readUInt32LE(8);
    start = 12;
  } else throw bad(`unsupported format version ${major}`);
  if (start + headerLen > buf.length) throw bad('truncated header');
  const header = buf.toString(major === 3 ? 'utf8' : 'latin1', start, start + headerLen);
  const descr = /'descr'\s*:\s*'([^']*)'/.exec(header)?.[1];
  const fortran = /'fortran_order'\s*:\s*(True|False)/.exec(header)?.[1];
  const shapeText = /'shape'\s*:\s*\(([^)]*)\)/.exec(header)?.[1];
  if (descr === undefined || fortran === undefined || shapeText === undefined) throw bad('header lacks descr, fortran_order or shape');
  if (fortran === 'True') throw bad('Fortran-ordered arrays are not supported (save with np.ascontiguousarray)');
  let dtype: 'f32' | 'f16';
  if (descr === '<f4' || descr === '=f4') dtype = 'f32';
  else if (descr === '<f2' || descr === '=f2') dtype = 'f16';
  else throw bad(`dtype '${descr}' is not supported (expected little-endian float32 '<f4' or float16 '<f2')`);
  const shape = shapeText.split(',').map((s) => s.trim()).filter((s) => s.length > 0).map(Number);
  if (shape.some((n) => !Number.isSafeInteger(n) || n < 0)) throw bad(`bad shape (${shapeText})`);
  const itemSize = dtype === 'f32' ? 4 : 2;
  const bytes = product(shape) * itemSize;
  const dataStart = start + headerLen;
  if (buf.length - dataStart !== bytes) {
    throw bad(`shape (${shape.join(', ')}) of ${descr} needs ${bytes} data bytes but the file holds ${buf.length - dataStart}`);
  }
  return { dtype, shape, data: typed(buf, dataStart, bytes, dtype) };
}

/** Parses a safetensors file (F32 / F16 tensors). */
export function loadSafetensors(file: string): Map<string, Tensor> {
  const buf = readAll(file);
  const bad = (why: string): CliError => new CliError(`innerq: ${file} is not a usable safetensors file: ${why}`);
  if (buf.length < 8) throw bad('shorter than its 8-byte header length');
  const n = Number(buf.readBigUInt64LE(0));
  if (!Number.isSafeInteger(n) || 8 + n > buf.length) throw bad(`header length ${n} exceeds the file size ${buf.length}`);
  let header: Record<string, { dtype?: unknown; shape?: unknown; data_offsets?: unknown }>;
  try {
    header = JSON.parse(buf.toString('utf8', 8, 8 + n));
  } catch (e) {
    throw bad(`header is not JSON (${(e as Error).message})`);
  }
  if (header === null || typeof header !== 'object' || Array.isArray(header)) throw bad('header is not a JSON object');
  const base = 8 + n;
  const out = new Map<string, Tensor>();
  for (const [name, t] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    if (!t || typeof t !== 'object') throw bad(`tensor ${name} has no description`);
    const dt = t.dtype;
    let dtype: 'f32' | 'f16';
    if (dt === 'F32') dtype = 'f32';
    else if (dt === 'F16') dtype = 'f16';
    else throw bad(`tensor ${name} has dtype ${JSON.stringify(dt)} (expected F32 or F16)`);
    if (!Array.isArray(t.shape) || t.shape.some((x) => !Number.isSafeInteger(x) || (x as number) < 0)) throw bad(`tensor ${name} has a bad shape`);
    const off = t.data_offsets;
    if (!Array.isArray(off) || off.length !== 2 || !off.every((x) => Number.isSafeInteger(x) && (x as number) >= 0)) throw bad(`tensor ${name} has bad data_offsets`);
    const [b, e] = off as number[];
    const shape = t.shape as number[];
    const bytes = product(shape) * (dtype === 'f32' ? 4 : 2);
    if (e - b !== bytes) throw bad(`tensor ${name}: shape [${shape.join(', ')}] ${dt} needs ${bytes} bytes but data_offsets span ${e - b}`);
    if (base + e > buf.length) throw bad(`tensor ${name} extends past the end of the file`);
    out.set(name, { dtype, shape, data: typed(buf, base + b, bytes, dtype) });
  }
  return out;
}

/** One layer of a dump: [tokens][kvHeads][headDim] keys and values, optional [n][qHeads][headDim] queries. */
export interface DumpLayer {
  layer: number;
  tokens: number;
  kvHeads: number;
  headDim: number;
  keys: Float32Array | Uint16Array;
  values: Float32Array | Uint16Array;
  queries: Tensor | null;
}

function checkKV(where: string, k: Tensor, v: Tensor): { tokens: number; kvHeads: number; headDim: number } {
  if (k.shape.length !== 3) throw new CliError(`innerq: ${where} keys must have shape [tokens][kvHeads][headDim], got [${k.shape.join(', ')}]`);
  if (v.shape.length !== 3) throw new CliError(`innerq: ${where} values must have shape [tokens][kvHeads][headDim], got [${v.shape.join(', ')}]`);
  if (k.shape.join(',') !== v.shape.join(',')) throw new CliError(`innerq: ${where} keys [${k.shape.join(', ')}] and values [${v.shape.join(', ')}] differ in shape`);
  const [tokens, kvHeads, headDim] = k.shape;
  if (tokens < 1 || kvHeads < 1 || headDim < 1) throw new CliError(`innerq: ${where} keys/values are empty (shape [${k.shape.join(', ')}])`);
  return { tokens, kvHeads, headDim };
}

/** Loads `--kv` (and `--values` / `--queries` for .npy) into layers. */
export function loadDump(kvFile: string, valuesFile: string | undefined, queriesFile: string | undefined): DumpLayer[] {
  const ext = path.extname(kvFile).toLowerCase();
  if (ext === '.npy') {
    if (!valuesFile) throw new CliError('innerq: --kv with a .npy file needs --values <file.npy> (keys and values are separate arrays)');
    const k = loadNpy(kvFile);
    const v = loadNpy(valuesFile);
    const s = checkKV(`${kvFile} / ${valuesFile}:`, k, v);
    const q = queriesFile ? loadNpy(queriesFile) : null;
    return [{ layer: 0, ...s, keys: k.data, values: v.data, queries: q }];
  }
  if (ext === '.safetensors') {
    if (valuesFile) throw new CliError('innerq: --values is only for .npy dumps; a safetensors file holds layers.N.keys and layers.N.values');
    const tensors = loadSafetensors(kvFile);
    const layers: DumpLayer[] = [];
    const ids = [...tensors.keys()]
      .map((n) => /^layers\.(\d+)\.keys$/.exec(n)?.[1])
      .filter((x): x is string => x !== undefined)
      .map(Number)
      .sort((a, b) => a - b);
    if (ids.length === 0) throw new CliError(`innerq: ${kvFile} holds no tensors named layers.N.keys (found: ${[...tensors.keys()].slice(0, 5).join(', ') || 'none'})`);
    for (const id of ids) {
      const k = tensors.get(`layers.${id}.keys`)!;
      const v = tensors.get(`layers.${id}.values`);
      if (!v) throw new CliError(`innerq: ${kvFile} has layers.${id}.keys but no layers.${id}.values`);
      const s = checkKV(`${kvFile} layer ${id}:`, k, v);
      layers.push({ layer: id, ...s, keys: k.data, values: v.data, queries: tensors.get(`layers.${id}.queries`) ?? null });
    }
    if (queriesFile) {
      const q = loadNpy(queriesFile);
      for (const l of layers) l.queries = q;
    }
    return layers;
  }
  throw new CliError(`innerq: --kv ${kvFile}: unknown file type '${ext || '(none)'}' (expected .npy or .safetensors)`);
}
