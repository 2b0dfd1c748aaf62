#pragma once
/// \file
/// \brief A Mamba decoding step on `Kokkos::Cuda`: three or four launches per block instead of six.
///
/// A block's step is the residual add and RMSNorm, in_proj, the conv update, x_proj, dt_proj,
/// softplus, the state update, the gate and out_proj, for one token of each of B sequences.
/// Here (`mamba_block_step_backend`, one or two sequences):
/// 1. `norm_in_proj_conv`: in_proj as the weight-streaming matrix-vector product
///    (`ssm/linear/cuda/gemv.cuh`), each block first normalising residual + hidden into shared
///    memory for itself (a few kilobytes from L2, the norm's weights read before the wait for
///    the previous kernel and the rows once), and the thread that finishes u[d] advancing
///    channel d's conv state and writing its output (with the channel's filter read before the
///    wait for the previous kernel and its past inputs right after it);
/// 2. x_proj, the matrix-vector product;
/// 3. `dt_state_update`: each block copies its sequence's row of x_proj's output into shared
///    memory, then a warp per (sequence, channel) takes dt_proj's dot product over the R
///    low-rank inputs across its lanes, then the N state updates, then C·h; lane 0 adds D·u and
///    the gate. dt never goes to memory;
/// 4. `out_proj_residual`: out_proj, the thread that finishes out[n] also adding hidden[n] to
///    the residual stream (the add the norm of step 1 did in registers only: no block of step 1
///    may write the residual while others read it).
///
/// Where it fits (`plan_x_proj_state`), 2 and 3 are one launch, `x_proj_state_update`, whose blocks meet
/// at a counter between the two (`ssm/blocks/cuda/x_proj_state.cuh`): three launches a block.
///
/// A mixer's step alone (`mamba_step_backend`, one sequence: a block whose fused step does not
/// apply) runs the conv update, x_proj and `dt_state_update`; larger batches go op by op.
///
/// Every rounding is where the op-by-op path stores a value in the activation type T (the
/// normalised input, u, dt, the conv output), so that both paths compute the same function; only
/// the order of fp32 sums differs. `dt_state_update` takes its exponential, softplus and gate
/// from `ssm/core/cuda/fast_math.cuh` (the special-function unit), as the op-by-op CUDA kernels
/// do, and so does the conv update in `norm_in_proj_conv`, otherwise the host's
/// `conv_update_channel`.
///
/// (A first version also fused the conv update into x_proj, each block reducing its 64 channels
/// and the last block to finish adding the partial sums. On an H200 that lone last block's
/// reduction cost more than the launch it saved: the 2.8B model took 30 ms per step at B = 64.
/// A warp per channel walking all B sequences kept dt_proj's row in L1, but made a chain of B
/// dependent steps: 19 ms per step at B = 64.)

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>

#include <ssm/blocks/cuda/x_proj_state.cuh>
#include <ssm/conv/causal_conv1d.hpp>
#include <ssm/core/cuda.hpp>
#include <ssm/core/cuda/fast_math.cuh>
#include <ssm/core/cuda/lanes.cuh>
#include <ssm/core/dtype.hpp>
#include <ssm/core/math.hpp>
#include <ssm/core/views.hpp>
#include <ssm/linear/cuda/gemv.cuh>
#include <ssm/linear/cuda/narrow.cuh>
#include <ssm/scan/cuda/recurrence.cuh>

