// The selective scan: a hand-derived case, the Kokkos path against the sequential reference over
// edge shapes and storage types, processing in pieces, strided inputs, and shape errors.
#include <cmath>
#include <vector>

#include <ssm/scan/selective_scan.hpp>

#include "catch.hpp"
#include "scan/scan_case.hpp"
#include "support.hpp"

using namespace ssm;
using namespace ssm::test;

TEST_CASE("selective scan: one channel, one state, by hand", "[scan]") {
  // A = -1, delta = 0.5 (no softplus), B = 1, C = 2, D = 3, u = [1, 0, 4]:
  //   h1 = 0.5 * 1 * 1              = 0.5
  //   h2 = e^-0.5 * h1 + 0          = 0.5 e^-0.5
  //   h3 = e^-0.5 * h2 + 0.5 * 4    = 0.5 e^-1 + 2
  //   y  = C h + D u                = [1 + 3, e^-0.5, e^-1 + 4 + 12]
  host3<float> u("u", 1, 1, 3), delta("delta", 1, 1, 3), out("out", 1, 1, 3);
  host2<float> A("A", 1, 1);
  host3<float> B("B", 1, 1, 3), C("C", 1, 1, 3), hL("hL", 1, 1, 1);
  host1<float> D("D", 1);
  u(0, 0, 0) = 1, u(0, 0, 1) = 0, u(0, 0, 2) = 4;
  for (int l = 0; l < 3; ++l) delta(0, 0, l) = 0.5f, B(0, 0, l) = 1.0f, C(0, 0, l) = 2.0f;
  A(0, 0) = -1.0f;
  D(0) = 3.0f;
  selective_scan_params<float, Kokkos::HostSpace> p;
  p.u = u, p.delta = delta, p.A = A, p.B = one_group(B), p.C = one_group(C), p.D = D, p.out = out, p.final_state = hL;
  double const expected[3] = {4.0, std::exp(-0.5), std::exp(-1.0) + 16.0};

  SECTION("reference") { reference::selective_scan(p); }
  SECTION("kokkos") {
    selective_scan(space(), p);
    space().fence();
  }
  for (int l = 0; l < 3; ++l) CHECK(out(0, 0, l) == Approx(expected[l]).epsilon(1e-6));
  CHECK(hL(0, 0, 0) == Approx(0.5 * std::exp(-1.0) + 2.0).epsilon(1e-6));
}

TEST_CASE("selective scan: a gate and softplus, by hand", "[scan]") {
  // delta = 0, bias = 0, softplus: step = log 2. With h0 = 1, A = -1, B = 0: h = e^{-log 2} = 1/2;
  // y = C h = 1/2; gate z = 1: y * silu(1) = 1/2 * 1 / (1 + e^-1).
  host3<float> u("u", 1, 1, 1), delta("delta", 1, 1, 1), z("z", 1, 1, 1), out("out", 1, 1, 1);
  host2<float> A("A", 1, 1);
  host3<float> B("B", 1, 1, 1), C("C", 1, 1, 1), h0("h0", 1, 1, 1);
  host1<float> bias("bias", 1);
  A(0, 0) = -1.0f, C(0, 0, 0) = 1.0f, z(0, 0, 0) = 1.0f, h0(0, 0, 0) = 1.0f;
  selective_scan_params<float, Kokkos::HostSpace> p;
  p.u = u, p.delta = delta, p.A = A, p.B = one_group(B), p.C = one_group(C), p.z = z, p.delta_bias = bias;
  p.delta_softplus = true, p.initial_state = h0, p.out = out;
  selective_scan(space(), p);
  space().fence();
  CHECK(out(0, 0, 0) == Approx(0.5 / (1.0 + std::exp(-1.0))).epsilon(1e-6));
}

namespace {

std::vector<scan_sizes> edge_shapes() {
  // B, D, L, N, G: L = 1, L odd and prime, N = 1, D not a multiple of the channel block (8),
  // B > 1, grouped B/C, and state sizes on every dispatch bucket (<= 16, <= 64, <= 256).
  std::vector<scan_sizes> shapes = {
      {1, 1, 1, 1, 1},   {2, 5, 7, 1, 1},  {1, 19, 33, 16, 1}, {2, 16, 17, 12, 2},
      {3, 9, 1, 5, 3},   {1, 8, 64, 64, 4}, {1, 3, 5, 200, 1}, {2, 24, 9, 17, 8},
  };
  return shapes;
}

}  // namespace

TEMPLATE_TEST_CASE("selective scan: Kokkos path equals the reference", "[scan]", float, f16, bf16) {
  using T = TestType;
  auto const shapes = edge_shapes();
  std::uint64_t seed = 100;
  for (auto sizes : shapes) {
    for (int options = 0; options < 32; options += (sizes.channels > 16 ? 7 : 1)) {
      sizes.has_D = options & 1, sizes.has_z = options & 2, sizes.has_bias = options & 4;
      sizes.softplus = options & 8, sizes.has_initial = options & 16;
      scan_case<T> expected(sizes, seed), actual(sizes, seed);
      ++seed;
      reference::selective_scan(expected.params());
      selective_scan(space(), actual.params());
      space().fence();
      auto const tol = expected.output_tolerance(max_abs(expected.out));
      require_close(actual.out, expected.out, tol, sizes.name() + " out");
      require_close(actual.final_state, expected.final_state, derived_tolerance<float>(sizes.length * sizes.state, max_abs(expected.final_state)),
                    sizes.name() + " final state");
    }
  }
}

