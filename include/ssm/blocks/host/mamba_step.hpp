#pragma once
/// \file
/// \brief A Mamba decoding step on a host execution space: one parallel region per block.
///
/// Op by op, a block's step is seven parallel regions: the norm, in_proj, the conv update,
/// x_proj, dt_proj, the state update and out_proj. On a few cores each one is a fork and a join
/// of the threads around a few microseconds of work, and the threads spin while the calling
/// thread sets up the next one. Here (`mamba_block_step_backend` of the host spaces, up to
/// `host::few_rows` sequences) the step is one team of all the space's threads, in four phases
/// separated by three team barriers:
/// 1. every thread normalises residual + hidden into its own scratch (reading a few kilobytes
///    costs less than a barrier), then the team runs in_proj, eight outputs per work item. The
///    item that computes u[d, d + 8) then advances those channels' conv states and writes their
///    outputs;
/// 2. residual += hidden (nothing reads either any more), and x_proj;
/// 3. per run of 16 channels: dt_proj's dot products, softplus, the state update, the D skip and
///    the gate (dt never goes to memory);
/// 4. out_proj.
///
/// The numbers are those of the op-by-op path: every value is rounded to the activation type T
/// where that path stores it (the normalised input, u and z, the conv output, x_proj's output,
/// dt, y), and the dot products (`host::dot_row`), the state update (`detail::update_channels`,
/// channel by channel `detail::update_channel`'s values) and the transcendental functions are the
/// same functions. Only the order of the norm's sum of squares differs.

#include <cstddef>
#include <type_traits>

#include <Kokkos_Core.hpp>

#include <ssm/blocks/mamba.hpp>  // which includes this file at its end, once it is complete
#include <ssm/conv/causal_conv1d.hpp>
#include <ssm/core/compat.hpp>
#include <ssm/core/dtype.hpp>
#include <ssm/core/math.hpp>
#include <ssm/core/views.hpp>
#include <ssm/linear/host_gemv.hpp>
#include <ssm/scan/state_update.hpp>

