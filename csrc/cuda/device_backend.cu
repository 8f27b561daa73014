// device_backend.cu - THE implementation of innerq::Backend on the CUDA runtime API, compiled twice:
//   by nvcc                          -> the `cuda` backend (makeCudaBackend, cudaInfo)
//   by g++ with INNERQ_SIM (cudasim) -> the `sim` backend (makeSimBackend), via csrc/sim/sim_backend.cpp
// so allocation, copies and launch configuration are exercised in CI exactly as they run on a GPU.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "../../kernels/attention.cuh"
#include "../../kernels/quantize.cuh"
#include "device_backend.h"

namespace innerq {
namespace {

using dev::AttnParams;
using dev::Chunk;
using dev::MatrixGeometry;

MatrixGeometry geometry(const MatrixFormat& f, const MatrixLayout& l) {
  MatrixGeometry g;
  g.orientation = f.orientation;
  g.bits = f.bits;
  g.groupSize = f.groupSize;
  g.mode = f.mode;
  g.codesOffset = l.codesOffset;
  g.scalesOffset = l.scalesOffset;
  g.zerosOffset = l.zerosOffset;
  g.codesHeadBytes = l.codesHeadBytes;
  g.scalesHeadBytes = l.scalesHeadBytes;
  return g;
}

bool formatSupported(const MatrixFormat& f, int headDim) {
  if (f.orientation == kFp16Rows) return true;
  const bool bits = f.bits == 2 || f.bits == 3 || f.bits == 4 || f.bits == 8;
  const bool group = f.groupSize == 32 || f.groupSize == 64 || f.groupSize == 128;
  return bits && group && headDim % f.groupSize == 0;
}

// Where token `a` of matrix m lives, and how many following tokens live contiguously in the same place.
struct Place {
  int kind;             // dev::SourceKind
  const uint8_t* base;  // window: address of row a (kv head 0); page: the page
  int slot;             // page slot
  int run;              // tokens from a on that stay in this place contiguously
};
Place locate(const LayerView& v, Matrix m, int a) {
  const int S = v.sinkCapacity, quantized = m == Matrix::Keys ? v.quantizedKeys : v.quantizedValues;
  const size_t rowBytes = (size_t)v.kvHeads * v.headDim * 2;
  Place p{};
  if (a < S) {
    p.kind = dev::kWindowSource;
    p.base = reinterpret_cast<const uint8_t*>(m == Matrix::Keys ? v.sinkKeys : v.sinkValues) + (size_t)a * rowBytes;
    p.run = std::min(S, v.tokens) - a;
    return p;
  }
  const int qa = a - S;
  if (qa < quantized) {
    p.kind = dev::kPageSource;
    p.base = v.pages[qa / v.pageTokens];
    p.slot = qa % v.pageTokens;
    p.run = std::min(v.pageTokens - p.slot, quantized - qa);
    return p;
  }
  const int slot = qa % v.ringCapacity;
  p.kind = dev::kWindowSource;
  p.base = reinterpret_cast<const uint8_t*>(m == Matrix::Keys ? v.ringKeys : v.ringValues) + (size_t)slot * rowBytes;
  p.run = std::min(v.ringCapacity - slot, v.tokens - a);
  return p;
}

class DeviceBackend final : public Backend {
 public:
  DeviceBackend(int device, int threadOrder, unsigned seed) : device_(device), order_(threadOrder), seed_(seed) {
    enter();
    cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking);
    cudaEventCreate(&kernelsStart_);
    cudaEventCreate(&kernelsEnd_);
    if (cudaDeviceGetAttribute(&multiprocessors_, cudaDevAttrMultiProcessorCount, device_) != cudaSuccess) {
      cudaGetLastError();
      multiprocessors_ = 0;  // unknown: chunkTokensFor keeps full chunks
    }
  }
  ~DeviceBackend() override {
    enter();
    if (kernelsStart_) cudaEventDestroy(kernelsStart_);
    if (kernelsEnd_) cudaEventDestroy(kernelsEnd_);
    if (workspace_) cudaFree(workspace_);
    if (stream_) cudaStreamDestroy(stream_);
  }
#ifdef INNERQ_SIM
  const char* name() const override { return "sim"; }
#else
  const char* name() const override { return "cuda"; }
#endif

