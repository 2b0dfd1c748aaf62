#pragma once
/// \file
/// \brief `selective_state_update`: one recurrent step of the selective scan, for decoding.
///
/// For each batch b and channel d, with \f$\Delta = \mathrm{softplus}(dt + \beta_d)\f$:
/// \f[
///   h \leftarrow e^{\Delta A_d} \odot h + \Delta\, B\, x, \qquad
///   \mathrm{out} = (C^\top h + D_d\, x) \cdot \mathrm{silu}(z).
/// \f]
/// Semantics of mamba_ssm's `selective_state_update_ref`; the state is updated in place.
/// One step equals one token of `ssm::selective_scan` with the same state.
///
/// dt is given either as a tensor, or as the mixer's dt_proj still to be taken,
/// \f$dt_{b,d} = \sum_r \delta_{\mathrm{low}}[b, r]\, W_\Delta[d, r]\f$ (fp32 sums, rounded to the
/// activation type as the product stored in memory would be), so that a backend may fuse dt_proj
/// into the update: `selective_state_update_backend::fuses_dt_proj` says where one does.

#include <cstddef>
#include <string>
#include <type_traits>

#include <ssm/core/avx2.hpp>
#include <ssm/core/compat.hpp>
#include <ssm/core/dtype.hpp>
#include <ssm/core/error.hpp>
#include <ssm/core/math.hpp>
#include <ssm/core/views.hpp>
#include <ssm/scan/selective_scan.hpp>

