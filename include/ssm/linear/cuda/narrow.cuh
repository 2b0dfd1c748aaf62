#pragma once
/// \file
/// \brief A product with few outputs and a long K for many rows on `Kokkos::Cuda`: x_proj of a
/// decoding step of 9 to 128 sequences (y (M, N) = x (M, K) W^T with N ~ 200, K ~ 5000).
///
/// Such a product is too short for cuBLASLt's tiles: with split-K it takes a second launch to add
/// the slices, and the pair ran far below the copy rate (2.8B x_proj at 64 rows on an H200, in
/// Nsight Compute: 8.3 µs plus 3.5 µs for 2.6 MB). Here a cluster of blocks shares one tile of
/// 16 rows x 32 outputs: each warp of the cluster takes 32-wide slices of K, interleaved, with 4
/// of them in flight, and multiplies them on the tensor cores (`mma.sync` m16n8k16, fp32 sums)
/// straight from 16-byte loads; the warps of a block add their sums in order through shared
/// memory, and the blocks of the cluster theirs in order through distributed shared memory, each
/// block finishing a share of the tile. One launch, no workspace, the same sums on every run,
/// rounded once to the storage type.
///
/// Measured on an H200 (2.8B, bf16, x_proj 192 x 5120): the decoding step went from 4.21 to 4.13
/// ms at 64 sequences and from 3.174 to 3.136 at 16 (1 and 8 sequences keep the matrix-vector
/// kernel). Alone in a CUDA graph of back-to-back launches (`bench_cuda_linear`) it takes 5.7 µs
/// at 16 rows (cuBLASLt 6.8) and 8.4 at 64 (cuBLASLt 7.0, one launch there without the step's
/// neighbours): still far from the copy rate, with 96 blocks (12 tiles of 32 x 32, clusters of
/// 8) and two or three 32-wide slices per warp, two in flight, each a round trip to memory.
///
/// Then a sweep of tiles (16 or 32 rows), slices in flight per warp (2, 3 or 4) and cluster sizes
/// (4, 8 or 16) in one run of `bench_cuda_linear --variants`: 4 slices in flight and tiles of 16
/// rows took 4.09 µs at 16 rows (clusters of 8; 6.42 with 2 in flight) and 5.12 at 64 (clusters
/// of 4; 7.09 before, cuBLASLt 7.11). At 154 registers one block of this kernel fits an SM, and
/// clusters of 8 at 64 rows (192 blocks) took 8.33 µs: the grid must be resident at once, hence
/// the cluster size from the occupancy (`narrow_cluster_for`). Clusters of 16 were never the
/// fastest. The decoding step with this kernel against the one before it had any (`736086b`),
/// the binaries alternating in one call: 3.176 → 2.977 ms at 16 sequences, 4.181 → 4.057 at 64.
///
/// A lane's 16-byte piece of a row holds 8 consecutive values of K; the fragments of the two
/// products of a 32-wide slice take its words 0-1 and 2-3. That visits K in another order than
/// the fragment layout's, the same for x and W, so the products are unchanged.

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include <ssm/core/cuda.hpp>
#include <ssm/core/cuda/cluster.cuh>
#include <ssm/core/cuda/mma.cuh>
#include <ssm/core/dtype.hpp>
#include <ssm/linear/cuda/gemv.cuh>

