// Benchmark of one Mamba block at the Mamba-2.8B shape (d_model E=2560, d_inner D=5120, d_state
// N=16, d_conv W=4, dt_rank R=160): `forward` over a prompt (prefill) and `step` (decode), with
// fp32 and bf16 weights (fp32 activations).
//
// FLOPs: 2 per weight per token for the four dense layers (in_proj 2D*E, x_proj (R+2N)*D,
// dt_proj D*R, out_proj E*D) plus 7*D*N for the scan. Bytes: every weight read once per call
// (prefill reads them once for all tokens; decode once per token), plus activations in and out.
#include <cstdio>
#include <random>
#include <string>

#include <ssm/ssm.hpp>

#include "bench_common.hpp"

namespace {

using space = Kokkos::DefaultExecutionSpace;
using memory = space::memory_space;
using ssm::bench::fill;

template <class Wt>
void run(char const* dtype, ssm::mamba_config const& c, int prompt, int repeats) {
  auto w = ssm::mamba_mixer_weights<Wt, memory>::allocate(c);
  float const s_e = 1.0f / std::sqrt(float(c.d_model)), s_d = 1.0f / std::sqrt(float(c.d_inner));
  fill(w.in_proj_weight, 1, -s_e, s_e), fill(w.conv1d_weight, 2, -0.5, 0.5), fill(w.conv1d_bias, 3, -0.5, 0.5);
  fill(w.x_proj_weight, 4, -s_d, s_d), fill(w.dt_proj_weight, 5, -0.1f, 0.1f), fill(w.dt_proj_bias, 6, -6, -2.5);
  fill(w.A, 7, -16, -1), fill(w.D, 8, 0.5, 1.5), fill(w.out_proj_weight, 9, -s_d, s_d);
  Kokkos::View<Wt*, Kokkos::LayoutRight, memory> norm("norm", c.d_model);
  fill(norm, 10, 0.9f, 1.1f);
  ssm::mamba_block<space, float, Wt> block(ssm::mamba_mixer<space, float, Wt>(c, w), norm);

  double const D = c.d_inner, E = c.d_model, N = c.d_state, R = c.dt_rank;
  double const weights = 2 * D * E + (R + 2 * N) * D + D * R + E * D;
  double const flops_per_token = 2 * weights + 7 * D * N;

  Kokkos::View<float***, Kokkos::LayoutRight, memory> hidden("hidden", 1, prompt, c.d_model), out("out", 1, prompt, c.d_model);
  Kokkos::View<float***, Kokkos::LayoutRight, memory> residual("residual", 1, prompt, c.d_model);
  fill(hidden, 11, -1, 1);
  double const prefill = ssm::bench::median_seconds(repeats, [&] {
    block.forward(space(), hidden, residual, out);
    space().fence();
  });
  double const prefill_bytes = weights * sizeof(Wt) + 3.0 * prompt * E * 4;
  std::printf("| block prefill | %-4s | L=%d | %9.2f ms | %8.1f tok/s | %7.2f GB/s | %7.2f GFLOP/s |\n", dtype,
              prompt, prefill * 1e3, prompt / prefill, prefill_bytes / prefill / 1e9,
              flops_per_token * prompt / prefill / 1e9);

  auto state = ssm::mamba_state<float, memory>::zeros(c, 1);
  Kokkos::View<float**, Kokkos::LayoutRight, memory> token("token", 1, c.d_model), token_out("token_out", 1, c.d_model);
  Kokkos::View<float**, Kokkos::LayoutRight, memory> token_residual("token_residual", 1, c.d_model);
  fill(token, 12, -1, 1);
  double const decode = ssm::bench::median_seconds(repeats * 4, [&] {
    block.step(space(), token, token_residual, token_out, state);
    space().fence();
  });
  double const decode_bytes = weights * sizeof(Wt) + D * N * 4 * 2;
  std::printf("| block decode  | %-4s | B=1 | %9.3f ms | %8.1f tok/s | %7.2f GB/s | %7.2f GFLOP/s |\n", dtype,
              decode * 1e3, 1.0 / decode, decode_bytes / decode / 1e9, flops_per_token / decode / 1e9);
}

}  // namespace

int main(int argc, char* argv[]) {
  Kokkos::ScopeGuard kokkos(argc, argv);
  bool const quick = ssm::bench::quick_mode(argc, argv);
  ssm::bench::print_machine();
  ssm::mamba_config c;
  c.d_model = quick ? 64 : 2560;
  c.d_inner = 2 * c.d_model;
  c.d_state = 16;
  c.d_conv = 4;
  c.dt_rank = quick ? 4 : 160;
  int const prompt = quick ? 17 : 256, repeats = quick ? 1 : 3;
  std::printf("Mamba block, d_model %d, d_inner %d, d_state %d, dt_rank %d, fp32 activations\n", c.d_model,
              c.d_inner, c.d_state, c.dt_rank);
  std::printf("| op | weights | shape | time | rate | bandwidth | compute |\n|---|---|---|---|---|---|---|\n");
  run<float>("f32", c, prompt, repeats);
  run<ssm::bf16>("bf16", c, prompt, repeats);
  return 0;
}