namespace ssm {

namespace cuda::kernels {

/// \brief Threads per block of `dt_state_update` (a warp per channel). On an H200 (2.8B, bf16, one
/// sequence) blocks of 512 made a token 0.4% faster than blocks of 256 (2.147 against 2.156 ms,
/// twice each, alternating in one run); 128 and 1024 were slower (2.166 and 2.221).
inline constexpr int step_threads = 512;

/// \brief Threads per block of `out_proj_residual` (320 blocks at the 2.8B shape instead of 640 with
/// `gemv_threads`). On an H200, with `step_threads` 512: 2.140 against 2.148 ms per token with
/// blocks of 256, and 2.159 with blocks of 128 (twice each, alternating in one run).
inline constexpr int out_proj_threads = 512;

/// \brief What `dt_state_update` reads and writes. x_dbl (B, R + 2N) is x_proj's output: dt_low,
/// B, C; dt_proj (D, R); dt_bias (D); A (D, N); skip (D), the D of the equations; xz (B, 2D), z
/// the second half; xc (B, D) the scan's u; state (B, D, N) updated in place; y (B, D) out.
template <class T, class Wt>
struct dt_state_args {
  T const* x_dbl;
  Wt const* dt_proj;
  float const* dt_bias;
  float const* A;
  float const* skip;
  T const* xz;
  T const* xc;
  float* state;
  T* y;
  int D, R, N;
};

/// \brief dt_proj, softplus, the state update and the gate; one warp per (sequence, channel).
///
/// Grid: (ceil(D / (step_threads / 32)), B) blocks of `step_threads`, with R + 2N values of T of
/// dynamic shared memory: the block's copy of x_proj's row of its sequence (within the default
/// 48 KiB for any Mamba shape; a launch beyond it fails with CUDA's error, not silently).
template <class T, class Wt>
__global__ void __launch_bounds__(step_threads) dt_state_update(dt_state_args<T, Wt> const a) {
  allow_next_kernel();
  int const lane = static_cast<int>(threadIdx.x) % 32;
  int const d = static_cast<int>(blockIdx.x) * (step_threads / 32) + static_cast<int>(threadIdx.x) / 32;
  int const b = static_cast<int>(blockIdx.y);
  int const D = a.D, R = a.R, N = a.N;
  bool const has_channel = d < D;
  int const dc = has_channel ? d : D - 1;  // a real channel's addresses; nothing stored
  // The weights first: nothing before this kernel writes them, so (launched as a programmatic
  // dependent, see ssm::cuda::launch) they load while the previous kernel finishes. dt_proj's
  // row in registers up to rank 32 * `rank_regs`, and A's row up to 32 states.
  constexpr int rank_regs = 8;
  float w_dt[rank_regs];
#pragma unroll
  for (int i = 0; i < rank_regs; ++i) {
    int const r = lane + 32 * i;
    w_dt[i] = r < R ? to_float(a.dt_proj[static_cast<std::size_t>(dc) * R + r]) : 0.0f;
  }
  float const a2_lane = lane < N ? a.A[static_cast<std::size_t>(dc) * N + lane] * detail::log2e : 0.0f;  // exp(dt A) = 2^(dt A2)
  float const bias = a.dt_bias[dc], d_skip = a.skip[dc];
  wait_for_previous_kernel();

  // Then, at once, everything the earlier kernels of the step wrote that the warp reads (u, z, the
  // first 32 states, and the block's copy of x_proj's row), so that the step waits for memory
  // once, not at each use. The row is read from L2 once per block into shared memory rather
  // than by every warp: the same few sectors asked for thousands of times in each step. On an
  // H200 (2.8B, bf16, one sequence) this form, with the tensors in a struct and the row read by
  // `ld.global.cg`, took 2.099 ms per token against 2.147 (alternating twice); the same staging
  // through `__restrict__` kernel parameters and plain loads took 2.162 against 2.139, a cause
  // not separated (see docs/benchmarks.md).
  int const xw = R + 2 * N;
  T const* row = a.x_dbl + static_cast<std::size_t>(b) * xw;  // dt_low, then B, then C
  std::size_t const bd = static_cast<std::size_t>(b) * D + dc;
  float* h = a.state + bd * N;
  bool const has_state = lane < N;
  T const u_raw = a.xc[bd], z_raw = a.xz[static_cast<std::size_t>(b) * 2 * D + D + dc];
  float const h_lane = has_channel && has_state ? h[lane] : 0.0f;
  extern __shared__ uint4 step_shared[];
  T* const staged = reinterpret_cast<T*>(step_shared);  // (R + 2N)
  for (int i = static_cast<int>(threadIdx.x); i < xw; i += static_cast<int>(blockDim.x)) staged[i] = load_from_l2(row + i);
  __syncthreads();
  if (!has_channel) return;
  T low[rank_regs];
#pragma unroll
  for (int i = 0; i < rank_regs; ++i) {
    int const r = lane + 32 * i;
    low[i] = staged[r < R ? r : 0];
  }
  T const B_lane = staged[R + (has_state ? lane : 0)], C_lane = staged[R + N + (has_state ? lane : 0)];

  float dt = 0.0f;
#pragma unroll
  for (int i = 0; i < rank_regs; ++i)
    if (lane + 32 * i < R) dt += w_dt[i] * to_float(low[i]);
  for (int r = lane + 32 * rank_regs; r < R; r += 32)
    dt += to_float(a.dt_proj[static_cast<std::size_t>(d) * R + r]) * to_float(staged[r]);
  dt = detail::step_size<T>(warp_sum(dt), bias);

  float const u = to_float(u_raw);
  float out = 0.0f;
  if (has_state) {
    float const next = detail::next_state(dt, a2_lane, h_lane, dt * u, to_float(B_lane));
    h[lane] = next;
    out = to_float(C_lane) * next;
  }
  for (int n = lane + 32; n < N; n += 32) {
    float const a2 = a.A[static_cast<std::size_t>(d) * N + n] * detail::log2e;
    float const next = detail::next_state(dt, a2, h[n], dt * u, to_float(staged[R + n]));
    h[n] = next;
    out += to_float(staged[R + N + n]) * next;
  }
  out = warp_sum(out);
  if (lane == 0) a.y[bd] = from_float<T>(detail::gated_output(out, d_skip, u, to_float(z_raw)));
}

/// \brief The widest conv filter `norm_in_proj_conv` takes (its filter and past inputs live in
/// registers): Mamba's width, 4.
inline constexpr int max_fused_conv_width = 4;

/// \brief What `norm_in_proj_conv` and `out_proj_residual` read and write (see the file comment).
template <class T, class Wt>
struct block_step_args {
  T const* hidden;          ///< (B, E)
  float* residual;          ///< (B, E)
  Wt const* norm_weight;    ///< (E)
  float eps;                ///< RMSNorm's epsilon
  Wt const* in_proj;        ///< (2D, E)
  Wt const* in_bias;        ///< (2D) or null
  Wt const* conv_weight;    ///< (D, W)
  Wt const* conv_bias;      ///< (D) or null
  T* conv_state;            ///< (B, D, W-1)
  T* xz;                    ///< (B, 2D) in_proj's output
  T* xc;                    ///< (B, D) the conv's output
  T const* y;               ///< (B, D) the gated scan output
  Wt const* out_proj;       ///< (E, D)
  Wt const* out_bias;       ///< (E) or null
  T* out;                   ///< (B, E); may be `hidden`
  int E, D, W;              ///< d_model, d_inner, d_conv
  unsigned* arrived = nullptr;  ///< `x_proj_state_update`'s meeting, if it ran: zeroed after the wait
};

/// \brief Dynamic shared memory of `norm_in_proj_conv` for M sequences of E features: the norm's
/// weights as floats, then each row's residual + hidden as floats, then the normalised rows in T.
/// \tparam T activation storage type. \param M sequences. \param E d_model. \return bytes.
template <class T>
constexpr std::size_t norm_shared_bytes(std::size_t M, std::size_t E) {
  return E * sizeof(float) + M * E * (sizeof(float) + sizeof(T));
}

/// \brief RMSNorm of residual + hidden, then in_proj, then the conv update of the u half.
///
/// Grid: as `gemv` with `Rows` outputs per warp over 2D outputs, K split `split` ways; dynamic
/// shared memory: `norm_shared_bytes<T>(M, E)`. Every block normalises the rows, so fewer,
/// larger blocks (`Rows` > 1) spend less on it. It reads the norm's weights into shared memory
/// before the wait for the previous kernel, and each row's residual + hidden once, keeping it in
/// shared memory between the sum of squares and the scaling. On an H200 (2.8B, bf16, one
/// sequence; one binary with the prologue chosen at run time, alternating twice) a token took
/// 2.067 ms so, 2.088 with the weights alone read early, and 2.261 with both read from memory in
/// each pass, as before. With the staged row of `dt_state_update`: 2.140 → 2.027 ms.
/// \tparam M sequences (1 to 8; the backend launches 1 and 2). \tparam Rows outputs per warp.
/// \tparam Depth loads per batch (see `gemv_block`).
template <int M, int Rows, int Depth, class T, class Wt>
__global__ void __launch_bounds__(gemv_threads) norm_in_proj_conv(block_step_args<T, Wt> const a, int split) {
  constexpr int vec = 16 / sizeof(Wt);
  int const E = a.E, D = a.D, W = a.W;
  extern __shared__ uint4 shared_rows[];
  float* const norm_weight = reinterpret_cast<float*>(shared_rows);  // (E)
  float* const sums = norm_weight + E;                                // (M, E) residual + hidden
  T* const normed = reinterpret_cast<T*>(sums + M * E);               // (M, E)
  // The lane that will finish u[n] of sequence m (see `gemv_block`) advances channel n's conv:
  // its filter and bias are read before the wait, its past inputs right after it, so that none
  // of them is a round trip to memory at the end, where the block's last outputs wait for it.
  int const lane = static_cast<int>(threadIdx.x) % 32;
  int const n_own = gemv_first_output<Rows>(split) + lane / M, m_own = lane % M;
  bool const convolves = static_cast<int>(threadIdx.x) / 32 % split == 0 && lane < Rows * M && n_own < D;
  T* const conv_state = convolves ? a.conv_state + (static_cast<std::size_t>(m_own) * D + n_own) * (W - 1) : nullptr;
  float filter[max_fused_conv_width] = {}, conv_bias = 0.0f;
  T past[max_fused_conv_width - 1];
  if (convolves) {
#pragma unroll
    for (int k = 0; k < max_fused_conv_width; ++k)
      if (k < W) filter[k] = to_float(a.conv_weight[static_cast<std::size_t>(n_own) * W + k]);
    if (a.conv_bias) conv_bias = to_float(a.conv_bias[n_own]);
  }
  auto normalise = [&] {
    // the norm's weights first: no kernel writes them, so they load while the previous one ends
    for (int e = static_cast<int>(threadIdx.x); e < E; e += gemv_threads) norm_weight[e] = to_float(a.norm_weight[e]);
    wait_for_previous_kernel();
    if (convolves) {
#pragma unroll
      for (int k = 0; k + 1 < max_fused_conv_width; ++k)
        if (k + 1 < W) past[k] = conv_state[k];
    }
    float squares[M] = {};
#pragma unroll
    for (int m = 0; m < M; ++m)
      for (int e = static_cast<int>(threadIdx.x); e < E; e += gemv_threads) {
        float const r = to_float(a.hidden[m * E + e]) + a.residual[m * E + e];
        sums[m * E + e] = r;
        squares[m] += r * r;
      }
    __shared__ float partial[gemv_threads / 32][M];
    int const warp = static_cast<int>(threadIdx.x) / 32;
#pragma unroll
    for (int m = 0; m < M; ++m) {
      float const sum = warp_sum(squares[m]);
      if (threadIdx.x % 32 == 0) partial[warp][m] = sum;
    }
    __syncthreads();
#pragma unroll
    for (int m = 0; m < M; ++m) {
      float total = 0.0f;
      for (int w = 0; w < gemv_threads / 32; ++w) total += partial[w][m];
      float const inv_rms = 1.0f / sqrtf(total / static_cast<float>(E) + a.eps);
      for (int e = static_cast<int>(threadIdx.x); e < E; e += gemv_threads)
        normed[m * E + e] = from_float<T>(sums[m * E + e] * inv_rms * norm_weight[e]);
    }
    __syncthreads();
  };
  auto activations = [&](int m, int p, float (&out)[vec]) {
#pragma unroll
    for (int j = 0; j < vec; ++j) out[j] = to_float(normed[m * E + p * vec + j]);
  };
  auto store = [&](int m, int n, float sum) {  // called by the lane with n = n_own, m = m_own
    if (a.in_bias) sum += to_float(a.in_bias[n]);
    T const v = from_float<T>(sum);
    a.xz[static_cast<std::size_t>(m) * 2 * D + n] = v;
    if (n >= D) return;  // z
    // the conv update of channel n: `ssm::detail::conv_update_channel`'s sums, the special-function silu
    float acc = conv_bias;
#pragma unroll
    for (int k = 0; k + 1 < max_fused_conv_width; ++k)
      if (k + 1 < W) acc += filter[k] * to_float(past[k]);
#pragma unroll
    for (int k = 0; k < max_fused_conv_width; ++k)
      if (k == W - 1) acc += filter[k] * to_float(v);
#pragma unroll
    for (int k = 0; k + 2 < max_fused_conv_width; ++k)
      if (k + 2 < W) conv_state[k] = past[k + 1];
    if (W > 1) conv_state[W - 2] = v;
    a.xc[static_cast<std::size_t>(m) * D + n] = from_float<T>(detail::silu_fast(acc));
  };
  gemv_block<M, Rows, Depth>(a.in_proj, E, 2 * D, E, split, normalise, activations, store);
}

/// \brief out_proj, and residual += hidden (see the file comment).
///
/// Grid: as `gemv` with one output per warp over E outputs, K = D split `split` ways, in blocks of
/// `out_proj_threads`.
/// \tparam M sequences (1 to 8; the backend launches 1 and 2). \tparam Depth loads per batch (see `gemv_block`).
template <int M, int Depth, class T, class Wt>
__global__ void __launch_bounds__(out_proj_threads) out_proj_residual(block_step_args<T, Wt> const a, int split) {
  constexpr int vec = 16 / sizeof(Wt);
  int const E = a.E, D = a.D;
  gemv_block<M, 1, Depth, out_proj_threads>(
      a.out_proj, D, E, D, split,
      [&] {
        wait_for_previous_kernel();
        if (a.arrived && blockIdx.x == 0 && threadIdx.x == 0) *a.arrived = 0;  // every block has met
      },
      [&](int m, int p, float (&out)[vec]) { load_float<T, vec>(a.y + m * D + p * vec, out); },
      [&](int m, int n, float sum) {
        if (a.out_bias) sum += to_float(a.out_bias[n]);
        std::size_t const i = static_cast<std::size_t>(m) * E + n;
        a.residual[i] += to_float(a.hidden[i]);  // read before `out`, which may be `hidden`, is written
        a.out[i] = from_float<T>(sum);
      });
}

}  // namespace cuda::kernels

/// \brief On `Kokkos::Cuda` the middle of a decoding step is the conv update, x_proj and one
/// kernel for the rest (see the file comment).
template <>
struct mamba_step_backend<Kokkos::Cuda> {
  static constexpr bool fused = true;  ///< `mamba_mixer::step` asks `fuses`, then calls `run`

