/// \file
/// \brief Tests of `ssm::load_model_config` / `ssm::parse_model_config`: a real mamba_ssm config
/// (state-spaces/mamba-2.8b-slimpj) with hand-derived sizes, the defaults of both conventions, the
/// transformers fixture, and configs crafted to be wrong in one way each.

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <ssm/model/config_json.hpp>

#include "catch.hpp"
#include "support.hpp"


namespace {

using ssm::test::temp_dir;

namespace fs = std::filesystem;

fs::path write(fs::path const& dir, std::string const& name, std::string const& contents) {
  fs::path const p = dir / name;
  std::ofstream f(p, std::ios::binary);
  f.write(contents.data(), static_cast<std::streamsize>(contents.size()));
  return p;
}

/// The message of the ssm::config_error that `f` throws, or "" if it throws none.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (ssm::config_error const& e) {
    return e.what();
  }
  return "";
}

bool contains(std::string const& text, std::string const& part) { return text.find(part) != std::string::npos; }

ssm::model_config parse(std::string const& text) { return ssm::parse_model_config(nlohmann::json::parse(text), "test"); }

}  // namespace

TEST_CASE("config: mamba-2.8b-slimpj (mamba_ssm) gives the hand-derived sizes", "[model][config]") {
  temp_dir const dir;
  // The config.json of state-spaces/mamba-2.8b-slimpj, verbatim.
  fs::path const p = write(dir.path, "config.json",
                           R"({"d_model": 2560, "n_layer": 64, "vocab_size": 50277, "ssm_cfg": {}, "rms_norm": true, )"
                           R"("residual_in_fp32": true, "fused_add_norm": true, "pad_vocab_size_multiple": 8})");
  ssm::model_config const c = ssm::load_model_config(p);
  CHECK(c.convention == "mamba_ssm");
  CHECK(c.d_model == 2560);
  CHECK(c.n_layer == 64);
  CHECK(c.vocab_size == 50277);
  CHECK(c.padded_vocab_size == 50280);  // 50277 = 8 * 6284 + 5: padded by 3 to 8 * 6285
  CHECK(c.d_inner == 5120);             // expand 2 * 2560
  CHECK(c.dt_rank == 160);              // ceil(2560 / 16)
  CHECK(c.d_state == 16);
  CHECK(c.d_conv == 4);
  CHECK(c.expand == 2);
  CHECK(c.conv_bias);
  CHECK_FALSE(c.bias);
  CHECK(c.residual_in_fp32);
  CHECK(c.tie_embeddings);
  CHECK(c.norm_eps == 1e-5f);
  ssm::mamba_config const m = c.mixer();
  CHECK(m.d_inner == 5120);
  CHECK(m.dt_rank == 160);
}

TEST_CASE("config: mamba_ssm defaults, padding and ssm_cfg", "[model][config]") {
  // Only d_model: every other field takes MambaConfig's / Mamba's default.
  ssm::model_config c = parse(R"({"d_model": 768})");
  CHECK(c.n_layer == 64);
  CHECK(c.vocab_size == 50277);
  CHECK(c.padded_vocab_size == 50280);
  CHECK(c.d_inner == 1536);
  CHECK(c.dt_rank == 48);
  CHECK(c.tie_embeddings);

  CHECK(parse(R"({"d_model": 8, "vocab_size": 50280})").padded_vocab_size == 50280);  // already a multiple
  CHECK(parse(R"({"d_model": 8, "vocab_size": 50277, "pad_vocab_size_multiple": 1})").padded_vocab_size == 50277);
  CHECK(parse(R"({"d_model": 8, "vocab_size": 50277, "pad_vocab_size_multiple": 16})").padded_vocab_size == 50288);
  CHECK(parse(R"({"d_model": 8, "vocab_size": 1})").padded_vocab_size == 8);
  CHECK(parse(R"({"d_model": 17})").dt_rank == 2);  // ceil(17 / 16)
  CHECK(parse(R"({"d_model": 16})").dt_rank == 1);

  c = parse(R"({"d_model": 64, "n_layer": 3, "vocab_size": 100, "tie_embeddings": false, "ssm_cfg": )"
            R"({"layer": "Mamba1", "d_state": 8, "d_conv": 2, "expand": 3, "dt_rank": 7, "conv_bias": false, )"
            R"("bias": true, "dt_min": 0.001, "dt_max": 0.1, "dt_init": "random", "dt_scale": 1.0, )"
            R"("dt_init_floor": 1e-4, "use_fast_path": true}, "d_intermediate": 0, "attn_layer_idx": [], )"
            R"("attn_cfg": {}, "_name_or_path": "ignored", "architectures": ["ignored"]})");
  CHECK(c.d_state == 8);
  CHECK(c.d_conv == 2);
  CHECK(c.expand == 3);
  CHECK(c.d_inner == 192);
  CHECK(c.dt_rank == 7);
  CHECK_FALSE(c.conv_bias);
  CHECK(c.bias);
  CHECK_FALSE(c.tie_embeddings);
  CHECK(c.padded_vocab_size == 104);
  CHECK(parse(R"({"d_model": 64, "ssm_cfg": {"dt_rank": "auto"}})").dt_rank == 4);
  CHECK(parse(R"({"d_model": 64, "ssm_cfg": null, "attn_layer_idx": null})").d_state == 16);  // None in Python
}

