// cache.cpp - window bookkeeping and the page pool (see cache.h and docs/FORMAT.md).
#include "cache.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>
#include <stdexcept>

#include "../../kernels/quantizer.cuh"

namespace innerq {

namespace {
// Float32 -> binary16 bits, round to nearest even, saturating to +-65504 (finite inputs stay finite).
// Bit manipulation instead of going through double: this runs over every prefill element.
inline uint16_t floatToHalfBits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t a = x & 0x7fffffffu;
  if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);   // NaN (the facade rejects these)
  if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7bffu);  // >= 65520 (rounds to Inf) or Inf: saturate
  if (a < 0x33000000u) return (uint16_t)sign;               // < 2^-25: rounds to zero
  if (a < 0x38800000u) {                                    // subnormal half: value = m * 2^-24
    const int e = (int)(a >> 23);                           // biased float exponent, 102..112
    const uint32_t mant = (a & 0x7fffffu) | 0x800000u;      // 24-bit significand, value = mant * 2^(e-150)
    const int shift = 126 - e;                              // to units of 2^-24: mant >> (150-24-e)
    uint32_t m = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (m & 1))) m++;
    return (uint16_t)(sign | m);
  }
  // normal: rebias exponent (127 -> 15), keep 10 of 23 fraction bits with round-to-nearest-even
  uint32_t h = ((a >> 13) - ((127 - 15) << 10));
  const uint32_t rem = a & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) h++;
  return (uint16_t)(sign | h);
}
}  // namespace

void floatToHalfSaturate(const float* src, uint16_t* dst, size_t n) {
  for (size_t i = 0; i < n; i++) dst[i] = floatToHalfBits(src[i]);
}

Cache::Cache(const CacheConfig& config, std::unique_ptr<Backend> backend)
    : config_(config), backend_(std::move(backend)) {
  layout_ = pageLayout(config_.keyFormat, config_.valueFormat, config_.pageTokens, config_.kvHeads, config_.headDim);
  rowElems_ = (size_t)config_.kvHeads * config_.headDim;
  // The ring holds the fp16 recent tokens of both matrices: at most recentTokens + G of them right after an
  // append (a token-grouped matrix leaves in groups of G). A multiple of G keeps every group contiguous.
  const int g = std::max(granularity(config_.keyFormat), granularity(config_.valueFormat));
  ringCapacity_ = ((config_.recentTokens + g + g - 1) / g) * g;
  layers_.resize(config_.layers);
  for (Layer& L : layers_) {
    const size_t sinkBytes = (size_t)config_.sinkTokens * rowElems_ * 2, ringBytes = (size_t)ringCapacity_ * rowElems_ * 2;
    auto alloc = [&](size_t bytes) -> void* {
      if (bytes == 0) return nullptr;
      void* p = backend_->allocate(bytes);
      if (!p) { releaseAll(); throw std::bad_alloc(); }
      return p;
    };
    L.sinkKeys = (uint16_t*)alloc(sinkBytes);
    L.sinkValues = (uint16_t*)alloc(sinkBytes);
    L.ringKeys = (uint16_t*)alloc(ringBytes);
    L.ringValues = (uint16_t*)alloc(ringBytes);
    if (config_.keyNorm) L.keyNorm = (float*)alloc(rowElems_ * sizeof(float));
  }
}

Cache::~Cache() { releaseAll(); }

void Cache::releaseAll() {
  if (!backend_) return;
  for (auto& b : deviceBuffers_) backend_->release(b.first);
  deviceBuffers_.clear();
  for (Layer& L : layers_) {
    for (void* p : {(void*)L.sinkKeys, (void*)L.sinkValues, (void*)L.ringKeys, (void*)L.ringValues, (void*)L.keyNorm})
      if (p) backend_->release(p);
    L.sinkKeys = L.sinkValues = L.ringKeys = L.ringValues = nullptr;
    L.keyNorm = nullptr;
    for (uint8_t* p : L.pages) backend_->release(p);
    L.pages.clear();
  }
  for (uint8_t* p : freePages_) backend_->release(p);
  freePages_.clear();
}