  /// \brief Whether to fuse a step of `batch` sequences. Each sequence's warps read dt_proj's
  /// weights again (from L2), and a warp per (sequence, channel) moves the state in 4-byte
  /// pieces. On an H200 (2.8B, bf16), once the state update moved the state in 16-byte pieces
  /// (`ssm/scan/cuda/state_update.cuh`), op by op was faster at every batch from 2: 2.84 against
  /// 2.91 ms per step at 2 sequences, 3.12 against 4.25 at 8, 3.52 against 5.98 at 16.
  /// \param batch B. \return B <= 1.
  static bool fuses(std::size_t batch) { return batch <= 1; }

  /// \brief Enqueue the three launches on `space`'s stream.
  /// \tparam T activation storage type. \tparam Wt weight storage type. \tparam MemSpace memory space.
  /// \param space the execution space instance. \param c the mixer's sizes.
  /// \param p the tensors (see `mamba_step_params`).
  template <class T, class Wt, class MemSpace>
  static void run(Kokkos::Cuda const& space, mamba_config const& c, mamba_step_params<T, Wt, MemSpace> const& p) {
    std::size_t const D = c.d_inner, W = c.d_conv, B = p.batch;
    auto const& w = *p.weights;
    causal_conv1d_update_params<T, Wt, MemSpace> conv;
    conv.x = strided<const T, MemSpace>(p.xz, B, 2 * D, D, 1);
    conv.state = view3<T, MemSpace>(p.conv_state, Kokkos::LayoutStride(B, D * (W - 1), D, W - 1, W - 1, 1));
    conv.weight = w.conv1d_weight;
    conv.bias = w.conv1d_bias;
    conv.silu_activation = true;
    conv.out = strided<T, MemSpace>(p.xc, B, D, D, 1);
    causal_conv1d_update(space, conv);
    after_conv(space, c, p);
  }