namespace ssm::cuda {

/// \brief The most outputs (N) the kernel takes.
inline constexpr int narrow_max_outputs = 256;
/// \brief The most rows (M) the kernel takes; more rows reuse the weights well in cuBLASLt.
inline constexpr int narrow_max_rows = 128;
/// \brief The most blocks of a cluster, which split K between them (the portable limit).
inline constexpr int narrow_max_cluster = 8;

namespace kernels {

/// \brief Threads per block of the kernel.
inline constexpr int narrow_threads = 256;
/// \brief Outputs of a block's tile (four n8 fragments).
inline constexpr int narrow_tile_outputs = 32;

/// \brief y (M, N) = x (M, K) W^T (N, K) + b with fp32 sums; K a multiple of 8.
///
/// Grid (S, ceil(N / 32), ceil(M / (16 MT))) in clusters of (S, 1, 1) blocks of 256 threads: a
/// cluster per tile of 16 MT rows x 32 outputs, its S blocks (1 to 16) splitting K (see the file
/// comment). Rows and outputs past the ends read the last ones and are not stored.
/// x is not `__restrict__`: the kernel before writes it (see `wait_for_previous_kernel`).
/// \tparam MT m16 fragments of rows per tile (1 or 2). \tparam Depth slices a warp has in flight.
/// \tparam T `ssm::bf16` or `ssm::f16`.
template <int MT, int Depth, class T>
__global__ void __launch_bounds__(narrow_threads)
    narrow_gemm(T const* x, std::int64_t ldx, T const* __restrict__ w, std::int64_t ldw,
                T const* __restrict__ bias, T* __restrict__ y, std::int64_t ldy, int M, int N, int K) {
  constexpr int NT = narrow_tile_outputs / 8, warps = narrow_threads / 32;
  constexpr int rows = 16 * MT, tile = rows * narrow_tile_outputs;
  int const S = cluster_blocks(), rank = cluster_rank();
  int const warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  int const g = lane / 4, t = lane % 4;  // the fragments' group and thread in group
  int const m0 = static_cast<int>(blockIdx.z) * rows, n0 = static_cast<int>(blockIdx.y) * narrow_tile_outputs;

  T const* xr[MT][2];  // rows g and g + 8 of each m16 fragment
  T const* wr[NT];     // output g of each n8 fragment
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) xr[i][h] = x + static_cast<std::int64_t>(min(m0 + 16 * i + 8 * h + g, M - 1)) * ldx;
#pragma unroll
  for (int j = 0; j < NT; ++j) wr[j] = w + static_cast<std::int64_t>(min(n0 + 8 * j + g, N - 1)) * ldw;

  // Slice c of K is K[32 c, 32 c + 32); the lane's piece is K[32 c + 8 t, + 8), whole or absent.
  int const slices = (K + 31) / 32, stride = S * warps;
  auto fetch_w = [&](int c, uint4 (&wb)[NT]) {
    int const k = 32 * c + 8 * t;
#pragma unroll
    for (int j = 0; j < NT; ++j) wb[j] = k < K ? __ldg(reinterpret_cast<uint4 const*>(wr[j] + k)) : make_uint4(0u, 0u, 0u, 0u);
  };
  auto fetch_x = [&](int c, uint4 (&xa)[MT][2]) {
    int const k = 32 * c + 8 * t;
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h)
        xa[i][h] = k < K ? load_after_wait(reinterpret_cast<uint4 const*>(xr[i][h] + k)) : make_uint4(0u, 0u, 0u, 0u);
  };

  // The warp's slices are c0, c0 + stride, ...: Depth of them in flight, each multiplied, then
  // its registers reloaded with the slice Depth ahead.
  float acc[MT][NT][4] = {};
  int const c0 = rank * warps + warp;
  uint4 wb[Depth][NT], xa[Depth][MT][2];
  allow_next_kernel();
#pragma unroll
  for (int d = 0; d < Depth; ++d) fetch_w(c0 + d * stride, wb[d]);  // the weights first
  wait_for_previous_kernel();
#pragma unroll
  for (int d = 0; d < Depth; ++d) fetch_x(c0 + d * stride, xa[d]);
  for (int c = c0; c < slices; c += Depth * stride) {
#pragma unroll
    for (int d = 0; d < Depth; ++d) {
      int const slice = c + d * stride;
      if (slice >= slices) break;
#pragma unroll
      for (int s = 0; s < 2; ++s) {
#pragma unroll
        for (int i = 0; i < MT; ++i) {
          std::uint32_t const a[4] = {word(xa[d][i][0], 2 * s), word(xa[d][i][1], 2 * s),
                                      word(xa[d][i][0], 2 * s + 1), word(xa[d][i][1], 2 * s + 1)};
#pragma unroll
          for (int j = 0; j < NT; ++j) {
            std::uint32_t const b[2] = {word(wb[d][j], 2 * s), word(wb[d][j], 2 * s + 1)};
            mma_16816<T>(acc[i][j], a, b);
          }
        }
      }
      fetch_w(slice + Depth * stride, wb[d]);
      fetch_x(slice + Depth * stride, xa[d]);
    }
  }

