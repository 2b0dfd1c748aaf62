/// \file
/// \brief Tests of `ssm::linear` (y = x W^T + b): the host backend (Eigen) and the portable Kokkos
/// kernel (`ssm::detail::linear_kokkos`) against the reference triple loop, over storage types, odd
/// and panel-crossing shapes and strided tensors; a case computed by hand; and shape errors.

#include "catch.hpp"

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <ssm/linear/linear.hpp>

#include "linear/partials_case.hpp"
#include "support.hpp"

namespace {

using ssm::test::require_shape_error;

using ssm::test::host1;
using ssm::test::host2;
using memory = ssm::test::memory;
using ssm::test::types;

/// Copy any rank-2 view into a contiguous one (an independent re-layout for the oracle).
template <class T, class View>
host2<T> contiguous(View const& v) {
  host2<T> c("contiguous", v.extent(0), v.extent(1));
  for (std::size_t i = 0; i < v.extent(0); ++i)
    for (std::size_t j = 0; j < v.extent(1); ++j) c(i, j) = v(i, j);
  return c;
}

template <class T, class Wt>
void compare(std::size_t M, std::size_t K, std::size_t N, bool has_bias) {
  CAPTURE(M, K, N, has_bias);
  host2<T> x("x", M, K), y_host("y_host", M, N), y_kokkos("y_kokkos", M, N), y_reference("y_reference", M, N);
  host2<Wt> weight("weight", N, K);
  host1<Wt> bias("bias", N);
  std::uint64_t const seed = 10000 * M + 100 * K + N;
  ssm::test::fill_uniform(x, seed);
  ssm::test::fill_uniform(weight, seed + 1);
  ssm::test::fill_uniform(bias, seed + 2);
  ssm::linear_params<T, Wt, memory> p;
  p.x = x;
  p.weight = weight;
  if (has_bias) p.bias = bias;
  p.y = y_reference;
  ssm::reference::linear(p);
  auto const tol = ssm::test::gemm_tolerance<T>(x, weight, p.bias);
  ssm::test::space space;
  p.y = y_host;
  ssm::linear(space, p);
  space.fence();
  ssm::test::require_close(y_host, y_reference, tol, "ssm::linear (host backend)");
  p.y = y_kokkos;
  ssm::detail::linear_kokkos(space, p);
  space.fence();
  ssm::test::require_close(y_kokkos, y_reference, tol, "linear_kokkos");
}

}  // namespace

TEMPLATE_TEST_CASE("linear: host backend and Kokkos kernel match the reference", "[linear]", (types<float, float>),
                   (types<ssm::f16, ssm::f16>), (types<ssm::bf16, ssm::bf16>), (types<float, ssm::f16>),
                   (types<float, ssm::bf16>), (types<ssm::f16, float>), (types<ssm::bf16, float>)) {
  using T = typename TestType::act;
  using Wt = typename TestType::weight;
  for (std::size_t const M : {1, 3, 7})
    for (std::size_t const K : {1, 5, 33})
      for (std::size_t const N : {1, 19, 64})
        for (bool const has_bias : {false, true}) compare<T, Wt>(M, K, N, has_bias);
  // N above the 256-row weight panel, and not a multiple of it; K odd.
  for (std::size_t const N : {std::size_t{256}, std::size_t{257}, std::size_t{300}, std::size_t{600}})
    for (bool const has_bias : {false, true}) {
      compare<T, Wt>(1, 33, N, has_bias);
      compare<T, Wt>(5, 19, N, has_bias);
    }
  compare<T, Wt>(2, 257, 19, true);  // a long reduction
}

