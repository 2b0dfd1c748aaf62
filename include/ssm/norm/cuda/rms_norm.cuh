#pragma once
/// \file
/// \brief CUDA kernel of RMSNorm with the fused residual add: `rms_norm_backend` for `Kokkos::Cuda`.
/// Included by `ssm/norm/rms_norm.hpp` when Kokkos has CUDA.
///
/// **Work.** A row of E features is handled by `lanes` threads, a multiple of the warp size: one
/// warp per row for small E (then a block holds several rows), up to 512 threads for long rows.
/// Each thread keeps up to `rms_norm_cached_per_thread` values of \f$r = x + r_{\mathrm{in}}\f$ in
/// registers, so a row is read from memory once: load and square, reduce, then scale and store.
/// Only rows too long for the registers of 512 threads (E > 16384) read their remainder twice. Up
/// to `rms_norm_few_rows` rows (decoding) a row gets a thread per access instead, up to 512: at 64
/// rows of E = 2560 in bf16, 320 threads a row rather than 96 took a decoding step of the 2.8B
/// model on an H200 from 5.17 to 4.92 ms (64 layers, same run); Nsight Compute at base clocks
/// reads 7.8 µs a layer before, 5.3 after.
///
/// **Vectors.** When every tensor has stride 1 over e and 16-byte aligned rows, a thread moves 8
/// features per access (16 bytes of a 16-bit type, two 16-byte accesses of fp32); the last E mod 8
/// features of a row go one per thread. Otherwise the same kernel moves single elements through the
/// strides.
///
/// **Reduction.** The sum of squares goes through warp shuffles, then (rows of more than one warp)
/// through one shared-memory slot per warp.
///
/// **Partial sums.** x may come as S fp32 partial sums (`rms_norm_params::x_partials`): each
/// thread adds its features' S values in order and rounds the sum to T before the residual add, as
/// the product that left them would have rounded its output. A decoding step of 2 or more
/// sequences hands out_proj's output to the next block's norm so (`ssm::step_partials`), which
/// saves cuBLASLt's launch that would add its split K.
///
/// **Aliasing.** `residual` and `residual_out` may be the same memory: every element is read and
/// written by the one thread that owns it, and written only after that thread has read it.
///
/// The arithmetic of an element is the reference's: \f$r\f$ in fp32, then
/// \f$(r \cdot \mathrm{inv\_rms}) \cdot w\f$; only the order of the sum of squares differs.

#include <Kokkos_Core.hpp>

#if !defined(KOKKOS_ENABLE_CUDA)
#error "ssm/norm/cuda/rms_norm.cuh needs Kokkos with its CUDA backend"
#endif

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include <ssm/core/cuda.hpp>
#include <ssm/core/cuda/lanes.cuh>
#include <ssm/core/dtype.hpp>
#include <ssm/norm/rms_norm.hpp>