  /// \brief x_proj, then `dt_state_update`: the step after the conv update.
  /// \tparam T activation storage type. \tparam Wt weight storage type. \tparam MemSpace memory space.
  /// \param space the execution space instance. \param c the mixer's sizes.
  /// \param p the tensors (see `mamba_step_params`), `xc` already written.
  template <class T, class Wt, class MemSpace>
  static void after_conv(Kokkos::Cuda const& space, mamba_config const& c, mamba_step_params<T, Wt, MemSpace> const& p) {
    std::size_t const D = c.d_inner, N = c.d_state, R = c.dt_rank, B = p.batch, xw = R + 2 * N;
    auto const& w = *p.weights;
    linear(space, linear_params<T, Wt, MemSpace>{strided<const T, MemSpace>(p.xc, B, D, D, 1), w.x_proj_weight, {},
                                                 strided<T, MemSpace>(p.x_dbl, B, xw, xw, 1)});
    cuda::kernels::dt_state_args<T, Wt> const a{p.x_dbl, w.dt_proj_weight.data(), w.dt_proj_bias.data(), w.A.data(),
                                                w.D.data(),  p.xz,  p.xc,  p.ssm_state, p.y,
                                                static_cast<int>(D), static_cast<int>(R), static_cast<int>(N)};
    cuda::launch(cuda::kernels::dt_state_update<T, Wt>, dim3(cuda::blocks_for(D, cuda::kernels::step_threads / 32),
                                                                static_cast<unsigned>(B)),
                 dim3(cuda::kernels::step_threads), xw * sizeof(T), cuda::stream(space),
                 "ssm::mamba_mixer::step (CUDA): dt_state_update", a);
  }
};

/// \brief On `Kokkos::Cuda` a block's decoding step of one or two sequences is three or four
/// launches (see the file comment).
template <>
struct mamba_block_step_backend<Kokkos::Cuda> {
  static constexpr bool fused = true;  ///< `mamba_block::step` asks `fuses`, then calls `run`

