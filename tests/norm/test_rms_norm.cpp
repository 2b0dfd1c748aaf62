/// \file
/// \brief Tests of `ssm::rms_norm`: the Kokkos path against the sequential reference (with and without
/// the fused residual, in place or not), cases computed by hand, scale invariance, and shape errors.

#include "catch.hpp"

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <ssm/norm/rms_norm.hpp>

#include "support.hpp"

namespace {

using ssm::test::require_shape_error;

using ssm::test::host1;
using ssm::test::host2;
using memory = ssm::test::memory;
using ssm::test::types;

template <class T, class Wt>
struct norm_data {
  std::size_t M, E;
  host2<T> x;
  host2<float> residual;
  host1<Wt> weight;

  norm_data(std::size_t m, std::size_t e, std::uint64_t seed)
      : M(m), E(e), x("x", m, e), residual("residual", m, e), weight("weight", e) {
    ssm::test::fill_uniform(x, seed, -2.0f, 2.0f);
    ssm::test::fill_uniform(residual, seed + 1, -2.0f, 2.0f);
    ssm::test::fill_uniform(weight, seed + 2, -1.5f, 1.5f);
  }

  ssm::rms_norm_params<T, Wt, memory> params(bool has_residual, float eps, host2<T> const& out,
                                             host2<float> const& residual_out) const {
    ssm::rms_norm_params<T, Wt, memory> p;
    p.x = x;
    if (has_residual) p.residual = residual;
    p.weight = weight;
    p.eps = eps;
    p.out = out;
    if (ssm::given(residual_out)) p.residual_out = residual_out;
    return p;
  }
};

// The sum of squares is an fp32 sum of E terms; reassociating it moves 1/rms by at most about
// E 2^-24 relative, and the output is rounded once to T: derived_tolerance over E terms, scaled by
// the largest output.
template <class T, class View>
ssm::test::tolerance out_tolerance(std::size_t E, View const& expected) {
  return ssm::test::derived_tolerance<T>(E, ssm::test::max_abs(expected));
}

template <class T, class Wt>
void compare(std::size_t M, std::size_t E, bool has_residual, bool has_residual_out, float eps) {
  CAPTURE(M, E, has_residual, has_residual_out, eps);
  norm_data<T, Wt> data(M, E, 100 * M + E);
  host2<T> out_kokkos("out_kokkos", M, E), out_reference("out_reference", M, E);
  host2<float> res_kokkos, res_reference;
  if (has_residual_out) {
    res_kokkos = host2<float>("res_kokkos", M, E);
    res_reference = host2<float>("res_reference", M, E);
  }
  ssm::test::space space;
  ssm::rms_norm(space, data.params(has_residual, eps, out_kokkos, res_kokkos));
  space.fence();
  ssm::reference::rms_norm(data.params(has_residual, eps, out_reference, res_reference));
  ssm::test::require_close(out_kokkos, out_reference, out_tolerance<T>(E, out_reference), "out");
  if (has_residual_out) {
    ssm::test::require_close(res_kokkos, res_reference, ssm::test::tolerance{0.0, 0.0}, "residual_out");
    // x + residual in fp32, or x alone: check against the definition too.
    for (std::size_t m = 0; m < M; ++m)
      for (std::size_t e = 0; e < E; ++e)
        REQUIRE(res_kokkos(m, e) == ssm::to_float(data.x(m, e)) + (has_residual ? data.residual(m, e) : 0.0f));
  }
}

}  // namespace

TEMPLATE_TEST_CASE("rms_norm: Kokkos path matches the reference", "[norm]", (types<float, float>),
                   (types<ssm::f16, ssm::f16>), (types<ssm::bf16, ssm::bf16>), (types<ssm::f16, float>),
                   (types<ssm::bf16, float>)) {
  using T = typename TestType::act;
  using Wt = typename TestType::weight;
  for (std::size_t const M : {1, 3, 7})
    for (std::size_t const E : {1, 5, 19, 33, 64, 257})
      for (int options = 0; options < 4; ++options)
        for (float const eps : {0.0f, 1e-5f, 1e-1f}) compare<T, Wt>(M, E, options & 1, options & 2, eps);
}

