// prefetch.h - internal: the one software-prefetch primitive of the CPU backend.
//
// Why not _mm_prefetch / __builtin_prefetch directly: GCC's interprocedural analysis counts a prefetch as having no
// effect, so a function whose only effects are prefetches is `const` to it, and a call to such a function that is
// not inlined is deleted as dead code, prefetches and all (-O3, GCC 12: `void pf(p) { for (...) _mm_prefetch(...); }`
// called from another function leaves no instruction at all). That silently removed attend()'s prefetch of the
// fp16 windows and, once a kernel grew past the inliner's budget, the row prefetches of the asymmetric/hybrid key
// kernels (found with `objdump -d` after those measured 15-40 % slower in an A/B run). An `asm volatile` statement is
// never deleted, inlined or not. Everything in csrc/cpu prefetches through prefetchLine (a test checks that).
#pragma once

namespace innerq {
namespace cpu {

enum class Prefetch { L1, L2 };  // prefetcht0 (into L1 and below), prefetcht1 (into L2 and below)

template <Prefetch H>
inline void prefetchLine(const void* p) {
#if defined(__x86_64__) || defined(__i386__)
  if (H == Prefetch::L1)
    asm volatile("prefetcht0 %0" : : "m"(*static_cast<const char*>(p)));
  else
    asm volatile("prefetcht1 %0" : : "m"(*static_cast<const char*>(p)));
#else
  __builtin_prefetch(p, 0, H == Prefetch::L1 ? 3 : 2);
#endif
}

}  // namespace cpu
}  // namespace innerq
