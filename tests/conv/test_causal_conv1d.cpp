/// \file
/// \brief Tests of `ssm::causal_conv1d` and `ssm::causal_conv1d_update`: the Kokkos path against the
/// sequential reference over edge shapes and options, a case computed by hand, and the algebraic
/// identities of a causal convolution (splitting a sequence, streaming token by token).

#include "catch.hpp"

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <ssm/conv/causal_conv1d.hpp>

#include "support.hpp"

namespace {

using ssm::test::require_shape_error;

using ssm::test::host1;
using ssm::test::host2;
using ssm::test::host3;
using memory = ssm::test::memory;
using ssm::test::types;

/// The tensors of one convolution, filled with seeded values in [-1, 1).
template <class T, class Wt>
struct conv_data {
  std::size_t B, D, L, W;
  host3<T> x;
  host2<Wt> weight;
  host1<Wt> bias;
  host3<T> initial;

  conv_data(std::size_t b, std::size_t d, std::size_t l, std::size_t w, std::uint64_t seed)
      : B(b), D(d), L(l), W(w), x("x", b, d, l), weight("weight", d, w), bias("bias", d),
        initial("initial", b, d, w - 1) {
    ssm::test::fill_uniform(x, seed);
    ssm::test::fill_uniform(weight, seed + 1);
    ssm::test::fill_uniform(bias, seed + 2);
    ssm::test::fill_uniform(initial, seed + 3);
  }

  /// Parameters with the given options, writing to out / final_state (final may be empty).
  ssm::causal_conv1d_params<T, Wt, memory> params(bool has_bias, bool silu, bool has_initial, host3<T> const& out,
                                                  host3<T> const& final_state) const {
    ssm::causal_conv1d_params<T, Wt, memory> p;
    p.x = x;
    p.weight = weight;
    if (has_bias) p.bias = bias;
    p.silu_activation = silu;
    if (has_initial) p.initial_state = initial;
    p.out = out;
    if (ssm::given(final_state)) p.final_state = final_state;
    return p;
  }

  /// Each output is a sum of W products of values in [-1, 1) plus a bias: |sum| <= W + 1, and an
  /// fp32 evaluation of W + 1 terms; SiLU is 1.1-Lipschitz, well inside the factor 4 of headroom.
  /// With SiLU, the two sides may also evaluate it differently (the Kokkos path uses `fast_silu`,
  /// documented within 8 x 2^-24 relative; `silu` a few units): 16 x 2^-24 relative more.
  ssm::test::tolerance tolerance(bool silu) const {
    auto tol = ssm::test::derived_tolerance<T>(W + 1, static_cast<double>(W + 1));
    if (silu) tol.rel += 16.0 * 0x1p-24;
    return tol;
  }
};

template <class T>
void require_equal(host3<T> const& actual, host3<T> const& expected, std::string const& what) {
  ssm::test::require_close(actual, expected, ssm::test::tolerance{0.0, 0.0}, what);
}

template <class T, class Wt>
void compare_forward(std::size_t B, std::size_t D, std::size_t L, std::size_t W, bool has_bias, bool silu,
                     bool has_initial, bool has_final) {
  CAPTURE(B, D, L, W, has_bias, silu, has_initial, has_final);
  conv_data<T, Wt> data(B, D, L, W, 1000 * B + 100 * D + 10 * L + W);
  host3<T> out_kokkos("out_kokkos", B, D, L), out_reference("out_reference", B, D, L);
  host3<T> final_kokkos, final_reference;
  if (has_final) {
    final_kokkos = host3<T>("final_kokkos", B, D, W - 1);
    final_reference = host3<T>("final_reference", B, D, W - 1);
  }
  ssm::test::space space;
  ssm::causal_conv1d(space, data.params(has_bias, silu, has_initial, out_kokkos, final_kokkos));
  space.fence();
  ssm::reference::causal_conv1d(data.params(has_bias, silu, has_initial, out_reference, final_reference));
  ssm::test::require_close(out_kokkos, out_reference, data.tolerance(silu), "out");
  if (has_final) require_equal(final_kokkos, final_reference, "final_state");
}

}  // namespace

