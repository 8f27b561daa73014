// Under ncu: one layer of the Llama-3-8B shape per preset at one context, attended twice on cuda.
'use strict';
const { KVCache } = require(require('path').resolve(__dirname, '..', 'dist'));
const [preset, ctx] = [process.argv[2], Number(process.argv[3])];
const n = ctx * 8 * 128, data = new Uint16Array(n);
let x = 12345;
for (let i = 0; i < n; i++) { x ^= x << 13; x ^= x >>> 17; x ^= x << 5; x >>>= 0; data[i] = ((x >>> 31) << 15) | ((12 + (x & 3)) << 10) | ((x >>> 8) & 0x3ff); }
const c = new KVCache({ layers: 1, qHeads: 32, kvHeads: 8, headDim: 128, maxTokens: ctx, preset, backend: 'cuda' });
c.prefill(0, data, data);
const q = new Float32Array(32 * 128).map((_, i) => Math.sin(i * 0.37));
for (let i = 0; i < 2; i++) c.attend(0, q);
console.error(`prof ${preset} ${ctx}: deviceAttendMs per attend ${(c.kernelInfo().deviceAttendMs / 2).toFixed(4)}`);
c.dispose();
