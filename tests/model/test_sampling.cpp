// The sampling chain on constructed logits whose right distribution is known by hand, and
// generation for a batch of prompts against one prompt at a time.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include <ssm/model/checkpoint.hpp>
#include <ssm/model/generate.hpp>
#include <ssm/model/sampling.hpp>
#include <ssm/model/scoring.hpp>

#include "catch.hpp"
#include "support.hpp"

using namespace ssm;

namespace {

/// Logits whose softmax is exactly `p` (up to rounding): log p.
std::vector<float> logits_of(std::vector<double> const& p) {
  std::vector<float> x;
  for (double q : p) x.push_back(static_cast<float>(std::log(q)));
  return x;
}

sampling_params neutral() {  // every filter off, temperature 1
  sampling_params s;
  s.temperature = 1.0f, s.top_k = 0, s.top_p = 1.0f, s.min_p = 0.0f, s.repeat_penalty = 1.0f;
  return s;
}

std::vector<std::int32_t> kept_ids(std::vector<std::pair<std::int32_t, double>> const& d) {
  std::vector<std::int32_t> ids;
  for (auto const& [id, p] : d) ids.push_back(id);
  return ids;
}

}  // namespace

TEST_CASE("sampling: temperature 0 is argmax, ties going to the smaller id", "[sampling]") {
  auto s = neutral();
  s.temperature = 0.0f;
  sampler greedy(s);
  std::vector<float> const x = {0.5f, 2.0f, -1.0f, 2.0f};
  REQUIRE(greedy.sample(x, {}) == 1);
  REQUIRE(greedy.distribution(x, {}) == std::vector<std::pair<std::int32_t, double>>{{1, 1.0}});
}

TEST_CASE("sampling: top-k keeps the k largest, renormalized", "[sampling]") {
  auto s = neutral();
  s.top_k = 2;
  std::vector<float> const x = {1, 5, 3, 4, 2};
  auto const d = sampler(s).distribution(x, {});
  REQUIRE(kept_ids(d) == std::vector<std::int32_t>{1, 3});
  double const e = std::exp(1.0);  // softmax of (5, 4): e / (e + 1), 1 / (e + 1)
  REQUIRE(d[0].second == Approx(e / (e + 1.0)).epsilon(1e-12));
  REQUIRE(d[1].second == Approx(1.0 / (e + 1.0)).epsilon(1e-12));
}

TEST_CASE("sampling: top-p keeps exactly the smallest prefix that reaches p", "[sampling]") {
  std::vector<float> const x = logits_of({0.5, 0.2, 0.15, 0.1, 0.05});
  auto s = neutral();
  for (auto [p, expected] : {std::pair<float, std::size_t>{0.4f, 1}, {0.5001f, 2}, {0.75f, 3}, {0.86f, 4}, {0.96f, 5}}) {
    s.top_p = p;
    auto const d = sampler(s).distribution(x, {});
    INFO("top_p " << p);
    REQUIRE(d.size() == expected);
    double total = 0.0;
    for (std::size_t i = 0; i < d.size(); ++i) {
      REQUIRE(d[i].first == static_cast<std::int32_t>(i));
      total += d[i].second;
    }
    REQUIRE(total == Approx(1.0));
  }
}

TEST_CASE("sampling: min-p keeps the tokens at least min_p times as likely as the best", "[sampling]") {
  std::vector<float> const x = logits_of({0.5, 0.2, 0.15, 0.1, 0.05});
  auto s = neutral();
  s.min_p = 0.25f;  // threshold 0.125: keeps 0.5, 0.2, 0.15
  REQUIRE(kept_ids(sampler(s).distribution(x, {})) == std::vector<std::int32_t>{0, 1, 2});
  s.min_p = 0.45f;  // threshold 0.225: keeps 0.5 alone
  REQUIRE(kept_ids(sampler(s).distribution(x, {})) == std::vector<std::int32_t>{0});
}

TEST_CASE("sampling: temperature T samples from p^(1/T), renormalized", "[sampling]") {
  std::vector<double> const p = {0.5, 0.3, 0.2};
  auto s = neutral();
  s.temperature = 2.0f;
  auto const d = sampler(s).distribution(logits_of(p), {});
  double norm = 0.0;
  for (double q : p) norm += std::sqrt(q);
  for (std::size_t i = 0; i < p.size(); ++i) REQUIRE(d[i].second == Approx(std::sqrt(p[i]) / norm).epsilon(1e-6));
}