TEST_CASE("config: the transformers fixture and transformers' defaults", "[model][config]") {
  ssm::model_config c = ssm::load_model_config(std::string(SSM_FIXTURE_DIR) + "/mamba_tiny/config.json");
  CHECK(c.convention == "transformers");
  CHECK(c.d_model == 38);
  CHECK(c.n_layer == 3);
  CHECK(c.vocab_size == 101);
  CHECK(c.padded_vocab_size == 101);  // transformers does not pad
  CHECK(c.d_state == 12);
  CHECK(c.d_conv == 4);
  CHECK(c.expand == 2);
  CHECK(c.d_inner == 76);
  CHECK(c.dt_rank == 5);
  CHECK(c.conv_bias);
  CHECK_FALSE(c.bias);
  CHECK(c.tie_embeddings);
  CHECK(c.norm_eps == 1e-5f);

  c = parse(R"({"model_type": "mamba"})");  // every field a default of transformers.MambaConfig
  CHECK(c.convention == "transformers");
  CHECK(c.vocab_size == 50280);
  CHECK(c.padded_vocab_size == 50280);
  CHECK(c.d_model == 768);
  CHECK(c.d_state == 16);
  CHECK(c.n_layer == 32);
  CHECK(c.d_inner == 1536);
  CHECK(c.dt_rank == 48);
  CHECK(c.d_conv == 4);
  CHECK(c.conv_bias);
  CHECK_FALSE(c.bias);
  CHECK(c.tie_embeddings);

  c = parse(R"({"hidden_size": 100, "vocab_size": 50277, "time_step_rank": "auto", "layer_norm_epsilon": 1e-6, )"
            R"("use_bias": true, "use_conv_bias": false, "tie_word_embeddings": false, "expand": 3})");
  CHECK(c.convention == "transformers");
  CHECK(c.dt_rank == 7);
  CHECK(c.d_inner == 300);
  CHECK(c.padded_vocab_size == 50277);
  CHECK(c.norm_eps == 1e-6f);
  CHECK(c.bias);
  CHECK_FALSE(c.conv_bias);
  CHECK_FALSE(c.tie_embeddings);
  CHECK(parse(R"({"hidden_size": 100, "intermediate_size": 250})").d_inner == 250);  // as given
}

