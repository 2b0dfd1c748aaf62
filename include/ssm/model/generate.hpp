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
/// Sampling with top-k on a GPU finds each row's k largest logits there (`top_logits`), and only
/// those and the logits of the penalty window's tokens come back for the rest of the chain, which
/// then gives the same tokens as on the host. With top-k off, the whole rows come back.

#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <span>
#include <type_traits>
#include <vector>

#include <ssm/core/compat.hpp>
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

namespace detail {

/// \brief A logit's bits made monotonic: an unsigned integer that orders as the floats do (-0
/// equal to +0), 0 for NaN and above 0 for every number. Without branches, so that loops of it
/// vectorize.
KOKKOS_INLINE_FUNCTION std::uint32_t ordered_logit(float x) {
  std::uint32_t bits = bit_cast<std::uint32_t>(x);
  bits &= 0u - static_cast<std::uint32_t>(bits != 0x80000000u);  // -0 as +0
  std::uint32_t const negative = 0u - (bits >> 31);
  std::uint32_t const nan = 0u - static_cast<std::uint32_t>((bits & 0x7FFFFFFFu) > 0x7F800000u);
  return (bits ^ (negative | 0x80000000u)) & ~nan;  // negatives complemented, positives above them
}
/// \brief A logit and its token as one unsigned key that orders as the logits do, ties by the
/// smaller token: `ordered_logit` above the complement of the token. NaN is 0.
KOKKOS_INLINE_FUNCTION std::uint64_t logit_key(float x, int v) {
  std::uint32_t const ordered = ordered_logit(x);
  return ordered != 0u ? (std::uint64_t{ordered} << 32) | static_cast<std::uint32_t>(~static_cast<std::uint32_t>(v)) : 0u;
}
/// \brief The token of a key. \param key from `logit_key`. \return the token.
KOKKOS_INLINE_FUNCTION std::int32_t key_token(std::uint64_t key) {
  return static_cast<std::int32_t>(~static_cast<std::uint32_t>(key & 0xFFFFFFFFu));
}
/// \brief The logit of a key. \param key from `logit_key`. \return the logit.
KOKKOS_INLINE_FUNCTION float key_logit(std::uint64_t key) {
  auto const ordered = static_cast<std::uint32_t>(key >> 32);
  return bit_cast<float>((ordered & 0x80000000u) ? (ordered & 0x7FFFFFFFu) : ~ordered);
}

/// \brief A team per row of logits: Kokkos' choice on the host, 512 threads on a GPU (there
/// Kokkos chose 128, leaving each thread a chain of 400 dependent loads of a 50k-token row).
template <class ExecSpace>
auto row_teams(ExecSpace const& space, int rows) {
  if constexpr (std::is_same_v<typename ExecSpace::memory_space, Kokkos::HostSpace>) {
    return compat::capturable(Kokkos::TeamPolicy<ExecSpace>(space, rows, Kokkos::AUTO));
  } else {
    return compat::capturable(Kokkos::TeamPolicy<ExecSpace>(space, rows, 512));
  }
}

/// \brief Logits a thread reads together, so that their loads are in flight at once.
inline constexpr int logits_per_read = 8;

/// \brief The largest key of row b's logits below `below` (see `logit_key`), each thread of the
/// team taking runs of `logits_per_read` neighbours. \return 0 if there is none.
template <class Member, class Logits>
KOKKOS_INLINE_FUNCTION std::uint64_t row_max_key(Member const& member, Logits const& logits, int b, int V,
                                                 std::uint64_t below) {
  std::uint64_t best = 0;
  Kokkos::parallel_reduce(
      Kokkos::TeamThreadRange(member, (V + logits_per_read - 1) / logits_per_read),
      [&](int const run, std::uint64_t& key) {
        for (int j = 0; j < logits_per_read; ++j) {
          int const v = run * logits_per_read + j;
          if (v < V) {
            std::uint64_t const candidate = logit_key(to_float(logits(b, v)), v);
            if (candidate < below && candidate > key) key = candidate;
          }
        }
      },
      Kokkos::Max<std::uint64_t>(best));
  return best;
}

/// \brief The greedy choice of one contiguous row on the host, as `argmax_rows` defines it: the
/// largest `ordered_logit` in one pass, then its first position in another. Both loops vectorize,
/// where the keys of `row_max_key` are 64-bit compares one logit at a time (on one core, 2% of a
/// decoding step of the 130m model, with its 50,280 logits).
/// \tparam T logit storage type. \param row V logits. \param V the row's length.
/// \return the token, or -1 if the row holds no number.
template <class T>
std::int32_t argmax_row(T const* row, int V) {
  std::uint32_t best = 0;
  for (int v = 0; v < V; ++v) {
    std::uint32_t const key = ordered_logit(to_float(row[v]));
    best = key > best ? key : best;
  }
  if (best == 0u) return -1;
  int v = 0;
  while (ordered_logit(to_float(row[v])) != best) ++v;
  return v;
}

/// \brief One decoding step: the first runs eagerly, since it allocates and plans everything a
/// step needs, which recording must not do; later ones replay it, recorded once into `decode`.
template <class ExecSpace, class Step>
void run_step(graph<ExecSpace>& decode, ExecSpace const& space, Step const& step, bool first) {
  if (first) {
    step();
    return;
  }
  if (!decode.recorded()) decode.record(space, step);
  decode.replay();
}

/// \brief `argmax_rows` as portable Kokkos code: on the host a vectorized pass per row
/// (`argmax_row`) for contiguous rows, elsewhere a team per row taking the largest key
/// (`row_max_key`). The body of the primary `token_choice_backend::argmax`; callable on any
/// execution space, so that the tests can run it where another backend takes over.
template <class ExecSpace, class T, class MemSpace>
void argmax_rows_portable(ExecSpace const& space, view2<const T, MemSpace> const& logits,
                          view1<std::int32_t, MemSpace> const& tokens) {
  int const V = static_cast<int>(logits.extent(1));
  if constexpr (std::is_same_v<typename ExecSpace::memory_space, Kokkos::HostSpace>) {
    if (logits.stride(1) == 1) {  // a row is one vectorized loop; rows in parallel
      std::size_t const row_stride = logits.stride(0);
      T const* const first = logits.data();
      Kokkos::parallel_for(
          "ssm::argmax_rows::host",
          compat::capturable(Kokkos::RangePolicy<ExecSpace>(space, 0, static_cast<int>(logits.extent(0)))),
          [=](int const b) { tokens(b) = argmax_row(first + static_cast<std::size_t>(b) * row_stride, V); });
      return;
    }
  }
  using team = typename Kokkos::TeamPolicy<ExecSpace>::member_type;
  Kokkos::parallel_for(
      "ssm::argmax_rows", row_teams(space, static_cast<int>(logits.extent(0))), KOKKOS_LAMBDA(team const& member) {
        int const b = member.league_rank();
        std::uint64_t const best = row_max_key(member, logits, b, V, ~std::uint64_t{0});
        Kokkos::single(Kokkos::PerTeam(member), [&] { tokens(b) = key_token(best); });
      });
}

/// \brief `top_logits` as portable Kokkos code: a team per row takes `count` maxima in turn, each
/// below the last (`row_max_key`). The body of the primary `token_choice_backend::top`.
template <class ExecSpace, class T, class MemSpace>
void top_logits_portable(ExecSpace const& space, view2<const T, MemSpace> const& logits,
                         view2<std::int32_t, MemSpace> const& tokens, view2<float, MemSpace> const& values) {
  int const V = static_cast<int>(logits.extent(1)), count = static_cast<int>(tokens.extent(1));
  using team = typename Kokkos::TeamPolicy<ExecSpace>::member_type;
  Kokkos::parallel_for(
      "ssm::top_logits", row_teams(space, static_cast<int>(logits.extent(0))), KOKKOS_LAMBDA(team const& member) {
        int const b = member.league_rank();
        std::uint64_t last = ~std::uint64_t{0};
        for (int i = 0; i < count; ++i) {
          std::uint64_t const best = row_max_key(member, logits, b, V, last);
          last = best;
          Kokkos::single(Kokkos::PerTeam(member), [&] {
            tokens(b, i) = best == 0 ? -1 : key_token(best);
            values(b, i) = best == 0 ? 0.0f : key_logit(best);
          });
        }
      });
}

}  // namespace detail

