/// \file
/// \brief The language model on the GPU against HuggingFace transformers (the fixtures of
/// scripts/make_lm_fixtures.py): in fp32, the host's bar — per-position log-probabilities within
/// 2e-3 nats, identical argmax, identical 24-token greedy continuations — and in bf16 activations
/// and weights a bound derived from bf16's rounding, with argmax compared where it is decided.

#include "catch.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <ssm/model/checkpoint.hpp>
#include <ssm/model/mamba_lm.hpp>
#include <ssm/model/generate.hpp>
#include <ssm/model/scoring.hpp>

#include "cuda_support.hpp"
#include "model/transformers_fixtures.hpp"

namespace {

using namespace ssm;
using namespace ssm::test;

template <class T, class Wt>
mamba_lm<gpu::space, T, Wt> load(std::string const& name) {
  return mamba_lm<gpu::space, T, Wt>(load_checkpoint<Wt, gpu::memory>(lm_fixtures + "/" + name));
}

}  // namespace

TEST_CASE("GPU fp32: HF safetensors, tied embeddings, as transformers", "[cuda][lm]") {
  check_against_transformers<gpu::space, float, float>("hf_f32_tied");
}

TEST_CASE("GPU fp32: mamba_ssm pytorch_model.bin (fp16 weights widened), as transformers", "[cuda][lm]") {
  check_against_transformers<gpu::space, float, float>("mamba_ssm_f16");
}

TEST_CASE("GPU fp32: sharded bf16 safetensors (widened), untied head, as transformers", "[cuda][lm]") {
  check_against_transformers<gpu::space, float, float>("hf_bf16_sharded");
}

// bf16 activations and weights. Every stage rounds its output to bf16 (unit roundoff u = 2^-8):
// in_proj, conv, x_proj, dt_proj, scan and out_proj in each of the n_layer blocks, the final norm,
// and the logits themselves. The logits' own rounding moves a log-probability by at most
// u * (|logit_target| + max |logit|), and each upstream rounding moves the logits by about u times
// their spread; with 2 layers that is 15 roundings, which add like a random walk
// (sqrt(15) < 4). The bound is 4 * u * spread for the upstream part plus the final rounding, with a
// factor 2 of headroom. Argmax is compared only where the fp32 run's top-2 gap exceeds twice the
// logit error bound, i.e. where bf16 rounding cannot decide it.
TEST_CASE("GPU bf16: sharded bf16 safetensors within bf16's rounding of transformers", "[cuda][lm][bf16]") {
  std::string const name = "hf_bf16_sharded";
  auto const expected = expected_of(name);
  double const u = 0x1p-8;
  double const spread = expected.at("logits_spread").get<double>();
  auto const model16 = load<bf16, bf16>(name);
  auto const model32 = load<float, bf16>(name);
  std::size_t const V = model32.vocab();
  for (auto const& c : expected.at("cases")) {
    auto const ids = c.at("ids").get<std::vector<std::int32_t>>();
    INFO(name << ": case of " << ids.size() << " tokens");
    auto const s16 = score_tokens(model16, std::span<std::int32_t const>(ids));

    // The fp32 logits of every position, for the gaps and the largest |logit|.
    Kokkos::View<std::int32_t**, Kokkos::LayoutRight, gpu::memory> d_ids("ids", 1, ids.size());
    auto h_ids = Kokkos::create_mirror_view(d_ids);
    for (std::size_t l = 0; l < ids.size(); ++l) h_ids(0, l) = ids[l];
    Kokkos::deep_copy(d_ids, h_ids);
    Kokkos::View<float***, Kokkos::LayoutRight, gpu::memory> d_logits("logits", 1, ids.size(), V);
    model32.forward(gpu::space(), d_ids, d_logits);
    auto const logits = gpu::to_host(d_logits);

    auto const logprob = c.at("next_token_logprob").get<std::vector<double>>();
    auto const argmax = c.at("argmax").get<std::vector<std::int32_t>>();
    double worst = 0.0;
    for (std::size_t l = 0; l < ids.size(); ++l) {
      float const* row = logits.data() + l * V;
      std::vector<float> sorted(row, row + V);
      std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
      double const largest = std::max(std::abs(static_cast<double>(sorted[0])),
                                      std::abs(static_cast<double>(*std::min_element(row, row + V))));
      double const logit_bound = 2.0 * (4.0 * u * spread + u * largest);
      if (l + 1 < ids.size()) {
        double const error = std::abs(s16.next_token_logprob[l] - logprob[l]);
        worst = std::max(worst, error);
        CAPTURE(l, error, logit_bound);
        REQUIRE(error <= 2.0 * logit_bound);  // log-softmax: the target's error and the normaliser's
      }
      if (sorted[0] - sorted[1] > 2.0 * logit_bound) REQUIRE(s16.argmax[l] == argmax[l]);
    }
    WARN(name << " bf16 on the GPU, case of " << ids.size() << " tokens: largest log-probability error " << worst);
  }
}

// Sampled generation on the GPU keeps the rows there (ssm::top_logits) and brings back only the
// candidates the chain needs; with the same seeds it must choose the tokens the host chooses from
// whole rows. The fp32 logits of the two differ by rounding only, far below the gaps the draws
// fall in, so the tokens are equal.
TEST_CASE("GPU sampling: the tokens the host samples, from the same seeds", "[cuda][lm][sampling]") {
  std::string const name = "hf_f32_tied";
  mamba_lm<Kokkos::DefaultHostExecutionSpace, float, float> const host(
      load_checkpoint<float, Kokkos::HostSpace>(lm_fixtures + "/" + name));
  auto const device = load<float, float>(name);
  generation_options options;
  options.max_tokens = 24;
  options.sampling.temperature = 0.9f;
  options.sampling.top_k = 20;
  options.sampling.top_p = 0.95f;
  options.sampling.min_p = 0.02f;
  options.sampling.repeat_penalty = 1.3f;
  options.sampling.repeat_last_n = 8;
  options.sampling.seed = 11;
  std::vector<std::vector<std::int32_t>> const prompts = {{1, 5, 9}, {40}, {3, 3, 3, 3, 3, 3, 3, 3, 3, 3}};
  auto const expected = generate(host, prompts, options);
  REQUIRE(generate(device, prompts, options) == expected);
  options.sampling.repeat_penalty = 1.0f;  // no window
  REQUIRE(generate(device, prompts, options) == generate(host, prompts, options));
}
