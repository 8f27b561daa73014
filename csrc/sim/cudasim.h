// cudasim.h - the innerq SIMT emulator: compiles CUDA kernel source with a plain C++ compiler and executes it on
// the CPU with warp and block semantics, so a machine without a GPU (CI, dev boxes) runs every kernel and its
// launch configuration. Self-contained: it needs neither the CUDA toolkit headers nor any package.
//
// Model: a block runs on the calling OS thread; each CUDA thread of the block is a fiber. A fiber runs until it
// reaches a scheduling point (__syncthreads, __syncwarp, a shuffle, a ballot) or exits. When every fiber is
// blocked the scheduler releases barriers and resolves warp collectives with the hardware's lane rules.
// Detected and reported as launch failures: __syncthreads at different source lines or with some threads
// exited, warp collectives whose member mask names an absent or exited lane or disagrees between lanes,
// shuffles that read a lane outside the mask, deadlocks. Shared memory is poisoned (0xFF bytes = NaN floats)
// at the start of every block. The order in which fibers run between scheduling points is a knob
// (forward, reversed, reshuffled every round): kernel results must not depend on it, and a missing barrier
// shows up as a difference or as a poisoned value.
//
// Stream order: copies and memsets are deferred as on a device (see "stream order" below): they run when something
// waits for their stream, so a host that reads a download before synchronizing, or a kernel on a non-blocking
// stream that reads what a legacy-stream cudaMemcpy wrote, sees the old bytes, as the GPU can.
//
// Build with -fno-strict-aliasing (kernels type-pun uint4 and half2; g++ -O2 otherwise miscompiles them).
// Context switch: a hand-written x86-64 switch (callee-saved registers + MXCSR/x87 control word; about 10 ns)
// or glibc ucontext elsewhere (correct but ~0.5 us per switch: swapcontext makes a sigprocmask syscall).
#pragma once
#if defined(__CUDACC__)
#error "cudasim.h is for host compilers only; nvcc uses the real CUDA headers"
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>
#include <sys/mman.h>

#if !defined(__x86_64__) && !defined(CUDASIM_UCONTEXT)
#define CUDASIM_UCONTEXT 1
#endif
#ifdef CUDASIM_UCONTEXT
#include <ucontext.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#define CUDASIM_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CUDASIM_ASAN 1
#endif
#endif
#ifdef CUDASIM_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

// ---------------------------------------------------------------- qualifiers
#define __global__ inline
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#ifndef __restrict__
#define __restrict__ __restrict
#endif
static constexpr int warpSize = 32;

