#pragma once
/// \file
/// \brief A product with a short K and many outputs on `Kokkos::Cuda`: dt_proj of a decoding step
/// of many sequences (y (M, N) = x (M, K) W^T with K ~ 160, N ~ 5000, M up to 128).
///
/// The mirror of `narrow_gemm` (`narrow.cuh`): there the sum is long and the outputs few, here
/// every output's sum fits in one warp's registers. A warp owns 16 rows x 16 outputs; a lane loads
/// 16 bytes of a row at a time (8 consecutive values of K), all of K at once: its weights before
/// it waits for the previous kernel (nothing before a product writes its weights), its rows of x
/// after. The tensor cores multiply them (`mma.sync` m16n8k16, fp32 sums) in the order of the
/// 16-byte pieces, as `narrow_gemm` does; the four warps of a block take four tiles of rows over
/// the same 16 outputs, so that their weights come from L1 after the first. One launch, no
/// reduction, the same sums on every run, rounded once to the storage type.
///
/// What it is for: cuBLASLt's dt_proj is an ordinary launch, so the state update that follows it
/// cannot start before it has finished. This kernel is a programmatic dependent that lets the
/// next kernel start at once, and the staged state update asks for its state before it waits
/// (`selective_state_update_params::state_settled`): the state's copies then overlap dt_proj.
///
/// Measured on an H200 (2.8B, bf16, dt_proj 5120 x 160 reading x_proj's rows of 192), decoding
/// with both changes against without, the binaries alternating twice in one call, ms per step:
/// 8 sequences 2.796 → 2.771, 16 sequences 2.928 → 2.841, 64 sequences 4.004 → 3.892; then, with
/// x_proj's launch made ordinary to fix a race (`narrow.cuh`), 2.792 → 2.772, 2.925 → 2.892 and
/// 4.003 → 3.961 against the code before both changes (which had the race; x_proj is a
/// programmatic dependent again since its cause was found: `wait_for_previous_kernel`). Alone, in a
/// graph of back-to-back launches (`bench_cuda_linear`), it takes 1.90, 2.14 and 3.71 µs at 8, 16
/// and 64 rows, against cuBLASLt's 2.89, 2.92 and 3.05: slower at 64 rows alone, faster in the
/// step. Registers only for the slices K needs (5 at K = 160) matter: with room for 8 slices
/// (154 registers, three blocks a multiprocessor, leaving less room for the state update's early
/// blocks) the steps took 2.790, 2.883 and 3.904 ms; 32 outputs a warp instead of 16 (half the
/// blocks) 2.782, 2.859 and 3.888.

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include <ssm/core/cuda.hpp>
#include <ssm/core/cuda/mma.cuh>
#include <ssm/core/dtype.hpp>

namespace ssm::cuda {

/// \brief The longest K (the sum) the kernel takes: a warp holds all of it in registers.
inline constexpr int shallow_max_depth = 256;
/// \brief The most rows (M) the kernel takes; more rows reuse the weights well in cuBLASLt.
inline constexpr int shallow_max_rows = 128;

namespace kernels {

/// \brief Threads per block: four warps, each a tile of 16 rows over the block's 16 outputs.
inline constexpr int shallow_threads = 128;
/// \brief Outputs of a block (two n8 fragments).
inline constexpr int shallow_tile_outputs = 16;

/// \brief y (M, N) = x (M, K) W^T (N, K) + b with fp32 sums; K a multiple of 8, at most
/// 32 `slices` (`shallow_max_depth` at most).
///
/// Grid (ceil(N / 16), ceil(M / 64)) blocks of 128 threads. Rows and outputs past the ends read the
/// last ones and are not stored. Every thread waits for the previous kernel, so that this one
/// does not finish before it. x is not `__restrict__`: the kernel before writes it (see
/// `wait_for_previous_kernel`).
/// \tparam slices 32-wide slices of K the lanes hold (the last ones may be past K: zero).
/// \tparam T `ssm::bf16` or `ssm::f16`.
template <int slices, class T>
__global__ void __launch_bounds__(shallow_threads)
    shallow_gemm(T const* x, std::int64_t ldx, T const* __restrict__ w, std::int64_t ldw,
                 T const* __restrict__ bias, T* __restrict__ y, std::int64_t ldy, int M, int N, int K) {
  constexpr int NT = shallow_tile_outputs / 8;  // n8 fragments
  int const warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  int const g = lane / 4, t = lane % 4;  // the fragments' group and thread in group
  int const n0 = static_cast<int>(blockIdx.x) * shallow_tile_outputs;
  int const m0 = (static_cast<int>(blockIdx.y) * (shallow_threads / 32) + warp) * 16;
  allow_next_kernel();

  // Slice c of K is K[32 c, 32 c + 32); the lane's piece is K[32 c + 8 t, + 8), whole or absent.
  auto piece = [&](T const* row, int c, auto load) {
    int const k = 32 * c + 8 * t;
    return k < K ? load(reinterpret_cast<uint4 const*>(row + k)) : make_uint4(0u, 0u, 0u, 0u);
  };
  auto const weights = [](uint4 const* p) { return __ldg(p); };
  auto const activations = [](uint4 const* p) { return load_after_wait(p); };  // the kernel before wrote them
  bool const has_rows = m0 < M;  // the same for the whole warp
  uint4 wb[slices][NT];
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    T const* const row = w + static_cast<std::int64_t>(min(n0 + 8 * j + g, N - 1)) * ldw;
#pragma unroll
    for (int c = 0; c < slices; ++c) wb[c][j] = has_rows ? piece(row, c, weights) : make_uint4(0u, 0u, 0u, 0u);
  }
  wait_for_previous_kernel();
  if (!has_rows) return;
  uint4 xa[slices][2];  // rows g and g + 8 of the warp's tile
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    T const* const row = x + static_cast<std::int64_t>(min(m0 + 8 * h + g, M - 1)) * ldx;
#pragma unroll
    for (int c = 0; c < slices; ++c) xa[c][h] = piece(row, c, activations);
  }
  float acc[NT][4] = {};
#pragma unroll
  for (int c = 0; c < slices; ++c) {
    if (32 * c >= K) break;
#pragma unroll
    for (int s = 0; s < 2; ++s) {
      std::uint32_t const a[4] = {word(xa[c][0], 2 * s), word(xa[c][1], 2 * s), word(xa[c][0], 2 * s + 1),
                                  word(xa[c][1], 2 * s + 1)};
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        std::uint32_t const b[2] = {word(wb[c][j], 2 * s), word(wb[c][j], 2 * s + 1)};
        mma_16816<T>(acc[j], a, b);
      }
    }
  }
  // acc[j]: rows g and g + 8, outputs 8 j + 2 t and 8 j + 2 t + 1 of the tile
