// backend.h - the one C++ interface behind which the cpu, sim and cuda backends live.
//
// The cache engine (cache.h) owns the bookkeeping (which tokens are in the fp16 sink, in quantized pages,
// in the fp16 recent ring); a backend owns memory of its kind and the kernels. The engine describes a
// layer to a backend with a LayerView of plain pointers into backend memory.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>
#include "../../kernels/format.cuh"

namespace innerq {

enum class Matrix { Keys = 0, Values = 1 };

// Everything a kernel needs to know about one layer of one cache. All pointers are backend memory
// (host memory for cpu, emulated device memory for sim, device memory for cuda).
//
// Token positions (absolute index a in [0, tokens)):
//   a <  sinkCapacity                               : sink buffer, row a                 (fp16, forever)
//   a >= sinkCapacity, a - sinkCapacity < quantized : page (a - S) / pageTokens, slot (a - S) % pageTokens
//   otherwise                                       : ring slot (a - S) % ringCapacity   (fp16 recent window)
// where S = sinkCapacity and `quantized` is quantizedKeys or quantizedValues (they differ: a matrix whose
// groups run along tokens leaves the ring G tokens at a time, the other one token at a time).
// fp16 rows (sink, ring, pages of kFp16Rows) are [token][kvHead][headDim] for sink and ring, and per-head
// [token][headDim] inside pages (see format.cuh).
struct LayerView {
  int qHeads = 0, kvHeads = 0, headDim = 0;
  MatrixFormat keyFormat{}, valueFormat{};
  int pageTokens = 0;
  PageLayout layout{};
  int tokens = 0;
  int sinkCapacity = 0;
  int quantizedKeys = 0, quantizedValues = 0;
  int ringCapacity = 0;                 // a multiple of every group size in use
  const uint16_t* sinkKeys = nullptr;   // [sinkCapacity][kvHeads][headDim]
  const uint16_t* sinkValues = nullptr;
  const uint16_t* ringKeys = nullptr;   // [ringCapacity][kvHeads][headDim]
  const uint16_t* ringValues = nullptr;
  uint8_t* const* pages = nullptr;      // host array of page pointers (page i holds quantized tokens i*P ..)
  int pageCount = 0;
  const float* keyNorm = nullptr;       // [kvHeads][headDim] factors f (keys stored as K/f), or nullptr
  const float* keyNormHost = nullptr;   // the same factors in host memory (for folding into the query)

  int sinkHeld() const { return tokens < sinkCapacity ? tokens : sinkCapacity; }
  int fp16Tail(Matrix m) const {
    const int q = m == Matrix::Keys ? quantizedKeys : quantizedValues;
    return tokens - sinkHeld() - q;
  }
};

// Status codes returned by backend entry points; the binding turns them into messages.
enum class Status : int { Ok = 0, OutOfMemory = 1, DeviceError = 2, Unsupported = 3, Internal = 4 };

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;

  // Memory of this backend's kind. allocate returns nullptr when memory is exhausted.
  virtual void* allocate(size_t bytes) = 0;
  virtual void release(void* p) = 0;
  virtual Status upload(void* dst, const void* hostSrc, size_t bytes) = 0;
  virtual Status download(void* hostDst, const void* src, size_t bytes) = 0;
  // Copy within this backend's memory (device to device).
  virtual Status copyDevice(void* dst, const void* src, size_t bytes) = 0;
  // Wait until work queued on a caller's stream (a cudaStream_t as an integer; 0 = none) has finished, so
  // that device inputs it produces are complete. Backends without streams return Ok.
  virtual Status waitStream(uint64_t /*stream*/) { return Status::Ok; }

  // Quantize `count` fp16 token rows into the layer's pages.
  //   rows: backend memory, [count][kvHeads][headDim] binary16, contiguous (row stride kvHeads*headDim)
  //   firstQuantized: index of the first row in quantized space (absolute token - sinkCapacity)
  // For kColGrouped formats count and firstQuantized are multiples of the group size. Keys are divided by
  // view.keyNorm (when set) and rounded to binary16 (saturating) before quantization. The pages covering
  // [firstQuantized, firstQuantized + count) exist in view.pages.
  virtual Status quantizeRows(const LayerView& view, Matrix m, const uint16_t* rows, int firstQuantized, int count) = 0;

  // One decode step of attention for one layer:
  //   out[h][:] = softmax_t(q_h . K_t / sqrt(d)) . V   over all view.tokens tokens, q_h from kv head h / (qHeads/kvHeads)
  // query and out are host memory, [qHeads][headDim] float32. Keys in pages are K/f, so the backend folds f
  // into the query for the quantized segment only (fp16 windows hold raw keys).
  virtual Status attend(const LayerView& view, const float* query, float* out) = 0;

  // Cumulative device time, in ms, of the kernels of every successful attend() so far, read from events recorded
  // on the backend's stream around them (launch gaps between the kernels included, host copies excluded).
  // -1 when the backend has no device clock (cpu). The benchmark divides it by the attend calls it made.
  virtual double deviceAttendMs() const { return -1.0; }

  // Human-readable last error for Status::DeviceError.
  virtual std::string lastError() const { return std::string(); }
};

}  // namespace innerq
