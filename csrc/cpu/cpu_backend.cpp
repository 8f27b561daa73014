// cpu_backend.cpp - the CPU backend: memory, quantizeRows, attend, the thread pool and the work split.
//
// attend() for one layer: items = (kv head, token chunk), about 8 per thread. Each item runs scores -> softmax ->
// u8 weights -> value sums for the r query heads of its kv head over its chunk (one pass over the codes serves all
// r), and leaves partial sums with the chunk's score maximum and exp sum; the caller merges the chunks. Chunk
// boundaries lie at S + k*C (the last head's tail pieces at S + k*C + j*Cs) with C and Cs multiples of 128,
// so they never split a token group of any G.
// keyScores()/valueSum() (the separate GEMVs that the tests and the bench call) run as two parallel phases over the
// same kind of items (fewer and larger): key scores into the caller's [qHeads][T] array; value sums, each item
// writing a private partial [r][d] that the caller merges.
#include "cpu_backend.h"

#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <new>
#include <thread>
#include <utility>
#include <vector>

#include "../../kernels/quantizer.cuh"
#include "cpu_kernels.h"
#include "prefetch.h"

namespace innerq {

CpuFeatures cpuFeatures() {
  CpuFeatures f{};
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  f.avx2 = __builtin_cpu_supports("avx2");
  f.fma = __builtin_cpu_supports("fma");
  // gcc 12 has no "f16c" name for __builtin_cpu_supports; read CPUID.1:ECX bit 29 directly.
  unsigned a = 1, b = 0, c = 0, d = 0;
  __asm__ volatile("cpuid" : "+a"(a), "=b"(b), "=c"(c), "=d"(d) : "c"(0));
  f.f16c = (c >> 29) & 1;
  // libgcc sets the avx512* bits only when XGETBV shows the OS saving the opmask and zmm state.
  f.avx512vnni = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                 __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bitalg");
#endif
  const unsigned hc = std::thread::hardware_concurrency();
  f.threads = hc ? (int)hc : 1;
  return f;
}

namespace cpu {
namespace {

// A small persistent pool. run(items, fn) hands items out through an atomic counter; the calling thread works
// too. Workers spin briefly after a job (a decode step issues three jobs per layer back to back, and a
// condition-variable wake costs tens of microseconds), then sleep.
class ThreadPool {
 public:
  explicit ThreadPool(int threads) : threads_(threads < 1 ? 1 : threads) {
    for (int i = 1; i < threads_; i++) workers_.emplace_back([this, i] { loop(i); });
  }
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
      generation_.fetch_add(1);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  int size() const { return threads_; }

  void run(int items, const std::function<void(int item, int worker)>& fn) {
    if (items <= 0) return;
    if (threads_ == 1 || items == 1) {
      for (int i = 0; i < items; i++) fn(i, 0);
      return;
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      fn_ = &fn;
      items_ = items;
      next_.store(0);
      pending_.store(threads_ - 1);
      generation_.fetch_add(1);
    }
    cv_.notify_all();
    work(0);
    while (pending_.load(std::memory_order_acquire) != 0) std::this_thread::yield();
    fn_ = nullptr;
  }

 private:
  void work(int worker) {
    for (;;) {
      const int i = next_.fetch_add(1);
      if (i >= items_) break;
      (*fn_)(i, worker);
    }
  }
  void loop(int worker) {
    unsigned seen = 0;
    for (;;) {
      unsigned g = generation_.load(std::memory_order_acquire);
      for (int spin = 0; g == seen && spin < 20000; spin++) {
        std::this_thread::yield();
        g = generation_.load(std::memory_order_acquire);
      }
      if (g == seen) {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return generation_.load() != seen; });
        g = generation_.load();
      }
      seen = g;
      if (stop_) return;
      work(worker);
      pending_.fetch_sub(1, std::memory_order_release);
    }
  }

