#pragma once
/// \file
/// \brief The middle of a Mamba decoding step on `Kokkos::Cuda` in two kernels instead of five.
///
/// Between in_proj and out_proj, one token of each of B sequences goes through the conv update,
/// x_proj, dt_proj, softplus, the state update and the gate. Op by op that is five launches whose
/// work is tiny; here it is two:
///
/// 1. `conv_x_proj`: each block takes 64 channels. It advances their conv state, applies SiLU and
///    writes xc (the scan's u), then multiplies its slice of x_proj's weight with those 64 values:
///    a partial sum of each of the R + 2N outputs over its channels. The last block to finish
///    (a counter in the workspace, after `__threadfence`) adds the partials in a fixed order, so
///    the result does not depend on which block ran first, and resets the counter.
/// 2. `dt_state_update`: one warp per (sequence, channel). Its lanes share dt_proj's dot product
///    over the R low-rank inputs, then the N state updates, then C·h; lane 0 adds D·u and the gate.
///
/// Values are rounded to the activation type T where the op-by-op path stores T (xc, x_proj's and
/// dt_proj's outputs), so both paths compute the same function; only the order of the fp32 sums
/// differs. The transcendental functions are the library's `fast_exp`, `fast_softplus` and
/// `fast_silu`, as in every other path.

#include <cuda_runtime.h>

#include <cstddef>
#include <string>

#include <ssm/core/cuda.hpp>
#include <ssm/core/dtype.hpp>
#include <ssm/core/math.hpp>

namespace ssm {

namespace cuda::kernels {

/// Channels per block of `conv_x_proj`.
inline constexpr int step_channels = 64;
/// Threads per block of both kernels.
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

/// \brief Kernel 1: conv update + SiLU for 64 channels of every sequence, their partial x_proj
/// products, and (last block) the reduction of the partials into x_dbl.
///
/// Grid: ceil(D / 64) blocks of `step_threads`. Dynamic shared memory: B * 64 floats.
/// \param xz (B, 2D) in_proj's output; u is the first D columns.
/// \param conv_state (B, D, W-1), oldest first, advanced in place.
/// \param conv_weight (D, W). \param conv_bias (D) or null.
/// \param x_proj (R + 2N, D). \param xc (B, D) out.
/// \param partials (blocks, B, R + 2N) scratch. \param x_dbl (B, R + 2N) out, rounded to T.
/// \param counter zero on entry, zero again on exit.
template <class T, class Wt>
__global__ void __launch_bounds__(step_threads)
    conv_x_proj(T const* __restrict__ xz, T* __restrict__ conv_state, Wt const* __restrict__ conv_weight,
                Wt const* __restrict__ conv_bias, Wt const* __restrict__ x_proj, T* __restrict__ xc,
                float* __restrict__ partials, float* __restrict__ x_dbl, unsigned* __restrict__ counter, int B, int D,
                int W, int xw) {
  extern __shared__ float u[];  // (B, 64) this block's conv outputs
  int const c0 = static_cast<int>(blockIdx.x) * step_channels;
  int const width = min(step_channels, D - c0);

  // Conv update: one thread per (sequence, channel).
  for (int item = static_cast<int>(threadIdx.x); item < B * step_channels; item += step_threads) {
    int const b = item / step_channels, c = item % step_channels, d = c0 + c;
    float value = 0.0f;
    if (c < width) {
      T* state = conv_state + (static_cast<std::size_t>(b) * D + d) * (W - 1);
      Wt const* w = conv_weight + static_cast<std::size_t>(d) * W;
      float const x = to_float(xz[static_cast<std::size_t>(b) * 2 * D + d]);
      float acc = conv_bias ? to_float(conv_bias[d]) : 0.0f;
      for (int k = 0; k < W - 1; ++k) acc += to_float(w[k]) * to_float(state[k]);
      acc += to_float(w[W - 1]) * x;
      for (int k = 0; k + 1 < W - 1; ++k) state[k] = state[k + 1];
      if (W > 1) state[W - 2] = from_float<T>(x);
      value = round_to<T>(fast_silu(acc));
      xc[static_cast<std::size_t>(b) * D + d] = from_float<T>(value);
    }
    u[b * step_channels + c] = value;  // channels past D contribute zero
  }
  __syncthreads();

  // Partial x_proj: one thread per output j, over this block's channels, for every sequence.
  float* mine = partials + static_cast<std::size_t>(blockIdx.x) * B * xw;
  for (int j = static_cast<int>(threadIdx.x); j < xw; j += step_threads) {
    Wt const* row = x_proj + static_cast<std::size_t>(j) * D + c0;
    for (int b0 = 0; b0 < B; b0 += 4) {  // four sequences at a time share each weight load
      float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      for (int c = 0; c < width; ++c) {
        float const w = to_float(row[c]);
#pragma unroll
        for (int i = 0; i < 4; ++i)
          if (b0 + i < B) acc[i] += w * u[(b0 + i) * step_channels + c];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
        if (b0 + i < B) mine[(b0 + i) * xw + j] = acc[i];
    }
  }

  // The last block to arrive adds the partials, block by block in order.
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(counter, 1u) == gridDim.x - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  for (int i = static_cast<int>(threadIdx.x); i < B * xw; i += step_threads) {
    float sum = 0.0f;
    for (unsigned block = 0; block < gridDim.x; ++block) sum += __ldcg(partials + static_cast<std::size_t>(block) * B * xw + i);
    x_dbl[i] = round_to<T>(sum);
  }
  if (threadIdx.x == 0) *counter = 0u;
}

/// \brief Kernel 2: dt_proj, softplus, the state update and the gate; one warp per (b, d).
///
/// Grid: (ceil(D / 8), B) blocks of `step_threads` (8 warps).
/// \param x_dbl (B, R + 2N): dt_low, B, C. \param dt_proj (D, R). \param dt_bias (D).
/// \param A (D, N). \param skip (D), the D of the equations. \param xz (B, 2D); z is the second half.
/// \param xc (B, D) the scan's u. \param state (B, D, N) updated in place. \param y (B, D) out.
template <class T, class Wt>
__global__ void __launch_bounds__(step_threads)
    dt_state_update(float const* __restrict__ x_dbl, Wt const* __restrict__ dt_proj, float const* __restrict__ dt_bias,
                    float const* __restrict__ A, float const* __restrict__ skip, T const* __restrict__ xz,
                    T const* __restrict__ xc, float* __restrict__ state, T* __restrict__ y, int D, int R, int N) {
  int const lane = static_cast<int>(threadIdx.x) % 32;
  int const d = static_cast<int>(blockIdx.x) * (step_threads / 32) + static_cast<int>(threadIdx.x) / 32;
  int const b = static_cast<int>(blockIdx.y);
  if (d >= D) return;
  int const xw = R + 2 * N;
  float const* row = x_dbl + static_cast<std::size_t>(b) * xw;  // dt_low, then B, then C

  float dt = 0.0f;
  for (int r = lane; r < R; r += 32) dt += to_float(dt_proj[static_cast<std::size_t>(d) * R + r]) * row[r];
  dt = fast_softplus(round_to<T>(warp_sum(dt)) + dt_bias[d]);

  std::size_t const bd = static_cast<std::size_t>(b) * D + d;
  float const u = to_float(xc[bd]);
  float* h = state + bd * N;
  float out = 0.0f;
  for (int n = lane; n < N; n += 32) {
    float const next = fast_exp(dt * A[static_cast<std::size_t>(d) * N + n]) * h[n] + dt * u * row[R + n];
    h[n] = next;
    out += row[R + N + n] * next;
  }
  out = warp_sum(out);
  if (lane == 0) {
    out += skip[d] * u;
    out *= fast_silu(to_float(xz[static_cast<std::size_t>(b) * 2 * D + D + d]));
    y[bd] = from_float<T>(out);
  }
}

}  // namespace cuda::kernels

/// \brief On `Kokkos::Cuda` the middle of a decoding step is two kernels (see the file comment).
template <>
struct mamba_step_backend<Kokkos::Cuda> {
  static constexpr bool fused = true;  ///< `mamba_mixer::step` calls `run`

