// The host's AVX2 twins of portable loops, each against the portable loop and an independent
// oracle: the matrix-vector product (`host::detail::dot_row_avx2`) and the state update
// (`detail::update_channel_avx2`) against sums in double precision, and `avx2::exp8` against
// `fast_exp` and `std::exp`. The twins compute the same partial sums in the same order, but
// whether the portable loops' multiply-adds are fused depends on the optimisation level, so the
// bounds are those of fp32 arithmetic, not equal bits. This program alone is compiled with AVX2,
// FMA and F16C, so that the release build, which targets no x86 level, still tests the `avx2`
// paths.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <ssm/core/avx2.hpp>
#include <ssm/core/math.hpp>
#include <ssm/linear/host_gemv.hpp>
#include <ssm/scan/state_update.hpp>

#include "catch.hpp"

using namespace ssm;

static_assert(avx2::available, "this program is compiled with -mavx2 -mfma -mf16c");

namespace {

template <class Wt>
void check_rows(std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(-2.0f, 2.0f);
  for (int K : {0, 1, 7, 31, 32, 33, 64, 95, 768, 2567}) {
    std::vector<Wt> w(static_cast<std::size_t>(K));
    std::vector<float> x(static_cast<std::size_t>(K));
    for (auto& v : w) v = from_float<Wt>(dist(rng));
    for (auto& v : x) v = dist(rng);
    float const init = dist(rng);
    auto const ahead = reinterpret_cast<std::uintptr_t>(w.data()) + host::prefetch_bytes;
    float const fast = host::detail::dot_row_avx2(w.data(), x.data(), K, init, ahead);
    float const portable = host::detail::dot_row_portable(w.data(), x.data(), K, init, ahead);
    double exact = init, magnitude = std::abs(static_cast<double>(init));
    for (int k = 0; k < K; ++k) {
      double const term = static_cast<double>(to_float(w[static_cast<std::size_t>(k)])) * x[static_cast<std::size_t>(k)];
      exact += term;
      magnitude += std::abs(term);
    }
    // K + 1 terms, each sum rounded in fp32: at most (K + 1) u times the sum of magnitudes
    double const bound = 2.0 * (K + 1) * 0x1p-24 * magnitude;
    INFO("K = " << K << ": avx2 " << fast << ", portable " << portable << ", exact " << exact);
    REQUIRE(std::abs(fast - exact) <= bound);
    REQUIRE(std::abs(portable - exact) <= bound);
    REQUIRE(std::abs(fast - portable) <= bound);
  }
}


/// The CPU can run the AVX2 paths; otherwise the test says so and checks nothing.
bool cpu_has_avx2() {
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) return true;
  WARN("this CPU has no AVX2, FMA or F16C: nothing to check");
  return false;
}

float exp8_lane(float x) {
  float lanes[8];
  _mm256_storeu_ps(lanes, avx2::exp8(_mm256_set1_ps(x)));
  return lanes[0];
}

/// One channel's update by both paths, over several N, against the same step in double precision.
template <class T>
void check_channel(std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  for (int N : {1, 7, 8, 9, 16, 17, 40}) {
    std::vector<float> h(static_cast<std::size_t>(N)), a(h.size());
    std::vector<T> b(h.size()), c(h.size());
    for (std::size_t n = 0; n < h.size(); ++n) {
      h[n] = 4.0f * normal(rng);
      a[n] = n % 5 == 4 ? 0.5f * uniform(rng) : -std::exp(3.0f * uniform(rng));  // mostly decays, some growth
      b[n] = from_float<T>(normal(rng));
      c[n] = from_float<T>(normal(rng));
    }
    float const dt = 0.01f + 2.0f * uniform(rng), x = normal(rng);
    // the step in double from the same fp32 inputs, and a bound on fp32's error: the decay to 2
    // units (fast_exp), dt x and its product with B to 1 each, the update to 1, and the N terms
    // of C h to N units of the sum of their magnitudes
    std::vector<double> exact(h.size()), bound(h.size());
    double y = 0.0, y_bound = 0.0;
    for (std::size_t n = 0; n < h.size(); ++n) {
      double const decayed = std::exp(static_cast<double>(dt) * a[n]) * h[n];
      double const input = static_cast<double>(dt) * x * to_float(b[n]);
      exact[n] = decayed + input;
      bound[n] = 6.0 * 0x1p-24 * (std::abs(decayed) + std::abs(input));
      y += to_float(c[n]) * exact[n];
      y_bound += std::abs(to_float(c[n])) * (std::abs(exact[n]) + bound[n]);
    }
    y_bound = (N + 7) * 0x1p-24 * y_bound;
    auto fast_h = h, portable_h = h;
    float const fast = ssm::detail::update_channel_avx2(fast_h.data(), a.data(), b.data(), c.data(), N, dt, x);
    float const portable = ssm::detail::update_channel_portable(portable_h.data(), a.data(), b.data(), c.data(), N, dt, x);
    INFO("N = " << N << ": avx2 " << fast << ", portable " << portable << ", exact " << y);
    for (std::size_t n = 0; n < h.size(); ++n) {
      INFO("state " << n << ": avx2 " << fast_h[n] << ", portable " << portable_h[n] << ", exact " << exact[n]);
      REQUIRE(std::abs(fast_h[n] - exact[n]) <= bound[n]);
      REQUIRE(std::abs(portable_h[n] - exact[n]) <= bound[n]);
    }
    REQUIRE(std::abs(fast - y) <= y_bound);
    REQUIRE(std::abs(portable - y) <= y_bound);
  }
}

