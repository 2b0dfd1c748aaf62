// 04 — A Mamba block: residual add, RMSNorm, and the Mamba-1 mixer, over a sequence and per token.
//
// Builds one block at a small shape (d_model 256, d_inner 512, d_state 16, d_conv 4, dt_rank 16)
// with seeded random weights scaled like a trained model's, runs a batch of 2 sequences of 64
// tokens through `forward` (prefill: the scan over the whole sequence), then runs the same tokens
// one at a time through `step` (decoding: constant cost per token, the state carried), and prints
// what it computed.
//
// What to check: the printed outputs are the same every run (the weights are seeded), and the
// largest difference between forward and the 64 steps is at most fp32 rounding (it is often 0).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>

#include <ssm/ssm.hpp>

namespace {

using space = Kokkos::DefaultExecutionSpace;
using memory = space::memory_space;

/// Fill a view with seeded values uniform in [-bound, bound] (on the host, then copied).
template <class View>
void fill(View const& v, std::uint64_t seed, float lo, float hi) {
  auto host = Kokkos::create_mirror_view(v);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  for (std::size_t i = 0; i < host.span(); ++i) host.data()[i] = dist(rng);
  Kokkos::deep_copy(v, host);
}

}  // namespace

int main(int argc, char* argv[]) {
  Kokkos::ScopeGuard kokkos(argc, argv);
  ssm::mamba_config config;
  config.d_model = 256;
  config.d_inner = 512;
  config.d_state = 16;
  config.d_conv = 4;
  config.dt_rank = 16;
  int const batch = 2, length = 64, E = config.d_model;

  auto weights = ssm::mamba_mixer_weights<float, memory>::allocate(config);
  auto const scale = [](int fan_in) { return 1.5f / std::sqrt(static_cast<float>(fan_in)); };
  fill(weights.in_proj_weight, 1, -scale(E), scale(E));
  fill(weights.conv1d_weight, 2, -scale(config.d_conv), scale(config.d_conv));
  fill(weights.conv1d_bias, 3, -0.5f, 0.5f);
  fill(weights.x_proj_weight, 4, -scale(config.d_inner), scale(config.d_inner));
  fill(weights.dt_proj_weight, 5, -scale(config.dt_rank), scale(config.dt_rank));
  fill(weights.dt_proj_bias, 6, -6.0f, -2.5f);  // steps softplus(.) between ~0.0025 and ~0.08
  fill(weights.A, 7, -16.0f, -1.0f);            // A = -exp(A_log): decay rates of the states
  fill(weights.D, 8, 0.5f, 1.5f);
  fill(weights.out_proj_weight, 9, -scale(config.d_inner), scale(config.d_inner));
  Kokkos::View<float*, Kokkos::LayoutRight, memory> norm_weight("norm.weight", E);
  fill(norm_weight, 10, 0.8f, 1.2f);
  ssm::mamba_block<space, float, float> block(ssm::mamba_mixer<space, float, float>(config, weights), norm_weight);

  // the input of the block: a stand-in for token embeddings, and a zero residual stream
  Kokkos::View<float***, Kokkos::LayoutRight, memory> hidden("hidden", batch, length, E), out("out", batch, length, E);
  Kokkos::View<float***, Kokkos::LayoutRight, memory> residual("residual", batch, length, E);
  fill(hidden, 11, -1.0f, 1.0f);

  auto const t0 = std::chrono::steady_clock::now();
  block.forward(space(), hidden, residual, out);
  space().fence();
  auto const t1 = std::chrono::steady_clock::now();

  // the same tokens one at a time, the recurrent state carried from token to token
  auto state = ssm::mamba_state<float, memory>::zeros(config, batch);
  Kokkos::View<float**, Kokkos::LayoutRight, memory> token("token", batch, E), token_residual("token_residual", batch, E);
  Kokkos::View<float**, Kokkos::LayoutRight, memory> token_out("token_out", batch, E);
  Kokkos::View<float***, Kokkos::LayoutRight, memory> stepped("stepped", batch, length, E);
  auto const t2 = std::chrono::steady_clock::now();
  for (int l = 0; l < length; ++l) {
    Kokkos::deep_copy(token, Kokkos::subview(hidden, Kokkos::ALL, l, Kokkos::ALL));
    Kokkos::deep_copy(token_residual, 0.0f);
    block.step(space(), token, token_residual, token_out, state);
    Kokkos::deep_copy(Kokkos::subview(stepped, Kokkos::ALL, l, Kokkos::ALL), token_out);
  }
  space().fence();
  auto const t3 = std::chrono::steady_clock::now();

  auto const h_out = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), out);
  auto const h_stepped = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), stepped);
  std::printf("Mamba block: d_model %d, d_inner %d, d_state %d, d_conv %d, dt_rank %d; batch %d x %d tokens\n",
              config.d_model, config.d_inner, config.d_state, config.d_conv, config.dt_rank, batch, length);
  std::printf("\nsequence 0, mixer output per token (RMS and the first three features):\n");
  for (int l : {0, 1, 2, 3, 31, 63}) {
    double sum_squares = 0.0;
    for (int e = 0; e < E; ++e) sum_squares += double(h_out(0, l, e)) * h_out(0, l, e);
    std::printf("  token %2d: rms %.5f  [% .5f % .5f % .5f ...]\n", l, std::sqrt(sum_squares / E), h_out(0, l, 0),
                h_out(0, l, 1), h_out(0, l, 2));
  }
  double worst = 0.0;
  for (std::size_t i = 0; i < h_out.span(); ++i)
    worst = std::fmax(worst, std::fabs(h_out.data()[i] - h_stepped.data()[i]));
  std::printf("\nforward over %d tokens vs %d single steps: largest difference %.2e\n", length, length, worst);
  auto const ms = [](auto a, auto b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
  std::printf("forward: %.2f ms for %d tokens; step: %.3f ms per token (batch %d)\n", ms(t0, t1), batch * length,
              ms(t2, t3) / length, batch);
  return worst < 1e-4 ? 0 : 1;
}