  /// \brief Floats of workspace a step of `batch` sequences needs: a counter, the partial sums
  /// and x_dbl. \param c the mixer's sizes. \param batch B. \return the count.
  static std::size_t workspace_floats(mamba_config const& c, std::size_t batch) {
    std::size_t const xw = static_cast<std::size_t>(c.dt_rank + 2 * c.d_state);
    std::size_t const blocks = cuda::blocks_for(static_cast<std::size_t>(c.d_inner), cuda::kernels::step_channels);
    return 32 + (blocks + 1) * batch * xw;  // the counter's 32 floats keep the rest 128-byte aligned
  }

  /// \brief Enqueue both kernels on `space`'s stream.
  /// \tparam T activation storage type. \tparam Wt weight storage type. \tparam MemSpace memory space.
  /// \param space the execution space instance. \param c the mixer's sizes.
  /// \param p the tensors (see `mamba_step_params`).
  template <class T, class Wt, class MemSpace>
  static void run(Kokkos::Cuda const& space, mamba_config const& c, mamba_step_params<T, Wt, MemSpace> const& p) {
    int const D = c.d_inner, N = c.d_state, R = c.dt_rank, W = c.d_conv, B = p.batch, xw = R + 2 * N;
    unsigned const blocks = cuda::blocks_for(static_cast<std::size_t>(D), cuda::kernels::step_channels);
    auto* counter = reinterpret_cast<unsigned*>(p.workspace);
    float* partials = p.workspace + 32;
    float* x_dbl = partials + static_cast<std::size_t>(blocks) * B * xw;
    auto const& w = *p.weights;
    std::size_t const shared = static_cast<std::size_t>(B) * cuda::kernels::step_channels * sizeof(float);
    if (shared > 48 * 1024)
      throw error("ssm::mamba_mixer::step (CUDA): a batch of " + std::to_string(B) + " is above the 192 sequences a fused step takes");
    cudaStream_t const stream = cuda::stream(space);
    cuda::kernels::conv_x_proj<T, Wt><<<blocks, cuda::kernels::step_threads, shared, stream>>>(
        p.xz, p.conv_state, w.conv1d_weight.data(), given(w.conv1d_bias) ? w.conv1d_bias.data() : nullptr,
        w.x_proj_weight.data(), p.xc, partials, x_dbl, counter, B, D, W, xw);
    cuda::check_launch("ssm::mamba_mixer::step (CUDA): conv_x_proj");
    dim3 const grid(cuda::blocks_for(static_cast<std::size_t>(D), cuda::kernels::step_threads / 32), static_cast<unsigned>(B));
    cuda::kernels::dt_state_update<T, Wt><<<grid, cuda::kernels::step_threads, 0, stream>>>(
        x_dbl, w.dt_proj_weight.data(), w.dt_proj_bias.data(), w.A.data(), w.D.data(), p.xz, p.xc, p.ssm_state, p.y,
        D, R, N);
    cuda::check_launch("ssm::mamba_mixer::step (CUDA): dt_state_update");
  }
};

}  // namespace ssm