TEST_CASE("sampling: the repetition penalty divides positive and multiplies negative logits of recent tokens", "[sampling]") {
  auto s = neutral();
  s.temperature = 0.0f;
  s.repeat_penalty = 4.0f;
  s.repeat_last_n = 2;
  std::vector<float> const x = {2.0f, -2.0f, 1.0f};
  std::vector<std::int32_t> const history = {2, 0, 1};  // the last two: 0 and 1
  // penalised: 2 / 4 = 0.5 and -2 * 4 = -8; token 2 (1.0, not in the last two) now wins
  REQUIRE(sampler(s).sample(x, history) == 2);
  s.repeat_last_n = 0;
  REQUIRE(sampler(s).sample(x, history) == 0);
}

TEST_CASE("sampling: frequencies follow the distribution, and a seed reproduces the draws", "[sampling]") {
  std::vector<double> const p = {0.5, 0.3, 0.2};
  auto s = neutral();
  s.seed = 1234;
  sampler a(s), b(s);
  std::vector<int> counts(3, 0);
  int const n = 20000;
  std::vector<std::int32_t> draws;
  for (int i = 0; i < n; ++i) {
    auto const t = a.sample(logits_of(p), {});
    ++counts[t];
    draws.push_back(t);
  }
  for (std::size_t i = 0; i < p.size(); ++i) {
    double const sigma = std::sqrt(n * p[i] * (1 - p[i]));
    REQUIRE(std::abs(counts[i] - n * p[i]) < 5 * sigma);  // five standard deviations
  }
  for (int i = 0; i < 200; ++i) REQUIRE(b.sample(logits_of(p), {}) == draws[i]);
  s.seed = 1235;
  sampler c(s);
  int same = 0;
  for (int i = 0; i < 200; ++i) same += c.sample(logits_of(p), {}) == draws[i];
  REQUIRE(same < 150);
}

