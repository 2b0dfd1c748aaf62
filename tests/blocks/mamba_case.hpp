#pragma once
// Seeded random Mamba mixers for the block tests, scaled as a trained model would be: every
// stage moves its output by order one, so a wrong stride or a missing term cannot hide.
#include <cmath>
#include <cstdint>
#include <random>

#include <ssm/blocks/mamba.hpp>

#include "support.hpp"

namespace ssm::test {

/// A mixer of these sizes, with or without the conv's bias and the dense layers' biases.
inline mamba_config mamba_shape(int d_model, int d_inner, int d_state, int d_conv, int dt_rank, bool conv_bias,
                                bool bias) {
  return {.d_model = d_model,
          .d_inner = d_inner,
          .d_state = d_state,
          .d_conv = d_conv,
          .dt_rank = dt_rank,
          .conv_bias = conv_bias,
          .bias = bias};
}

/// A small mixer shape with D not a multiple of 8, N not a power of two, and a conv of width 4.
inline mamba_config small_config() { return mamba_shape(12, 26, 6, 4, 3, true, true); }

/// Random weights for `config`: dense layers uniform in +-1.5/sqrt(fan_in), steps log-uniform in
/// [1e-3, 1e-1] before softplus, A = -uniform(0.5, 16), D = uniform(0.5, 1.5).
template <class Wt>
mamba_mixer_weights<Wt, Kokkos::HostSpace> random_weights(mamba_config const& c, std::uint64_t seed) {
  auto w = mamba_mixer_weights<Wt, Kokkos::HostSpace>::allocate(c);
  auto scaled = [&](auto const& v, double fan_in, std::uint64_t s) {
    float const bound = static_cast<float>(1.5 / std::sqrt(fan_in));
    fill_uniform(v, seed * 101 + s, -bound, bound);
  };
  scaled(w.in_proj_weight, c.d_model, 1);
  scaled(w.conv1d_weight, c.d_conv, 2);
  scaled(w.x_proj_weight, c.d_inner, 3);
  scaled(w.dt_proj_weight, c.dt_rank, 4);
  scaled(w.out_proj_weight, c.d_inner, 5);
  if (c.conv_bias) fill_uniform(w.conv1d_bias, seed * 101 + 6, -0.5f, 0.5f);
  if (c.bias) {
    fill_uniform(w.in_proj_bias, seed * 101 + 7, -0.2f, 0.2f);
    fill_uniform(w.out_proj_bias, seed * 101 + 8, -0.2f, 0.2f);
  }
  std::mt19937_64 rng(seed * 101 + 9);
  std::uniform_real_distribution<double> log_dt(std::log(1e-3), std::log(1e-1));
  for (int d = 0; d < c.d_inner; ++d) {
    double const dt = std::exp(log_dt(rng));
    w.dt_proj_bias(d) = static_cast<float>(std::log(std::expm1(dt)));  // softplus^-1(dt)
  }
  fill_uniform(w.A, seed * 101 + 10, -16.0f, -0.5f);
  fill_uniform(w.D, seed * 101 + 11, 0.5f, 1.5f);
  return w;
}

}  // namespace ssm::test
