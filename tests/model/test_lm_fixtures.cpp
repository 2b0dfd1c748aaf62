// End to end against HuggingFace transformers (scripts/make_lm_fixtures.py): three checkpoints in
// the shapes users meet — HF safetensors fp32 with tied embeddings; mamba_ssm config.json +
// pytorch_model.bin in fp16 with non-default d_state, d_conv and dt_rank; sharded bf16
// safetensors with an untied head. ssm must give per-position log-probabilities within 2e-3
// nats, identical argmax, and identical greedy continuations of 24 tokens — through the library
// and through the `ssm` command.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include <ssm/model/checkpoint.hpp>
#include <ssm/model/mamba_lm.hpp>
#include <ssm/model/scoring.hpp>

#include "catch.hpp"
#include "model/transformers_fixtures.hpp"
#include "support.hpp"

using namespace ssm;
using namespace ssm::test;

namespace {

/// The stdout of a command, and its exit status.
std::pair<std::string, int> run(std::string const& command) {
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(popen(command.c_str(), "r"), pclose);
  REQUIRE(pipe != nullptr);
  std::string out;
  char buffer[4096];
  while (std::size_t n = std::fread(buffer, 1, sizeof buffer, pipe.get())) out.append(buffer, n);
  int const status = pclose(pipe.release());
  return {out, status};
}

std::string join(std::vector<std::int32_t> const& ids) {
  std::string s;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(ids[i]);
  }
  return s;
}

}  // namespace

TEST_CASE("transformers fixtures: HF safetensors, fp32, tied embeddings", "[lm][transformers]") {
  check_against_transformers<space, float, float>("hf_f32_tied");
}

TEST_CASE("transformers fixtures: mamba_ssm config and pytorch_model.bin, fp16", "[lm][transformers]") {
  check_against_transformers<space, float, f16>("mamba_ssm_f16");
  check_against_transformers<space, float, float>("mamba_ssm_f16");  // widened on load: the same values
}

TEST_CASE("transformers fixtures: sharded bf16 safetensors, untied head", "[lm][transformers]") {
  check_against_transformers<space, float, bf16>("hf_bf16_sharded");
}

TEST_CASE("the ssm command scores and generates as transformers does", "[lm][cli][transformers]") {
  for (std::string const name : {"hf_f32_tied", "mamba_ssm_f16", "hf_bf16_sharded"}) {
    auto const expected = expected_of(name);
    std::string const model = lm_fixtures + "/" + name;
    auto const& c = expected.at("cases").back();
    auto const ids = c.at("ids").get<std::vector<std::int32_t>>();
    auto const [score_out, score_status] = run(std::string(SSM_CLI) + " score -m " + model + " --ids " + join(ids) + " --act f32 --json");
    INFO(name << ": " << score_out);
    REQUIRE(score_status == 0);
    auto const j = nlohmann::json::parse(score_out);
    auto const logprob = c.at("next_token_logprob").get<std::vector<double>>();
    auto const got = j.at("next_token_logprob").get<std::vector<double>>();
    REQUIRE(got.size() == logprob.size());
    for (std::size_t i = 0; i < got.size(); ++i) REQUIRE(std::abs(got[i] - logprob[i]) <= 2e-3);
    REQUIRE(j.at("argmax") == c.at("argmax"));

    auto const& g = expected.at("greedy").back();
    auto const prompt = g.at("prompt").get<std::vector<std::int32_t>>();
    auto const [gen_out, gen_status] =
        run(std::string(SSM_CLI) + " generate -m " + model + " --ids " + join(prompt) + " -n 24 --temp 0 --act f32 --json 2>/dev/null");
    REQUIRE(gen_status == 0);
    REQUIRE(nlohmann::json::parse(gen_out).at("ids") == g.at("continuation"));
  }
}