Status Cache::fail(Status s, const std::string& message) {
  lastError_ = message;
  if (s == Status::DeviceError) lastError_ += ": " + backend_->lastError();
  return s;
}

int Cache::granularity(const MatrixFormat& f) const { return f.orientation == kColGrouped ? f.groupSize : 1; }

uint8_t* Cache::takePage() {
  if (!freePages_.empty()) {
    uint8_t* p = freePages_.back();
    freePages_.pop_back();
    return p;
  }
  uint8_t* p = (uint8_t*)backend_->allocate(layout_.pageBytes);
  if (p) pagesAllocated_++;
  return p;
}
void Cache::givePage(uint8_t* p) { freePages_.push_back(p); }

LayerView Cache::view(const Layer& L) const {
  LayerView v;
  v.qHeads = config_.qHeads;
  v.kvHeads = config_.kvHeads;
  v.headDim = config_.headDim;
  v.keyFormat = config_.keyFormat;
  v.valueFormat = config_.valueFormat;
  v.pageTokens = config_.pageTokens;
  v.layout = layout_;
  v.tokens = L.tokens;
  v.sinkCapacity = config_.sinkTokens;
  v.quantizedKeys = L.quantizedKeys;
  v.quantizedValues = L.quantizedValues;
  v.ringCapacity = ringCapacity_;
  v.sinkKeys = L.sinkKeys;
  v.sinkValues = L.sinkValues;
  v.ringKeys = L.ringKeys;
  v.ringValues = L.ringValues;
  v.pages = L.pages.data();
  v.pageCount = (int)L.pages.size();
  const bool normed = !L.keyNormHost.empty();
  v.keyNorm = normed ? L.keyNorm : nullptr;
  v.keyNormHost = normed ? L.keyNormHost.data() : nullptr;
  return v;
}

Status Cache::ensurePages(Layer& L, int quantizedTokens) {
  const size_t need = (size_t)((quantizedTokens + config_.pageTokens - 1) / config_.pageTokens);
  const size_t before = L.pages.size();
  while (L.pages.size() < need) {
    uint8_t* p = takePage();
    if (!p) {  // give back what this call took: the layer stays as it was
      while (L.pages.size() > before) { givePage(L.pages.back()); L.pages.pop_back(); }
      return fail(Status::OutOfMemory, "out of memory allocating a cache page of " + std::to_string(layout_.pageBytes) + " bytes");
    }
    L.pages.push_back(p);
  }
  return Status::Ok;
}

Status Cache::computeKeyNorm(Layer& L, const uint16_t* hostRows, int rows) {
  std::vector<double> maxAbs(rowElems_, 0.0);
  for (int t = 0; t < rows; t++)
    for (size_t i = 0; i < rowElems_; i++) maxAbs[i] = std::max(maxAbs[i], std::fabs(halfToDouble(hostRows[t * rowElems_ + i])));
  std::vector<float> f(rowElems_);
  for (size_t i = 0; i < rowElems_; i++) f[i] = keyNormFactor(maxAbs[i]);
  const Status s = backend_->upload(L.keyNorm, f.data(), rowElems_ * sizeof(float));
  if (s != Status::Ok) return fail(s, "uploading key normalization factors");
  L.keyNormHost = std::move(f);
  return Status::Ok;
}

