#pragma once
/// \file
/// \brief The middle of a Mamba decoding step on `Kokkos::Cuda`: three launches instead of four.
///
/// Between in_proj and out_proj, one token of each of B sequences goes through the conv update,
/// x_proj, dt_proj, softplus, the state update and the gate. Here the conv update and x_proj are
/// the library's CUDA ops (the weight-streaming matrix-vector kernel for x_proj), and one kernel,
/// `dt_state_update`, does the rest: a warp per channel takes dt_proj's dot product over the R
/// low-rank inputs across its lanes, then the N state updates, then C·h; lane 0 adds D·u and the
/// gate. dt never goes to memory. Up to 16 sequences (`fuses`); a larger batch runs op by op.
///
/// dt is rounded to the activation type T, where the op-by-op path stores it, so both paths
/// compute the same function; only the order of the fp32 sums differs. The transcendental
/// functions are the library's `fast_exp`, `fast_softplus` and `fast_silu`, as in every path.
///
/// (A first version also fused the conv update into x_proj, each block reducing its 64 channels
/// and the last block to finish adding the partial sums. On an H200 that lone last block's
/// reduction cost more than the launch it saved: the 2.8B model took 30 ms per step at B = 64.
/// A warp per channel walking all B sequences kept dt_proj's row in L1, but made a chain of B
/// dependent steps: 19 ms per step at B = 64.)

#include <cuda_runtime.h>

#include <cstddef>

#include <ssm/core/cuda.hpp>
#include <ssm/core/dtype.hpp>
#include <ssm/core/math.hpp>
#include <ssm/core/views.hpp>

namespace ssm {

namespace cuda::kernels {

/// Threads per block of `dt_state_update`.
inline constexpr int step_threads = 256;

/// \brief Round to the storage type T and back: what storing a T and reading it again does.
template <class T>
__device__ inline float round_to(float x) {
  return to_float(from_float<T>(x));
}

/// \brief Sum over the 32 lanes of a warp; every lane gets the total.
__device__ inline float warp_sum(float x) {
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

/// \brief dt_proj, softplus, the state update and the gate; one warp per (sequence, channel).
///
/// Grid: (ceil(D / 8), B) blocks of `step_threads` (8 warps).
/// \param x_dbl (B, R + 2N) x_proj's output: dt_low, B, C. \param dt_proj (D, R).
/// \param dt_bias (D). \param A (D, N). \param skip (D), the D of the equations.
/// \param xz (B, 2D); z is the second half. \param xc (B, D) the scan's u.
/// \param state (B, D, N) updated in place. \param y (B, D) out.
template <class T, class Wt>
__global__ void __launch_bounds__(step_threads)
    dt_state_update(T const* __restrict__ x_dbl, Wt const* __restrict__ dt_proj, float const* __restrict__ dt_bias,
                    float const* __restrict__ A, float const* __restrict__ skip, T const* __restrict__ xz,
                    T const* __restrict__ xc, float* __restrict__ state, T* __restrict__ y, int D, int R, int N) {
  allow_next_kernel();
  wait_for_previous_kernel();  // launched as a programmatic dependent: see ssm::cuda::launch
  int const lane = static_cast<int>(threadIdx.x) % 32;
  int const d = static_cast<int>(blockIdx.x) * (step_threads / 32) + static_cast<int>(threadIdx.x) / 32;
  int const b = static_cast<int>(blockIdx.y);
  if (d >= D) return;
  int const xw = R + 2 * N;
  T const* row = x_dbl + static_cast<std::size_t>(b) * xw;  // dt_low, then B, then C

  float dt = 0.0f;
  for (int r = lane; r < R; r += 32) dt += to_float(dt_proj[static_cast<std::size_t>(d) * R + r]) * to_float(row[r]);
  dt = fast_softplus(round_to<T>(warp_sum(dt)) + dt_bias[d]);

  std::size_t const bd = static_cast<std::size_t>(b) * D + d;
  float const u = to_float(xc[bd]);
  float* h = state + bd * N;
  float out = 0.0f;
  for (int n = lane; n < N; n += 32) {
    float const next = fast_exp(dt * A[static_cast<std::size_t>(d) * N + n]) * h[n] + dt * u * to_float(row[R + n]);
    h[n] = next;
    out += to_float(row[R + N + n]) * next;
  }
  out = warp_sum(out);
  if (lane == 0) {
    out += skip[d] * u;
    out *= fast_silu(to_float(xz[static_cast<std::size_t>(b) * 2 * D + D + d]));
    y[bd] = from_float<T>(out);
  }
}

}  // namespace cuda::kernels

/// \brief On `Kokkos::Cuda` the middle of a decoding step is the conv update, x_proj and one
/// kernel for the rest (see the file comment).
template <>
struct mamba_step_backend<Kokkos::Cuda> {
  static constexpr bool fused = true;  ///< `mamba_mixer::step` asks `fuses`, then calls `run`

  /// \brief Whether to fuse a step of `batch` sequences. Each sequence's warps read dt_proj's
  /// weights again (from L2), which pays up to 16 sequences; beyond, cuBLASLt's dt_proj and the
  /// portable state update, one thread per (sequence, channel), are faster.
  /// \param batch B. \return B <= 16.
  static bool fuses(std::size_t batch) { return batch <= 16; }

  /// \brief Enqueue the three launches on `space`'s stream.
  /// \tparam T activation storage type. \tparam Wt weight storage type. \tparam MemSpace memory space.
  /// \param space the execution space instance. \param c the mixer's sizes.
  /// \param p the tensors (see `mamba_step_params`).
  template <class T, class Wt, class MemSpace>
  static void run(Kokkos::Cuda const& space, mamba_config const& c, mamba_step_params<T, Wt, MemSpace> const& p) {
    std::size_t const D = c.d_inner, N = c.d_state, R = c.dt_rank, W = c.d_conv, B = p.batch, xw = R + 2 * N;
    auto const& w = *p.weights;
    causal_conv1d_update_params<T, Wt, MemSpace> conv;
    conv.x = strided<const T, MemSpace>(p.xz, B, 2 * D, D, 1);
    conv.state = view3<T, MemSpace>(p.conv_state, Kokkos::LayoutStride(B, D * (W - 1), D, W - 1, W - 1, 1));
    conv.weight = w.conv1d_weight;
    conv.bias = w.conv1d_bias;
    conv.silu_activation = true;
    conv.out = strided<T, MemSpace>(p.xc, B, D, D, 1);
    causal_conv1d_update(space, conv);
    linear(space, linear_params<T, Wt, MemSpace>{strided<const T, MemSpace>(p.xc, B, D, D, 1), w.x_proj_weight, {},
                                                 strided<T, MemSpace>(p.x_dbl, B, xw, xw, 1)});
    cuda::launch(cuda::kernels::dt_state_update<T, Wt>, dim3(cuda::blocks_for(D, cuda::kernels::step_threads / 32),
                                                                static_cast<unsigned>(B)),
                 dim3(cuda::kernels::step_threads), 0, cuda::stream(space), "ssm::mamba_mixer::step (CUDA): dt_state_update",
                 p.x_dbl, w.dt_proj_weight.data(), w.dt_proj_bias.data(), w.A.data(), w.D.data(), p.xz, p.xc,
                 p.ssm_state, p.y, static_cast<int>(D), static_cast<int>(R), static_cast<int>(N));
  }
};

}  // namespace ssm
