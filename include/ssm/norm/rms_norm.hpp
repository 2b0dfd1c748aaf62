#pragma once
/// \file
/// \brief RMSNorm, with the fused residual add of Mamba's blocks.
///
/// For each row (token) of E features, with the residual stream kept in fp32:
/// \f[
///   r = x + r_{\mathrm{in}}, \qquad
///   \mathrm{out} = \frac{r}{\sqrt{\tfrac{1}{E}\sum_e r_e^2 + \epsilon}} \odot w .
/// \f]
/// This is mamba_ssm's `rms_norm_fn(x, weight, None, residual, prenorm=True, residual_in_fp32=True)`.
///
/// x may also come as S partial sums in fp32 (`x_partials`, e.g. a linear layer's products over S
/// slices of its inputs, `ssm::linear_partials`): x is then their sum, in the order s = 0 ... S-1,
/// rounded to the storage type, as the layer would have rounded it.

#include <cstddef>
#include <string>
#include <vector>

#include <ssm/core/compat.hpp>
#include <ssm/core/dtype.hpp>
#include <ssm/core/error.hpp>
#include <ssm/core/views.hpp>

namespace ssm {

/// \brief Everything an RMSNorm reads and writes.
///
/// `residual` and `residual_out` may be the same memory (the residual stream updated in place).
/// `weight`, `out` and one of `x` and `x_partials` are required; default-constructed views mean
/// "absent".
/// \tparam T activation storage type (`float`, `ssm::f16` or `ssm::bf16`).
/// \tparam Wt weight storage type (same choices).
/// \tparam MemSpace the memory space of every tensor.
template <class T, class Wt, class MemSpace>
struct rms_norm_params {
  view2<const T, MemSpace> x;                   ///< (M, E) one row per token
  view3<const float, MemSpace> x_partials;      ///< (S, M, E) instead of x: x = round_T(sum over s)
  view2<const float, MemSpace> residual;        ///< (M, E) added to x before the norm; optional
  view1<const Wt, MemSpace> weight;             ///< (E) scale
  float eps = 1e-5f;                            ///< added to the mean square
  view2<T, MemSpace> out;                       ///< (M, E) normalised rows
  view2<float, MemSpace> residual_out;          ///< (M, E) x + residual in fp32; optional
};

namespace detail {

/// \brief Rows M of an RMSNorm's input, `x` or `x_partials`.
template <class T, class Wt, class MemSpace>
std::size_t rows(rms_norm_params<T, Wt, MemSpace> const& p) {
  return given(p.x) ? p.x.extent(0) : p.x_partials.extent(1);
}

/// \brief Features E of an RMSNorm's input, `x` or `x_partials`.
template <class T, class Wt, class MemSpace>
std::size_t features(rms_norm_params<T, Wt, MemSpace> const& p) {
  return given(p.x) ? p.x.extent(1) : p.x_partials.extent(2);
}

/// \brief x(m, e) of an RMSNorm, widened: `x`, or the sum of `x_partials` in order rounded to T.
template <class T, class Wt, class MemSpace>
KOKKOS_INLINE_FUNCTION float input(rms_norm_params<T, Wt, MemSpace> const& p, bool partials, int m, int e) {
  if (!partials) return to_float(p.x(m, e));
  float sum = 0.0f;
  for (std::size_t s = 0; s < p.x_partials.extent(0); ++s) sum += p.x_partials(s, m, e);
  return to_float(from_float<T>(sum));
}

template <class T, class Wt, class MemSpace>
void check(rms_norm_params<T, Wt, MemSpace> const& p, char const* function) {
  require(given(p.x) != given(p.x_partials), function, "one of x and x_partials is required, not both");
  require(given(p.weight) && given(p.out), function, "weight and out are required");
  if (given(p.x_partials)) require(p.x_partials.extent(0) > 0, function, "x_partials must hold at least one partial sum");
  auto const rows = detail::rows(p), features = detail::features(p);
  auto const me = shape_string(rows, features);
  require(p.weight.extent(0) == features, function, "weight must be (E) with E = " + std::to_string(features));
  require(p.out.extent(0) == rows && p.out.extent(1) == features, function, "out must be (M, E) = " + me);
  if (given(p.residual))
    require(p.residual.extent(0) == rows && p.residual.extent(1) == features, function, "residual must be (M, E) = " + me);
  if (given(p.residual_out))
    require(p.residual_out.extent(0) == rows && p.residual_out.extent(1) == features, function,
            "residual_out must be (M, E) = " + me);
  require(p.eps >= 0.0f, function, "eps must not be negative");
}

}  // namespace detail

namespace reference {

/// \brief Sequential reference of RMSNorm with residual add: two passes per row, fp32. Host only.
///
/// Synchronous host code; the oracle of the tests.
/// \tparam T activation storage type (`float`, `ssm::f16` or `ssm::bf16`).
/// \tparam Wt weight storage type (same choices).
/// \tparam MemSpace the memory space of every tensor; must be host-accessible.
/// \param p the tensors and \f$\epsilon\f$ (see `rms_norm_params` for the shapes and aliasing).
/// \throws ssm::shape_error if a required tensor is missing, the shapes disagree or `eps` is negative.
template <class T, class Wt, class MemSpace>
void rms_norm(rms_norm_params<T, Wt, MemSpace> const& p) {
  static_assert(is_accessible_v<Kokkos::DefaultHostExecutionSpace, MemSpace>,
                "ssm::reference::rms_norm: the tensors must be in host-accessible memory");
  detail::check(p, "ssm::reference::rms_norm");
  std::size_t const features = detail::features(p);
  std::vector<float> r(features);
  for (std::size_t m = 0; m < detail::rows(p); ++m) {
    float sum_squares = 0.0f;
    for (std::size_t e = 0; e < features; ++e) {
      float x = 0.0f;
      if (given(p.x)) {
        x = to_float(p.x(m, e));
      } else {
        for (std::size_t s = 0; s < p.x_partials.extent(0); ++s) x += p.x_partials(s, m, e);
        x = to_float(from_float<T>(x));
      }
      r[e] = x + (given(p.residual) ? p.residual(m, e) : 0.0f);
      sum_squares += r[e] * r[e];
    }
    float const inv_rms = 1.0f / compat::sqrt(sum_squares / static_cast<float>(features) + p.eps);
    for (std::size_t e = 0; e < features; ++e) {
      if (given(p.residual_out)) p.residual_out(m, e) = r[e];
      p.out(m, e) = from_float<T>(r[e] * inv_rms * to_float(p.weight(e)));
    }
  }
}

}  // namespace reference

namespace detail {

/// \brief The portable Kokkos path of RMSNorm: one team per row, the sum of squares reduced across
/// the team (asynchronous).
///
/// The body of the primary `rms_norm_backend`; callable on any execution space, so that the tests
/// can run it where another backend takes over.
/// \tparam ExecSpace a Kokkos execution space that can access `MemSpace`.
/// \tparam T activation storage type (`float`, `ssm::f16` or `ssm::bf16`).
/// \tparam Wt weight storage type (same choices).
/// \tparam MemSpace the memory space of every tensor.
/// \param space the execution space instance the kernel runs on.
/// \param p the checked tensors and \f$\epsilon\f$: `x` (or `x_partials`), `residual`, `out`,
///          `residual_out` (M, E); `weight` (E).
template <class ExecSpace, class T, class Wt, class MemSpace>
void rms_norm_portable(ExecSpace const& space, rms_norm_params<T, Wt, MemSpace> const& p) {
  using team_policy = Kokkos::TeamPolicy<ExecSpace>;
  using member = typename team_policy::member_type;
  int const features = static_cast<int>(detail::features(p));
  bool const has_residual = given(p.residual), has_residual_out = given(p.residual_out);
  bool const partials = given(p.x_partials);
  auto const params = p;
  Kokkos::parallel_for(
      "ssm::rms_norm::kokkos", team_policy(space, static_cast<int>(detail::rows(p)), Kokkos::AUTO),
      KOKKOS_LAMBDA(member const& team) {
        auto const& q = params;
        int const m = team.league_rank();
        float sum_squares = 0.0f;
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, features),
            [&](int const e, float& partial) {
              float const r = input(q, partials, m, e) + (has_residual ? q.residual(m, e) : 0.0f);
              partial += r * r;
            },
            sum_squares);
        float const inv_rms = 1.0f / compat::sqrt(sum_squares / static_cast<float>(features) + q.eps);
        // every reader of the residual is done before any writer (they may alias)
        team.team_barrier();
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, features), [&](int const e) {
          float const r = input(q, partials, m, e) + (has_residual ? q.residual(m, e) : 0.0f);
          if (has_residual_out) q.residual_out(m, e) = r;
          q.out(m, e) = from_float<T>(r * inv_rms * to_float(q.weight(e)));
        });
      });
}

}  // namespace detail

