#pragma once
/// \file
/// \brief The published Mamba-1 model shapes, and seeded random weights for them, so that
/// benchmarks and tests need no download.

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <ssm/core/dtype.hpp>
#include <ssm/core/error.hpp>
#include <ssm/model/weights.hpp>

namespace ssm {

/// \brief The configuration of a published Mamba-1 shape (state-spaces/mamba-*), or "tiny".
/// \param name one of tiny, 130m, 370m, 790m, 1.4b, 2.8b.
/// \return the mamba_ssm configuration: vocabulary 50277 padded to 50280, d_state 16, d_conv 4,
///         expand 2, dt_rank ceil(d_model / 16), tied embeddings.
/// \throws ssm::error for an unknown name.
inline model_config preset_config(std::string const& name) {
  struct shape {
    char const* name;
    int d_model, n_layer;
  };
  static constexpr shape shapes[] = {{"tiny", 64, 2},    {"130m", 768, 24},  {"370m", 1024, 48},
                                     {"790m", 1536, 48}, {"1.4b", 2048, 48}, {"2.8b", 2560, 64}};
  for (auto const& s : shapes) {
    if (name != s.name) continue;
    model_config c;
    c.d_model = s.d_model;
    c.n_layer = s.n_layer;
    c.vocab_size = 50277;
    c.padded_vocab_size = 50280;
    c.d_inner = 2 * s.d_model;
    c.dt_rank = (s.d_model + 15) / 16;
    c.convention = "mamba_ssm";
    return c;
  }
  throw error("unknown model preset '" + name + "' (tiny, 130m, 370m, 790m, 1.4b, 2.8b)");
}

/// \brief Seeded random weights of a model, scaled as a trained model's so every block matters:
/// dense layers uniform in \f$\pm 1/\sqrt{\mathrm{fan\_in}}\f$, steps log-uniform in [1e-3, 1e-1]
/// before softplus, A = -uniform(1, 16), D = 1, norms 1, embeddings N(0, 1/4).
/// \tparam Wt storage type of the weights. \param c the configuration. \param seed the seed.
/// \return weights in host memory.
template <class Wt>
mamba_lm_weights<Wt, Kokkos::HostSpace> random_lm_weights(model_config const& c, std::uint64_t seed) {
  auto w = mamba_lm_weights<Wt, Kokkos::HostSpace>::allocate(c);
  std::mt19937_64 rng(seed);
  auto uniform = [&](auto const& v, float bound) {
    std::uniform_real_distribution<float> dist(-bound, bound);
    using V = typename std::remove_reference_t<decltype(v)>::non_const_value_type;
    for (std::size_t i = 0; i < v.span(); ++i) v.data()[i] = from_float<V>(dist(rng));
  };
  auto constant = [](auto const& v, float value) {
    using V = typename std::remove_reference_t<decltype(v)>::non_const_value_type;
    for (std::size_t i = 0; i < v.span(); ++i) v.data()[i] = from_float<V>(value);
  };
  std::normal_distribution<float> normal(0.0f, 0.5f);
  for (std::size_t i = 0; i < w.embedding.span(); ++i) w.embedding.data()[i] = from_float<Wt>(normal(rng));
  if (!c.tie_embeddings) uniform(w.lm_head, 1.0f / std::sqrt(float(c.d_model)));
  constant(w.norm_f, 1.0f);
  std::uniform_real_distribution<double> log_dt(std::log(1e-3), std::log(1e-1));
  std::uniform_real_distribution<float> decay(1.0f, 16.0f);
  for (int i = 0; i < c.n_layer; ++i) {
    auto& m = w.mixers[i];
    constant(w.norms[i], 1.0f);
    uniform(m.in_proj_weight, 1.0f / std::sqrt(float(c.d_model)));
    uniform(m.conv1d_weight, 1.0f / std::sqrt(float(c.d_conv)));
    if (c.conv_bias) uniform(m.conv1d_bias, 0.5f);
    uniform(m.x_proj_weight, 1.0f / std::sqrt(float(c.d_inner)));
    uniform(m.dt_proj_weight, 1.0f / std::sqrt(float(c.dt_rank)));
    uniform(m.out_proj_weight, 1.0f / std::sqrt(float(c.d_inner)));
    if (c.bias) {
      constant(m.in_proj_bias, 0.0f);
      constant(m.out_proj_bias, 0.0f);
    }
    for (int d = 0; d < c.d_inner; ++d) m.dt_proj_bias(d) = static_cast<float>(std::log(std::expm1(std::exp(log_dt(rng)))));
    for (std::size_t k = 0; k < m.A.span(); ++k) m.A.data()[k] = -decay(rng);
    constant(m.D, 1.0f);
  }
  return w;
}

}  // namespace ssm