/// Runs of channels (`update_channels_avx2`): channel by channel the bits of one channel at a time
/// (`update_channel_avx2`), so that taking four channels together mixes nothing between them.
template <class T>
void check_runs(std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  for (int N : {1, 7, 8, 16, 17, 40, 256})
    for (int count : {1, 3, 4, 5, 16}) {
      std::size_t const states = static_cast<std::size_t>(N) * static_cast<std::size_t>(count);
      std::vector<float> h(states), a(states), dt(static_cast<std::size_t>(count)), x(dt.size()), y(dt.size());
      std::vector<T> b(static_cast<std::size_t>(N)), c(b.size());
      for (std::size_t i = 0; i < states; ++i) {
        h[i] = 4.0f * normal(rng);
        a[i] = -std::exp(3.0f * uniform(rng));
      }
      for (std::size_t n = 0; n < b.size(); ++n) b[n] = from_float<T>(normal(rng)), c[n] = from_float<T>(normal(rng));
      for (std::size_t j = 0; j < dt.size(); ++j) dt[j] = 0.01f + 2.0f * uniform(rng), x[j] = normal(rng);
      auto one_by_one = h;
      ssm::detail::update_channels_avx2(h.data(), a.data(), b.data(), c.data(), N, count, dt.data(), x.data(), y.data());
      for (int j = 0; j < count; ++j) {
        std::size_t const row = static_cast<std::size_t>(j) * static_cast<std::size_t>(N);
        float const expected = ssm::detail::update_channel_avx2(one_by_one.data() + row, a.data() + row, b.data(),
                                                                c.data(), N, dt[static_cast<std::size_t>(j)],
                                                                x[static_cast<std::size_t>(j)]);
        INFO("N = " << N << ", " << count << " channels, channel " << j);
        REQUIRE(y[static_cast<std::size_t>(j)] == expected);
      }
      REQUIRE(h == one_by_one);
    }
}

}  // namespace

TEST_CASE("host exp8: fast_exp's values, within 2 units of the exact exponential, and its limits", "[math][avx2]") {
  if (!cpu_has_avx2()) return;
  // every 997th bit pattern of the whole float range, both signs: NaN, infinities and zeros too
  double worst = 0.0;
  for (std::uint64_t wide = 0; wide <= 0xFFFFFFFFu; wide += 997u) {
    auto const bits = static_cast<std::uint32_t>(wide);
    float x;
    std::memcpy(&x, &bits, sizeof x);
    float const fast = exp8_lane(x), portable = fast_exp(x);
    INFO("x = " << x << ": exp8 " << fast << ", fast_exp " << portable);
    if (std::isnan(x)) {
      REQUIRE(std::isnan(fast));
    } else if (x < -87.0f) {
      REQUIRE(fast == 0.0f);
      REQUIRE(portable == 0.0f);
    } else if (x > 88.3f) {
      REQUIRE(fast == std::numeric_limits<float>::infinity());
      REQUIRE(portable == std::numeric_limits<float>::infinity());
    } else {
      double const exact = std::exp(static_cast<double>(x));
      worst = std::fmax(worst, std::abs(fast - exact) / exact / 0x1p-24);
      REQUIRE(std::abs(fast - portable) <= 2.0 * 0x1p-24 * exact);
    }
  }
  INFO("worst relative error " << worst << " x 2^-24");
  CHECK(worst <= 2.0);
  CHECK(exp8_lane(0.0f) == 1.0f);
  CHECK(exp8_lane(-87.0f) > 0.0f);
}

TEST_CASE("host update_channel: the AVX2 path and the portable loop against a step in double precision",
          "[state_update][avx2]") {
  if (!cpu_has_avx2()) return;
  check_channel<float>(4);
  check_channel<bf16>(5);
  check_channel<f16>(6);
  check_runs<float>(7);
  check_runs<bf16>(8);
}

TEST_CASE("host dot_row: the AVX2 path and the portable loop against a double-precision sum", "[linear][avx2]") {
  if (!cpu_has_avx2()) return;
  check_rows<float>(1);
  check_rows<bf16>(2);
  check_rows<f16>(3);
}
