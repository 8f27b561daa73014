// device.test.ts - DeviceBuffer: prefill/append/attend from backend memory give exactly the results of the host
// path, on every backend (sim: emulated device memory, so this path runs in CI; cuda when a device exists).
import { DeviceBuffer, KVCache } from '../lib';
import { toHalfBits } from '../lib/reference';
import { backendCases, randomKV, randomVector, rng, testSeed } from './support';

const shape = { layers: 1, qHeads: 8, kvHeads: 2, headDim: 64, maxTokens: 400 };
const row = shape.kvHeads * shape.headDim;
const qLen = shape.qHeads * shape.headDim;

describe.each(backendCases())('DeviceBuffer on $label', ({ label, options }) => {
  const seed = testSeed(`device.test ${label}`);

  test.each([['innerq'], ['kivi-2'], ['fp16']] as const)('%s: device prefill/append/attend equal the host path bit for bit', (preset) => {
    const r = rng(seed ^ preset.length);
    const total = 300, prefill = 150;
    const { keys, values } = randomKV(r, total, shape.kvHeads, shape.headDim);
    const host = new KVCache({ ...shape, preset, ...options });
    const dev = new KVCache({ ...shape, preset, ...options });
    const kh = toHalfBits(keys), vh = toHalfBits(values);
    host.prefill(0, kh.subarray(0, prefill * row), vh.subarray(0, prefill * row));
    const dk = dev.createDeviceBuffer('f16', prefill * row).write(kh.subarray(0, prefill * row));
    const dv = dev.createDeviceBuffer('f16', prefill * row).write(vh.subarray(0, prefill * row));
    dev.prefill(0, dk, dv);
    const k1 = dev.createDeviceBuffer('f16', row), v1 = dev.createDeviceBuffer('f16', row);
    const dq = dev.createDeviceBuffer('f32', qLen), dout = dev.createDeviceBuffer('f32', qLen);
    for (let t = prefill; t < total; t++) {
      host.append(0, kh.subarray(t * row, (t + 1) * row), vh.subarray(t * row, (t + 1) * row));
      dev.append(0, k1.write(kh.subarray(t * row, (t + 1) * row)), v1.write(vh.subarray(t * row, (t + 1) * row)));
      if (t % 37 === 0 || t === total - 1) {
        const q = randomVector(r, qLen);
        const expected = host.attend(0, q);
        dout.write(new Float32Array(qLen).fill(NaN));  // poisoned
        dev.attend(0, dq.write(q), dout);
        expect(Array.from(dout.read() as Float32Array)).toEqual(Array.from(expected));
      }
    }
    expect(dev.length(0)).toBe(total);
    for (const b of [dk, dv, k1, v1, dq, dout]) b.free();
    host.dispose();
    dev.dispose();
  });

  test('bad device arguments are clear errors', () => {
    const c = new KVCache({ ...shape, ...options });
    const b16 = c.createDeviceBuffer('f16', row), b32 = c.createDeviceBuffer('f32', qLen);
    expect(() => c.createDeviceBuffer('f64' as never, 4)).toThrow(new RangeError(`Expected one of 'f16', 'f32' for dtype but received "f64" of type string`));
    expect(() => c.createDeviceBuffer('f16', 0)).toThrow(/Expected integer between 1 and .* for length but received 0/);
    expect(() => c.append(0, b32, b16)).toThrow(/Expected 'f16' DeviceBuffer of this cache's backend .* for key but received DeviceBuffer/);
    expect(() => c.append(0, b16, new Float32Array(row) as never)).toThrow(TypeError);
    expect(() => b16.write(new Float32Array(row) as never)).toThrow(/Expected Uint16Array \(fp16 bits\) for data/);
    expect(() => b16.write(new Uint16Array(row + 1))).toThrow(RangeError);
    expect(() => c.wrapDevicePointer({ address: 0n, byteLength: 8, dtype: 'f16' })).toThrow(/non-zero 64-bit device address for pointer.address/);
    expect(() => c.wrapDevicePointer({ address: 3n, byteLength: 8, dtype: 'f32' })).toThrow(/aligned to 4 bytes/);
    expect(() => c.wrapDevicePointer({ address: 16n, byteLength: 6, dtype: 'f32' })).toThrow(/multiple of 4/);
    c.append(0, b16.write(new Uint16Array(row).fill(0x3c00)), b16);
    expect(() => c.attend(0, b32, b16 as never)).toThrow(/Expected 'f32' DeviceBuffer .* for out/);
    expect(() => c.append(0, b16, b16, { stream: 5 as never })).toThrow(/BigInt cudaStream_t handle for opts.stream/);
    b16.free();
    b16.free();  // idempotent
    expect(() => c.append(0, b16, b16)).toThrow(/it was freed/);
    expect(() => b16.read()).toThrow(/freed/);
    c.dispose();
    expect(() => b32.read()).toThrow(/after dispose/);
    b32.free();  // after dispose: nothing to do, no crash
  });

  test('a wrapped foreign pointer works (address of another buffer of this backend)', () => {
    const c = new KVCache({ ...shape, preset: 'fp16', ...options });
    const owner = c.createDeviceBuffer('f16', row);
    const foreign = c.wrapDevicePointer({ address: owner.address, byteLength: owner.byteLength, dtype: 'f16' });
    expect(foreign.owned).toBe(false);
    c.append(0, foreign.write(new Uint16Array(row).fill(0x3c00)), foreign);  // 1.0
    const out = c.attend(0, new Float32Array(qLen).fill(0.1));
    expect(out.every((x) => x === 1)).toBe(true);
    foreign.free();   // forgets, does not release
    expect(owner.read().every((x) => x === 0x3c00)).toBe(true);
    c.dispose();
  });

  if (label === 'sim') {
    test('sim: a host address passed as device memory is a device error, not a crash', () => {
      const c = new KVCache({ ...shape, preset: 'fp16', ...options });
      const hostAddr = c.wrapDevicePointer({ address: 0x10000n, byteLength: row * 2, dtype: 'f16' });
      expect(() => c.append(0, hostAddr, hostAddr)).toThrow(/innerq: .*/);
      expect(c.length(0)).toBe(0);
      c.dispose();
    });
  }
});

test('DeviceBuffer is exported', () => {
  expect(typeof DeviceBuffer).toBe('function');
});

test('sim: a rejected device copy does not poison the next attend', () => {
  const c = new KVCache({ ...shape, preset: 'innerq', backend: 'sim' });
  c.append(0, new Float32Array(row).fill(0.5), new Float32Array(row).fill(0.25));
  const bogus = c.wrapDevicePointer({ address: 0x10000n, byteLength: row * 2, dtype: 'f16' });
  expect(() => c.append(0, bogus, bogus)).toThrow(/innerq: /);
  const out = c.attend(0, new Float32Array(qLen).fill(0.1));
  expect(out.every((x) => Math.abs(x - 0.25) < 1e-3)).toBe(true);
  c.dispose();
});
