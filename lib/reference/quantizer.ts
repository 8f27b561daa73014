// quantizer.ts - THE group quantizer, mirroring kernels/quantizer.cuh line for line so that codes, scales and
// zeros agree bit for bit with every backend.
//
// Inputs are binary16 bit patterns. All arithmetic is in double (JavaScript numbers). Every quantity involved
// is a multiple of 2^-24 below 2^18 in magnitude, so differences, products with codes (< 2^8) and the L1 sums
// over <= 128 elements are exact; the divisions x/s are correctly rounded IEEE operations, identical in C++,
// CUDA and JavaScript.

import { halfToNumber, numberToHalf, numberToHalfSaturate } from './fp16';
import { QuantMode, asymMaxCode, scaleIsAsym, symMaxLevel, symOffset } from './format';

export {
  packBlock32,
  unpackBlock32,
  packGroup,
  unpackGroup,
  pageLayout,
  matrixLayout,
  blockBytes,
  groupBytes,
  symOffset,
  symMaxLevel,
  asymMaxCode,
  hasZeros,
  scaleIsAsym,
} from './format';

/** Result of quantizeGroup: binary16 scale (sign bit = asymmetric), binary16 zero (0 when symmetric), codes. */
export interface QuantizedGroup {
  scale: number;
  zero: number;
  /** unpacked unsigned codes, one per element */
  codes: Uint8Array;
}

/** Round-half-up on an exactly computed double, then clamp. */
export function roundClamp(v: number, lo: number, hi: number): number {
  let r = Math.floor(v + 0.5);
  if (r < lo) r = lo;
  if (r > hi) r = hi;
  return r;
}

/**
 * Symmetric scale: max|x| / (2^(b-1)-1) rounded UP to binary16 (so |x| <= s*qmax and every error <= s/2).
 * A group whose nonzero elements share one magnitude uses s = that magnitude (codes -1, 0, +1: exact).
 * An all-zero group gets s = 0.
 */
export function symmetricScale(maxAbs: number, constantMagnitude: boolean, bits: number): number {
  if (!(maxAbs > 0)) return 0;
  return constantMagnitude ? numberToHalf(maxAbs, 'nearest') : numberToHalf(maxAbs / symMaxLevel(bits), 'up');
}
/** Stored (offset) code of x under symmetric scale s (the value of the binary16 scale). */
export function symmetricCode(x: number, s: number, bits: number): number {
  const qmax = symMaxLevel(bits);
  return (s > 0 ? roundClamp(x / s, -qmax, qmax) : 0) + symOffset(bits);
}
export function symmetricValue(u: number, s: number, bits: number): number {
  return s * (u - symOffset(bits));
}

/** Asymmetric zero: min rounded DOWN to binary16. */
export function asymmetricZero(lo: number): number {
  return numberToHalf(lo, 'down');
}
/** Asymmetric scale: (max - z) / (2^b - 1) rounded UP to binary16; 0 for a constant group. */
export function asymmetricScale(hi: number, z: number, bits: number): number {
  return hi > z ? numberToHalf((hi - z) / asymMaxCode(bits), 'up') : 0;
}
export function asymmetricCode(x: number, s: number, z: number, bits: number): number {
  return s > 0 ? roundClamp((x - z) / s, 0, asymMaxCode(bits)) : 0;
}
export function asymmetricValue(u: number, s: number, z: number): number {
  return s * u + z;
}

/**
 * Quantize one group of n binary16 values src[offset + i*stride], i < n.
 * Hybrid keeps the asymmetric result only when its L1 error is strictly smaller (ties go to symmetric).
 */