namespace ssm {

namespace cuda::detail {

/// \brief Features a thread of the RMSNorm kernel keeps in registers.
inline constexpr int rms_norm_cached_per_thread = 32;
/// \brief Features per access on the vectorized path.
inline constexpr int rms_norm_vector = 8;
/// \brief Threads per block the launch aims at when a row needs fewer (several rows per block).
inline constexpr int rms_norm_min_block = 128;
/// \brief Up to this many rows (a decoding step's), a row gets a thread per access (up to
/// `rms_norm_max_lanes`) rather than one per `rms_norm_cached_per_thread` features: with so few
/// rows the kernel is bound by the latency of each thread's chain of loads, not by their number.
inline constexpr int rms_norm_few_rows = 256;
/// \brief Most threads per row (and per block): 128 registers each, enough for the cached row.
inline constexpr int rms_norm_max_lanes = 512;

/// \brief The tensors of an RMSNorm as the kernel reads them: pointers and strides in elements.
template <class T, class Wt>
struct rms_norm_args {
  T const* x;                                    ///< (M, E); read only if slices == 0
  std::int64_t x_m, x_e;                         ///< its strides
  float const* partials;                         ///< (S, M, E) x as partial sums, if slices > 0
  std::int64_t partials_s, partials_m, partials_e;  ///< their strides
  int slices;                                    ///< S, or 0 to read x
  float const* residual;                         ///< (M, E); read only if has_residual
  std::int64_t residual_m, residual_e;           ///< its strides
  Wt const* weight;                              ///< (E)
  std::int64_t weight_e;                         ///< its stride
  T* out;                                        ///< (M, E)
  std::int64_t out_m, out_e;                     ///< its strides
  float* residual_out;                           ///< (M, E); written only if has_residual_out; may alias residual
  std::int64_t residual_out_m, residual_out_e;   ///< its strides
  int rows, features;                            ///< M, E
  float eps;                                     ///< added to the mean square
  bool has_residual, has_residual_out;           ///< optional tensors present
};

/// \brief `N` consecutive values of type `S`, moved as 16-byte accesses (N * sizeof(S) is 16 or 32).
template <class S, int N>
struct alignas(16) packed {
  S value[N];  ///< the values
};

/// \brief Load the `N` values at `p` (consecutive and 16-byte aligned if N > 1) as floats.
template <int N, class S>
__device__ inline void load(S const* p, float (&v)[N]) {
  if constexpr (N == 1) {
    v[0] = to_float(*p);
  } else {
    auto const pack = *reinterpret_cast<packed<S, N> const*>(p);
#pragma unroll
    for (int j = 0; j < N; ++j) v[j] = to_float(pack.value[j]);
  }
}

/// \brief Store `N` floats at `p`, rounded to `S` (consecutive and 16-byte aligned if N > 1).
template <int N, class S>
__device__ inline void store(S* p, float const (&v)[N]) {
  if constexpr (N == 1) {
    p[0] = from_float<S>(v[0]);
  } else {
    packed<S, N> pack;
#pragma unroll
    for (int j = 0; j < N; ++j) pack.value[j] = from_float<S>(v[j]);
    *reinterpret_cast<packed<S, N>*>(p) = pack;
  }
}

/// \brief Sum of `v` over the `blockDim.x` threads of a row (a multiple of 32): every thread of
/// the block must call it.
__device__ inline float row_sum(float v) {
  v = warp_sum(v);
  if (blockDim.x == 32) return v;
  __shared__ float partial[32];  // one slot per warp of the block
  unsigned const thread = threadIdx.y * blockDim.x + threadIdx.x;
  if (thread % 32 == 0) partial[thread / 32] = v;
  __syncthreads();
  unsigned const first = threadIdx.y * blockDim.x / 32, warps = blockDim.x / 32;
  float total = 0.0f;
  for (unsigned w = 0; w < warps; ++w) total += partial[first + w];
  return total;
}

/// \brief RMSNorm kernel: row `blockIdx.x * blockDim.y + threadIdx.y`, its features spread over
/// the `blockDim.x` threads; see the file comment.
/// \tparam Vec features per access: 1 (any strides) or `rms_norm_vector` (stride 1, aligned rows).
template <int Vec, class T, class Wt>
__global__ void __launch_bounds__(rms_norm_max_lanes) rms_norm_kernel(rms_norm_args<T, Wt> const a) {
  allow_next_kernel();
  wait_for_previous_kernel();  // launched as a programmatic dependent: see ssm::cuda::launch
  constexpr int cached = rms_norm_cached_per_thread / Vec;  // vectors in registers
  int const lane = static_cast<int>(threadIdx.x), lanes = static_cast<int>(blockDim.x);
  std::int64_t const row = static_cast<std::int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  bool const active = row < a.rows;  // inactive threads still join the reduction
  std::int64_t const m = active ? row : 0;
  int const vectors = a.features / Vec;
  int const tail = vectors * Vec + lane;  // Vec > 1: the last E mod Vec features, one per thread
  bool const has_tail = Vec > 1 && active && tail < a.features;

  T const* x = a.slices == 0 ? a.x + m * a.x_m : nullptr;
  float const* partials = a.slices > 0 ? a.partials + m * a.partials_m : nullptr;
  float const* residual = a.has_residual ? a.residual + m * a.residual_m : nullptr;
  // x for features [e, e + Vec): read, or the partial sums added in order and rounded to T
  auto load_x = [&](int e, float (&v)[Vec]) {
    if (a.slices == 0) {
      load<Vec>(x + e * a.x_e, v);
      return;
    }
#pragma unroll
    for (int j = 0; j < Vec; ++j) v[j] = 0.0f;
    for (int s = 0; s < a.slices; ++s) {
      float part[Vec];
      load<Vec>(partials + s * a.partials_s + e * a.partials_e, part);
#pragma unroll
      for (int j = 0; j < Vec; ++j) v[j] += part[j];
    }
#pragma unroll
    for (int j = 0; j < Vec; ++j) v[j] = round_to<T>(v[j]);
  };
  // r = x + residual for features [e, e + Vec)
  auto load_r = [&](int e, float (&r)[Vec]) {
    load_x(e, r);
    if (a.has_residual) {
      float added[Vec];
      load<Vec>(residual + e * a.residual_e, added);
#pragma unroll
      for (int j = 0; j < Vec; ++j) r[j] += added[j];
    }
  };

  float r[cached][Vec];
  float r_tail = 0.0f;
  float sum_squares = 0.0f;
  if (active) {
#pragma unroll
    for (int c = 0; c < cached; ++c) {
      int const i = lane + c * lanes;
      if (i < vectors) {
        load_r(i * Vec, r[c]);
#pragma unroll
        for (int j = 0; j < Vec; ++j) sum_squares += r[c][j] * r[c][j];
      }
    }
    for (int i = lane + cached * lanes; i < vectors; i += lanes) {  // rows longer than the registers
      float v[Vec];
      load_r(i * Vec, v);
#pragma unroll
      for (int j = 0; j < Vec; ++j) sum_squares += v[j] * v[j];
    }
  }
  if (has_tail) {
    float x_tail[1];
    if (a.slices == 0) {
      load<1>(x + tail * a.x_e, x_tail);
    } else {
      x_tail[0] = 0.0f;
      for (int s = 0; s < a.slices; ++s) x_tail[0] += partials[s * a.partials_s + tail * a.partials_e];
      x_tail[0] = round_to<T>(x_tail[0]);
    }
    r_tail = x_tail[0] + (a.has_residual ? residual[tail * a.residual_e] : 0.0f);
    sum_squares += r_tail * r_tail;
  }
  sum_squares = row_sum(sum_squares);
  if (!active) return;
  float const inv_rms = 1.0f / sqrtf(sum_squares / static_cast<float>(a.features) + a.eps);

  T* out = a.out + m * a.out_m;
  float* residual_out = a.has_residual_out ? a.residual_out + m * a.residual_out_m : nullptr;
  // out = (r * inv_rms) * w and residual_out = r for features [e, e + Vec)
  auto store_r = [&](int e, float const (&v)[Vec]) {
    if (a.has_residual_out) store<Vec>(residual_out + e * a.residual_out_e, v);
    float w[Vec], y[Vec];
    load<Vec>(a.weight + e * a.weight_e, w);
#pragma unroll
    for (int j = 0; j < Vec; ++j) y[j] = v[j] * inv_rms * w[j];
    store<Vec>(out + e * a.out_e, y);
  };
#pragma unroll
  for (int c = 0; c < cached; ++c) {
    int const i = lane + c * lanes;
    if (i < vectors) store_r(i * Vec, r[c]);
  }
  for (int i = lane + cached * lanes; i < vectors; i += lanes) {
    float v[Vec];
    load_r(i * Vec, v);
    store_r(i * Vec, v);
  }
  if (has_tail) {
    if (a.has_residual_out) residual_out[tail * a.residual_out_e] = r_tail;
    out[tail * a.out_e] = from_float<T>(r_tail * inv_rms * to_float(a.weight[tail * a.weight_e]));
  }
}

/// \brief Whether a rank-2 tensor can be moved in aligned vectors of `rms_norm_vector` elements:
/// stride 1 over e, 16-byte aligned start and row stride.
template <class View>
bool vectorizable_rows(View const& v) {
  using value = typename View::value_type;
  return (v.extent(1) <= 1 || v.stride(1) == 1) && aligned(v.data(), 16) &&
         (v.extent(0) <= 1 || v.stride(0) * sizeof(value) % 16 == 0);
}

/// \brief Whether every rank-2 slice of a rank-3 tensor (S, M, E) can be moved in aligned vectors.
template <class View>
bool vectorizable_slices(View const& v) {
  using value = typename View::value_type;
  return (v.extent(2) <= 1 || v.stride(2) == 1) && aligned(v.data(), 16) &&
         (v.extent(1) <= 1 || v.stride(1) * sizeof(value) % 16 == 0) &&
         (v.extent(0) <= 1 || v.stride(0) * sizeof(value) % 16 == 0);
}

/// \brief Whether a rank-1 tensor can be read in aligned vectors: stride 1, 16-byte aligned start.
template <class View>
bool vectorizable_vector(View const& v) {
  return (v.extent(0) <= 1 || v.stride(0) == 1) && aligned(v.data(), 16);
}

}  // namespace cuda::detail

/// \brief The CUDA backend of RMSNorm: the kernel of `ssm/norm/cuda/rms_norm.cuh`, launched on the
/// stream of the `Kokkos::Cuda` instance.
///
/// A warp (small E) to 512 threads (long rows) per row, the row held in registers, 16-byte
/// accesses where every tensor allows them, warp-shuffle reduction.
template <>
struct rms_norm_backend<Kokkos::Cuda> {
  /// \brief Normalise every row on `space` (asynchronous: returns once the kernel is enqueued).
  /// \tparam T activation storage type (`float`, `ssm::f16` or `ssm::bf16`).
  /// \tparam Wt weight storage type (same choices).
  /// \tparam MemSpace a memory space accessible from `Kokkos::Cuda`.
  /// \param space the instance whose stream runs the kernel.
  /// \param p the checked tensors and \f$\epsilon\f$: `x` (M, E) or `x_partials` (S, M, E),
  ///          `residual`, `out`, `residual_out` (M, E), `residual` and `residual_out` possibly the
  ///          same memory; `weight` (E).
  /// \throws ssm::error if CUDA refuses the launch.
  template <class T, class Wt, class MemSpace>
  static void run(Kokkos::Cuda const& space, rms_norm_params<T, Wt, MemSpace> const& p) {
    using cuda::detail::vectorizable_rows;
    cuda::detail::rms_norm_args<T, Wt> a{};
    bool const partials = given(p.x_partials);
    if (partials) {
      a.partials = p.x_partials.data();
      a.partials_s = static_cast<std::int64_t>(p.x_partials.stride(0));
      a.partials_m = static_cast<std::int64_t>(p.x_partials.stride(1));
      a.partials_e = static_cast<std::int64_t>(p.x_partials.stride(2));
      a.slices = static_cast<int>(p.x_partials.extent(0));
    } else {
      a.x = p.x.data();
      a.x_m = static_cast<std::int64_t>(p.x.stride(0));
      a.x_e = static_cast<std::int64_t>(p.x.stride(1));
    }
    a.has_residual = given(p.residual);
    if (a.has_residual) {
      a.residual = p.residual.data();
      a.residual_m = static_cast<std::int64_t>(p.residual.stride(0));
      a.residual_e = static_cast<std::int64_t>(p.residual.stride(1));
    }
    a.weight = p.weight.data();
    a.weight_e = static_cast<std::int64_t>(p.weight.stride(0));
    a.out = p.out.data();
    a.out_m = static_cast<std::int64_t>(p.out.stride(0));
    a.out_e = static_cast<std::int64_t>(p.out.stride(1));
    a.has_residual_out = given(p.residual_out);
    if (a.has_residual_out) {
      a.residual_out = p.residual_out.data();
      a.residual_out_m = static_cast<std::int64_t>(p.residual_out.stride(0));
      a.residual_out_e = static_cast<std::int64_t>(p.residual_out.stride(1));
    }
    a.rows = static_cast<int>(ssm::detail::rows(p));
    a.features = static_cast<int>(ssm::detail::features(p));
    a.eps = p.eps;

    bool const vectorized = (partials ? cuda::detail::vectorizable_slices(p.x_partials) : vectorizable_rows(p.x)) &&
                            vectorizable_rows(p.out) &&
                            cuda::detail::vectorizable_vector(p.weight) &&
                            (!a.has_residual || vectorizable_rows(p.residual)) &&
                            (!a.has_residual_out || vectorizable_rows(p.residual_out));
    if (vectorized) launch<cuda::detail::rms_norm_vector>(space, a);
    else launch<1>(space, a);
  }