/// \brief Which implementation of the choices of tokens from logits (`argmax_rows`, `top_logits`)
/// runs on an execution space; the primary template is the portable Kokkos path
/// (`detail::argmax_rows_portable`, `detail::top_logits_portable`).
///
/// Specialise it for an execution space to plug in other kernels (`ssm/model/cuda/token_choice.cuh`
/// does for `Kokkos::Cuda`). Its functions are called only after the shapes are checked and with
/// at least one row.
/// \tparam ExecSpace a Kokkos execution space.
template <class ExecSpace>
struct token_choice_backend {
  /// \brief The greedy choice of each row on `space` (asynchronous; see `argmax_rows`).
  /// \tparam T logit storage type. \tparam MemSpace memory space of the views.
  /// \param space the execution space instance. \param logits (B, V). \param tokens (B) out.
  template <class T, class MemSpace>
  static void argmax(ExecSpace const& space, view2<const T, MemSpace> const& logits,
                     view1<std::int32_t, MemSpace> const& tokens) {
    detail::argmax_rows_portable(space, logits, tokens);
  }
  /// \brief The largest logits of each row on `space` (asynchronous; see `top_logits`).
  /// \tparam T logit storage type. \tparam MemSpace memory space of the views.
  /// \param space the execution space instance. \param logits (B, V).
  /// \param tokens (B, count) out. \param values (B, count) out.
  template <class T, class MemSpace>
  static void top(ExecSpace const& space, view2<const T, MemSpace> const& logits,
                  view2<std::int32_t, MemSpace> const& tokens, view2<float, MemSpace> const& values) {
    detail::top_logits_portable(space, logits, tokens, values);
  }
};

