// validation.test.ts - every argument of every public method, checked for the exact error text.
import { KVCache, backends } from '../lib';

const base = { layers: 2, qHeads: 8, kvHeads: 2, headDim: 64, maxTokens: 300, backend: 'cpu' as const };
const row = base.kvHeads * base.headDim;

function make(extra: Record<string, unknown> = {}): KVCache {
  return new KVCache({ ...base, ...extra } as never);
}

describe('KVCache options', () => {
  test('non-object options', () => {
    expect(() => new KVCache(undefined as never)).toThrow(new TypeError('Expected object for options but received undefined of type undefined'));
    expect(() => new KVCache([] as never)).toThrow(TypeError);
  });

  test('required shape fields', () => {
    expect(() => make({ layers: undefined })).toThrow(new TypeError('Expected positive integer for options.layers but received undefined of type undefined'));
    expect(() => make({ layers: 1.5 })).toThrow(new RangeError('Expected integer between 1 and 1024 for options.layers but received 1.5 of type number'));
    expect(() => make({ layers: '2' })).toThrow(new TypeError('Expected integer between 1 and 1024 for options.layers but received "2" of type string'));
    expect(() => make({ kvHeads: 0 })).toThrow(new RangeError('Expected integer between 1 and 256 for options.kvHeads but received 0 of type number'));
    expect(() => make({ qHeads: 6, kvHeads: 4 })).toThrow(new RangeError('Expected a multiple of kvHeads (4) for options.qHeads but received 6 of type number'));
    expect(() => make({ headDim: NaN })).toThrow(new RangeError('Expected integer between 1 and 256 for options.headDim but received NaN of type number'));
    expect(() => make({ maxTokens: -1 })).toThrow(RangeError);
    expect(() => make({ maxTokens: 2 ** 40 })).toThrow(/options\.maxTokens/);
  });

  test('unsupported combinations list what is supported', () => {
    expect(() => make({ keyBits: 5 })).toThrow(new RangeError('Expected one of 2, 3, 4, 8 for options.keyBits but received 5 of type number'));
    expect(() => make({ valueBits: '4' })).toThrow(new TypeError('Expected one of 2, 3, 4, 8 for options.valueBits but received "4" of type string'));
    expect(() => make({ groupSize: 48 })).toThrow(new RangeError('Expected one of 32, 64, 128 for options.groupSize but received 48 of type number'));
    expect(() => make({ headDim: 96, groupSize: 64 })).toThrow(/Expected a multiple of groupSize \(64\).*for options.headDim but received 96 of type number/);
    expect(() => make({ keyMode: 'log2' })).toThrow(new RangeError(`Expected one of 'sym', 'asym', 'hybrid' for options.keyMode but received "log2" of type string`));
    expect(() => make({ preset: 'kivi-3' })).toThrow(new RangeError(`Expected one of 'innerq', 'innerq-4', 'kivi-2', 'kivi-4', 'fp16' for options.preset but received "kivi-3" of type string`));
    expect(() => make({ method: 'outer' })).toThrow(/options\.method/);
    expect(() => make({ backend: 'gpu' })).toThrow(new RangeError(`Expected one of 'auto', 'cpu', 'cuda', 'sim' for options.backend but received "gpu" of type string`));
    expect(() => make({ pageTokens: 100 })).toThrow(new RangeError('Expected integer between 128 and 8192 for options.pageTokens but received 100 of type number'));
    expect(() => make({ pageTokens: 200 })).toThrow(new RangeError('Expected a multiple of 128 between 128 and 8192 for options.pageTokens but received 200 of type number'));
    expect(() => make({ sinkTokens: -1 })).toThrow(/options\.sinkTokens/);
    expect(() => make({ recentTokens: 0.5 })).toThrow(/options\.recentTokens/);
    expect(() => make({ keyNorm: 1 })).toThrow(new TypeError('Expected boolean for options.keyNorm but received 1 of type number'));
    expect(() => make({ threads: 0 })).toThrow(/options\.threads/);
    expect(() => make({ simd: 'no' })).toThrow(/options\.simd/);
    expect(() => make({ simd: 'avx512' })).toThrow(new RangeError(`Expected true, false or 'avx2' for options.simd but received "avx512" of type string`));
    expect(() => make({ simd: 1 })).toThrow(new TypeError(`Expected true, false or 'avx2' for options.simd but received 1 of type number`));
    expect(() => make({ simThreadOrder: 'random' })).toThrow(/options\.simThreadOrder/);
    expect(() => make({ preset: 'fp16', keyBits: 4 })).toThrow(/no keyBits with method 'fp16'/);
    expect(() => make({ preset: 'fp16', recentTokens: 16 })).toThrow(/options\.recentTokens/);
  });

  test('unknown options are typos, not silently ignored', () => {
    expect(() => make({ groupsize: 32 })).toThrow(/Expected only known options .* for options but received unknown option "groupsize" of type number/);
  });

  test('an unavailable cuda backend is a clear error', () => {
    const b = backends();
    if (b.cuda.devices > 0) {
      console.log('cuda device present: the unavailable-backend error cannot be provoked here');
      expect(() => make({ backend: 'cuda' }).dispose()).not.toThrow();
      return;
    }
    expect(() => make({ backend: 'cuda' })).toThrow(/Expected an available backend for options.backend but received "cuda" of type string/);
  });
});

