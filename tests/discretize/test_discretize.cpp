/// \file
/// \brief Tests of the discretization policies (`ssm::zoh`, `bilinear`, `euler`, `selective`) and of
/// the whole-tensor `ssm::discretize`, against closed-form solutions of x' = a x + b u, a fine RK4
/// integration, and the formulas written out independently with std::complex.

#include "catch.hpp"

#include <cmath>
#include <complex>
#include <cstddef>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <ssm/discretize/discretize.hpp>

#include "support.hpp"

namespace {

using ssm::test::require_shape_error;

using kcomplex = Kokkos::complex<double>;
using scomplex = std::complex<double>;
constexpr double eps = std::numeric_limits<double>::epsilon();

scomplex to_std(kcomplex z) { return {z.real(), z.imag()}; }
template <class Real>
std::complex<long double> to_long(Kokkos::complex<Real> z) {
  return {static_cast<long double>(z.real()), static_cast<long double>(z.imag())};
}

// Run `f` and require that it throws ssm::shape_error whose message contains every one of `parts`.
// One step of x' = a x + b u, u constant, integrated with classical RK4 in `substeps` substeps, the
// state accumulated with Kahan compensation so that rounding does not grow with the substep count.
template <class S>
S rk4_step(S x, S a, S bu, double h, int substeps) {
  double const hs = h / substeps;
  auto f = [&](S v) { return a * v + bu; };
  S compensation{};
  for (int i = 0; i < substeps; ++i) {
    S const k1 = f(x);
    S const k2 = f(x + (hs / 2) * k1);
    S const k3 = f(x + (hs / 2) * k2);
    S const k4 = f(x + hs * k3);
    S const dx = (hs / 6) * (k1 + 2.0 * k2 + 2.0 * k3 + k4);
    S const y = dx - compensation;
    S const t = x + y;
    compensation = (t - x) - y;
    x = t;
  }
  return x;
}

// The piecewise-constant input of the ZOH tests: steps of varied length, u constant on each.
struct schedule {
  std::vector<double> h{0.1, 0.37, 1.0, 2.5, 0.05, 0.8};
  std::vector<double> u{1.0, -2.0, 0.5, 3.0, -1.0, 0.25};
};

// (e^z - 1) / z of the oracle, in long double: a 30-term Taylor series near 0 (no cancellation),
// exp(z) - 1 elsewhere (where the cancellation costs at most a factor 10 of long double's 2^-64).
std::complex<long double> exprel_oracle(std::complex<long double> z) {
  if (std::abs(z) < 0.1L) {
    std::complex<long double> term = 1, sum = 0;
    for (int k = 1; k <= 30; ++k) {
      sum += term;
      term *= z / static_cast<long double>(k + 1);
    }
    return sum;
  }
  return (std::exp(z) - 1.0L) / z;
}

}  // namespace

TEST_CASE("zoh is exact for piecewise-constant input: real a < 0", "[discretize][zoh]") {
  int constexpr substeps = 10000;
  schedule const s;
  double const b = 1.7;
  for (double const a : {-0.5, -1.2, -1e-5}) {
    CAPTURE(a);
    double x = 0.8, x_closed = 0.8, x_rk4 = 0.8, scale = 1.0, h_max = 0.0;
    for (std::size_t k = 0; k < s.h.size(); ++k) {
      double const h = s.h[k], u = s.u[k];
      auto const pair = ssm::zoh::discretize(a, b, h);
      x = pair.a_bar * x + pair.b_bar * u;
      // x(t0 + h) = e^{ah} x0 + b u (e^{ah} - 1) / a, written out independently.
      x_closed = std::exp(a * h) * x_closed + b * u * (std::expm1(a * h) / a);
      x_rk4 = rk4_step(x_rk4, a, b * u, h, substeps);
      scale = std::fmax(scale, std::fmax(std::abs(x_closed), std::abs(b * u * h)));
      h_max = std::fmax(h_max, h);
    }
    auto const steps = static_cast<double>(s.h.size());
    // Closed form vs library: a few roundings per step each, not amplified (|a_bar| <= 1).
    double const tol_closed = 16.0 * steps * eps * scale;
    // RK4, per step: truncation n (|a| h/n)^5 / 120 (headroom 10), and rounding: with the state
    // compensated, a few roundings of each increment, summing to about 3 eps h max|x'|, with
    // h max|x'| <= (1 + |a| h) scale; 8 eps (1 + |a| h) scale with headroom.
    double const z = std::abs(a) * h_max;
    double const tol_rk4 =
        scale * steps * (10.0 * std::pow(z, 5) / (120.0 * std::pow(substeps, 4)) + 8.0 * eps * (1.0 + z));
    CHECK(std::abs(x - x_closed) <= tol_closed);
    CHECK(std::abs(x - x_rk4) <= tol_rk4);
    CHECK(tol_rk4 < 2e-12);  // the oracle is as tight as promised
  }
}

