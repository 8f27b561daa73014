// The pure-TypeScript fp64 reference: the oracle every backend (cpu, sim, cuda) is tested against.
export * from './fp16';
export * from './format';
export {
  roundClamp,
  symmetricScale,
  symmetricCode,
  symmetricValue,
  asymmetricZero,
  asymmetricScale,
  asymmetricCode,
  asymmetricValue,
  quantizeGroup,
  quantizeValues,
  dequantizeCode,
  dequantizeCodeExact,
  dequantizeGroup,
  effectiveBits,
  normalizeKey,
  keyNormFactor,
  KEY_NORM_FLOOR,
} from './quantizer';
export type { QuantizedGroup } from './quantizer';
export * from './attention';