  int threads_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<unsigned> generation_{0};
  std::atomic<int> next_{0}, pending_{0};
  int items_ = 0;
  const std::function<void(int, int)>* fn_ = nullptr;
  bool stop_ = false;
};

template <class T>
struct AlignedBuf {  // grow-only 64-byte aligned scratch
  T* p = nullptr;
  size_t n = 0;
  AlignedBuf() = default;
  AlignedBuf(const AlignedBuf&) = delete;
  AlignedBuf& operator=(const AlignedBuf&) = delete;
  AlignedBuf(AlignedBuf&& o) noexcept : p(o.p), n(o.n) { o.p = nullptr, o.n = 0; }
  ~AlignedBuf() { std::free(p); }
  T* get(size_t count) {
    if (count > n) {
      std::free(p);
      const size_t bytes = (count * sizeof(T) + 63) & ~(size_t)63;
      p = (T*)std::aligned_alloc(64, bytes ? bytes : 64);
      if (!p) throw std::bad_alloc();
      n = count;
    }
    return p;
  }
};

// A kv head's tokens in perHead chunks of C tokens after the sink (the first chunk also takes the sink, the last
// runs to the end). Items are (kv head, chunk) in head-major order. With Cs > 0 (attend), the LAST head's last chunk
// is cut into pieces of Cs tokens, so that the final items handed out are small (see taperedChunking).
struct Chunking {
  int perHead, C;
  int Cs = 0, lastHeadChunks = 0;
  int chunks(const LayerView& v, int kh) const { return Cs && kh == v.kvHeads - 1 ? lastHeadChunks : perHead; }
  int items(const LayerView& v) const { return (v.kvHeads - 1) * perHead + chunks(v, v.kvHeads - 1); }
  int firstItem(int kh) const { return kh * perHead; }
  int head(const LayerView& v, int item) const { return item / perHead < v.kvHeads - 1 ? item / perHead : v.kvHeads - 1; }
  int start(const LayerView& v, int kh, int c) const {
    return Cs && kh == v.kvHeads - 1 && c >= perHead - 1 ? (perHead - 1) * C + (c - perHead + 1) * Cs : c * C;
  }
  int lo(const LayerView& v, int kh, int c) const { return c == 0 ? 0 : v.sinkCapacity + start(v, kh, c); }
  int hi(const LayerView& v, int kh, int c) const {
    return c == chunks(v, kh) - 1 ? v.tokens : v.sinkCapacity + start(v, kh, c + 1);
  }
};

class CpuBackend final : public Backend {
 public:
  CpuBackend(int threads, const Kernels* kernels) : pool_(threads), k_(kernels) {}
  const char* name() const override { return "cpu"; }
  const char* kernels() const { return k_->name; }
  int threads() const { return pool_.size(); }

  void* allocate(size_t bytes) override {
    // aligned_alloc wants a size that is a multiple of the alignment.
    const size_t rounded = (bytes + 63) & ~(size_t)63;
    return std::aligned_alloc(64, rounded ? rounded : 64);
  }
  void release(void* p) override { std::free(p); }
  Status upload(void* dst, const void* src, size_t bytes) override {
    std::memcpy(dst, src, bytes);
    return Status::Ok;
  }
  Status download(void* dst, const void* src, size_t bytes) override {
    std::memcpy(dst, src, bytes);
    return Status::Ok;
  }
  Status copyDevice(void* dst, const void* src, size_t bytes) override {
    std::memmove(dst, src, bytes);
    return Status::Ok;
  }

  Status quantizeRows(const LayerView& v, Matrix m, const uint16_t* rows, int firstQuantized, int count) override;
  Status attend(const LayerView& v, const float* query, float* out) override;
  Status keyScores(const LayerView& v, const float* query, float* scores);
  Status valueSum(const LayerView& v, const float* probs, float* out);

 private:
  static bool supported(const LayerView& v);
  Chunking chunking(const LayerView& v, int itemsPerThread, int minTokens) const;
  Chunking taperedChunking(const LayerView& v) const;
  void prepareQuery(const LayerView& v, const float* query);
  struct ProbsI8 {  // the weights quantized to UNSIGNED 8 bits (quantizeU8)
    const uint8_t* q;
    const float *sigma, *sigmaSum;
    size_t ld;
  };
  struct WorkerBuffers {
    AlignedBuf<float> scores, sigma, sigmaSum;
    AlignedBuf<uint8_t> q;
  };
  void keyScoresRange(const LayerView& v, int kh, int a0, int a1, float* s, size_t lds) const;
  void valueSumRange(const LayerView& v, int kh, int a0, int a1, const float* probs, size_t ldp, const ProbsI8& pq,
                     float* o) const;
  void quantizeProbs(const LayerView& v, const float* probsRow, uint8_t* q, float* sigma, float* sigmaSum) const;
  void reserveProbsI8(const LayerView& v);
  void scoresPhase(const LayerView& v, float* scores);
  void valuePhase(const LayerView& v, const float* probs, float* out);

