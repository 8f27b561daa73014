// validate.ts - argument validation for every public function. One message shape everywhere:
//   Expected <what> for <name> but received <value> of type <type>
// TypeError when the kind of value is wrong, RangeError when the kind is right but the value is not.
import { native } from './native';

/** A short, safe rendering of any value for an error message. */
export function describeValue(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value.length > 40 ? value.slice(0, 40) + '…' : value);
  if (typeof value === 'bigint') return `${value}n`;
  if (typeof value === 'symbol') return value.toString();
  if (typeof value === 'function') return `function ${value.name || '(anonymous)'}`;
  if (value === null || value === undefined || typeof value !== 'object') return String(value);
  if (ArrayBuffer.isView(value)) {
    const n = (value as unknown as { length?: number }).length ?? value.byteLength;
    return `${value.constructor.name}(${n})`;
  }
  if (Array.isArray(value)) return `Array(${value.length})`;
  return value.constructor && value.constructor !== Object ? `${value.constructor.name} {}` : '{...}';
}

export function typeOf(value: unknown): string {
  if (value === null) return 'null';
  if (typeof value === 'object') return ArrayBuffer.isView(value) || Array.isArray(value) ? value.constructor.name : 'object';
  return typeof value;
}

export function message(what: string, name: string, value: unknown): string {
  return `Expected ${what} for ${name} but received ${describeValue(value)} of type ${typeOf(value)}`;
}

export function typeError(what: string, name: string, value: unknown): TypeError {
  return new TypeError(message(what, name, value));
}
export function rangeError(what: string, name: string, value: unknown): RangeError {
  return new RangeError(message(what, name, value));
}

/** An integer in [min, max]; TypeError for non-numbers, RangeError for out-of-range or fractional numbers. */
export function integer(value: unknown, name: string, min: number, max: number): number {
  const what = max === Number.MAX_SAFE_INTEGER
    ? (min === 1 ? 'positive integer' : `integer >= ${min}`)
    : `integer between ${min} and ${max}`;
  if (typeof value !== 'number') throw typeError(what, name, value);
  if (!Number.isInteger(value) || value < min || value > max) throw rangeError(what, name, value);
  return value;
}

export function oneOf<T extends string | number>(value: unknown, name: string, allowed: readonly T[]): T {
  const what = `one of ${allowed.map((a) => (typeof a === 'string' ? `'${a}'` : String(a))).join(', ')}`;
  if (typeof value !== typeof allowed[0]) throw typeError(what, name, value);
  if (!allowed.includes(value as T)) throw rangeError(what, name, value);
  return value as T;
}

export function boolean(value: unknown, name: string): boolean {
  if (typeof value !== 'boolean') throw typeError('boolean', name, value);
  return value;
}

export function plainObject(value: unknown, name: string): Record<string, unknown> {
  if (value === null || typeof value !== 'object' || Array.isArray(value) || ArrayBuffer.isView(value))
    throw typeError('object', name, value);
  return value as Record<string, unknown>;
}

/** Rejects keys that are not in `known` (catches typos such as `groupsize`). */
export function knownKeys(obj: Record<string, unknown>, name: string, known: readonly string[]): void {
  for (const k of Object.keys(obj)) {
    if (!known.includes(k)) {
      throw new TypeError(
        `Expected only known options (${known.join(', ')}) for ${name} but received unknown option ${JSON.stringify(k)} of type ${typeOf(obj[k])}`,
      );
    }
  }
}

function isDetached(a: ArrayBufferView): boolean {
  // A transferred (detached) buffer reports byteLength 0; `detached` exists on newer runtimes only.
  const buf = a.buffer as ArrayBuffer & { detached?: boolean };
  // On Node 20 a detached view just reads as length 0, which the length checks reject.
  return buf.detached === true;
}

export type HalfOrFloat = Float32Array | Uint16Array;

/**
 * A Float32Array (finite values) or Uint16Array (binary16 bits, finite) of exactly `length` elements, or a
 * multiple of `rowLength` when length is undefined. Returns the element count.
 */
export function tokenRows(value: unknown, name: string, rowLength: number, exactLength?: number): number {
  const what = exactLength === undefined
    ? `Float32Array or Uint16Array (fp16 bits) with a positive multiple of ${rowLength} elements`
    : `Float32Array or Uint16Array (fp16 bits) of length ${exactLength}`;
  if (!(value instanceof Float32Array) && !(value instanceof Uint16Array)) throw typeError(what, name, value);
  if (isDetached(value)) throw rangeError(`${what} (its buffer is detached)`, name, value);
  const n = value.length;
  if (exactLength !== undefined ? n !== exactLength : n === 0 || n % rowLength !== 0) throw rangeError(what, name, value);
  finiteValues(value, name);
  return n;
}

export function floatVector(value: unknown, name: string, length: number): Float32Array {
  const what = `Float32Array of length ${length}`;
  if (!(value instanceof Float32Array)) throw typeError(what, name, value);
  if (isDetached(value)) throw rangeError(`${what} (its buffer is detached)`, name, value);
  if (value.length !== length) throw rangeError(what, name, value);
  finiteValues(value, name);
  return value;
}

/**
 * NaN and Inf never enter the cache: they would poison a whole quantization group. The scan runs natively: a JS
 * loop costs ~3 ns per element, more than the kernel it guards for a step's probabilities.
 */
export function finiteValues(value: Float32Array | Uint16Array, name: string): void {
  const i = native().firstNonFinite(value);
  if (i < 0) return;
  if (value instanceof Float32Array) {
    throw new RangeError(`Expected finite values for ${name} but received ${value[i]} at index ${i} of type number`);
  }
  const kind = value[i] & 0x3ff ? 'NaN' : 'Inf';
  throw new RangeError(
    `Expected finite fp16 values for ${name} but received ${kind} (0x${value[i].toString(16)}) at index ${i} of type number`,
  );
}
