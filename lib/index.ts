// innerq: quantized KV cache with fused dequantize+GEMV decode attention.
export { KVCache } from './cache';
export type { KVCacheStats } from './cache';
export { backends } from './backends';
export type { BackendsInfo } from './backends';
export { PRESETS, PRESET_NAMES, LIMITS, effectiveBits } from './options';
export type { KVCacheOptions, PresetName, Method, QuantMode, BackendName, Bits, GroupSize, QuantSettings } from './options';
export { DeviceBuffer } from './device';
export type { DeviceDtype, ForeignDevicePointer } from './device';
export type { DeviceCallOptions } from './cache';