 private:
  /// \brief Shape the launch: enough threads per row for `rms_norm_cached_per_thread` features each,
  /// or for one access each up to `rms_norm_few_rows` rows (a multiple of 32, at most
  /// `rms_norm_max_lanes`), several rows per block when a row needs fewer than `rms_norm_min_block`.
  template <int Vec, class T, class Wt>
  static void launch(Kokkos::Cuda const& space, cuda::detail::rms_norm_args<T, Wt> const& a) {
    std::size_t const vectors = static_cast<std::size_t>(a.features) / Vec;
    std::size_t const cached =
        a.rows <= cuda::detail::rms_norm_few_rows ? 1 : cuda::detail::rms_norm_cached_per_thread / Vec;
    std::size_t const lanes = std::min<std::size_t>(32 * cuda::blocks_for((vectors + cached - 1) / cached, 32),
                                                    cuda::detail::rms_norm_max_lanes);
    std::size_t const rows_per_block = std::max<std::size_t>(1, cuda::detail::rms_norm_min_block / lanes);
    dim3 const block(static_cast<unsigned>(lanes), static_cast<unsigned>(rows_per_block));
    dim3 const grid(cuda::blocks_for(static_cast<std::size_t>(a.rows), rows_per_block));
    cuda::launch(cuda::detail::rms_norm_kernel<Vec, T, Wt>, grid, block, 0, cuda::stream(space), "ssm::rms_norm::cuda", a);
  }
};

}  // namespace ssm
