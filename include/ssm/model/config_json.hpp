#pragma once
/// \file
/// \brief Read a Mamba language model's `config.json`, in mamba_ssm's or in transformers' convention.
///
/// Two conventions describe the same Mamba-1 language model:
///
/// - **mamba_ssm** (`mamba_ssm/models/config_mamba.py`, `MambaConfig`, and the constructor of
///   `mamba_ssm.modules.mamba_simple.Mamba` for `ssm_cfg`): `d_model` = 2560, `n_layer` = 64,
///   `vocab_size` = 50277, `ssm_cfg` = {} (`d_state` = 16, `d_conv` = 4, `expand` = 2,
///   `dt_rank` = "auto", `conv_bias` = true, `bias` = false), `rms_norm` = true,
///   `residual_in_fp32` = true, `fused_add_norm` = true, `pad_vocab_size_multiple` = 8,
///   `tie_embeddings` = true, `d_intermediate` = 0, `attn_layer_idx` = []; the norm epsilon is
///   1e-5 (`MixerModel`'s default, not part of the config). The vocabulary is padded up to a
///   multiple of `pad_vocab_size_multiple` as `MambaLMHeadModel` does.
/// - **transformers** (`transformers.MambaConfig`, `model_type` "mamba"): `vocab_size` = 50280,
///   `hidden_size` = 768, `state_size` = 16, `num_hidden_layers` = 32, `layer_norm_epsilon` = 1e-5,
///   `expand` = 2, `conv_kernel` = 4, `use_bias` = false, `use_conv_bias` = true,
///   `residual_in_fp32` = true, `time_step_rank` = "auto", `tie_word_embeddings` = true,
///   `hidden_act` = "silu", `intermediate_size` = expand * hidden_size; no vocabulary padding.
///
/// A config with `model_type` "mamba" or a `hidden_size` is read as transformers', one with a
/// `d_model` as mamba_ssm's. Every field may be missing (both originals have a default for each),
/// but a field that is present must have the right JSON type (an integer is a JSON number without
/// fraction or exponent; a boolean is `true` or `false`) and a sane value (see `ssm::config_limits`).
/// `"auto"` ranks are \f$\lceil E / 16 \rceil\f$. Keys neither convention reads are ignored, except
/// inside mamba_ssm's `ssm_cfg`, whose keys go to the layer's constructor: an unknown one there is
/// refused, as Python would. Models `ssm` cannot run yet are refused by name: Mamba-2 layers
/// (`ssm_cfg.layer` "Mamba2", `model_type` "mamba2"), LayerNorm (`rms_norm` false), hybrid models
/// (`d_intermediate` != 0, a non-empty `attn_layer_idx`), activations other than SiLU.
///
/// Every error is an `ssm::config_error` whose message reads `config 'SOURCE': PROBLEM`, PROBLEM
/// naming the field, e.g. `config 'm/config.json': ssm_cfg.d_state must be an integer in [1, 256], got 300`.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <ssm/core/error.hpp>
#include <ssm/model/config.hpp>

namespace ssm {

/// \brief The error thrown for a missing, unreadable, malformed or unsupported `config.json`.
///
/// `what()` reads: config 'SOURCE': PROBLEM, with SOURCE the file (or the name the caller gave the
/// JSON) and PROBLEM naming the field concerned.
class config_error : public error {
 public:
  /// \brief Build the message from the config's name and a description of the problem.
  /// \param source the file concerned, or any name of the JSON's origin.
  /// \param problem what is wrong with it, naming the field.
  config_error(std::string const& source, std::string const& problem)
      : error("config '" + source + "': " + problem) {}
};

/// \brief The largest sizes a config may give; larger ones are refused as absurd.
///
/// With these bounds every size `ssm` derives from a config (D = expand * E, R + 2N, the vocabulary
/// padded up, the elements of any one tensor, the parameters of the whole model) fits in 64 bits,
/// and D, R + 2N and the padded vocabulary fit in an `int`.
struct config_limits {
  static constexpr int max_d_model = 65536;          ///< E
  static constexpr int max_n_layer = 1024;           ///< blocks
  static constexpr int max_vocab_size = 10'000'000;  ///< V (before padding)
  static constexpr int max_d_state = 256;            ///< N (`ssm::max_state_size`)
  static constexpr int max_d_conv = 8;               ///< W (`ssm::max_conv_width`)
  static constexpr int max_expand = 16;              ///< D / E
  static constexpr int max_d_inner = max_expand * max_d_model;  ///< D (transformers' `intermediate_size`)
  static constexpr int max_dt_rank_per_d_model = 4;  ///< R <= 4 E
  static constexpr int max_pad_vocab_size_multiple = 65536;  ///< mamba_ssm's `pad_vocab_size_multiple`
  static constexpr std::uintmax_t max_file_bytes = 16u << 20;  ///< a `config.json` larger than 16 MiB is refused
  static constexpr int max_json_depth = 64;          ///< deeper JSON nesting is refused
};

namespace detail {

/// \brief Reads typed, range-checked fields of a config's JSON; every failure is a `config_error`.
class config_reader {
 public:
  using json = nlohmann::json;

