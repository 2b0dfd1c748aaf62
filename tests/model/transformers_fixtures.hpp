#pragma once
// The checks against HuggingFace transformers shared by the host and GPU tests: the fixtures of
// scripts/make_lm_fixtures.py, and the acceptance bar of a model that reads them — per-position
// log-probabilities within 2e-3 nats, identical argmax, identical 24-token greedy continuations.
#include <cmath>
#include <cstdint>
#include <fstream>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <ssm/model/checkpoint.hpp>
#include <ssm/model/mamba_lm.hpp>
#include <ssm/model/scoring.hpp>

#include "catch.hpp"

namespace ssm::test {

/// The directory of the language-model fixtures.
inline std::string const lm_fixtures = std::string(SSM_FIXTURE_DIR) + "/lm";

/// What transformers computed for the fixture `name`.
inline nlohmann::json expected_of(std::string const& name) {
  std::ifstream in(lm_fixtures + "/" + name + "/expected.json");
  REQUIRE(in.good());
  return nlohmann::json::parse(in);
}

/// Load the fixture `name` on ExecSpace with activations T and weights Wt, and hold it to the bar.
template <class ExecSpace, class T, class Wt>
void check_against_transformers(std::string const& name) {
  auto const expected = expected_of(name);
  mamba_lm<ExecSpace, T, Wt> const model(load_checkpoint<Wt, typename ExecSpace::memory_space>(lm_fixtures + "/" + name));
  for (auto const& c : expected.at("cases")) {
    auto const ids = c.at("ids").get<std::vector<std::int32_t>>();
    INFO(name << ": case of " << ids.size() << " tokens");
    auto const s = score_tokens(model, std::span<std::int32_t const>(ids));
    auto const logprob = c.at("next_token_logprob").get<std::vector<double>>();
    REQUIRE(s.next_token_logprob.size() == logprob.size());
    for (std::size_t i = 0; i < logprob.size(); ++i) REQUIRE(std::abs(s.next_token_logprob[i] - logprob[i]) <= 2e-3);
    REQUIRE(s.argmax == c.at("argmax").get<std::vector<std::int32_t>>());
  }
  for (auto const& g : expected.at("greedy")) {
    auto const prompt = g.at("prompt").get<std::vector<std::int32_t>>();
    auto const continuation = g.at("continuation").get<std::vector<std::int32_t>>();
    INFO(name << ": greedy from a prompt of " << prompt.size() << " tokens");
    REQUIRE(generate_greedy(model, std::span<std::int32_t const>(prompt), continuation.size()) == continuation);
  }
}

}  // namespace ssm::test