  void* allocate(size_t bytes) override {
    enter();
    void* p = nullptr;
    if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess) {
      cudaGetLastError();  // an allocation failure is not sticky; clear it
      return nullptr;
    }
    return p;
  }
  void release(void* p) override {
    enter();
    if (p) cudaFree(p);
  }
  // Copies go on the backend's own stream, then wait for it. A plain cudaMemcpy would run on the legacy default
  // stream, which does not order against stream_ (created cudaStreamNonBlocking), and from pageable memory it
  // returns once the data is staged, before the DMA lands: a kernel launched next on stream_ could read rows that
  // have not arrived yet. Seen on an H200 (fp16 prefill of 128 tokens attended garbage); the sim cannot show it.
  Status upload(void* dst, const void* hostSrc, size_t bytes) override {
    enter();
    return copyOnStream(dst, hostSrc, bytes, cudaMemcpyHostToDevice, "upload");
  }
  Status download(void* hostDst, const void* src, size_t bytes) override {
    enter();
    return copyOnStream(hostDst, src, bytes, cudaMemcpyDeviceToHost, "download");
  }
  Status copyDevice(void* dst, const void* src, size_t bytes) override {
    enter();
    return copyOnStream(dst, src, bytes, cudaMemcpyDeviceToDevice, "device copy");
  }
  Status waitStream(uint64_t stream) override {
    if (stream == 0) return Status::Ok;
    enter();
    return check(cudaStreamSynchronize(reinterpret_cast<cudaStream_t>(stream)), "waiting for the caller's stream");
  }

  Status quantizeRows(const LayerView& v, Matrix m, const uint16_t* rows, int firstQuantized, int count) override {
    enter();
    if (count <= 0) return Status::Ok;
    const MatrixFormat& f = m == Matrix::Keys ? v.keyFormat : v.valueFormat;
    if (!formatSupported(f, v.headDim)) return unsupported("matrix format");
    const int firstPage = firstQuantized / v.pageTokens, lastPage = (firstQuantized + count - 1) / v.pageTokens;
    if (lastPage >= v.pageCount) return internal("quantizeRows: pages do not cover the rows");
    const int pages = lastPage - firstPage + 1;
    Status s = reserve(pages * sizeof(void*));
    if (s != Status::Ok) return s;
    s = check(cudaMemcpyAsync(workspace_, v.pages + firstPage, pages * sizeof(void*), cudaMemcpyHostToDevice, stream_), "page table");
    if (s != Status::Ok) return s;
    dev::QuantParams p;
    p.rows = rows;
    p.count = count;
    p.firstQuantized = firstQuantized;
    p.pageTokens = v.pageTokens;
    p.kvHeads = v.kvHeads;
    p.headDim = v.headDim;
    p.pages = reinterpret_cast<uint8_t* const*>(workspace_);
    p.m = geometry(f, m == Matrix::Keys ? v.layout.keys : v.layout.values);
    p.keyNorm = m == Matrix::Keys ? v.keyNorm : nullptr;
    if (!dev::launchQuantize(p, stream_)) return unsupported("quantize format");
    return finish("quantizeRows");
  }

