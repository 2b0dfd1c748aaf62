#pragma once
/// \file
/// \brief Discretization of a diagonal continuous-time linear system, as policy types.
///
/// The system \f$x'(t) = A x(t) + B u(t)\f$ with diagonal \f$A\f$ (real or complex) becomes, with a
/// step \f$\Delta\f$, the recurrence \f$x_k = \bar A x_{k-1} + \bar B u_k\f$. Each policy maps one
/// diagonal entry \f$(a, b, \Delta)\f$ to \f$(\bar a, \bar b)\f$:
///
/// | policy              | \f$\bar a\f$                                 | \f$\bar b\f$                              |
/// |---------------------|----------------------------------------------|-------------------------------------------|
/// | `zoh`               | \f$e^{\Delta a}\f$                           | \f$(e^{\Delta a} - 1)\, b / a\f$          |
/// | `bilinear` (Tustin) | \f$(1 + \Delta a/2) / (1 - \Delta a/2)\f$    | \f$\Delta b / (1 - \Delta a / 2)\f$       |
/// | `euler` (forward)   | \f$1 + \Delta a\f$                           | \f$\Delta b\f$                            |
/// | `selective` (Mamba) | \f$e^{\Delta a}\f$                           | \f$\Delta b\f$                            |
///
/// Zero-order hold is exact when u is constant over each step. Bilinear maps the open left
/// half-plane into the unit disc, so a stable system stays stable for every \f$\Delta > 0\f$.
/// Mamba's selective rule keeps ZOH's \f$\bar a\f$ and simplifies \f$\bar b\f$ to Euler's, with a
/// \f$\Delta\f$ that changes at every token (see `ssm::selective_scan`).

#include <ssm/core/compat.hpp>
#include <ssm/core/error.hpp>
#include <ssm/core/views.hpp>

