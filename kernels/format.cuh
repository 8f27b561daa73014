// format.cuh - the byte layout of quantized KV pages, shared by every backend (cpu, sim, cuda) and mirrored
// by the TypeScript reference (lib/reference/format.ts). docs/FORMAT.md is the prose version of this file.
#pragma once
#include "compat.cuh"

namespace innerq {

// How one cache matrix (keys or values) of one layer is stored.
enum Orientation : int {
  kFp16Rows = 0,      // no quantization: [token][channel] binary16
  kRowGrouped = 1,    // groups of G consecutive channels of one token   (InnerQ keys, KIVI-style values)
  kColGrouped = 2,    // groups of G consecutive tokens of one channel   (InnerQ values, KIVI-style keys)
};
enum QuantMode : int { kSym = 0, kAsym = 1, kHybrid = 2 };

struct MatrixFormat {
  int orientation;  // Orientation
  int bits;         // 2, 3, 4, 8 (ignored for kFp16Rows)
  int groupSize;    // 32, 64, 128 (ignored for kFp16Rows)
  int mode;         // QuantMode (ignored for kFp16Rows)
};

// ---- codes: 32 elements form a block; a group of G elements is G/32 consecutive blocks -------------------
// Block packing (u = unsigned code of element e, e in 0..31):
//   2 bits: 8 bytes.  byte i (0..7), bits 2k..2k+1 = u[8k + i]         (shift by 2k and mask -> 8 contiguous codes)
//   3 bits: 12 bytes. bytes 0..7 = the 2-bit packing of (u & 3); bytes 8..11 = little-endian uint32 whose bit e
//           is bit 2 of u[e]
//   4 bits: 16 bytes. byte i (0..15): low nibble u[i], high nibble u[i + 16]
//   8 bits: 32 bytes. byte e = u[e]
IQ_HD int blockBytes(int bits) { return bits == 2 ? 8 : bits == 3 ? 12 : bits == 4 ? 16 : 32; }
IQ_HD int groupBytes(int bits, int groupSize) { return (groupSize / 32) * blockBytes(bits); }

// Symmetric codes are stored with an offset so that every stored code is unsigned:
//   signed k in [-(2^(b-1)-1), 2^(b-1)-1], stored u = k + 2^(b-1), so x^ = s * (u - 2^(b-1)).
IQ_HD int symOffset(int bits) { return 1 << (bits - 1); }
IQ_HD int symMaxLevel(int bits) { return (1 << (bits - 1)) - 1; }
IQ_HD int asymMaxCode(int bits) { return (1 << bits) - 1; }

IQ_HD void packBlock32(const uint8_t* u, int bits, uint8_t* dst) {
  if (bits == 8) {
    for (int e = 0; e < 32; e++) dst[e] = u[e];
  } else if (bits == 4) {
    for (int i = 0; i < 16; i++) dst[i] = (uint8_t)((u[i] & 15) | ((u[i + 16] & 15) << 4));
  } else {
    for (int i = 0; i < 8; i++) {
      uint8_t b = 0;
      for (int k = 0; k < 4; k++) b |= (uint8_t)((u[8 * k + i] & 3) << (2 * k));
      dst[i] = b;
    }
    if (bits == 3) {
      uint32_t high = 0;
      for (int e = 0; e < 32; e++) high |= (uint32_t)((u[e] >> 2) & 1) << e;
      for (int i = 0; i < 4; i++) dst[8 + i] = (uint8_t)(high >> (8 * i));
    }
  }
}

IQ_HD void unpackBlock32(const uint8_t* src, int bits, uint8_t* u) {
  if (bits == 8) {
    for (int e = 0; e < 32; e++) u[e] = src[e];
  } else if (bits == 4) {
    for (int i = 0; i < 16; i++) { u[i] = src[i] & 15; u[i + 16] = src[i] >> 4; }
  } else {
    for (int i = 0; i < 8; i++)
      for (int k = 0; k < 4; k++) u[8 * k + i] = (src[i] >> (2 * k)) & 3;
    if (bits == 3) {
      uint32_t high = (uint32_t)src[8] | ((uint32_t)src[9] << 8) | ((uint32_t)src[10] << 16) | ((uint32_t)src[11] << 24);
      for (int e = 0; e < 32; e++) u[e] |= (uint8_t)(((high >> e) & 1) << 2);
    }
  }
}

// ---- scales and zeros ----------------------------------------------------------------------------------
// One binary16 scale per group, and one binary16 zero per group unless the mode is kSym.
// The scale is never negative, so its sign bit is free: for kHybrid it is set when the group was quantized
// asymmetrically (x^ = |s| * u + z) and clear when symmetrically (x^ = s * (u - 2^(b-1)), zero slot = 0).
// For kSym the sign bit is always clear; for kAsym it is always set (so one decoder serves every mode).
IQ_HD bool hasZeros(int mode) { return mode != kSym; }
IQ_HD bool scaleIsAsym(uint16_t scaleBits) { return (scaleBits & 0x8000) != 0; }

// ---- page layout ---------------------------------------------------------------------------------------
// A page holds `pageTokens` consecutive quantized tokens (a multiple of 128, so of every G) of one layer, all
// kv heads, keys and values. Sections, in order, each starting at a multiple of 64 bytes:
//   K codes, K scales, K zeros (if any), V codes, V scales, V zeros (if any).
// Inside a section, kv head h owns a contiguous slice (headStride bytes): slice = section + h * headStride.
// Per head, by orientation (P = pageTokens, d = headDim, n = d / G groups per token row):
//   kFp16Rows:   codes [P][d] binary16; no scales.
//   kRowGrouped: codes [P][n][groupBytes]; scales [P][n]; zeros [P][n].
//   kColGrouped: codes [P/G][d][groupBytes] (token group, channel); scales [P/G][d]; zeros [P/G][d].
struct MatrixLayout {
  size_t codesHeadBytes, scalesHeadBytes;   // per head; zeros use scalesHeadBytes when present
  size_t codesOffset, scalesOffset, zerosOffset;  // from the page start; zerosOffset meaningful if hasZeros
  size_t end;                                // first byte after this matrix's sections
};
struct PageLayout {
  MatrixLayout keys, values;
  size_t pageBytes;
};

IQ_HD size_t alignUp64(size_t x) { return (x + 63) & ~(size_t)63; }

IQ_HD MatrixLayout matrixLayout(const MatrixFormat& f, int pageTokens, int kvHeads, int headDim, size_t start) {
  MatrixLayout m;
  if (f.orientation == kFp16Rows) {
    m.codesHeadBytes = (size_t)pageTokens * headDim * 2;
    m.scalesHeadBytes = 0;
  } else if (f.orientation == kRowGrouped) {
    m.codesHeadBytes = (size_t)pageTokens * (headDim / f.groupSize) * groupBytes(f.bits, f.groupSize);
    m.scalesHeadBytes = (size_t)pageTokens * (headDim / f.groupSize) * 2;
  } else {
    m.codesHeadBytes = (size_t)(pageTokens / f.groupSize) * headDim * groupBytes(f.bits, f.groupSize);
    m.scalesHeadBytes = (size_t)(pageTokens / f.groupSize) * headDim * 2;
  }
  m.codesOffset = alignUp64(start);
  m.scalesOffset = alignUp64(m.codesOffset + m.codesHeadBytes * kvHeads);
  m.zerosOffset = alignUp64(m.scalesOffset + m.scalesHeadBytes * kvHeads);
  const bool zeros = f.orientation != kFp16Rows && hasZeros(f.mode);
  m.end = zeros ? alignUp64(m.zerosOffset + m.scalesHeadBytes * kvHeads) : m.zerosOffset;
  return m;
}

IQ_HD PageLayout pageLayout(const MatrixFormat& kf, const MatrixFormat& vf, int pageTokens, int kvHeads, int headDim) {
  PageLayout p;
  p.keys = matrixLayout(kf, pageTokens, kvHeads, headDim, 0);
  p.values = matrixLayout(vf, pageTokens, kvHeads, headDim, p.keys.end);
  p.pageBytes = p.values.end;
  return p;
}

}  // namespace innerq