namespace ssm {

/// \brief Everything one decoding step of the selective scan reads and writes.
///
/// `D`, `z` and `dt_bias` are optional (a default-constructed view means "absent"); `out` must not
/// overlap the inputs. Channel d uses group d / (D / G) of `B` and `C`. The step size is either
/// `dt`, or `dt_low` and `dt_weight` (dt_proj, fused): exactly one of the two forms.
/// \tparam T storage type of activations (`float`, `ssm::f16`, `ssm::bf16`).
/// \tparam MemSpace the memory space of every tensor.
/// \tparam Wt storage type of `dt_weight` (the mixer's weight type; defaults to `T`).
template <class T, class MemSpace, class Wt = T>
struct selective_state_update_params {
  view3<float, MemSpace> state;             ///< (B, D, N) the recurrent state, updated in place
  view2<const T, MemSpace> x;               ///< (B, D) input of this token
  view2<const T, MemSpace> dt;              ///< (B, D) step size, before bias and softplus; or absent,
  view2<const T, MemSpace> dt_low;          ///< (B, R) and `dt_weight` giving it: dt_proj's input
  view2<const Wt, MemSpace> dt_weight;      ///< (D, R) dt = round_T(dt_low dt_weight^T), sums in fp32
  view2<const float, MemSpace> A;           ///< (D, N)
  view3<const T, MemSpace> B;               ///< (B, G, N)
  view3<const T, MemSpace> C;               ///< (B, G, N)
  view1<const float, MemSpace> D;           ///< (D) skip; optional
  view2<const T, MemSpace> z;               ///< (B, D) gate; optional
  view1<const float, MemSpace> dt_bias;     ///< (D) added to dt; optional
  bool dt_softplus = false;                 ///< apply softplus to dt (+ bias)
  view2<T, MemSpace> out;                   ///< (B, D)
  /// A promise that lets a backend read `state` before the work just before this update on the
  /// same stream has finished: the state's last writer let the work after it begin only once it
  /// had finished itself. It holds where that writer was the scan, a portable path, an ordinary
  /// launch or copy, or a state update given this promise; not where it was a kernel that lets
  /// its dependents start early (`griddepcontrol.launch_dependents`): the fused decoding kernels
  /// of one or two sequences, which never share a state with the mixer's other paths, or a kernel
  /// of the caller's own. The mixer's decoding step gives it. On `Kokkos::Cuda` the state update
  /// then lets the kernel after it start only once it has finished (so that the promise holds at
  /// the next step too), and the staged kernel (8 or more sequences) issues its copies of the
  /// state before it waits for the kernel before it (dt_proj).
  bool state_settled = false;
};

namespace detail {

/// \brief Check the shapes of a state update; returns (B, D, 1, N, G).
template <class T, class MemSpace, class Wt>
scan_shape check(selective_state_update_params<T, MemSpace, Wt> const& p, char const* function) {
  bool const low_rank = given(p.dt_low) || given(p.dt_weight);
  require(given(p.state) && given(p.x) && (given(p.dt) || low_rank) && given(p.A) && given(p.B) && given(p.C) &&
              given(p.out),
          function, "state, x, dt (or dt_low and dt_weight), A, B, C and out are required");
  require(!(given(p.dt) && low_rank), function, "give either dt or dt_low and dt_weight, not both");
  scan_shape const s{p.state.extent(0), p.state.extent(1), 1, p.state.extent(2), p.B.extent(1)};
  auto same2 = [&](auto const& v) { return v.extent(0) == s.batch && v.extent(1) == s.channels; };
  auto const bd = shape_string(s.batch, s.channels);
  require(same2(p.x), function, "x must be (B, D) = " + bd);
  if (low_rank) {
    std::size_t const R = p.dt_weight.extent(1);
    require(given(p.dt_low) && given(p.dt_weight), function, "dt_low and dt_weight go together");
    require(p.dt_weight.extent(0) == s.channels && R >= 1, function,
            "dt_weight must be (D, R) with R >= 1, D = " + std::to_string(s.channels));
    require(p.dt_low.extent(0) == s.batch && p.dt_low.extent(1) == R, function,
            "dt_low must be (B, R) = " + shape_string(s.batch, R));
  } else {
    require(same2(p.dt), function, "dt must be (B, D) = " + bd);
  }
  require(same2(p.out), function, "out must be (B, D) = " + bd);
  require(p.A.extent(0) == s.channels && p.A.extent(1) == s.state, function,
          "A must be (D, N) = " + shape_string(s.channels, s.state));
  require(s.state >= 1 && s.state <= static_cast<std::size_t>(max_state_size), function,
          "the state size N must be in [1, 256]");
  require(s.groups >= 1 && s.channels % s.groups == 0, function, "the number of groups G must divide D");
  for (auto const* m : {&p.B, &p.C})
    require(m->extent(0) == s.batch && m->extent(1) == s.groups && m->extent(2) == s.state, function,
            std::string(m == &p.B ? "B" : "C") + " must be (B, G, N) = " +
                shape_string(s.batch, s.groups, s.state));
  if (given(p.D)) require(p.D.extent(0) == s.channels, function, "D must be (D)");
  if (given(p.dt_bias)) require(p.dt_bias.extent(0) == s.channels, function, "dt_bias must be (D)");
  if (given(p.z)) require(same2(p.z), function, "z must be (B, D) = " + bd);
  return s;
}

}  // namespace detail

namespace reference {

/// \brief Sequential reference of one decoding step: plain loops, fp32. Host memory only.
///
/// Synchronous: runs on the calling thread. The oracle of the tests.
/// \tparam T storage type of activations (`float`, `ssm::f16`, `ssm::bf16`).
/// \tparam MemSpace the memory space of every tensor; must be host-accessible.
/// \tparam Wt storage type of `dt_weight`.
/// \param p the tensors and flags (see `selective_state_update_params`): `state` (B, D, N),
///          updated in place; `x`, `dt`, `z`, `out` (B, D); or `dt_low` (B, R) and `dt_weight`
///          (D, R) for dt; `A` (D, N); `B`, `C` (B, G, N); `D`, `dt_bias` (D).
/// \throws ssm::shape_error naming the first tensor with a wrong shape, or if N or G is out of range.
template <class T, class MemSpace, class Wt>
void selective_state_update(selective_state_update_params<T, MemSpace, Wt> const& p) {
  static_assert(is_accessible_v<Kokkos::DefaultHostExecutionSpace, MemSpace>,
                "ssm::reference::selective_state_update: the tensors must be in host-accessible memory");
  auto const s = detail::check(p, "ssm::reference::selective_state_update");
  std::size_t const channels_per_group = s.channels / s.groups;
  for (std::size_t b = 0; b < s.batch; ++b) {
    for (std::size_t d = 0; d < s.channels; ++d) {
      std::size_t const g = d / channels_per_group;
      float dt = 0.0f;
      if (given(p.dt)) {
        dt = to_float(p.dt(b, d));
      } else {  // dt_proj, stored in T
        for (std::size_t r = 0; r < p.dt_low.extent(1); ++r)
          dt += to_float(p.dt_low(b, r)) * to_float(p.dt_weight(d, r));
        dt = round_to<T>(dt);
      }
      if (given(p.dt_bias)) dt += p.dt_bias(d);
      if (p.dt_softplus) dt = softplus(dt);
      float const x = to_float(p.x(b, d));
      float y = 0.0f;
      for (std::size_t n = 0; n < s.state; ++n) {
        float const A_bar = compat::exp(dt * p.A(d, n));
        float const Bx_bar = dt * to_float(p.B(b, g, n)) * x;
        p.state(b, d, n) = A_bar * p.state(b, d, n) + Bx_bar;
        y += to_float(p.C(b, g, n)) * p.state(b, d, n);
      }
      if (given(p.D)) y += p.D(d) * x;
      if (given(p.z)) y *= silu(to_float(p.z(b, d)));
      p.out(b, d) = from_float<T>(y);
    }
  }
}

}  // namespace reference

namespace detail {

/// \brief Channels per work item of the portable state update: on the host a run of 16, so that
/// their softplus vectorizes too; on a GPU a thread per channel.
/// \tparam ExecSpace a Kokkos execution space.
template <class ExecSpace>
inline constexpr int state_update_channel_run = std::is_same_v<typename ExecSpace::memory_space, Kokkos::HostSpace> ? 16 : 1;

/// \brief The sum of eight partial sums as a tree: j += j + 4, then j += j + 2, then j += j + 1.
/// \param partial the sums, overwritten. \return their total.
KOKKOS_FORCEINLINE_FUNCTION float tree_sum8(float (&partial)[8]) {
  for (int width = 4; width > 0; width /= 2)
    for (int j = 0; j < width; ++j) partial[j] += partial[j + width];
  return partial[0];
}

/// \brief The portable loop of `update_channel` (see there).
template <class T>
KOKKOS_FORCEINLINE_FUNCTION float update_channel_portable(float* h, float const* a, T const* b, T const* c, int N,
                                                          float dt, float x) {
  float const dt_x = dt * x;
  float partial[8] = {};
  int n = 0;
  for (; n + 8 <= N; n += 8)
    for (int j = 0; j < 8; ++j) {
      h[n + j] = fast_exp(dt * a[n + j]) * h[n + j] + dt_x * to_float(b[n + j]);
      partial[j] += to_float(c[n + j]) * h[n + j];
    }
  float y = 0.0f;
  for (; n < N; ++n) {
    h[n] = fast_exp(dt * a[n]) * h[n] + dt_x * to_float(b[n]);
    y += to_float(c[n]) * h[n];
  }
  return y + tree_sum8(partial);
}

#ifdef SSM_HOST_AVX2
/// \brief `update_channels` in AVX2 intrinsics: per channel, eight states at a time, the portable
/// loop's arithmetic, in two passes over every four channels. The first takes the decays of their
/// states, exponentials independent of each other that the core overlaps; the second the updates
/// and the sums. One channel at a time, each exponential's chain of dependent steps (about
/// 80 cycles) had to finish before its channel's sum could start, and a channel cost about 40
/// cycles (the 130m shape on one core).
template <class T>
inline void update_channels_avx2(float* h, float const* a, T const* b, T const* c, int N, int count, float const* dt,
                                 float const* x, float* y) {
  constexpr int together = 4;  // channels whose exponentials are in flight together
  int const whole = N - N % 8;  // states taken eight at a time; the rest one by one
  float decays[together * max_state_size];
  for (int j0 = 0; j0 < count; j0 += together) {
    int const k = count - j0 < together ? count - j0 : together;
    for (int i = 0; i < k; ++i) {
      __m256 const dt8 = _mm256_set1_ps(dt[j0 + i]);
      float const* const a_row = a + static_cast<std::size_t>(j0 + i) * N;
      for (int n = 0; n < whole; n += 8)
        _mm256_storeu_ps(decays + i * N + n, avx2::exp8(_mm256_mul_ps(dt8, _mm256_loadu_ps(a_row + n))));
    }
    for (int i = 0; i < k; ++i) {
      int const j = j0 + i;
      float* const h_row = h + static_cast<std::size_t>(j) * N;
      float const* const a_row = a + static_cast<std::size_t>(j) * N;
      float const dt_x = dt[j] * x[j];
      __m256 const dt_x8 = _mm256_set1_ps(dt_x);
      __m256 y8 = _mm256_setzero_ps();
      for (int n = 0; n < whole; n += 8) {
        __m256 const next = _mm256_fmadd_ps(_mm256_loadu_ps(decays + i * N + n), _mm256_loadu_ps(h_row + n),
                                            _mm256_mul_ps(dt_x8, avx2::widen8(b + n)));
        _mm256_storeu_ps(h_row + n, next);
        y8 = _mm256_fmadd_ps(avx2::widen8(c + n), next, y8);
      }
      float tail = 0.0f;
      for (int n = whole; n < N; ++n) {
        h_row[n] = fast_exp(dt[j] * a_row[n]) * h_row[n] + dt_x * to_float(b[n]);
        tail += to_float(c[n]) * h_row[n];
      }
      y[j] = tail + avx2::sum8(y8);
    }
  }
}

/// \brief `update_channel` in AVX2 intrinsics: `update_channels_avx2` for one channel, the
/// portable loop's arithmetic eight states at a time, with the same bits where the compiler fuses
/// the portable loop's multiply-adds (as GCC does at -O3 with FMA). GCC 12 vectorizes the portable
/// loop too, but rebuilds the exponential's constants for every channel and checks its range with
/// integer masks; this takes about half the instructions.
template <class T>
inline float update_channel_avx2(float* h, float const* a, T const* b, T const* c, int N, float dt, float x) {
  float y = 0.0f;
  update_channels_avx2(h, a, b, c, N, 1, &dt, &x, &y);
  return y;
}
#else
/// \brief Declared only, so that `update_channel` names it in a branch that is never taken here.
template <class T>
float update_channel_avx2(float* h, float const* a, T const* b, T const* c, int N, float dt, float x);
/// \brief Declared only, so that `update_channels` names it in a branch that is never taken here.
template <class T>
void update_channels_avx2(float* h, float const* a, T const* b, T const* c, int N, int count, float const* dt,
                          float const* x, float* y);
#endif

/// \brief One channel's step on contiguous rows: \f$h_n \leftarrow e^{\Delta a_n} h_n + \Delta x B_n\f$
/// for n < N, returning \f$\sum_n C_n h_n\f$ (before the D skip and the gate).
///
/// The loop the host decoding paths share (the portable state update and the fused host block
/// step), so that they round alike. \f$C^\top h\f$ is eight partial sums (state n into sum
/// n % 8, all but the last N % 8 states) added as a tree, then the rest one by one: eight
/// independent chains of additions rather than one of N, and the sum of a vector's lanes at the
/// end. On raw pointers, the loop vectorizes over n; where the compiler targets AVX2, the same
/// arithmetic runs as intrinsics (`update_channel_avx2`).
/// \tparam T storage type of B and C.
/// \param h the channel's N states, updated in place. \param a its N rows of A.
/// \param b, c the N values of B and C of its group. \param N the state size.
/// \param dt \f$\Delta\f$ (after the bias and the softplus). \param x the channel's input.
/// \return \f$C^\top h\f$ after the update.
template <class T>
KOKKOS_FORCEINLINE_FUNCTION float update_channel(float* h, float const* a, T const* b, T const* c, int N, float dt,
                                                 float x) {
  if constexpr (avx2::available)
    return update_channel_avx2(h, a, b, c, N, dt, x);
  else
    return update_channel_portable(h, a, b, c, N, dt, x);
}

/// \brief `update_channel` for `count` consecutive channels of one group: the same values, in an
/// order that keeps more of the work in flight where the compiler targets AVX2
/// (`update_channels_avx2`).
/// \tparam T storage type of B and C.
/// \param h the channels' (count, N) states, contiguous, updated in place. \param a their (count, N)
/// rows of A. \param b, c the N values of B and C of their group. \param N the state size, at most
/// `max_state_size`. \param count the number of channels. \param dt (count) step sizes (after the
/// bias and the softplus). \param x (count) inputs. \param y (count) out: \f$C^\top h\f$ of each.
template <class T>
KOKKOS_FORCEINLINE_FUNCTION void update_channels(float* h, float const* a, T const* b, T const* c, int N, int count,
                                                 float const* dt, float const* x, float* y) {
  if constexpr (avx2::available) {
    update_channels_avx2(h, a, b, c, N, count, dt, x, y);
  } else {
    for (int j = 0; j < count; ++j)
      y[j] = update_channel_portable(h + static_cast<std::size_t>(j) * N, a + static_cast<std::size_t>(j) * N, b, c,
                                     N, dt[j], x[j]);
  }
}

/// \brief The portable Kokkos state update: one work item per (batch, run of channels), with the
/// same arithmetic as the scan's, so that L steps reproduce a scan over L tokens. The body of
/// the primary `selective_state_update_backend`; callable on any execution space, so that the
/// tests can run it where another backend takes over.
/// \tparam ExecSpace a Kokkos execution space that can access `MemSpace`.
/// \tparam T storage type of activations (`float`, `ssm::f16`, `ssm::bf16`).
/// \tparam MemSpace the memory space of every tensor.
/// \param space the execution space instance the kernel runs on.
/// \tparam Wt storage type of `dt_weight`.
/// \param p the checked tensors and flags; `p.state` is updated in place.
/// \param s their sizes, as returned by the shape check (L = 1).
template <class ExecSpace, class T, class MemSpace, class Wt>
void selective_state_update_portable(ExecSpace const& space, selective_state_update_params<T, MemSpace, Wt> const& p,
                                     scan_shape const& s) {
  int const channels = static_cast<int>(s.channels);
  int const state = static_cast<int>(s.state);
  int const channels_per_group = static_cast<int>(s.channels / s.groups);
  bool const has_D = given(p.D), has_z = given(p.z), has_bias = given(p.dt_bias), low_rank = !given(p.dt);
  int const rank = low_rank ? static_cast<int>(p.dt_low.extent(1)) : 0;
  // the usual layout: every state, A, B and C row contiguous along n, so that the loop over
  // n runs on raw pointers and vectorizes (strided views keep the compiler from it)
  bool const unit_n = p.state.stride(2) == 1 && p.A.stride(1) == 1 && p.B.stride(2) == 1 && p.C.stride(2) == 1;
  constexpr int run = state_update_channel_run<ExecSpace>;
  int const runs = (channels + run - 1) / run;
  auto const params = p;
  Kokkos::parallel_for(
      "ssm::selective_state_update::kokkos",
      compat::capturable(Kokkos::RangePolicy<ExecSpace>(space, 0, static_cast<int>(s.batch) * runs)),
      KOKKOS_LAMBDA(int const item) {
        auto const& q = params;
        int const b = item / runs;
        int const d0 = (item % runs) * state_update_channel_run<ExecSpace>;
        int const count = channels - d0 < state_update_channel_run<ExecSpace> ? channels - d0
                                                                             : state_update_channel_run<ExecSpace>;
        float dts[state_update_channel_run<ExecSpace>];
        for (int j = 0; j < count; ++j) {
          float dt = 0.0f;
          if (low_rank) {  // dt_proj, stored in T
            for (int r = 0; r < rank; ++r) dt += to_float(q.dt_low(b, r)) * to_float(q.dt_weight(d0 + j, r));
            dt = round_to<T>(dt);
          } else {
            dt = to_float(q.dt(b, d0 + j));
          }
          dts[j] = dt + (has_bias ? q.dt_bias(d0 + j) : 0.0f);
        }
        if (q.dt_softplus)
          for (int j = 0; j < count; ++j) dts[j] = fast_softplus(dts[j]);
        float gates[state_update_channel_run<ExecSpace>];  // a loop of its own, so that it vectorizes
        if (has_z)
          for (int j = 0; j < count; ++j) gates[j] = fast_silu(to_float(q.z(b, d0 + j)));
        for (int j = 0; j < count; ++j) {
          int const d = d0 + j;
          int const g = d / channels_per_group;
          float const dt = dts[j];
          float const x = to_float(q.x(b, d));
          float y = 0.0f;
          if (unit_n) {
            y = update_channel(&q.state(b, d, 0), &q.A(d, 0), &q.B(b, g, 0), &q.C(b, g, 0), state, dt, x);
          } else {
            float const dt_x = dt * x;  // as update_channel does it, through the views' strides
            float partial[8] = {};
            int const whole = state - state % 8;
            for (int n = 0; n < state; ++n) {
              float const h = fast_exp(dt * q.A(d, n)) * q.state(b, d, n) + dt_x * to_float(q.B(b, g, n));
              q.state(b, d, n) = h;
              if (n < whole) partial[n % 8] += to_float(q.C(b, g, n)) * h;
              else y += to_float(q.C(b, g, n)) * h;
            }
            y += tree_sum8(partial);
          }
          if (has_D) y += q.D(d) * x;
          if (has_z) y *= gates[j];
          q.out(b, d) = from_float<T>(y);
        }
      });
}

}  // namespace detail

/// \brief Which implementation of the state update runs on an execution space (see
/// `ssm::selective_scan_backend`): the primary template is the portable Kokkos path,
/// `detail::selective_state_update_portable`.
/// \tparam ExecSpace a Kokkos execution space.
template <class ExecSpace>
struct selective_state_update_backend {
  /// \brief Whether `run` takes dt_proj (`dt_low` and `dt_weight`) at least as fast as a product of
  /// its own before the update, for the decoding step of a mixer (`mamba_mixer::step`, which then
  /// skips its dt_proj `linear`). Every backend computes both forms; the portable path takes
  /// dt_proj as R products per channel and sequence, no faster than a matrix product: no.
  /// \tparam T storage type of activations. \tparam Wt storage type of `dt_weight`.
  /// \param s the sizes (B, D, L = 1, N, G). \param rank R.
  /// \return false.
  template <class T, class Wt>
  static constexpr bool fuses_dt_proj(scan_shape const& s, std::size_t rank) {
    (void)s, (void)rank;
    return false;
  }