  ThreadPool pool_;
  const Kernels* k_;
  std::mutex callMu_;
  AlignedBuf<float> qScaled_, qFold_, qSig_, qSigS_, pSig_, pSigS_, partial_;
  AlignedBuf<int8_t> qI8_;
  AlignedBuf<uint8_t> pI8_;
  size_t pLd_ = 0;  // row stride of pI8_ (quantizedValues rounded up to 32)
  std::vector<WorkerBuffers> workers_;
};

bool CpuBackend::supported(const LayerView& v) {
  if (v.qHeads <= 0 || v.kvHeads <= 0 || v.qHeads % v.kvHeads) return false;
  if (v.headDim <= 0 || v.headDim > kMaxHeadDim || v.headDim % 32) return false;
  for (const MatrixFormat* f : {&v.keyFormat, &v.valueFormat}) {
    if (f->orientation == kFp16Rows) continue;
    if (f->bits != 2 && f->bits != 3 && f->bits != 4 && f->bits != 8) return false;
    if (f->groupSize != 32 && f->groupSize != 64 && f->groupSize != 128) return false;
    if (v.headDim % f->groupSize) return false;
  }
  return true;
}

Chunking CpuBackend::chunking(const LayerView& v, int itemsPerThread, int minTokens) const {
  // About itemsPerThread items per thread over all kv heads, but chunks of at least minTokens tokens.
  const int quantSpan = v.tokens - v.sinkHeld();
  int per = (itemsPerThread * pool_.size() + v.kvHeads - 1) / v.kvHeads;
  const int maxPer = quantSpan / minTokens;
  if (per > maxPer) per = maxPer;
  if (per < 1) per = 1;
  int C = (quantSpan + per - 1) / per;
  C = (C + 127) / 128 * 128;
  if (C == 0) C = 128;
  // Rounding C up can leave the last chunks empty (16 chunks of 1025 -> 1152 tokens cover 16400 with 15): drop them.
  per = quantSpan > C ? (quantSpan + C - 1) / C : 1;
  return Chunking{per, C};
}

Chunking CpuBackend::taperedChunking(const LayerView& v) const {
  // attend's split: about 8 chunks per thread of >= 1024 tokens, the last kv head's last chunk cut in quarters
  // (multiples of 128 tokens). Items go out head-major, so those quarters run last: the thread that finishes first
  // waits for at most about a quarter chunk, where it waited ~half a chunk on average (~20 us of a 16k layer's
  // ~830 us on 2 threads). Every item start costs a few microseconds of cold streams, hence few items: only the last
  // head is cut (handing out all heads' chunks chunk-major, so that every head's quarters came last, made steps 9 %
  // slower), and 8 chunks per thread rather than 16 (at 16k tokens on 2 threads, 4 -> 2 chunks per head: the innerq
  // step 19.35 -> 18.00 ms, medians of 13 alternating runs of the two addons, fp16's unchanged; Zen 5 VM).
  Chunking ch = chunking(v, 8, 1024);
  if (ch.perHead < 2 || pool_.size() < 2) return ch;
  const int last = v.tokens - v.sinkHeld() - (ch.perHead - 1) * ch.C;  // tokens of the last chunk
  ch.Cs = (ch.C / 4 + 127) / 128 * 128;
  ch.lastHeadChunks = ch.perHead - 1 + (last + ch.Cs - 1) / ch.Cs;
  return ch;
}

// Walk token range [a0, a1) of one matrix and kv head, calling fp16(rows, ld, a, n, inPage) for fp16 runs and
// page(pageIndex, slot0, slot1, a) for quantized runs (also kFp16Rows pages: the callback handles them).
template <class F16, class PAGE>
void walk(const LayerView& v, Matrix m, int kh, int a0, int a1, F16&& fp16, PAGE&& page) {
  const int S = v.sinkCapacity, held = v.sinkHeld();
  const int q = m == Matrix::Keys ? v.quantizedKeys : v.quantizedValues;
  const size_t ld = (size_t)v.kvHeads * v.headDim;
  const uint16_t* sink = m == Matrix::Keys ? v.sinkKeys : v.sinkValues;
  const uint16_t* ring = m == Matrix::Keys ? v.ringKeys : v.ringValues;
  int a = a0;
  if (a < held) {
    const int e = a1 < held ? a1 : held;
    fp16(sink + (size_t)a * ld + (size_t)kh * v.headDim, ld, a, e - a);
    a = e;
  }
  while (a < a1 && a < S + q) {
    const int i = a - S, p = i / v.pageTokens, s0 = i % v.pageTokens;
    int e = S + (p + 1) * v.pageTokens;
    if (e > a1) e = a1;
    if (e > S + q) e = S + q;
    page(p, s0, s0 + (e - a), a, e < a1 && e < S + q);  // last: whether the range continues in page p + 1
    a = e;
  }
  while (a < a1) {
    const int slot = (a - S) % v.ringCapacity;
    int n = v.ringCapacity - slot;
    if (n > a1 - a) n = a1 - a;
    fp16(ring + (size_t)slot * ld + (size_t)kh * v.headDim, ld, a, n);
    a += n;
  }
}

// Prefetch the fp16 rows (sink and recent window) of kv head kh within tokens [a0, a1), keys and values, into the
// caches. attend() calls it at the start of an item: the window rows are few (sink + ring, 128 tokens by default)
// but each is a separate 256-byte piece of a [token][kvHeads * d] row, and the fp16 kernels met them cold (their
// own prefetch starts 24 rows in), which cost ~1.9 ms of a 27 ms step at 16k tokens. Issued together, their misses
// overlap; the sink keys are read at once, the other rows after the chunk's quantized codes (~200 KiB per matrix),
// so they are still in L2 (1 MiB) when the kernels reach them. (GCC had compiled this function away for a while,
// see prefetch.h; restored on 2026-12-06 it made no difference to the 16k step beyond the noise.)
void prefetchWindows(const LayerView& v, int kh, int a0, int a1) {
  const size_t rowBytes = (size_t)v.headDim * 2;
  const auto rows = [&](const uint16_t* p, size_t ld, int, int n) {
    for (int i = 0; i < n; i++)
      for (size_t o = 0; o < rowBytes; o += 64) prefetchLine<Prefetch::L2>((const char*)(p + (size_t)i * ld) + o);
  };
  const auto none = [](int, int, int, int, bool) {};
  walk(v, Matrix::Keys, kh, a0, a1, rows, none);
  walk(v, Matrix::Values, kh, a0, a1, rows, none);
}

inline QuantRef headRef(const LayerView& v, const MatrixLayout& L, const MatrixFormat& f, int page, int kh) {
  const uint8_t* base = v.pages[page];
  QuantRef r;
  r.codes = base + L.codesOffset + (size_t)kh * L.codesHeadBytes;
  r.scales = (const uint16_t*)(base + L.scalesOffset + (size_t)kh * L.scalesHeadBytes);
  r.zeros = hasZeros(f.mode) ? (const uint16_t*)(base + L.zerosOffset + (size_t)kh * L.scalesHeadBytes) : nullptr;
  return r;
}

// headRef of page p for a walk: its next* point at page p + 1 when the walk goes on there (`more`), else null.
inline QuantRef walkRef(const LayerView& v, const MatrixLayout& L, const MatrixFormat& f, int p, int kh, bool more) {
  QuantRef r = headRef(v, L, f, p, kh);
  if (more) r.setNext(headRef(v, L, f, p + 1, kh));
  return r;
}

// Gathers the consecutive pages that one walk visits into runs (cpu_kernels.h's QuantRun) and hands each run to
// call(run, t0, t1, firstPage, a): run slots [t0, t1), the run's first page index and the absolute token of slot t0.
// Runs hold at most kRunPages pages (4096 tokens at the default 256), which keeps the per-call setup negligible.
template <class CALL>
class PageRuns {
 public:
  static constexpr int kRunPages = 16;
  PageRuns(const LayerView& v, const MatrixLayout& L, const MatrixFormat& f, int kh, CALL call)
      : v_(v), L_(L), f_(f), kh_(kh), call_(std::move(call)) {}
  // walk()'s page callback: page p's slots [s0, s1) start at absolute token a; more: the walk goes on in page p + 1.
  void add(int p, int s0, int s1, int a, bool more) {
    if (count_ == kRunPages) flush();
    if (count_ == 0) {
      first_ = p;
      t0_ = s0;
      a_ = a;
    }
    pages_[count_] = walkRef(v_, L_, f_, p, kh_, more);
    t1_ = count_ * v_.pageTokens + s1;
    count_++;
  }
  void flush() {
    if (count_ == 0) return;
    call_(QuantRun{pages_, count_, v_.pageTokens}, t0_, t1_, first_, a_);
    count_ = 0;
  }