TEST_CASE("sampling: the k largest logits and the penalty window's give the whole row's chain", "[sampling]") {
  // What generation on a GPU brings back of a row (ssm::top_logits and the window's logits),
  // against the chain on the whole row, over random rows, penalties above and below 1, and
  // histories that reach far down the order.
  std::mt19937_64 rng(5);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  for (int trial = 0; trial < 200; ++trial) {
    sampling_params s;
    s.top_k = 1 + trial % 17;
    s.top_p = trial % 3 == 0 ? 1.0f : 0.9f;
    s.min_p = trial % 4 == 0 ? 0.0f : 0.02f;
    s.repeat_penalty = trial % 2 == 0 ? 1.7f : 0.6f;
    s.repeat_last_n = 1 + trial % 9;
    s.seed = static_cast<std::uint64_t>(trial);
    std::vector<float> row(300);
    for (auto& x : row) x = normal(rng);
    if (trial % 5 == 0) row[7] = row[8] = row[9];  // ties
    std::vector<std::int32_t> history;
    for (int i = 0; i < 12; ++i) history.push_back(static_cast<std::int32_t>(rng() % row.size()));

    sampler whole(s), part(s);
    std::vector<std::int32_t> order(row.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = static_cast<std::int32_t>(i);
    std::sort(order.begin(), order.end(), [&](auto a, auto b) { return row[a] > row[b] || (row[a] == row[b] && a < b); });
    std::size_t const count = part.candidates(history.size());
    REQUIRE(count == static_cast<std::size_t>(s.top_k) + std::min<std::size_t>(history.size(), s.repeat_last_n));
    std::vector<std::pair<std::int32_t, float>> pairs;
    for (std::size_t i = 0; i < count; ++i) pairs.emplace_back(order[i], row[order[i]]);
    for (std::size_t i = history.size() - std::min<std::size_t>(history.size(), s.repeat_last_n); i < history.size(); ++i) {
      std::int32_t const id = history[i];
      if (std::none_of(pairs.begin(), pairs.end(), [&](auto const& p) { return p.first == id; })) pairs.emplace_back(id, row[id]);
    }
    CAPTURE(trial);
    REQUIRE(part.distribution(pairs, history) == whole.distribution(row, history));
    for (int draw = 0; draw < 5; ++draw) REQUIRE(part.sample(pairs, history) == whole.sample(row, history));
  }
}

namespace {

template <class Layout>
void check_row_maxima() {
  // Rows whose lengths are not multiples of the runs a thread reads, with ties, NaN, infinities,
  // signed zeros and a row of NaN only; the oracle is a plain sort, largest first and ties by the
  // smaller token.
  std::mt19937_64 rng(11);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (int V : {1, 7, 37, 301, 4099}) {
    int const B = 5, count = std::min(V, 6);
    Kokkos::View<float**, Layout, Kokkos::HostSpace> logits("logits", B, V);
    for (int b = 0; b < B; ++b)
      for (int v = 0; v < V; ++v) logits(b, v) = normal(rng);
    for (int v = 0; v < V; ++v) logits(3, v) = -std::abs(logits(3, v)) - 1.0f;  // every logit negative
    for (int v = 0; v < V; ++v) logits(4, v) = std::nanf("");                    // no number at all
    if (V > 30) {
      logits(0, 3) = logits(0, 29) = 50.0f;  // a tie for the first place: the smaller token wins
      logits(1, 5) = std::nanf("");
      logits(1, 6) = std::numeric_limits<float>::infinity();
      logits(2, V - 1) = 40.0f;  // the last token, in the final partial run
      logits(3, 10) = -0.0f;     // signed zeros tie: the smaller token wins
      logits(3, 20) = 0.0f;
      logits(3, 30) = -std::numeric_limits<float>::infinity();
    }
    Kokkos::View<std::int32_t*, Kokkos::HostSpace> tokens("tokens", B);
    Kokkos::View<std::int32_t**, Kokkos::HostSpace> top("top", B, count);
    Kokkos::View<float**, Kokkos::HostSpace> values("values", B, count);
    test::space const exec;
    argmax_rows(exec, view2<const float, test::memory>(logits), view1<std::int32_t, test::memory>(tokens));
    top_logits(exec, view2<const float, test::memory>(logits), view2<std::int32_t, test::memory>(top),
               view2<float, test::memory>(values));
    exec.fence();
    for (int b = 0; b < B; ++b) {
      std::vector<int> order;
      for (int v = 0; v < V; ++v)
        if (!std::isnan(logits(b, v))) order.push_back(v);
      std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return logits(b, x) > logits(b, y); });
      CAPTURE(V, b);
      REQUIRE(tokens(b) == (order.empty() ? -1 : order[0]));
      for (int i = 0; i < count; ++i) {
        if (i >= static_cast<int>(order.size())) {
          REQUIRE(top(b, i) == -1);
          continue;
        }
        REQUIRE(top(b, i) == order[i]);
        REQUIRE(values(b, i) == logits(b, order[i]));
      }
    }
  }
}

}  // namespace

TEST_CASE("sampling: argmax_rows and top_logits on the execution space agree with a sort of each row", "[sampling]") {
  check_row_maxima<Kokkos::LayoutRight>();  // contiguous rows (the host's vectorized argmax)
  check_row_maxima<Kokkos::LayoutLeft>();   // strided rows (a team per row everywhere)
}

TEST_CASE("scoring: log_softmax_rows on the execution space agrees with log_softmax_at", "[sampling][score]") {
  // What score_tokens does with logits off the host, run here on the host space: the oracle is
  // the host's own per-row loop in double. Rows of large logits (e^80 overflows a float, not a
  // double), a row holding -inf and NaN, targets at both ends and -1 (no target: 0).
  std::mt19937_64 rng(5);
  std::normal_distribution<float> normal(0.0f, 20.0f);
  for (int V : {1, 37, 4099}) {
    int const L = 6;
    Kokkos::View<float**, Kokkos::LayoutRight, Kokkos::HostSpace> logits("logits", L, V);
    Kokkos::View<std::int32_t*, Kokkos::HostSpace> targets("targets", L);
    Kokkos::View<double*, Kokkos::HostSpace> logprob("logprob", L);
    for (int l = 0; l < L; ++l)
      for (int v = 0; v < V; ++v) logits(l, v) = normal(rng);
    logits(1, V - 1) = 80.0f;
    logits(2, 0) = -std::numeric_limits<float>::infinity();
    logits(3, V / 2) = std::nanf("");  // the row's log-probabilities are NaN, as on the host
    int const picks[L] = {0, V - 1, V / 2, 0, -1, V / 3};
    for (int l = 0; l < L; ++l) targets(l) = picks[l];
    test::space const exec;
    detail::log_softmax_rows(exec, view2<const float, test::memory>(logits), view1<const std::int32_t, test::memory>(targets),
                             view1<double, test::memory>(logprob));
    exec.fence();
    for (int l = 0; l < L; ++l) {
      CAPTURE(V, l);
      if (picks[l] < 0) {
        REQUIRE(logprob(l) == 0.0);
        continue;
      }
      double const expected = detail::log_softmax_at(&logits(l, 0), static_cast<std::size_t>(V), static_cast<std::size_t>(picks[l]));
      if (std::isnan(expected)) {
        REQUIRE(std::isnan(logprob(l)));
        continue;
      }
      REQUIRE(std::abs(logprob(l) - expected) <= 1e-12 * (1.0 + std::abs(expected)));
    }
  }
}

