// The language model against transformers' MambaForCausalLM (tests/fixtures/mamba_tiny): logits
// of a whole sequence and of the last position, decoding step by step, the cache (clone, save,
// restore), scoring in chunks, and greedy generation.
#include <cmath>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <ssm/io/safetensors.hpp>
#include <ssm/model/mamba_lm.hpp>
#include <ssm/model/scoring.hpp>

#include "catch.hpp"
#include "support.hpp"

using namespace ssm;
using namespace ssm::test;

namespace {

std::string const fixture_dir = std::string(SSM_FIXTURE_DIR) + "/mamba_tiny";
using lm_type = mamba_lm<space, float, float>;

/// The tiny model, loaded tensor by tensor (the checkpoint loader has tests of its own).
lm_type load_tiny() {
  std::ifstream config_file(fixture_dir + "/config.json");
  auto const j = nlohmann::json::parse(config_file);
  model_config c;
  c.d_model = j.at("hidden_size");
  c.n_layer = j.at("num_hidden_layers");
  c.vocab_size = c.padded_vocab_size = j.at("vocab_size");
  c.d_state = j.at("state_size");
  c.d_conv = j.at("conv_kernel");
  c.expand = j.at("expand");
  c.d_inner = j.at("intermediate_size");
  c.dt_rank = j.at("time_step_rank");
  c.norm_eps = j.at("layer_norm_epsilon");
  auto w = mamba_lm_weights<float, memory>::allocate(c);
  io::safetensors_file const file(fixture_dir + "/model.safetensors");
  auto load = [&](std::string const& name, auto const& view) {
    auto const values = file.read_as<float>(name);
    REQUIRE(values.size() == view.span());
    std::copy(values.begin(), values.end(), view.data());
  };
  load("backbone.embeddings.weight", w.embedding);
  load("backbone.norm_f.weight", w.norm_f);
  for (int i = 0; i < c.n_layer; ++i) {
    std::string const p = "backbone.layers." + std::to_string(i) + ".";
    auto& m = w.mixers[i];
    load(p + "norm.weight", w.norms[i]);
    load(p + "mixer.in_proj.weight", m.in_proj_weight);
    load(p + "mixer.conv1d.weight", m.conv1d_weight);
    load(p + "mixer.conv1d.bias", m.conv1d_bias);
    load(p + "mixer.x_proj.weight", m.x_proj_weight);
    load(p + "mixer.dt_proj.weight", m.dt_proj_weight);
    load(p + "mixer.dt_proj.bias", m.dt_proj_bias);
    load(p + "mixer.A_log", m.A);
    for (std::size_t k = 0; k < m.A.span(); ++k) m.A.data()[k] = -std::exp(m.A.data()[k]);
    load(p + "mixer.D", m.D);
    load(p + "mixer.out_proj.weight", m.out_proj_weight);
  }
  return lm_type(w);
}

/// Within 1e-4 of transformers, relative to the tensor's scale when it exceeds one.
template <class View>
void require_matches(View const& actual, std::vector<float> const& expected, std::string const& what) {
  host1<float> e("expected", expected.size());
  std::copy(expected.begin(), expected.end(), e.data());
  REQUIRE(actual.span() == e.span());
  require_close(actual, e, {0.0, 1e-4 * std::max(1.0, max_abs(e))}, what);
}

}  // namespace

TEST_CASE("mamba_lm: logits of every position and of the last one match transformers", "[lm][transformers]") {
  auto const model = load_tiny();
  io::safetensors_file const outputs(fixture_dir + "/outputs.safetensors");
  std::size_t const V = model.vocab();
  for (int k = 0; k < 3; ++k) {
    std::string const c = "case" + std::to_string(k) + ".";
    auto const shape = outputs.info(c + "input_ids").shape;
    std::size_t const B = static_cast<std::size_t>(shape[0]), L = static_cast<std::size_t>(shape[1]);
    auto const ids64 = outputs.read_as<std::int64_t>(c + "input_ids");
    Kokkos::View<std::int32_t**, Kokkos::LayoutRight, memory> ids("ids", B, L);
    for (std::size_t i = 0; i < B * L; ++i) ids.data()[i] = static_cast<std::int32_t>(ids64[i]);
    auto const expected = outputs.read_as<float>(c + "logits");
    INFO("case " << k);

    host3<float> logits("logits", B, L, V);
    model.forward(space(), ids, logits);
    space().fence();
    require_matches(logits, expected, "all positions");

    host3<float> last("last", B, 1, V);
    model.forward(space(), ids, last);
    space().fence();
    std::vector<float> expected_last;
    for (std::size_t b = 0; b < B; ++b)
      expected_last.insert(expected_last.end(), expected.begin() + static_cast<long>((b * L + L - 1) * V),
                           expected.begin() + static_cast<long>((b * L + L) * V));
    require_matches(last, expected_last, "last position");

    // the same tokens one step at a time through the cache
    auto cache = model.make_cache(static_cast<int>(B));
    Kokkos::View<std::int32_t*, Kokkos::LayoutRight, memory> token("token", B);
    host2<float> step_logits("step_logits", B, V);
    host3<float> stepped("stepped", B, L, V);
    for (std::size_t l = 0; l < L; ++l) {
      for (std::size_t b = 0; b < B; ++b) token(b) = ids(b, l);
      model.step(space(), token, step_logits, cache);
      space().fence();
      for (std::size_t b = 0; b < B; ++b)
        for (std::size_t v = 0; v < V; ++v) stepped(b, l, v) = step_logits(b, v);
    }
    require_matches(stepped, expected, "step by step");
  }
}

