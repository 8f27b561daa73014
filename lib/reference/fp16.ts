// fp16.ts - IEEE binary16 conversions with an explicit rounding direction.
// Mirrors kernels/fp16.cuh: same result for every input (see the note on infinities in numberToHalf).
// Node 20 has no Float16Array, so binary16 values travel as their 16-bit patterns (numbers 0..65535).

/** Rounding direction, as in fp16.cuh (`kRoundNearestEven`, `kRoundUp`, `kRoundDown`). */
export type RoundDir = 'nearest' | 'up' | 'down';

/** Largest finite binary16 magnitude. */
export const HALF_MAX = 65504;

// Exact powers of two 2^n for n in [-1074, 1023], built by exact doublings/halvings (Math.pow is not
// guaranteed exact by the spec).
const POW2_MIN = -1074;
const POW2 = ((): Float64Array => {
  const t = new Float64Array(1023 - POW2_MIN + 1);
  t[-POW2_MIN] = 1;
  for (let n = 1; n <= 1023; n++) t[n - POW2_MIN] = t[n - 1 - POW2_MIN] * 2;
  for (let n = -1; n >= POW2_MIN; n--) t[n - POW2_MIN] = t[n + 1 - POW2_MIN] / 2;
  return t;
})();

/** Exact 2^n for integer n in [-1074, 1023]. */
export function pow2(n: number): number {
  if (!Number.isInteger(n) || n < POW2_MIN || n > 1023) throw new RangeError(`pow2 exponent out of range: ${n}`);
  return POW2[n - POW2_MIN];
}

/** The exponent e of C's frexp: a = f * 2^e with f in [0.5, 1), for finite a > 0. */
function frexpExponent(a: number): number {
  let e = Math.floor(Math.log2(a)); // may be off by one near powers of two: fix it exactly below
  if (e < POW2_MIN) e = POW2_MIN;
  if (e > 1023) e = 1023;
  while (e > POW2_MIN && pow2(e) > a) e--;
  while (e < 1023 && pow2(e + 1) <= a) e++;
  return e + 1; // 2^e <= a < 2^(e+1)  ->  a = f * 2^(e+1), f in [0.5, 1)
}

/** Exact value of a binary16 bit pattern, computed from its fields (the definition; see halfToNumber). */
function decodeHalf(h: number): number {
  const sign = (h >> 15) & 1;
  const exponent = (h >> 10) & 0x1f;
  const mantissa = h & 0x3ff;
  let magnitude: number;
  if (exponent === 0) magnitude = mantissa * pow2(-24); // subnormal: m * 2^-24
  else if (exponent === 31) magnitude = mantissa ? NaN : Infinity;
  else magnitude = (mantissa | 0x400) * pow2(exponent - 25); // (1024 + m) * 2^(e-25)
  return sign ? -magnitude : magnitude;
}

const HALF_TABLE = ((): Float64Array => {
  const t = new Float64Array(65536);
  for (let h = 0; h < 65536; h++) t[h] = decodeHalf(h);
  return t;
})();

/** Exact value of a binary16 bit pattern (NaN for NaN patterns, +-Infinity for infinities). */
export function halfToNumber(h: number): number {
  return HALF_TABLE[h & 0xffff];
}

function dirCode(dir: RoundDir): number {
  return dir === 'up' ? 1 : dir === 'down' ? -1 : 0;
}

/**
 * Round x to a binary16 bit pattern in direction `dir` ('nearest' = ties to even; 'up' = toward +Inf;
 * 'down' = toward -Inf). Magnitudes past 65504 give +-Inf for nearest and for rounding away from zero, and
 * saturate to +-65504 for rounding toward zero. NaN gives 0x7e00; -0 keeps its sign.
 *
 * Infinite x: fp16.cuh converts an infinite double to `long long` (undefined behaviour in C++: on x86 it
 * returns +-0); here an infinity is exact (+-Inf in every direction). The quantizer never passes an infinity.
 */
export function numberToHalf(x: number, dir: RoundDir = 'nearest'): number {
  if (x !== x) return 0x7e00;
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  if (a === 0) return sign;
  // Rounding "up" for a negative number moves its magnitude down, and vice versa.
  let magDir = dirCode(dir);
  if (sign) magDir = -magDir;
  if (a === Infinity) return sign | 0x7c00; // exact: an infinity stays infinite in every direction
  const e = frexpExponent(a); // a = f * 2^e, f in [0.5, 1): the leading bit has weight 2^(e-1)
  let ulpExp = e - 1 - 10; // 10 fraction bits below the leading bit
  if (ulpExp < -24) ulpExp = -24; // subnormal range: fixed ulp 2^-24
  const m = a * pow2(-ulpExp); // exact (power-of-two scaling); m in [1024, 2048) for normals
  let r: number;
  if (magDir > 0) r = Math.ceil(m);
  else if (magDir < 0) r = Math.floor(m);
  else {
    r = Math.floor(m);
    const frac = m - r;
    if (frac > 0.5 || (frac === 0.5 && r % 2 !== 0)) r += 1;
  }
  let mi = r;
  if (mi >= 2048) {
    mi = Math.floor(mi / 2); // carried into the next binade (r == 2048 exactly)
    ulpExp += 1;
  }
  if (mi < 1024) return sign | mi; // subnormal (ulpExp == -24) or zero
  const biasedExponent = ulpExp + 10 + 15;
  if (biasedExponent >= 31) return sign | (magDir < 0 ? 0x7bff : 0x7c00);
  return sign | (biasedExponent << 10) | (mi - 1024);
}

/**
 * Round to nearest (ties to even), saturating at +-65504 instead of overflowing to Inf. This is how cache
 * inputs (Float32Array) and normalized keys K/f become binary16: a finite input never becomes Inf.
 */
export function numberToHalfSaturate(x: number): number {
  if (x !== x) return 0x7e00;
  if (x > HALF_MAX) return 0x7bff;
  if (x < -HALF_MAX) return 0xfbff;
  return numberToHalf(x, 'nearest');
}

/** Round a value to binary16 precision (saturating) and return it as a number. */
export function roundToHalf(x: number): number {
  return halfToNumber(numberToHalfSaturate(x));
}

/** Float32Array/number[] values -> binary16 bit patterns (saturating round to nearest); Uint16Array is copied. */
export function toHalfBits(src: ArrayLike<number> | Uint16Array): Uint16Array {
  if (src instanceof Uint16Array) return Uint16Array.from(src);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = numberToHalfSaturate(src[i]);
  return out;
}

/** binary16 bit patterns -> exact values as a Float64Array. */
export function halfBitsToNumbers(src: ArrayLike<number>): Float64Array {
  const out = new Float64Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = halfToNumber(src[i]);
  return out;
}
