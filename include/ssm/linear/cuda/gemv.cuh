#pragma once
/// \file
/// \brief A weight-streaming matrix-vector product on `Kokkos::Cuda` for decoding: up to
/// `gemv_max_rows` rows of activations against a whole weight matrix read once.
///
/// In a decoding step each weight is used by B <= 8 rows only, so the product is bound by reading
/// the weights; what matters is having enough 16-byte loads in flight on every multiprocessor.
/// Each warp computes one output feature (or a slice of K of one when there are few outputs, so
/// that a short matrix such as x_proj's still spreads over the whole GPU): its lanes read
/// consecutive 16-byte pieces of the weight row, a batch in flight while the previous one is
/// multiplied, and the matching pieces of every activation row (small enough to stay in L1).
/// Each lane accumulates in fp32; a warp reduction, then the warps of a feature in order through
/// shared memory, give the same sums on every run. The body, `kernels::gemv_block`, takes a
/// prologue, an activation loader and a store, so that a decoding step can fuse its neighbours
/// into the product (`ssm/blocks/cuda/mamba_step.cuh`).

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include <ssm/core/cuda.hpp>
#include <ssm/core/cuda/lanes.cuh>
#include <ssm/core/cuda/pieces.cuh>
#include <ssm/core/dtype.hpp>

