#pragma once
/// \file
/// \brief The configuration of a Mamba language model, as both checkpoint conventions describe it.
///
/// mamba_ssm's `config.json` (`d_model`, `n_layer`, `vocab_size`, `ssm_cfg`, `rms_norm`,
/// `pad_vocab_size_multiple`, `tie_embeddings`, ...) and HuggingFace transformers'
/// `MambaForCausalLM` `config.json` (`hidden_size`, `num_hidden_layers`, `state_size`, ...) both
/// become one `ssm::model_config`; `ssm::load_model_config` reads either (see model/config_json.hpp).

#include <string>

#include <ssm/blocks/mamba.hpp>

namespace ssm {

/// \brief Sizes and options of a Mamba-1 language model: embedding, n_layer blocks, final norm, head.
struct model_config {
  int d_model = 0;                 ///< E
  int n_layer = 0;                 ///< number of residual blocks
  int vocab_size = 0;              ///< V as the config states it
  int padded_vocab_size = 0;       ///< rows of the embedding and the head (mamba_ssm pads V up)
  int d_state = 16;                ///< N
  int d_conv = 4;                  ///< W
  int expand = 2;                  ///< D = expand * E
  int d_inner = 0;                 ///< D
  int dt_rank = 0;                 ///< R ("auto" is ceil(E / 16))
  bool conv_bias = true;           ///< the conv has a bias
  bool bias = false;               ///< in_proj and out_proj have biases
  bool residual_in_fp32 = true;    ///< the residual stream is fp32 (ssm always keeps it so)
  bool tie_embeddings = true;      ///< the head is the embedding matrix
  float norm_eps = 1e-5f;          ///< epsilon of every RMSNorm
  std::string convention;          ///< "mamba_ssm" or "transformers": where the numbers came from

  /// \brief The mixer sizes of every block.
  /// \return the `ssm::mamba_config` of one block.
  mamba_config mixer() const {
    return {.d_model = d_model,
            .d_inner = d_inner,
            .d_state = d_state,
            .d_conv = d_conv,
            .dt_rank = dt_rank,
            .conv_bias = conv_bias,
            .bias = bias,
            .norm_eps = norm_eps};
  }
};

}  // namespace ssm