TEST_CASE("sampling: options out of range are refused", "[sampling][errors]") {
  auto s = neutral();
  s.top_p = 0.0f;
  REQUIRE_THROWS_WITH(sampler(s), Catch::Contains("--top-p"));
  s = neutral();
  s.temperature = -1.0f;
  REQUIRE_THROWS_WITH(sampler(s), Catch::Contains("--temp"));
  s = neutral();
  s.repeat_penalty = 0.0f;
  REQUIRE_THROWS_WITH(sampler(s), Catch::Contains("--repeat-penalty"));
}

TEST_CASE("generation: a batch of prompts of different lengths equals each prompt alone", "[generate]") {
  using test::memory;
  using test::space;
  mamba_lm<space, float, float> const model(load_checkpoint<float, memory>(std::string(SSM_FIXTURE_DIR) + "/mamba_tiny"));
  std::vector<std::vector<std::int32_t>> const prompts = {{5}, {9, 33, 1, 70, 2}, {100, 3, 4, 5, 6, 7, 8, 9, 10}};
  for (float temperature : {0.0f, 0.9f}) {
    generation_options options;
    options.max_tokens = 12;
    options.sampling.temperature = temperature;
    options.sampling.top_k = 20;
    options.sampling.seed = 7;
    std::vector<std::vector<std::int32_t>> streamed(prompts.size());
    auto const batch = generate(model, prompts, options, [&](std::size_t b, std::int32_t t) {
      streamed[b].push_back(t);
      return true;
    });
    REQUIRE(streamed == batch);  // the callback saw every token, in order
    for (std::size_t b = 0; b < prompts.size(); ++b) {
      auto alone_options = options;
      alone_options.sampling.seed = options.sampling.seed + b;  // sequence b's seed
      auto const alone = generate(model, {prompts[b]}, alone_options);
      INFO("temperature " << temperature << ", prompt " << b);
      REQUIRE(batch[b].size() == 12);
      REQUIRE(alone.front() == batch[b]);
      if (temperature == 0.0f)
        REQUIRE(batch[b] == generate_greedy(model, std::span<std::int32_t const>(prompts[b]), 12));
    }
  }
}

TEST_CASE("generation: a sequence stops at the end-of-text token, the others go on", "[generate]") {
  using test::memory;
  using test::space;
  mamba_lm<space, float, float> const model(load_checkpoint<float, memory>(std::string(SSM_FIXTURE_DIR) + "/mamba_tiny"));
  std::vector<std::vector<std::int32_t>> const prompts = {{5}, {9, 33, 1}};
  generation_options options;
  options.max_tokens = 10;
  options.sampling.temperature = 0.0f;
  auto const free_run = generate(model, prompts, options);
  options.eos = free_run[0][3];  // make sequence 0's fourth token the end of text
  auto const stopped = generate(model, prompts, options);
  auto const first = std::find(free_run[0].begin(), free_run[0].end(), *options.eos) - free_run[0].begin();
  REQUIRE(stopped[0].size() == static_cast<std::size_t>(first) + 1);
  REQUIRE(stopped[0].back() == *options.eos);
  auto const in_second = std::find(free_run[1].begin(), free_run[1].end(), *options.eos);
  REQUIRE(stopped[1].size() == (in_second == free_run[1].end() ? 10u : static_cast<std::size_t>(in_second - free_run[1].begin()) + 1));
}