TEMPLATE_TEST_CASE("causal_conv1d: Kokkos path matches the reference over edge shapes and options",
                   "[conv]", (types<float, float>), (types<ssm::f16, ssm::f16>), (types<ssm::bf16, ssm::bf16>),
                   (types<ssm::f16, float>), (types<ssm::bf16, float>)) {
  using T = typename TestType::act;
  using Wt = typename TestType::weight;
  for (std::size_t const B : {1, 2, 3})
    for (std::size_t const D : {1, 5, 19})
      for (std::size_t const L : {1, 2, 7, 33})
        for (std::size_t const W : {1, 2, 3, 4, 8})
          for (int options = 0; options < 16; ++options)
            compare_forward<T, Wt>(B, D, L, W, options & 1, options & 2, options & 4, options & 8);
}

TEMPLATE_TEST_CASE("causal_conv1d: a case computed by hand", "[conv]", float, ssm::f16, ssm::bf16) {
  using T = TestType;
  // D = 1, W = 3, weight [1, -2, 0.5], bias 0.25, x = [1, 2, 3, 4]: out_l = x~_l - 2 x~_{l+1} +
  // 0.5 x~_{l+2} + 0.25 over x~ = [s0, s1, x0, x1, x2, x3]. Every value is exact in every storage type.
  //   state zeros:  x~ = [0, 0, 1, 2, 3, 4]
  //     l=0: 0 - 0 + 0.5 + 0.25 = 0.75       l=1: 0 - 2 + 1 + 0.25 = -0.75
  //     l=2: 1 - 4 + 1.5 + 0.25 = -1.25      l=3: 2 - 6 + 2 + 0.25 = -1.75
  //   state [5, 6]: x~ = [5, 6, 1, 2, 3, 4]
  //     l=0: 5 - 12 + 0.5 + 0.25 = -6.25     l=1: 6 - 2 + 1 + 0.25 = 5.25    l=2, l=3 as above
  //   final state: the last two of x~, [3, 4], either way.
  host3<T> x("x", 1, 1, 4), state("state", 1, 1, 2), out("out", 1, 1, 4), final_state("final", 1, 1, 2);
  host2<T> weight("weight", 1, 3);
  host1<T> bias("bias", 1);
  float const xs[] = {1, 2, 3, 4}, ws[] = {1, -2, 0.5f};
  for (int i = 0; i < 4; ++i) x(0, 0, i) = ssm::from_float<T>(xs[i]);
  for (int i = 0; i < 3; ++i) weight(0, i) = ssm::from_float<T>(ws[i]);
  bias(0) = ssm::from_float<T>(0.25f);
  state(0, 0, 0) = ssm::from_float<T>(5.0f);
  state(0, 0, 1) = ssm::from_float<T>(6.0f);

  ssm::causal_conv1d_params<T, T, memory> p;
  p.x = x;
  p.weight = weight;
  p.bias = bias;
  p.out = out;
  p.final_state = final_state;
  ssm::test::space space;

  auto run_both = [&](auto const& check) {
    ssm::causal_conv1d(space, p);
    space.fence();
    check("kokkos");
    ssm::reference::causal_conv1d(p);
    check("reference");
  };
  auto out_is = [&](std::vector<double> const& want, bool silu) {
    return [&, want, silu](char const* path) {
      INFO(path);
      for (int l = 0; l < 4; ++l) {
        double const v = silu ? want[l] / (1.0 + std::exp(-want[l])) : want[l];
        // The sums are exact; SiLU in fp32 is within 8 x 2^-24 relative (`fast_silu`'s documented
        // bound; `silu` is closer), 16 x 2^-24 with headroom, then one rounding to T (4u).
        double const tol = silu ? (4.0 * ssm::unit_roundoff<T>() + 16.0 * 0x1p-24) * std::abs(v) : 0.0;
        CHECK(std::abs(ssm::to_float(out(0, 0, l)) - v) <= tol);
      }
      CHECK(ssm::to_float(final_state(0, 0, 0)) == 3.0f);
      CHECK(ssm::to_float(final_state(0, 0, 1)) == 4.0f);
    };
  };
  run_both(out_is({0.75, -0.75, -1.25, -1.75}, false));
  p.silu_activation = true;
  run_both(out_is({0.75, -0.75, -1.25, -1.75}, true));
  p.silu_activation = false;
  p.initial_state = state;
  run_both(out_is({-6.25, 5.25, -1.25, -1.75}, false));
  // Without bias: every output 0.25 lower.
  p.bias = {};
  run_both(out_is({-6.5, 5.0, -1.5, -2.0}, false));
}

