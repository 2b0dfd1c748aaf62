#pragma once
/// \file
/// \brief x_proj and the state update of a block's decoding step of one or two sequences in one
/// launch, the blocks meeting at a counter in between.
///
/// After `norm_in_proj_conv` (`ssm/blocks/cuda/mamba_step.cuh`) the four-launch step runs x_proj,
/// then `dt_state_update`, each waiting for the whole of the launch before it. Here
/// `x_proj_state_update` does both with one block per multiprocessor: each block takes its few
/// outputs of x_proj (`gemv_block`, K split over groups of warps, summed in order), the blocks meet
/// at a counter (each adds to it with release semantics once its outputs are written, then waits
/// until all have), and each block then updates the states of its run of channels as
/// `dt_state_update` does (`ssm/scan/cuda/recurrence.cuh`), with a half-warp per channel (its 16
/// lanes over the states and dt_proj's rank) for every sequence, and writes y for
/// `out_proj_residual`. The state update's weights are read before the wait for in_proj, and its
/// u, z and states right after it, while x_proj runs.
///
/// The arithmetic is that of the four launches but for the order of the fp32 sums of x_proj's
/// products (over K), of dt_proj and of C·h (over 16 lanes instead of 32).
///
/// The meeting needs every block of the launch resident at once: one block per multiprocessor at
/// most (`__launch_bounds__(x_proj_state_threads, 1)`), and nothing that waits on this launch can
/// hold a multiprocessor before all its blocks have started, since a programmatic dependent starts
/// only once every block of its predecessor has. The counter is zero before the step;
/// `out_proj_residual`'s first block sets it back to zero once its wait has returned, when every
/// block of this launch has passed the meeting.
///
/// On an H200 (2.8B, bf16; one binary, `SSM_CUDA_X_PROJ_STATE=0` alternating with it twice in one
/// run), ms per step: one sequence 1.987 against 2.035, two sequences 2.222 against 2.355 (with
/// x_proj through `gemv_block`, a later run: 1.980 and 2.237, 95 registers instead of 92 at two
/// sequences). Nsight Compute reads 8.4 µs for this launch alone at one sequence, against 5.1 and
/// 7.0 for x_proj and `dt_state_update`. Tried with it and not kept: out_proj with each block's
/// rows (20 of 10 KB) staged in shared memory before its wait (by `cp.async`, or by the copy
/// engine), so that the weights would stream while x_proj and the state update run: 2.42 ms a
/// token, whatever shared-memory carveout the launches asked for. Alone that launch took 17.8 µs
/// (19.5 with the copy engine) against 13.6 for `out_proj_residual`: a block filling 200 KB of
/// shared memory on each multiprocessor reads far slower than `out_proj_residual`'s 2.4 blocks a
/// multiprocessor streaming into registers (docs/benchmarks.md, "x_proj and the state update in
/// one launch").

#include <cuda_runtime.h>

#include <cstddef>
#include <type_traits>

#include <ssm/core/cuda.hpp>
#include <ssm/core/cuda/copy_engine.cuh>
#include <ssm/core/cuda/fast_math.cuh>
#include <ssm/core/cuda/lanes.cuh>
#include <ssm/core/dtype.hpp>
#include <ssm/linear/cuda/gemv.cuh>
#include <ssm/scan/cuda/recurrence.cuh>