TEST_CASE("zoh is exact for piecewise-constant input: complex a with Re a < 0", "[discretize][zoh]") {
  int constexpr substeps = 10000;
  schedule const s;
  kcomplex const b(0.5, -0.25);
  for (kcomplex const a : {kcomplex(-0.3, 2.1), kcomplex(-1.5, -0.7), kcomplex(-1e-6, 1.7)}) {
    CAPTURE(a.real(), a.imag());
    scomplex const as = to_std(a), bs = to_std(b);
    kcomplex x(1.0, 0.5);
    scomplex x_closed(1.0, 0.5), x_rk4(1.0, 0.5);
    double scale = 1.0, h_max = 0.0;
    for (std::size_t k = 0; k < s.h.size(); ++k) {
      double const h = s.h[k], u = s.u[k];
      auto const pair = ssm::zoh::discretize(a, b, h);
      x = pair.a_bar * x + pair.b_bar * u;
      scomplex const e = std::exp(as * h);
      x_closed = e * x_closed + bs * u * (e - 1.0) / as;
      x_rk4 = rk4_step(x_rk4, as, bs * u, h, substeps);
      scale = std::fmax(scale, std::fmax(std::abs(x_closed), std::abs(bs * u * h)));
      h_max = std::fmax(h_max, h);
    }
    auto const steps = static_cast<double>(s.h.size());
    // The closed form's own e - 1 loses |e| eps / |e - 1| relative; |ah| >= 0.1 here keeps it small.
    double const tol_closed = 64.0 * steps * eps * scale;
    double const z = std::abs(as) * h_max;
    double const tol_rk4 =
        scale * steps * (10.0 * std::pow(z, 5) / (120.0 * std::pow(substeps, 4)) + 8.0 * eps * (1.0 + z));
    CHECK(std::abs(to_std(x) - x_closed) <= tol_closed);
    CHECK(std::abs(to_std(x) - x_rk4) <= tol_rk4);
    CHECK(tol_rk4 < 2e-12);
  }
}

TEST_CASE("zoh: a = 0 gives a_bar = 1, b_bar = dt b exactly", "[discretize][zoh]") {
  for (double const dt : {1e-9, 0.5, 1.0, 3.0, 1e6}) {
    auto const real = ssm::zoh::discretize(0.0, 1.7, dt);
    CHECK(real.a_bar == 1.0);
    CHECK(real.b_bar == 1.7 * dt);
    auto const complex = ssm::zoh::discretize(kcomplex(0.0, 0.0), kcomplex(0.5, -0.25), dt);
    CHECK(complex.a_bar == kcomplex(1.0, 0.0));
    CHECK(complex.b_bar.real() == 0.5 * dt);
    CHECK(complex.b_bar.imag() == -0.25 * dt);
    auto const single = ssm::zoh::discretize(0.0f, 1.7f, static_cast<float>(dt));
    CHECK(single.a_bar == 1.0f);
    CHECK(single.b_bar == 1.7f * static_cast<float>(dt));
  }
}

