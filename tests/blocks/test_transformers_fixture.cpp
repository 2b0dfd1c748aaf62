// An independent oracle: HuggingFace transformers' MambaForCausalLM with seeded random weights
// (scripts/make_fixtures.py). Its weights and its per-layer outputs for three inputs are the
// fixtures; ssm's blocks must match them layer by layer within 1e-4 in fp32.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <ssm/blocks/mamba.hpp>
#include <ssm/io/safetensors.hpp>

#include "catch.hpp"
#include "support.hpp"

using namespace ssm;
using namespace ssm::test;

namespace {

std::string const fixture_dir = std::string(SSM_FIXTURE_DIR) + "/mamba_tiny";

using vector_f = Kokkos::View<float*, Kokkos::LayoutRight, Kokkos::HostSpace>;
using matrix_f = Kokkos::View<float**, Kokkos::LayoutRight, Kokkos::HostSpace>;

/// Copy a tensor of the checkpoint into a view of the same number of elements.
template <class View>
void load(io::safetensors_file const& file, std::string const& name, View const& into,
          std::vector<std::int64_t> const& shape) {
  auto const values = file.read_as<float>(name, shape);
  REQUIRE(values.size() == into.span());
  std::copy(values.begin(), values.end(), into.data());
}

struct tiny_model {
  mamba_config config;
  int n_layer = 0, vocab = 0;
  matrix_f embeddings;
  vector_f norm_f;
  std::vector<mamba_block<space, float, float>> blocks;
};

tiny_model load_model() {
  std::ifstream config_file(fixture_dir + "/config.json");
  REQUIRE(config_file.good());
  auto const json = nlohmann::json::parse(config_file);
  tiny_model m;
  m.config.d_model = json.at("hidden_size");
  m.config.d_inner = json.at("intermediate_size");
  m.config.d_state = json.at("state_size");
  m.config.d_conv = json.at("conv_kernel");
  m.config.dt_rank = json.at("time_step_rank");
  m.config.bias = json.at("use_bias");
  m.config.conv_bias = json.at("use_conv_bias");
  m.config.norm_eps = json.at("layer_norm_epsilon");
  m.n_layer = json.at("num_hidden_layers");
  m.vocab = json.at("vocab_size");
  auto const& c = m.config;
  std::int64_t const E = c.d_model, D = c.d_inner, N = c.d_state, W = c.d_conv, R = c.dt_rank;

  io::safetensors_file const file(fixture_dir + "/model.safetensors");
  m.embeddings = matrix_f("embeddings", m.vocab, E);
  load(file, "backbone.embeddings.weight", m.embeddings, {m.vocab, E});
  m.norm_f = vector_f("norm_f", E);
  load(file, "backbone.norm_f.weight", m.norm_f, {E});
  for (int i = 0; i < m.n_layer; ++i) {
    std::string const p = "backbone.layers." + std::to_string(i) + ".";
    auto w = mamba_mixer_weights<float, Kokkos::HostSpace>::allocate(c, p + "mixer");
    load(file, p + "mixer.in_proj.weight", w.in_proj_weight, {2 * D, E});
    load(file, p + "mixer.conv1d.weight", w.conv1d_weight, {D, 1, W});
    load(file, p + "mixer.conv1d.bias", w.conv1d_bias, {D});
    load(file, p + "mixer.x_proj.weight", w.x_proj_weight, {R + 2 * N, D});
    load(file, p + "mixer.dt_proj.weight", w.dt_proj_weight, {D, R});
    load(file, p + "mixer.dt_proj.bias", w.dt_proj_bias, {D});
    load(file, p + "mixer.A_log", w.A, {D, N});
    for (std::size_t k = 0; k < w.A.span(); ++k) w.A.data()[k] = -std::exp(w.A.data()[k]);  // A = -exp(A_log)
    load(file, p + "mixer.D", w.D, {D});
    load(file, p + "mixer.out_proj.weight", w.out_proj_weight, {E, D});
    vector_f norm("norm", E);
    load(file, p + "norm.weight", norm, {E});
    m.blocks.emplace_back(mamba_mixer<space, float, float>(c, w), norm);
  }
  return m;
}

/// Within 1e-4 of transformers, relative to the tensor's own scale when it exceeds one.
void require_matches(host3<float> const& actual, std::vector<float> const& expected, std::string const& what) {
  host3<float> e("expected", actual.extent(0), actual.extent(1), actual.extent(2));
  REQUIRE(expected.size() == e.span());
  std::copy(expected.begin(), expected.end(), e.data());
  double const scale = std::max(1.0, max_abs(e));
  require_close(actual, e, {0.0, 1e-4 * scale}, what);
}

}  // namespace