// ---------------------------------------------------------------- vector types (layout = CUDA's)
struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return uint3{x, y, z}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return uint2{x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

// ---------------------------------------------------------------- binary16
struct __half { uint16_t __x; };
struct alignas(4) __half2 { __half x, y; };
namespace cudasim {
inline float halfBitsToFloat(uint16_t h) {
  const unsigned sign = (unsigned)(h >> 15) << 31, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  float v;
  if (e == 0) v = std::ldexp((float)m, -24);  // subnormal (or zero): m * 2^-24, exact in float
  else if (e == 31) v = m ? NAN : INFINITY;
  else v = std::ldexp((float)(m | 0x400), (int)e - 25);  // (1024 + m) * 2^(e-15-10)
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  bits |= sign;
  std::memcpy(&v, &bits, 4);
  return v;
}
// Round to nearest even. float -> double is exact, so this is a single rounding, as on the device.
inline uint16_t floatToHalfBits(float f) {
  const double x = f;
  if (x != x) return 0x7e00;
  const uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  const double a = std::fabs(x);
  if (a >= 65520.0) return sign | 0x7c00;  // 65520 = 65504 + half an ulp (16): ties round up to Inf
  if (a == 0) return sign;
  int e;
  std::frexp(a, &e);                       // a in [2^(e-1), 2^e)
  int ulpExp = std::max(e - 11, -24);      // 10 fraction bits below the leading one; subnormal ulp 2^-24
  const double m = std::ldexp(a, -ulpExp);  // exact
  double r = std::nearbyint(m);            // default rounding mode: nearest even
  long long mi = (long long)r;
  if (mi >= 2048) { mi >>= 1; ulpExp++; }
  if (mi < 1024) return (uint16_t)(sign | mi);
  return (uint16_t)(sign | ((ulpExp + 25) << 10) | (mi - 1024));
}
}  // namespace cudasim
inline float __half2float(__half h) { return cudasim::halfBitsToFloat(h.__x); }
inline __half __float2half(float f) { return __half{cudasim::floatToHalfBits(f)}; }
inline __half __float2half_rn(float f) { return __float2half(f); }
inline __half __ushort_as_half(unsigned short u) { return __half{u}; }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half2 __halves2half2(__half a, __half b) { return __half2{a, b}; }
inline __half __low2half(__half2 h) { return h.x; }
inline __half __high2half(__half2 h) { return h.y; }
inline float2 __half22float2(__half2 h) { return float2{__half2float(h.x), __half2float(h.y)}; }
inline __half2 __floats2half2_rn(float a, float b) { return __half2{__float2half(a), __float2half(b)}; }
inline float __low2float(__half2 h) { return __half2float(h.x); }
inline float __high2float(__half2 h) { return __half2float(h.y); }

// ---------------------------------------------------------------- runtime API types
enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidDevicePointer = 17,
  cudaErrorInvalidMemcpyDirection = 21,
  cudaErrorInsufficientDriver = 35,
  cudaErrorNoDevice = 100,
  cudaErrorLaunchFailure = 719,
};
enum cudaMemcpyKind : int {
  cudaMemcpyHostToHost = 0, cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3, cudaMemcpyDefault = 4,
};
enum cudaDeviceAttr : int { cudaDevAttrMaxSharedMemoryPerBlock = 8, cudaDevAttrMultiProcessorCount = 16 };
enum cudaFuncAttribute : int { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
struct CUstream_st;
struct CUevent_st {
  double ms;
  CUstream_st* stream;  // where it was last recorded (nullptr: the legacy default stream)
};
typedef CUstream_st* cudaStream_t;
typedef CUevent_st* cudaEvent_t;
#define cudaStreamNonBlocking 0x01

namespace cudasim {
struct Error : std::runtime_error { using std::runtime_error::runtime_error; };

struct Config {
  int order = 0;            // 0 forward, 1 reversed, 2 reshuffled every scheduling round
  unsigned seed = 1;        // for order 2
  size_t stackBytes = 128 * 1024;
  bool strictExitBarrier = true;  // __syncthreads reached while some threads of the block exited: an error
  bool throwOnError = false;      // launch failures throw cudasim::Error instead of setting the sticky error
};
inline Config& config() { static thread_local Config c; return c; }

// ------------------------------------------------ emulated device memory
// Device allocations are ordinary host allocations recorded in a registry, so that copies and launch
// arguments can be checked: a host pointer where a device pointer belongs is reported, not silently used.
struct Registry {
  std::mutex mu;
  std::map<uintptr_t, size_t> blocks;  // start -> bytes
  size_t liveBytes = 0, limitBytes = (size_t)8 << 30;
};
inline Registry& registry() { static Registry r; return r; }
// True when [p, p+bytes) lies inside one emulated device allocation.
inline bool isDevicePointer(const void* p, size_t bytes = 1) {
  if (!p) return false;
  Registry& r = registry();
  std::lock_guard<std::mutex> g(r.mu);
  const uintptr_t a = (uintptr_t)p;
  auto it = r.blocks.upper_bound(a);
  if (it == r.blocks.begin()) return false;
  --it;
  return a >= it->first && a + bytes <= it->first + it->second;
}
inline size_t liveDeviceBytes() { std::lock_guard<std::mutex> g(registry().mu); return registry().liveBytes; }

// ------------------------------------------------ stream order
// A device runs a stream's copies, memsets and kernels in order, but later than the host issues them, and streams
// created cudaStreamNonBlocking do not order against the legacy default stream at all. The emulator models the
// part of this that host code can get wrong:
//  - cudaMemcpyAsync / cudaMemsetAsync, and the "synchronous" cudaMemcpy host-to-device and device-to-device and
//    cudaMemset (which the runtime may return from before the DMA lands), are queued on their stream (cudaMemcpy
//    and cudaMemset on the legacy stream). A host-to-device copy takes its source bytes at the call, as the
//    runtime stages pageable memory.
//  - A queue runs, in order, when something waits for it: cudaStreamSynchronize, cudaEventSynchronize of an
//    event recorded on it, cudaDeviceSynchronize, cudaFree and cudaStreamDestroy (which drain everything), a
//    device-to-host cudaMemcpy (legacy), and a kernel launched on the same stream (kernels run at launch, after
//    their stream's earlier work). Streams created without cudaStreamNonBlocking share the legacy queue, which
//    orders them with it (and, more strictly than a device, with each other).
//  - Nothing else runs a queue: a kernel on a non-blocking stream does not wait for legacy-stream copies, and a
//    download is not in host memory until its stream is synchronized.
// So a missing synchronization shows up as stale or poisoned data in a test instead of only on a real GPU.
struct StreamQueue {
  std::vector<std::function<void()>> ops;
};
inline std::recursive_mutex& streamMutex() { static std::recursive_mutex m; return m; }
inline StreamQueue& legacyQueue() { static StreamQueue q; return q; }
inline std::vector<StreamQueue*>& nonBlockingQueues() { static std::vector<StreamQueue*> v; return v; }
}  // namespace cudasim
struct CUstream_st {
  bool nonBlocking;
  cudasim::StreamQueue queue;
};
namespace cudasim {
inline StreamQueue& queueOf(cudaStream_t s) { return s && s->nonBlocking ? s->queue : legacyQueue(); }
inline void drain(StreamQueue& q) {
  std::lock_guard<std::recursive_mutex> g(streamMutex());
  std::vector<std::function<void()>> ops;
  ops.swap(q.ops);
  for (auto& op : ops) op();
}
inline void drainStream(cudaStream_t s) { drain(queueOf(s)); }
inline void drainAll() {
  std::lock_guard<std::recursive_mutex> g(streamMutex());
  drain(legacyQueue());
  for (StreamQueue* q : nonBlockingQueues()) drain(*q);
}
inline void enqueue(cudaStream_t s, std::function<void()> op) {
  std::lock_guard<std::recursive_mutex> g(streamMutex());
  queueOf(s).ops.push_back(std::move(op));
}

// Sticky launch error and its detailed message (the runtime keeps the error code; we add the reason).
struct ErrorState { cudaError_t sticky = cudaSuccess, last = cudaSuccess; std::string message; };
inline ErrorState& errorState() { static thread_local ErrorState e; return e; }
inline const std::string& lastMessage() { return errorState().message; }
inline void setError(cudaError_t e, const std::string& msg) {
  ErrorState& s = errorState();
  s.last = e;
  s.message = msg;
}

namespace detail {
[[noreturn]] inline void fail(const std::string& m) { throw Error("cudasim: " + m); }

// ------------------------------------------------ fibers
#ifndef CUDASIM_UCONTEXT
// switch(saveSp, loadSp): push the System V callee-saved registers and the FP control state on the current
// stack, store the stack pointer in *saveSp, load loadSp, pop the same frame from there, return into it.
// The frame is 8 (MXCSR + x87 control word) + 6*8 registers + 8 return address = 64 bytes, so a fresh fiber
// stack is prepared as exactly that frame (see Fiber::prepare). Weak symbols: the header may be included in
// several translation units.
extern "C" void cudasim_switch_x86_64(void** saveSp, void* loadSp);
extern "C" void cudasim_fiber_start_x86_64();
asm(R"(
  .pushsection .text
  .weak cudasim_switch_x86_64
  .type cudasim_switch_x86_64,@function
cudasim_switch_x86_64:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size cudasim_switch_x86_64, .-cudasim_switch_x86_64
  .weak cudasim_fiber_start_x86_64
  .type cudasim_fiber_start_x86_64,@function
cudasim_fiber_start_x86_64:
  movq %r12, %rdi
  callq *%r13
  ud2
  .size cudasim_fiber_start_x86_64, .-cudasim_fiber_start_x86_64
  .popsection
)");
#endif

enum class State { Runnable, AtBarrier, AtWarp, Done };
enum class WarpOp { Sync, Idx, Up, Down, Xor, Ballot };

struct Lane {
#ifdef CUDASIM_UCONTEXT
  ucontext_t uc;
#else
  void* sp = nullptr;
#endif
  uint3 tid{};
  int linear = 0;
  State st = State::Runnable;
  int line = 0;  // source line of the scheduling point it waits at
  unsigned mask = 0;
  WarpOp op = WarpOp::Sync;
  int arg = 0, width = 32;
  uint64_t val = 0, res = 0;
};

struct BlockContext {
  uint3 blockIdx{};
  dim3 blockDim, gridDim;
  unsigned char* dynShared = nullptr;
  unsigned generation = 0;  // incremented per block: static shared arrays re-poison on first use
};

struct Scheduler;
inline thread_local Scheduler* tlsScheduler = nullptr;
inline thread_local Lane* tlsLane = nullptr;
inline thread_local BlockContext tlsBlock;

struct Scheduler {
  std::vector<Lane> lanes;
  std::vector<char*> stacks;
  size_t stackBytes = 0;
  const std::function<void()>* body = nullptr;
  std::string error;  // first error raised inside a fiber
#ifdef CUDASIM_UCONTEXT
  ucontext_t mainUc;
#else
  void* mainSp = nullptr;
#endif
#ifdef CUDASIM_ASAN
  const void* mainBottom = nullptr;
  size_t mainSize = 0;
#endif