/// \brief The greedy choice of each row, on the execution space: tokens(b) = argmax of logits(b, :),
/// the lowest index among equal largest values (as the host's `argmax`), NaN never chosen over a
/// number, -1 for a row without a number. Asynchronous.
///
/// Each value is turned into an unsigned key that orders as the floats do, with the complement of
/// its index below it (`detail::logit_key`), so one integer maximum per row decides both.
/// \tparam ExecSpace a Kokkos execution space. \tparam T logit storage type.
/// \tparam MemSpace memory space of both views.
/// \param space the execution space instance. \param logits (B, V). \param tokens (B) out.
/// \throws ssm::error if tokens is not (B).
template <class ExecSpace, class T, class MemSpace>
void argmax_rows(ExecSpace const& space, view2<const T, MemSpace> const& logits,
                 view1<std::int32_t, MemSpace> const& tokens) {
  static_assert(is_accessible_v<ExecSpace, MemSpace>, "ssm::argmax_rows: the views must be accessible from the space");
  detail::require(tokens.extent(0) == logits.extent(0), "ssm::argmax_rows", "tokens must be (B) for logits (B, V)");
  if (logits.extent(0) == 0) return;
  token_choice_backend<ExecSpace>::argmax(space, logits, tokens);
}

/// \brief The `count` largest logits of each row and their tokens, most likely first (ties by
/// the smaller token), on the execution space: what sampling with top-k needs of a row, so that
/// the row itself stays where it is. Rows with fewer than `count` numbers end with token -1 and
/// value 0. Asynchronous.
/// \tparam ExecSpace a Kokkos execution space. \tparam T logit storage type.
/// \tparam MemSpace memory space of the views.
/// \param space the execution space instance. \param logits (B, V).
/// \param tokens (B, count) out. \param values (B, count) out.
/// \throws ssm::error if tokens and values are not (B, count).
template <class ExecSpace, class T, class MemSpace>
void top_logits(ExecSpace const& space, view2<const T, MemSpace> const& logits, view2<std::int32_t, MemSpace> const& tokens,
                view2<float, MemSpace> const& values) {
  static_assert(is_accessible_v<ExecSpace, MemSpace>, "ssm::top_logits: the views must be accessible from the space");
  detail::require(tokens.extent(0) == logits.extent(0) && values.extent(0) == logits.extent(0) &&
                      values.extent(1) == tokens.extent(1),
                  "ssm::top_logits", "tokens and values must be (B, count) for logits (B, V)");
  if (logits.extent(0) == 0 || tokens.extent(1) == 0) return;
  token_choice_backend<ExecSpace>::top(space, logits, tokens, values);
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
      detail::run_step(decode, space, step, first);
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

  // Off the host with top-k on, only each row's largest logits and those of the tokens in its
  // penalty window come back: the sampler's chain on them equals the chain on the whole row.
  std::size_t const count = std::min(samplers.front().candidates(std::numeric_limits<std::size_t>::max()), V);
  if (!is_accessible_v<Kokkos::DefaultHostExecutionSpace, memory_space> && count > 0) {
    std::size_t const window = options.sampling.repeat_penalty == 1.0f ? 0 : static_cast<std::size_t>(options.sampling.repeat_last_n);
    Kokkos::View<std::int32_t**, Kokkos::LayoutRight, memory_space> top_tokens("ssm::generate::top_tokens", B, count);
    Kokkos::View<float**, Kokkos::LayoutRight, memory_space> top_values("ssm::generate::top_values", B, count);
    Kokkos::View<std::int32_t**, Kokkos::LayoutRight, memory_space> window_tokens("ssm::generate::window_tokens", B, window);
    Kokkos::View<float**, Kokkos::LayoutRight, memory_space> window_values("ssm::generate::window_values", B, window);
    auto h_top_tokens = Kokkos::create_mirror_view(top_tokens);
    auto h_top_values = Kokkos::create_mirror_view(top_values);
    auto h_window_tokens = Kokkos::create_mirror_view(window_tokens);
    auto h_window_values = Kokkos::create_mirror_view(window_values);
    auto const choose = [&] {
      top_logits(space, view2<const T, memory_space>(logits), view2<std::int32_t, memory_space>(top_tokens),
                 view2<float, memory_space>(top_values));
    };
    graph<ExecSpace> decode;
    auto const step = [&] {
      model.step(space, tokens, logits, cache, /*check_ids=*/false);  // chosen from the logits' own tokens
      choose();
    };
    choose();
    for (bool first = true;; first = false) {
      Kokkos::deep_copy(h_top_tokens, top_tokens);
      Kokkos::deep_copy(h_top_values, top_values);
      if (window > 0) {  // the logits of each row's last `window` tokens (-1: none)
        for (std::size_t b = 0; b < B; ++b)
          for (std::size_t i = 0; i < window; ++i)
            h_window_tokens(b, i) = i < history[b].size() ? history[b][history[b].size() - 1 - i] : -1;
        Kokkos::deep_copy(window_tokens, h_window_tokens);
        auto const ids = window_tokens;
        auto const values = window_values;
        auto const rows = logits;
        Kokkos::parallel_for(
            "ssm::generate::window_logits",
            Kokkos::MDRangePolicy<ExecSpace, Kokkos::Rank<2>>(space, {0, 0}, {static_cast<long>(B), static_cast<long>(window)}),
            KOKKOS_LAMBDA(long const b, long const i) {
              std::int32_t const id = ids(b, i);
              values(b, i) = id >= 0 && static_cast<std::size_t>(id) < V ? to_float(rows(b, id)) : 0.0f;
            });
        Kokkos::deep_copy(h_window_values, window_values);
      }
      accept([&](std::size_t b) {
        std::vector<std::pair<std::int32_t, float>> pairs;
        for (std::size_t i = 0; i < count && h_top_tokens(b, i) >= 0; ++i) pairs.emplace_back(h_top_tokens(b, i), h_top_values(b, i));
        for (std::size_t i = 0; i < window; ++i) {
          std::int32_t const id = h_window_tokens(b, i);
          bool const known = std::any_of(pairs.begin(), pairs.end(), [&](auto const& pair) { return pair.first == id; });
          if (id >= 0 && !known) pairs.emplace_back(id, h_window_values(b, i));
        }
        std::int32_t const next = samplers[b].sample(pairs, history[b]);
        history[b].push_back(next);
        h_tokens(b) = next;
        return next;
      });
      if (active == 0) break;
      Kokkos::deep_copy(tokens, h_tokens);
      detail::run_step(decode, space, step, first);
    }
    return out;
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

#if defined(KOKKOS_ENABLE_CUDA)
#include <ssm/model/cuda/token_choice.cuh>
#endif