// Move tokens that have aged out of the recent window from the ring into quantized pages.
Status Cache::evict(Layer& L) {
  const int S = config_.sinkTokens, R = config_.recentTokens;
  if (L.tokens <= S) return Status::Ok;
  for (int m = 0; m < 2; m++) {
    const Matrix which = m == 0 ? Matrix::Keys : Matrix::Values;
    const MatrixFormat& f = m == 0 ? config_.keyFormat : config_.valueFormat;
    int& quantized = m == 0 ? L.quantizedKeys : L.quantizedValues;
    const int g = granularity(f);
    while (L.tokens - S - quantized >= R + g) {
      if (which == Matrix::Keys && config_.keyNorm && L.keyNormHost.empty()) {
        // No prefill taught us the channel magnitudes: learn them from every non-sink token held now.
        const int held = L.tokens - S;
        std::vector<uint16_t> rows((size_t)held * rowElems_);
        for (int i = 0; i < held; i++) {
          const int slot = i % ringCapacity_;
          const Status s = backend_->download(rows.data() + (size_t)i * rowElems_, L.ringKeys + (size_t)slot * rowElems_, rowElems_ * 2);
          if (s != Status::Ok) return fail(s, "reading recent keys");
        }
        const Status s = computeKeyNorm(L, rows.data(), held);
        if (s != Status::Ok) return s;
      }
      Status s = ensurePages(L, quantized + g);
      if (s != Status::Ok) return s;
      const int slot = quantized % ringCapacity_;  // ring slot of quantized-space index q is q mod capacity
      const uint16_t* src = (which == Matrix::Keys ? L.ringKeys : L.ringValues) + (size_t)slot * rowElems_;
      s = backend_->quantizeRows(view(L), which, src, quantized, g);
      if (s != Status::Ok) return fail(s, "quantizing tokens into the cache");
      quantized += g;
    }
  }
  return Status::Ok;
}

Status Cache::put(void* dst, const void* src, size_t bytes, bool onDevice) {
  return onDevice ? backend_->copyDevice(dst, src, bytes) : backend_->upload(dst, src, bytes);
}

Status Cache::writeRing(Layer& L, int firstToken, const uint16_t* keys, const uint16_t* values, int count, bool onDevice) {
  const int S = config_.sinkTokens;
  int i = 0;
  while (i < count) {  // at most two contiguous runs (the ring wraps once)
    const int slot = (firstToken + i - S) % ringCapacity_;
    const int run = std::min(count - i, ringCapacity_ - slot);
    const size_t off = (size_t)slot * rowElems_, bytes = (size_t)run * rowElems_ * 2;
    Status s = put(L.ringKeys + off, keys + (size_t)i * rowElems_, bytes, onDevice);
    if (s == Status::Ok) s = put(L.ringValues + off, values + (size_t)i * rowElems_, bytes, onDevice);
    if (s != Status::Ok) return fail(s, "writing recent tokens");
    i += run;
  }
  return Status::Ok;
}

