// The oracle of `ssm::linear_partials`' tests: each slice of K cut out by hand and multiplied by
// the reference linear layer into fp32.
#pragma once

#include <cstddef>
#include <vector>

#include <ssm/linear/linear.hpp>

#include "support.hpp"

namespace ssm::test {

/// The reference product of slice s of K, and its tolerance, for s = 0 ... S-1.
struct partials_case {
  std::vector<host2<float>> products;  ///< (M, N) each
  std::vector<tolerance> tolerances;   ///< of each product
};

/// The S reference products of x (M, K) and weight (N, K) over the slices [s K/S, (s+1) K/S).
template <class X, class W>
partials_case reference_partials(X const& x, W const& weight, std::size_t S) {
  std::size_t const M = x.extent(0), N = weight.extent(0), slice = x.extent(1) / S;
  partials_case c;
  for (std::size_t s = 0; s < S; ++s) {
    host2<float> xs("xs", M, slice), ws("ws", N, slice), ys("ys", M, N);
    for (std::size_t k = 0; k < slice; ++k) {
      for (std::size_t m = 0; m < M; ++m) xs(m, k) = to_float(x(m, s * slice + k));
      for (std::size_t n = 0; n < N; ++n) ws(n, k) = to_float(weight(n, s * slice + k));
    }
    reference::linear(linear_params<float, float, Kokkos::HostSpace>{xs, ws, {}, ys});
    c.products.push_back(ys);
    c.tolerances.push_back(gemm_tolerance<float>(xs, ws, view1<const float, Kokkos::HostSpace>{}));
  }
  return c;
}

/// Slice s of partial sums (S, M, N) as a contiguous (M, N) view.
template <class P>
host2<float> partial(P const& partials, std::size_t s) {
  host2<float> part("part", partials.extent(1), partials.extent(2));
  for (std::size_t m = 0; m < part.extent(0); ++m)
    for (std::size_t n = 0; n < part.extent(1); ++n) part(m, n) = partials(s, m, n);
  return part;
}

}  // namespace ssm::test