TEMPLATE_TEST_CASE("selective scan: one call over 0..L equals calls over 0..k then k..L with the state carried", "[scan]", float, bf16) {
  using T = TestType;
  scan_sizes const sizes{2, 11, 29, 16, 1};
  scan_case<T> whole(sizes, 7);
  selective_scan(space(), whole.params());
  space().fence();
  for (std::size_t k : {std::size_t{0}, std::size_t{1}, std::size_t{13}, std::size_t{28}, std::size_t{29}}) {
    scan_case<T> pieces(sizes, 7);
    auto const first = Kokkos::pair<std::size_t, std::size_t>(0, k);
    auto const second = Kokkos::pair<std::size_t, std::size_t>(k, sizes.length);
    auto p = pieces.params();
    auto const all = Kokkos::ALL;
    selective_scan_params<T, Kokkos::HostSpace> a = p, b = p;
    a.u = Kokkos::subview(pieces.u, all, all, first);
    a.delta = Kokkos::subview(pieces.delta, all, all, first);
    a.z = Kokkos::subview(pieces.z, all, all, first);
    a.B = Kokkos::subview(pieces.B, all, all, all, first);
    a.C = Kokkos::subview(pieces.C, all, all, all, first);
    a.out = Kokkos::subview(pieces.out, all, all, first);
    host3<float> middle("middle", sizes.batch, sizes.channels, sizes.state);
    a.final_state = middle;
    b.u = Kokkos::subview(pieces.u, all, all, second);
    b.delta = Kokkos::subview(pieces.delta, all, all, second);
    b.z = Kokkos::subview(pieces.z, all, all, second);
    b.B = Kokkos::subview(pieces.B, all, all, all, second);
    b.C = Kokkos::subview(pieces.C, all, all, all, second);
    b.out = Kokkos::subview(pieces.out, all, all, second);
    b.initial_state = middle;
    selective_scan(space(), a);
    selective_scan(space(), b);
    space().fence();
    // the same operations in the same order: the pieces reproduce the whole exactly
    INFO("k = " << k);
    require_close(pieces.out, whole.out, {0.0, 0.0}, "out");
    require_close(pieces.final_state, whole.final_state, {0.0, 0.0}, "final state");
  }
}

TEST_CASE("selective scan: token-major inputs through strides equal channel-major ones", "[scan]") {
  scan_sizes const sizes{2, 13, 10, 8, 1};
  scan_case<float> expected(sizes, 11);
  reference::selective_scan(expected.params());
  // the same data laid out (B, L, D), as the dense layers produce it, seen as (B, D, L)
  auto token_major = [&](host3<float> const& bdl) {
    host3<float> bld("bld", sizes.batch, sizes.length, sizes.channels);
    for (std::size_t b = 0; b < sizes.batch; ++b)
      for (std::size_t d = 0; d < sizes.channels; ++d)
        for (std::size_t l = 0; l < sizes.length; ++l) bld(b, l, d) = bdl(b, d, l);
    return bld;
  };
  auto u = token_major(expected.u), delta = token_major(expected.delta), z = token_major(expected.z);
  host3<float> out("out", sizes.batch, sizes.length, sizes.channels);
  auto p = expected.params();
  p.u = transpose_last_two(u);
  p.delta = transpose_last_two(delta);
  p.z = transpose_last_two(z);
  p.out = transpose_last_two(out);
  host3<float> final_state("hL", sizes.batch, sizes.channels, sizes.state);
  p.final_state = final_state;
  selective_scan(space(), p);
  space().fence();
  auto const expected_bld = token_major(expected.out);
  require_close(out, expected_bld, expected.output_tolerance(max_abs(expected.out)), "token-major out");
}

TEST_CASE("selective scan: wrong shapes are refused with the tensor named", "[scan][errors]") {
  scan_case<float> c({1, 4, 6, 3, 1}, 3);
  auto p = c.params();
  host3<float> short_delta("delta", 1, 4, 5);
  p.delta = short_delta;
  REQUIRE_THROWS_AS(selective_scan(space(), p), shape_error);
  REQUIRE_THROWS_WITH(reference::selective_scan(p), Catch::Contains("delta must be (B, D, L)"));

  p = c.params();
  host2<float> A("A", 4, 300);
  p.A = A;
  REQUIRE_THROWS_WITH(selective_scan(space(), p), Catch::Contains("N = 300"));

  p = c.params();
  host4<float> grouped("B", 1, 3, 3, 6);  // 3 groups do not divide D = 4
  p.B = grouped;
  p.C = grouped;
  REQUIRE_THROWS_WITH(selective_scan(space(), p), Catch::Contains("G = 3 must divide D = 4"));

  p = c.params();
  p.out = {};
  REQUIRE_THROWS_WITH(selective_scan(space(), p), Catch::Contains("required"));
}
