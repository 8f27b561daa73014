// device.ts - DeviceBuffer: memory of a cache's backend (GPU memory on cuda, emulated device memory on sim,
// host memory on cpu), so a service whose model runs on the GPU can hand keys, values and queries to the
// cache without a round trip through host memory.
import * as v from './validate';
import type { NativeCacheInstance } from './native';

export type DeviceDtype = 'f16' | 'f32';
const ELEMENT_BYTES: Record<DeviceDtype, number> = { f16: 2, f32: 4 };

export interface ForeignDevicePointer {
  /** Device address (e.g. from another CUDA library), as a BigInt. */
  address: bigint;
  byteLength: number;
  dtype: DeviceDtype;
}

/** A typed view of backend memory: `dtype` 'f16' holds binary16 bits, 'f32' holds float32. */
export class DeviceBuffer {
  readonly dtype: DeviceDtype;
  readonly byteLength: number;
  /** True when the library allocated it (free() releases it); false for a wrapped foreign pointer. */
  readonly owned: boolean;
  /** The backend this memory belongs to. */
  readonly backend: string;
  private addr: bigint | null;
  private readonly native: () => NativeCacheInstance;

  /** @internal use KVCache.createDeviceBuffer or KVCache.wrapDevicePointer */
  constructor(native: () => NativeCacheInstance, backend: string, address: bigint, byteLength: number, dtype: DeviceDtype, owned: boolean) {
    this.native = native;
    this.backend = backend;
    this.addr = address;
    this.byteLength = byteLength;
    this.dtype = dtype;
    this.owned = owned;
  }

  /** Elements of `dtype` the buffer holds. */
  get length(): number {
    return this.byteLength / ELEMENT_BYTES[this.dtype];
  }

  get address(): bigint {
    if (this.addr === null) throw freedError();
    return this.addr;
  }

  get freed(): boolean {
    return this.addr === null;
  }

  /** Copy host data in: a Uint16Array (fp16 bits) for 'f16', a Float32Array for 'f32', at an element offset. */
  write(data: Float32Array | Uint16Array, elementOffset = 0): this {
    const addr = this.address;
    const want = this.dtype === 'f16' ? 'Uint16Array (fp16 bits)' : 'Float32Array';
    if (!(this.dtype === 'f16' ? data instanceof Uint16Array : data instanceof Float32Array)) throw v.typeError(want, 'data', data);
    v.integer(elementOffset, 'elementOffset', 0, this.length);
    if (elementOffset + data.length > this.length) {
      throw v.rangeError(`${want} of at most ${this.length - elementOffset} elements (the buffer holds ${this.length})`, 'data', data);
    }
    this.native().deviceWrite(addr + BigInt(elementOffset * ELEMENT_BYTES[this.dtype]), data);
    return this;
  }

  /** Copy the buffer (or `out.length` elements of it) to host memory. */
  read(out?: Float32Array | Uint16Array): Float32Array | Uint16Array {
    const addr = this.address;
    const o = out ?? (this.dtype === 'f16' ? new Uint16Array(this.length) : new Float32Array(this.length));
    const want = this.dtype === 'f16' ? 'Uint16Array' : 'Float32Array';
    if (!(this.dtype === 'f16' ? o instanceof Uint16Array : o instanceof Float32Array)) throw v.typeError(want, 'out', o);
    if (o.length > this.length) throw v.rangeError(`${want} of at most ${this.length} elements`, 'out', o);
    this.native().deviceRead(addr, o);
    return o;
  }

  /** Release library-allocated memory (idempotent). A wrapped foreign pointer is only forgotten. */
  free(): void {
    if (this.addr === null) return;
    if (this.owned) {
      try { this.native().deviceFree(this.addr); } catch { /* the cache was disposed: its memory is gone already */ }
    }
    this.addr = null;
  }

  [Symbol.dispose](): void {
    this.free();
  }
}

function freedError(): Error {
  const e = new Error('innerq: this DeviceBuffer was freed (or its cache disposed)');
  (e as Error & { code: string }).code = 'ERR_INNERQ_DISPOSED';
  return e;
}

export function elementBytes(dtype: DeviceDtype): number {
  return ELEMENT_BYTES[dtype];
}

/** Validates a foreign pointer description. */
export function checkForeign(p: unknown): ForeignDevicePointer {
  const o = v.plainObject(p, 'pointer');
  if (typeof o.address !== 'bigint') throw v.typeError('BigInt device address', 'pointer.address', o.address);
  if (o.address <= 0n || o.address >= 1n << 64n) throw v.rangeError('non-zero 64-bit device address', 'pointer.address', o.address);
  const dtype = v.oneOf(o.dtype, 'pointer.dtype', ['f16', 'f32'] as const);
  const byteLength = v.integer(o.byteLength, 'pointer.byteLength', 1, Number.MAX_SAFE_INTEGER);
  if (byteLength % ELEMENT_BYTES[dtype] !== 0) throw v.rangeError(`a multiple of ${ELEMENT_BYTES[dtype]} (dtype ${dtype})`, 'pointer.byteLength', byteLength);
  if (o.address % BigInt(ELEMENT_BYTES[dtype]) !== 0n) throw v.rangeError(`address aligned to ${ELEMENT_BYTES[dtype]} bytes`, 'pointer.address', o.address);
  return { address: o.address, byteLength, dtype };
}