TEMPLATE_TEST_CASE("linear: a 2x2 case computed by hand", "[linear]", float, ssm::f16, ssm::bf16) {
  using T = TestType;
  // x = [[1, 2], [3, 4]], W = [[5, 6], [7, 8]], b = [0.5, -1]:
  //   y00 = 1*5 + 2*6 + 0.5 = 17.5    y01 = 1*7 + 2*8 - 1 = 22
  //   y10 = 3*5 + 4*6 + 0.5 = 39.5    y11 = 3*7 + 4*8 - 1 = 52
  // Every value has at most 7 significant bits: exact in fp32, f16 and bf16.
  host2<T> x("x", 2, 2), y("y", 2, 2);
  host2<T> w("w", 2, 2);
  host1<T> b("b", 2);
  float const xs[2][2] = {{1, 2}, {3, 4}}, ws[2][2] = {{5, 6}, {7, 8}};
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) {
      x(i, j) = ssm::from_float<T>(xs[i][j]);
      w(i, j) = ssm::from_float<T>(ws[i][j]);
    }
  b(0) = ssm::from_float<T>(0.5f);
  b(1) = ssm::from_float<T>(-1.0f);
  ssm::linear_params<T, T, memory> p;
  p.x = x;
  p.weight = w;
  p.bias = b;
  p.y = y;
  ssm::test::space space;
  float const want[2][2] = {{17.5f, 22.0f}, {39.5f, 52.0f}};
  auto check = [&](char const* path) {
    INFO(path);
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 2; ++j) CHECK(ssm::to_float(y(i, j)) == want[i][j]);
  };
  ssm::linear(space, p);
  space.fence();
  check("host backend");
  Kokkos::deep_copy(y, ssm::from_float<T>(0.0f));
  ssm::detail::linear_kokkos(space, p);
  space.fence();
  check("linear_kokkos");
  Kokkos::deep_copy(y, ssm::from_float<T>(0.0f));
  ssm::reference::linear(p);
  check("reference");
  // Without bias: 17, 23, 39, 53.
  p.bias = {};
  float const no_bias[2][2] = {{17.0f, 23.0f}, {39.0f, 53.0f}};
  ssm::linear(space, p);
  space.fence();
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) CHECK(ssm::to_float(y(i, j)) == no_bias[i][j]);
}

TEMPLATE_TEST_CASE("linear: strided x, weight and y (slices of wider buffers)", "[linear]", (types<float, float>),
                   (types<ssm::f16, ssm::f16>), (types<ssm::bf16, ssm::bf16>), (types<float, ssm::bf16>)) {
  using T = typename TestType::act;
  using Wt = typename TestType::weight;
  ssm::test::space space;
  T const sentinel = ssm::from_float<T>(-123.0f);
  for (std::size_t const M : {1, 7})
    for (std::size_t const K : {5, 33})
      for (std::size_t const N : {19, 300}) {
        CAPTURE(M, K, N);
        std::uint64_t const seed = 31 * M + 7 * K + N;
        // x: columns [3, 3 + K) of an (M, K + 7) matrix (unit column stride, row stride K + 7), and
        // every other column of an (M, 2K + 1) matrix (column stride 2).
        host2<T> wide("wide", M, K + 7), every_other("every_other", M, 2 * K + 1);
        ssm::test::fill_uniform(wide, seed);
        ssm::test::fill_uniform(every_other, seed + 1);
        auto const x_slice = ssm::strided(wide.data() + 3, M, K + 7, K, 1);
        auto const x_step = ssm::strided(every_other.data() + 1, M, 2 * K + 1, K, 2);
        // weight: rows [2, 2 + N) of an (N + 4, K) matrix, and the transpose of a (K, N) matrix.
        host2<Wt> w_rows("w_rows", N + 4, K), w_t("w_t", K, N);
        ssm::test::fill_uniform(w_rows, seed + 2);
        ssm::test::fill_uniform(w_t, seed + 3);
        auto const w_slice = Kokkos::subview(w_rows, std::make_pair(std::size_t{2}, N + 2), Kokkos::ALL);
        auto const w_transposed = ssm::strided(w_t.data(), N, 1, K, N);
        host1<Wt> bias("bias", N);
        ssm::test::fill_uniform(bias, seed + 4);

        for (int xi = 0; xi < 2; ++xi)
          for (int wi = 0; wi < 2; ++wi)
            for (int yi = 0; yi < 2; ++yi) {
              CAPTURE(xi, wi, yi);
              ssm::linear_params<T, Wt, memory> p;
              if (xi == 0) p.x = x_slice;
              else p.x = x_step;
              if (wi == 0) p.weight = w_slice;
              else p.weight = w_transposed;
              p.bias = bias;
              // The oracle: the reference on contiguous copies.
              host2<T> x_c = contiguous<T>(p.x), y_reference("y_reference", M, N);
              host2<Wt> w_c = contiguous<Wt>(p.weight);
              ssm::linear_params<T, Wt, memory> q;
              q.x = x_c;
              q.weight = w_c;
              q.bias = bias;
              q.y = y_reference;
              ssm::reference::linear(q);
              auto const tol = ssm::test::gemm_tolerance<T>(x_c, w_c, bias);

              for (int path = 0; path < 2; ++path) {
                INFO((path == 0 ? "host backend" : "linear_kokkos"));
                // y: columns [2, 2 + N) of an (M, N + 5) matrix, or every other column of (M, 2N).
                std::size_t const cols = yi == 0 ? N + 5 : 2 * N;
                host2<T> y_buffer("y_buffer", M, cols);
                Kokkos::deep_copy(y_buffer, sentinel);
                auto const y = yi == 0 ? ssm::strided(y_buffer.data() + 2, M, N + 5, N, 1)
                                       : ssm::strided(y_buffer.data() + 1, M, 2 * N, N, 2);
                p.y = y;
                if (path == 0) ssm::linear(space, p);
                else ssm::detail::linear_kokkos(space, p);
                space.fence();
                ssm::test::require_close(contiguous<T>(y), y_reference, tol, "y");
                // Nothing outside the slice was written.
                std::size_t touched = 0;
                for (std::size_t m = 0; m < M; ++m)
                  for (std::size_t c = 0; c < cols; ++c) {
                    bool const inside = yi == 0 ? (c >= 2 && c < N + 2) : (c % 2 == 1);
                    if (!inside && ssm::to_float(y_buffer(m, c)) != ssm::to_float(sentinel)) ++touched;
                  }
                CHECK(touched == 0);
              }
            }
      }
}

