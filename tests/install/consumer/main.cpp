// Runs one selective-scan step through the installed headers and checks it by hand:
// h = exp(dt * a) * 0 + dt * b * u = 0.5 * 2 * 3 = 3, y = c * h + D * u = 4 * 3 + 1 * 3 = 15.
#include <cstdio>

#include <ssm/ssm.hpp>

int main(int argc, char* argv[]) {
  Kokkos::ScopeGuard kokkos(argc, argv);
  using memory = Kokkos::HostSpace;
  Kokkos::View<float***, Kokkos::LayoutRight, memory> u("u", 1, 1, 1), dt("dt", 1, 1, 1), out("out", 1, 1, 1);
  Kokkos::View<float**, Kokkos::LayoutRight, memory> A("A", 1, 1);
  Kokkos::View<float***, Kokkos::LayoutRight, memory> B("B", 1, 1, 1), C("C", 1, 1, 1);
  Kokkos::View<float*, Kokkos::LayoutRight, memory> D("D", 1);
  u(0, 0, 0) = 3.0f, dt(0, 0, 0) = 0.5f, A(0, 0) = -1.0f, B(0, 0, 0) = 2.0f, C(0, 0, 0) = 4.0f, D(0) = 1.0f;
  ssm::selective_scan_params<float, memory> p;
  p.u = u, p.delta = dt, p.A = A, p.B = ssm::one_group(B), p.C = ssm::one_group(C), p.D = D, p.out = out;
  ssm::selective_scan(Kokkos::DefaultHostExecutionSpace(), p);
  Kokkos::fence();
  bool const ok = out(0, 0, 0) == 15.0f;
  std::printf("consumer: %s (y = %g)\n", ok ? "ok" : "WRONG", static_cast<double>(out(0, 0, 0)));
  return ok ? 0 : 1;
}