  explicit config_reader(std::string source) : source_(std::move(source)) {}

  [[noreturn]] void fail(std::string const& problem) const { throw config_error(source_, problem); }

  /// A short description of a JSON value for messages: `a string "x"`, `16.5`, `null`, `an array`...
  static std::string describe(json const& v) {
    switch (v.type()) {
      case json::value_t::null: return "null";
      case json::value_t::boolean: return v.get<bool>() ? "true" : "false";
      case json::value_t::string: {
        std::string s = v.get<std::string>();
        if (s.size() > 40) s = s.substr(0, 40) + "...";
        return "the string " + json(s).dump(-1, ' ', true, json::error_handler_t::replace);
      }
      case json::value_t::array: return "an array";
      case json::value_t::object: return "an object";
      case json::value_t::binary: return "binary data";
      default: return v.dump();  // numbers
    }
  }

  /// An integer field in [lo, hi]; `fallback` when absent.
  int integer(json const& obj, std::string const& prefix, char const* key, int fallback, std::int64_t lo,
              std::int64_t hi) const {
    auto const it = obj.find(key);
    if (it == obj.end()) return fallback;
    return integer_value(*it, prefix + key, lo, hi);
  }

  int integer_value(json const& v, std::string const& field, std::int64_t lo, std::int64_t hi) const {
    std::string range = "[";  // (built in steps: GCC 12 warns falsely about "literal" + std::string&&)
    range += std::to_string(lo) + ", " + std::to_string(hi) + "]";
    if (!v.is_number_integer()) fail(field + " must be an integer in " + range + ", got " + describe(v));
    bool const too_big = v.is_number_unsigned() && v.get<std::uint64_t>() > static_cast<std::uint64_t>(hi);
    std::int64_t const x = too_big ? hi : v.get<std::int64_t>();
    if (too_big || x < lo || x > hi) {
      std::string problem = field + " must be an integer in " + range + ", got " + describe(v);
      if (x <= 0 && lo >= 1) problem += " (sizes must be positive)";
      fail(problem);
    }
    return static_cast<int>(x);
  }

  /// A boolean field; `fallback` when absent.
  bool boolean(json const& obj, std::string const& prefix, char const* key, bool fallback) const {
    auto const it = obj.find(key);
    if (it == obj.end()) return fallback;
    if (!it->is_boolean()) fail(prefix + key + " must be true or false, got " + describe(*it));
    return it->get<bool>();
  }

  /// A finite number (integer or not) in [lo, hi]; `fallback` when absent.
  double number(json const& obj, std::string const& prefix, char const* key, double fallback, double lo,
                double hi) const {
    auto const it = obj.find(key);
    if (it == obj.end()) return fallback;
    std::string const field = prefix + key;
    if (!it->is_number()) fail(field + " must be a number, got " + describe(*it));
    double const x = it->get<double>();
    if (!std::isfinite(x) || x < lo || x > hi) {
      fail(field + " must be a number in [" + json(lo).dump() + ", " + json(hi).dump() + "], got " + describe(*it));
    }
    return x;
  }

  /// A string field; `fallback` when absent.
  std::string string(json const& obj, std::string const& prefix, char const* key, std::string const& fallback) const {
    auto const it = obj.find(key);
    if (it == obj.end()) return fallback;
    if (!it->is_string()) fail(prefix + key + " must be a string, got " + describe(*it));
    return it->get<std::string>();
  }