TEST_CASE("mamba_lm: a cloned, saved and restored cache continues exactly as the original", "[lm]") {
  auto const model = load_tiny();
  std::size_t const V = model.vocab();
  Kokkos::View<std::int32_t**, Kokkos::LayoutRight, memory> prompt("prompt", 1, 9);
  for (int l = 0; l < 9; ++l) prompt(0, l) = (l * 37 + 5) % 101;
  auto cache = model.make_cache(1);
  host3<float> last("last", 1, 1, V);
  model.forward(space(), prompt, last, &cache);
  auto forked = cache.clone();
  std::stringstream saved;
  cache.save(saved);
  auto restored = lm_type::cache::load(saved, model.config());

  Kokkos::View<std::int32_t*, Kokkos::LayoutRight, memory> token("token", 1);
  token(0) = 42;
  host2<float> a("a", 1, V), b("b", 1, V), c("c", 1, V);
  model.step(space(), token, a, cache);
  model.step(space(), token, b, forked);
  model.step(space(), token, c, restored);
  space().fence();
  require_close(b, a, {0.0, 0.0}, "forked");
  require_close(c, a, {0.0, 0.0}, "restored");

  std::stringstream garbage("not a cache at all");
  REQUIRE_THROWS_WITH(lm_type::cache::load(garbage, model.config()), Catch::Contains("not a saved ssm cache"));
  std::stringstream truncated(saved.str().substr(0, 100));
  REQUIRE_THROWS_AS(lm_type::cache::load(truncated, model.config()), ssm::error);
}

TEST_CASE("mamba_lm: scoring in chunks equals one pass; greedy decoding equals argmax of full passes", "[lm]") {
  auto const model = load_tiny();
  std::vector<std::int32_t> ids;
  for (int l = 0; l < 29; ++l) ids.push_back((l * 53 + 11) % 101);
  auto const whole = score_tokens(model, std::span<std::int32_t const>(ids), 64);
  REQUIRE(whole.next_token_logprob.size() == ids.size() - 1);
  REQUIRE(whole.argmax.size() == ids.size());
  for (std::size_t chunk : {std::size_t{1}, std::size_t{4}, std::size_t{10}}) {
    auto const pieces = score_tokens(model, std::span<std::int32_t const>(ids), chunk);
    INFO("chunk " << chunk);
    REQUIRE(pieces.argmax == whole.argmax);
    for (std::size_t i = 0; i < whole.next_token_logprob.size(); ++i)
      REQUIRE(pieces.next_token_logprob[i] == Approx(whole.next_token_logprob[i]).margin(1e-4));
  }
  double const ll = loglikelihood(model, std::span<std::int32_t const>(ids.data(), 20),
                                  std::span<std::int32_t const>(ids.data() + 20, 9));
  double expected_ll = 0.0;
  for (std::size_t i = 19; i < 28; ++i) expected_ll += whole.next_token_logprob[i];
  REQUIRE(ll == Approx(expected_ll).margin(1e-4));
  REQUIRE(perplexity(model, std::span<std::int32_t const>(ids)) == Approx(std::exp(-whole.sum_logprob / 28.0)));

  std::vector<std::int32_t> prompt = {3, 14, 15};
  auto const generated = generate_greedy(model, std::span<std::int32_t const>(prompt), 12);
  REQUIRE(generated.size() == 12);
  std::vector<std::int32_t> running = prompt;
  for (std::size_t i = 0; i < generated.size(); ++i) {  // the oracle: argmax of a full pass each time
    auto const s = score_tokens(model, std::span<std::int32_t const>(running), 512);
    REQUIRE(generated[i] == s.argmax.back());
    running.push_back(generated[i]);
  }
}