namespace ssm::cuda {

/// \brief The most activation rows the matrix-vector kernel takes (more go to cuBLASLt).
inline constexpr int gemv_max_rows = 8;

namespace kernels {

/// \brief Threads per block of the matrix-vector kernel.
inline constexpr int gemv_threads = 256;

/// \brief `Count` consecutive activations at `p` widened to fp32, with 16-byte loads (`p`
/// aligned), after `wait_for_previous_kernel`: the kernel before wrote them (`load_after_wait`).
template <class T, int Count>
__device__ inline void load_float(T const* p, float (&out)[Count]) {
  static_assert(Count * sizeof(T) % 16 == 0, "whole 16-byte pieces");
  constexpr int per_piece = 16 / sizeof(T);
#pragma unroll
  for (int i = 0; i < Count / per_piece; ++i) {
    float piece[per_piece];
    widen_piece<T>(load_after_wait(reinterpret_cast<uint4 const*>(p) + i), piece);
#pragma unroll
    for (int j = 0; j < per_piece; ++j) out[i * per_piece + j] = piece[j];
  }
}

/// \brief The first of the `Rows` consecutive outputs that the calling warp computes in
/// `gemv_block`, with K split `split` ways (its lanes below `Rows * M` store them, row r = lane / M
/// and activation row m = lane % M, in the warps of slice 0: warp % split == 0).
/// \tparam Rows outputs per warp. \tparam Threads threads per block.
/// \param split warps per output. \return the output.
template <int Rows, int Threads = gemv_threads>
__device__ inline int gemv_first_output(int split) {
  int const warp = static_cast<int>(threadIdx.x) / 32, groups_per_block = (Threads / 32) / split;
  return (static_cast<int>(blockIdx.x) * groups_per_block + warp / split) * Rows;
}

/// \brief The body of the matrix-vector kernels: one block's outputs of y (M, N) = x (M, K) W^T,
/// fp32 sums; K a multiple of 16 / sizeof(Wt).
///
/// A warp computes `Rows` consecutive outputs (sharing each activation load between them), or,
/// with `split` > 1, a 1/split slice of K of them, the `split` warps of a group adding their sums
/// in order through shared memory. Every thread of the block must call it. The three callables
/// let a kernel fuse work around the product:
/// - `prologue()` runs after the first batch of weights is requested and before any activation
///   is read: it must wait for the previous kernel (`wait_for_previous_kernel`), and may prepare
///   the activations (every thread calls it; it must end with `__syncthreads()` if it writes
///   shared memory);
/// - `activations(m, p, out)` gives the 16 / sizeof(Wt) activations of row m at piece p, widened;
/// - `store(m, n, sum)` takes each finished output, called by one thread per (m, n).
/// \tparam M activation rows (1 to 8). \tparam Rows outputs per warp (M * Rows <= 32).
/// \tparam Depth 16-byte pieces per lane and row in each batch of loads.
/// \tparam Threads threads per block, a multiple of 32 `split` (`gemv_threads` unless a fused
/// kernel chooses otherwise). \tparam Wt weight type.
template <int M, int Rows, int Depth, int Threads = gemv_threads, class Wt, class Prologue, class Activations,
          class Store>
__device__ inline void gemv_block(Wt const* __restrict__ w, std::int64_t ldw, int N, int K, int split,
                                  Prologue&& prologue, Activations&& activations, Store&& store) {
  static_assert(M * Rows <= 32, "one lane stores each of a warp's outputs");
  constexpr int vec = 16 / sizeof(Wt);  // weights per 16-byte load
  int const warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  int const n0 = gemv_first_output<Rows, Threads>(split);
  int const part = warp % split;
  float acc[Rows][M] = {};
  // Weights are read in batches of `depth` pieces per lane, the next batch in flight while the
  // current one is multiplied. The first batch is requested before waiting for the kernel that
  // writes x: launched as a programmatic dependent, this kernel starts streaming its weights
  // while that kernel is still finishing.
  constexpr int depth = Depth;
  int const pieces = K / vec, stride = 32 * split;
  Wt const* rows[Rows];
#pragma unroll
  for (int r = 0; r < Rows; ++r) rows[r] = w + static_cast<std::int64_t>(min(n0 + r, N - 1)) * ldw;
  auto fetch = [&](int first, uint4 (&batch)[depth][Rows]) {
#pragma unroll
    for (int i = 0; i < depth; ++i) {
      int const p = first + i * stride;
#pragma unroll
      for (int r = 0; r < Rows; ++r)
        batch[i][r] = p < pieces ? __ldg(reinterpret_cast<uint4 const*>(rows[r] + static_cast<std::int64_t>(p) * vec))
                                 : make_uint4(0u, 0u, 0u, 0u);
    }
  };
  bool const active = n0 < N;
  uint4 current[depth][Rows];
  int first = part * 32 + lane;
  allow_next_kernel();
  if (active) fetch(first, current);
  prologue();
  for (; active && first < pieces; first += depth * stride) {
    uint4 next[depth][Rows];
    fetch(first + depth * stride, next);
#pragma unroll
    for (int i = 0; i < depth; ++i) {
      int const p = first + i * stride;
      if (p >= pieces) break;
      float wv[Rows][vec];
#pragma unroll
      for (int r = 0; r < Rows; ++r) widen_piece<Wt>(current[i][r], wv[r]);
#pragma unroll
      for (int m = 0; m < M; ++m) {
        float xv[vec];
        activations(m, p, xv);
#pragma unroll
        for (int r = 0; r < Rows; ++r)
#pragma unroll
          for (int j = 0; j < vec; ++j) acc[r][m] += wv[r][j] * xv[j];
      }
    }
#pragma unroll
    for (int i = 0; i < depth; ++i)
#pragma unroll
      for (int r = 0; r < Rows; ++r) current[i][r] = next[i][r];
  }
#pragma unroll
  for (int r = 0; r < Rows; ++r)
#pragma unroll
    for (int m = 0; m < M; ++m) acc[r][m] = warp_sum(acc[r][m]);
  __shared__ float partial[Threads / 32][Rows][M];
  if (lane == 0)
#pragma unroll
    for (int r = 0; r < Rows; ++r)
#pragma unroll
      for (int m = 0; m < M; ++m) partial[warp][r][m] = acc[r][m];
  __syncthreads();
  if (part == 0 && lane < Rows * M) {
    int const r = lane / M, m = lane % M, n = n0 + r;
    if (n < N) {
      float sum = 0.0f;
      for (int s = 0; s < split; ++s) sum += partial[warp + s][r][m];
      store(m, n, sum);
    }
  }
}

/// \brief y (M, N) = x (M, K) W^T (N, K) + b, fp32 sums; K a multiple of 16 / sizeof(Wt).
///
/// Grid: ceil(N / (Rows * 8 / split)) blocks of 256 threads; see `gemv_block`. x is not
/// `__restrict__`: the kernel before writes it (see `wait_for_previous_kernel`).
/// \tparam M activation rows (1 to 8). \tparam Rows outputs per warp (M * Rows <= 32).
/// \tparam Depth 16-byte pieces per lane and row in each batch of loads.
/// \tparam T activation type. \tparam Wt weight type.
template <int M, int Rows, int Depth, class T, class Wt>
__global__ void __launch_bounds__(gemv_threads)
    gemv(T const* x, std::int64_t ldx, Wt const* __restrict__ w, std::int64_t ldw,
         Wt const* __restrict__ bias, T* __restrict__ y, std::int64_t ldy, int N, int K, int split) {
  constexpr int vec = 16 / sizeof(Wt);
  gemv_block<M, Rows, Depth>(
      w, ldw, N, K, split, [] { wait_for_previous_kernel(); },
      [&](int m, int p, float (&out)[vec]) { load_float<T, vec>(x + m * ldx + static_cast<std::int64_t>(p) * vec, out); },
      [&](int m, int n, float sum) {
        if (bias) sum += to_float(bias[n]);
        y[m * ldy + n] = from_float<T>(sum);
      });
}

}  // namespace kernels

/// \brief Whether the kernel can exist for these types: a piece of weights and the matching
/// activations are both whole 16-byte loads.
template <class T, class Wt>
inline constexpr bool gemv_types = (16 / sizeof(Wt)) * sizeof(T) % 16 == 0;

/// \brief Whether `gemv` takes a product of these sizes and addresses: M <= 8 and whole, aligned
/// 16-byte pieces of every row.
/// \param M,K sizes. \param x,w first elements. \param ldx,ldw row pitches in elements.
/// \return true if the kernel applies.
template <class T, class Wt>
  requires gemv_types<T, Wt>
bool gemv_applies(std::size_t M, std::size_t K, T const* x, std::int64_t ldx, Wt const* w, std::int64_t ldw) {
  constexpr std::size_t vec = 16 / sizeof(Wt);
  bool const whole = K % vec == 0;
  bool const pitched = (ldx * sizeof(T)) % 16 == 0 && (ldw * sizeof(Wt)) % 16 == 0;
  return M >= 1 && M <= gemv_max_rows && K > 0 && whole && pitched && aligned(x, 16) && aligned(w, 16);
}

/// \brief How the matrix-vector kernel covers N outputs: warps per output and loads per batch.
struct gemv_shape {
  int split;  ///< warps per output, each over a slice of K (1, 2, 4 or 8)
  int depth;  ///< 16-byte pieces per lane in a batch of loads (2 or 4)
};

/// \brief The shape for N outputs on the current device: one output per warp, and K split over
/// as many warps as it takes to have 32 warps per multiprocessor (at most 8), in batches of 2
/// loads, or 4 when split 8 ways. Measured on an H200 with `bench_cuda_linear` (back-to-back
/// launches in a graph, 2.8B shapes): in_proj 15.6 µs, out_proj 8.2 (split 2), x_proj 2.2
/// (split 8), lm_head 63 (97% of the copy rate); two outputs per warp and deeper batches were
/// slower at every shape.
/// \param N output features. \return the shape.
inline gemv_shape gemv_shape_for(int N) {
  long const wanted = 32L * multiprocessors();
  int split = 1;
  while (split < 8 && static_cast<long>(N) * split < wanted) split *= 2;
  return {split, split == 8 ? 4 : 2};
}

namespace detail {

/// \brief Enqueue the kernel with `Rows` outputs per warp, batches of `Depth` loads, and K split
/// over `split` warps (1, 2, 4 or 8); `gemv` below chooses these, benchmarks try others.
/// \tparam Rows outputs per warp. \tparam Depth pieces per lane and row in a batch.
template <int Rows, int Depth, class T, class Wt>
void gemv_with(cudaStream_t stream, int split, int M, int N, int K, T const* x, std::int64_t ldx, Wt const* w,
               std::int64_t ldw, Wt const* bias, T* y, std::int64_t ldy) {
  int const outputs_per_block = Rows * (kernels::gemv_threads / 32) / split;
  unsigned const blocks = blocks_for(static_cast<std::size_t>(N), static_cast<std::size_t>(outputs_per_block));
  // Launched as a programmatic dependent of the kernel before it, so that its weights start
  // streaming while that kernel finishes.
  auto launch_rows = [&](auto rows) {
    constexpr int m = decltype(rows)::value;
    launch(kernels::gemv<m, Rows, Depth, T, Wt>, dim3(blocks), dim3(kernels::gemv_threads), 0, stream,
           "ssm::linear (CUDA gemv)", x, ldx, w, ldw, bias, y, ldy, N, K, split);
  };
  with_constant<1, 2, 3, 4, 5, 6, 7, 8>(M, launch_rows);
}

}  // namespace detail

/// \brief Enqueue y = x W^T + b on `stream` (see the file comment); `gemv_applies` must hold.
/// \param stream the stream. \param M,N,K sizes. \param x (M, K) rows `ldx` apart.
/// \param w (N, K) rows `ldw` apart. \param bias (N) or null. \param y (M, N) rows `ldy` apart.
/// \param ldx,ldw,ldy row pitches in elements.
template <class T, class Wt>
  requires gemv_types<T, Wt>
void gemv(cudaStream_t stream, int M, int N, int K, T const* x, std::int64_t ldx, Wt const* w, std::int64_t ldw,
          Wt const* bias, T* y, std::int64_t ldy) {
  gemv_shape const shape = gemv_shape_for(N);
  auto with = [&](auto depth) {
    detail::gemv_with<1, decltype(depth)::value>(stream, shape.split, M, N, K, x, ldx, w, ldw, bias, y, ldy);
  };
  with_constant<2, 4>(shape.depth, with);
}

}  // namespace ssm::cuda