/// \brief Which implementation of RMSNorm runs on an execution space; the primary template is
/// the portable Kokkos path (`detail::rms_norm_portable`).
///
/// Specialise it for an execution space to plug in another kernel (`ssm/norm/cuda/rms_norm.cuh`
/// does for `Kokkos::Cuda`). `ssm::rms_norm` calls `run` only after checking the shapes and with
/// M > 0.
/// \tparam ExecSpace a Kokkos execution space.
template <class ExecSpace>
struct rms_norm_backend {
  /// \brief Normalise every row on `space` (asynchronous: returns once the work is enqueued).
  /// \tparam T activation storage type (`float`, `ssm::f16` or `ssm::bf16`).
  /// \tparam Wt weight storage type (same choices).
  /// \tparam MemSpace the memory space of every tensor.
  /// \param space the execution space instance the kernel runs on.
  /// \param p the checked tensors and \f$\epsilon\f$ (see `rms_norm_params` for the shapes).
  template <class T, class Wt, class MemSpace>
  static void run(ExecSpace const& space, rms_norm_params<T, Wt, MemSpace> const& p) {
    detail::rms_norm_portable(space, p);
  }
};

/// \brief RMSNorm (with optional fused residual add) on an execution space (asynchronous).
///
/// Checks the shapes on the host, then enqueues the work on `space` and returns: fence `space`
/// before reading `p.out` or `p.residual_out`.
/// \tparam ExecSpace a Kokkos execution space that can access `MemSpace`.
/// \tparam T activation storage type (`float`, `ssm::f16` or `ssm::bf16`).
/// \tparam Wt weight storage type (same choices).
/// \tparam MemSpace the memory space of every tensor.
/// \param space the execution space instance the work runs on.
/// \param p the tensors and \f$\epsilon\f$ (see `rms_norm_params` for the shapes and aliasing).
/// \throws ssm::shape_error if a required tensor is missing, the shapes disagree or `eps` is negative.
template <class ExecSpace, class T, class Wt, class MemSpace>
void rms_norm(ExecSpace const& space, rms_norm_params<T, Wt, MemSpace> const& p) {
  static_assert(is_accessible_v<ExecSpace, MemSpace>,
                "ssm::rms_norm: the tensors must be accessible from the execution space");
  detail::check(p, "ssm::rms_norm");
  if (detail::rows(p) == 0) return;
  rms_norm_backend<ExecSpace>::run(space, p);
}

}  // namespace ssm

#if defined(KOKKOS_ENABLE_CUDA)
#include <ssm/norm/cuda/rms_norm.cuh>
#endif
