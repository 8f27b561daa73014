// format.ts - the byte layout of quantized KV pages. Mirrors kernels/format.cuh; docs/FORMAT.md is the prose.

/** How one cache matrix (keys or values) of one layer is stored (format.cuh `Orientation`). */
export const Orientation = {
  /** no quantization: [token][channel] binary16 */
  Fp16Rows: 0,
  /** groups of G consecutive channels of one token (InnerQ keys, KIVI-style values) */
  RowGrouped: 1,
  /** groups of G consecutive tokens of one channel (InnerQ values, KIVI-style keys) */
  ColGrouped: 2,
} as const;
export type Orientation = (typeof Orientation)[keyof typeof Orientation];

/** Quantization mode (format.cuh `QuantMode`). */
export const QuantMode = { Sym: 0, Asym: 1, Hybrid: 2 } as const;
export type QuantMode = (typeof QuantMode)[keyof typeof QuantMode];

export type Bits = 2 | 3 | 4 | 8;
export const SUPPORTED_BITS: readonly Bits[] = [2, 3, 4, 8];
export const SUPPORTED_GROUP_SIZES: readonly number[] = [32, 64, 128];

/** format.cuh `MatrixFormat`. bits, groupSize and mode are ignored for Fp16Rows. */
export interface MatrixFormat {
  orientation: Orientation;
  bits: number;
  groupSize: number;
  mode: QuantMode;
}

// ---- codes: 32 elements form a block; a group of G elements is G/32 consecutive blocks ------------------

/** Bytes of one packed block of 32 codes. */
export function blockBytes(bits: number): number {
  return bits === 2 ? 8 : bits === 3 ? 12 : bits === 4 ? 16 : 32;
}
/** Bytes of the packed codes of one group of `groupSize` elements. */
export function groupBytes(bits: number, groupSize: number): number {
  return (groupSize / 32) * blockBytes(bits);
}

/** Symmetric codes are stored as u = k + 2^(b-1), so x^ = s * (u - 2^(b-1)). */
export function symOffset(bits: number): number {
  return 1 << (bits - 1);
}
export function symMaxLevel(bits: number): number {
  return (1 << (bits - 1)) - 1;
}
export function asymMaxCode(bits: number): number {
  return (1 << bits) - 1;
}

/**
 * Pack 32 unsigned codes u[0..31] (read from `u` at `uOffset`) into blockBytes(bits) bytes at dst[dstOffset]:
 *   2 bits: byte i (0..7), bits 2k..2k+1 = u[8k + i]
 *   3 bits: bytes 0..7 = the 2-bit packing of (u & 3); bytes 8..11 = little-endian uint32, bit e = bit 2 of u[e]
 *   4 bits: byte i (0..15): low nibble u[i], high nibble u[i + 16]
 *   8 bits: byte e = u[e]
 */
export function packBlock32(u: ArrayLike<number>, bits: number, dst: Uint8Array, dstOffset = 0, uOffset = 0): void {
  if (bits === 8) {
    for (let e = 0; e < 32; e++) dst[dstOffset + e] = u[uOffset + e] & 0xff;
  } else if (bits === 4) {
    for (let i = 0; i < 16; i++) dst[dstOffset + i] = (u[uOffset + i] & 15) | ((u[uOffset + i + 16] & 15) << 4);
  } else {
    for (let i = 0; i < 8; i++) {
      let b = 0;
      for (let k = 0; k < 4; k++) b |= (u[uOffset + 8 * k + i] & 3) << (2 * k);
      dst[dstOffset + i] = b;
    }
    if (bits === 3) {
      let high = 0;
      for (let e = 0; e < 32; e++) high = (high | (((u[uOffset + e] >> 2) & 1) << e)) >>> 0;
      for (let i = 0; i < 4; i++) dst[dstOffset + 8 + i] = (high >>> (8 * i)) & 0xff;
    }
  }
}

/** Inverse of packBlock32: 32 codes into u[uOffset..uOffset+31]. */
export function unpackBlock32(src: Uint8Array, bits: number, u: Uint8Array | number[], srcOffset = 0, uOffset = 0): void {
  if (bits === 8) {
    for (let e = 0; e < 32; e++) u[uOffset + e] = src[srcOffset + e];
  } else if (bits === 4) {
    for (let i = 0; i < 16; i++) {
      u[uOffset + i] = src[srcOffset + i] & 15;
      u[uOffset + i + 16] = src[srcOffset + i] >> 4;
    }
  } else {
    for (let i = 0; i < 8; i++) for (let k = 0; k < 4; k++) u[uOffset + 8 * k + i] = (src[srcOffset + i] >> (2 * k)) & 3;
    if (bits === 3) {
      const high =
        (src[srcOffset + 8] | (src[srcOffset + 9] << 8) | (src[srcOffset + 10] << 16) | (src[srcOffset + 11] << 24)) >>> 0;
      for (let e = 0; e < 32; e++) u[uOffset + e] |= ((high >>> e) & 1) << 2;
    }
  }
}