TEMPLATE_TEST_CASE("causal_conv1d: one call over 0..L equals calls over 0..k then k..L carrying the final state",
                   "[conv]", float, ssm::f16, ssm::bf16) {
  using T = TestType;
  ssm::test::space space;
  for (std::size_t const W : {1, 2, 4})
    for (std::size_t const L : {1, 7, 33})
      for (bool const has_initial : {false, true}) {
        conv_data<T, T> data(2, 5, L, W, 77 + L + W);
        host3<T> out_whole("out_whole", 2, 5, L), final_whole("final_whole", 2, 5, W - 1);
        auto whole = data.params(true, true, has_initial, out_whole, final_whole);
        ssm::causal_conv1d(space, whole);
        space.fence();
        for (std::size_t const k : {std::size_t{0}, std::size_t{1}, std::size_t{2}, L / 2, L - 1, L}) {
          if (k > L) continue;
          CAPTURE(W, L, has_initial, k);
          for (int path = 0; path < 2; ++path) {  // 0: Kokkos, 1: reference
            INFO((path == 0 ? "kokkos" : "reference"));
            host3<T> out_split("out_split", 2, 5, L), carried("carried", 2, 5, W - 1),
                final_split("final_split", 2, 5, W - 1);
            auto const first = std::make_pair(std::size_t{0}, k), second = std::make_pair(k, L);
            auto p = whole;
            p.x = Kokkos::subview(data.x, Kokkos::ALL, Kokkos::ALL, first);
            p.out = Kokkos::subview(out_split, Kokkos::ALL, Kokkos::ALL, first);
            p.final_state = carried;
            if (path == 0) ssm::causal_conv1d(space, p);
            else ssm::reference::causal_conv1d(p);
            space.fence();
            p.x = Kokkos::subview(data.x, Kokkos::ALL, Kokkos::ALL, second);
            p.out = Kokkos::subview(out_split, Kokkos::ALL, Kokkos::ALL, second);
            p.initial_state = carried;
            p.final_state = final_split;
            if (path == 0) ssm::causal_conv1d(space, p);
            else ssm::reference::causal_conv1d(p);
            space.fence();
            ssm::test::require_close(out_split, out_whole, data.tolerance(true), "out");
            require_equal(final_split, final_whole, "final_state");
          }
        }
      }
}

TEMPLATE_TEST_CASE("causal_conv1d_update L times equals the forward over L", "[conv][update]", float, ssm::f16,
                   ssm::bf16) {
  using T = TestType;
  ssm::test::space space;
  for (std::size_t const W : {1, 2, 3, 4, 8})
    for (std::size_t const L : {1, 7, 33})
      for (std::size_t const D : {1, 19})
        for (int options = 0; options < 8; ++options) {
          bool const has_bias = options & 1, silu = options & 2, has_initial = options & 4;
          std::size_t const B = 3;
          CAPTURE(W, L, D, has_bias, silu, has_initial);
          conv_data<T, T> data(B, D, L, W, 500 + W + L + D);
          host3<T> out_forward("out_forward", B, D, L), final_forward("final_forward", B, D, W - 1);
          ssm::reference::causal_conv1d(data.params(has_bias, silu, has_initial, out_forward, final_forward));
          for (int path = 0; path < 2; ++path) {
            INFO((path == 0 ? "kokkos" : "reference"));
            host3<T> state("state", B, D, W - 1), out("out", B, D, L);
            if (has_initial) Kokkos::deep_copy(state, data.initial);
            for (std::size_t l = 0; l < L; ++l) {
              ssm::causal_conv1d_update_params<T, T, memory> u;
              u.x = Kokkos::subview(data.x, Kokkos::ALL, Kokkos::ALL, l);
              u.state = state;
              u.weight = data.weight;
              if (has_bias) u.bias = data.bias;
              u.silu_activation = silu;
              u.out = Kokkos::subview(out, Kokkos::ALL, Kokkos::ALL, l);
              if (path == 0) ssm::causal_conv1d_update(space, u);
              else ssm::reference::causal_conv1d_update(u);
              space.fence();
            }
            ssm::test::require_close(out, out_forward, data.tolerance(silu), "out");
            require_equal(state, final_forward, "state");
          }
        }
}