  /// 4, 5 or 6 to make `run` take that many in_proj outputs per warp (the tests run each); 0,
  /// the default, to let `in_proj_rows` choose.
  static inline thread_local int force_in_proj_rows = 0;

  /// \brief in_proj outputs per warp of `norm_in_proj_conv`, among 4, 5 and 6: the fewest that
  /// take the fewest waves of resident blocks.
  ///
  /// Every block normalises the row before its products, so fewer, larger blocks spend less on it;
  /// and a block that starts only when another ends streams its weights alone at the end. On an
  /// H200 (2.8B, bf16; 132 multiprocessors, 2 blocks each at 90 to 127 registers a thread), in ms
  /// per token: one output per warp 2.75, two 2.61, four 2.55 (320 blocks: two waves), five 2.32
  /// (256 blocks: one wave). Batches of one load instead of two per row hold fewer bytes in flight:
  /// four 2.54, five 2.68, six 2.60, eight 2.57.
  /// \tparam M sequences. \tparam T activation storage type. \tparam Wt weight storage type.
  /// \param outputs in_proj's outputs, 2D. \param shared the kernel's dynamic shared memory.
  /// \return 4, 5 or 6.
  template <int M, class T, class Wt>
  static int in_proj_rows(int outputs, std::size_t shared) {
    int best = 0;
    long best_waves = 0;
    cuda::for_each_constant<4, 5, 6>([&](auto rows) {
      int per_multiprocessor = 0;
      cuda::check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
                      &per_multiprocessor, cuda::kernels::norm_in_proj_conv<M, rows, 2, T, Wt>,
                      cuda::kernels::gemv_threads, shared),
                  "ssm::mamba_block::step (CUDA): occupancy of norm_in_proj_conv");
      long const resident = static_cast<long>(per_multiprocessor) * cuda::multiprocessors();
      long const blocks =
          cuda::blocks_for(static_cast<std::size_t>(outputs), rows * (cuda::kernels::gemv_threads / 32));
      long const waves = resident > 0 ? (blocks + resident - 1) / resident : blocks;
      if (best == 0 || waves < best_waves) best = rows, best_waves = waves;
    });
    return best;
  }

  /// The most sequences `run` takes, 1 or 2; 0 (the default) for `SSM_CUDA_FUSED_BLOCK_BATCH`, or
  /// `max_fused_batch` where that is not set. The tests set it.
  static inline thread_local int force_max_batch = 0;
  /// Steps `run` has taken on this thread (the tests check that it took theirs).
  static inline thread_local std::size_t runs = 0;
  /// \brief The most sequences `run` takes (its kernels are instantiated for 1 and 2).
  ///
  /// On an H200 (2.8B, bf16; one binary, the limit set at run time, alternating twice), ms per
  /// step: 2 sequences 2.639 op by op against 2.355 fused; instantiated for 3 and 4 as well, the
  /// fused step took 3.762 and 4.534 ms against 2.685 and 2.699 op by op.
  static constexpr int max_fused_batch = 2;

  /// \brief The most sequences a fused step takes (see `force_max_batch`).
  /// \return 1 to `max_fused_batch`.
  static int max_batch() {
    static int const from_environment = [] {
      char const* v = std::getenv("SSM_CUDA_FUSED_BLOCK_BATCH");
      return v && *v ? std::atoi(v) : max_fused_batch;
    }();
    int const b = force_max_batch > 0 ? force_max_batch : from_environment;
    return b < 1 ? 1 : b > max_fused_batch ? max_fused_batch : b;
  }

  /// \brief Whether to fuse this step: up to `max_batch()` sequences (from 3, in_proj and out_proj
  /// are faster through cuBLASLt than through the matrix-vector kernel: see `max_fused_batch`, and
  /// at 8 the fused step made the 2.8B model 3x slower on an H200), whole aligned 16-byte pieces
  /// of every row the matrix-vector products read, `norm_shared_bytes` within a block's shared
  /// memory, and a conv filter of at most `max_fused_conv_width` taps.
  /// \tparam T activation storage type. \tparam Wt weight storage type. \tparam MemSpace memory space.
  /// \param c the block's sizes. \param p the tensors.
  /// \return true if `run` takes it.
  template <class T, class Wt, class MemSpace>
  static bool fuses(mamba_config const& c, mamba_block_step_params<T, Wt, MemSpace> const& p) {
    if constexpr (!cuda::gemv_types<T, Wt>) {
      return false;
    } else {
      constexpr std::size_t vec = 16 / sizeof(Wt);
      std::size_t const B = static_cast<std::size_t>(p.mixer.batch), E = c.d_model, D = c.d_inner;
      auto const& w = *p.mixer.weights;
      bool const pieces = E % vec == 0 && D % vec == 0;
      bool const aligned = cuda::aligned(p.mixer.y, 16) && cuda::aligned(w.in_proj_weight.data(), 16) &&
                           cuda::aligned(w.out_proj_weight.data(), 16);
      return B >= 1 && B <= static_cast<std::size_t>(max_batch()) && pieces && aligned &&
             c.d_conv <= cuda::kernels::max_fused_conv_width &&
             cuda::kernels::norm_shared_bytes<T>(B, E) <= cuda::max_shared_per_block();
    }
  }

  /// \brief Enqueue the three or four launches on `space`'s stream.
  /// \tparam T activation storage type. \tparam Wt weight storage type. \tparam MemSpace memory space.
  /// \param space the execution space instance. \param c the block's sizes.
  /// \param p the tensors (see `mamba_block_step_params`); `fuses(c, p)` must hold.
  template <class T, class Wt, class MemSpace>
  static void run(Kokkos::Cuda const& space, mamba_config const& c, mamba_block_step_params<T, Wt, MemSpace> const& p) {
    if constexpr (cuda::gemv_types<T, Wt>) {
      ++runs;
      auto const& w = *p.mixer.weights;
      int const E = c.d_model, D = c.d_inner;
      cuda::kernels::block_step_args<T, Wt> a{p.hidden,
                                              p.residual,
                                              p.norm_weight,
                                              c.norm_eps,
                                              w.in_proj_weight.data(),
                                              c.bias ? w.in_proj_bias.data() : nullptr,
                                              w.conv1d_weight.data(),
                                              c.conv_bias ? w.conv1d_bias.data() : nullptr,
                                              p.mixer.conv_state,
                                              p.mixer.xz,
                                              p.mixer.xc,
                                              p.mixer.y,
                                              w.out_proj_weight.data(),
                                              c.bias ? w.out_proj_bias.data() : nullptr,
                                              p.out,
                                              E,
                                              D,
                                              c.d_conv};
      cudaStream_t const stream = cuda::stream(space);
      auto launch = [&](auto kernel, int rows, int N, std::size_t shared, int threads, char const* what) {
        int const split = cuda::gemv_shape_for(N).split;
        unsigned const blocks =
            cuda::blocks_for(static_cast<std::size_t>(N), static_cast<std::size_t>(rows * (threads / 32) / split));
        cuda::launch(kernel, dim3(blocks), dim3(static_cast<unsigned>(threads)), shared, stream, what, a, split);
      };
      int const B = p.mixer.batch;
      std::size_t const normed_bytes =
          cuda::kernels::norm_shared_bytes<T>(static_cast<std::size_t>(B), static_cast<std::size_t>(E));
      cuda::with_constant<1, 2>(B, [&](auto m) {
        // the choice is a few driver queries: made once per device, size and batch
        thread_local struct {
          int device = -1, outputs = 0;
          std::size_t shared = 0;
          int rows = 0;
        } choice;
        int device = 0;
        cuda::check(cudaGetDevice(&device), "ssm::mamba_block::step (CUDA): cudaGetDevice");
        if (choice.device != device || choice.outputs != 2 * D || choice.shared != normed_bytes) {
          cuda::for_each_constant<4, 5, 6>([&](auto rows) {
            cuda::allow_shared(cuda::kernels::norm_in_proj_conv<m, rows, 2, T, Wt>, normed_bytes);
          });
          choice = {device, 2 * D, normed_bytes, in_proj_rows<m, T, Wt>(2 * D, normed_bytes)};
        }
        cuda::with_constant<4, 5, 6>(force_in_proj_rows != 0 ? force_in_proj_rows : choice.rows, [&](auto rows) {
          cuda::allow_shared(cuda::kernels::norm_in_proj_conv<m, rows, 2, T, Wt>, normed_bytes);
          launch(cuda::kernels::norm_in_proj_conv<m, rows, 2, T, Wt>, rows, 2 * D, normed_bytes,
                 cuda::kernels::gemv_threads, "ssm::mamba_block::step (CUDA): norm_in_proj_conv");
        });
        if (x_proj_state_plan const t = plan_x_proj_state<T, Wt>(c, p); t) {
          ++x_proj_state_runs;
          run_x_proj_state<m>(stream, c, p, t);
          a.arrived = p.mixer.meeting;  // out_proj_residual sets it back to zero
        } else {
          mamba_step_backend<Kokkos::Cuda>::after_conv(space, c, p.mixer);
        }
        launch(cuda::kernels::out_proj_residual<m, 2, T, Wt>, 1, E, 0, cuda::kernels::out_proj_threads,
               "ssm::mamba_block::step (CUDA): out_proj_residual");
      });
    }
  }

  /// 1 to make `run` take x_proj and the state update in one launch (`ssm/blocks/cuda/x_proj_state.cuh`)
  /// wherever it can, 0 to make it take two; -1, the default, for `SSM_CUDA_X_PROJ_STATE` (0 or 1), or
  /// one launch where that is not set. The tests set it.
  static inline thread_local int force_x_proj_state = -1;
  /// Steps `run` has taken with x_proj and the state update in one launch, on this thread.
  static inline thread_local std::size_t x_proj_state_runs = 0;

  /// \brief How `x_proj_state_update` covers a step; false where it does not.
  struct x_proj_state_plan {
    int blocks = 0;    ///< one per multiprocessor at most
    int channels = 0;  ///< per block
    int split = 0;     ///< warps per output of x_proj
    /// \brief Whether the launch takes the step. \return true if so.
    explicit operator bool() const { return blocks > 0; }
  };

  /// \brief How `x_proj_state_update` would cover a block of these sizes on the current device,
  /// whether or not it is asked for: the channels dealt evenly over at most one block per
  /// multiprocessor, then x_proj's outputs over the blocks, each output over as many warps as
  /// divide a block's evenly; false where a block's outputs outnumber its warps.
  /// \param c the block's sizes. \return the plan, or false.
  static x_proj_state_plan x_proj_state_fits(mamba_config const& c) {
    constexpr int warps = cuda::kernels::x_proj_state_threads / 32;
    int const SMs = cuda::multiprocessors();
    int const D = c.d_inner, xw = c.dt_rank + 2 * c.d_state;
    x_proj_state_plan t;
    t.channels = (D + SMs - 1) / SMs;
    t.blocks = (D + t.channels - 1) / t.channels;
    int const outputs = (xw + t.blocks - 1) / t.blocks;
    if (outputs > warps) return {};
    for (t.split = warps / outputs; warps % t.split != 0;) --t.split;  // 2.8B: 2 outputs, 10 warps each
    return t;
  }

  /// \brief Whether, and how, `x_proj_state_update` takes a step: where it fits (`x_proj_state_fits`), x_proj's
  /// rows fit its default shared memory, the mixer has its meeting word, and it is asked for
  /// (`force_x_proj_state`).
  /// \tparam T activation storage type. \tparam Wt weight storage type. \tparam MemSpace memory space.
  /// \param c the block's sizes. \param p the tensors. \return the plan, or false.
  template <class T, class Wt, class MemSpace>
  static x_proj_state_plan plan_x_proj_state(mamba_config const& c, mamba_block_step_params<T, Wt, MemSpace> const& p) {
    static int const from_environment = [] {
      char const* v = std::getenv("SSM_CUDA_X_PROJ_STATE");
      return v && *v ? std::atoi(v) : 1;
    }();
    if ((force_x_proj_state >= 0 ? force_x_proj_state : from_environment) == 0 || p.mixer.meeting == nullptr) return {};
    std::size_t const rows_bytes = static_cast<std::size_t>(p.mixer.batch) * (c.dt_rank + 2 * c.d_state) * sizeof(T);
    if (rows_bytes > 48 * 1024) return {};
    return x_proj_state_fits(c);
  }

  /// \brief Enqueue `x_proj_state_update` (`fuses` and `plan_x_proj_state` hold); `out_proj_residual` must
  /// follow it with its `arrived` set to the meeting's counter.
  template <int M, class T, class Wt, class MemSpace>
  static void run_x_proj_state(cudaStream_t stream, mamba_config const& c, mamba_block_step_params<T, Wt, MemSpace> const& p,
                       x_proj_state_plan const& t) {
    namespace k = cuda::kernels;
    auto const& w = *p.mixer.weights;
    int const D = c.d_inner, R = c.dt_rank, N = c.d_state;
    k::x_proj_state_args<T, Wt> const a{.xc = p.mixer.xc,
                                        .x_proj = w.x_proj_weight.data(),
                                        .x_dbl = p.mixer.x_dbl,
                                        .dt_proj = w.dt_proj_weight.data(),
                                        .dt_bias = w.dt_proj_bias.data(),
                                        .A = w.A.data(),
                                        .skip = w.D.data(),
                                        .xz = p.mixer.xz,
                                        .state = p.mixer.ssm_state,
                                        .y = p.mixer.y,
                                        .arrived = p.mixer.meeting,
                                        .D = D,
                                        .R = R,
                                        .N = N,
                                        .channels = t.channels,
                                        .split = t.split};
    std::size_t const rows_bytes = static_cast<std::size_t>(M) * static_cast<std::size_t>(R + 2 * N) * sizeof(T);
    cuda::launch(k::x_proj_state_update<M, T, Wt>, dim3(static_cast<unsigned>(t.blocks)), dim3(k::x_proj_state_threads),
                 rows_bytes, stream, "ssm::mamba_block::step (CUDA): x_proj_state_update", a);
  }
};

