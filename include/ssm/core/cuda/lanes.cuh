#pragma once
/// \file
/// \brief Sums across the lanes of a warp, and loads of values other blocks of the same launch wrote.

#include <cuda_runtime.h>

#include <cstring>

namespace ssm::cuda {

/// \brief Sum over groups of `Width` consecutive lanes (a power of two up to 32); every lane of a
/// group gets its group's total. Every lane of the warp must call it.
/// \tparam Width lanes per group. \param x this lane's value. \return the group's sum.
template <int Width = 32>
__device__ inline float lanes_sum(float x) {
  static_assert(Width >= 1 && Width <= 32 && (Width & (Width - 1)) == 0, "a power of two up to 32");
#pragma unroll
  for (int offset = Width / 2; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

/// \brief Sum over the 32 lanes of a warp; every lane gets the total.
/// \param x this lane's value. \return the warp's sum.
__device__ inline float warp_sum(float x) { return lanes_sum<32>(x); }

/// \brief A load through L2 only (`ld.global.cg`), not kept in L1: for values that other blocks
/// of the same launch wrote.
/// \tparam T `float`, `ssm::f16` or `ssm::bf16`. \param p the element. \return its value.
template <class T>
__device__ inline T load_from_l2(T const* p) {
  if constexpr (sizeof(T) == 2) {
    unsigned short const bits = __ldcg(reinterpret_cast<unsigned short const*>(p));
    T v;
    std::memcpy(&v, &bits, sizeof v);
    return v;
  } else {
    static_assert(sizeof(T) == 4);
    float const f = __ldcg(reinterpret_cast<float const*>(p));
    T v;
    std::memcpy(&v, &f, sizeof v);
    return v;
  }
}

}  // namespace ssm::cuda