  Status attend(const LayerView& v, const float* query, float* out) override {
    enter();
    const int d = v.headDim, qh = v.qHeads;
    if (v.tokens <= 0) {
      std::fill(out, out + (size_t)qh * d, 0.f);
      return Status::Ok;
    }
    if (v.kvHeads <= 0 || qh % v.kvHeads != 0) return unsupported("qHeads must be a multiple of kvHeads");
    const int r = qh / v.kvHeads;
    if (r > dev::kMaxHeadsPerBlock && r % dev::kMaxHeadsPerBlock != 0) return unsupported("GQA ratio above 8 must be a multiple of 8");
    // The kernels split a row over d/8 (or d/U) lanes and reduce with width-(d/8) shuffles: that needs a power of two.
    // d = 96/160/224 wrote past the shared reduction buffer (heap corruption under sim; found by the fuzzer).
    if (d < 32 || d > 256 || (d & (d - 1)) != 0) return unsupported("head dim must be 32, 64, 128 or 256 on the cuda/sim backends");
    if (!formatSupported(v.keyFormat, d) || !formatSupported(v.valueFormat, d)) return unsupported("matrix format");

    // Chunks: maximal runs of tokens with one place per matrix, at most pageChunk (pages) or kWindowChunkTokens
    // (fp16 windows) long.
    const int pageChunk = chunkTokensFor(v, std::max(1, r / std::min(r, dev::kMaxHeadsPerBlock)));
    chunks_.clear();
    for (int a = 0; a < v.tokens;) {
      const Place k = locate(v, Matrix::Keys, a), val = locate(v, Matrix::Values, a);
      const bool window = k.kind == dev::kWindowSource || val.kind == dev::kWindowSource;
      Chunk c;
      c.token = a;
      c.count = std::min({k.run, val.run, window ? dev::kWindowChunkTokens : pageChunk});
      c.keyBase = k.base;
      c.keySlot = k.slot;
      c.keyKind = k.kind;
      c.valueBase = val.base;
      c.valueSlot = val.slot;
      c.valueKind = val.kind;
      if (c.count <= 0) return internal("attend: empty chunk (inconsistent LayerView)");
      chunks_.push_back(c);
      a += c.count;
    }
    const int nc = (int)chunks_.size();
    // Launch lists: chunk indices by key place, then by value place.
    lists_.clear();
    int keyCount[2] = {0, 0}, valueCount[2] = {0, 0};
    for (int kind = 0; kind < 2; kind++)
      for (int i = 0; i < nc; i++)
        if (chunks_[i].keyKind == kind) { lists_.push_back(i); keyCount[kind]++; }
    for (int kind = 0; kind < 2; kind++)
      for (int i = 0; i < nc; i++)
        if (chunks_[i].valueKind == kind) { lists_.push_back(i); valueCount[kind]++; }

    // Queries: q / sqrt(d) for fp16 windows, q ⊙ f / sqrt(d) for pages (keys there are K/f).
    const float scale = 1.0f / std::sqrt((float)d);
    hostQ_.resize((size_t)2 * qh * d);
    for (int h = 0; h < qh; h++)
      for (int j = 0; j < d; j++) {
        const float x = query[(size_t)h * d + j] * scale;
        hostQ_[(size_t)h * d + j] = x;
        const float f = v.keyNormHost ? v.keyNormHost[(size_t)(h / r) * d + j] : 1.0f;
        hostQ_[(size_t)(qh + h) * d + j] = x * f;
      }

    // Workspace: [inputs: queries | chunks | lists][scores][partial O][partial M][partial L][out]
    const int scoreStride = (v.tokens + 3) & ~3;
    size_t off = 0;
    auto take = [&](size_t bytes) { const size_t at = off; off = (off + bytes + 255) & ~(size_t)255; return at; };
    const size_t oQ = take(hostQ_.size() * 4), oChunks = take(chunks_.size() * sizeof(Chunk)), oLists = take(lists_.size() * 4);
    const size_t inputBytes = off;
    const size_t oScores = take((size_t)qh * scoreStride * 4), oPO = take((size_t)nc * qh * d * 4);
    const size_t oPM = take((size_t)nc * qh * 4), oPL = take((size_t)nc * qh * 4), oOut = take((size_t)qh * d * 4);
    Status s = reserve(off);
    if (s != Status::Ok) return s;
    staging_.assign(inputBytes, 0);
    std::memcpy(staging_.data() + oQ, hostQ_.data(), hostQ_.size() * 4);
    std::memcpy(staging_.data() + oChunks, chunks_.data(), chunks_.size() * sizeof(Chunk));
    std::memcpy(staging_.data() + oLists, lists_.data(), lists_.size() * 4);
    s = check(cudaMemcpyAsync(workspace_, staging_.data(), inputBytes, cudaMemcpyHostToDevice, stream_), "attend inputs");
    if (s != Status::Ok) return s;

    uint8_t* w = static_cast<uint8_t*>(workspace_);
    AttnParams p;
    p.chunks = reinterpret_cast<const Chunk*>(w + oChunks);
    p.kvHeads = v.kvHeads;
    p.headDim = d;
    p.groupHeads = r;
    p.headsPerBlock = std::min(r, dev::kMaxHeadsPerBlock);
    p.windowStride = v.kvHeads * d;
    p.key = geometry(v.keyFormat, v.layout.keys);
    p.value = geometry(v.valueFormat, v.layout.values);
    p.query = reinterpret_cast<const float*>(w + oQ);
    p.queryFolded = p.query + (size_t)qh * d;
    p.scores = reinterpret_cast<float*>(w + oScores);
    p.scoreStride = scoreStride;
    p.partialO = reinterpret_cast<float*>(w + oPO);
    p.partialM = reinterpret_cast<float*>(w + oPM);
    p.partialL = reinterpret_cast<float*>(w + oPL);
    p.qHeads = qh;
    const int* lists = reinterpret_cast<const int*>(w + oLists);
    cudaEventRecord(kernelsStart_, stream_);
    int at = 0;
    for (int kind = 0; kind < 2; kind++) {
      p.list = lists + at;
      if (!dev::launchScores(p, kind, keyCount[kind], stream_)) return unsupported("key format");
      at += keyCount[kind];
    }
    for (int kind = 0; kind < 2; kind++) {
      p.list = lists + at;
      if (!dev::launchPv(p, kind, valueCount[kind], stream_)) return unsupported("value format");
      at += valueCount[kind];
    }
    float* dOut = reinterpret_cast<float*>(w + oOut);
    dev::launchMerge(p.partialO, p.partialM, p.partialL, nc, qh, d, dOut, stream_);
    cudaEventRecord(kernelsEnd_, stream_);
    s = check(cudaGetLastError(), "attend launch");
    if (s != Status::Ok) return s;
    s = check(cudaMemcpyAsync(out, dOut, (size_t)qh * d * 4, cudaMemcpyDeviceToHost, stream_), "attend output");
    if (s != Status::Ok) return s;
    s = finish("attend");
    if (s != Status::Ok) return s;
    float ms = 0.f;  // both events completed: the stream was synchronized after them
    if (cudaEventElapsedTime(&ms, kernelsStart_, kernelsEnd_) == cudaSuccess) deviceAttendMs_ += ms;
    else cudaGetLastError();  // a timing failure must not surface as the next call's error
    return Status::Ok;
  }