  ~Scheduler() { freeStacks(); }
  void freeStacks() {
    for (char* s : stacks) munmap(s, stackBytes);
    stacks.clear();
  }
  char* stackFor(size_t i) {
    while (stacks.size() <= i) {  // mmap with a guard page: an overflow faults instead of corrupting a neighbour
      void* p = mmap(nullptr, stackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) fail("cannot map a fiber stack");
      mprotect(p, 4096, PROT_NONE);
      stacks.push_back((char*)p);
    }
    return stacks[i];
  }

  static void fiberMain(Scheduler* s) {
#ifdef CUDASIM_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &s->mainBottom, &s->mainSize);
#endif
    try {
      (*s->body)();
    } catch (std::exception& e) {
      if (s->error.empty()) s->error = e.what();
    }
    tlsLane->st = State::Done;
    s->toMain(true);
    std::abort();  // a finished fiber is never resumed
  }
#ifdef CUDASIM_UCONTEXT
  static void ucEntry(unsigned lo, unsigned hi) { fiberMain((Scheduler*)(((uintptr_t)hi << 32) | lo)); }
#endif

  void prepare(Lane& l, char* stack) {
#ifdef CUDASIM_ASAN
    // A fiber never returns from its entry frame, and stacks are reused across launches (and mmap may hand
    // back addresses an earlier stack used): clear stale redzone poison before a fiber starts afresh.
    __asan_unpoison_memory_region(stack + 4096, stackBytes - 4096);
#endif
#ifdef CUDASIM_UCONTEXT
    getcontext(&l.uc);
    l.uc.uc_stack.ss_sp = stack + 4096;
    l.uc.uc_stack.ss_size = stackBytes - 4096;
    l.uc.uc_link = nullptr;
    const uintptr_t p = (uintptr_t)this;
    makecontext(&l.uc, (void (*)())ucEntry, 2, (unsigned)(p & 0xffffffffu), (unsigned)(p >> 32));
#else
    // Top of stack 16-aligned; the 64-byte frame below it is what cudasim_switch_x86_64 pops. After its `ret`
    // rsp == top, and the `call` in the start stub leaves rsp == top - 8 at fiberMain's entry, as the ABI wants.
    uintptr_t top = ((uintptr_t)stack + stackBytes) & ~(uintptr_t)15;
    uint64_t* f = (uint64_t*)(top - 64);
    uint32_t mxcsr = 0x1f80;   // all exceptions masked, round to nearest
    uint16_t fpcw = 0x037f;    // x87 default: extended precision, exceptions masked
    std::memcpy(&f[0], &mxcsr, 4);
    std::memcpy((char*)&f[0] + 4, &fpcw, 2);
    f[1] = 0;                                  // r15
    f[2] = 0;                                  // r14
    f[3] = (uint64_t)(uintptr_t)&fiberMain;    // r13: the function the start stub calls
    f[4] = (uint64_t)(uintptr_t)this;          // r12: its argument
    f[5] = 0;                                  // rbx
    f[6] = 0;                                  // rbp
    f[7] = (uint64_t)(uintptr_t)&cudasim_fiber_start_x86_64;
    l.sp = f;
#endif
  }