TEMPLATE_TEST_CASE("rms_norm: residual and residual_out may be the same memory", "[norm]", (types<float, float>),
                   (types<ssm::f16, ssm::f16>), (types<ssm::bf16, float>)) {
  using T = typename TestType::act;
  using Wt = typename TestType::weight;
  ssm::test::space space;
  for (std::size_t const M : {1, 7})
    for (std::size_t const E : {5, 19, 257}) {
      CAPTURE(M, E);
      norm_data<T, Wt> data(M, E, 7 * M + E);
      host2<T> out_reference("out_reference", M, E);
      host2<float> res_reference("res_reference", M, E);
      ssm::reference::rms_norm(data.params(true, 1e-5f, out_reference, res_reference));
      for (int path = 0; path < 2; ++path) {
        INFO((path == 0 ? "kokkos" : "reference"));
        host2<float> stream("stream", M, E);  // the residual stream, updated in place
        Kokkos::deep_copy(stream, data.residual);
        host2<T> out("out", M, E);
        auto p = data.params(true, 1e-5f, out, stream);
        p.residual = stream;
        if (path == 0) ssm::rms_norm(space, p);
        else ssm::reference::rms_norm(p);
        space.fence();
        ssm::test::require_close(out, out_reference, out_tolerance<T>(E, out_reference), "out");
        ssm::test::require_close(stream, res_reference, ssm::test::tolerance{0.0, 0.0}, "residual_out");
      }
    }
}

TEMPLATE_TEST_CASE("rms_norm: cases computed by hand", "[norm]", float, ssm::f16, ssm::bf16) {
  using T = TestType;
  // Row 0: x = [3, 4], w = [1, 2], eps = 0: mean square (9 + 16) / 2 = 12.5,
  //        out = [3, 8] / sqrt(12.5).
  // Row 1: x = [-6, 8]: mean square (36 + 64) / 2 = 50, out = [-6, 16] / sqrt(50) (the same
  //        directions, scaled by 2 and one sign flipped).
  // With the residual: x = [1, 1] + [2, 3] = [3, 4] and x = [-7, 5] + [1, 3] = [-6, 8].
  host2<T> x("x", 2, 2), x_part("x_part", 2, 2), out("out", 2, 2);
  host2<float> residual("residual", 2, 2), residual_out("residual_out", 2, 2);
  host1<T> weight("weight", 2);
  float const xs[2][2] = {{3, 4}, {-6, 8}}, parts[2][2] = {{1, 1}, {-7, 5}}, rs[2][2] = {{2, 3}, {1, 3}};
  for (int m = 0; m < 2; ++m)
    for (int e = 0; e < 2; ++e) {
      x(m, e) = ssm::from_float<T>(xs[m][e]);
      x_part(m, e) = ssm::from_float<T>(parts[m][e]);
      residual(m, e) = rs[m][e];
    }
  weight(0) = ssm::from_float<T>(1.0f);
  weight(1) = ssm::from_float<T>(2.0f);
  double const want[2][2] = {{3 / std::sqrt(12.5), 8 / std::sqrt(12.5)}, {-6 / std::sqrt(50.0), 16 / std::sqrt(50.0)}};
  // A handful of fp32 roundings (square root, reciprocal, two products: 8 * 2^-24 with headroom),
  // and one rounding to T (4u with headroom).
  double const rel = 8.0 * 0x1p-24 + 4.0 * ssm::unit_roundoff<T>();

  ssm::test::space space;
  auto run_both = [&](ssm::rms_norm_params<T, T, memory> const& p, auto const& check) {
    ssm::rms_norm(space, p);
    space.fence();
    check("kokkos");
    ssm::reference::rms_norm(p);
    check("reference");
  };
  auto out_is_want = [&](char const* path) {
    INFO(path);
    for (int m = 0; m < 2; ++m)
      for (int e = 0; e < 2; ++e) CHECK(std::abs(ssm::to_float(out(m, e)) - want[m][e]) <= rel * std::abs(want[m][e]));
  };

  ssm::rms_norm_params<T, T, memory> p;
  p.x = x;
  p.weight = weight;
  p.eps = 0.0f;
  p.out = out;
  run_both(p, out_is_want);

  p.x = x_part;
  p.residual = residual;
  p.residual_out = residual_out;
  run_both(p, [&](char const* path) {
    out_is_want(path);
    for (int m = 0; m < 2; ++m)
      for (int e = 0; e < 2; ++e) CHECK(residual_out(m, e) == xs[m][e]);
  });

  // eps: x = [1, -1], w = [1, 2], eps = 1: mean square 1, out = [1, -2] / sqrt(2).
  host2<T> x_eps("x_eps", 1, 2), out_eps("out_eps", 1, 2);
  x_eps(0, 0) = ssm::from_float<T>(1.0f);
  x_eps(0, 1) = ssm::from_float<T>(-1.0f);
  ssm::rms_norm_params<T, T, memory> q;
  q.x = x_eps;
  q.weight = weight;
  q.eps = 1.0f;
  q.out = out_eps;
  run_both(q, [&](char const* path) {
    INFO(path);
    CHECK(std::abs(ssm::to_float(out_eps(0, 0)) - 1 / std::sqrt(2.0)) <= rel / std::sqrt(2.0));
    CHECK(std::abs(ssm::to_float(out_eps(0, 1)) + 2 / std::sqrt(2.0)) <= rel * 2 / std::sqrt(2.0));
  });

  // E = 1: out = w x / |x| when eps = 0, exactly for powers of 2 (every step is then exact).
  host2<T> x_one("x_one", 3, 1), out_one("out_one", 3, 1);
  x_one(0, 0) = ssm::from_float<T>(0.25f);
  x_one(1, 0) = ssm::from_float<T>(-4.0f);
  x_one(2, 0) = ssm::from_float<T>(1024.0f);
  host1<T> w_one("w_one", 1);
  w_one(0) = ssm::from_float<T>(-1.5f);
  ssm::rms_norm_params<T, T, memory> r;
  r.x = x_one;
  r.weight = w_one;
  r.eps = 0.0f;
  r.out = out_one;
  run_both(r, [&](char const* path) {
    INFO(path);
    CHECK(ssm::to_float(out_one(0, 0)) == -1.5f);
    CHECK(ssm::to_float(out_one(1, 0)) == 1.5f);
    CHECK(ssm::to_float(out_one(2, 0)) == -1.5f);
  });
}

