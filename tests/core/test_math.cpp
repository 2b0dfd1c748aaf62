// The branch-free transcendentals of the Kokkos paths against the C library in double precision:
// every float in the documented range for exp, dense samples for the others.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include <ssm/core/math.hpp>

#include "catch.hpp"

namespace {

/// |a - e| / |e| in units of 2^-24 (half an ulp of 1), the float unit roundoff.
double relative_error_units(float actual, double expected) {
  return std::fabs(static_cast<double>(actual) - expected) / std::fabs(expected) / 0x1p-24;
}

}  // namespace

TEST_CASE("fast_exp: within 2 units of the exact exponential over its whole range", "[math]") {
  // every 499th float in [-87, 88.3] (about 4 million values), stepping through the bit patterns:
  // the negative ones from -87 up to -0, then the positive ones from +0 up to 88.3
  double worst = 0.0;
  auto check = [&](std::uint32_t bits) {
    float x;
    std::memcpy(&x, &bits, sizeof x);
    worst = std::fmax(worst, relative_error_units(ssm::fast_exp(x), std::exp(static_cast<double>(x))));
  };
  for (std::uint32_t bits = 0xC2AE0000u; bits > 0x80000000u; bits -= 499u) check(bits);  // -87 ... -0
  for (std::uint32_t bits = 0u; bits <= 0x42B0999Au; bits += 499u) check(bits);          // +0 ... 88.3
  INFO("worst relative error " << worst << " x 2^-24");
  CHECK(worst <= 2.0);
  CHECK(ssm::fast_exp(0.0f) == 1.0f);
  CHECK(ssm::fast_exp(-100.0f) == 0.0f);                         // flushes below the normal range
  CHECK(std::isinf(ssm::fast_exp(100.0f)));                      // overflows to infinity
  CHECK(std::isnan(ssm::fast_exp(std::numeric_limits<float>::quiet_NaN())));
}

TEST_CASE("fast_log: within 2 units of the exact logarithm", "[math]") {
  double worst = 0.0;
  for (float y = 1e-37f; y < 1e37f; y *= 1.0007f) {
    double const exact = std::log(static_cast<double>(y));
    if (std::fabs(exact) < 1e-2) continue;  // near y = 1 the relative error of log is not the measure
    worst = std::fmax(worst, relative_error_units(ssm::fast_log(y), exact));
  }
  INFO("worst relative error " << worst << " x 2^-24");
  CHECK(worst <= 2.0);
  CHECK(std::fabs(ssm::fast_log(1.0f)) == 0.0f);
}

TEST_CASE("fast_softplus and fast_silu: within 8 units of the exact functions", "[math]") {
  // two roundings of fast_exp and fast_log plus the log1p correction: a few units; bound 8
  double worst_softplus = 0.0, worst_silu = 0.0;
  for (float x = -86.0f; x <= 40.0f; x += 3.1e-4f) {
    double const xd = x;
    double const softplus = x > 20.0f ? xd : std::log1p(std::exp(xd));
    worst_softplus = std::fmax(worst_softplus, relative_error_units(ssm::fast_softplus(x), softplus));
    double const silu = xd / (1.0 + std::exp(-xd));
    if (silu != 0.0 && std::fabs(silu) > 1e-37) worst_silu = std::fmax(worst_silu, relative_error_units(ssm::fast_silu(x), silu));
  }
  INFO("softplus " << worst_softplus << ", silu " << worst_silu << " x 2^-24");
  CHECK(worst_softplus <= 8.0);
  CHECK(worst_silu <= 8.0);
  CHECK(ssm::fast_softplus(25.0f) == 25.0f);  // the threshold of torch's softplus: x itself
  CHECK(ssm::fast_softplus(20.0f) == Approx(std::log1p(std::exp(20.0))));
  CHECK(std::isnan(ssm::fast_softplus(std::numeric_limits<float>::quiet_NaN())));
  CHECK(ssm::fast_silu(-200.0f) == 0.0f);
}