TEMPLATE_TEST_CASE("causal_conv1d: a token-major (B, L, D) buffer through transpose_last_two", "[conv]", float,
                   ssm::f16, ssm::bf16) {
  using T = TestType;
  ssm::test::space space;
  for (std::size_t const W : {1, 2, 4})
    for (std::size_t const L : {1, 7, 33}) {
      std::size_t const B = 2, D = 19;
      CAPTURE(W, L);
      conv_data<T, T> data(B, D, L, W, 9000 + L + W);  // data.x is the channel-major copy
      host3<T> tokens("tokens", B, L, D), out_tokens("out_tokens", B, L, D);
      for (std::size_t b = 0; b < B; ++b)
        for (std::size_t l = 0; l < L; ++l)
          for (std::size_t d = 0; d < D; ++d) tokens(b, l, d) = data.x(b, d, l);
      host3<T> out_reference("out_reference", B, D, L), final_reference("final_reference", B, D, W - 1);
      ssm::reference::causal_conv1d(data.params(true, true, true, out_reference, final_reference));

      host3<T> final_kokkos("final_kokkos", B, D, W - 1);
      auto p = data.params(true, true, true, out_reference, final_kokkos);
      p.x = ssm::transpose_last_two(tokens);
      p.out = ssm::transpose_last_two(out_tokens);
      REQUIRE(p.x.extent(1) == D);
      REQUIRE(p.x.extent(2) == L);
      ssm::causal_conv1d(space, p);
      space.fence();
      host3<T> out_kokkos("out_kokkos", B, D, L);
      for (std::size_t b = 0; b < B; ++b)
        for (std::size_t l = 0; l < L; ++l)
          for (std::size_t d = 0; d < D; ++d) out_kokkos(b, d, l) = out_tokens(b, l, d);
      ssm::test::require_close(out_kokkos, out_reference, data.tolerance(true), "out");
      require_equal(final_kokkos, final_reference, "final_state");

      // The reference reads the strided view too.
      host3<T> out_tokens2("out_tokens2", B, L, D);
      p.out = ssm::transpose_last_two(out_tokens2);
      p.final_state = {};
      ssm::reference::causal_conv1d(p);
      for (std::size_t b = 0; b < B; ++b)
        for (std::size_t l = 0; l < L; ++l)
          for (std::size_t d = 0; d < D; ++d) out_kokkos(b, d, l) = out_tokens2(b, l, d);
      ssm::test::require_close(out_kokkos, out_reference, data.tolerance(true), "out (reference, strided)");
    }
}

TEMPLATE_TEST_CASE("causal_conv1d: initial_state and final_state may be the same view", "[conv]", float, ssm::f16,
                   ssm::bf16) {
  using T = TestType;
  ssm::test::space space;
  for (std::size_t const W : {2, 4, 8})
    for (std::size_t const L : {1, 2, 7, 33}) {
      std::size_t const B = 2, D = 5;
      CAPTURE(W, L);
      conv_data<T, T> data(B, D, L, W, 31 + L + W);
      host3<T> out_reference("out_reference", B, D, L), final_reference("final_reference", B, D, W - 1);
      ssm::reference::causal_conv1d(data.params(true, false, true, out_reference, final_reference));
      for (int path = 0; path < 2; ++path) {
        INFO((path == 0 ? "kokkos" : "reference"));
        host3<T> state("state", B, D, W - 1), out("out", B, D, L);
        Kokkos::deep_copy(state, data.initial);
        auto p = data.params(true, false, true, out, state);
        p.initial_state = state;  // the same memory as final_state
        if (path == 0) ssm::causal_conv1d(space, p);
        else ssm::reference::causal_conv1d(p);
        space.fence();
        ssm::test::require_close(out, out_reference, data.tolerance(false), "out");
        require_equal(state, final_reference, "state");
      }
    }
}