describe('KVCache methods', () => {
  let cache: KVCache;
  beforeEach(() => { cache = make(); });
  afterEach(() => cache.dispose());
  const good = () => new Float32Array(row).fill(0.5);

  test('layer', () => {
    expect(() => cache.append(2, good(), good())).toThrow(new RangeError('Expected integer between 0 and 1 for layer but received 2 of type number'));
    expect(() => cache.append(-1, good(), good())).toThrow(RangeError);
    expect(() => cache.append('0' as never, good(), good())).toThrow(new TypeError('Expected integer between 0 and 1 for layer but received "0" of type string'));
    expect(() => cache.length(1.5)).toThrow(RangeError);
    expect(() => cache.keyNormFactors(9)).toThrow(RangeError);
    expect(() => cache.reset(NaN)).toThrow(RangeError);
  });

  test('append key/value', () => {
    expect(() => cache.append(0, [1, 2] as never, good())).toThrow(new TypeError(`Expected Float32Array or Uint16Array (fp16 bits) of length ${row} for key but received Array(2) of type Array`));
    expect(() => cache.append(0, good(), new Float32Array(row - 1))).toThrow(new RangeError(`Expected Float32Array or Uint16Array (fp16 bits) of length ${row} for value but received Float32Array(${row - 1}) of type Float32Array`));
    expect(() => cache.append(0, new Float64Array(row) as never, good())).toThrow(TypeError);
    const nan = good(); nan[5] = NaN;
    expect(() => cache.append(0, nan, good())).toThrow(new RangeError('Expected finite values for key but received NaN at index 5 of type number'));
    const inf = good(); inf[7] = -Infinity;
    expect(() => cache.append(0, good(), inf)).toThrow(new RangeError('Expected finite values for value but received -Infinity at index 7 of type number'));
    const halfInf = new Uint16Array(row); halfInf[3] = 0x7c00;
    expect(() => cache.append(0, halfInf, new Uint16Array(row))).toThrow(/Expected finite fp16 values for key but received Inf \(0x7c00\) at index 3/);
    expect(cache.length(0)).toBe(0);  // nothing reached the cache
  });

  test('prefill', () => {
    expect(() => cache.prefill(0, new Float32Array(0), new Float32Array(0))).toThrow(/positive multiple of 128 elements for keys but received Float32Array\(0\)/);
    expect(() => cache.prefill(0, new Float32Array(row * 2), new Float32Array(row * 3))).toThrow(new RangeError(`Expected Float32Array or Uint16Array (fp16 bits) of length ${row * 2} for values but received Float32Array(${row * 3}) of type Float32Array`));
    expect(() => cache.prefill(0, new Float32Array(row * 301).fill(1), new Float32Array(row * 301).fill(1))).toThrow(/at most maxTokens \(300\)/);
    cache.prefill(0, new Float32Array(row * 3).fill(1), new Float32Array(row * 3).fill(2));
    expect(() => cache.prefill(0, new Float32Array(row).fill(1), new Float32Array(row).fill(1))).toThrow(/Expected an empty layer for layer but received 0 \(holding 3 tokens\)/);
    expect(cache.length(0)).toBe(3);
  });

  test('long vectors: the native finiteness scan reports the first NaN/Inf with its index', () => {
    // prefill data of 64 tokens x 128 = 8192 elements (several of the native scan's blocks); positions at the
    // edges of its 1024-element blocks, the last element, two bad values (the first one wins), views with offsets
    const n = 64 * row;
    for (const at of [0, 1023, 1024, 4095, 5000, n - 1]) {
      const k = new Float32Array(n).fill(0.25);
      k[at] = at % 2 ? NaN : -Infinity;
      if (at + 7 < n) k[at + 7] = Infinity;
      expect(() => cache.prefill(1, k, new Float32Array(n))).toThrow(
        new RangeError(`Expected finite values for keys but received ${k[at]} at index ${at} of type number`));
      const h = new Uint16Array(n).fill(0x3c00);
      h[at] = at % 2 ? 0x7e01 : 0xfc00;
      expect(() => cache.prefill(1, new Uint16Array(n), h)).toThrow(
        new RangeError(`Expected finite fp16 values for values but received ${at % 2 ? 'NaN' : 'Inf'} (0x${h[at].toString(16)}) at index ${at} of type number`));
    }
    const backing = new Float32Array(n + 3).fill(0.5);
    backing[3 + 2000] = NaN;  // a view starting 3 elements into its buffer: index relative to the view
    expect(() => cache.prefill(1, backing.subarray(3), new Float32Array(n))).toThrow(/received NaN at index 2000 of type number/);
    const shared = new Float32Array(new SharedArrayBuffer(4 * n)).fill(0.5);
    shared[n - 2] = -Infinity;
    expect(() => cache.prefill(1, new Float32Array(n), shared)).toThrow(/received -Infinity at index 8190 of type number/);
    expect(cache.length(1)).toBe(0);  // nothing reached the cache
    cache.prefill(1, new Float32Array(n).fill(0.5), shared.fill(0.25));  // finite long inputs pass
    expect(cache.length(1)).toBe(64);
    cache.reset(1);
    // the edges of the scan's exponent arithmetic: the largest finite magnitudes (and -0, subnormals) pass; the
    // largest NaN bit patterns (all ones, either sign) are found
    const edge = new Float32Array(n);
    for (let i = 0; i < n; i++) edge[i] = [3.4028234663852886e38, -3.4028234663852886e38, -0, 1e-45][i % 4];
    const edgeHalf = new Uint16Array(n).map((_, i) => [0x7bff, 0xfbff, 0x8000, 0x0001][i % 4]);
    cache.prefill(1, edge, edgeHalf);
    expect(cache.length(1)).toBe(64);
    cache.reset(1);
    const bits = new Uint32Array(n);
    bits[3000] = 0xffffffff;
    bits[3001] = 0x7fffffff;
    expect(() => cache.prefill(1, new Float32Array(bits.buffer), new Float32Array(n))).toThrow(/received NaN at index 3000 of type number/);
    const halfNaN = new Uint16Array(n);
    halfNaN[6000] = 0xffff;
    expect(() => cache.prefill(1, new Uint16Array(n), halfNaN)).toThrow(/received NaN \(0xffff\) at index 6000 of type number/);
    expect(cache.length(1)).toBe(0);
  });

  test('attend', () => {
    const q = new Float32Array(base.qHeads * base.headDim).fill(0.1);
    expect(() => cache.attend(0, q)).toThrow(new RangeError('Expected a layer holding at least one token for layer but received 0 (empty) of type number'));
    cache.append(0, good(), good());
    expect(() => cache.attend(0, new Float32Array(5))).toThrow(new RangeError('Expected Float32Array of length 512 for query but received Float32Array(5) of type Float32Array'));
    expect(() => cache.attend(0, q, new Float32Array(3))).toThrow(new RangeError('Expected Float32Array of length 512 for out but received Float32Array(3) of type Float32Array'));
    expect(() => cache.attend(0, 'q' as never)).toThrow(TypeError);
    const bad = q.slice(); bad[0] = Infinity;
    expect(() => cache.attend(0, bad)).toThrow(/Expected finite values for query/);
  });

  test('attendAsync rejects (never throws synchronously)', async () => {
    await expect(cache.attendAsync(5, new Float32Array(1))).rejects.toThrow(RangeError);
    cache.append(0, good(), good());
    const out = await cache.attendAsync(0, new Float32Array(base.qHeads * base.headDim).fill(0.1));
    expect(out.every((x) => Number.isFinite(x))).toBe(true);
  });

  test('maxTokens is a hard limit that leaves the cache intact', () => {
    const small = make({ maxTokens: 2 });
    small.append(0, good(), good());
    small.append(0, good(), good());
    expect(() => small.append(0, good(), good())).toThrow(/Expected a layer below maxTokens \(2\) for layer but received 0 \(full\)/);
    expect(small.length(0)).toBe(2);
    small.dispose();
  });
});