namespace ssm {

namespace host::detail {

/// \brief Enqueue a block's decoding step of `p.mixer.batch` sequences as one team of all of
/// `space`'s threads (see the file comment).
/// \tparam ExecSpace a host execution space. \tparam T activation storage type.
/// \tparam Wt weight storage type. \tparam MemSpace a host-accessible memory space.
/// \param space the execution space instance. \param c the block's sizes.
/// \param p the tensors; every one contiguous, B <= `host::few_rows`.
template <class ExecSpace, class T, class Wt, class MemSpace>
void block_step(ExecSpace const& space, mamba_config const& c, mamba_block_step_params<T, Wt, MemSpace> const& p) {
  using policy = Kokkos::TeamPolicy<ExecSpace>;
  using member = typename policy::member_type;
  using scratch = Kokkos::View<float*, typename ExecSpace::scratch_memory_space, Kokkos::MemoryUnmanaged>;
  int const B = p.mixer.batch, E = c.d_model, D = c.d_inner, N = c.d_state, W = c.d_conv, R = c.dt_rank;
  int const xw = R + 2 * N;  // x_proj's outputs: dt (low rank), B, C
  auto const& w = *p.mixer.weights;
  // raw pointers into the weights; an absent bias is null
  Wt const* const norm_w = p.norm_weight;
  Wt const* const in_w = w.in_proj_weight.data();
  Wt const* const in_b = given(w.in_proj_bias) ? w.in_proj_bias.data() : nullptr;
  Wt const* const conv_w = w.conv1d_weight.data();
  Wt const* const conv_b = given(w.conv1d_bias) ? w.conv1d_bias.data() : nullptr;
  Wt const* const x_w = w.x_proj_weight.data();
  Wt const* const dt_w = w.dt_proj_weight.data();
  float const* const dt_b = given(w.dt_proj_bias) ? w.dt_proj_bias.data() : nullptr;
  float const* const A = w.A.data();
  float const* const skip = given(w.D) ? w.D.data() : nullptr;
  Wt const* const out_w = w.out_proj_weight.data();
  Wt const* const out_b = given(w.out_proj_bias) ? w.out_proj_bias.data() : nullptr;
  auto const q = p;
  float const eps = c.norm_eps;
  constexpr int per_item = features_per_item;
  constexpr int run = ssm::detail::state_update_channel_run<ExecSpace>;
  int const runs = (D + run - 1) / run;

  auto const body = [=](member const& team) {
    // fp32 copies of what the next phase reads from every thread: u after the conv, x_proj's
    // output, y; and this thread's normalised input
    scratch const xc_f(team.team_scratch(1), B * D), xdbl_f(team.team_scratch(1), B * xw),
        y_f(team.team_scratch(1), B * D), normed(team.thread_scratch(1), B * E);

    // 1. the norm (every thread, all of it), in_proj and the conv update
    for (int m = 0; m < B; ++m) {
      T const* const hidden = q.hidden + static_cast<std::size_t>(m) * E;
      float const* const residual = q.residual + static_cast<std::size_t>(m) * E;
      float sum_squares = 0.0f;
      for (int e = 0; e < E; ++e) {
        float const r = to_float(hidden[e]) + residual[e];
        sum_squares += r * r;
      }
      float const inv_rms = 1.0f / compat::sqrt(sum_squares / static_cast<float>(E) + eps);
      for (int e = 0; e < E; ++e)
        normed(m * E + e) = round_to<T>((to_float(hidden[e]) + residual[e]) * inv_rms * to_float(norm_w[e]));
    }
    Kokkos::parallel_for(Kokkos::TeamThreadRange(team, (2 * D + per_item - 1) / per_item), [&](int const item) {
      int const n0 = item * per_item, n1 = n0 + per_item < 2 * D ? n0 + per_item : 2 * D;
      for (int n = n0; n < n1; ++n) {
        float const init = in_b != nullptr ? to_float(in_b[n]) : 0.0f;
        for (int m = 0; m < B; ++m)
          q.mixer.xz[static_cast<std::size_t>(m) * 2 * D + n] =
              from_float<T>(dot_row(in_w + static_cast<std::size_t>(n) * E, &normed(m * E), E, init));
      }
      // the conv update of the channels of u this item finished
      for (int d = n0; d < n1 && d < D; ++d)
        for (int m = 0; m < B; ++m) {
          T* const state = q.mixer.conv_state + (static_cast<std::size_t>(m) * D + d) * (W - 1);
          T const u = ssm::detail::conv_update_channel(conv_w + static_cast<std::size_t>(d) * W, 1, state, 1, W,
                                                       conv_b != nullptr ? to_float(conv_b[d]) : 0.0f,
                                                       q.mixer.xz[static_cast<std::size_t>(m) * 2 * D + d], true);
          q.mixer.xc[static_cast<std::size_t>(m) * D + d] = u;
          xc_f(m * D + d) = to_float(u);
        }
    });
    team.team_barrier();

    // 2. the residual stream, and x_proj
    Kokkos::parallel_for(Kokkos::TeamThreadRange(team, B * E),
                         [&](int const i) { q.residual[i] = to_float(q.hidden[i]) + q.residual[i]; });
    Kokkos::parallel_for(Kokkos::TeamThreadRange(team, xw), [&](int const n) {
      for (int m = 0; m < B; ++m) {
        T const v = from_float<T>(dot_row(x_w + static_cast<std::size_t>(n) * D, &xc_f(m * D), D, 0.0f));
        q.mixer.x_dbl[static_cast<std::size_t>(m) * xw + n] = v;
        xdbl_f(m * xw + n) = to_float(v);
      }
    });
    team.team_barrier();

    // 3. dt_proj, softplus, the state update and the gate, per run of channels
    Kokkos::parallel_for(Kokkos::TeamThreadRange(team, B * runs), [&](int const item) {
      int const m = item / runs, d0 = (item % runs) * run, count = D - d0 < run ? D - d0 : run;
      float dts[run];
      for (int j = 0; j < count; ++j) {
        int const d = d0 + j;
        dts[j] = round_to<T>(dot_row(dt_w + static_cast<std::size_t>(d) * R, &xdbl_f(m * xw), R, 0.0f)) +
                 (dt_b != nullptr ? dt_b[d] : 0.0f);
      }
      for (int j = 0; j < count; ++j) dts[j] = fast_softplus(dts[j]);
      float gates[run];  // a loop of its own, so that it vectorizes
      T const* const z = q.mixer.xz + static_cast<std::size_t>(m) * 2 * D + D + d0;
      for (int j = 0; j < count; ++j) gates[j] = fast_silu(to_float(z[j]));
      T const* const Bm = q.mixer.x_dbl + static_cast<std::size_t>(m) * xw + R;
      float const* const xs = &xc_f(m * D + d0);
      float ys[run];
      ssm::detail::update_channels(q.mixer.ssm_state + (static_cast<std::size_t>(m) * D + d0) * N,
                                   A + static_cast<std::size_t>(d0) * N, Bm, Bm + N, N, count, dts, xs, ys);
      for (int j = 0; j < count; ++j) {
        int const d = d0 + j;
        float const x = xs[j];
        float y = ys[j];
        if (skip != nullptr) y += skip[d] * x;
        y *= gates[j];
        T const out = from_float<T>(y);
        q.mixer.y[static_cast<std::size_t>(m) * D + d] = out;
        y_f(m * D + d) = to_float(out);
      }
    });
    team.team_barrier();

    // 4. out_proj (out may be hidden: nothing reads hidden after phase 2)
    Kokkos::parallel_for(Kokkos::TeamThreadRange(team, (E + per_item - 1) / per_item), [&](int const item) {
      int const n0 = item * per_item, n1 = n0 + per_item < E ? n0 + per_item : E;
      for (int n = n0; n < n1; ++n) {
        float const init = out_b != nullptr ? to_float(out_b[n]) : 0.0f;
        for (int m = 0; m < B; ++m)
          q.out[static_cast<std::size_t>(m) * E + n] =
              from_float<T>(dot_row(out_w + static_cast<std::size_t>(n) * D, &y_f(m * D), D, init));
      }
    });
  };

  // Kokkos takes scratch sizes as int; B <= 8 and the sizes are validated, so these are small
  int const team_bytes = static_cast<int>(scratch::shmem_size(B * D) * 2 + scratch::shmem_size(B * xw));
  int const thread_bytes = static_cast<int>(scratch::shmem_size(B * E));
  int const team_size = policy(space, 1, 1).team_size_max(body, Kokkos::ParallelForTag());
  Kokkos::parallel_for("ssm::mamba_block::step::host",
                       policy(space, 1, team_size)
                           .set_scratch_size(1, Kokkos::PerTeam(team_bytes), Kokkos::PerThread(thread_bytes)),
                       body);
}

}  // namespace host::detail

/// \brief On a host execution space a block's decoding step of up to `host::few_rows` sequences
/// is one parallel region (see the file comment); more sequences go op by op, where the dense
/// layers are Eigen's GEMM.
/// \tparam ExecSpace a host execution space.
template <class ExecSpace>
struct mamba_block_step_backend<ExecSpace,
                                std::enable_if_t<std::is_same_v<typename ExecSpace::memory_space, Kokkos::HostSpace>>> {
  static constexpr bool fused = true;  ///< `mamba_block::step` asks `fuses`, then calls `run`

  /// \brief Whether to fuse this step: at most `host::few_rows` sequences.
  /// \tparam T activation storage type. \tparam Wt weight storage type. \tparam MemSpace memory space.
  /// \param c the block's sizes (unused: every valid configuration fuses). \param p the tensors.
  /// \return true if `run` takes it.
  template <class T, class Wt, class MemSpace>
  static bool fuses(mamba_config const& c, mamba_block_step_params<T, Wt, MemSpace> const& p) {
    (void)c;
    return p.mixer.batch >= 1 && static_cast<std::size_t>(p.mixer.batch) <= host::few_rows;
  }

  /// \brief Enqueue the step on `space` (asynchronous: fence before reading the outputs).
  /// \tparam T activation storage type. \tparam Wt weight storage type. \tparam MemSpace memory space.
  /// \param space the execution space instance. \param c the block's sizes.
  /// \param p the tensors (see `mamba_block_step_params`); `fuses(c, p)` must hold.
  template <class T, class Wt, class MemSpace>
  static void run(ExecSpace const& space, mamba_config const& c, mamba_block_step_params<T, Wt, MemSpace> const& p) {
    host::detail::block_step(space, c, p);
  }
};

}  // namespace ssm