  void toLane(Lane& l, size_t index) {
    tlsLane = &l;
#ifdef CUDASIM_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, stacks[index] + 4096, stackBytes - 4096);
#else
    (void)index;
#endif
#ifdef CUDASIM_UCONTEXT
    swapcontext(&mainUc, &l.uc);
#else
    cudasim_switch_x86_64(&mainSp, l.sp);
#endif
#ifdef CUDASIM_ASAN
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
    tlsLane = nullptr;
  }
  void toMain(bool finished) {
    Lane* l = tlsLane;
#ifdef CUDASIM_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(finished ? nullptr : &fake, mainBottom, mainSize);
#else
    (void)finished;
#endif
#ifdef CUDASIM_UCONTEXT
    swapcontext(&l->uc, &mainUc);
#else
    cudasim_switch_x86_64(&l->sp, mainSp);
#endif
#ifdef CUDASIM_ASAN
    __sanitizer_finish_switch_fiber(fake, &mainBottom, &mainSize);
#endif
  }

  // Warp collectives of one warp (lanes [w0, w0+n)), once every fiber is blocked. A group is the set of
  // lanes named by a caller's mask; it completes when all of them wait at a collective with the same mask
  // and operation. Exited or absent lanes in a mask are errors (the hardware hangs or returns garbage).
  void resolveWarp(int w0, int n) {
    Lane* L = &lanes[w0];
    for (int i = 0; i < n; i++) {
      Lane& a = L[i];
      if (a.st != State::AtWarp) continue;
      const std::string where = " (line " + std::to_string(a.line) + ", warp " + std::to_string(w0 / 32) + ")";
      if (!(a.mask >> i & 1)) fail("warp collective: lane " + std::to_string(i) + " is not in its own mask" + where);
      bool ready = true;
      for (int j = 0; j < 32 && ready; j++) {
        if (!(a.mask >> j & 1)) continue;
        if (j >= n) fail("warp collective mask names lane " + std::to_string(j) + ", absent from the block" + where);
        if (L[j].st == State::Done) fail("warp collective mask names lane " + std::to_string(j) + ", which exited" + where);
        if (L[j].st != State::AtWarp) { ready = false; break; }
        if (L[j].mask != a.mask || L[j].op != a.op || (a.op != WarpOp::Sync && L[j].line != a.line))
          fail("divergent warp collectives: lanes " + std::to_string(i) + " and " + std::to_string(j) + " wait at lines " +
               std::to_string(a.line) + " and " + std::to_string(L[j].line) + " with different masks or operations");
      }
      if (!ready) continue;
      uint32_t ballot = 0;
      for (int j = 0; j < 32; j++)
        if (a.mask >> j & 1) ballot |= (uint32_t)(L[j].val != 0) << j;
      for (int j = 0; j < 32; j++) {
        if (!(a.mask >> j & 1)) continue;
        Lane& b = L[j];
        // PTX shfl.sync: c = ((32 - width) << 8) | clamp, clamp = 0 for up, 31 otherwise. segMask selects the
        // lane bits above the segment; a source outside [segment start, segment end] yields the lane's own value.
        const int segMask = (32 - b.width) & 31;
        const int clamp = b.op == WarpOp::Up ? 0 : 31;
        const int maxLane = (j & segMask) | (clamp & ~segMask);
        int src = j;
        bool inRange = true;
        switch (b.op) {
          case WarpOp::Idx: src = (b.arg & ~segMask & 31) | (j & segMask); inRange = src <= maxLane; break;
          case WarpOp::Up: src = j - b.arg; inRange = src >= maxLane; break;
          case WarpOp::Down: src = j + b.arg; inRange = src <= maxLane; break;
          case WarpOp::Xor: src = j ^ b.arg; inRange = src <= maxLane; break;
          default: break;
        }
        if (!inRange) src = j;
        if (b.op == WarpOp::Ballot) b.res = ballot;
        else if (b.op != WarpOp::Sync) {
          if (src < 0 || src > 31 || !(a.mask >> src & 1))
            fail("shuffle at line " + std::to_string(b.line) + ": lane " + std::to_string(j) + " reads lane " +
                 std::to_string(src) + ", which is not in the mask");
          b.res = L[src].val;
        }
      }
      for (int j = 0; j < 32; j++)
        if (a.mask >> j & 1) L[j].st = State::Runnable;
    }
  }