  double deviceAttendMs() const override { return deviceAttendMs_; }

  std::string lastError() const override { return error_; }

  // Tokens per page chunk. Each chunk is one block per (kv head, GQA slice) in every kernel, and a block walks
  // its chunk in passes whose loads wait on memory latency: with one block per SM (4k tokens x 8 kv heads in
  // 256-token chunks = 128 blocks on an H200's 132 SMs) the kernels ran at a fraction of the bandwidth. So aim
  // for at least 4 blocks per SM, in power-of-two chunks between kMinChunkTokens (and the value group size, so
  // that a token group is never split between chunks) and kChunkTokens; the partials this adds are small and
  // stay in L2.
  int chunkTokensFor(const LayerView& v, int slices) const {
    int floor = dev::kMinChunkTokens;
    if (v.valueFormat.orientation == kColGrouped) floor = std::max(floor, v.valueFormat.groupSize);
    if (v.keyFormat.orientation == kColGrouped) floor = std::max(floor, v.keyFormat.groupSize);
    if (multiprocessors_ <= 0) return dev::kChunkTokens;
    const long long blocksPerChunk = (long long)v.kvHeads * slices, wanted = 4LL * multiprocessors_;
    const long long chunks = (wanted + blocksPerChunk - 1) / blocksPerChunk;
    int tokens = dev::kChunkTokens;
    while (tokens > floor && (long long)v.tokens / tokens < chunks) tokens /= 2;
    return std::max(tokens, std::min(floor, dev::kChunkTokens));
  }

