#pragma once
/// \file
/// \brief The greedy choice of each row of logits on `Kokkos::Cuda`: `argmax_rows_backend` for
/// contiguous rows in aligned 16-byte pieces. Included by `ssm/model/generate.hpp` when Kokkos has
/// CUDA.
///
/// A block of 1024 threads per row. Each thread asks for all of its pieces of the row (8 at a
/// time; 6 or 7 pieces of a 50,280-token row in a 16-bit type) before it looks at any, turns each
/// value into the portable path's key (`ssm::detail::logit_key`: the value's order above the
/// complement of its token, so that ties go to the smaller token and NaN loses to every number)
/// and keeps the largest; the block then takes the largest of its threads' keys through warp
/// shuffles and shared memory. The portable path's team of 512 threads reads its runs of 8 values
/// one run after another, a chain of 12 round trips to memory per thread for such a row.
///
/// Launched as a programmatic dependent, so that its blocks are resident when the product that
/// writes the logits (lm_head) ends.

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include <ssm/core/cuda.hpp>
#include <ssm/core/cuda/pieces.cuh>
#include <ssm/core/dtype.hpp>
#include <ssm/core/views.hpp>

namespace ssm {

namespace cuda::detail {

/// \brief Threads of a row's block.
inline constexpr int argmax_threads = 1024;
/// \brief 16-byte pieces a thread has in flight at once.
inline constexpr int argmax_pieces_in_flight = 8;

/// \brief The larger of two keys. \param a,b keys. \return the larger.
__device__ __forceinline__ std::uint64_t larger_key(std::uint64_t a, std::uint64_t b) { return a > b ? a : b; }

/// \brief tokens[b tokens_stride] = the token of the largest key of row b (-1 if the row has
/// no number).
/// Grid: one block of `argmax_threads` per row. Rows are `ld` values apart and 16-byte aligned.
/// \tparam T `float`, `ssm::f16` or `ssm::bf16`.
template <class T>
__global__ void __launch_bounds__(argmax_threads)
    argmax_rows_kernel(T const* __restrict__ logits, std::int64_t ld, int V, std::int32_t* __restrict__ tokens,
                       std::int64_t tokens_stride) {
  constexpr int P = piece_values<T>;
  int const b = static_cast<int>(blockIdx.x), tid = static_cast<int>(threadIdx.x);
  T const* const row = logits + b * ld;
  uint4 const* const pieces = reinterpret_cast<uint4 const*>(row);
  int const whole = V / P;  // whole pieces; the last V mod P values are read one by one
  std::uint64_t key = 0;
  wait_for_previous_kernel();  // launched as a programmatic dependent: the logits come from the kernel before
  for (int p0 = tid; p0 < whole; p0 += argmax_pieces_in_flight * argmax_threads) {
    uint4 raw[argmax_pieces_in_flight];
#pragma unroll
    for (int i = 0; i < argmax_pieces_in_flight; ++i) {
      int const p = p0 + i * argmax_threads;
      raw[i] = p < whole ? pieces[p] : make_uint4(0u, 0u, 0u, 0u);
    }
#pragma unroll
    for (int i = 0; i < argmax_pieces_in_flight; ++i) {
      int const p = p0 + i * argmax_threads;
      if (p >= whole) break;
      float values[P];
      widen_piece<T>(raw[i], values);
#pragma unroll
      for (int j = 0; j < P; ++j) key = larger_key(key, ssm::detail::logit_key(values[j], p * P + j));
    }
  }
  for (int v = whole * P + tid; v < V; v += argmax_threads) key = larger_key(key, ssm::detail::logit_key(to_float(row[v]), v));

  for (int offset = 16; offset > 0; offset /= 2) key = larger_key(key, __shfl_xor_sync(0xFFFFFFFFu, key, offset));
  __shared__ std::uint64_t warp_keys[argmax_threads / 32];
  if (tid % 32 == 0) warp_keys[tid / 32] = key;
  __syncthreads();
  if (tid < 32) {
    key = warp_keys[tid];  // argmax_threads / 32 == 32 warps
    for (int offset = 16; offset > 0; offset /= 2) key = larger_key(key, __shfl_xor_sync(0xFFFFFFFFu, key, offset));
    if (tid == 0) tokens[b * tokens_stride] = ssm::detail::key_token(key);
  }
}

}  // namespace cuda::detail

/// \brief `argmax_rows` on `Kokkos::Cuda`: the kernel above for rows of stride 1 that start on
/// 16-byte boundaries (a row's last V mod 8 or 4 values one by one), the portable team per row
/// otherwise.
template <>
struct argmax_rows_backend<Kokkos::Cuda> {
  /// \brief The greedy choice of each row on `space` (asynchronous; see `argmax_rows`).
  /// \tparam T `float`, `ssm::f16` or `ssm::bf16`. \tparam MemSpace accessible from `Kokkos::Cuda`.
  /// \param space the instance whose stream runs the kernel.
  /// \param logits (B, V), B >= 1. \param tokens (B) out.
  /// \throws ssm::error if CUDA refuses the launch.
  template <class T, class MemSpace>
  static void run(Kokkos::Cuda const& space, view2<const T, MemSpace> const& logits,
                  view1<std::int32_t, MemSpace> const& tokens) {
    static_assert(cuda::detail::argmax_threads == 32 * 32, "the block's second reduction is one warp");
    std::size_t const B = logits.extent(0), V = logits.extent(1);
    std::size_t const ld = B > 1 ? logits.stride(0) : 0;  // one row: its pitch is never used
    bool const pieces = logits.stride(1) == 1 && cuda::piece_aligned(logits.data()) && ld * sizeof(T) % 16 == 0 &&
                        V < (std::size_t{1} << 31) && B < (std::size_t{1} << 31);
    if (!pieces) {
      ssm::detail::argmax_rows_portable(space, logits, tokens);
      return;
    }
    cuda::launch(cuda::detail::argmax_rows_kernel<T>, dim3(static_cast<unsigned>(B)), dim3(cuda::detail::argmax_threads),
                 0, cuda::stream(space), "ssm::argmax_rows::cuda", logits.data(), static_cast<std::int64_t>(ld),
                 static_cast<int>(V), tokens.data(), static_cast<std::int64_t>(tokens.stride(0)));
  }
};

}  // namespace ssm