 private:
  const LayerView& v_;
  const MatrixLayout& L_;
  const MatrixFormat& f_;
  int kh_;
  CALL call_;
  QuantRef pages_[kRunPages];
  int count_ = 0, first_ = 0, t0_ = 0, t1_ = 0, a_ = 0;
};

void CpuBackend::prepareQuery(const LayerView& v, const float* query) {
  const int d = v.headDim, H = v.qHeads, r = H / v.kvHeads;
  const float scale = (float)(1.0 / std::sqrt((double)d));
  float* qs = qScaled_.get((size_t)H * d);
  float* qf = qFold_.get((size_t)H * d);
  int8_t* qi = qI8_.get((size_t)H * d);
  float* sg = qSig_.get((size_t)H * d / 32);
  float* sS = qSigS_.get((size_t)H * d / 32);
  for (int h = 0; h < H; h++) {
    const float* f = v.keyNormHost ? v.keyNormHost + (size_t)(h / r) * d : nullptr;
    for (int j = 0; j < d; j++) {
      qs[h * d + j] = query[h * d + j] * scale;
      qf[h * d + j] = f ? qs[h * d + j] * f[j] : qs[h * d + j];
    }
  }
  if (v.keyFormat.orientation == kRowGrouped) k_->quantizeI8(qf, H * d, qi, sg, sS);
}

// Scores of kv head kh's query heads over tokens [a0, a1): s[h*lds + a] for h < r (s points at the kv head's
// first query head row).
void CpuBackend::keyScoresRange(const LayerView& v, int kh, int a0, int a1, float* s, size_t lds) const {
  const int d = v.headDim, r = v.qHeads / v.kvHeads;
  const MatrixFormat& f = v.keyFormat;
  for (int hb = 0; hb < r; hb += kMaxHeadBlock) {
    const int rb = r - hb < kMaxHeadBlock ? r - hb : kMaxHeadBlock, qh = kh * r + hb;
    const float* qs = qScaled_.p + (size_t)qh * d;
    const float* qf = qFold_.p + (size_t)qh * d;
    float* sOut = s + (size_t)hb * lds;
    const I8Set q{qI8_.p + (size_t)qh * d, (size_t)d, qSig_.p + (size_t)qh * d / 32, qSigS_.p + (size_t)qh * d / 32,
                  (size_t)d / 32};
    auto innerq = [&](const QuantRun& run, int t0, int t1, int, int a) {
      k_->scoresRowI8(run, f, d, t0, t1, q, rb, sOut + a, lds);
    };
    PageRuns<decltype(innerq)> runs(v, v.layout.keys, f, kh, innerq);
    walk(
        v, Matrix::Keys, kh, a0, a1,
        [&](const uint16_t* rows, size_t ld, int a, int n) { k_->scoresFp16(rows, ld, n, d, qs, rb, sOut + a, lds, nullptr); },
        [&](int p, int s0, int s1, int a, bool more) {
          if (f.orientation == kRowGrouped) return runs.add(p, s0, s1, a, more);
          const QuantRef m = walkRef(v, v.layout.keys, f, p, kh, more);
          if (f.orientation == kFp16Rows) {
            k_->scoresFp16((const uint16_t*)m.codes + (size_t)s0 * d, d, s1 - s0, d, qf, rb, sOut + a, lds,
                           (const uint16_t*)m.nextCodes);
          } else {
            k_->scoresColI8(m, f, d, s0 / f.groupSize, s1 / f.groupSize, qf, rb, sOut + a, lds);
          }
        });
    runs.flush();
  }
}

// Value sums of kv head kh's query heads over tokens [a0, a1), accumulated into o [r][d]. probs: [r][ldp] indexed by
// absolute token; pq: the u8 weights of the quantized value tokens ([r][pLd], indexed by quantized index), used
// when values are kColGrouped.
void CpuBackend::valueSumRange(const LayerView& v, int kh, int a0, int a1, const float* probs, size_t ldp,
                               const ProbsI8& pq, float* o) const {
  const int d = v.headDim, r = v.qHeads / v.kvHeads, P = v.pageTokens;
  const MatrixFormat& f = v.valueFormat;
  for (int hb = 0; hb < r; hb += kMaxHeadBlock) {
    const int rb = r - hb < kMaxHeadBlock ? r - hb : kMaxHeadBlock;
    const float* pIn = probs + (size_t)hb * ldp;
    float* ob = o + (size_t)hb * d;
    auto innerq = [&](const QuantRun& run, int t0, int t1, int firstPage, int) {
      // run-relative u8 weights: the run's first page starts at quantized index firstPage * P (a multiple of 32)
      const size_t base = (size_t)hb * pq.ld + (size_t)firstPage * P;
      const U8Set ps{pq.q + base, pq.ld, pq.sigma + base / 32, pq.sigmaSum + base / 32, pq.ld / 32};
      k_->wsumColI8(run, f, d, t0 / f.groupSize, t1 / f.groupSize, ps, rb, ob);
    };
    PageRuns<decltype(innerq)> runs(v, v.layout.values, f, kh, innerq);
    walk(
        v, Matrix::Values, kh, a0, a1,
        [&](const uint16_t* rows, size_t ld, int a, int n) { k_->wsumFp16(rows, ld, n, d, pIn + a, ldp, rb, ob, nullptr); },
        [&](int p, int s0, int s1, int a, bool more) {
          if (f.orientation == kColGrouped) return runs.add(p, s0, s1, a, more);
          const QuantRef m = walkRef(v, v.layout.values, f, p, kh, more);
          if (f.orientation == kFp16Rows) {
            k_->wsumFp16((const uint16_t*)m.codes + (size_t)s0 * d, d, s1 - s0, d, pIn + a, ldp, rb, ob,
                         (const uint16_t*)m.nextCodes);
          } else {
            k_->wsumRowI8(m, f, d, s0, s1, pIn + a, ldp, rb, ob);
          }
        });
    runs.flush();
  }
}

void CpuBackend::scoresPhase(const LayerView& v, float* scores) {
  const Chunking ch = chunking(v, 2, 512);
  const int r = v.qHeads / v.kvHeads, T = v.tokens;
  pool_.run(v.kvHeads * ch.perHead, [&](int item, int) {
    const int kh = item / ch.perHead, c = item % ch.perHead;
    keyScoresRange(v, kh, ch.lo(v, kh, c), ch.hi(v, kh, c), scores + (size_t)kh * r * T, T);
  });
}

void CpuBackend::quantizeProbs(const LayerView& v, const float* probsRow, uint8_t* q, float* sigma, float* sigmaSum) const {
  // weights of the quantized value tokens, slices aligned to quantized-space multiples of 32 (so to token groups);
  // they are non-negative, so unsigned 8 bits (sigma = max/255: twice the resolution of int8)
  if (v.quantizedValues > 0) k_->quantizeU8(probsRow + v.sinkCapacity, v.quantizedValues, q, sigma, sigmaSum);
}

void CpuBackend::valuePhase(const LayerView& v, const float* probs, float* out) {
  const Chunking ch = chunking(v, 2, 512);
  const int d = v.headDim, r = v.qHeads / v.kvHeads, T = v.tokens;
  const int items = v.kvHeads * ch.perHead;
  float* part = partial_.get((size_t)items * r * d);
  pool_.run(items, [&](int item, int) {
    const int kh = item / ch.perHead, c = item % ch.perHead;
    float* o = part + (size_t)item * r * d;
    std::memset(o, 0, sizeof(float) * r * d);
    const size_t row = (size_t)kh * r * pLd_;
    const ProbsI8 pq{pI8_.p ? pI8_.p + row : nullptr, pSig_.p ? pSig_.p + row / 32 : nullptr,
                     pSigS_.p ? pSigS_.p + row / 32 : nullptr, pLd_};
    valueSumRange(v, kh, ch.lo(v, kh, c), ch.hi(v, kh, c), probs + (size_t)kh * r * T, T, pq, o);
  });
  // merge the chunks of each kv head
  for (int kh = 0; kh < v.kvHeads; kh++) {
    float* dst = out + (size_t)kh * r * d;
    std::memcpy(dst, part + (size_t)kh * ch.perHead * r * d, sizeof(float) * r * d);
    for (int c = 1; c < ch.perHead; c++) {
      const float* src = part + ((size_t)kh * ch.perHead + c) * r * d;
      for (int i = 0; i < r * d; i++) dst[i] += src[i];
    }
  }
}

void CpuBackend::reserveProbsI8(const LayerView& v) {
  pLd_ = ((size_t)v.quantizedValues + 31) / 32 * 32;
  pI8_.get(pLd_ * v.qHeads);
  pSig_.get(pLd_ / 32 * v.qHeads);
  pSigS_.get(pLd_ / 32 * v.qHeads);
}

Status CpuBackend::keyScores(const LayerView& v, const float* query, float* scores) {
  if (!supported(v)) return Status::Unsupported;
  std::lock_guard<std::mutex> lk(callMu_);
  try {
    prepareQuery(v, query);
    scoresPhase(v, scores);
  } catch (const std::bad_alloc&) {
    return Status::OutOfMemory;
  }
  return Status::Ok;
}

Status CpuBackend::valueSum(const LayerView& v, const float* probs, float* out) {
  if (!supported(v)) return Status::Unsupported;
  std::lock_guard<std::mutex> lk(callMu_);
  try {
    if (v.valueFormat.orientation == kColGrouped && v.quantizedValues > 0) {
      reserveProbsI8(v);
      pool_.run(v.qHeads, [&](int h, int) {
        const size_t row = (size_t)h * pLd_;
        quantizeProbs(v, probs + (size_t)h * v.tokens, pI8_.p + row, pSig_.p + row / 32, pSigS_.p + row / 32);
      });
    }
    valuePhase(v, probs, out);
  } catch (const std::bad_alloc&) {
    return Status::OutOfMemory;
  }
  return Status::Ok;
}

Status CpuBackend::attend(const LayerView& v, const float* query, float* out) {
  if (!supported(v)) return Status::Unsupported;
  if (v.tokens <= 0) {
    std::memset(out, 0, sizeof(float) * v.qHeads * v.headDim);
    return Status::Ok;
  }
  std::lock_guard<std::mutex> lk(callMu_);
  try {
    prepareQuery(v, query);
    const bool i8 = v.valueFormat.orientation == kColGrouped && v.quantizedValues > 0;
    const int r = v.qHeads / v.kvHeads, T = v.tokens, d = v.headDim, S = v.sinkCapacity;
    // Items = (kv head, token chunk). Each runs scores -> softmax -> u8 weights -> value sums over its chunk, with its
    // r x chunk scores in the worker's own buffer (L2-resident, instead of a [qHeads][T] array making two round
    // trips through DRAM), and leaves partial sums, the chunk's score maximum and its exp sum per query head; the
    // chunks are merged at the end (as in split-KV "flash decoding"). Many small items (~8 per thread) balance
    // the threads: with one item per kv head, a thread slowed down by another tenant of its core left the others
    // idle for most of an item at the end of every layer. The u8 weights are per 32-token slice and scale-invariant,
    // so the chunk-local maximum gives the same codes as the global one would (up to the float rounding of exp).
    const Chunking ch = taperedChunking(v);
    const int items = ch.items(v);
    const size_t pLd = ((size_t)v.quantizedValues + 31) / 32 * 32;
    if (workers_.size() < (size_t)pool_.size()) workers_.resize(pool_.size());
    for (auto& w : workers_) {
      w.scores.get((size_t)r * T);
      if (i8) {
        w.q.get((size_t)r * pLd);
        w.sigma.get((size_t)r * pLd / 32);
        w.sigmaSum.get((size_t)r * pLd / 32);
      }
    }
    const size_t perItem = (size_t)r * (d + 2);  // [r][d] value sums, then r maxima and r exp sums
    float* part = partial_.get((size_t)items * perItem);
    pool_.run(items, [&](int item, int worker) {
      const int kh = ch.head(v, item), c = item - ch.firstItem(kh), a0 = ch.lo(v, kh, c), a1 = ch.hi(v, kh, c);
      WorkerBuffers& w = workers_[worker];
      float* s = w.scores.p;  // [r][T]; this item uses columns [a0, a1)
      prefetchWindows(v, kh, a0, a1);
      keyScoresRange(v, kh, a0, a1, s, T);
      float* o = part + (size_t)item * perItem;
      float* mx = o + (size_t)r * d;
      float* z = mx + r;
      // quantized value indices of the chunk: [q0, q1), multiples of 32 (chunks start at S + c*C, C a multiple of
      // 128; the quantized span is a multiple of the group size)
      const int q0 = (a0 > S ? a0 : S) - S, q1 = (a1 < S + v.quantizedValues ? a1 : S + v.quantizedValues) - S;
      for (int h = 0; h < r; h++) {
        float* sh = s + (size_t)h * T;
        if (i8 && q1 > q0) {  // the quantized tokens' weights go straight to u8 codes
          const size_t at = (size_t)h * pLd + q0;
          const int qa = S + q0 - a0, qn = q1 - q0;
          uint8_t* qq = w.q.p + at;
          float *sg = w.sigma.p + at / 32, *sS = w.sigmaSum.p + at / 32;
          z[h] = k_->softmaxExpU8(sh + a0, a1 - a0, qa, qn, &mx[h], qq, sg, sS);
        } else {
          z[h] = k_->softmaxExp(sh + a0, a1 - a0, &mx[h]);
        }
      }
      std::memset(o, 0, sizeof(float) * r * d);
      const ProbsI8 pq{w.q.p, w.sigma.p, w.sigmaSum.p, pLd};
      valueSumRange(v, kh, a0, a1, s, T, pq, o);
    });
    // out_h = Σ_c e^(m_c - M) o_c / Σ_c e^(m_c - M) z_c with M = max_c m_c
    for (int kh = 0; kh < v.kvHeads; kh++)
      for (int h = 0; h < r; h++) {
        const float* first = part + (size_t)ch.firstItem(kh) * perItem;
        const int chunks = ch.chunks(v, kh);
        float M = -INFINITY;
        for (int c = 0; c < chunks; c++) {
          const float m = first[c * perItem + (size_t)r * d + h];
          M = m > M ? m : M;
        }
        float* dst = out + ((size_t)kh * r + h) * d;
        std::memset(dst, 0, sizeof(float) * d);
        double zt = 0;
        for (int c = 0; c < chunks; c++) {
          const float* o = first + c * perItem;
          const float wgt = std::exp(o[(size_t)r * d + h] - M);
          zt += (double)wgt * o[(size_t)r * d + r + h];
          for (int j = 0; j < d; j++) dst[j] += wgt * o[(size_t)h * d + j];
        }
        const float inv = (float)(1.0 / zt);
        for (int j = 0; j < d; j++) dst[j] *= inv;
      }
  } catch (const std::bad_alloc&) {
    return Status::OutOfMemory;
  }
  return Status::Ok;
}

Status CpuBackend::quantizeRows(const LayerView& v, Matrix mat, const uint16_t* rows, int firstQuantized, int count) {
  if (!supported(v)) return Status::Unsupported;
  const bool keys = mat == Matrix::Keys;
  const MatrixFormat& f = keys ? v.keyFormat : v.valueFormat;
  const MatrixLayout& L = keys ? v.layout.keys : v.layout.values;
  const int d = v.headDim, P = v.pageTokens, H = v.kvHeads;
  const size_t ld = (size_t)H * d;
  if (f.orientation == kColGrouped && (firstQuantized % f.groupSize || count % f.groupSize)) return Status::Unsupported;
  // Keys are stored as K/f: divided in double and rounded once to binary16 (saturating), as the format requires.
  struct Pages {
    const LayerView* v;
    const MatrixLayout* L;
    const MatrixFormat* f;
  } pages{&v, &L, &f};
  QuantizeHeadJob job{};
  job.rows = rows;
  job.ld = ld;
  job.d = d;
  job.count = count;
  job.firstQuantized = firstQuantized;
  job.pageTokens = P;
  job.norm = keys ? (v.keyNorm ? v.keyNorm : v.keyNormHost) : nullptr;
  job.format = f;
  job.pageRef = [](const void* ctx, int page, int kh) {
    const Pages& p = *static_cast<const Pages*>(ctx);
    return headRef(*p.v, *p.L, *p.f, page, kh);
  };
  job.ctx = &pages;
  pool_.run(H, [&](int kh, int) {
    QuantizeHeadJob mine = job;
    mine.kh = kh;
    k_->quantizeHead(mine);
  });
  return Status::Ok;
}

}  // namespace
}  // namespace cpu

