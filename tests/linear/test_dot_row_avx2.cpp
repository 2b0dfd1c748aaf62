// The AVX2 matrix-vector product of the host (`ssm::host::detail::dot_row_avx2`) against the
// portable loop it replaces: the same bits, for every weight type and for rows with and without
// a tail. This program alone is compiled with AVX2, FMA and F16C, so that the release build,
// which targets no particular x86 level, still tests the path the `avx2` preset runs.
#include <cstdint>
#include <cstring>
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
    INFO("K = " << K << ": avx2 " << fast << ", portable " << portable);
    std::uint32_t a = 0, b = 0;
    std::memcpy(&a, &fast, sizeof a);
    std::memcpy(&b, &portable, sizeof b);
    REQUIRE(a == b);
  }
}

}  // namespace

TEST_CASE("host dot_row: the AVX2 path gives the portable loop's bits", "[linear][avx2]") {
  static_assert(host::detail::host_avx2, "this test is compiled with -mavx2 -mfma -mf16c");
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma") || !__builtin_cpu_supports("f16c")) {
    WARN("this CPU has no AVX2, FMA or F16C: nothing to check");
    return;
  }
  check_rows<float>(1);
  check_rows<bf16>(2);
  check_rows<f16>(3);
}