#pragma unroll
  for (int j = 0; j < NT; ++j)
#pragma unroll
    for (int v = 0; v < 4; ++v) {
      int const m = m0 + g + 8 * (v / 2), n = n0 + 8 * j + 2 * t + v % 2;
      if (m < M && n < N) {
        float const sum = bias ? acc[j][v] + to_float(bias[n]) : acc[j][v];
        y[static_cast<std::int64_t>(m) * ldy + n] = from_float<T>(sum);
      }
    }
}

}  // namespace kernels

/// \brief Whether the kernel exists for these types: 16-bit floats on the tensor cores, the same
/// type for activations and weights.
template <class T, class Wt>
inline constexpr bool shallow_types = mma_types<T, Wt>;

/// \brief Whether `shallow_gemm` takes a product of these sizes and addresses: at most
/// `shallow_max_rows` rows, K at most `shallow_max_depth` and at most N / 4 (a short sum: the
/// tiles of cuBLASLt fit the rest), and whole, aligned 16-byte pieces of every row.
/// \param M,N,K sizes. \param x,w first elements. \param ldx,ldw row pitches in elements.
/// \return true if the kernel applies.
template <class T>
bool shallow_applies(std::size_t M, std::size_t N, std::size_t K, T const* x, std::int64_t ldx, T const* w,
                     std::int64_t ldw) {
  bool const shape = M >= 1 && M <= static_cast<std::size_t>(shallow_max_rows) && K >= 1 &&
                     K <= static_cast<std::size_t>(shallow_max_depth) && 4 * K <= N &&
                     N <= std::size_t{1} << 30;
  return shape && rows_in_pieces(K, x, ldx, w, ldw);
}

/// \brief Enqueue y = x W^T + b on `stream` as a programmatic dependent of the kernel before it
/// (see the file comment); `shallow_applies` must hold.
/// \param stream the stream. \param M,N,K sizes. \param x (M, K) rows `ldx` apart.
/// \param w (N, K) rows `ldw` apart. \param bias (N) or null. \param y (M, N) rows `ldy` apart.
/// \param ldx,ldw,ldy row pitches in elements.
template <class T>
  requires shallow_types<T, T>
void shallow_gemm(cudaStream_t stream, int M, int N, int K, T const* x, std::int64_t ldx, T const* w,
                  std::int64_t ldw, T const* bias, T* y, std::int64_t ldy) {
  // the fewest 32-wide slices of K among the instantiations: registers only for what K needs
  int const needed = (K + 31) / 32;
  int const slices = needed <= 2 ? 2 : needed <= 5 ? needed : 8;
  with_constant<2, 3, 4, 5, 8>(slices, [&](auto count) {
    constexpr int S = decltype(count)::value;
    dim3 const grid(blocks_for(static_cast<std::size_t>(N), kernels::shallow_tile_outputs),
                    blocks_for(static_cast<std::size_t>(M), 16 * (kernels::shallow_threads / 32)));
    launch(kernels::shallow_gemm<S, T>, grid, dim3(kernels::shallow_threads), 0, stream,
           "ssm::linear (CUDA shallow_gemm)", x, ldx, w, ldw, bias, y, ldy, M, N, K);
  });
}

}  // namespace ssm::cuda