  // The warps' sums, added in order, then the cluster's blocks', in order.
  __shared__ float partial[warps][rows][narrow_tile_outputs];
  __shared__ float block_sum[tile];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      int const r = 16 * i + g, col = 8 * j + 2 * t;
      partial[warp][r][col] = acc[i][j][0];
      partial[warp][r][col + 1] = acc[i][j][1];
      partial[warp][r + 8][col] = acc[i][j][2];
      partial[warp][r + 8][col + 1] = acc[i][j][3];
    }
  __syncthreads();
  for (int e = static_cast<int>(threadIdx.x); e < tile; e += narrow_threads) {
    float sum = 0.0f;
#pragma unroll
    for (int v = 0; v < warps; ++v) sum += partial[v][e / narrow_tile_outputs][e % narrow_tile_outputs];
    block_sum[e] = sum;
  }
  cluster_barrier();
  for (int e = rank * narrow_threads + static_cast<int>(threadIdx.x); e < tile; e += S * narrow_threads) {
    float sum = 0.0f;
    for (int r = 0; r < S; ++r) sum += in_block(block_sum, r)[e];
    int const m = m0 + e / narrow_tile_outputs, n = n0 + e % narrow_tile_outputs;
    if (m < M && n < N) {
      if (bias) sum += to_float(bias[n]);
      y[m * ldy + n] = from_float<T>(sum);
    }
  }
  cluster_barrier();  // no block leaves while another reads its sums
}

}  // namespace kernels

/// \brief Whether the kernel exists for these types: 16-bit floats on the tensor cores, the same
/// type for activations and weights.
template <class T, class Wt>
inline constexpr bool narrow_types = mma_types<T, Wt>;

/// \brief Whether `narrow_gemm` takes a product of these sizes and addresses: more rows than the
/// matrix-vector kernel takes and at most `narrow_max_rows`, at most `narrow_max_outputs`
/// outputs, K at least 4 N (a long K: the tiles of cuBLASLt fit the rest) and whole, aligned
/// 16-byte pieces of every row.
/// \param M,N,K sizes. \param x,w first elements. \param ldx,ldw row pitches in elements.
/// \return true if the kernel applies.
template <class T>
bool narrow_applies(std::size_t M, std::size_t N, std::size_t K, T const* x, std::int64_t ldx, T const* w,
                    std::int64_t ldw) {
  bool const shape = M > static_cast<std::size_t>(gemv_max_rows) && M <= static_cast<std::size_t>(narrow_max_rows) &&
                     N >= 1 && N <= static_cast<std::size_t>(narrow_max_outputs) && K >= 4 * N;
  return shape && rows_in_pieces(K, x, ldx, w, ldw);
}

/// \brief Blocks per cluster for a product of `tiles` tiles: the most (1, 2, 4 or 8) for which
/// every block of the grid is resident at once, K permitting (a 32-wide slice per warp at least).
/// \param tiles the tiles of the output. \param K the inner size.
/// \param resident the kernel's blocks resident on the device at once. \return the count.
inline int narrow_cluster_for(int tiles, int K, int resident) {
  int const slices = (K + 31) / 32;
  int blocks = 1;
  while (blocks < narrow_max_cluster && 2 * blocks * tiles <= resident &&
         2 * blocks * (kernels::narrow_threads / 32) <= slices)
    blocks *= 2;
  return blocks;
}