Status Cache::prefill(int layer, const uint16_t* keys, const uint16_t* values, int tokens, bool onDevice) {
  Layer& L = layers_[layer];
  const int S = config_.sinkTokens, R = config_.recentTokens;
  const int sinkRows = std::min(tokens, S), rest = tokens - sinkRows;
  auto undo = [&](Status s) { reset(layer); return s; };
  if (sinkRows > 0) {
    const size_t bytes = (size_t)sinkRows * rowElems_ * 2;
    Status s = put(L.sinkKeys, keys, bytes, onDevice);
    if (s == Status::Ok) s = put(L.sinkValues, values, bytes, onDevice);
    if (s != Status::Ok) return undo(fail(s, "writing sink tokens"));
  }
  if (rest > 0 && config_.keyNorm) {
    std::vector<uint16_t> hostKeys;
    const uint16_t* statRows = keys + (size_t)S * rowElems_;
    if (onDevice) {  // the channel maxima are computed on the host, once per prefill
      hostKeys.resize((size_t)rest * rowElems_);
      const Status s = backend_->download(hostKeys.data(), statRows, hostKeys.size() * 2);
      if (s != Status::Ok) return undo(fail(s, "reading prefill keys"));
      statRows = hostKeys.data();
    }
    const Status s = computeKeyNorm(L, statRows, rest);
    if (s != Status::Ok) return undo(s);
  }
  // How many of the non-sink tokens each matrix quantizes right away (the same rule evict() applies).
  int quantized[2];
  for (int m = 0; m < 2; m++) {
    const int g = granularity(m == 0 ? config_.keyFormat : config_.valueFormat);
    quantized[m] = rest >= R + g ? ((rest - R) / g) * g : 0;
  }
  const int maxQ = std::max(quantized[0], quantized[1]);
  if (maxQ > 0) {
    Status s = ensurePages(L, maxQ);
    if (s != Status::Ok) return undo(s);
    const size_t bytes = (size_t)maxQ * rowElems_ * 2;
    // Device inputs are quantized in place; host inputs go through one staging buffer.
    uint16_t* staging = onDevice ? nullptr : (uint16_t*)backend_->allocate(bytes);
    if (!onDevice && !staging) return undo(fail(Status::OutOfMemory, "out of memory staging " + std::to_string(bytes) + " bytes of prefill"));
    for (int m = 0; m < 2 && s == Status::Ok; m++) {
      if (quantized[m] == 0) continue;
      const uint16_t* src = (m == 0 ? keys : values) + (size_t)S * rowElems_;
      if (!onDevice) s = backend_->upload(staging, src, (size_t)quantized[m] * rowElems_ * 2);
      L.tokens = tokens;  // the view must describe the final layer for quantizeRows
      if (s == Status::Ok) s = backend_->quantizeRows(view(L), m == 0 ? Matrix::Keys : Matrix::Values, onDevice ? src : staging, 0, quantized[m]);
      if (s != Status::Ok) s = fail(s, "quantizing prefill tokens");
    }
    if (staging) backend_->release(staging);
    if (s != Status::Ok) return undo(s);
  }
  L.quantizedKeys = quantized[0];
  L.quantizedValues = quantized[1];
  L.tokens = tokens;
  const int firstRing = S + std::min(quantized[0], quantized[1]);
  if (tokens > firstRing) {
    const size_t off = (size_t)firstRing * rowElems_;
    const Status s = writeRing(L, firstRing, keys + off, values + off, tokens - firstRing, onDevice);
    if (s != Status::Ok) return undo(s);
  }
  return Status::Ok;
}

Status Cache::append(int layer, const uint16_t* key, const uint16_t* value, bool onDevice) {
  Layer& L = layers_[layer];
  const int S = config_.sinkTokens, t = L.tokens;
  if (t < S) {
    const size_t off = (size_t)t * rowElems_, bytes = rowElems_ * 2;
    Status s = put(L.sinkKeys + off, key, bytes, onDevice);
    if (s == Status::Ok) s = put(L.sinkValues + off, value, bytes, onDevice);
    if (s != Status::Ok) return fail(s, "writing a sink token");
    L.tokens++;
    return Status::Ok;
  }
  // Reserve the pages the eviction after this append will need first, so that a failure leaves the layer
  // exactly as it was.
  const int before[2] = {L.quantizedKeys, L.quantizedValues};
  const size_t pagesBefore = L.pages.size();
  const int maxG = std::max(granularity(config_.keyFormat), granularity(config_.valueFormat));
  Status s = ensurePages(L, std::max(L.quantizedKeys, L.quantizedValues) + maxG);
  if (s != Status::Ok) return s;
  s = writeRing(L, t, key, value, 1, onDevice);
  if (s == Status::Ok) {
    L.tokens++;
    s = evict(L);
    if (s != Status::Ok) { L.tokens--; L.quantizedKeys = before[0]; L.quantizedValues = before[1]; }
  }
  // Pages reserved but not (yet) used go back to the pool: a layer holds only the pages its tokens need.
  const size_t needed = (size_t)((std::max(L.quantizedKeys, L.quantizedValues) + config_.pageTokens - 1) / config_.pageTokens);
  while (L.pages.size() > std::max(needed, pagesBefore)) { givePage(L.pages.back()); L.pages.pop_back(); }
  return s;
}