TEMPLATE_TEST_CASE("zoh: b_bar = dt b (e^z - 1)/z without cancellation near z = a dt -> 0", "[discretize][zoh]",
                   float, double) {
  using Real = TestType;
  double const u = std::numeric_limits<Real>::epsilon() / 2;
  // expm1 (<= 1 ulp), one division, two products: about 4 ulps = 8u; factor 2 of headroom.
  double const tol = 16.0 * u;
  Real const b = Real(1.25), dt = Real(0.5);
  for (double const magnitude : {1e-30, 1e-15, 1e-10, 1e-7, 1e-5, 1e-4, 5e-4, 9.99e-4, 1e-3, 1.0001e-3, 2e-3, 5e-3,
                                 1e-2, 3e-2, 0.1, 0.5, 2.0, 10.0}) {
    for (double const sign : {-1.0, 1.0}) {
      Real const a = static_cast<Real>(sign * magnitude / 0.5);
      Real const z = a * dt;
      CAPTURE(magnitude, sign, z);
      long double const zl = z;
      long double const want = static_cast<long double>(b) * dt * (std::expm1(zl) / zl);
      auto const pair = ssm::zoh::discretize(a, b, dt);
      CHECK(std::abs(static_cast<long double>(pair.b_bar) - want) <= tol * std::abs(want));
      CHECK(std::abs(static_cast<long double>(pair.a_bar) - std::exp(zl)) <= 4.0 * u * std::exp(zl));
    }
  }
}

TEMPLATE_TEST_CASE("zoh: complex b_bar without cancellation near a dt -> 0", "[discretize][zoh]", float, double) {
  using Real = TestType;
  using C = Kokkos::complex<Real>;
  double const u = std::numeric_limits<Real>::epsilon() / 2;
  // e^z - 1 from expm1, cos and sin (a few ulps per part), then a complex division (a few more):
  // normwise 32u.
  double const tol = 32.0 * u;
  C const b(Real(0.5), Real(-0.25));
  Real const dt = Real(0.5);
  for (double const magnitude : {1e-20, 1e-9, 1e-6, 1e-4, 9.99e-4, 1.0001e-3, 3e-3, 1e-2, 0.2, 1.0, 5.0}) {
    for (double const angle : {0.5, 1.3, 1.5707, 2.0, 3.0, -1.0, -3.1}) {  // arg(a): Re a < 0 beyond pi/2
      C const a(static_cast<Real>(magnitude / 0.5 * std::cos(angle)),
                static_cast<Real>(magnitude / 0.5 * std::sin(angle)));
      C const z = a * dt;
      CAPTURE(magnitude, angle, z.real(), z.imag());
      std::complex<long double> const want = to_long(b) * static_cast<long double>(dt) * exprel_oracle(to_long(z));
      auto const pair = ssm::zoh::discretize(a, b, dt);
      CHECK(std::abs(to_long(pair.b_bar) - want) <= tol * std::abs(want));
      CHECK(std::abs(to_long(pair.a_bar) - std::exp(to_long(z))) <= tol * std::abs(std::exp(to_long(z))));
    }
  }
}

TEST_CASE("bilinear maps Re a < 0 into the unit disc for every dt > 0", "[discretize][bilinear]") {
  std::size_t checked = 0;
  auto check = [&](double re, double im, double dt) {
    CAPTURE(re, im, dt);
    ++checked;
    auto const pair = ssm::bilinear::discretize(kcomplex(re, im), kcomplex(1.0, 0.0), dt);
    // Exactly, with a dt / 2 = x + iy: 1 - |a_bar|^2 = -4x / ((1 - x)^2 + y^2), a quotient of
    // positive terms (no cancellation). The computed a_bar is within a few roundings (normwise)
    // of the exact one, so |a_bar|^2 within a few more.
    double const x = re * dt / 2, y = im * dt / 2;
    double const margin = -4.0 * x / ((1.0 - x) * (1.0 - x) + y * y);  // 0 if the square overflows
    double const norm = Kokkos::abs(pair.a_bar);
    CHECK(std::abs(norm * norm - (1.0 - margin)) <= 32.0 * eps);
    if (margin > 64.0 * eps) CHECK(norm < 1.0);  // strictly inside wherever rounding can tell
    CHECK(norm <= 1.0 + 16.0 * eps);
    // The real case: a_bar = (1 + x) / (1 - x) in (-1, 1); 1 - a_bar = 2|x| / (1 + |x|) and
    // a_bar + 1 = 2 / (1 + |x|), each computed with three roundings.
    auto const real = ssm::bilinear::discretize(re, 1.0, dt);
    CHECK(std::abs(real.a_bar) <= 1.0);
    if (2.0 * std::abs(x) / (1.0 + std::abs(x)) > 8.0 * eps) CHECK(real.a_bar < 1.0);
    if (2.0 / (1.0 + std::abs(x)) > 8.0 * eps) CHECK(real.a_bar > -1.0);
  };
  std::mt19937_64 rng(20240611);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  for (int i = 0; i < 4000; ++i) {
    double const re = -std::pow(10.0, -4.0 + 7.0 * unit(rng));            // -1e-4 ... -1e3
    double const im = (i % 4 == 0) ? 0.0 : (unit(rng) - 0.5) * 2e3;       // any imaginary part
    double const dt = std::pow(10.0, -6.0 + 12.0 * unit(rng));            // 1e-6 ... 1e6
    check(re, im, dt);
  }
  // Huge steps (a dt itself stays finite).
  for (double const dt : {1e8, 1e15, 1e30, 1e100, 1e200, 1e300})
    for (auto const& [re, im] : {std::pair{-1e-4, 0.0}, std::pair{-0.5, 0.9}, std::pair{-1e-3, -1.0},
                                 std::pair{-1.0, 0.0}, std::pair{-0.25, 1e-6}})
      check(re, im, dt);
  CHECK(checked == 4030);
  // The limit dt -> infinity: a_bar -> -1, b_bar -> -2 b / a.
  auto const far = ssm::bilinear::discretize(-2.0, 3.0, 1e300);
  CHECK(std::abs(far.a_bar + 1.0) <= 4 * eps);  // (1 - 1e300) / (1 + 1e300) rounds to -1
  CHECK(std::abs(far.b_bar - 3.0) <= 4 * eps * 3.0);
}

