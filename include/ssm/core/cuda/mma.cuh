#pragma once
/// \file
/// \brief One tensor-core product from registers (`mma.sync` m16n8k16, fp32 sums), for the
/// hand-written kernels that multiply small tiles: `narrow_gemm` (`ssm/linear/cuda/narrow.cuh`),
/// `shallow_gemm` (`ssm/linear/cuda/shallow.cuh`) and the state update's dt_proj
/// (`ssm/scan/cuda/state_update.cuh`).
///
/// Fragments, for the lane's group g = lane / 4 and thread in group t = lane % 4 (PTX ISA,
/// "Matrix Fragments for mma.m16n8k16"): `a` holds A's (g, 2t..2t+1), (g + 8, 2t..2t+1),
/// (g, 2t+8..2t+9) and (g + 8, 2t+8..2t+9), two 16-bit values per register; `b` holds B's
/// (2t..2t+1, g) and (2t+8..2t+9, g); `c` holds C's (g, 2t), (g, 2t+1), (g + 8, 2t), (g + 8, 2t+1).

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include <ssm/core/cuda.hpp>
#include <ssm/core/dtype.hpp>

namespace ssm::cuda {

/// \brief Whether the products on the tensor cores take activations T over weights Wt: the
/// same 16-bit type (`narrow_gemm`, `shallow_gemm`, the state update's dt_proj).
template <class T, class Wt>
inline constexpr bool mma_types = std::is_same_v<T, Wt> && (std::is_same_v<T, bf16> || std::is_same_v<T, f16>);

/// \brief Whether every row of x (pitch `ldx`) and W (pitch `ldw`) is whole, aligned 16-byte
/// pieces over K, as the kernels that load 16 bytes of a row at a time need.
/// \param K the inner size. \param x,w first elements. \param ldx,ldw row pitches in elements.
/// \return true if they are.
template <class T>
bool rows_in_pieces(std::size_t K, T const* x, std::int64_t ldx, T const* w, std::int64_t ldw) {
  return K % (16 / sizeof(T)) == 0 && (ldx * sizeof(T)) % 16 == 0 && (ldw * sizeof(T)) % 16 == 0 && aligned(x, 16) &&
         aligned(w, 16);
}

/// \brief Word `i` (0 to 3) of a 16-byte piece: the fragments of the kernels that load 16 bytes of a
/// row at a time take their pairs of values from these.
__device__ inline std::uint32_t word(uint4 const& v, int i) { return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w; }

/// \brief c += a b on the tensor cores: a (16 x 16) row-major, b (16 x 8) column-major, c fp32.
/// \tparam T `ssm::bf16` or `ssm::f16`, the type of a and b.
/// \param c the sums (in, out). \param a,b the fragments (see the file comment).
template <class T>
__device__ inline void mma_16816(float (&c)[4], std::uint32_t const (&a)[4], std::uint32_t const (&b)[2]) {
  if constexpr (std::is_same_v<T, bf16>) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    static_assert(std::is_same_v<T, f16>, "ssm::cuda::mma_16816: bf16 or f16");
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
}

}  // namespace ssm::cuda
