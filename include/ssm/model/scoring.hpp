#pragma once
/// \file
/// \brief Scoring text with a language model: per-token log-probabilities, the log-likelihood of
/// a continuation, perplexity over long texts, and greedy generation.
///
/// Texts are streamed through the recurrent state in chunks, so a text of any length needs only
/// the memory of one chunk's logits: the scores equal those of one forward pass over the whole
/// text (Mamba's state carries all the context). This is what evaluation harnesses build on:
/// BoolQ, PIQA or HellaSwag compare the log-likelihoods of candidate continuations.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <span>
#include <utility>
#include <vector>

#include <Kokkos_Core.hpp>

#include <ssm/core/compat.hpp>
#include <ssm/core/dtype.hpp>
#include <ssm/core/error.hpp>
#include <ssm/core/views.hpp>
#include <ssm/model/generate.hpp>  // generate_greedy, for the callers of this header
#include <ssm/model/mamba_lm.hpp>

namespace ssm {

/// \brief Teacher-forced scores of one token sequence.
struct token_scores {
  std::vector<double> next_token_logprob;  ///< (n-1) log p(ids[i+1] | ids[0..i]), natural log
  std::vector<std::int32_t> argmax;        ///< (n) the most likely next token at each position (`argmax_rows`)
  double sum_logprob = 0.0;                ///< the sum of next_token_logprob
};

namespace detail {

/// \brief log-softmax of one row of logits at one index, in double: \f$x_i - \log\sum_j e^{x_j}\f$.
template <class T>
double log_softmax_at(T const* row, std::size_t V, std::size_t index) {
  double max = -INFINITY;
  for (std::size_t v = 0; v < V; ++v) max = std::max(max, static_cast<double>(to_float(row[v])));
  double sum = 0.0;
  for (std::size_t v = 0; v < V; ++v) sum += std::exp(static_cast<double>(to_float(row[v])) - max);
  return static_cast<double>(to_float(row[index])) - max - std::log(sum);
}

/// \brief `log_softmax_at` of every row on the execution space, a team per row:
/// logprob(l) = log-softmax of row l at token targets(l), in double (0 where targets(l) < 0). The
/// largest logit is the row's largest number (`row_max_key`; the host's loop skips NaN too), and
/// the sum of exponentials is added in double in another order than the host's, so the two agree
/// to double's rounding.
/// \tparam ExecSpace a Kokkos execution space. \tparam T logit storage type.
/// \tparam MemSpace memory space of the views.
/// \param space the instance. \param logits (L, V). \param targets (L). \param logprob (L) out.
template <class ExecSpace, class T, class MemSpace>
void log_softmax_rows(ExecSpace const& space, view2<const T, MemSpace> const& logits,
                      view1<const std::int32_t, MemSpace> const& targets, view1<double, MemSpace> const& logprob) {
  int const V = static_cast<int>(logits.extent(1));
  using team = typename Kokkos::TeamPolicy<ExecSpace>::member_type;
  Kokkos::parallel_for(
      "ssm::score_tokens::log_softmax", row_teams(space, static_cast<int>(logits.extent(0))),
      KOKKOS_LAMBDA(team const& member) {
        int const l = member.league_rank();
        std::uint64_t const best = row_max_key(member, logits, l, V, ~std::uint64_t{0});
        double const max = best == 0 ? -INFINITY : static_cast<double>(key_logit(best));
        double sum = 0.0;
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(member, V),
            [&](int const v, double& partial) { partial += compat::exp(static_cast<double>(to_float(logits(l, v))) - max); },
            sum);
        Kokkos::single(Kokkos::PerTeam(member), [&] {
          std::int32_t const target = targets(l);
          logprob(l) = target < 0 ? 0.0 : static_cast<double>(to_float(logits(l, target))) - max - compat::log(sum);
        });
      });
}

}  // namespace detail