namespace ssm::cuda::kernels {

/// \brief Threads per block of `x_proj_state_update`: 40 half-warps, one per channel in a round of
/// the state update (the 2.8B shape has 39 channels a block on 132 multiprocessors).
inline constexpr int x_proj_state_threads = 640;
/// \brief Lanes per channel in the state update: its states and dt_proj's rank.
inline constexpr int state_lanes = 16;
/// \brief dt_proj's row in registers, per lane, for the first round: ranks up to 16 x 10 = 160 (the
/// 2.8B model's), the rest read from memory.
inline constexpr int x_proj_state_rank_regs = 10;

/// \brief What `x_proj_state_update` reads and writes (M sequences). xc (M, D) is the conv's output
/// u; x_proj (R + 2N, D); x_dbl (M, R + 2N) x_proj's output: dt_low, B, C; the rest as in
/// `dt_state_args`.
template <class T, class Wt>
struct x_proj_state_args {
  T const* xc;
  Wt const* x_proj;
  T* x_dbl;
  Wt const* dt_proj;
  float const* dt_bias;
  float const* A;
  float const* skip;
  T const* xz;
  float* state;
  T* y;
  unsigned* arrived;  ///< zero before the launch: blocks past x_proj
  int D, R, N;
  int channels;  ///< per block, a run of consecutive channels
  int split;     ///< warps per output of x_proj, dividing the block's: it has 20 / split outputs
};

/// \brief x_proj, the grid's meeting, then dt_proj, softplus, the state update and the gate (see
/// the file comment). Grid: one block per multiprocessor at most, of `x_proj_state_threads`; each
/// block covers x_proj_state_threads / 32 / `split` outputs of x_proj and `channels` channels, with
/// M (R + 2N) values of T of dynamic shared memory for x_proj's rows.
/// \tparam M sequences (1 or 2).
template <int M, class T, class Wt>
__global__ void __launch_bounds__(x_proj_state_threads, 1) x_proj_state_update(x_proj_state_args<T, Wt> const a) {
  constexpr int vec = 16 / sizeof(Wt), groups = x_proj_state_threads / state_lanes;
  int const D = a.D, R = a.R, N = a.N, xw = R + 2 * N;

  // The state update's half-warp h takes channel c0 + h + r * groups in round r, for every
  // sequence. What its first round reads is asked for while x_proj runs: the weights before the
  // wait for in_proj (nothing in this step writes them), u, z and the states right after it.
  int const h = static_cast<int>(threadIdx.x) / state_lanes, g = static_cast<int>(threadIdx.x) % state_lanes;
  int const c0 = static_cast<int>(blockIdx.x) * a.channels;
  auto valid = [&](int q) { return q < a.channels && c0 + q < D; };
  int const d0 = valid(h) ? c0 + h : D - 1;
  float w_dt[x_proj_state_rank_regs];
  float a2_0, bias_0, skip_0;
  T u_0[M], z_0[M];
  float h_0[M];
  auto prologue = [&] {
#pragma unroll
    for (int i = 0; i < x_proj_state_rank_regs; ++i) {
      int const k = g + state_lanes * i;
      w_dt[i] = k < R ? to_float(a.dt_proj[static_cast<std::size_t>(d0) * R + k]) : 0.0f;
    }
    a2_0 = g < N ? a.A[static_cast<std::size_t>(d0) * N + g] * detail::log2e : 0.0f;  // exp(dt A) = 2^(dt A2)
    bias_0 = a.dt_bias[d0], skip_0 = a.skip[d0];
    wait_for_previous_kernel();
#pragma unroll
    for (int m = 0; m < M; ++m) {
      u_0[m] = a.xc[static_cast<std::size_t>(m) * D + d0];
      z_0[m] = a.xz[static_cast<std::size_t>(m) * 2 * D + D + d0];
      h_0[m] = g < N ? a.state[(static_cast<std::size_t>(m) * D + d0) * N + g] : 0.0f;
    }
  };

  // x_proj: the block's outputs, K split over `split` warps each, 4 loads a lane in flight
  gemv_block<M, 1, 4, x_proj_state_threads>(
      a.x_proj, D, xw, D, a.split, prologue,
      [&](int m, int p, float (&out)[vec]) {
        load_float<T, vec>(a.xc + static_cast<std::size_t>(m) * D + static_cast<std::size_t>(p) * vec, out);
      },
      [&](int m, int o, float sum) { a.x_dbl[static_cast<std::size_t>(m) * xw + o] = from_float<T>(sum); });

  // The meeting: the block's outputs, ordered before the add by the barrier, go with it.
  __syncthreads();
  if (threadIdx.x == 0) {
    add_release(a.arrived);
    while (load_acquire(a.arrived) < gridDim.x) {
    }
  }
  __syncthreads();

  // x_proj's rows into shared memory, through L2 (other blocks wrote them)
  extern __shared__ uint4 x_proj_state_shared[];
  T* const rows = reinterpret_cast<T*>(x_proj_state_shared);  // (M, R + 2N)
  for (int i = static_cast<int>(threadIdx.x); i < M * xw; i += x_proj_state_threads) rows[i] = load_from_l2(a.x_dbl + i);
  __syncthreads();

  // One round: channel q's dt_proj and softplus, its states and the gate, for every sequence. The
  // first round takes its weights, u, z and first states from registers.
  auto update = [&](int q, auto first_round) {
    constexpr bool held = decltype(first_round)::value;
    bool const mine = valid(q);
    int const d = mine ? c0 + q : D - 1;
    float a2 = 0.0f, bias = 0.0f, skip = 0.0f;
    if constexpr (held) {
      a2 = a2_0, bias = bias_0, skip = skip_0;
    } else {
      a2 = g < N ? a.A[static_cast<std::size_t>(d) * N + g] * detail::log2e : 0.0f;
      bias = a.dt_bias[d], skip = a.skip[d];
    }
#pragma unroll
    for (int m = 0; m < M; ++m) {
      T const* const row = rows + m * xw;  // dt_low, then B, then C
      float dt = 0.0f;
      int k0 = g;
      if constexpr (held) {
#pragma unroll
        for (int i = 0; i < x_proj_state_rank_regs; ++i) {
          int const k = g + state_lanes * i;
          if (k < R) dt += w_dt[i] * to_float(row[k]);
        }
        k0 = g + state_lanes * x_proj_state_rank_regs;
      }
      for (int k = k0; k < R; k += state_lanes) dt += to_float(a.dt_proj[static_cast<std::size_t>(d) * R + k]) * to_float(row[k]);
      dt = detail::step_size<T>(lanes_sum<state_lanes>(dt), bias);

      std::size_t const md = static_cast<std::size_t>(m) * D + d;
      float const u = to_float(held ? u_0[m] : a.xc[md]);
      float* const hs = a.state + md * N;
      float out = 0.0f;
      for (int n = g; n < N; n += state_lanes) {
        float const a2n = n == g ? a2 : a.A[static_cast<std::size_t>(d) * N + n] * detail::log2e;
        float const before = held && n == g ? h_0[m] : hs[n];
        float const next = detail::next_state(dt, a2n, before, dt * u, to_float(row[R + n]));
        if (mine) hs[n] = next;
        out += to_float(row[R + N + n]) * next;
      }
      out = lanes_sum<state_lanes>(out);
      if (mine && g == 0) {
        float const z = to_float(held ? z_0[m] : a.xz[static_cast<std::size_t>(m) * 2 * D + D + d]);
        a.y[md] = from_float<T>(detail::gated_output(out, skip, u, z));
      }
    }
  };
  // every lane takes every round (the sums over lanes are warp-wide), with or without a channel
  update(h, std::true_type{});
  int const rounds = (a.channels + groups - 1) / groups;
  for (int r = 1; r < rounds; ++r) update(h + r * groups, std::false_type{});
}

}  // namespace ssm::cuda::kernels
