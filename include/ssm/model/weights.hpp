#pragma once
/// \file
/// \brief The weights of a Mamba language model, in a storage type and memory space of the caller's.

#include <string>
#include <vector>

#include <ssm/blocks/mamba.hpp>
#include <ssm/model/config.hpp>

namespace ssm {

/// \brief Every weight of a Mamba-1 language model.
///
/// When the embeddings are tied, `lm_head` is the same view as `embedding`.
/// \tparam Wt storage type of the dense, conv and norm weights (`A`, `D`, `dt_proj.bias` are fp32).
/// \tparam MemSpace the Kokkos memory space holding them.
template <class Wt, class MemSpace>
struct mamba_lm_weights {
  /// \brief A contiguous matrix of weights.
  using matrix = Kokkos::View<Wt**, Kokkos::LayoutRight, MemSpace>;
  /// \brief A contiguous vector of weights.
  using vector = Kokkos::View<Wt*, Kokkos::LayoutRight, MemSpace>;

  model_config config;                                   ///< the sizes
  matrix embedding;                                      ///< (V, E), V = config.padded_vocab_size
  std::vector<mamba_mixer_weights<Wt, MemSpace>> mixers; ///< n_layer mixers
  std::vector<vector> norms;                             ///< n_layer RMSNorm weights, each (E)
  vector norm_f;                                         ///< (E) the final RMSNorm
  matrix lm_head;                                        ///< (V, E); `embedding` itself when tied

  /// \brief Zero-filled, labelled weights of the shapes `config` gives.
  /// \param c the model's sizes.
  /// \return weights with every view allocated.
  static mamba_lm_weights allocate(model_config const& c) {
    mamba_lm_weights w;
    w.config = c;
    w.embedding = matrix("backbone.embedding.weight", c.padded_vocab_size, c.d_model);
    for (int i = 0; i < c.n_layer; ++i) {
      std::string const prefix = "backbone.layers." + std::to_string(i);
      w.mixers.push_back(mamba_mixer_weights<Wt, MemSpace>::allocate(c.mixer(), prefix + ".mixer"));
      w.norms.push_back(vector(prefix + ".norm.weight", c.d_model));
    }
    w.norm_f = vector("backbone.norm_f.weight", c.d_model);
    w.lm_head = c.tie_embeddings ? w.embedding : matrix("lm_head.weight", c.padded_vocab_size, c.d_model);
    return w;
  }

  /// \brief A deep copy of weights held in another memory space: host weights on a GPU, say.
  ///
  /// Synchronous. Tied embeddings stay tied (one copy of the matrix).
  /// \tparam Src the memory space of `from`.
  /// \param from the weights to copy.
  /// \return the copy, in `MemSpace`.
  template <class Src>
  static mamba_lm_weights copy_of(mamba_lm_weights<Wt, Src> const& from) {
    auto w = allocate(from.config);
    Kokkos::deep_copy(w.embedding, from.embedding);
    for (std::size_t i = 0; i < w.mixers.size(); ++i) {
      w.mixers[i].copy_from(from.mixers[i]);
      Kokkos::deep_copy(w.norms[i], from.norms[i]);
    }
    Kokkos::deep_copy(w.norm_f, from.norm_f);
    if (!from.config.tie_embeddings) Kokkos::deep_copy(w.lm_head, from.lm_head);
    return w;
  }
};

}  // namespace ssm