describe('dispose', () => {
  test('idempotent; every later call throws a clear error', async () => {
    const c = make();
    c.append(0, new Float32Array(row).fill(1), new Float32Array(row).fill(1));
    c.dispose();
    c.dispose();
    c[Symbol.dispose]();
    expect(c.disposed).toBe(true);
    for (const call of [() => c.append(0, new Float32Array(row), new Float32Array(row)), () => c.length(0), () => c.stats(),
      () => c.attend(0, new Float32Array(512)), () => c.keyNormFactors(0), () => c.snapshot(0), () => c.reset(0)]) {
      expect(call).toThrow(/KVCache\.\w+\(\) was called after dispose\(\)/);
    }
    await expect(c.attendAsync(0, new Float32Array(512))).rejects.toThrow(/after dispose/);
  });

  test('dispose while an attendAsync is in flight', async () => {
    const c = make();
    c.append(0, new Float32Array(row).fill(1), new Float32Array(row).fill(1));
    const p = c.attendAsync(0, new Float32Array(512).fill(0.2));
    c.dispose();
    // Either the attend ran before dispose took the lock, or it reports the dispose: never a crash.
    await p.then((out) => expect(out.every(Number.isFinite)).toBe(true), (e) => expect(String(e)).toMatch(/disposed/));
  });
});

test('GPU kernels take power-of-two head dims; the cpu backend takes any multiple of G', () => {
  expect(() => new KVCache({ ...base, headDim: 96, backend: 'sim' })).toThrow(
    new RangeError('Expected one of 32, 64, 128, 256 on the sim backend (the cpu backend also takes other multiples of groupSize) for options.headDim but received 96 of type number'));
  const c = new KVCache({ ...base, headDim: 96, backend: 'cpu' });
  c.append(0, new Float32Array(2 * 96).fill(1), new Float32Array(2 * 96).fill(1));
  expect(c.attend(0, new Float32Array(8 * 96).fill(0.1)).every((x) => Math.abs(x - 1) < 1e-6)).toBe(true);
  c.dispose();
});