Status Cache::attend(int layer, const float* query, float* out) {
  const Status s = backend_->attend(view(layers_[layer]), query, out);
  if (s != Status::Ok) return fail(s, "attention");
  return s;
}

Status Cache::attendDevice(int layer, const float* query, float* out) {
  const size_t n = (size_t)config_.qHeads * config_.headDim;
  std::vector<float> q(n), o(n);
  Status s = backend_->download(q.data(), query, n * sizeof(float));
  if (s != Status::Ok) return fail(s, "reading the query from device memory");
  s = attend(layer, q.data(), o.data());
  if (s != Status::Ok) return s;
  s = backend_->upload(out, o.data(), n * sizeof(float));
  if (s != Status::Ok) return fail(s, "writing the output to device memory");
  return Status::Ok;
}

void* Cache::allocateDevice(size_t bytes) {
  void* p = backend_->allocate(bytes ? bytes : 1);
  if (p) deviceBuffers_.push_back({p, bytes});
  return p;
}

bool Cache::freeDevice(void* p) {
  for (size_t i = 0; i < deviceBuffers_.size(); i++) {
    if (deviceBuffers_[i].first == p) {
      backend_->release(p);
      deviceBuffers_.erase(deviceBuffers_.begin() + (long)i);
      return true;
    }
  }
  return false;
}

bool Cache::ownsDevice(const void* p, size_t bytes) const {
  const uintptr_t a = (uintptr_t)p;
  for (const auto& b : deviceBuffers_)
    if (a >= (uintptr_t)b.first && a + bytes <= (uintptr_t)b.first + b.second) return true;
  return false;
}

void Cache::reset(int layer) {
  Layer& L = layers_[layer];
  for (uint8_t* p : L.pages) givePage(p);
  L.pages.clear();
  L.tokens = L.quantizedKeys = L.quantizedValues = 0;
  L.keyNormHost.clear();
}

std::vector<float> Cache::keyNormFactors(int layer) const { return layers_[layer].keyNormHost; }

CacheStats Cache::stats() const {
  CacheStats st;
  const double row = (double)rowElems_;
  auto quantBytes = [&](const MatrixFormat& f, int q, double* codes, double* scales) {
    if (f.orientation == kFp16Rows) { *codes += q * row * 2; return; }
    const double groups = q * row / f.groupSize;
    *codes += groups * groupBytes(f.bits, f.groupSize);
    *scales += groups * 2 * (hasZeros(f.mode) ? 2 : 1);
  };
  for (const Layer& L : layers_) {
    st.tokens += L.tokens;
    const double sinkHeld = std::min(L.tokens, config_.sinkTokens);
    quantBytes(config_.keyFormat, L.quantizedKeys, &st.codeBytes, &st.scaleBytes);
    quantBytes(config_.valueFormat, L.quantizedValues, &st.codeBytes, &st.scaleBytes);
    const double fp16Tokens = 2 * sinkHeld + (L.tokens - sinkHeld - L.quantizedKeys) + (L.tokens - sinkHeld - L.quantizedValues);
    st.windowBytes += fp16Tokens * row * 2;
    st.fp16Bytes += L.tokens * row * 2 * 2;
    if (!L.keyNormHost.empty()) st.heldBytes += row * 4;
    st.pagesInUse += (int)L.pages.size();
    st.allocatedBytes += (2.0 * config_.sinkTokens + 2.0 * ringCapacity_) * row * 2 + (config_.keyNorm ? row * 4 : 0);
  }
  st.heldBytes += st.codeBytes + st.scaleBytes + st.windowBytes;
  st.pagesAllocated = pagesAllocated_;
  st.allocatedBytes += (double)pagesAllocated_ * layout_.pageBytes;
  return st;
}

