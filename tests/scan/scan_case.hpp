#pragma once
// Random selective-scan problems shared by the scan and state-update tests.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>

#include <ssm/scan/selective_scan.hpp>

#include "support.hpp"

namespace ssm::test {

/// Sizes of one scan problem, and which optional inputs it has.
struct scan_sizes {
  std::size_t batch, channels, length, state, groups;
  bool has_D = true, has_z = true, has_bias = true, softplus = true, has_initial = true;

  std::string name() const {
    return "B=" + std::to_string(batch) + " D=" + std::to_string(channels) + " L=" + std::to_string(length) +
           " N=" + std::to_string(state) + " G=" + std::to_string(groups) + " D?" + std::to_string(has_D) +
           " z?" + std::to_string(has_z) + " bias?" + std::to_string(has_bias) + " softplus?" +
           std::to_string(softplus) + " h0?" + std::to_string(has_initial);
  }
};

/// All tensors of one scan problem, channel-major as mamba_ssm lays them out, seeded.
template <class T>
struct scan_case {
  scan_sizes s;
  host3<T> u, delta, z, out;
  host2<float> A;
  host4<T> B, C;
  host1<float> D, delta_bias;
  host3<float> initial_state, final_state;

  scan_case(scan_sizes sizes, std::uint64_t seed) : s(sizes) {
    u = host3<T>("u", s.batch, s.channels, s.length);
    delta = host3<T>("delta", s.batch, s.channels, s.length);
    z = host3<T>("z", s.batch, s.channels, s.length);
    out = host3<T>("out", s.batch, s.channels, s.length);
    A = host2<float>("A", s.channels, s.state);
    B = host4<T>("B", s.batch, s.groups, s.state, s.length);
    C = host4<T>("C", s.batch, s.groups, s.state, s.length);
    D = host1<float>("D", s.channels);
    delta_bias = host1<float>("delta_bias", s.channels);
    initial_state = host3<float>("h0", s.batch, s.channels, s.state);
    final_state = host3<float>("hL", s.batch, s.channels, s.state);
    fill_uniform(u, seed + 1, -2.0f, 2.0f);
    // with softplus, delta + bias spans steps from ~0.02 to ~2; without, delta itself is the step
    if (s.softplus) fill_uniform(delta, seed + 2, -3.0f, 0.5f);
    else fill_uniform(delta, seed + 2, 0.001f, 1.0f);
    fill_uniform(z, seed + 3, -3.0f, 3.0f);
    fill_uniform(A, seed + 4, -8.0f, -0.1f);  // a stable continuous-time system
    fill_uniform(B, seed + 5);
    fill_uniform(C, seed + 6);
    fill_uniform(D, seed + 7, 0.5f, 1.5f);
    if (s.softplus) fill_uniform(delta_bias, seed + 8, -1.0f, 1.0f);
    else fill_uniform(delta_bias, seed + 8, 0.0f, 0.5f);  // keep the step positive
    fill_uniform(initial_state, seed + 9, -1.0f, 1.0f);
  }

  /// The parameters, with the optional tensors the sizes ask for.
  selective_scan_params<T, Kokkos::HostSpace> params() const {
    selective_scan_params<T, Kokkos::HostSpace> p;
    p.u = u;
    p.delta = delta;
    p.A = A;
    p.B = B;
    p.C = C;
    if (s.has_D) p.D = D;
    if (s.has_z) p.z = z;
    if (s.has_bias) p.delta_bias = delta_bias;
    p.delta_softplus = s.softplus;
    if (s.has_initial) p.initial_state = initial_state;
    p.out = out;
    p.final_state = final_state;
    return p;
  }

  /// The tolerance for comparing two fp32 evaluations of this scan: the outputs are sums of N
  /// products along a recurrence of L steps, rounded once to T.
  tolerance output_tolerance(double scale) const { return derived_tolerance<T>(s.state + s.length, scale); }
};

/// dt_proj's inputs of a state update given dt as `dt_low` (B, R) times `dt_weight` (D, R)^T, and
/// the dt they make, seeded. Every value is a multiple of 1/64 in [-1/4, 1/4], exact in every
/// storage type: the products are multiples of 2^-12 and every partial sum stays below R / 16, so
/// that (R < 2^16) fp32 sums them exactly in any order, tensor cores included, and the dt each
/// path rounds to T is the same. `dt` is their product by plain loops, rounded to T.
template <class T, class Wt>
struct dt_proj_case {
  host2<T> low;      ///< (B, R)
  host2<Wt> weight;  ///< (D, R)
  host2<T> dt;       ///< (B, D) = round_T(low weight^T)

  dt_proj_case(std::size_t batch, std::size_t channels, std::size_t rank, std::uint64_t seed)
      : low("dt_low", batch, rank), weight("dt_weight", channels, rank), dt("dt", batch, channels) {
    auto sixty_fourths = [](auto const& v, std::uint64_t from) {
      host2<float> u("u", v.extent(0), v.extent(1));
      fill_uniform(u, from, -16.49f, 16.49f);
      for (std::size_t i = 0; i < v.extent(0); ++i)
        for (std::size_t j = 0; j < v.extent(1); ++j)
          v(i, j) = from_float<typename std::decay_t<decltype(v)>::non_const_value_type>(std::round(u(i, j)) / 64.0f);
    };
    sixty_fourths(low, seed);
    sixty_fourths(weight, seed + 1);
    for (std::size_t b = 0; b < batch; ++b)
      for (std::size_t d = 0; d < channels; ++d) {
        float sum = 0.0f;
        for (std::size_t r = 0; r < rank; ++r) sum += to_float(low(b, r)) * to_float(weight(d, r));
        dt(b, d) = from_float<T>(sum);
      }
  }
};

}  // namespace ssm::test