  void runBlock(const std::function<void()>& fn, size_t nthreads) {
    body = &fn;
    if (stackBytes != config().stackBytes) { freeStacks(); stackBytes = config().stackBytes; }
    lanes.assign(nthreads, Lane{});
    error.clear();
    const dim3 bd = tlsBlock.blockDim;
    for (size_t i = 0; i < nthreads; i++) {
      Lane& l = lanes[i];
      l.linear = (int)i;
      l.tid = make_uint3((unsigned)(i % bd.x), (unsigned)((i / bd.x) % bd.y), (unsigned)(i / ((size_t)bd.x * bd.y)));
      prepare(l, stackFor(i));
    }
    std::vector<unsigned> order(nthreads);
    for (size_t i = 0; i < nthreads; i++) order[i] = config().order == 1 ? (unsigned)(nthreads - 1 - i) : (unsigned)i;
    unsigned rng = config().seed * 2654435761u + 1;
    size_t live = nthreads;
    while (live) {
      if (config().order == 2)  // a fresh permutation per round: exposes reads that race with other threads' writes
        for (size_t i = nthreads - 1; i > 0; i--) {
          rng = rng * 1664525u + 1013904223u;  // Numerical Recipes LCG
          std::swap(order[i], order[(rng >> 8) % (i + 1)]);
        }
      for (unsigned i : order) {
        if (lanes[i].st != State::Runnable) continue;
        toLane(lanes[i], i);
        if (!error.empty()) fail(error.rfind("cudasim: ", 0) == 0 ? error.substr(9) : error);
      }
      live = 0;
      size_t atBarrier = 0;
      int line = -1;
      bool mixed = false;
      for (Lane& l : lanes) {
        if (l.st == State::Done) continue;
        live++;
        if (l.st == State::AtBarrier) {
          atBarrier++;
          if (line >= 0 && line != l.line) mixed = true;
          line = l.line;
        }
      }
      if (!live) break;
      for (size_t w = 0; w < nthreads; w += 32) resolveWarp((int)w, (int)std::min<size_t>(32, nthreads - w));
      bool runnable = false;
      for (Lane& l : lanes) runnable |= l.st == State::Runnable;
      if (runnable) continue;
      if (atBarrier == live) {
        if (mixed) fail("__syncthreads reached at different source lines (divergent barrier)");
        if (live != nthreads && config().strictExitBarrier)
          fail("__syncthreads at line " + std::to_string(line) + " reached by " + std::to_string(live) + " of " +
               std::to_string(nthreads) + " threads; the others exited");
        for (Lane& l : lanes)
          if (l.st == State::AtBarrier) l.st = State::Runnable;
        continue;
      }
      fail("deadlock: " + std::to_string(atBarrier) + " threads wait at __syncthreads, " +
           std::to_string(live - atBarrier) + " at warp collectives that cannot complete");
    }
  }
};
inline Scheduler& scheduler() {
  static thread_local Scheduler s;
  return s;
}
inline Lane* lane() {
  Lane* l = tlsLane;
  if (!l) fail("device function called outside a kernel launch");
  return l;
}
inline void barrier(int line) {
  Lane* l = lane();
  l->st = State::AtBarrier;
  l->line = line;
  scheduler().toMain(false);
}
template <class T>
inline T warpOp(WarpOp op, unsigned mask, T v, int arg, int width, int line) {
  static_assert(sizeof(T) <= 8, "warp collectives move at most 8 bytes");
  if (width <= 0 || width > 32 || (width & (width - 1))) fail("shuffle width must be a power of two <= 32");
  Lane* l = lane();
  l->op = op;
  l->mask = mask;
  l->arg = arg;
  l->width = width;
  l->line = line;
  l->val = 0;
  std::memcpy(&l->val, &v, sizeof(T));
  l->st = State::AtWarp;
  scheduler().toMain(false);
  T r;
  std::memcpy(&r, &l->res, sizeof(T));
  return r;
}
// Static __shared__ arrays: one per declaration site (ID) and type, poisoned when a new block first touches it.
template <class T, int ID>
inline T& blockShared() {
  static thread_local struct { alignas(16) T v; unsigned gen = ~0u; } s;
  if (s.gen != tlsBlock.generation) {
    s.gen = tlsBlock.generation;
    std::memset((void*)&s.v, 0xFF, sizeof(T));
  }
  return s.v;
}
}  // namespace detail

inline unsigned char* dynamicShared() { return detail::tlsBlock.dynShared; }

// Run a grid: blocks one after another on the calling OS thread (block order is irrelevant to a correct
// kernel; blocks never synchronise with each other). A detected error ends the launch, sets the sticky error
// cudaErrorLaunchFailure with the reason in lastMessage(), or throws when config().throwOnError.
inline void launch(dim3 grid, dim3 block, size_t dynSharedBytes, cudaStream_t stream, const std::function<void()>& body) {
  drainStream(stream);  // the stream's earlier copies and memsets land before its kernel runs (stream order)
  const size_t n = (size_t)block.x * block.y * block.z;
  try {
    if (n == 0 || n > 1024) detail::fail("invalid block size " + std::to_string(n));
    if (dynSharedBytes > 227 * 1024) detail::fail("dynamic shared memory above 227 KiB");
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535) detail::fail("invalid grid");
    std::vector<unsigned char> smem(dynSharedBytes + 16);
    detail::BlockContext& ctx = detail::tlsBlock;
    ctx.gridDim = grid;
    ctx.blockDim = block;
    for (unsigned z = 0; z < grid.z; z++)
      for (unsigned y = 0; y < grid.y; y++)
        for (unsigned x = 0; x < grid.x; x++) {
          std::fill(smem.begin(), smem.end(), (unsigned char)0xFF);  // poison: NaN floats, -1 integers
          ctx.dynShared = smem.data();
          ctx.blockIdx = make_uint3(x, y, z);
          ctx.generation++;
          detail::scheduler().runBlock(body, n);
        }
    ctx.dynShared = nullptr;
  } catch (Error& e) {
    detail::tlsLane = nullptr;
    if (config().throwOnError) throw;
    ErrorState& s = errorState();
    s.sticky = s.last = cudaErrorLaunchFailure;
    s.message = e.what();
  }
}
// Pointer arguments of a launch can be checked against the device-memory registry (the launchers do this
// in sim builds): a host pointer handed to a kernel is reported like a launch failure.
inline void expectDevice(const void* p, const char* what) {
  if (p && !isDevicePointer(p)) {
    ErrorState& s = errorState();
    s.sticky = s.last = cudaErrorInvalidDevicePointer;
    s.message = std::string("cudasim: kernel argument '") + what + "' is not emulated device memory";
  }
}
// Clear the sticky error (tests that provoke failures on purpose).
inline void resetErrors() { errorState() = ErrorState{}; }
}  // namespace cudasim