TEST_CASE("the ssm command refuses bad input with one clear line and a non-zero exit", "[cli][errors]") {
  auto const [out1, status1] = run(std::string(SSM_CLI) + " score -m " + lm_fixtures + "/does-not-exist --ids 1,2 2>&1");
  REQUIRE(status1 != 0);
  REQUIRE(out1.find("does-not-exist") != std::string::npos);
  auto const [out2, status2] = run(std::string(SSM_CLI) + " score -m " + lm_fixtures + "/hf_f32_tied --ids 1,x 2>&1");
  REQUIRE(status2 != 0);
  REQUIRE(out2.find("'x' is not a token id") != std::string::npos);
  auto const [out3, status3] = run(std::string(SSM_CLI) + " score -m " + lm_fixtures + "/hf_f32_tied --ids 1,100000 2>&1");
  REQUIRE(status3 != 0);
  REQUIRE(out3.find("outside the vocabulary") != std::string::npos);
}

TEST_CASE("ssm convert writes safetensors that score exactly as the pytorch_model.bin they came from", "[lm][cli]") {
  namespace fs = std::filesystem;
  std::string const source = lm_fixtures + "/mamba_ssm_f16";
  fs::path const out = fs::temp_directory_path() / ("ssm-convert-" + std::to_string(::getpid()));
  auto const [convert_out, convert_status] = run(std::string(SSM_CLI) + " convert -m " + source + " -o " + out.string() + " 2>&1");
  INFO(convert_out);
  REQUIRE(convert_status == 0);
  REQUIRE(fs::exists(out / "model.safetensors"));
  REQUIRE(fs::exists(out / "config.json"));
  mamba_lm<space, float, f16> const original(load_checkpoint<f16, memory>(source));
  mamba_lm<space, float, f16> const converted(load_checkpoint<f16, memory>(out));
  std::vector<std::int32_t> ids = {1, 50, 99, 7, 23, 64, 3, 88};
  auto const a = score_tokens(original, std::span<std::int32_t const>(ids));
  auto const b = score_tokens(converted, std::span<std::int32_t const>(ids));
  REQUIRE(a.next_token_logprob == b.next_token_logprob);  // the same bits in, the same bits out
  REQUIRE(a.argmax == b.argmax);
  fs::remove_all(out);
}

TEST_CASE("ssm bench runs each test -r times and reports every run", "[cli]") {
  auto const [out, status] = run(std::string(SSM_CLI) + " bench --preset tiny -p 8 -n 4 -b 1,2 -r 3 -o json 2>&1");
  INFO(out);
  REQUIRE(status == 0);
  auto const j = nlohmann::json::parse(out);
  REQUIRE(j.at("repetitions") == 3);
  REQUIRE(j.at("results").size() == 4);  // pp8 and tg4 at each batch
  for (auto const& row : j.at("results")) {
    std::vector<double> const runs = row.at("tokens_per_second_runs");
    REQUIRE(runs.size() == 3);
    double const median = row.at("tokens_per_second"), lo = row.at("tokens_per_second_min"),
                 hi = row.at("tokens_per_second_max");
    REQUIRE(lo == *std::min_element(runs.begin(), runs.end()));
    REQUIRE(hi == *std::max_element(runs.begin(), runs.end()));
    REQUIRE(std::count(runs.begin(), runs.end(), median) >= 1);
    REQUIRE((lo <= median && median <= hi));
    if (row.at("test") == "tg4" && j.at("backend") != "Cuda") REQUIRE(row.at("triad_GBps_runs").size() == 3);
    // as the Markdown table: a decode step is one token of each sequence, a prefill one step
    double const ms = row.at("ms"), per_step = row.at("ms_per_step");
    REQUIRE(per_step == Approx(row.at("test") == "tg4" ? ms / 4 : ms));
    REQUIRE(row.at("fraction_of_limit").get<double>() > 0.0);
  }
  auto const [refused, refused_status] = run(std::string(SSM_CLI) + " bench --preset tiny -r 0 2>&1");
  REQUIRE(refused_status != 0);
  REQUIRE(refused.find("-r must be at least 1") != std::string::npos);
}