std::unique_ptr<Backend> makeCpuBackend(int threads, CpuKernels kernels) {
  const CpuFeatures f = cpuFeatures();
  if (threads <= 0) threads = f.threads;
  const cpu::Kernels* table = &cpu::portableKernels();
  if (kernels != CpuKernels::kPortable && f.avx2 && f.fma && f.f16c) table = &cpu::avx2Kernels();
  if (kernels == CpuKernels::kBest && table != &cpu::portableKernels() && f.avx512vnni) table = &cpu::avx512Kernels();
  return std::unique_ptr<Backend>(new cpu::CpuBackend(threads, table));
}

Status cpuKeyScores(Backend& b, const LayerView& v, const float* query, float* scores) {
  auto* c = dynamic_cast<cpu::CpuBackend*>(&b);
  return c ? c->keyScores(v, query, scores) : Status::Unsupported;
}
Status cpuValueSum(Backend& b, const LayerView& v, const float* probs, float* out) {
  auto* c = dynamic_cast<cpu::CpuBackend*>(&b);
  return c ? c->valueSum(v, probs, out) : Status::Unsupported;
}
const char* cpuBackendKernels(const Backend& b) {
  auto* c = dynamic_cast<const cpu::CpuBackend*>(&b);
  return c ? c->kernels() : "";
}
int cpuBackendThreads(const Backend& b) {
  auto* c = dynamic_cast<const cpu::CpuBackend*>(&b);
  return c ? c->threads() : 0;
}

}  // namespace innerq
