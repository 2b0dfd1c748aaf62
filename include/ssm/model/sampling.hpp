#pragma once
/// \file
/// \brief Choosing the next token from logits: repetition penalty, top-k, top-p, min-p and
/// temperature, seeded and reproducible, in llama.cpp's order and with its option names.
///
/// The chain, on one row of logits \f$x\f$ (V values):
/// 1. repetition penalty \f$\rho\f$ on the last `repeat_last_n` tokens of the history:
///    \f$x_v \leftarrow x_v / \rho\f$ if \f$x_v > 0\f$, else \f$x_v \rho\f$ (CTRL's rule, as llama.cpp);
/// 2. top-k: keep the k largest logits;
/// 3. top-p: keep the smallest set of most likely tokens whose probability (softmax of the kept
///    logits) reaches p;
/// 4. min-p: keep the tokens whose probability is at least min_p times the largest;
/// 5. temperature T: sample from softmax(x / T) over what is kept. T = 0 is greedy (argmax).
///
/// Random numbers come from a seeded 64-bit Mersenne Twister turned into doubles by bit
/// arithmetic (not `std::uniform_real_distribution`, whose output differs between standard
/// libraries), so a seed gives the same tokens on every platform.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <span>
#include <utility>
#include <vector>

#include <ssm/core/error.hpp>

namespace ssm {

/// \brief Options of the sampling chain, with llama.cpp's names and neutral defaults.
struct sampling_params {
  float temperature = 0.8f;     ///< T; 0 means greedy decoding
  int top_k = 40;               ///< keep the k most likely tokens; 0 keeps all
  float top_p = 0.95f;          ///< nucleus: the smallest prefix reaching p; 1 keeps all
  float min_p = 0.05f;          ///< keep tokens with p >= min_p * p_max; 0 keeps all
  float repeat_penalty = 1.0f;  ///< CTRL repetition penalty; 1 is off
  int repeat_last_n = 64;       ///< how many past tokens the penalty looks at
  std::uint64_t seed = 0;       ///< seed of the random numbers

  /// \brief Throw `ssm::error` naming the first option out of range.
  void validate() const {
    auto const require = [](bool ok, char const* what) {
      if (!ok) throw error(std::string("sampling: ") + what);
    };
    require(temperature >= 0.0f && std::isfinite(temperature), "--temp must be a finite number >= 0");
    require(top_k >= 0, "--top-k must be >= 0");
    require(top_p > 0.0f && top_p <= 1.0f, "--top-p must be in (0, 1]");
    require(min_p >= 0.0f && min_p <= 1.0f, "--min-p must be in [0, 1]");
    require(repeat_penalty > 0.0f && std::isfinite(repeat_penalty), "--repeat-penalty must be a finite number > 0");
    require(repeat_last_n >= 0, "--repeat-last-n must be >= 0");
  }
};

/// \brief The sampling chain with its own random state: one per generated sequence.
class sampler {
 public:
  /// \brief A sampler with the given options. \param params the options (validated).
  /// \throws ssm::error for an option out of range.
  explicit sampler(sampling_params const& params) : params_(params), rng_(params.seed) { params_.validate(); }

  /// \brief The distribution the chain samples from: the kept tokens and their probabilities
  /// (summing to one), most likely first. Exposed so that each step of the chain can be tested.
  /// \param logits (V) one row of logits. \param history the tokens so far (for the penalty).
  /// \return (token, probability) pairs, most likely first; a single pair with probability 1
  ///         for greedy decoding.
  std::vector<std::pair<std::int32_t, double>> distribution(std::span<float const> logits,
                                                            std::span<std::int32_t const> history) const {
    detail::require(!logits.empty(), "ssm::sampler", "the logits are empty");
    std::vector<std::pair<std::int32_t, double>> all(logits.size());
    for (std::size_t v = 0; v < logits.size(); ++v) all[v] = {static_cast<std::int32_t>(v), logits[v]};
    return distribution_of(std::move(all), history);
  }

  /// \brief The same distribution from a subset of the logits: the `candidates(history_size)`
  /// largest logits and the logits of every token of the penalty's window, as (token, logit)
  /// pairs in any order, each token once. It equals `distribution` of the whole row whenever
  /// top-k is on: whatever the penalty does, the k tokens it keeps are among these.
  /// \param logits the (token, logit) pairs. \param history the tokens so far.
  /// \return as `distribution`.
  std::vector<std::pair<std::int32_t, double>> distribution(std::vector<std::pair<std::int32_t, float>> const& logits,
                                                            std::span<std::int32_t const> history) const {
    detail::require(!logits.empty(), "ssm::sampler", "the logits are empty");
    return distribution_of({logits.begin(), logits.end()}, history);
  }

