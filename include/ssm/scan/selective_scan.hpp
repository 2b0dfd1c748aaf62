#pragma once
/// \file
/// \brief The selective scan of Mamba: its parameters, a sequential reference and a Kokkos path.
///
/// For each batch b and channel d, with a state \f$h \in \mathbb{R}^N\f$ and per-token step
/// \f$\Delta_l = \mathrm{softplus}(\delta_l + \beta_d)\f$ (bias and softplus optional):
/// \f[
///   h_l = e^{\Delta_l A_d} \odot h_{l-1} + \Delta_l\, B_l\, u_l, \qquad
///   y_l = C_l^\top h_l + D_d\, u_l, \qquad
///   \mathrm{out}_l = y_l \cdot \mathrm{silu}(z_l).
/// \f]
/// The semantics are exactly those of mamba_ssm's `selective_scan_ref`, plus an initial state in
/// and the final state out so that a long sequence can be processed in pieces.

#include <cstddef>
#include <string>
#include <type_traits>

#include <ssm/core/compat.hpp>
#include <ssm/core/dtype.hpp>
#include <ssm/core/error.hpp>
#include <ssm/core/math.hpp>
#include <ssm/core/views.hpp>

namespace ssm {

/// \brief Largest state size the scans accept (mamba_ssm's limit too).
inline constexpr int max_state_size = 256;

/// \brief Everything a selective scan reads and writes; optional tensors are left empty.
///
/// Memory may be strided (any slice of a larger buffer). `initial_state` and `final_state` may be
/// the same memory (the state is updated in place); `out` must not overlap the inputs.
/// \tparam T storage type of activations (`float`, `ssm::f16`, `ssm::bf16`); math is fp32.
/// \tparam MemSpace the Kokkos memory space holding every tensor.
template <class T, class MemSpace>
struct selective_scan_params {
  view3<const T, MemSpace> u;                   ///< (B, D, L) input sequence
  view3<const T, MemSpace> delta;               ///< (B, D, L) step size, before bias and softplus
  view2<const float, MemSpace> A;               ///< (D, N) diagonal of the continuous-time state matrix
  view4<const T, MemSpace> B;                   ///< (B, G, N, L) input matrix; channel d uses group d / (D / G)
  view4<const T, MemSpace> C;                   ///< (B, G, N, L) output matrix
  view1<const float, MemSpace> D;               ///< (D) skip connection; optional
  view3<const T, MemSpace> z;                   ///< (B, D, L) gate, out *= silu(z); optional
  view1<const float, MemSpace> delta_bias;      ///< (D) added to delta; optional
  bool delta_softplus = false;                  ///< apply softplus to delta (+ bias)
  view3<const float, MemSpace> initial_state;   ///< (B, D, N) state before token 0; zeros if absent
  view3<T, MemSpace> out;                       ///< (B, D, L) output
  view3<float, MemSpace> final_state;           ///< (B, D, N) state after token L-1; optional
};

/// \brief Sizes of a scan, read from its parameters.
struct scan_shape {
  std::size_t batch;     ///< B
  std::size_t channels;  ///< D
  std::size_t length;    ///< L
  std::size_t state;     ///< N
  std::size_t groups;    ///< G
};

namespace detail {

/// \brief Check every shape of a scan; throw `ssm::shape_error` naming the tensor otherwise.
template <class T, class MemSpace>
scan_shape check(selective_scan_params<T, MemSpace> const& p, char const* function) {
  require(given(p.u) && given(p.delta) && given(p.A) && given(p.B) && given(p.C) && given(p.out),
          function, "u, delta, A, B, C and out are required");
  scan_shape const s{p.u.extent(0), p.u.extent(1), p.u.extent(2), p.A.extent(1), p.B.extent(1)};
  auto const bdl = shape_string(s.batch, s.channels, s.length);
  auto const bdn = shape_string(s.batch, s.channels, s.state);
  auto same3 = [](auto const& v, std::size_t a, std::size_t b, std::size_t c) {
    return v.extent(0) == a && v.extent(1) == b && v.extent(2) == c;
  };
  require(same3(p.delta, s.batch, s.channels, s.length), function, "delta must be (B, D, L) = " + bdl);
  require(same3(p.out, s.batch, s.channels, s.length), function, "out must be (B, D, L) = " + bdl);
  require(p.A.extent(0) == s.channels, function, "A must be (D, N) with D = " + std::to_string(s.channels));
  require(s.state >= 1 && s.state <= static_cast<std::size_t>(max_state_size), function,
          "the state size N = " + std::to_string(s.state) + " must be in [1, 256]");
  require(s.groups >= 1 && s.channels % s.groups == 0, function,
          "the number of groups G = " + std::to_string(s.groups) + " must divide D = " +
              std::to_string(s.channels));
  for (auto const* m : {&p.B, &p.C}) {
    require(m->extent(0) == s.batch && m->extent(1) == s.groups && m->extent(2) == s.state &&
                m->extent(3) == s.length,
            function, std::string(m == &p.B ? "B" : "C") + " must be (B, G, N, L) = " +
                          shape_string(s.batch, s.groups, s.state, s.length));
  }
  if (given(p.D)) require(p.D.extent(0) == s.channels, function, "D must be (D)");
  if (given(p.delta_bias)) require(p.delta_bias.extent(0) == s.channels, function, "delta_bias must be (D)");
  if (given(p.z)) require(same3(p.z, s.batch, s.channels, s.length), function, "z must be (B, D, L) = " + bdl);
  if (given(p.initial_state))
    require(same3(p.initial_state, s.batch, s.channels, s.state), function, "initial_state must be (B, D, N) = " + bdn);
  if (given(p.final_state))
    require(same3(p.final_state, s.batch, s.channels, s.state), function, "final_state must be (B, D, N) = " + bdn);
  return s;
}

}  // namespace detail

namespace reference {

/// \brief Sequential reference of the selective scan: plain loops, one line per equation, fp32.
///
/// The oracle of every test of the faster paths. Synchronous: runs on the calling thread.
/// \tparam T storage type of activations (`float`, `ssm::f16`, `ssm::bf16`).
/// \tparam MemSpace the memory space of every tensor; must be host-accessible.
/// \param p the tensors and flags (see `selective_scan_params` for the shapes and aliasing):
///          `u`, `delta`, `z`, `out` (B, D, L); `A` (D, N); `B`, `C` (B, G, N, L); `D`, `delta_bias` (D);
///          `initial_state`, `final_state` (B, D, N).
/// \throws ssm::shape_error naming the first tensor with a wrong shape, or if N or G is out of range.
template <class T, class MemSpace>
void selective_scan(selective_scan_params<T, MemSpace> const& p) {
  static_assert(is_accessible_v<Kokkos::DefaultHostExecutionSpace, MemSpace>,
                "ssm::reference::selective_scan: the tensors must be in host-accessible memory");
  auto const s = detail::check(p, "ssm::reference::selective_scan");
  std::size_t const channels_per_group = s.channels / s.groups;
  float h[max_state_size];
  for (std::size_t b = 0; b < s.batch; ++b) {
    for (std::size_t d = 0; d < s.channels; ++d) {
      std::size_t const g = d / channels_per_group;
      for (std::size_t n = 0; n < s.state; ++n) h[n] = given(p.initial_state) ? p.initial_state(b, d, n) : 0.0f;
      for (std::size_t l = 0; l < s.length; ++l) {
        float dt = to_float(p.delta(b, d, l));
        if (given(p.delta_bias)) dt += p.delta_bias(d);
        if (p.delta_softplus) dt = softplus(dt);
        float const u = to_float(p.u(b, d, l));
        float y = 0.0f;
        for (std::size_t n = 0; n < s.state; ++n) {
          float const A_bar = compat::exp(dt * p.A(d, n));            // exp(Δ A)
          float const Bu_bar = dt * to_float(p.B(b, g, n, l)) * u;   // Δ B u
          h[n] = A_bar * h[n] + Bu_bar;
          y += to_float(p.C(b, g, n, l)) * h[n];
        }
        if (given(p.D)) y += p.D(d) * u;
        if (given(p.z)) y *= silu(to_float(p.z(b, d, l)));
        p.out(b, d, l) = from_float<T>(y);
      }
      if (given(p.final_state))
        for (std::size_t n = 0; n < s.state; ++n) p.final_state(b, d, n) = h[n];
    }
  }
}

}  // namespace reference

namespace detail {

/// \brief The portable Kokkos scan: one work item per (batch, block of `Channels` channels),
/// each walking the sequence with its states in registers (or local memory on a GPU).
///
/// Per token, the step sizes and gates of the block are computed together (a loop that
/// vectorizes across channels), then each channel updates its N states (a loop that vectorizes
/// across the state). Channel blocks also make every cache line of a token-major (B, L, D) input
/// fully used on a CPU. Transcendentals are the branch-free `fast_exp`, `fast_softplus` and
/// `fast_silu`, within a few units in the last place of the reference's.
/// \tparam MaxN compile-time bound on N, so the state can live in a fixed-size array.
/// \tparam ExactN N equals MaxN: the state loop has a compile-time trip count.
/// \tparam Channels channels per work item.
template <int MaxN, bool ExactN, int Channels, class ExecSpace, class T, class MemSpace>
void selective_scan_kokkos(ExecSpace const& space, selective_scan_params<T, MemSpace> const& p,
                           scan_shape const& s) {
  int const batch = static_cast<int>(s.batch);
  int const channels = static_cast<int>(s.channels);
  int const length = static_cast<int>(s.length);
  int const state = ExactN ? MaxN : static_cast<int>(s.state);
  int const channels_per_group = static_cast<int>(s.channels / s.groups);
  int const blocks = (channels + Channels - 1) / Channels;
  bool const has_D = given(p.D), has_z = given(p.z), has_bias = given(p.delta_bias);
  bool const has_initial = given(p.initial_state), has_final = given(p.final_state);
  auto const params = p;
  Kokkos::parallel_for(
      "ssm::selective_scan::kokkos", Kokkos::RangePolicy<ExecSpace>(space, 0, batch * blocks),
      KOKKOS_LAMBDA(int const item) {
        auto const& q = params;
        int const b = item / blocks;
        int const d0 = (item % blocks) * Channels;
        int const width = channels - d0 < Channels ? channels - d0 : Channels;
        float h[Channels][MaxN];  // the states of the block's channels
        float A[Channels][MaxN];
        int group[Channels];
        float bias[Channels] = {}, skip[Channels] = {};
        float dt[Channels] = {}, u[Channels] = {}, gate[Channels] = {};
        float B_l[MaxN], C_l[MaxN], Ch[MaxN];  // B and C of token l for one group, and C * h
        for (int c = 0; c < width; ++c) {
          int const d = d0 + c;
          group[c] = d / channels_per_group;
          if (has_bias) bias[c] = q.delta_bias(d);
          if (has_D) skip[c] = q.D(d);
          for (int n = 0; n < state; ++n) {
            h[c][n] = has_initial ? q.initial_state(b, d, n) : 0.0f;
            A[c][n] = q.A(d, n);
          }
        }
        for (int l = 0; l < length; ++l) {
          for (int c = 0; c < width; ++c) {
            dt[c] = to_float(q.delta(b, d0 + c, l)) + bias[c];
            u[c] = to_float(q.u(b, d0 + c, l));
            if (has_z) gate[c] = to_float(q.z(b, d0 + c, l));
          }
          if (q.delta_softplus)
            for (int c = 0; c < Channels; ++c) dt[c] = fast_softplus(dt[c]);
          if (has_z)
            for (int c = 0; c < Channels; ++c) gate[c] = fast_silu(gate[c]);
          int loaded_group = -1;
          for (int c = 0; c < width; ++c) {
            if (group[c] != loaded_group) {  // channels of a group share B and C: load them once
              for (int n = 0; n < state; ++n) {
                B_l[n] = to_float(q.B(b, group[c], n, l));
                C_l[n] = to_float(q.C(b, group[c], n, l));
              }
              loaded_group = group[c];
            }
            float const dt_c = dt[c], dt_u = dt[c] * u[c];
            for (int n = 0; n < state; ++n) {  // independent across n: vectorizes
              h[c][n] = fast_exp(dt_c * A[c][n]) * h[c][n] + dt_u * B_l[n];
              Ch[n] = C_l[n] * h[c][n];
            }
            float y = 0.0f;
            for (int n = 0; n < state; ++n) y += Ch[n];  // in the reference's order
            if (has_D) y += skip[c] * u[c];
            if (has_z) y *= gate[c];
            q.out(b, d0 + c, l) = from_float<T>(y);
          }
        }
        if (has_final)
          for (int c = 0; c < width; ++c)
            for (int n = 0; n < state; ++n) q.final_state(b, d0 + c, n) = h[c][n];
      });
}

/// \brief The portable Kokkos path for any execution space, with the state size bucketed at
/// compile time (N = 16 exactly, N <= 16, N <= 64, N <= 256).
///
/// What the primary `selective_scan_backend` runs; callable directly so that a backend's kernel
/// can be compared with it on the same execution space. Asynchronous.
/// \tparam ExecSpace a Kokkos execution space that can access `MemSpace`.
/// \tparam T activation storage type (`float`, `ssm::f16`, `ssm::bf16`).
/// \tparam MemSpace the memory space of every tensor.
/// \param space the execution space instance the kernel runs on.
/// \param p the checked tensors and flags: `u`, `delta`, `z`, `out` (B, D, L); `A` (D, N);
///          `B`, `C` (B, G, N, L); `D`, `delta_bias` (D); `initial_state`, `final_state` (B, D, N).
/// \param s their sizes, as returned by the shape check.
template <class ExecSpace, class T, class MemSpace>
void selective_scan_portable(ExecSpace const& space, selective_scan_params<T, MemSpace> const& p,
                             scan_shape const& s) {
  constexpr int channels = std::is_same_v<typename ExecSpace::memory_space, Kokkos::HostSpace> ? 8 : 1;
  if (s.state == 16) selective_scan_kokkos<16, true, channels>(space, p, s);  // Mamba's N
  else if (s.state < 16) selective_scan_kokkos<16, false, channels>(space, p, s);
  else if (s.state <= 64) selective_scan_kokkos<64, false, channels>(space, p, s);
  else selective_scan_kokkos<max_state_size, false, channels>(space, p, s);
}

}  // namespace detail

/// \brief Which implementation of the selective scan runs on an execution space.
///
/// The primary template is the portable Kokkos path. A backend specialises this trait in its
/// own header to take over with a hand-written kernel for its execution space.
/// \tparam ExecSpace a Kokkos execution space.
template <class ExecSpace>
struct selective_scan_backend {
  /// \brief Run the scan on `space` (asynchronous: returns once the work is enqueued).
  ///
  /// `ssm::selective_scan` calls it only after checking the shapes and with B, D > 0.
  /// \tparam T activation storage type (`float`, `ssm::f16`, `ssm::bf16`).
  /// \tparam MemSpace the memory space of every tensor.
  /// \param space the execution space instance the kernel runs on.
  /// \param p the checked tensors and flags.
  /// \param s their sizes, as returned by the shape check.
  template <class T, class MemSpace>
  static void run(ExecSpace const& space, selective_scan_params<T, MemSpace> const& p,
                  scan_shape const& s) {
    detail::selective_scan_portable(space, p, s);
  }
};

/// \brief The selective scan on an execution space (asynchronous: fence `space` before reading).
///
/// Checks the shapes on the host, then enqueues the work on `space` and returns: fence `space`
/// before reading `p.out` or `p.final_state`.
/// \tparam ExecSpace a Kokkos execution space that can access `MemSpace`.
/// \tparam T storage type of activations (`float`, `ssm::f16`, `ssm::bf16`).
/// \tparam MemSpace the memory space of every tensor.
/// \param space the execution space instance (its stream, on a GPU).
/// \param p the tensors and flags (see `selective_scan_params` for the shapes and aliasing):
///          `u`, `delta`, `z`, `out` (B, D, L); `A` (D, N); `B`, `C` (B, G, N, L); `D`, `delta_bias` (D);
///          `initial_state`, `final_state` (B, D, N).
/// \throws ssm::shape_error naming the first tensor with a wrong shape, or if N or G is out of range.
template <class ExecSpace, class T, class MemSpace>
void selective_scan(ExecSpace const& space, selective_scan_params<T, MemSpace> const& p) {
  static_assert(is_accessible_v<ExecSpace, MemSpace>,
                "ssm::selective_scan: the tensors must be accessible from the execution space");
  auto const s = detail::check(p, "ssm::selective_scan");
  if (s.batch == 0 || s.channels == 0) return;
  selective_scan_backend<ExecSpace>::run(space, p, s);
}

}  // namespace ssm

#if defined(KOKKOS_ENABLE_CUDA)
#include <ssm/scan/cuda/selective_scan.cuh>
#endif
