// cache.h - the cache engine: per-layer bookkeeping of the three token segments (fp16 sink, quantized pages,
// fp16 recent ring), the page pool, and the per-channel key normalization. Backend-independent: memory and
// kernels come from a Backend. Arguments are trusted (the TypeScript facade validated them); every backend
// failure comes back as a Status and leaves the layer as it was before the call.
#pragma once
#include <memory>
#include <mutex>
#include <string>
#include <vector>
#include "backend.h"

namespace innerq {

struct CacheConfig {
  int layers = 0, qHeads = 0, kvHeads = 0, headDim = 0, maxTokens = 0;
  MatrixFormat keyFormat{}, valueFormat{};
  int sinkTokens = 0, recentTokens = 0, pageTokens = 256;
  bool keyNorm = false;
};

struct CacheStats {
  double tokens = 0;             // summed over layers
  double codeBytes = 0;          // quantized codes held
  double scaleBytes = 0;         // scales and zeros held
  double windowBytes = 0;        // fp16 sink + recent tokens held
  double heldBytes = 0;          // codes + scales + windows (+ key-norm factors)
  double fp16Bytes = 0;          // what an fp16 cache of the same tokens holds
  double allocatedBytes = 0;     // backend memory reserved (pages, windows, factors)
  int pagesInUse = 0, pagesAllocated = 0;
};

// Raw copy of one layer's memory, for tests that check the layout by reading it back.
struct LayerSnapshot {
  int tokens = 0, sinkCapacity = 0, quantizedKeys = 0, quantizedValues = 0, ringCapacity = 0, pageTokens = 0;
  std::vector<uint16_t> sinkKeys, sinkValues, ringKeys, ringValues;
  std::vector<std::vector<uint8_t>> pages;
  std::vector<float> keyNorm;  // empty when not computed
  size_t pageBytes = 0;
};

class Cache {
 public:
  Cache(const CacheConfig& config, std::unique_ptr<Backend> backend);  // throws std::bad_alloc / runtime_error
  ~Cache();
  Cache(const Cache&) = delete;
  Cache& operator=(const Cache&) = delete;

  // keys/values: binary16 [tokens][kvHeads][headDim], in host memory, or in this backend's memory when
  // `onDevice` (then nothing goes through the host but the key-norm statistics of a prefill).
  // prefill requires an empty layer.
  Status prefill(int layer, const uint16_t* keys, const uint16_t* values, int tokens, bool onDevice = false);
  Status append(int layer, const uint16_t* key, const uint16_t* value, bool onDevice = false);
  Status attend(int layer, const float* query, float* out);
  // attend with query and out in backend memory. The query and output vectors (qHeads*headDim floats each)
  // are staged through the host; the cache itself never is.
  Status attendDevice(int layer, const float* query, float* out);

  // Backend memory owned by the cache (DeviceBuffer): freed by freeDevice or when the cache is destroyed.
  void* allocateDevice(size_t bytes);
  bool freeDevice(void* p);  // false when p was not allocated here (or already freed)
  bool ownsDevice(const void* p, size_t bytes) const;  // [p, p+bytes) inside one live allocation
  void reset(int layer);  // forget all tokens of a layer (pages go back to the pool)

  int length(int layer) const { return layers_[layer].tokens; }
  CacheStats stats() const;
  std::vector<float> keyNormFactors(int layer) const;  // empty when not computed yet
  Status snapshot(int layer, LayerSnapshot* out) const;
  // Put a layer back exactly as a snapshot of a cache with the same configuration recorded it (the facade
  // has verified the configuration, sizes and checksums). On failure the layer is left empty.
  Status restore(int layer, const LayerSnapshot& in);
  // The layer as the backend sees it (for the separate key/value GEMV entry points of benchmarks).
  LayerView layerView(int layer) const { return view(layers_[layer]); }
  const CacheConfig& config() const { return config_; }
  Backend& backend() { return *backend_; }
  std::string lastError() const { return lastError_; }
  int ringCapacity() const { return ringCapacity_; }

 private:
  struct Layer {
    int tokens = 0, quantizedKeys = 0, quantizedValues = 0;
    uint16_t *sinkKeys = nullptr, *sinkValues = nullptr, *ringKeys = nullptr, *ringValues = nullptr;
    float* keyNorm = nullptr;           // backend memory, [kvHeads][headDim]
    std::vector<float> keyNormHost;     // empty until computed
    std::vector<uint8_t*> pages;        // page pointers in order
  };
  LayerView view(const Layer& L) const;
  Status ensurePages(Layer& L, int quantizedTokens);
  Status computeKeyNorm(Layer& L, const uint16_t* hostRows, int rows);
  Status evict(Layer& L);
  Status writeRing(Layer& L, int firstToken, const uint16_t* keys, const uint16_t* values, int count, bool onDevice);
  Status put(void* dst, const void* src, size_t bytes, bool onDevice);
  uint8_t* takePage();
  void givePage(uint8_t* p);
  int granularity(const MatrixFormat& f) const;
  void releaseAll();
  Status fail(Status s, const std::string& message);

  CacheConfig config_;
  std::unique_ptr<Backend> backend_;
  PageLayout layout_{};
  int ringCapacity_ = 0;
  size_t rowElems_ = 0;  // kvHeads * headDim
  std::vector<Layer> layers_;
  std::vector<uint8_t*> freePages_;
  int pagesAllocated_ = 0;
  std::string lastError_;
  std::vector<std::pair<void*, size_t>> deviceBuffers_;
};

// Round float32 to binary16 (nearest even), saturating at +-65504 so that a finite input stays finite.
void floatToHalfSaturate(const float* src, uint16_t* dst, size_t n);

}  // namespace innerq