/// \brief Teacher-forced scores of one sequence, streamed in chunks through the recurrent state.
///
/// Where the logits are in host memory each row is scored by `detail::log_softmax_at` and
/// `detail::argmax_row` (`argmax_rows`' host loop) after the chunk's forward pass; elsewhere (a
/// GPU) the rows are scored where they are (`detail::log_softmax_rows`, `argmax_rows`) and only
/// L log-probabilities and L tokens come back per chunk, not L x V logits. Either way the argmax
/// is `argmax_rows`': the first of the largest numbers, -1 for a row without one.
/// \tparam ExecSpace \tparam T \tparam Wt the model's parameters.
/// \param model the language model. \param ids (n) the tokens, n >= 1.
/// \param chunk tokens per forward pass (bounds the memory of the logits: chunk * V values).
/// \param space the execution space instance to run on.
/// \return log-probabilities of tokens 1..n-1, argmax at every position, and their sum.
/// \throws ssm::shape_error for an empty sequence or ids outside the vocabulary.
template <class ExecSpace, class T, class Wt>
token_scores score_tokens(mamba_lm<ExecSpace, T, Wt> const& model, std::span<std::int32_t const> ids,
                          std::size_t chunk = 512, ExecSpace const& space = ExecSpace()) {
  detail::require(!ids.empty(), "ssm::score_tokens", "the sequence is empty");
  detail::require(chunk >= 1, "ssm::score_tokens", "chunk must be at least 1");
  using memory_space = typename ExecSpace::memory_space;
  std::size_t const V = model.vocab();
  auto cache = model.make_cache(1);
  token_scores scores;
  Kokkos::View<std::int32_t**, Kokkos::LayoutRight, memory_space> d_ids("ssm::score::ids", 1, std::min(chunk, ids.size()));
  Kokkos::View<T***, Kokkos::LayoutRight, memory_space> logits("ssm::score::logits", 1, d_ids.extent(1), V);
  // off the host: each position's target (-1 for the last), and what comes back of its row
  Kokkos::View<std::int32_t*, memory_space> d_targets("ssm::score::targets", d_ids.extent(1));
  Kokkos::View<std::int32_t*, memory_space> d_argmax("ssm::score::argmax", d_ids.extent(1));
  Kokkos::View<double*, memory_space> d_logprob("ssm::score::logprob", d_ids.extent(1));
  auto h_targets = Kokkos::create_mirror_view(d_targets);
  auto h_argmax = Kokkos::create_mirror_view(d_argmax);
  auto h_logprob = Kokkos::create_mirror_view(d_logprob);
  for (std::size_t start = 0; start < ids.size(); start += chunk) {
    std::size_t const L = std::min(chunk, ids.size() - start);
    auto h_ids = Kokkos::create_mirror_view(d_ids);
    for (std::size_t l = 0; l < L; ++l) h_ids(0, l) = ids[start + l];
    Kokkos::deep_copy(d_ids, h_ids);
    Kokkos::View<T***, Kokkos::LayoutRight, memory_space> logits_l(logits.data(), 1, L, V);
    Kokkos::View<const std::int32_t**, Kokkos::LayoutRight, memory_space> ids_c(d_ids.data(), 1, L);
    model.forward(space, ids_c, logits_l, &cache);
    if constexpr (is_accessible_v<Kokkos::DefaultHostExecutionSpace, memory_space>) {
      space.fence();
      for (std::size_t l = 0; l < L; ++l) {
        std::size_t const i = start + l;
        T const* row = logits.data() + l * V;
        scores.argmax.push_back(detail::argmax_row(row, static_cast<int>(V)));
        if (i + 1 < ids.size()) {
          double const lp = detail::log_softmax_at(row, V, static_cast<std::size_t>(ids[i + 1]));
          scores.next_token_logprob.push_back(lp);
          scores.sum_logprob += lp;
        }
      }
    } else {
      for (std::size_t l = 0; l < L; ++l) h_targets(l) = start + l + 1 < ids.size() ? ids[start + l + 1] : -1;
      Kokkos::deep_copy(space, d_targets, h_targets);
      auto const first = std::make_pair(std::size_t{0}, L);
      view2<const T, memory_space> const rows(logits.data(), Kokkos::LayoutStride(L, V, V, 1));
      argmax_rows(space, rows, view1<std::int32_t, memory_space>(Kokkos::subview(d_argmax, first)));
      detail::log_softmax_rows(space, rows, view1<const std::int32_t, memory_space>(Kokkos::subview(d_targets, first)),
                               view1<double, memory_space>(Kokkos::subview(d_logprob, first)));
      Kokkos::deep_copy(space, h_argmax, d_argmax);
      Kokkos::deep_copy(space, h_logprob, d_logprob);
      space.fence();
      for (std::size_t l = 0; l < L; ++l) {
        scores.argmax.push_back(h_argmax(l));
        if (start + l + 1 < ids.size()) {
          scores.next_token_logprob.push_back(h_logprob(l));
          scores.sum_logprob += h_logprob(l);
        }
      }
    }
  }
  return scores;
}

/// \brief Log-likelihood of a continuation given a context: \f$\sum_i \log p(c_i \mid
/// \mathrm{context}, c_{<i})\f$, the quantity multiple-choice evaluations compare.
/// \param model the language model. \param context (n >= 1) the tokens given.
/// \param continuation (m >= 1) the tokens scored. \param chunk tokens per forward pass.
/// \param space the execution space instance to run on.
/// \return the sum of the continuation's log-probabilities (natural log).
template <class ExecSpace, class T, class Wt>
double loglikelihood(mamba_lm<ExecSpace, T, Wt> const& model, std::span<std::int32_t const> context,
                     std::span<std::int32_t const> continuation, std::size_t chunk = 512,
                     ExecSpace const& space = ExecSpace()) {
  detail::require(!context.empty() && !continuation.empty(), "ssm::loglikelihood",
                  "the context and the continuation must each hold at least one token");
  std::vector<std::int32_t> all(context.begin(), context.end());
  all.insert(all.end(), continuation.begin(), continuation.end());
  auto const scores = score_tokens(model, std::span<std::int32_t const>(all), chunk, space);
  double sum = 0.0;
  for (std::size_t i = context.size() - 1; i < scores.next_token_logprob.size(); ++i) sum += scores.next_token_logprob[i];
  return sum;
}

/// \brief Perplexity \f$\exp(-\frac{1}{n-1}\sum \log p)\f$ of a text of n tokens, streamed.
/// \param model the language model. \param ids (n >= 2) the tokens.
/// \param chunk tokens per forward pass. \param space the execution space instance.
/// \return the perplexity.
template <class ExecSpace, class T, class Wt>
double perplexity(mamba_lm<ExecSpace, T, Wt> const& model, std::span<std::int32_t const> ids, std::size_t chunk = 512,
                  ExecSpace const& space = ExecSpace()) {
  detail::require(ids.size() >= 2, "ssm::perplexity", "the text must hold at least two tokens");
  auto const scores = score_tokens(model, ids, chunk, space);
  return std::exp(-scores.sum_logprob / static_cast<double>(scores.next_token_logprob.size()));
}

}  // namespace ssm