Status Cache::snapshot(int layer, LayerSnapshot* out) const {
  const Layer& L = layers_[layer];
  out->tokens = L.tokens;
  out->sinkCapacity = config_.sinkTokens;
  out->quantizedKeys = L.quantizedKeys;
  out->quantizedValues = L.quantizedValues;
  out->ringCapacity = ringCapacity_;
  out->pageTokens = config_.pageTokens;
  out->pageBytes = layout_.pageBytes;
  const size_t sinkElems = (size_t)config_.sinkTokens * rowElems_, ringElems = (size_t)ringCapacity_ * rowElems_;
  out->sinkKeys.assign(sinkElems, 0);
  out->sinkValues.assign(sinkElems, 0);
  out->ringKeys.assign(ringElems, 0);
  out->ringValues.assign(ringElems, 0);
  Status s = Status::Ok;
  if (sinkElems) {
    s = backend_->download(out->sinkKeys.data(), L.sinkKeys, sinkElems * 2);
    if (s == Status::Ok) s = backend_->download(out->sinkValues.data(), L.sinkValues, sinkElems * 2);
  }
  if (s == Status::Ok && ringElems) {
    s = backend_->download(out->ringKeys.data(), L.ringKeys, ringElems * 2);
    if (s == Status::Ok) s = backend_->download(out->ringValues.data(), L.ringValues, ringElems * 2);
  }
  out->pages.assign(L.pages.size(), std::vector<uint8_t>(layout_.pageBytes));
  for (size_t i = 0; i < L.pages.size() && s == Status::Ok; i++)
    s = backend_->download(out->pages[i].data(), L.pages[i], layout_.pageBytes);
  out->keyNorm = L.keyNormHost;
  return s;
}

Status Cache::restore(int layer, const LayerSnapshot& in) {
  reset(layer);
  Layer& L = layers_[layer];
  const size_t sinkElems = (size_t)config_.sinkTokens * rowElems_, ringElems = (size_t)ringCapacity_ * rowElems_;
  Status s = ensurePages(L, std::max(in.quantizedKeys, in.quantizedValues));
  if (s != Status::Ok) return s;
  if (in.pages.size() < L.pages.size() || in.sinkKeys.size() != sinkElems || in.sinkValues.size() != sinkElems ||
      in.ringKeys.size() != ringElems || in.ringValues.size() != ringElems ||
      (!in.keyNorm.empty() && in.keyNorm.size() != rowElems_)) {
    reset(layer);
    return fail(Status::Internal, "snapshot sizes do not match this cache");
  }
  for (const auto& p : in.pages)
    if (p.size() != layout_.pageBytes) { reset(layer); return fail(Status::Internal, "snapshot page size does not match this cache"); }
  if (sinkElems) {
    s = backend_->upload(L.sinkKeys, in.sinkKeys.data(), sinkElems * 2);
    if (s == Status::Ok) s = backend_->upload(L.sinkValues, in.sinkValues.data(), sinkElems * 2);
  }
  if (s == Status::Ok && ringElems) {
    s = backend_->upload(L.ringKeys, in.ringKeys.data(), ringElems * 2);
    if (s == Status::Ok) s = backend_->upload(L.ringValues, in.ringValues.data(), ringElems * 2);
  }
  for (size_t i = 0; i < L.pages.size() && s == Status::Ok; i++)
    s = backend_->upload(L.pages[i], in.pages[i].data(), layout_.pageBytes);
  if (s == Status::Ok && !in.keyNorm.empty()) {
    s = backend_->upload(L.keyNorm, in.keyNorm.data(), rowElems_ * sizeof(float));
    if (s == Status::Ok) L.keyNormHost = in.keyNorm;
  }
  if (s != Status::Ok) { reset(layer); return fail(s, "restoring a layer"); }
  L.tokens = in.tokens;
  L.quantizedKeys = in.quantizedKeys;
  L.quantizedValues = in.quantizedValues;
  return Status::Ok;
}

}  // namespace innerq
