#pragma once
/// \file
/// \brief Generation for a batch of prompts of different lengths, sampled or greedy, streamed.
///
/// Each prompt is prefilled on its own (no padding, so nothing of one sequence can leak into
/// another), its recurrent state is put in its row of a batch cache, and then all sequences
/// decode together, one token each per step. A sequence stops at the end-of-text token or at the
/// token budget; the others go on. Sequence b samples with the seed `seed + b`, so its tokens are
/// the same whether it is generated alone or in a batch.

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <vector>

#include <ssm/core/error.hpp>
#include <ssm/model/mamba_lm.hpp>
#include <ssm/model/sampling.hpp>

namespace ssm {

/// \brief What to generate.
struct generation_options {
  std::size_t max_tokens = 128;          ///< the token budget of each sequence
  sampling_params sampling;              ///< how each token is chosen
  std::optional<std::int32_t> eos;       ///< stop a sequence after this token (it is kept)
};

/// \brief Generate continuations of several prompts together.
/// \tparam ExecSpace \tparam T \tparam Wt the model's parameters.
/// \param model the language model. \param prompts B prompts of at least one token each.
/// \param options the budget, the sampling chain and the end-of-text token.
/// \param on_token called with (sequence, token) as each token is chosen; returning false stops
///        that sequence.
/// \param space the execution space instance.
/// \return B continuations (the prompts excluded).
/// \throws ssm::error for an empty prompt, bad options or ids outside the vocabulary.
template <class ExecSpace, class T, class Wt>
std::vector<std::vector<std::int32_t>> generate(mamba_lm<ExecSpace, T, Wt> const& model,
                                                std::vector<std::vector<std::int32_t>> const& prompts,
                                                generation_options const& options,
                                                std::function<bool(std::size_t, std::int32_t)> const& on_token = {},
                                                ExecSpace const& space = ExecSpace()) {
  using memory_space = typename ExecSpace::memory_space;
  std::size_t const B = prompts.size(), V = model.vocab();
  std::vector<std::vector<std::int32_t>> out(B);
  if (B == 0 || options.max_tokens == 0) return out;
  for (auto const& p : prompts) detail::require(!p.empty(), "ssm::generate", "a prompt is empty");

  // prefill each prompt alone, then gather the states into one batch cache and the last logits
  auto cache = model.make_cache(static_cast<int>(B));
  Kokkos::View<T**, Kokkos::LayoutRight, memory_space> logits("ssm::generate::logits", B, V);
  for (std::size_t b = 0; b < B; ++b) {
    auto single = model.make_cache(1);
    Kokkos::View<std::int32_t**, Kokkos::LayoutRight, memory_space> ids("ssm::generate::prompt", 1, prompts[b].size());
    auto h_ids = Kokkos::create_mirror_view(ids);
    for (std::size_t l = 0; l < prompts[b].size(); ++l) h_ids(0, l) = prompts[b][l];
    Kokkos::deep_copy(ids, h_ids);
    Kokkos::View<T***, Kokkos::LayoutRight, memory_space> last(logits.data() + b * V, 1, 1, V);
    model.forward(space, ids, last, &single);
    for (std::size_t i = 0; i < cache.layers.size(); ++i) {
      Kokkos::deep_copy(space, Kokkos::subview(cache.layers[i].conv, b, Kokkos::ALL, Kokkos::ALL),
                        Kokkos::subview(single.layers[i].conv, 0, Kokkos::ALL, Kokkos::ALL));
      Kokkos::deep_copy(space, Kokkos::subview(cache.layers[i].ssm, b, Kokkos::ALL, Kokkos::ALL),
                        Kokkos::subview(single.layers[i].ssm, 0, Kokkos::ALL, Kokkos::ALL));
    }
    space.fence();  // `single` goes out of scope
  }

  std::vector<sampler> samplers;
  std::vector<std::vector<std::int32_t>> history(prompts);
  for (std::size_t b = 0; b < B; ++b) {
    auto params = options.sampling;
    params.seed += b;
    samplers.emplace_back(params);
  }
  std::vector<bool> done(B, false);
  std::size_t active = B;
  Kokkos::View<std::int32_t*, Kokkos::LayoutRight, memory_space> tokens("ssm::generate::tokens", B);
  auto h_tokens = Kokkos::create_mirror_view(tokens);
  std::vector<float> row(V);
  while (true) {
    space.fence();
    auto const h_logits = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), logits);
    for (std::size_t b = 0; b < B; ++b) {
      if (done[b]) continue;
      for (std::size_t v = 0; v < V; ++v) row[v] = to_float(h_logits(b, v));
      std::int32_t const next = samplers[b].sample(row, history[b]);
      out[b].push_back(next);
      history[b].push_back(next);
      h_tokens(b) = next;
      bool const go_on = !on_token || on_token(b, next);
      if (!go_on || out[b].size() >= options.max_tokens || (options.eos && next == *options.eos)) {
        done[b] = true;
        --active;
      }
    }
    if (active == 0) break;
    Kokkos::deep_copy(tokens, h_tokens);  // finished sequences repeat their last token, unread
    model.step(space, tokens, logits, cache);
  }
  return out;
}

}  // namespace ssm