TEST_CASE("mamba blocks match transformers' MambaForCausalLM layer by layer", "[mamba][transformers]") {
  auto const model = load_model();
  io::safetensors_file const outputs(fixture_dir + "/outputs.safetensors");
  std::int64_t const E = model.config.d_model, V = model.vocab;

  for (int k = 0; k < 3; ++k) {
    std::string const c = "case" + std::to_string(k) + ".";
    auto const& info = outputs.info(c + "input_ids");
    std::int64_t const B = info.shape.at(0), L = info.shape.at(1);
    auto const ids = outputs.read_as<std::int64_t>(c + "input_ids", {B, L});
    INFO("case " << k << ": B = " << B << ", L = " << L);

    host3<float> hidden("hidden", B, L, E), residual("residual", B, L, E), sum("sum", B, L, E);
    for (std::int64_t t = 0; t < B * L; ++t)
      for (std::int64_t e = 0; e < E; ++e) hidden.data()[t * E + e] = model.embeddings(ids[t], e);

    for (int i = 0; i < model.n_layer; ++i) {
      std::string const layer = c + "layer" + std::to_string(i) + ".";
      model.blocks[i].forward(space(), hidden, residual, hidden);  // in place: hidden becomes the mixer output
      space().fence();
      require_matches(hidden, outputs.read_as<float>(layer + "mixer_out", {B, L, E}), layer + "mixer_out");
      for (std::size_t j = 0; j < sum.span(); ++j) sum.data()[j] = residual.data()[j] + hidden.data()[j];
      require_matches(sum, outputs.read_as<float>(layer + "hidden", {B, L, E}), layer + "hidden");
    }

    // final norm over residual + last mixer output, then the tied lm_head
    host3<float> normed("normed", B, L, E), logits("logits", B, L, V);
    rms_norm_params<float, float, Kokkos::HostSpace> norm;
    norm.x = matrix_f(sum.data(), B * L, E);
    norm.weight = model.norm_f;
    norm.eps = model.config.norm_eps;
    norm.out = matrix_f(normed.data(), B * L, E);
    rms_norm(space(), norm);
    linear(space(), linear_params<float, float, Kokkos::HostSpace>{matrix_f(normed.data(), B * L, E),
                                                                    model.embeddings, {}, matrix_f(logits.data(), B * L, V)});
    space().fence();
    require_matches(normed, outputs.read_as<float>(c + "norm_f", {B, L, E}), c + "norm_f");
    require_matches(logits, outputs.read_as<float>(c + "logits", {B, L, V}), c + "logits");
  }
}

TEST_CASE("mamba blocks stepped token by token match transformers' full-sequence outputs", "[mamba][transformers]") {
  auto const model = load_model();
  io::safetensors_file const outputs(fixture_dir + "/outputs.safetensors");
  std::int64_t const E = model.config.d_model;
  std::int64_t const L = outputs.info("case2.input_ids").shape.at(1);
  auto const ids = outputs.read_as<std::int64_t>("case2.input_ids", {1, L});
  auto const last = outputs.read_as<float>("case2.layer" + std::to_string(model.n_layer - 1) + ".hidden", {1, L, E});

  std::vector<mamba_state<float, Kokkos::HostSpace>> states;
  for (int i = 0; i < model.n_layer; ++i) states.push_back(mamba_state<float, Kokkos::HostSpace>::zeros(model.config, 1));
  host3<float> stream("stream", 1, L, E);
  Kokkos::View<float**, Kokkos::LayoutRight, Kokkos::HostSpace> hidden("hidden", 1, E), residual("residual", 1, E);
  for (std::int64_t l = 0; l < L; ++l) {
    for (std::int64_t e = 0; e < E; ++e) hidden(0, e) = model.embeddings(ids[l], e), residual(0, e) = 0.0f;
    for (int i = 0; i < model.n_layer; ++i) model.blocks[i].step(space(), hidden, residual, hidden, states[i]);
    space().fence();
    for (std::int64_t e = 0; e < E; ++e) stream(0, l, e) = residual(0, e) + hidden(0, e);
  }
  require_matches(stream, last, "stepped residual stream after the last layer");
}