  /// A rank: "auto" (ceil(E / 16)) or an integer in [1, 4 E]; "auto" when absent.
  int rank(json const& obj, std::string const& prefix, char const* key, int d_model) const {
    int const automatic = (d_model + 15) / 16;
    auto const it = obj.find(key);
    if (it == obj.end()) return automatic;
    std::string const field = prefix + key;
    int const hi = config_limits::max_dt_rank_per_d_model * d_model;
    if (it->is_string()) {
      if (it->get<std::string>() == "auto") return automatic;
      fail(field + " must be \"auto\" or an integer in [1, " + std::to_string(hi) + "], got " + describe(*it));
    }
    if (!it->is_number_integer()) {
      fail(field + " must be \"auto\" or an integer in [1, " + std::to_string(hi) + "], got " + describe(*it));
    }
    return integer_value(*it, field, 1, hi);
  }

  /// A field that must be an object (or null, read as {}) when present.
  json object_or_null(json const& obj, char const* key) const {
    auto const it = obj.find(key);
    if (it == obj.end() || it->is_null()) return json::object();
    if (!it->is_object()) fail(std::string(key) + " must be an object, got " + describe(*it));
    return *it;
  }

 private:
  std::string source_;
};

/// mamba_ssm's convention (MambaConfig + Mamba's constructor defaults).
inline model_config parse_mamba_ssm_config(nlohmann::json const& j, config_reader const& r) {
  using L = config_limits;
  model_config c;
  c.convention = "mamba_ssm";
  c.d_model = r.integer(j, "", "d_model", 2560, 1, L::max_d_model);
  c.n_layer = r.integer(j, "", "n_layer", 64, 1, L::max_n_layer);
  c.vocab_size = r.integer(j, "", "vocab_size", 50277, 1, L::max_vocab_size);

  int const d_intermediate = r.integer(j, "", "d_intermediate", 0, 0, std::numeric_limits<int>::max());
  if (d_intermediate != 0) {
    r.fail("d_intermediate is " + std::to_string(d_intermediate) +
           ": blocks with an MLP (hybrid models, d_intermediate != 0) are not supported");
  }
  if (auto const it = j.find("attn_layer_idx"); it != j.end() && !it->is_null()) {
    if (!it->is_array()) r.fail("attn_layer_idx must be an array, got " + config_reader::describe(*it));
    if (!it->empty()) {
      r.fail("attn_layer_idx is " + it->dump() + ": attention layers (hybrid models) are not supported");
    }
  }
  (void)r.object_or_null(j, "attn_cfg");  // unused without attention layers, but must be an object

  if (!r.boolean(j, "", "rms_norm", true)) {
    r.fail("rms_norm is false: LayerNorm models are not supported (only RMSNorm)");
  }
  c.residual_in_fp32 = r.boolean(j, "", "residual_in_fp32", true);
  (void)r.boolean(j, "", "fused_add_norm", true);  // the same arithmetic either way
  int const multiple = r.integer(j, "", "pad_vocab_size_multiple", 8, 1, L::max_pad_vocab_size_multiple);
  c.tie_embeddings = r.boolean(j, "", "tie_embeddings", true);

  nlohmann::json const ssm = r.object_or_null(j, "ssm_cfg");
  std::string const layer = r.string(ssm, "ssm_cfg.", "layer", "Mamba1");
  if (layer == "Mamba2") r.fail("ssm_cfg.layer is \"Mamba2\": Mamba-2 layers are not supported yet");
  if (layer != "Mamba1") {
    r.fail("ssm_cfg.layer must be \"Mamba1\" or \"Mamba2\", got " + config_reader::describe(ssm.at("layer")));
  }
  static std::set<std::string> const known = {"layer",  "d_state",  "d_conv",  "expand",        "dt_rank",
                                              "dt_min", "dt_max",   "dt_init", "dt_scale",      "dt_init_floor",
                                              "conv_bias", "bias", "use_fast_path"};
  for (auto const& item : ssm.items()) {
    if (known.count(item.key()) == 0) {
      r.fail("ssm_cfg." + item.key() + " is not an option of mamba_ssm's Mamba-1 layer (Mamba() would refuse it)");
    }
  }
  c.d_state = r.integer(ssm, "ssm_cfg.", "d_state", 16, 1, L::max_d_state);
  c.d_conv = r.integer(ssm, "ssm_cfg.", "d_conv", 4, 1, L::max_d_conv);
  c.expand = r.integer(ssm, "ssm_cfg.", "expand", 2, 1, L::max_expand);
  c.dt_rank = r.rank(ssm, "ssm_cfg.", "dt_rank", c.d_model);
  c.conv_bias = r.boolean(ssm, "ssm_cfg.", "conv_bias", true);
  c.bias = r.boolean(ssm, "ssm_cfg.", "bias", false);
  // Options of the initialization only: checked for their type, otherwise unused.
  (void)r.number(ssm, "ssm_cfg.", "dt_min", 0.001, 0.0, 1e30);
  (void)r.number(ssm, "ssm_cfg.", "dt_max", 0.1, 0.0, 1e30);
  (void)r.number(ssm, "ssm_cfg.", "dt_scale", 1.0, 0.0, 1e30);
  (void)r.number(ssm, "ssm_cfg.", "dt_init_floor", 1e-4, 0.0, 1e30);
  (void)r.string(ssm, "ssm_cfg.", "dt_init", "random");
  (void)r.boolean(ssm, "ssm_cfg.", "use_fast_path", true);

  c.d_inner = c.expand * c.d_model;
  c.norm_eps = 1e-5f;
  c.padded_vocab_size = c.vocab_size;
  if (c.padded_vocab_size % multiple != 0) c.padded_vocab_size += multiple - c.padded_vocab_size % multiple;
  return c;
}

/// transformers' convention (transformers.MambaConfig defaults).
inline model_config parse_transformers_config(nlohmann::json const& j, config_reader const& r) {
  using L = config_limits;
  model_config c;
  c.convention = "transformers";
  c.vocab_size = r.integer(j, "", "vocab_size", 50280, 1, L::max_vocab_size);
  c.d_model = r.integer(j, "", "hidden_size", 768, 1, L::max_d_model);
  c.d_state = r.integer(j, "", "state_size", 16, 1, L::max_d_state);
  c.n_layer = r.integer(j, "", "num_hidden_layers", 32, 1, L::max_n_layer);
  c.norm_eps = static_cast<float>(r.number(j, "", "layer_norm_epsilon", 1e-5, 0.0, 1.0));
  c.expand = r.integer(j, "", "expand", 2, 1, L::max_expand);
  c.d_conv = r.integer(j, "", "conv_kernel", 4, 1, L::max_d_conv);
  c.bias = r.boolean(j, "", "use_bias", false);
  c.conv_bias = r.boolean(j, "", "use_conv_bias", true);
  c.residual_in_fp32 = r.boolean(j, "", "residual_in_fp32", true);
  c.dt_rank = r.rank(j, "", "time_step_rank", c.d_model);
  c.tie_embeddings = r.boolean(j, "", "tie_word_embeddings", true);
  c.d_inner = r.integer(j, "", "intermediate_size", c.expand * c.d_model, 1, L::max_d_inner);
  std::string const act = r.string(j, "", "hidden_act", "silu");
  if (act != "silu" && act != "swish") {
    r.fail("hidden_act is \"" + act + "\": only \"silu\" is supported");
  }
  c.padded_vocab_size = c.vocab_size;
  return c;
}

/// Parse a JSON text, refusing nesting deeper than `max_depth` and keys given twice in one object
/// (which parsers otherwise resolve silently). `fail(problem)` must throw; it is also called for
/// text that is not valid JSON.
template <class Fail>
nlohmann::json parse_json_strictly(std::string const& text, int max_depth, Fail const& fail) {
  std::vector<std::set<std::string>> keys_by_depth(static_cast<std::size_t>(max_depth) + 2);
  nlohmann::json::parser_callback_t const guard = [&fail, &keys_by_depth, max_depth](
                                                      int depth, nlohmann::json::parse_event_t event,
                                                      nlohmann::json& parsed) {
    if (depth > max_depth) fail("JSON nests deeper than " + std::to_string(max_depth) + " levels");
    if (event == nlohmann::json::parse_event_t::object_start) {
      keys_by_depth[static_cast<std::size_t>(depth) + 1].clear();
    } else if (event == nlohmann::json::parse_event_t::key) {
      if (!keys_by_depth[static_cast<std::size_t>(depth)].insert(parsed.get<std::string>()).second) {
        fail("the key '" + parsed.get<std::string>() + "' appears twice in one object");
      }
    }
    return true;
  };
  nlohmann::json out;
  try {
    out = nlohmann::json::parse(text, guard);
  } catch (nlohmann::json::exception const& e) {
    fail(std::string("not valid JSON: ") + e.what());
  }
  return out;
}

}  // namespace detail

/// \brief Turn a parsed `config.json` of either convention into an `ssm::model_config`.
///
/// See the file's documentation for the conventions, their defaults and what is refused.
/// \param j the parsed JSON; must be an object.
/// \param source the name of its origin (usually the file), used in error messages.
/// \return the validated sizes, with `d_inner`, `dt_rank` and `padded_vocab_size` worked out and
///         `convention` set to "mamba_ssm" or "transformers".
/// \throws ssm::config_error, naming `source` and the field, if `j` is not an object, the convention
///         cannot be told, a field has the wrong type or an absurd value, or the model is of a kind
///         `ssm` does not support.
inline model_config parse_model_config(nlohmann::json const& j, std::string const& source) {
  detail::config_reader const r(source);
  if (!j.is_object()) r.fail("the top level must be a JSON object, got " + detail::config_reader::describe(j));
  bool hf = false;
  if (auto const it = j.find("model_type"); it != j.end()) {
    if (!it->is_string()) r.fail("model_type must be a string, got " + detail::config_reader::describe(*it));
    std::string const type = it->get<std::string>();
    if (type == "mamba2") r.fail("model_type is \"mamba2\": Mamba-2 models are not supported yet");
    if (type != "mamba") {
      r.fail("model_type is " + detail::config_reader::describe(*it) + ": not a Mamba-1 model (expected \"mamba\")");
    }
    hf = true;
  } else if (j.contains("hidden_size") && j.contains("d_model")) {
    r.fail("has both hidden_size (transformers) and d_model (mamba_ssm): cannot tell the convention");
  } else if (j.contains("hidden_size")) {
    hf = true;
  } else if (!j.contains("d_model")) {
    r.fail("has neither d_model (mamba_ssm) nor hidden_size (transformers): cannot tell the convention");
  }
  model_config c = hf ? detail::parse_transformers_config(j, r) : detail::parse_mamba_ssm_config(j, r);
  try {
    c.mixer().validate();  // cannot fail within config_limits; kept as a last line of defence
  } catch (shape_error const& e) {
    r.fail(e.what());
  }
  return c;
}

/// \brief Read and parse a `config.json` file of either convention.
/// \param config_json the file, e.g. `checkpoint_dir / "config.json"`.
/// \return the validated sizes (see `ssm::parse_model_config`).
/// \throws ssm::config_error, naming the file, if it does not exist, is not a regular file, is
///         larger than `ssm::config_limits::max_file_bytes`, cannot be read, is not valid JSON (or
///         nests too deep, or repeats a key in one object), or `ssm::parse_model_config` refuses it.
inline model_config load_model_config(std::filesystem::path const& config_json) {
  std::string const source = config_json.string();
  detail::config_reader const r(source);
  std::error_code ec;
  if (!std::filesystem::is_regular_file(config_json, ec)) r.fail("does not exist or is not a regular file");
  std::uintmax_t const size = std::filesystem::file_size(config_json, ec);
  if (ec) r.fail("cannot get the file size: " + ec.message());
  if (size > config_limits::max_file_bytes) {
    r.fail("is " + std::to_string(size) + " bytes, more than the " + std::to_string(config_limits::max_file_bytes) +
           " a config may have");
  }
  std::ifstream in(config_json, std::ios::binary);
  if (!in) r.fail("cannot open the file");
  std::string text(static_cast<std::size_t>(size), '\0');
  in.read(text.data(), static_cast<std::streamsize>(size));
  if (static_cast<std::uintmax_t>(in.gcount()) != size) r.fail("cannot read the whole file");
  auto const fail = [&r](std::string const& problem) { r.fail(problem); };
  return parse_model_config(detail::parse_json_strictly(text, config_limits::max_json_depth, fail), source);
}

}  // namespace ssm