  /// \brief How many of the largest logits `distribution` needs beside the penalty's window, or
  /// 0 when it needs the whole row (top-k off).
  /// \param history_size the number of tokens so far.
  /// \return k plus the window's length, or 0.
  std::size_t candidates(std::size_t history_size) const {
    if (params_.top_k <= 0) return params_.temperature == 0.0f ? 1 : 0;
    std::size_t const window = params_.repeat_penalty == 1.0f ? 0 : std::min(history_size, static_cast<std::size_t>(params_.repeat_last_n));
    return static_cast<std::size_t>(params_.top_k) + window;
  }

  /// \brief Choose the next token, advancing the random state (except for greedy decoding).
  /// \param logits (V) one row of logits. \param history the tokens so far.
  /// \return the chosen token.
  std::int32_t sample(std::span<float const> logits, std::span<std::int32_t const> history) {
    return draw(distribution(logits, history));
  }

  /// \brief Choose the next token from a subset of the logits (see the `distribution` taking
  /// pairs), advancing the random state as `sample` of the whole row does.
  /// \param logits the (token, logit) pairs. \param history the tokens so far.
  /// \return the chosen token.
  std::int32_t sample(std::vector<std::pair<std::int32_t, float>> const& logits, std::span<std::int32_t const> history) {
    return draw(distribution(logits, history));
  }

  /// \brief The options. \return them.
  sampling_params const& params() const { return params_; }

 private:
  /// The chain on (token, logit) pairs: penalty, top-k, top-p, min-p, temperature.
  std::vector<std::pair<std::int32_t, double>> distribution_of(std::vector<std::pair<std::int32_t, double>> x,
                                                               std::span<std::int32_t const> history) const {
    if (params_.repeat_penalty != 1.0f) {
      std::size_t const n = std::min(history.size(), static_cast<std::size_t>(params_.repeat_last_n));
      std::vector<std::int32_t> window(history.end() - static_cast<long>(n), history.end());
      std::sort(window.begin(), window.end());
      for (auto& [id, value] : x)
        if (std::binary_search(window.begin(), window.end(), id))
          value = value > 0.0 ? value / params_.repeat_penalty : value * params_.repeat_penalty;
    }
    // most likely first; ties by the smaller id, so the order (and greedy choice) is well defined
    auto const by_logit = [](auto const& a, auto const& b) {
      return a.second > b.second || (a.second == b.second && a.first < b.first);
    };
    if (params_.temperature == 0.0f) return {{std::min_element(x.begin(), x.end(), by_logit)->first, 1.0}};
    std::size_t kept = x.size();
    if (params_.top_k > 0 && static_cast<std::size_t>(params_.top_k) < kept) {
      kept = static_cast<std::size_t>(params_.top_k);
      std::partial_sort(x.begin(), x.begin() + static_cast<long>(kept), x.end(), by_logit);
    } else {
      std::sort(x.begin(), x.end(), by_logit);
    }
    x.resize(kept);
    auto probabilities = [&](double temperature) {  // softmax of the kept logits
      std::vector<double> p(x.size());
      double const max = x.front().second;
      double sum = 0.0;
      for (std::size_t i = 0; i < x.size(); ++i) sum += p[i] = std::exp((x[i].second - max) / temperature);
      for (auto& q : p) q /= sum;
      return p;
    };
    if (params_.top_p < 1.0f) {
      auto const p = probabilities(1.0);
      double cumulative = 0.0;
      std::size_t i = 0;
      while (i < p.size()) {
        cumulative += p[i++];
        if (cumulative >= params_.top_p) break;
      }
      x.resize(i);
    }
    if (params_.min_p > 0.0f) {
      auto const p = probabilities(1.0);
      std::size_t i = 1;
      while (i < p.size() && p[i] >= params_.min_p * p[0]) ++i;
      x.resize(i);
    }
    auto const p = probabilities(params_.temperature);
    std::vector<std::pair<std::int32_t, double>> result;
    for (std::size_t i = 0; i < x.size(); ++i) result.emplace_back(x[i].first, p[i]);
    return result;
  }

  /// Draw from a distribution with the next random number (none for greedy decoding).
  std::int32_t draw(std::vector<std::pair<std::int32_t, double>> const& d) {
    if (params_.temperature == 0.0f) return d.front().first;
    double const u = static_cast<double>(rng_() >> 11) * 0x1p-53;  // uniform in [0, 1), the same everywhere
    double cumulative = 0.0;
    for (auto const& [id, p] : d) {
      cumulative += p;
      if (u < cumulative) return id;
    }
    return d.back().first;  // u within rounding of 1
  }

  sampling_params params_;
  std::mt19937_64 rng_;
};

}  // namespace ssm