TEST_CASE("causal_conv1d: shape errors name the tensor", "[conv][errors]") {
  using T = float;
  std::size_t const B = 2, D = 5, L = 7, W = 4;
  conv_data<T, T> data(B, D, L, W, 1);
  host3<T> out("out", B, D, L), final_state("final", B, D, W - 1);
  host3<T> bad3("bad", B, D, W);  // (B, D, W) instead of (B, D, W-1)
  host2<T> weight_d("weight", D + 1, W), weight_wide("weight", D, 9), weight_empty("weight", D, 0);
  host1<T> bias_bad("bias", D + 1);
  ssm::test::space space;
  auto good = [&] { return data.params(true, false, true, out, final_state); };
  auto both = [&](auto const& p, std::vector<std::string> const& parts) {
    require_shape_error([&] { ssm::causal_conv1d(space, p); }, parts);
    auto with_reference_name = parts;
    with_reference_name.push_back("ssm::reference::causal_conv1d");
    require_shape_error([&] { ssm::reference::causal_conv1d(p); }, with_reference_name);
  };
  {
    auto p = good();
    p.weight = weight_d;
    both(p, {"ssm::", "weight", "(D, W)"});
  }
  {
    auto p = good();
    p.weight = weight_wide;
    both(p, {"W = 9", "[1, 8]"});
  }
  {
    auto p = good();
    p.weight = weight_empty;
    both(p, {"W = 0", "[1, 8]"});
  }
  {
    auto p = good();
    p.bias = bias_bad;
    both(p, {"bias"});
  }
  {
    auto p = good();
    p.initial_state = bad3;
    both(p, {"initial_state", "(2, 5, 3)"});
  }
  {
    auto p = good();
    p.final_state = bad3;
    both(p, {"final_state", "(2, 5, 3)"});
  }
  {
    auto p = good();
    p.out = host3<T>("out", B, D, L + 1);
    both(p, {"out", "(2, 5, 7)"});
  }
  {
    auto p = good();
    p.out = host3<T>("out", B + 1, D, L);
    both(p, {"out", "(2, 5, 7)"});
  }
  {
    auto p = good();
    p.x = {};
    both(p, {"x, weight and out are required"});
  }
  CHECK_NOTHROW(ssm::causal_conv1d(space, good()));
  space.fence();

  // The streaming update.
  host3<T> state("state", B, D, W - 1), state_bad("state", B, D, W);
  host2<T> x("x", B, D), out2("out", B, D), out2_bad("out", B, D + 1);
  ssm::causal_conv1d_update_params<T, T, memory> u;
  u.x = x;
  u.state = state;
  u.weight = data.weight;
  u.out = out2;
  auto both_update = [&](auto const& q, std::vector<std::string> const& parts) {
    require_shape_error([&] { ssm::causal_conv1d_update(space, q); }, parts);
    require_shape_error([&] { ssm::reference::causal_conv1d_update(q); }, parts);
  };
  {
    auto q = u;
    q.state = state_bad;
    both_update(q, {"state", "(2, 5, 3)"});
  }
  {
    auto q = u;
    q.out = out2_bad;
    both_update(q, {"out", "(2, 5)"});
  }
  {
    auto q = u;
    q.weight = weight_d;
    both_update(q, {"weight"});
  }
  {
    auto q = u;
    q.weight = weight_wide;
    both_update(q, {"[1, 8]"});
  }
  {
    auto q = u;
    q.bias = bias_bad;
    both_update(q, {"bias"});
  }
  {
    auto q = u;
    q.state = {};
    both_update(q, {"required"});
  }
  CHECK_NOTHROW(ssm::causal_conv1d_update(space, u));
  space.fence();
}