namespace ssm {

/// \brief One discretized diagonal entry: \f$\bar a\f$ and \f$\bar b\f$.
/// \tparam Scalar `float`, `double` or `Kokkos::complex` of either.
template <class Scalar>
struct discrete_pair {
  Scalar a_bar;  ///< \f$\bar a\f$
  Scalar b_bar;  ///< \f$\bar b\f$
};

namespace detail {

/// \brief \f$(e^x - 1)/x\f$ of a real \f$x\f$, to a few ulps at every \f$x\f$ (1 at \f$x = 0\f$):
/// `expm1` has no cancellation, unlike \f$e^x - 1\f$, whose relative error grows as \f$u/|x|\f$.
KOKKOS_INLINE_FUNCTION float exprel(float x) { return x == 0.0f ? 1.0f : compat::expm1(x) / x; }
/// \copydoc exprel(float)
KOKKOS_INLINE_FUNCTION double exprel(double x) { return x == 0.0 ? 1.0 : compat::expm1(x) / x; }

/// \brief \f$(e^z - 1)/z\f$ of a complex \f$z = x + iy\f$, accurate near \f$z = 0\f$ (1 at \f$z = 0\f$), from
/// \f$e^z - 1 = (\mathrm{expm1}(x) \cos y - 2 \sin^2(y/2)) + i\, e^x \sin y\f$, which has no cancellation
/// for \f$x \le 0\f$ and \f$|y| \le \pi/2\f$ (unlike \f$e^z - 1\f$ itself).
template <class Real>
KOKKOS_INLINE_FUNCTION Kokkos::complex<Real> exprel(Kokkos::complex<Real> const& z) {
  Real const x = z.real(), y = z.imag();
  if (x == Real(0) && y == Real(0)) return Kokkos::complex<Real>(Real(1), Real(0));
  Real const half_sine = compat::sin(y / Real(2));
  Kokkos::complex<Real> const expm1_z(compat::expm1(x) * compat::cos(y) - Real(2) * half_sine * half_sine,
                                      compat::exp(x) * compat::sin(y));
  return expm1_z / z;
}

}  // namespace detail

/// \brief Zero-order hold: exact for input held constant over each step.
struct zoh {
  /// \brief Discretize one diagonal entry.
  /// \tparam Scalar `float`, `double` or `Kokkos::complex` of either.
  /// \tparam Real the real type of the step (`float` or `double`).
  /// \param a the pole \f$a\f$ (one diagonal entry of \f$A\f$).
  /// \param b the input gain \f$b\f$.
  /// \param dt the step \f$\Delta > 0\f$.
  /// \return \f$(\bar a, \bar b) = (e^{\Delta a},\ (e^{\Delta a} - 1)\, b / a)\f$, with
  ///         \f$\bar b = \Delta b\f$ at \f$a = 0\f$.
  template <class Scalar, class Real>
  KOKKOS_INLINE_FUNCTION static discrete_pair<Scalar> discretize(Scalar const& a, Scalar const& b, Real dt) {
    Scalar const z = a * dt;
    return {compat::exp(z), detail::exprel(z) * b * dt};
  }
};

/// \brief Bilinear (Tustin) transform: maps \f$\mathrm{Re}\,a < 0\f$ to \f$|\bar a| < 1\f$.
struct bilinear {
  /// \brief Discretize one diagonal entry.
  /// \tparam Scalar `float`, `double` or `Kokkos::complex` of either.
  /// \tparam Real the real type of the step (`float` or `double`).
  /// \param a the pole \f$a\f$ (one diagonal entry of \f$A\f$).
  /// \param b the input gain \f$b\f$.
  /// \param dt the step \f$\Delta > 0\f$.
  /// \return \f$(\bar a, \bar b) = ((1 + \Delta a/2) / (1 - \Delta a/2),\ \Delta b / (1 - \Delta a/2))\f$.
  template <class Scalar, class Real>
  KOKKOS_INLINE_FUNCTION static discrete_pair<Scalar> discretize(Scalar const& a, Scalar const& b, Real dt) {
    Scalar const half = a * (dt / Real(2));
    Scalar const denominator = Scalar(1) - half;
    return {(Scalar(1) + half) / denominator, b * dt / denominator};
  }
};

/// \brief Forward Euler: first order, stable only for \f$|1 + \Delta a| < 1\f$.
struct euler {
  /// \brief Discretize one diagonal entry.
  /// \tparam Scalar `float`, `double` or `Kokkos::complex` of either.
  /// \tparam Real the real type of the step (`float` or `double`).
  /// \param a the pole \f$a\f$ (one diagonal entry of \f$A\f$).
  /// \param b the input gain \f$b\f$.
  /// \param dt the step \f$\Delta > 0\f$.
  /// \return \f$(\bar a, \bar b) = (1 + \Delta a,\ \Delta b)\f$.
  template <class Scalar, class Real>
  KOKKOS_INLINE_FUNCTION static discrete_pair<Scalar> discretize(Scalar const& a, Scalar const& b, Real dt) {
    return {Scalar(1) + a * dt, b * dt};
  }
};

/// \brief Mamba's selective rule: \f$\bar a = e^{\Delta a}\f$, \f$\bar b = \Delta b\f$.
struct selective {
  /// \brief Discretize one diagonal entry.
  /// \tparam Scalar `float`, `double` or `Kokkos::complex` of either.
  /// \tparam Real the real type of the step (`float` or `double`).
  /// \param a the pole \f$a\f$ (one diagonal entry of \f$A\f$).
  /// \param b the input gain \f$b\f$.
  /// \param dt the step \f$\Delta > 0\f$.
  /// \return \f$(\bar a, \bar b) = (e^{\Delta a},\ \Delta b)\f$.
  template <class Scalar, class Real>
  KOKKOS_INLINE_FUNCTION static discrete_pair<Scalar> discretize(Scalar const& a, Scalar const& b, Real dt) {
    return {compat::exp(a * dt), b * dt};
  }
};

/// \brief Discretize a whole diagonal system on an execution space (asynchronous).
///
/// Computes \f$(\bar a_{dn}, \bar b_{dn}) = \mathrm{Policy::discretize}(a_{dn}, b_{dn}, \Delta_d)\f$ for
/// every entry. The work is enqueued on `space` and this returns at once: fence `space` before
/// reading `a_bar` or `b_bar` on the host. The outputs must not alias the inputs.
/// \tparam Policy `zoh`, `bilinear`, `euler` or `selective`.
/// \tparam ExecSpace a Kokkos execution space that can access the views' memory.
/// \tparam AView,BView rank-2 Kokkos views of a scalar type (`float`, `double` or `Kokkos::complex`).
/// \tparam DtView rank-1 Kokkos view of the real step type.
/// \tparam ABarView,BBarView rank-2 Kokkos views of a writable scalar type (that of `a`).
/// \param space the execution space instance the work runs on.
/// \param a (D, N) poles.
/// \param b (D, N) input gains.
/// \param dt (D) one step per channel.
/// \param a_bar (D, N) output: \f$\bar a\f$.
/// \param b_bar (D, N) output: \f$\bar b\f$.
/// \throws ssm::shape_error if the extents disagree.
template <class Policy, class ExecSpace, class AView, class BView, class DtView, class ABarView, class BBarView>
void discretize(ExecSpace const& space, AView const& a, BView const& b, DtView const& dt, ABarView const& a_bar,
                BBarView const& b_bar) {
  static_assert(is_accessible_v<ExecSpace, typename AView::memory_space> &&
                    is_accessible_v<ExecSpace, typename BView::memory_space> &&
                    is_accessible_v<ExecSpace, typename DtView::memory_space> &&
                    is_accessible_v<ExecSpace, typename ABarView::memory_space> &&
                    is_accessible_v<ExecSpace, typename BBarView::memory_space>,
                "ssm::discretize: the tensors must be accessible from the execution space");
  auto const D = a.extent(0), N = a.extent(1);
  auto const same = [&](auto const& v) { return v.extent(0) == D && v.extent(1) == N; };
  detail::require(same(b) && same(a_bar) && same(b_bar) && dt.extent(0) == D, "ssm::discretize",
                  "a, b, a_bar and b_bar must be (D, N) = " + detail::shape_string(D, N) + " and dt (D)");
  using policy = Kokkos::MDRangePolicy<ExecSpace, Kokkos::Rank<2>>;
  Kokkos::parallel_for(
      "ssm::discretize", policy(space, {0, 0}, {static_cast<long>(D), static_cast<long>(N)}),
      KOKKOS_LAMBDA(long const d, long const n) {
        auto const pair = Policy::discretize(a(d, n), b(d, n), dt(d));
        a_bar(d, n) = pair.a_bar;
        b_bar(d, n) = pair.b_bar;
      });
}

}  // namespace ssm