// ---------------------------------------------------------------- built-in variables and collectives
#define threadIdx (::cudasim::detail::lane()->tid)
#define blockIdx (::cudasim::detail::tlsBlock.blockIdx)
#define blockDim (::cudasim::detail::tlsBlock.blockDim)
#define gridDim (::cudasim::detail::tlsBlock.gridDim)
#define __shared__ static thread_local  // plain form; prefer CUDASIM_SHARED (poisoned per block)
#define CUDASIM_SHARED(T, name, dims)  \
  using cudasim_##name##_t = T dims; \
  cudasim_##name##_t& name = ::cudasim::detail::blockShared<cudasim_##name##_t, __COUNTER__>()
#define __syncthreads() ::cudasim::detail::barrier(__LINE__)
#define CUDASIM_WIDTH(...) (0 __VA_OPT__(+) __VA_ARGS__ ?: 32)
#define __shfl_sync(m, v, s, ...) \
  ::cudasim::detail::warpOp(::cudasim::detail::WarpOp::Idx, m, v, s, CUDASIM_WIDTH(__VA_ARGS__), __LINE__)
#define __shfl_up_sync(m, v, d, ...) \
  ::cudasim::detail::warpOp(::cudasim::detail::WarpOp::Up, m, v, d, CUDASIM_WIDTH(__VA_ARGS__), __LINE__)