TEST_CASE("bilinear, euler and selective match their formulas", "[discretize]") {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> dist(-3.0, 3.0);
  std::uniform_real_distribution<double> step(0.001, 2.0);
  for (int i = 0; i < 500; ++i) {
    kcomplex const a(-std::abs(dist(rng)), dist(rng)), b(dist(rng), dist(rng));
    double const dt = step(rng);
    scomplex const as = to_std(a), bs = to_std(b);
    CAPTURE(a.real(), a.imag(), b.real(), b.imag(), dt);
    auto close = [](kcomplex got, scomplex want, double ulps) {
      return std::abs(to_std(got) - want) <= ulps * eps * std::abs(want);
    };
    auto const bl = ssm::bilinear::discretize(a, b, dt);
    CHECK(close(bl.a_bar, (1.0 + as * dt / 2.0) / (1.0 - as * dt / 2.0), 16));
    CHECK(close(bl.b_bar, bs * dt / (1.0 - as * dt / 2.0), 16));
    auto const eu = ssm::euler::discretize(a, b, dt);
    CHECK(close(eu.a_bar, 1.0 + as * dt, 4 * (1 + std::abs(as * dt)) / std::abs(1.0 + as * dt)));
    CHECK(close(eu.b_bar, bs * dt, 4));
    auto const se = ssm::selective::discretize(a, b, dt);
    CHECK(close(se.a_bar, std::exp(as * dt), 16));
    CHECK(close(se.b_bar, bs * dt, 4));
    // ZOH and selective share a_bar; their b_bar agree to first order in a dt.
    auto const zo = ssm::zoh::discretize(a, b, dt);
    CHECK(close(zo.a_bar, std::exp(as * dt), 16));
  }
  // Hand-derived real values.
  auto const eu = ssm::euler::discretize(-2.0, 3.0, 0.25);
  CHECK(eu.a_bar == 0.5);
  CHECK(eu.b_bar == 0.75);
  auto const bl = ssm::bilinear::discretize(-2.0, 3.0, 0.5);  // (1 - 0.5) / (1 + 0.5), 1.5 / 1.5
  CHECK(std::abs(bl.a_bar - 1.0 / 3.0) <= 4 * eps / 3.0);
  CHECK(std::abs(bl.b_bar - 1.0) <= 4 * eps);
  auto const se = ssm::selective::discretize(-2.0, 3.0, 0.5);
  CHECK(std::abs(se.a_bar - std::exp(-1.0)) <= 4 * eps * std::exp(-1.0));
  CHECK(se.b_bar == 1.5);
}

