// 02 — The selective scan: a recurrence whose step size changes with every token.
//
// One channel with one state, A = -ln 2 and step delta = 1, so exp(delta A) = 1/2: an impulse
// u = [1, 0, 0, ...] decays by half each token (y = C h with C = 1). Then the same channel with
// delta = 0 at tokens 3..5: a zero step means "ignore this token and keep the state", which is
// how Mamba selects what to remember. Finally, the output of ssm::selective_scan (the Kokkos path)
// is checked against ssm::reference::selective_scan (the plain loops that define it).
//
// What to check: the first column halves each token; the second freezes while delta = 0.
#include <cmath>
#include <cstdio>

#include <ssm/ssm.hpp>

int main(int argc, char* argv[]) {
  Kokkos::ScopeGuard kokkos(argc, argv);
  using space = Kokkos::DefaultExecutionSpace;
  using memory = space::memory_space;
  constexpr int L = 8;

  // (B, D, L) = (1, 2, L): channel 0 with delta = 1 always, channel 1 with delta = 0 at l = 3..5.
  Kokkos::View<float***, Kokkos::LayoutRight, memory> u("u", 1, 2, L), delta("delta", 1, 2, L);
  Kokkos::View<float***, Kokkos::LayoutRight, memory> out("out", 1, 2, L), expected("expected", 1, 2, L);
  Kokkos::View<float**, Kokkos::LayoutRight, memory> A("A", 2, 1);
  Kokkos::View<float***, Kokkos::LayoutRight, memory> B("B", 1, 1, L), C("C", 1, 1, L);
  auto hu = Kokkos::create_mirror_view(u);
  auto hdelta = Kokkos::create_mirror_view(delta);
  auto hA = Kokkos::create_mirror_view(A);
  auto hB = Kokkos::create_mirror_view(B);
  auto hC = Kokkos::create_mirror_view(C);
  for (int d = 0; d < 2; ++d) {
    hA(d, 0) = -std::log(2.0f);
    hu(0, d, 0) = 1.0f;  // an impulse at token 0
    for (int l = 0; l < L; ++l) hdelta(0, d, l) = (d == 1 && l >= 3 && l <= 5) ? 0.0f : 1.0f;
  }
  // B = 1 writes delta * u into the state; C = 1 reads the state out.
  for (int l = 0; l < L; ++l) hB(0, 0, l) = 1.0f, hC(0, 0, l) = 1.0f;
  Kokkos::deep_copy(u, hu);
  Kokkos::deep_copy(delta, hdelta);
  Kokkos::deep_copy(A, hA);
  Kokkos::deep_copy(B, hB);
  Kokkos::deep_copy(C, hC);

  ssm::selective_scan_params<float, memory> p;
  p.u = u;
  p.delta = delta;
  p.A = A;
  p.B = ssm::one_group(B);
  p.C = ssm::one_group(C);
  p.out = out;
  ssm::selective_scan(space(), p);
  space().fence();

  auto const hout = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), out);
  std::printf("token  delta=1 always   delta=0 at tokens 3..5\n");
  for (int l = 0; l < L; ++l) std::printf("%5d  %14.6f   %14.6f\n", l, hout(0, 0, l), hout(0, 1, l));

  if constexpr (ssm::is_accessible_v<Kokkos::DefaultHostExecutionSpace, memory>) {
    p.out = expected;
    ssm::reference::selective_scan(p);
    double worst = 0.0;
    for (int d = 0; d < 2; ++d)
      for (int l = 0; l < L; ++l) worst = std::fmax(worst, std::fabs(hout(0, d, l) - expected(0, d, l)));
    std::printf("largest difference from the sequential reference: %g\n", worst);
  }
  return 0;
}
