#pragma once
/// \file
/// \brief Generation for a batch of prompts of different lengths, sampled or greedy, streamed.
///
/// Each prompt is prefilled on its own (no padding, so nothing of one sequence can leak into
/// another), its recurrent state is put in its row of a batch cache, and then all sequences
/// decode together, one token each per step. A sequence stops at the end-of-text token or at the
/// token budget; the others go on. Sequence b samples with the seed `seed + b`, so its tokens are
/// the same whether it is generated alone or in a batch.
///
/// Greedy decoding (temperature 0, no repetition penalty) chooses the tokens where the logits
/// are, with `argmax_rows`, and replays each step from an `ssm::graph`: on a GPU the logits never
/// cross to the host and a step is one launch; only the B chosen ids come back, for the callback.

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <vector>

#include <ssm/core/error.hpp>
#include <ssm/core/graph.hpp>
#include <ssm/core/views.hpp>
#include <ssm/model/mamba_lm.hpp>
#include <ssm/model/sampling.hpp>

namespace ssm {

/// \brief What to generate.
struct generation_options {
  std::size_t max_tokens = 128;          ///< the token budget of each sequence
  sampling_params sampling;              ///< how each token is chosen
  std::optional<std::int32_t> eos;       ///< stop a sequence after this token (it is kept)
};

/// \brief The greedy choice of each row, on the execution space: tokens(b) = argmax of logits(b, :),
/// the lowest index among equal largest values (as the host's `argmax`), NaN never chosen over a
/// number. Asynchronous.
///
/// Each value is turned into an unsigned key that orders as the floats do, with the complement of
/// its index below it, so one integer maximum per row decides both.
/// \tparam ExecSpace a Kokkos execution space. \tparam T logit storage type.
/// \tparam MemSpace memory space of both views.
/// \param space the execution space instance. \param logits (B, V). \param tokens (B) out.
template <class ExecSpace, class T, class MemSpace>
void argmax_rows(ExecSpace const& space, view2<const T, MemSpace> const& logits,
                 view1<std::int32_t, MemSpace> const& tokens) {
  static_assert(is_accessible_v<ExecSpace, MemSpace>, "ssm::argmax_rows: the views must be accessible from the space");
  detail::require(tokens.extent(0) == logits.extent(0), "ssm::argmax_rows", "tokens must be (B) for logits (B, V)");
  int const V = static_cast<int>(logits.extent(1));
  using team = typename Kokkos::TeamPolicy<ExecSpace>::member_type;
  Kokkos::parallel_for(
      "ssm::argmax_rows", Kokkos::TeamPolicy<ExecSpace>(space, static_cast<int>(logits.extent(0)), Kokkos::AUTO),
      KOKKOS_LAMBDA(team const& member) {
        int const b = member.league_rank();
        std::uint64_t best = 0;
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(member, V),
            [&](int const v, std::uint64_t& key) {
              float const x = to_float(logits(b, v));
              auto const bits = detail::bit_cast<std::uint32_t>(x);
              std::uint32_t const ordered = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
              std::uint64_t const candidate =
                  x == x ? (std::uint64_t{ordered} << 32) | static_cast<std::uint32_t>(~static_cast<std::uint32_t>(v)) : 0u;
              if (candidate > key) key = candidate;
            },
            Kokkos::Max<std::uint64_t>(best));
        Kokkos::single(Kokkos::PerTeam(member), [&] {
          tokens(b) = static_cast<std::int32_t>(~static_cast<std::uint32_t>(best & 0xFFFFFFFFu));
        });
      });
}

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

  std::vector<bool> done(B, false);
  std::size_t active = B;
  Kokkos::View<std::int32_t*, Kokkos::LayoutRight, memory_space> tokens("ssm::generate::tokens", B);
  auto h_tokens = Kokkos::create_mirror_view(tokens);
  // Take the chosen tokens, tell the caller, and mark the sequences that are done.
  auto const accept = [&](auto const& chosen) {
    for (std::size_t b = 0; b < B; ++b) {
      if (done[b]) continue;
      std::int32_t const next = chosen(b);
      out[b].push_back(next);
      bool const go_on = !on_token || on_token(b, next);
      if (!go_on || out[b].size() >= options.max_tokens || (options.eos && next == *options.eos)) {
        done[b] = true;
        --active;
      }
    }
  };

  if (options.sampling.temperature <= 0.0f && options.sampling.repeat_penalty == 1.0f) {
    // Greedy: the choice stays on the space; finished sequences go on decoding, unread.
    argmax_rows(space, view2<const T, memory_space>(logits), view1<std::int32_t, memory_space>(tokens));
    graph<ExecSpace> decode;
    auto const step = [&] {
      model.step(space, tokens, logits, cache, /*check_ids=*/false);  // argmax_rows chose them
      argmax_rows(space, view2<const T, memory_space>(logits), view1<std::int32_t, memory_space>(tokens));
    };
    for (bool first = true;; first = false) {
      Kokkos::deep_copy(h_tokens, tokens);  // waits for the step
      accept([&](std::size_t b) { return h_tokens(b); });
      if (active == 0) break;
      if (first) {
        step();  // allocates and plans everything a step needs, which recording must not do
      } else {
        if (!decode.recorded()) decode.record(space, step);
        decode.replay();
      }
    }
    return out;
  }

  std::vector<sampler> samplers;
  std::vector<std::vector<std::int32_t>> history(prompts);
  for (std::size_t b = 0; b < B; ++b) {
    auto params = options.sampling;
    params.seed += b;
    samplers.emplace_back(params);
  }
  std::vector<float> row(V);
  while (true) {
    space.fence();
    auto const h_logits = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), logits);
    accept([&](std::size_t b) {
      for (std::size_t v = 0; v < V; ++v) row[v] = to_float(h_logits(b, v));
      std::int32_t const next = samplers[b].sample(row, history[b]);
      history[b].push_back(next);
      h_tokens(b) = next;
      return next;
    });
    if (active == 0) break;
    Kokkos::deep_copy(tokens, h_tokens);  // finished sequences repeat their last token, unread
    model.step(space, tokens, logits, cache);
  }
  return out;
}

/// \brief Greedy generation of one sequence: prefill the prompt, then `n` tokens of argmax
/// decoding, chosen on the execution space (see `generate`).
/// \param model the language model. \param prompt (>= 1) the tokens to continue.
/// \param n the number of tokens to generate.
/// \param on_token called with each token as it is produced; return false to stop early.
/// \param space the execution space instance.
/// \return the generated tokens.
/// \throws ssm::error for an empty prompt or ids outside the vocabulary.
template <class ExecSpace, class T, class Wt>
std::vector<std::int32_t> generate_greedy(mamba_lm<ExecSpace, T, Wt> const& model, std::span<std::int32_t const> prompt,
                                          std::size_t n, std::function<bool(std::int32_t)> const& on_token = {},
                                          ExecSpace const& space = ExecSpace()) {
  detail::require(!prompt.empty(), "ssm::generate_greedy", "the prompt is empty");
  generation_options options;
  options.max_tokens = n;
  options.sampling.temperature = 0.0f;
  std::function<bool(std::size_t, std::int32_t)> each;
  if (on_token) each = [&](std::size_t, std::int32_t id) { return on_token(id); };
  return generate(model, {std::vector<std::int32_t>(prompt.begin(), prompt.end())}, options, each, space).front();
}

}  // namespace ssm
