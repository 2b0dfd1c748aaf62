// The AVX2 matrix-vector product of the host (`ssm::host::detail::dot_row_avx2`) and the
// portable loop it replaces, both against a sum in double precision, for every weight type and
// for rows with and without a tail. They add the same partial sums in the same order, but
// whether the portable loop's multiply-adds are fused depends on the optimisation level, so the
// bound is that of fp32 sums, not equal bits. This program alone is compiled with AVX2, FMA and
// F16C, so that the release build, which targets no x86 level, still tests the `avx2` path.
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include <ssm/linear/host_gemv.hpp>

#include "catch.hpp"

using namespace ssm;

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

}  // namespace

TEST_CASE("host dot_row: the AVX2 path and the portable loop against a double-precision sum", "[linear][avx2]") {
  static_assert(host::detail::host_avx2, "this test is compiled with -mavx2 -mfma -mf16c");
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma") || !__builtin_cpu_supports("f16c")) {
    WARN("this CPU has no AVX2, FMA or F16C: nothing to check");
    return;
  }
  check_rows<float>(1);
  check_rows<bf16>(2);
  check_rows<f16>(3);
}
