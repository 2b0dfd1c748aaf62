// The trained model shipped in models/fortunes-mamba (docs/trained-model.md) against the
// reference outputs its training script computed with PyTorch in fp32: log-probabilities of
// held-out fortunes within 2e-3 nats, the same argmax, the same greedy continuations (up to the
// end of text), and the text round trip through its tokenizer.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <ssm/model/checkpoint.hpp>
#include <ssm/model/generate.hpp>
#include <ssm/model/scoring.hpp>
#include <ssm/text/tokenizer.hpp>

#include "catch.hpp"
#include "support.hpp"

using namespace ssm;
using namespace ssm::test;

namespace {

std::string const model_dir = std::string(SSM_MODELS_DIR) + "/fortunes-mamba";

nlohmann::json expected() {
  std::ifstream in(model_dir + "/expected.json");
  REQUIRE(in.good());
  return nlohmann::json::parse(in);
}

}  // namespace

TEMPLATE_TEST_CASE("trained model: held-out log-probabilities, argmax and greedy text match PyTorch", "[trained]", float, f16) {
  using Wt = TestType;
  auto const e = expected();
  auto const tokenizer = text::tokenizer::from_file(model_dir + "/tokenizer.json");
  mamba_lm<space, float, Wt> const model(load_checkpoint<Wt, memory>(model_dir));
  for (auto const& c : e.at("cases")) {
    auto const ids = c.at("ids").get<std::vector<std::int32_t>>();
    REQUIRE(tokenizer.encode(c.at("text").get<std::string>()) == ids);  // the tokenizer agrees too
    auto const s = score_tokens(model, std::span<std::int32_t const>(ids));
    auto const logprob = c.at("next_token_logprob").get<std::vector<double>>();
    REQUIRE(s.next_token_logprob.size() == logprob.size());
    for (std::size_t i = 0; i < logprob.size(); ++i) REQUIRE(std::abs(s.next_token_logprob[i] - logprob[i]) <= 2e-3);
    REQUIRE(s.argmax == c.at("argmax").get<std::vector<std::int32_t>>());
  }
  for (auto const& g : e.at("greedy")) {
    auto const prompt = g.at("prompt").get<std::vector<std::int32_t>>();
    auto continuation = g.at("continuation").get<std::vector<std::int32_t>>();
    auto const eos = std::find(continuation.begin(), continuation.end(), 0);
    if (eos != continuation.end()) continuation.erase(eos + 1, continuation.end());  // we stop at the end of text
    generation_options options;
    options.max_tokens = continuation.size();
    options.sampling.temperature = 0.0f;
    options.eos = tokenizer.eos_id();
    INFO(g.at("prompt_text").get<std::string>());
    REQUIRE(generate(model, {prompt}, options).front() == continuation);
  }
}