 private:
  // The calling thread may differ between calls (Node AsyncWorkers): bind device / sim settings each time.
  void enter() {
#ifdef INNERQ_SIM
    cudasim::config().order = order_;
    cudasim::config().seed = seed_;
#else
    cudaSetDevice(device_);
#endif
  }
  Status check(cudaError_t e, const char* what) {
    if (e == cudaSuccess) return Status::Ok;
    error_ = std::string(what) + ": " + cudaGetErrorString(e);
#ifdef INNERQ_SIM
    if (!cudasim::lastMessage().empty()) error_ += " (" + cudasim::lastMessage() + ")";
#endif
    // A failed API call (e.g. a copy with a bad pointer) is also what the next cudaGetLastError() returns:
    // consume it here, or the next launch of an unrelated, healthy call would report it. Sticky errors (a
    // kernel fault) survive this and keep failing every later call, as they must.
    cudaGetLastError();
    return e == cudaErrorMemoryAllocation ? Status::OutOfMemory : Status::DeviceError;
  }
  Status copyOnStream(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, const char* what) {
    const Status s = check(cudaMemcpyAsync(dst, src, bytes, kind, stream_), what);
    if (s != Status::Ok) return s;
    return check(cudaStreamSynchronize(stream_), what);
  }
  Status finish(const char* what) {
    Status s = check(cudaGetLastError(), what);
    if (s != Status::Ok) return s;
    return check(cudaStreamSynchronize(stream_), what);
  }
  Status unsupported(const char* what) {
    error_ = std::string("unsupported ") + what;
    return Status::Unsupported;
  }
  Status internal(const char* what) {
    error_ = what;
    return Status::Internal;
  }
  // Grow-only workspace: one cudaMalloc per high-water mark, never per step. Freed after the stream drains.
  Status reserve(size_t bytes) {
    if (bytes <= workspaceBytes_) return Status::Ok;
    if (workspace_) {
      cudaStreamSynchronize(stream_);
      cudaFree(workspace_);
      workspace_ = nullptr;
      workspaceBytes_ = 0;
    }
    const size_t want = std::max(bytes, workspaceBytes_ * 3 / 2);
    if (cudaMalloc(&workspace_, want) != cudaSuccess) {
      cudaGetLastError();
      workspace_ = nullptr;
      error_ = "workspace allocation failed";
      return Status::OutOfMemory;
    }
    workspaceBytes_ = want;
    return Status::Ok;
  }

  int device_, order_;
  int multiprocessors_ = 0;
  unsigned seed_;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t kernelsStart_ = nullptr, kernelsEnd_ = nullptr;  // around the attend kernels (deviceAttendMs)
  double deviceAttendMs_ = 0.0;
  void* workspace_ = nullptr;
  size_t workspaceBytes_ = 0;
  std::vector<Chunk> chunks_;
  std::vector<int> lists_;
  std::vector<float> hostQ_;
  std::vector<uint8_t> staging_;
  std::string error_;
};

}  // namespace

#ifdef INNERQ_SIM
std::unique_ptr<Backend> makeSimBackend(int threadOrder, unsigned seed) {
  return std::unique_ptr<Backend>(new DeviceBackend(0, threadOrder, seed));
}
#else
CudaInfo cudaInfo() {
  CudaInfo info;
  info.compiled = true;
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    // Typical on GPU-less CI: cudaErrorInsufficientDriver (no driver at all), or cudaErrorNoDevice.
    info.devices = 0;
    info.error = std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
    cudaGetLastError();
    return info;
  }
  info.devices = n;
  if (n == 0) info.error = "no CUDA device";
  for (int i = 0; i < n; i++) {
    cudaDeviceProp prop;
    info.deviceNames.push_back(cudaGetDeviceProperties(&prop, i) == cudaSuccess ? std::string(prop.name) : "unknown");
  }
  return info;
}

std::unique_ptr<Backend> makeCudaBackend(int deviceId, std::string* error) {
  const CudaInfo info = cudaInfo();
  if (info.devices == 0 || deviceId < 0 || deviceId >= info.devices) {
    if (error) *error = info.devices == 0 ? "no usable CUDA device (" + info.error + ")" : "device id out of range";
    return nullptr;
  }
  const cudaError_t e = cudaSetDevice(deviceId);
  if (e != cudaSuccess) {
    if (error) *error = std::string("cudaSetDevice: ") + cudaGetErrorString(e);
    cudaGetLastError();
    return nullptr;
  }
  return std::unique_ptr<Backend>(new DeviceBackend(deviceId, 0, 0));
}
#endif

}  // namespace innerq