TEST_CASE("linear: empty M or N is a no-op", "[linear]") {
  host2<float> x0("x0", 0, 5), y0("y0", 0, 3), w("w", 3, 5), x("x", 2, 5), w0("w0", 0, 5), y_n0("y_n0", 2, 0);
  ssm::test::space space;
  ssm::linear_params<float, float, memory> p;
  p.x = x0;
  p.weight = w;
  p.y = y0;
  CHECK_NOTHROW(ssm::linear(space, p));
  CHECK_NOTHROW(ssm::reference::linear(p));
  p.x = x;
  p.weight = w0;
  p.y = y_n0;
  CHECK_NOTHROW(ssm::linear(space, p));
  CHECK_NOTHROW(ssm::reference::linear(p));
  space.fence();
}

TEST_CASE("linear: shape errors name the tensor", "[linear][errors]") {
  std::size_t const M = 2, K = 5, N = 3;
  host2<float> x("x", M, K), y("y", M, N), w("w", N, K);
  host1<float> b("b", N);
  ssm::test::space space;
  ssm::linear_params<float, float, memory> good;
  good.x = x;
  good.weight = w;
  good.bias = b;
  good.y = y;
  auto both = [&](auto const& p, std::vector<std::string> const& parts) {
    require_shape_error([&] { ssm::linear(space, p); }, parts);
    auto with_name = parts;
    with_name.push_back("ssm::reference::linear");
    require_shape_error([&] { ssm::reference::linear(p); }, with_name);
  };
  {
    auto p = good;
    p.weight = host2<float>("w", N, K + 1);
    both(p, {"weight", "K = 5", "(3, 6)"});
  }
  {
    auto p = good;
    p.y = host2<float>("y", M, N + 1);
    both(p, {"y must be", "(2, 3)"});
  }
  {
    auto p = good;
    p.y = host2<float>("y", M + 1, N);
    both(p, {"y must be", "(2, 3)"});
  }
  {
    auto p = good;
    p.bias = host1<float>("b", N + 1);
    both(p, {"bias", "N = 3"});
  }
  {
    auto p = good;
    p.x = {};
    both(p, {"required"});
  }
  CHECK_NOTHROW(ssm::linear(space, good));
  space.fence();
}