  /// \brief Run one step on `space` (asynchronous: returns once the work is enqueued).
  /// `ssm::selective_state_update` calls it only after checking the shapes and with B, D > 0.
  /// \tparam T storage type of activations (`float`, `ssm::f16`, `ssm::bf16`).
  /// \tparam MemSpace the memory space of every tensor. \tparam Wt storage type of `dt_weight`.
  /// \param space the execution space instance the kernel runs on.
  /// \param p the checked tensors and flags; `p.state` is updated in place.
  /// \param s their sizes, as returned by the shape check (L = 1).
  template <class T, class MemSpace, class Wt>
  static void run(ExecSpace const& space, selective_state_update_params<T, MemSpace, Wt> const& p,
                  scan_shape const& s) {
    detail::selective_state_update_portable(space, p, s);
  }
};

/// \brief One decoding step of the selective scan on an execution space (asynchronous).
///
/// Checks the shapes on the host, then enqueues the work on `space` and returns: fence `space`
/// before reading `p.out` or `p.state`.
/// \tparam ExecSpace a Kokkos execution space that can access `MemSpace`.
/// \tparam T storage type of activations (`float`, `ssm::f16`, `ssm::bf16`).
/// \tparam MemSpace the memory space of every tensor. \tparam Wt storage type of `dt_weight`.
/// \param space the execution space instance the work runs on.
/// \param p the tensors and flags (see `selective_state_update_params`): `state` (B, D, N),
///          updated in place; `x`, `dt`, `z`, `out` (B, D); or `dt_low` (B, R) and `dt_weight`
///          (D, R) for dt; `A` (D, N); `B`, `C` (B, G, N); `D`, `dt_bias` (D).
/// \throws ssm::shape_error naming the first tensor with a wrong shape, or if N or G is out of range.
template <class ExecSpace, class T, class MemSpace, class Wt>
void selective_state_update(ExecSpace const& space, selective_state_update_params<T, MemSpace, Wt> const& p) {
  static_assert(is_accessible_v<ExecSpace, MemSpace>,
                "ssm::selective_state_update: the tensors must be accessible from the execution space");
  auto const s = detail::check(p, "ssm::selective_state_update");
  if (s.batch == 0 || s.channels == 0) return;
  selective_state_update_backend<ExecSpace>::run(space, p, s);
}

}  // namespace ssm

#if defined(KOKKOS_ENABLE_CUDA)
#include <ssm/scan/cuda/state_update.cuh>
#endif