/** Pack a whole group (groupSize codes = groupSize/32 blocks) into groupBytes(bits, groupSize) bytes. */
export function packGroup(u: ArrayLike<number>, bits: number, groupSize: number, dst: Uint8Array, dstOffset = 0): void {
  for (let b = 0; b < groupSize / 32; b++) packBlock32(u, bits, dst, dstOffset + b * blockBytes(bits), b * 32);
}
/** Unpack a whole group of groupSize codes. */
export function unpackGroup(src: Uint8Array, bits: number, groupSize: number, srcOffset = 0): Uint8Array {
  const u = new Uint8Array(groupSize);
  for (let b = 0; b < groupSize / 32; b++) unpackBlock32(src, bits, u, srcOffset + b * blockBytes(bits), b * 32);
  return u;
}

// ---- scales and zeros -------------------------------------------------------------------------------------
// One binary16 scale per group, one binary16 zero per group unless the mode is Sym. The sign bit of the scale
// is set when the group was quantized asymmetrically (x^ = |s| * u + z), clear when symmetrically.

export function hasZeros(mode: QuantMode): boolean {
  return mode !== QuantMode.Sym;
}
export function scaleIsAsym(scaleBits: number): boolean {
  return (scaleBits & 0x8000) !== 0;
}

// ---- page layout ------------------------------------------------------------------------------------------

/** Offsets of one matrix inside a page (format.cuh `MatrixLayout`). All byte counts. */
export interface MatrixLayout {
  codesHeadBytes: number;
  scalesHeadBytes: number; // zeros use scalesHeadBytes when present
  codesOffset: number;
  scalesOffset: number;
  zerosOffset: number; // meaningful only when the matrix has zeros
  end: number;
}
export interface PageLayout {
  keys: MatrixLayout;
  values: MatrixLayout;
  pageBytes: number;
}

export function alignUp64(x: number): number {
  return Math.ceil(x / 64) * 64;
}

export function matrixLayout(f: MatrixFormat, pageTokens: number, kvHeads: number, headDim: number, start: number): MatrixLayout {
  let codesHeadBytes: number, scalesHeadBytes: number;
  if (f.orientation === Orientation.Fp16Rows) {
    codesHeadBytes = pageTokens * headDim * 2;
    scalesHeadBytes = 0;
  } else if (f.orientation === Orientation.RowGrouped) {
    codesHeadBytes = pageTokens * (headDim / f.groupSize) * groupBytes(f.bits, f.groupSize);
    scalesHeadBytes = pageTokens * (headDim / f.groupSize) * 2;
  } else {
    codesHeadBytes = (pageTokens / f.groupSize) * headDim * groupBytes(f.bits, f.groupSize);
    scalesHeadBytes = (pageTokens / f.groupSize) * headDim * 2;
  }
  const codesOffset = alignUp64(start);
  const scalesOffset = alignUp64(codesOffset + codesHeadBytes * kvHeads);
  const zerosOffset = alignUp64(scalesOffset + scalesHeadBytes * kvHeads);
  const zeros = f.orientation !== Orientation.Fp16Rows && hasZeros(f.mode);
  const end = zeros ? alignUp64(zerosOffset + scalesHeadBytes * kvHeads) : zerosOffset;
  return { codesHeadBytes, scalesHeadBytes, codesOffset, scalesOffset, zerosOffset, end };
}

/**
 * Page layout: sections K codes, K scales, K zeros (if any), V codes, V scales, V zeros (if any), each at a
 * multiple of 64 bytes; inside a section kv head h owns bytes [section + h*headBytes, +headBytes).
 */
export function pageLayout(kf: MatrixFormat, vf: MatrixFormat, pageTokens: number, kvHeads: number, headDim: number): PageLayout {
  const keys = matrixLayout(kf, pageTokens, kvHeads, headDim, 0);
  const values = matrixLayout(vf, pageTokens, kvHeads, headDim, keys.end);
  return { keys, values, pageBytes: values.end };
}