namespace {

/// `linear_partials` against the reference product of each slice of K.
template <class T, class Wt>
void compare_partials(std::size_t S, std::size_t M, std::size_t K, std::size_t N) {
  CAPTURE(S, M, K, N);
  host2<T> x("x", M, K);
  host2<Wt> weight("weight", N, K);
  std::uint64_t const seed = 1000 * S + 100 * M + K + N;
  ssm::test::fill_uniform(x, seed);
  ssm::test::fill_uniform(weight, seed + 1);
  ssm::test::host3<float> partials("partials", S, M, N);
  ssm::test::space space;
  ssm::linear_partials(space, ssm::linear_partials_params<T, Wt, memory>{x, weight, partials});
  space.fence();
  auto const expected = ssm::test::reference_partials(x, weight, S);
  for (std::size_t s = 0; s < S; ++s)
    ssm::test::require_close(ssm::test::partial(partials, s), expected.products[s], expected.tolerances[s],
                             "partial " + std::to_string(s));
}

}  // namespace

TEMPLATE_TEST_CASE("linear_partials: each slice of K is the reference product of that slice", "[linear]",
                   (types<float, float>), (types<ssm::bf16, ssm::bf16>), (types<ssm::f16, float>)) {
  using T = typename TestType::act;
  using Wt = typename TestType::weight;
  compare_partials<T, Wt>(1, 3, 8, 5);
  compare_partials<T, Wt>(2, 1, 16, 7);
  compare_partials<T, Wt>(4, 5, 64, 33);
  compare_partials<T, Wt>(3, 2, 9, 1);
}

TEST_CASE("linear_partials: a 2-slice case computed by hand", "[linear]") {
  // x = [1 2 3 4], W = [[1 1 1 1], [1 -1 1 -1]]: slices K = {0, 1} and {2, 3}
  host2<float> x("x", 1, 4), w("w", 2, 4);
  float const xv[4] = {1, 2, 3, 4}, wv[2][4] = {{1, 1, 1, 1}, {1, -1, 1, -1}};
  for (int k = 0; k < 4; ++k) {
    x(0, k) = xv[k];
    for (int n = 0; n < 2; ++n) w(n, k) = wv[n][k];
  }
  ssm::test::host3<float> partials("partials", 2, 1, 2);
  ssm::test::space space;
  ssm::linear_partials(space, ssm::linear_partials_params<float, float, memory>{x, w, partials});
  space.fence();
  REQUIRE(partials(0, 0, 0) == 3.0f);   // 1 + 2
  REQUIRE(partials(0, 0, 1) == -1.0f);  // 1 - 2
  REQUIRE(partials(1, 0, 0) == 7.0f);   // 3 + 4
  REQUIRE(partials(1, 0, 1) == -1.0f);  // 3 - 4
}

TEST_CASE("linear_partials: shape errors name the tensor", "[linear][errors]") {
  host2<float> x("x", 2, 6), w("w", 3, 6);
  ssm::test::space space;
  auto run = [&](auto const& partials) {
    ssm::linear_partials(space, ssm::linear_partials_params<float, float, memory>{x, w, partials});
  };
  require_shape_error([&] { run(ssm::test::host3<float>("p", 4, 2, 3)); }, {"S dividing K", "K = 6", "S = 4"});
  require_shape_error([&] { run(ssm::test::host3<float>("p", 0, 2, 3)); }, {"S > 0"});
  require_shape_error([&] { run(ssm::test::host3<float>("p", 2, 3, 3)); }, {"partials must be (S, M, N)", "(2, 3)"});
  require_shape_error([&] { run(ssm::test::host3<float>{}); }, {"required"});
  require_shape_error(
      [&] {
        ssm::linear_partials(space, ssm::linear_partials_params<float, float, memory>{
                                        x, host2<float>("w", 3, 5), ssm::test::host3<float>("p", 2, 2, 3)});
      },
      {"weight", "K = 6"});
}