TEMPLATE_TEST_CASE("rms_norm: with eps = 0 the output does not change when x is scaled by a power of 2", "[norm]",
                   float, ssm::f16, ssm::bf16) {
  using T = TestType;
  // Every step (squares, their sum, the mean, sqrt, reciprocal, products) commutes exactly with a
  // power-of-2 scale while nothing under- or overflows: the outputs must be bit-identical.
  std::size_t const M = 3, E = 19;
  norm_data<T, T> data(M, E, 4242);
  host2<T> scaled("scaled", M, E), out("out", M, E), out_scaled("out_scaled", M, E);
  for (std::size_t m = 0; m < M; ++m)
    for (std::size_t e = 0; e < E; ++e) scaled(m, e) = ssm::from_float<T>(ssm::to_float(data.x(m, e)) * 8.0f);
  ssm::test::space space;
  auto p = data.params(false, 0.0f, out, {});
  ssm::rms_norm(space, p);
  p.x = scaled;
  p.out = out_scaled;
  ssm::rms_norm(space, p);
  space.fence();
  ssm::test::require_close(out_scaled, out, ssm::test::tolerance{0.0, 0.0}, "scaled by 8");
}

TEST_CASE("rms_norm: shape errors name the tensor", "[norm][errors]") {
  std::size_t const M = 3, E = 5;
  norm_data<float, float> data(M, E, 1);
  host2<float> out("out", M, E), res_out("res_out", M, E);
  ssm::test::space space;
  auto good = [&] { return data.params(true, 1e-5f, out, res_out); };
  auto both = [&](auto const& p, std::vector<std::string> const& parts) {
    require_shape_error([&] { ssm::rms_norm(space, p); }, parts);
    auto with_name = parts;
    with_name.push_back("ssm::reference::rms_norm");
    require_shape_error([&] { ssm::reference::rms_norm(p); }, with_name);
  };
  {
    auto p = good();
    p.weight = host1<float>("weight", E + 1);
    both(p, {"weight", "E = 5"});
  }
  {
    auto p = good();
    p.out = host2<float>("out", M, E + 1);
    both(p, {"out", "(3, 5)"});
  }
  {
    auto p = good();
    p.residual = host2<float>("residual", M + 1, E);
    both(p, {"residual must be", "(3, 5)"});
  }
  {
    auto p = good();
    p.residual_out = host2<float>("residual_out", M, E - 1);
    both(p, {"residual_out", "(3, 5)"});
  }
  {
    auto p = good();
    p.eps = -1e-6f;
    both(p, {"eps"});
  }
  {
    auto p = good();
    p.weight = {};
    both(p, {"required"});
  }
  CHECK_NOTHROW(ssm::rms_norm(space, good()));
  space.fence();
  // M = 0 is a valid empty batch.
  host2<float> x0("x0", 0, E), out0("out0", 0, E);
  auto p = good();
  p.x = x0;
  p.out = out0;
  p.residual = {};
  p.residual_out = {};
  CHECK_NOTHROW(ssm::rms_norm(space, p));
  CHECK_NOTHROW(ssm::reference::rms_norm(p));
  space.fence();
}