export function quantizeGroup(
  src: ArrayLike<number>,
  stride: number,
  n: number,
  bits: number,
  mode: QuantMode,
  offset = 0,
): QuantizedGroup {
  let maxAbs = 0,
    lo = 0,
    hi = 0;
  for (let i = 0; i < n; i++) {
    const x = halfToNumber(src[offset + i * stride]);
    maxAbs = Math.max(maxAbs, Math.abs(x));
    lo = i ? Math.min(lo, x) : x;
    hi = i ? Math.max(hi, x) : x;
  }
  let constantMagnitude = true;
  for (let i = 0; i < n; i++) {
    const a = Math.abs(halfToNumber(src[offset + i * stride]));
    if (a !== 0 && a !== maxAbs) constantMagnitude = false;
  }
  const symScale = symmetricScale(maxAbs, constantMagnitude, bits);
  const asymZero = asymmetricZero(lo);
  const ss = halfToNumber(symScale),
    za = halfToNumber(asymZero);
  const asymScale = asymmetricScale(hi, za, bits);
  const sa = halfToNumber(asymScale);
  let asym = mode === QuantMode.Asym;
  if (mode === QuantMode.Hybrid) {
    let l1s = 0,
      l1a = 0; // exact sums, so the choice is the same everywhere
    for (let i = 0; i < n; i++) {
      const x = halfToNumber(src[offset + i * stride]);
      l1s += Math.abs(x - symmetricValue(symmetricCode(x, ss, bits), ss, bits));
      l1a += Math.abs(x - asymmetricValue(asymmetricCode(x, sa, za, bits), sa, za));
    }
    asym = l1a < l1s;
  }
  const codes = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    const x = halfToNumber(src[offset + i * stride]);
    codes[i] = asym ? asymmetricCode(x, sa, za, bits) : symmetricCode(x, ss, bits);
  }
  if (asym) return { scale: asymScale | 0x8000, zero: asymZero, codes };
  return { scale: symScale, zero: 0, codes };
}

/** Convenience: round numbers to binary16 (saturating) and quantize them as one group. */
export function quantizeValues(xs: ArrayLike<number>, bits: number, mode: QuantMode): QuantizedGroup {
  const h = new Uint16Array(xs.length);
  for (let i = 0; i < xs.length; i++) h[i] = numberToHalfSaturate(xs[i]);
  return quantizeGroup(h, 1, h.length, bits, mode);
}

/**
 * Per-channel key normalization (quantizer.cuh `normalizeKey`): the stored key is K / f rounded to binary16
 * (saturating, so a finite key never becomes Inf), the division in double with f as its float32 value.
 */
export function normalizeKey(keyBits: number, f: number): number {
  return numberToHalfSaturate(halfToNumber(keyBits) / Math.fround(f));
}
/** Floor of the key normalization (quantizer.cuh `kKeyNormFloor`). */
export const KEY_NORM_FLOOR = 1e-4;
/** f_j = sqrt(max(maxAbs_j, floor)) rounded to float32 (quantizer.cuh `keyNormFactor`). */
export function keyNormFactor(maxAbs: number): number {
  return Math.fround(Math.sqrt(maxAbs > KEY_NORM_FLOOR ? maxAbs : KEY_NORM_FLOOR));
}

/** Dequantize one code in float32 arithmetic: exactly what quantizer.cuh `dequantizeCode` (and the kernels) compute. */
export function dequantizeCode(u: number, scaleBits: number, zeroBits: number, bits: number): number {
  const s = Math.fround(halfToNumber(scaleBits & 0x7fff));
  if (scaleIsAsym(scaleBits)) return Math.fround(Math.fround(s * u) + Math.fround(halfToNumber(zeroBits)));
  return Math.fround(s * (u - symOffset(bits)));
}

/** Dequantize one code in double (exact: |s| and z are binary16, u < 2^8). */
export function dequantizeCodeExact(u: number, scaleBits: number, zeroBits: number, bits: number): number {
  const s = halfToNumber(scaleBits & 0x7fff);
  if (scaleIsAsym(scaleBits)) return asymmetricValue(u, s, halfToNumber(zeroBits));
  return symmetricValue(u, s, bits);
}

/** Dequantize a whole group (exact, double). */
export function dequantizeGroup(q: QuantizedGroup, bits: number): Float64Array {
  const out = new Float64Array(q.codes.length);
  for (let i = 0; i < q.codes.length; i++) out[i] = dequantizeCodeExact(q.codes[i], q.scale, q.zero, bits);
  return out;
}

/** Bits per element actually stored: bits + 16/G for the scale, + 16/G more when zeros are stored. 16 for fp16. */
export function effectiveBits(bits: number, groupSize: number, mode: QuantMode | null): number {
  if (mode === null) return 16;
  return bits + 16 / groupSize + (mode === QuantMode.Sym ? 0 : 16 / groupSize);
}
