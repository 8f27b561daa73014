// dispatch.cuh - THE place where runtime format values become template arguments. Only the combinations
// listed here are instantiated (bits 2/3/4/8 x G 32/64/128); head dim and GQA ratio stay runtime values
// because templating them multiplies the instantiations (build time on 5 architectures) for no gain in
// these memory-bound kernels.
#pragma once
#include <type_traits>
#include "compat.cuh"

namespace innerq {
namespace IQ_DEV {

template <int V>
using IntC = std::integral_constant<int, V>;

// Calls f(IntC<bits>, IntC<G>) and returns true, or returns false for an unsupported pair.
template <class F>
bool dispatchBitsGroup(int bits, int groupSize, F&& f) {
#define IQ_DISPATCH_CASE(B, G) \
  if (bits == B && groupSize == G) { f(IntC<B>{}, IntC<G>{}); return true; }
#define IQ_DISPATCH_BITS(B) IQ_DISPATCH_CASE(B, 32) IQ_DISPATCH_CASE(B, 64) IQ_DISPATCH_CASE(B, 128)
  IQ_DISPATCH_BITS(2)
  IQ_DISPATCH_BITS(3)
  IQ_DISPATCH_BITS(4)
  IQ_DISPATCH_BITS(8)
#undef IQ_DISPATCH_BITS
#undef IQ_DISPATCH_CASE
  return false;
}

}  // namespace dev
}  // namespace innerq