/// \brief On `Kokkos::Cuda`, past the fused block step's batches (from 3 sequences), each block's
/// out_proj leaves 2 fp32 partial sums for the next block's norm to add (`step_rows`).
///
/// There out_proj is cuBLASLt's, which splits its long K and adds the slices in a launch of its
/// own: at the 2.8B shape on an H200 (`bench_cuda_linear --variants`) that pair took 10.84 µs at
/// 16 rows and 11.16 at 64, against 8.95 and 9.23 for two products over halves of K into fp32
/// partial sums with no launch to add them. The norm after it reads the partials instead of one
/// row of T. A step of 2 to 64 sequences of the 2.8B model took 1.2 to 1.7% less time so (H200,
/// bf16, `SSM_CUDA_STEP_PARTIALS=0` alternating in the same run). Not where the block step is fused
/// (`mamba_block_step_backend`), nor where out_proj has a bias or mixes storage types.
template <>
struct step_partials<Kokkos::Cuda> {
  /// A number of partial sums to use instead of the choice below (0 for none), for the tests and
  /// benchmarks; -1, the default, to let `slices` choose. `SSM_CUDA_STEP_PARTIALS` sets it too.
  static inline thread_local int force_slices = -1;

  /// \brief 2 where out_proj would run on cuBLASLt (more sequences than the fused block step
  /// takes, outside the shapes of the matrix-vector kernel and `narrow_gemm`); 0 otherwise.
  /// \tparam T,Wt activation and weight storage types.
  /// \param c the sizes. \param batch the sequences.
  /// \return the number of partial sums, or 0 for rows of T.
  template <class T, class Wt>
  static int slices(mamba_config const& c, std::size_t batch) {
    if (c.bias || !std::is_same_v<T, Wt>) return 0;
    int const forced = force_slices >= 0 ? force_slices : from_environment();
    auto const E = static_cast<std::size_t>(c.d_model);
    auto const size = [](int v) { return static_cast<std::size_t>(v); };
    bool const own_kernel = (E <= 1024 && batch <= size(cuda::gemv_max_rows)) ||
                            (E <= size(cuda::narrow_max_outputs) && batch <= size(cuda::narrow_max_rows));
    bool const fused = batch <= size(mamba_block_step_backend<Kokkos::Cuda>::max_batch());
    int const S = forced >= 0 ? forced : !fused && !own_kernel ? 2 : 0;
    return S > 0 && c.d_inner % S == 0 ? S : 0;
  }

 private:
  static int from_environment() {
    static int const value = [] {
      char const* v = std::getenv("SSM_CUDA_STEP_PARTIALS");
      return v && *v ? std::atoi(v) : -1;
    }();
    return value;
  }
};

}  // namespace ssm