namespace {

/// x given as S fp32 partial sums: the reference must equal the reference over their sum rounded
/// to T (computed here, in order), exactly; the Kokkos path must agree with both to the tolerance.
template <class T, class Wt>
void compare_partials(std::size_t S, std::size_t M, std::size_t E) {
  CAPTURE(S, M, E);
  norm_data<T, Wt> data(M, E, 7 * M + E);
  ssm::test::host3<float> partials("partials", S, M, E);
  ssm::test::fill_uniform(partials, 50 + S, -1.5f, 1.5f);
  for (std::size_t m = 0; m < M; ++m)
    for (std::size_t e = 0; e < E; ++e) {
      float sum = 0.0f;
      for (std::size_t s = 0; s < S; ++s) sum += partials(s, m, e);
      data.x(m, e) = ssm::from_float<T>(sum);
    }
  host2<T> out_rows("out_rows", M, E), out_reference("out_reference", M, E), out_kokkos("out_kokkos", M, E);
  host2<float> res_rows("res_rows", M, E), res_reference("res_reference", M, E), res_kokkos("res_kokkos", M, E);
  ssm::reference::rms_norm(data.params(true, 1e-5f, out_rows, res_rows));
  auto with_partials = [&](host2<T> const& out, host2<float> const& res) {
    auto p = data.params(true, 1e-5f, out, res);
    p.x = {};
    p.x_partials = partials;
    return p;
  };
  ssm::reference::rms_norm(with_partials(out_reference, res_reference));
  ssm::test::require_close(out_reference, out_rows, ssm::test::tolerance{0.0, 0.0}, "reference out");
  ssm::test::require_close(res_reference, res_rows, ssm::test::tolerance{0.0, 0.0}, "reference residual_out");
  ssm::test::space space;
  ssm::rms_norm(space, with_partials(out_kokkos, res_kokkos));
  space.fence();
  ssm::test::require_close(out_kokkos, out_rows, out_tolerance<T>(E, out_rows), "out");
  ssm::test::require_close(res_kokkos, res_rows, ssm::test::tolerance{0.0, 0.0}, "residual_out");
}

}  // namespace

TEMPLATE_TEST_CASE("rms_norm: x as partial sums is their sum in order, rounded to T", "[norm]", (types<float, float>),
                   (types<ssm::bf16, ssm::bf16>), (types<ssm::f16, float>)) {
  using T = typename TestType::act;
  using Wt = typename TestType::weight;
  for (std::size_t const S : {1, 2, 3})
    for (std::size_t const M : {1, 4})
      for (std::size_t const E : {1, 19, 64}) compare_partials<T, Wt>(S, M, E);
}

TEST_CASE("rms_norm: partial sums are added before the rounding to bf16, by hand", "[norm]") {
  // 1 + 2^-8 rounds to 1 in bf16 (a tie, to even), and so would 1 + 2^-8 + 2^-8 if each partial
  // were rounded first; their sum 1 + 2^-7 is a bf16 value, and is what the residual must receive.
  ssm::test::host3<float> partials("partials", 2, 1, 1);
  partials(0, 0, 0) = 1.0f + std::ldexp(1.0f, -8);
  partials(1, 0, 0) = std::ldexp(1.0f, -8);
  host1<ssm::bf16> weight("weight", 1);
  weight(0) = ssm::from_float<ssm::bf16>(1.0f);
  host2<ssm::bf16> out("out", 1, 1);
  host2<float> res("res", 1, 1);
  ssm::rms_norm_params<ssm::bf16, ssm::bf16, memory> p;
  p.x_partials = partials;
  p.weight = weight;
  p.eps = 0.0f;
  p.out = out;
  p.residual_out = res;
  ssm::test::space space;
  ssm::rms_norm(space, p);
  space.fence();
  REQUIRE(res(0, 0) == 1.0f + std::ldexp(1.0f, -7));
  REQUIRE(ssm::to_float(out(0, 0)) == 1.0f);
  ssm::reference::rms_norm(p);
  REQUIRE(res(0, 0) == 1.0f + std::ldexp(1.0f, -7));
}

TEST_CASE("rms_norm: x and x_partials, neither or both, are refused", "[norm][errors]") {
  norm_data<float, float> data(2, 3, 1);
  host2<float> out("out", 2, 3);
  ssm::test::host3<float> partials("partials", 2, 2, 3);
  ssm::test::space space;
  auto p = data.params(false, 1e-5f, out, {});
  p.x_partials = partials;
  require_shape_error([&] { ssm::rms_norm(space, p); }, {"x_partials", "not both"});
  p.x = {};
  p.x_partials = ssm::test::host3<float>("partials", 2, 3, 3);
  require_shape_error([&] { ssm::rms_norm(space, p); }, {"out must be (M, E) = (3, 3)"});
  p.x_partials = {};
  require_shape_error([&] { ssm::rms_norm(space, p); }, {"one of x and x_partials"});
}