namespace detail {

/// \brief Enqueue the kernel with tiles of 16 MT rows, `Depth` slices in flight per warp, and K
/// split over `cluster` blocks (beyond 8 Hopper's non-portable cluster sizes, up to 16; 1, a
/// launch without clusters, is the only size before Hopper).
template <int MT, int Depth, class T>
void narrow_gemm_with(cudaStream_t stream, int cluster, int M, int N, int K, T const* x, std::int64_t ldx, T const* w,
                      std::int64_t ldw, T const* bias, T* y, std::int64_t ldy) {
  auto const kernel = kernels::narrow_gemm<MT, Depth, T>;
  if (cluster > 8) {  // an attribute of the kernel on each device
    static per_device<bool> non_portable;
    non_portable.get([&](int) {
      check(cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1),
            "ssm::linear (CUDA narrow_gemm): clusters beyond 8 blocks");
      return true;
    });
  }
  // A programmatic dependent (as `launch` makes one) in clusters. x, which the kernel before
  // wrote, is read with `load_after_wait`: read with `__ldg`, its loads could be issued before
  // the wait, and decoding 16 sequences gave a wrong second step in about half the runs
  // (docs/benchmarks.md, "x_proj's race found"; 2.874 → 2.852 ms a step at 16 sequences and
  // 3.951 → 3.905 at 64 against the ordinary launch that had stood in for the fix).
  cudaLaunchAttribute attributes[2] = {};
  attributes[0].id = cudaLaunchAttributeClusterDimension;
  attributes[0].val.clusterDim.x = static_cast<unsigned>(cluster);
  attributes[0].val.clusterDim.y = 1;
  attributes[0].val.clusterDim.z = 1;
  attributes[1] = programmatic_dependent();
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(static_cast<unsigned>(cluster), blocks_for(static_cast<std::size_t>(N), kernels::narrow_tile_outputs),
                        blocks_for(static_cast<std::size_t>(M), 16 * MT));
  config.blockDim = dim3(kernels::narrow_threads);
  config.stream = stream;
  bool const programmatic = compute_major() >= 9;  // as `launch` does
  config.attrs = cluster > 1 ? attributes : attributes + 1;
  config.numAttrs = (cluster > 1 ? 1 : 0) + (programmatic ? 1 : 0);
  check(cudaLaunchKernelEx(&config, kernel, x, ldx, w, ldw, bias, y, ldy, M, N, K),
        "ssm::linear (CUDA narrow_gemm)");
}

}  // namespace detail

/// \brief Enqueue y = x W^T + b on `stream` (see the file comment); `narrow_applies` must hold.
/// Tiles of 16 rows, 4 slices in flight per warp; K split over a cluster where the GPU has them,
/// over the warps of one block otherwise.
/// \param stream the stream. \param M,N,K sizes. \param x (M, K) rows `ldx` apart.
/// \param w (N, K) rows `ldw` apart. \param bias (N) or null. \param y (M, N) rows `ldy` apart.
/// \param ldx,ldw,ldy row pitches in elements.
template <class T>
  requires narrow_types<T, T>
void narrow_gemm(cudaStream_t stream, int M, int N, int K, T const* x, std::int64_t ldx, T const* w, std::int64_t ldw,
                 T const* bias, T* y, std::int64_t ldy) {
  constexpr int MT = 1, Depth = 4;
  struct device_plan {
    int resident = 0;       // blocks of the kernel resident at once
    bool clusters = false;  // the device and the compiled kernel have clusters
  };
  static per_device<device_plan> plans;
  device_plan const& plan = plans.get([](int) {
    auto const kernel = kernels::narrow_gemm<MT, Depth, T>;
    int per_multiprocessor = 0;
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_multiprocessor, kernel, kernels::narrow_threads, 0),
          "ssm::linear (CUDA narrow_gemm): occupancy");
    return device_plan{per_multiprocessor * multiprocessors(), runs_hopper_code(kernel)};
  });
  int const tiles = static_cast<int>(blocks_for(static_cast<std::size_t>(N), kernels::narrow_tile_outputs) *
                                     blocks_for(static_cast<std::size_t>(M), 16 * static_cast<std::size_t>(MT)));
  int const cluster = plan.clusters ? narrow_cluster_for(tiles, K, plan.resident) : 1;
  detail::narrow_gemm_with<MT, Depth>(stream, cluster, M, N, K, x, ldx, w, ldw, bias, y, ldy);
}

}  // namespace ssm::cuda
