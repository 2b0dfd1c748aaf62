// 01 — Discretization: from a continuous-time system to a recurrence.
//
// A state-space layer starts from x'(t) = a x(t) + b u(t). To run it on tokens, each step of
// length dt becomes x_k = a_bar x_{k-1} + b_bar u_k. This example discretizes one complex pole
// a = -0.5 + 2i with the four rules of ssm and compares their step responses (u = 1 from t = 0)
// with the exact solution x(t) = b (e^{a t} - 1) / a.
//
// What to check: zero-order hold matches the exact solution to rounding at every step, because
// u really is constant over each step; bilinear and Euler drift, Euler the most; the selective
// rule (Mamba's) keeps ZOH's a_bar but uses Euler's b_bar.
#include <cmath>
#include <complex>
#include <cstdio>

#include <ssm/ssm.hpp>

template <class Policy>
double worst_error(Kokkos::complex<double> a, Kokkos::complex<double> b, double dt, int steps) {
  auto const [a_bar, b_bar] = Policy::discretize(a, b, dt);
  Kokkos::complex<double> x = 0.0;
  double worst = 0.0;
  for (int k = 1; k <= steps; ++k) {
    x = a_bar * x + b_bar * 1.0;  // u = 1
    std::complex<double> const as(a.real(), a.imag()), bs(b.real(), b.imag());
    std::complex<double> const exact = bs * (std::exp(as * (k * dt)) - 1.0) / as;
    worst = std::fmax(worst, std::abs(std::complex<double>(x.real(), x.imag()) - exact));
  }
  return worst;
}

int main(int argc, char* argv[]) {
  Kokkos::ScopeGuard kokkos(argc, argv);
  Kokkos::complex<double> const a(-0.5, 2.0), b(1.0, 0.0);
  double const dt = 0.1;
  int const steps = 50;

  auto const zoh = ssm::zoh::discretize(a, b, dt);
  std::printf("pole a = %g%+gi, step dt = %g, %d steps of a unit step input\n", a.real(), a.imag(), dt, steps);
  std::printf("zero-order hold: a_bar = %.6f%+.6fi (exact e^{a dt} = %.6f%+.6fi)\n\n", zoh.a_bar.real(),
              zoh.a_bar.imag(), std::exp(-0.05) * std::cos(0.2), std::exp(-0.05) * std::sin(0.2));
  std::printf("%-12s %-22s %s\n", "rule", "|a_bar| (stable < 1)", "worst |x_k - x(k dt)|");
  auto row = [&](char const* name, auto policy) {
    using P = decltype(policy);
    auto const pair = P::discretize(a, b, dt);
    std::printf("%-12s %-22.6f %.3e\n", name, Kokkos::abs(pair.a_bar), worst_error<P>(a, b, dt, steps));
  };
  row("zoh", ssm::zoh{});
  row("bilinear", ssm::bilinear{});
  row("euler", ssm::euler{});
  row("selective", ssm::selective{});
  return 0;
}