namespace {

template <class S>
double norm_of(S const& z) {
  if constexpr (std::is_arithmetic_v<S>) return std::abs(static_cast<double>(z));
  else return Kokkos::abs(z);
}

template <class S>
S random_scalar(std::mt19937_64& rng, double lo, double hi) {
  std::uniform_real_distribution<double> dist(lo, hi);
  if constexpr (std::is_arithmetic_v<S>) return static_cast<S>(dist(rng));
  else return S(dist(rng), dist(rng) * 4.0);
}

// ssm::discretize<Policy> over a (D, N) system must give, element by element, the policy's value.
template <class Policy, class S, class Real>
void check_whole_tensor(std::size_t D, std::size_t N) {
  using ssm::test::host1;
  using ssm::test::host2;
  CAPTURE(D, N);
  std::mt19937_64 rng(D * 1000 + N);
  host2<S> a("a", D, N), b("b", D, N), b_bar("b_bar", D, N);
  Kokkos::View<S**, Kokkos::LayoutLeft, Kokkos::HostSpace> a_bar("a_bar", D, N);  // any rank-2 view
  host1<Real> dt("dt", D);
  for (std::size_t d = 0; d < D; ++d) {
    dt(d) = static_cast<Real>(std::uniform_real_distribution<double>(0.001, 2.0)(rng));
    for (std::size_t n = 0; n < N; ++n) {
      S const re_negative = random_scalar<S>(rng, -3.0, -0.01);
      a(d, n) = re_negative;
      b(d, n) = random_scalar<S>(rng, -1.0, 1.0);
    }
  }
  ssm::test::space space;
  ssm::discretize<Policy>(space, a, b, dt, a_bar, b_bar);
  space.fence();
  double const u = std::numeric_limits<Real>::epsilon() / 2;
  std::size_t bad = 0;
  for (std::size_t d = 0; d < D; ++d) {
    for (std::size_t n = 0; n < N; ++n) {
      auto const want = Policy::discretize(a(d, n), b(d, n), dt(d));
      // The same computation: equal up to a possible contraction of the kernel's arithmetic.
      bool const ok = norm_of(a_bar(d, n) - want.a_bar) <= 8.0 * u * norm_of(want.a_bar) &&
                      norm_of(b_bar(d, n) - want.b_bar) <= 8.0 * u * norm_of(want.b_bar);
      if (!ok) ++bad;
    }
  }
  CHECK(bad == 0);
}

template <class Policy>
void check_whole_tensor_all(std::size_t D, std::size_t N) {
  check_whole_tensor<Policy, double, double>(D, N);
  check_whole_tensor<Policy, float, float>(D, N);
  check_whole_tensor<Policy, kcomplex, double>(D, N);
}

}  // namespace

TEMPLATE_TEST_CASE("discretize over a whole (D, N) tensor matches the element policy", "[discretize][tensor]",
                   ssm::zoh, ssm::bilinear, ssm::euler, ssm::selective) {
  check_whole_tensor_all<TestType>(1, 1);
  check_whole_tensor_all<TestType>(5, 19);
  check_whole_tensor_all<TestType>(16, 7);
  check_whole_tensor_all<TestType>(33, 16);
}

TEST_CASE("discretize rejects mismatched shapes", "[discretize][tensor][errors]") {
  using ssm::test::host1;
  using ssm::test::host2;
  ssm::test::space space;
  host2<double> a("a", 5, 19), b("b", 5, 19), a_bar("a_bar", 5, 19), b_bar("b_bar", 5, 19);
  host2<double> wrong_n("wrong", 5, 18), wrong_d("wrong", 4, 19), transposed("t", 19, 5);
  host1<double> dt("dt", 5), dt_wrong("dt", 6);
  std::vector<std::string> const parts{"ssm::discretize", "(5, 19)", "dt"};
  require_shape_error([&] { ssm::discretize<ssm::zoh>(space, a, wrong_n, dt, a_bar, b_bar); }, parts);
  require_shape_error([&] { ssm::discretize<ssm::zoh>(space, a, wrong_d, dt, a_bar, b_bar); }, parts);
  require_shape_error([&] { ssm::discretize<ssm::zoh>(space, a, b, dt_wrong, a_bar, b_bar); }, parts);
  require_shape_error([&] { ssm::discretize<ssm::zoh>(space, a, b, dt, transposed, b_bar); }, parts);
  require_shape_error([&] { ssm::discretize<ssm::bilinear>(space, a, b, dt, a_bar, wrong_n); }, parts);
  // The correct call does not throw.
  CHECK_NOTHROW(ssm::discretize<ssm::zoh>(space, a, b, dt, a_bar, b_bar));
  space.fence();
}