TEST_CASE("config: wrong configs throw a config_error naming the file and the field", "[model][config]") {
  temp_dir const dir;
  std::string deep = R"({"d_model": 8, "x": )";
  for (int i = 0; i < 1000; ++i) deep += "[";

  struct bad_case {
    std::string file;                  // file name
    std::string contents;              // its text
    std::vector<std::string> problem;  // fragments of the expected message (the field first)
  };
  std::vector<bad_case> const cases = {
      {"not_json.json", "this is not json", {"not valid JSON"}},
      {"empty.json", "", {"not valid JSON"}},
      {"truncated.json", R"({"d_model": 25)", {"not valid JSON"}},
      {"array.json", "[1, 2]", {"top level", "JSON object", "an array"}},
      {"number.json", "42", {"top level", "JSON object"}},
      {"neither.json", "{}", {"d_model", "hidden_size", "cannot tell"}},
      {"both.json", R"({"d_model": 8, "hidden_size": 8})", {"d_model", "hidden_size", "cannot tell"}},
      {"duplicate.json", R"({"d_model": 8, "d_model": 16})", {"d_model", "twice"}},
      {"deep.json", deep, {"nests deeper"}},
      {"d_model_string.json", R"({"d_model": "2560"})", {"d_model", "integer", "\"2560\""}},
      {"d_model_float.json", R"({"d_model": 2560.0})", {"d_model", "integer", "2560.0"}},
      {"d_model_fraction.json", R"({"d_model": 25.5})", {"d_model", "integer"}},
      {"d_model_negative.json", R"({"d_model": -1})", {"d_model", "-1", "positive"}},
      {"d_model_zero.json", R"({"d_model": 0})", {"d_model", "positive"}},
      {"d_model_absurd.json", R"({"d_model": 1000000})", {"d_model", "[1, 65536]"}},
      {"d_model_huge.json", R"({"d_model": 18446744073709551615})", {"d_model", "18446744073709551615"}},
      {"d_model_bool.json", R"({"d_model": true})", {"d_model", "true"}},
      {"d_model_null.json", R"({"d_model": null})", {"d_model", "null"}},
      {"n_layer_zero.json", R"({"d_model": 8, "n_layer": 0})", {"n_layer", "positive"}},
      {"n_layer_absurd.json", R"({"d_model": 8, "n_layer": 5000})", {"n_layer", "[1, 1024]"}},
      {"vocab_absurd.json", R"({"d_model": 8, "vocab_size": 20000000})", {"vocab_size", "20000000"}},
      {"vocab_negative.json", R"({"d_model": 8, "vocab_size": -50277})", {"vocab_size", "positive"}},
      {"pad_zero.json", R"({"d_model": 8, "pad_vocab_size_multiple": 0})", {"pad_vocab_size_multiple"}},
      {"ssm_cfg_array.json", R"({"d_model": 8, "ssm_cfg": []})", {"ssm_cfg", "object"}},
      {"ssm_cfg_unknown.json", R"({"d_model": 8, "ssm_cfg": {"headdim": 64}})", {"ssm_cfg.headdim"}},
      {"d_state_absurd.json", R"({"d_model": 8, "ssm_cfg": {"d_state": 300}})", {"ssm_cfg.d_state", "300"}},
      {"d_state_zero.json", R"({"d_model": 8, "ssm_cfg": {"d_state": 0}})", {"ssm_cfg.d_state", "positive"}},
      {"d_conv_absurd.json", R"({"d_model": 8, "ssm_cfg": {"d_conv": 9}})", {"ssm_cfg.d_conv", "[1, 8]"}},
      {"expand_absurd.json", R"({"d_model": 8, "ssm_cfg": {"expand": 17}})", {"ssm_cfg.expand", "[1, 16]"}},
      {"expand_float.json", R"({"d_model": 8, "ssm_cfg": {"expand": 1.5}})", {"ssm_cfg.expand", "integer"}},
      {"dt_rank_foo.json", R"({"d_model": 8, "ssm_cfg": {"dt_rank": "foo"}})", {"ssm_cfg.dt_rank", "auto", "foo"}},
      {"dt_rank_float.json", R"({"d_model": 8, "ssm_cfg": {"dt_rank": 4.0}})", {"ssm_cfg.dt_rank", "auto"}},
      {"dt_rank_zero.json", R"({"d_model": 8, "ssm_cfg": {"dt_rank": 0}})", {"ssm_cfg.dt_rank", "positive"}},
      {"dt_rank_absurd.json", R"({"d_model": 8, "ssm_cfg": {"dt_rank": 33}})", {"ssm_cfg.dt_rank", "[1, 32]"}},
      {"dt_init_number.json", R"({"d_model": 8, "ssm_cfg": {"dt_init": 1}})", {"ssm_cfg.dt_init", "string"}},
      {"mamba2.json", R"({"d_model": 8, "ssm_cfg": {"layer": "Mamba2", "headdim": 64}})",
       {"ssm_cfg.layer", "Mamba-2", "not supported"}},
      {"layer_unknown.json", R"({"d_model": 8, "ssm_cfg": {"layer": "Mamba3"}})", {"ssm_cfg.layer", "Mamba3"}},
      {"layernorm.json", R"({"d_model": 8, "rms_norm": false})", {"rms_norm", "LayerNorm", "not supported"}},
      {"rms_norm_string.json", R"({"d_model": 8, "rms_norm": "yes"})", {"rms_norm", "true or false"}},
      {"tie_string.json", R"({"d_model": 8, "tie_embeddings": "true"})", {"tie_embeddings", "true or false"}},
      {"hybrid_mlp.json", R"({"d_model": 8, "d_intermediate": 1024})", {"d_intermediate", "not supported"}},
      {"hybrid_mlp_negative.json", R"({"d_model": 8, "d_intermediate": -1})", {"d_intermediate"}},
      {"hybrid_attn.json", R"({"d_model": 8, "attn_layer_idx": [1]})", {"attn_layer_idx", "not supported"}},
      {"attn_not_array.json", R"({"d_model": 8, "attn_layer_idx": 3})", {"attn_layer_idx", "array"}},
      {"attn_cfg_string.json", R"({"d_model": 8, "attn_cfg": "x"})", {"attn_cfg", "object"}},
      {"hf_hidden_negative.json", R"({"model_type": "mamba", "hidden_size": -5})", {"hidden_size", "positive"}},
      {"hf_state_absurd.json", R"({"hidden_size": 8, "state_size": 1000})", {"state_size", "[1, 256]"}},
      {"hf_conv_zero.json", R"({"hidden_size": 8, "conv_kernel": 0})", {"conv_kernel", "positive"}},
      {"hf_layers_float.json", R"({"hidden_size": 8, "num_hidden_layers": 3.5})", {"num_hidden_layers", "3.5"}},
      {"hf_rank_foo.json", R"({"hidden_size": 8, "time_step_rank": "foo"})", {"time_step_rank", "auto"}},
      {"hf_rank_absurd.json", R"({"hidden_size": 8, "time_step_rank": 100})", {"time_step_rank", "[1, 32]"}},
      {"hf_eps_negative.json", R"({"hidden_size": 8, "layer_norm_epsilon": -1e-5})", {"layer_norm_epsilon"}},
      {"hf_eps_string.json", R"({"hidden_size": 8, "layer_norm_epsilon": "1e-5"})", {"layer_norm_epsilon", "number"}},
      {"hf_intermediate_absurd.json", R"({"hidden_size": 8, "intermediate_size": 2000000})", {"intermediate_size"}},
      {"hf_expand_zero.json", R"({"hidden_size": 8, "expand": 0})", {"expand", "positive"}},
      {"hf_act.json", R"({"hidden_size": 8, "hidden_act": "gelu"})", {"hidden_act", "gelu", "silu"}},
      {"hf_bias_int.json", R"({"hidden_size": 8, "use_bias": 1})", {"use_bias", "true or false"}},
      {"hf_tie_null.json", R"({"hidden_size": 8, "tie_word_embeddings": null})", {"tie_word_embeddings", "null"}},
      {"hf_mamba2.json", R"({"model_type": "mamba2", "hidden_size": 8})", {"model_type", "Mamba-2", "not supported"}},
      {"hf_falcon.json", R"({"model_type": "falcon_mamba", "hidden_size": 8})", {"model_type", "falcon_mamba"}},
      {"hf_model_type_int.json", R"({"model_type": 3, "hidden_size": 8})", {"model_type", "string"}},
  };
  REQUIRE(cases.size() >= 20);
  for (auto const& c : cases) {
    fs::path const p = write(dir.path, c.file, c.contents);
    CAPTURE(c.file);
    std::string const what = error_of([&] { (void)ssm::load_model_config(p); });
    CAPTURE(what);
    REQUIRE_FALSE(what.empty());  // it threw config_error
    CHECK(what.rfind("config '", 0) == 0);
    CHECK(contains(what, c.file));
    for (auto const& part : c.problem) CHECK(contains(what, part));
  }

  // A missing file, a directory; parse_model_config names its source.
  std::string const missing = error_of([&] { (void)ssm::load_model_config(dir.path / "missing.json"); });
  CHECK(contains(missing, "missing.json"));
  CHECK(contains(missing, "does not exist"));
  CHECK(contains(error_of([&] { (void)ssm::load_model_config(dir.path); }), "not a regular file"));
  std::string const parsed = error_of([] { (void)ssm::parse_model_config(nlohmann::json::array(), "my source"); });
  CHECK(parsed == "config 'my source': the top level must be a JSON object, got an array");
  // Every error is an ssm::error.
  CHECK_THROWS_AS(ssm::load_model_config(dir.path / "missing.json"), ssm::error);
}
