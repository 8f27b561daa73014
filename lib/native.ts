// native.ts - loads the compiled addon and declares its (internal) shape. Users never see this module:
// lib/cache.ts and lib/backends.ts validate every argument before anything reaches it.
import * as path from 'path';
import * as fs from 'fs';

export interface NativeFormat { orientation: number; bits: number; groupSize: number; mode: number }
export interface NativeConfig {
  layers: number; qHeads: number; kvHeads: number; headDim: number; maxTokens: number;
  keyFormat: NativeFormat; valueFormat: NativeFormat;
  sinkTokens: number; recentTokens: number; pageTokens: number; keyNorm: boolean;
}
export interface NativeBackendOptions { threads: number; /** 0 portable, 1 AVX2 only, 2 best */ simd: number; simThreadOrder: number; simSeed: number; deviceId: number }
export interface NativeStats {
  tokens: number; codeBytes: number; scaleBytes: number; windowBytes: number; heldBytes: number;
  fp16Bytes: number; allocatedBytes: number; pagesInUse: number; pagesAllocated: number;
}
export interface NativeSnapshot {
  tokens: number; sinkCapacity: number; quantizedKeys: number; quantizedValues: number; ringCapacity: number;
  pageTokens: number; pageBytes: number; sinkKeys: Uint16Array; sinkValues: Uint16Array; ringKeys: Uint16Array;
  ringValues: Uint16Array; pages: Uint8Array[]; keyNorm: Float32Array | null;
}
export interface NativeCacheInstance {
  prefill(layer: number, keys: Float32Array | Uint16Array, values: Float32Array | Uint16Array, tokens: number): void;
  append(layer: number, key: Float32Array | Uint16Array, value: Float32Array | Uint16Array): void;
  attend(layer: number, query: Float32Array, out: Float32Array): void;
  attendAsync(layer: number, query: Float32Array, out: Float32Array, cb: (err: Error | null) => void): void;
  length(layer: number): number;
  stats(): NativeStats;
  keyNormFactors(layer: number): Float32Array | null;
  snapshot(layer: number): NativeSnapshot;
  restore(layer: number, snapshot: NativeSnapshot): void;
  keyScores(layer: number, query: Float32Array, scores: Float32Array): void;
  valueSum(layer: number, probs: Float32Array, out: Float32Array): void;
  deviceAlloc(bytes: number): bigint;
  deviceFree(address: bigint): boolean;
  deviceWrite(address: bigint, data: ArrayBufferView): void;
  deviceRead(address: bigint, data: ArrayBufferView): void;
  prefillDevice(layer: number, keys: bigint, values: bigint, tokens: number, stream?: bigint): void;
  appendDevice(layer: number, key: bigint, value: bigint, stream?: bigint): void;
  attendDevice(layer: number, query: bigint, out: bigint, stream?: bigint): void;
  geometry(): { pageBytes: number; ringCapacity: number; kernels: string; threads: number; deviceAttendMs: number | null };
  reset(layer: number): void;
  dispose(): void;
  backendName(): string;
}
export interface NativeInfo {
  cpu: { avx2: boolean; fma: boolean; f16c: boolean; avx512vnni: boolean; threads: number; avx2KernelsCompiled: boolean; avx512KernelsCompiled: boolean };
  sim: { compiled: boolean };
  cuda: { compiled: boolean; devices: number; error?: string; deviceNames?: string[] };
  buildFlags: string;
}
export interface NativeModule {
  nativeInfo(): NativeInfo;
  /** Index of the first NaN/Inf (Float32Array) or of the first binary16 NaN/Inf (Uint16Array), or -1. */
  firstNonFinite(values: Float32Array | Uint16Array): number;
  NativeCache: new (config: NativeConfig, backend: string, options: NativeBackendOptions) => NativeCacheInstance;
}

let loaded: NativeModule | undefined;

/** The addon: INNERQ_ADDON overrides the path (the sanitizer build uses it). */
export function native(): NativeModule {
  if (loaded) return loaded;
  const root = path.resolve(__dirname, '..');
  const candidates = [
    process.env.INNERQ_ADDON,
    path.join(root, 'build', 'Release', 'innerq.node'),
    path.join(root, 'build', 'Debug', 'innerq.node'),
  ].filter((p): p is string => !!p);
  for (const p of candidates) {
    if (fs.existsSync(p)) {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      loaded = require(p) as NativeModule;
      return loaded;
    }
  }
  throw new Error(`innerq: the native addon is not built (looked in ${candidates.join(', ')}); run \`npm install\` or \`npm run build\``);
}
