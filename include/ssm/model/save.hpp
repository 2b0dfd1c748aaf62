#pragma once
/// \file
/// \brief Saving a model as a mamba_ssm-style checkpoint: `config.json` and `model.safetensors`.

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <ssm/core/error.hpp>
#include <ssm/io/safetensors_writer.hpp>
#include <ssm/model/weights.hpp>

namespace ssm {

/// \brief The mamba_ssm `config.json` of a configuration.
/// \param c the configuration. \return the JSON object.
inline nlohmann::ordered_json mamba_ssm_config_json(model_config const& c) {
  return {{"d_model", c.d_model},
          {"n_layer", c.n_layer},
          {"vocab_size", c.vocab_size},
          {"ssm_cfg", {{"d_state", c.d_state}, {"d_conv", c.d_conv}, {"expand", c.expand}, {"dt_rank", c.dt_rank},
                       {"conv_bias", c.conv_bias}, {"bias", c.bias}}},
          {"rms_norm", true},
          {"residual_in_fp32", true},
          {"fused_add_norm", true},
          {"pad_vocab_size_multiple", 8},
          {"tie_embeddings", c.tie_embeddings}};
}

/// \brief Write `dir/config.json` (mamba_ssm's convention) and `dir/model.safetensors` with
/// mamba_ssm's tensor names, the dense weights in their storage type, A_log, D and dt_proj.bias in F32.
/// \tparam Wt storage type of the weights. \param w the weights, in host memory.
/// \param dir the directory, created if missing. \throws ssm::error if a file cannot be written.
template <class Wt>
void save_checkpoint(mamba_lm_weights<Wt, Kokkos::HostSpace> const& w, std::filesystem::path const& dir) {
  auto const& c = w.config;
  detail::require(c.padded_vocab_size % 8 == 0 && c.padded_vocab_size - c.vocab_size < 8 && c.padded_vocab_size >= c.vocab_size,
                  "ssm::save_checkpoint", "mamba_ssm checkpoints pad the vocabulary to a multiple of 8");
  std::filesystem::create_directories(dir);
  io::safetensors_writer out;
  out.metadata("format", "pt");
  auto add = [&](std::string const& name, auto const& v, std::vector<std::int64_t> const& shape) {
    using V = typename std::remove_reference_t<decltype(v)>::non_const_value_type;
    out.add<V>(name, shape, std::span<V const>(v.data(), v.span()));
  };
  std::int64_t const V = c.padded_vocab_size, E = c.d_model, D = c.d_inner, N = c.d_state, R = c.dt_rank, W = c.d_conv;
  add("backbone.embedding.weight", w.embedding, {V, E});
  add("backbone.norm_f.weight", w.norm_f, {E});
  if (!c.tie_embeddings) add("lm_head.weight", w.lm_head, {V, E});
  for (int i = 0; i < c.n_layer; ++i) {
    std::string const p = "backbone.layers." + std::to_string(i) + ".";
    auto const& m = w.mixers[i];
    add(p + "norm.weight", w.norms[i], {E});
    add(p + "mixer.in_proj.weight", m.in_proj_weight, {2 * D, E});
    if (c.bias) add(p + "mixer.in_proj.bias", m.in_proj_bias, {2 * D});
    add(p + "mixer.conv1d.weight", m.conv1d_weight, {D, 1, W});
    if (c.conv_bias) add(p + "mixer.conv1d.bias", m.conv1d_bias, {D});
    add(p + "mixer.x_proj.weight", m.x_proj_weight, {R + 2 * N, D});
    add(p + "mixer.dt_proj.weight", m.dt_proj_weight, {D, R});
    add(p + "mixer.dt_proj.bias", m.dt_proj_bias, {D});
    std::vector<float> A_log(m.A.span());
    for (std::size_t k = 0; k < A_log.size(); ++k) A_log[k] = std::log(-m.A.data()[k]);
    out.add<float>(p + "mixer.A_log", {D, N}, std::span<float const>(A_log));
    add(p + "mixer.D", m.D, {D});
    add(p + "mixer.out_proj.weight", m.out_proj_weight, {E, D});
    if (c.bias) add(p + "mixer.out_proj.bias", m.out_proj_bias, {E});
  }
  out.write(dir / "model.safetensors");
  std::ofstream config_file(dir / "config.json");
  config_file << mamba_ssm_config_json(c).dump(2) << "\n";
  if (!config_file) throw error("ssm::save_checkpoint: cannot write '" + (dir / "config.json").string() + "'");
}

}  // namespace ssm