#define __shfl_down_sync(m, v, d, ...) \
  ::cudasim::detail::warpOp(::cudasim::detail::WarpOp::Down, m, v, d, CUDASIM_WIDTH(__VA_ARGS__), __LINE__)
#define __shfl_xor_sync(m, v, x, ...) \
  ::cudasim::detail::warpOp(::cudasim::detail::WarpOp::Xor, m, v, x, CUDASIM_WIDTH(__VA_ARGS__), __LINE__)
#define __syncwarp(...) \
  (void)::cudasim::detail::warpOp(::cudasim::detail::WarpOp::Sync, (0 __VA_OPT__(+) __VA_ARGS__ ?: 0xffffffffu), 0, 0, 32, __LINE__)
#define __ballot_sync(m, p) \
  (unsigned)::cudasim::detail::warpOp<uint32_t>(::cudasim::detail::WarpOp::Ballot, m, (p) ? 1u : 0u, 0, 32, __LINE__)
#define __all_sync(m, p) (__ballot_sync(m, p) == (unsigned)(m))
#define __any_sync(m, p) (__ballot_sync(m, p) != 0u)

template <class T>
inline T __ldg(const T* p) { return *p; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
inline float __int_as_float(int x) { float f; std::memcpy(&f, &x, 4); return f; }
inline int __float_as_int(float f) { int x; std::memcpy(&x, &f, 4); return x; }
inline unsigned __float_as_uint(float f) { unsigned x; std::memcpy(&x, &f, 4); return x; }
inline float __uint_as_float(unsigned x) { float f; std::memcpy(&f, &x, 4); return f; }
inline float __expf(float x) { return std::exp(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline void __threadfence() {}
inline void __threadfence_block() {}

// ---------------------------------------------------------------- runtime API (host memory; copies in stream order)
inline cudaError_t cudaGetDeviceCount(int* n) { *n = 1; return cudaSuccess; }
inline cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : cudaErrorInvalidValue; }
inline cudaError_t cudaGetDevice(int* d) { *d = 0; return cudaSuccess; }
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int) {
  *v = a == cudaDevAttrMultiProcessorCount ? 4 : 48 * 1024;
  return cudaSuccess;
}
template <class F>
inline cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int) { return cudaSuccess; }
inline cudaError_t cudaMalloc(void** p, size_t bytes) {
  *p = nullptr;
  cudasim::Registry& r = cudasim::registry();
  std::lock_guard<std::mutex> g(r.mu);
  if (r.liveBytes + bytes > r.limitBytes) return cudaErrorMemoryAllocation;
  // 256-byte alignment like cudaMalloc; fresh memory is poisoned (cudaMalloc does not clear).
  const size_t rounded = (bytes + 255) & ~(size_t)255;
  void* m = std::aligned_alloc(256, rounded ? rounded : 256);
  if (!m) return cudaErrorMemoryAllocation;
  std::memset(m, 0xA5, rounded ? rounded : 256);
  r.blocks[(uintptr_t)m] = bytes ? bytes : 1;
  r.liveBytes += bytes;
  *p = m;
  return cudaSuccess;
}
template <class T>
inline cudaError_t cudaMalloc(T** p, size_t bytes) { return cudaMalloc((void**)p, bytes); }
inline cudaError_t cudaFree(void* p) {
  if (!p) return cudaSuccess;
  cudasim::drainAll();  // cudaFree synchronizes the device: queued copies into p complete first
  cudasim::Registry& r = cudasim::registry();
  std::lock_guard<std::mutex> g(r.mu);
  auto it = r.blocks.find((uintptr_t)p);
  if (it == r.blocks.end()) {
    cudasim::setError(cudaErrorInvalidDevicePointer, "cudasim: cudaFree of a pointer that cudaMalloc did not return");
    return cudaErrorInvalidDevicePointer;
  }
  r.liveBytes -= it->second;
  r.blocks.erase(it);
  std::free(p);
  return cudaSuccess;
}
namespace cudasim {
// Checks a copy's direction against the registry; queues it on `stream` (a host source is read now).
inline cudaError_t queueCopy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream, const char* api) {
  if (bytes == 0) return cudaSuccess;
  const bool dstDev = isDevicePointer(dst, bytes), srcDev = isDevicePointer(src, bytes);
  bool ok = true;
  switch (kind) {
    case cudaMemcpyHostToDevice: ok = dstDev && !srcDev; break;
    case cudaMemcpyDeviceToHost: ok = srcDev && !dstDev; break;
    case cudaMemcpyDeviceToDevice: ok = srcDev && dstDev; break;
    case cudaMemcpyHostToHost: ok = !srcDev && !dstDev; break;
    default: break;
  }
  if (!ok) {
    setError(cudaErrorInvalidValue, std::string("cudasim: ") + api + " direction " + std::to_string((int)kind) +
                                        " does not match the pointers (device dst " + std::to_string(dstDev) +
                                        ", device src " + std::to_string(srcDev) + ", " + std::to_string(bytes) + " bytes)");
    return cudaErrorInvalidValue;
  }
  if (!srcDev) {  // staged at the call, like pageable memory
    auto staged = std::make_shared<std::vector<unsigned char>>((const unsigned char*)src, (const unsigned char*)src + bytes);
    enqueue(stream, [dst, staged] { std::memcpy(dst, staged->data(), staged->size()); });
  } else {
    enqueue(stream, [dst, src, bytes] { std::memmove(dst, src, bytes); });
  }
  return cudaSuccess;
}
inline cudaError_t queueMemset(void* p, int v, size_t bytes, cudaStream_t stream) {
  if (bytes && !isDevicePointer(p, bytes)) {
    setError(cudaErrorInvalidValue, "cudasim: cudaMemset on memory that is not emulated device memory");
    return cudaErrorInvalidValue;
  }
  if (bytes) enqueue(stream, [p, v, bytes] { std::memset(p, v, bytes); });
  return cudaSuccess;
}
}  // namespace cudasim
// On the legacy default stream. Only a download returns with its data in place; an upload or a device copy may
// still be in flight (see "stream order").
inline cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  const cudaError_t e = cudasim::queueCopy(dst, src, bytes, kind, nullptr, "cudaMemcpy");
  if (e == cudaSuccess && (kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyHostToHost)) cudasim::drainStream(nullptr);
  return e;
}
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s = nullptr) {
  return cudasim::queueCopy(dst, src, bytes, kind, s, "cudaMemcpyAsync");
}
inline cudaError_t cudaMemset(void* p, int v, size_t bytes) { return cudasim::queueMemset(p, v, bytes, nullptr); }
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t bytes, cudaStream_t s = nullptr) {
  return cudasim::queueMemset(p, v, bytes, s);
}
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags) {
  *s = new CUstream_st{(flags & cudaStreamNonBlocking) != 0, {}};
  if ((*s)->nonBlocking) {
    std::lock_guard<std::recursive_mutex> g(cudasim::streamMutex());
    cudasim::nonBlockingQueues().push_back(&(*s)->queue);
  }
  return cudaSuccess;
}
inline cudaError_t cudaStreamCreate(cudaStream_t* s) { return cudaStreamCreateWithFlags(s, 0); }
inline cudaError_t cudaStreamDestroy(cudaStream_t s) {
  if (!s) return cudaErrorInvalidValue;
  cudasim::drainStream(s);  // work already queued still completes
  {
    std::lock_guard<std::recursive_mutex> g(cudasim::streamMutex());
    auto& v = cudasim::nonBlockingQueues();
    v.erase(std::remove(v.begin(), v.end(), &s->queue), v.end());
  }
  delete s;
  return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  cudasim::drainStream(s);
  return cudasim::errorState().sticky;
}
inline cudaError_t cudaDeviceSynchronize() {
  cudasim::drainAll();
  return cudasim::errorState().sticky;
}
// Events measure host wall time: meaningless as GPU timings, but they let benchmark code run end to end.
inline cudaError_t cudaEventCreate(cudaEvent_t* e) { *e = new CUevent_st{0, nullptr}; return cudaSuccess; }
inline cudaError_t cudaEventDestroy(cudaEvent_t e) { delete e; return cudaSuccess; }
inline cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = nullptr) {
  e->ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
  e->stream = s;
  return cudaSuccess;
}
// Waits for everything queued on the event's stream (also what was queued after the record: stricter than a device).
inline cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  cudasim::drainStream(e->stream);
  return cudaSuccess;
}
inline cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) { *ms = (float)(b->ms - a->ms); return cudaSuccess; }
inline cudaError_t cudaGetLastError() {
  cudasim::ErrorState& s = cudasim::errorState();
  const cudaError_t e = s.sticky != cudaSuccess ? s.sticky : s.last;
  s.last = cudaSuccess;  // a sticky (launch) error stays, as on the device
  return e;
}
inline cudaError_t cudaPeekAtLastError() {
  cudasim::ErrorState& s = cudasim::errorState();
  return s.sticky != cudaSuccess ? s.sticky : s.last;
}
inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInsufficientDriver: return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    default: return "unknown error";
  }
}
