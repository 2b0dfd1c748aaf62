// Benchmark of the selective scan at the Mamba-2.8B shape of one layer: B=1, D=5120, L=2048,
// N=16, with z gate, D skip, delta bias and softplus, in fp32 and bf16 storage.
//
// Bytes: u, delta, z and out (B*D*L each) + B and C (B*N*L each) + A (D*N fp32) + D and bias.
// FLOPs: 7 per state update and token (dt*A, exp counted as one, two multiplies, an add, and the
// multiply-add of C*h), which is the usual count for this kernel.
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

#include <ssm/ssm.hpp>

#include "bench_common.hpp"

namespace {

using space = Kokkos::DefaultExecutionSpace;
using memory = space::memory_space;
using ssm::bench::fill;

template <class T>
void run(char const* dtype, int B, int D, int L, int N, int repeats) {
  Kokkos::View<T***, Kokkos::LayoutRight, memory> u("u", B, D, L), delta("delta", B, D, L), z("z", B, D, L),
      out("out", B, D, L);
  Kokkos::View<float**, Kokkos::LayoutRight, memory> A("A", D, N);
  Kokkos::View<T****, Kokkos::LayoutRight, memory> Bm("B", B, 1, N, L), Cm("C", B, 1, N, L);
  Kokkos::View<float*, Kokkos::LayoutRight, memory> Dv("D", D), bias("bias", D);
  fill(u, 1, -1, 1), fill(delta, 2, -3, 0), fill(z, 3, -2, 2), fill(A, 4, -16, -1);
  fill(Bm, 5, -1, 1), fill(Cm, 6, -1, 1), fill(Dv, 7, 0.5, 1.5), fill(bias, 8, -2, -1);
  ssm::selective_scan_params<T, memory> p;
  p.u = u, p.delta = delta, p.A = A, p.B = Bm, p.C = Cm, p.D = Dv, p.z = z, p.delta_bias = bias;
  p.delta_softplus = std::getenv("NOSP") == nullptr, p.out = out; if (std::getenv("NOZ")) p.z = {};
  double const seconds = ssm::bench::median_seconds(repeats, [&] {
    ssm::selective_scan(space(), p);
    space().fence();
  });
  double const elements = double(B) * D * L;
  double const bytes = 4 * elements * sizeof(T) + 2.0 * B * N * L * sizeof(T) + (double(D) * N + 2.0 * D) * 4;
  double const flops = 7.0 * elements * N;
  std::printf("| selective_scan | %-4s | B=%d D=%d L=%d N=%d | %10.3f ms | %7.2f GB/s | %7.2f GFLOP/s |\n", dtype, B, D,
              L, N, seconds * 1e3, bytes / seconds / 1e9, flops / seconds / 1e9);
}

}  // namespace

int main(int argc, char* argv[]) {
  Kokkos::ScopeGuard kokkos(argc, argv);
  bool const quick = ssm::bench::quick_mode(argc, argv);
  ssm::bench::print_machine();
  int const B = 1, D = quick ? 64 : 5120, L = quick ? 33 : 2048, N = 16, repeats = quick ? 1 : 5;
  std::printf("| op | dtype | shape | time | bandwidth | compute |\n|---|---|---|---|---|---|\n");
  run<float>("f32", B, D, L, N, repeats);
  run<ssm::bf16>("bf16", B, D, L, N, repeats);
  return 0;
}
