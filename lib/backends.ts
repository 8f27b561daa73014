// backends.ts - what this build and machine can run, and the choice behind backend: 'auto'.
import { native } from './native';
import type { BackendName } from './options';

export interface BackendsInfo {
  /**
   * simdKernels: the AVX2 table can run; kernels: the table a cache with the default `simd: true` runs
   * ('avx512vnni' needs AVX-512 F/BW/VL/DQ/VNNI/BITALG, and only replaces the InnerQ integer paths).
   */
  cpu: { available: true; avx2: boolean; fma: boolean; f16c: boolean; avx512vnni: boolean; threads: number; simdKernels: boolean;
    kernels: 'avx512vnni' | 'avx2' | 'portable' };
  cuda: { compiled: boolean; devices: number; deviceNames: string[]; error?: string };
  sim: { compiled: boolean };
  buildFlags: string;
}

/** Backends compiled into this build, CPU features, and CUDA devices (with the driver's error, if any). */
export function backends(): BackendsInfo {
  const n = native().nativeInfo();
  const cuda: BackendsInfo['cuda'] = { compiled: n.cuda.compiled, devices: n.cuda.devices, deviceNames: n.cuda.deviceNames ?? [] };
  if (n.cuda.error) cuda.error = n.cuda.error;
  const simdKernels = n.cpu.avx2KernelsCompiled && n.cpu.avx2 && n.cpu.fma && n.cpu.f16c;
  return {
    cpu: { available: true, avx2: n.cpu.avx2, fma: n.cpu.fma, f16c: n.cpu.f16c, avx512vnni: n.cpu.avx512vnni, threads: n.cpu.threads,
      simdKernels, kernels: simdKernels ? (n.cpu.avx512KernelsCompiled && n.cpu.avx512vnni ? 'avx512vnni' : 'avx2') : 'portable' },
    cuda,
    sim: { compiled: n.sim.compiled },
    buildFlags: n.buildFlags,
  };
}

/** Resolves 'auto' and checks that the requested backend can run here; throws a clear Error otherwise. */
export function chooseBackend(requested: BackendName, deviceId: number): Exclude<BackendName, 'auto'> {
  const b = backends();
  if (requested === 'auto') return b.cuda.devices > 0 ? 'cuda' : 'cpu';
  if (requested === 'cuda') {
    if (!b.cuda.compiled || b.cuda.devices === 0) {
      const why = !b.cuda.compiled ? 'the addon was built without CUDA' : `CUDA is compiled but no device is usable (${b.cuda.error ?? '0 devices'})`;
      const e = new Error(`Expected an available backend for options.backend but received "cuda" of type string: ${why}. Use backend 'cpu', 'sim' or 'auto'.`);
      (e as Error & { code: string }).code = 'ERR_INNERQ_BACKEND_UNAVAILABLE';
      throw e;
    }
    if (deviceId >= b.cuda.devices) {
      throw new RangeError(`Expected an integer between 0 and ${b.cuda.devices - 1} for options.deviceId but received ${deviceId} of type number`);
    }
  }
  if (requested === 'sim' && !b.sim.compiled) {
    const e = new Error('Expected an available backend for options.backend but received "sim" of type string: the addon was built without the sim backend.');
    (e as Error & { code: string }).code = 'ERR_INNERQ_BACKEND_UNAVAILABLE';
    throw e;
  }
  return requested;
}
