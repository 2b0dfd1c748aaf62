// selective_state_update: a hand-derived step, and L steps equal a scan over L tokens.
#include <cmath>
#include <string_view>

#include <ssm/scan/selective_scan.hpp>
#include <ssm/scan/state_update.hpp>

#include "catch.hpp"
#include "scan/scan_case.hpp"
#include "support.hpp"

using namespace ssm;
using namespace ssm::test;

TEST_CASE("selective state update: one step by hand", "[state_update]") {
  // h = e^{dt A} h + dt B x = e^{-0.25 * 2} * 1 + 0.25 * 3 * 2 = e^-0.5 + 1.5; y = C h + D x.
  host3<float> state("state", 1, 1, 1);
  host2<float> x("x", 1, 1), dt("dt", 1, 1), out("out", 1, 1), A("A", 1, 1);
  host3<float> B("B", 1, 1, 1), C("C", 1, 1, 1);
  host1<float> D("D", 1);
  state(0, 0, 0) = 1, x(0, 0) = 2, dt(0, 0) = 0.25f, A(0, 0) = -2, B(0, 0, 0) = 3, C(0, 0, 0) = -1, D(0) = 0.5f;
  selective_state_update_params<float, Kokkos::HostSpace> p;
  p.state = state, p.x = x, p.dt = dt, p.A = A, p.B = B, p.C = C, p.D = D, p.out = out;
  double const h = std::exp(-0.5) + 1.5;
  SECTION("reference") { reference::selective_state_update(p); }
  SECTION("kokkos") {
    selective_state_update(space(), p);
    space().fence();
  }
  CHECK(state(0, 0, 0) == Approx(h).epsilon(1e-6));
  CHECK(out(0, 0) == Approx(-h + 1.0).epsilon(1e-6));
}

TEMPLATE_TEST_CASE("selective state update: L steps equal a scan over L tokens", "[state_update]", float, f16, bf16) {
  using T = TestType;
  for (scan_sizes sizes : {scan_sizes{1, 1, 1, 1, 1}, scan_sizes{2, 19, 9, 16, 1}, scan_sizes{3, 12, 5, 7, 4},
                           scan_sizes{1, 5, 4, 130, 1}, scan_sizes{2, 37, 3, 16, 1}}) {
    scan_case<T> scan(sizes, 21);
    reference::selective_scan(scan.params());
    // the reference; the Kokkos path on strided slices of the scan's tensors; and on
    // contiguous copies of them, the layout the mixer uses (a separate, vectorized loop)
    for (char const* mode : {"reference", "kokkos strided", "kokkos contiguous"}) {
      bool const use_reference = std::string_view(mode) == "reference";
      bool const contiguous = std::string_view(mode) == "kokkos contiguous";
      scan_case<T> steps(sizes, 21);
      host3<float> state("state", sizes.batch, sizes.channels, sizes.state);
      Kokkos::deep_copy(state, steps.initial_state);
      auto const all = Kokkos::ALL;
      for (std::size_t l = 0; l < sizes.length; ++l) {
        selective_state_update_params<T, Kokkos::HostSpace> p;
        p.state = state;
        p.x = Kokkos::subview(steps.u, all, all, l);
        p.dt = Kokkos::subview(steps.delta, all, all, l);
        p.A = steps.A;
        p.B = Kokkos::subview(steps.B, all, all, all, l);
        p.C = Kokkos::subview(steps.C, all, all, all, l);
        Kokkos::View<T***, Kokkos::LayoutRight, Kokkos::HostSpace> B_l("B_l", sizes.batch, sizes.groups, sizes.state),
            C_l("C_l", sizes.batch, sizes.groups, sizes.state);
        if (contiguous) {
          Kokkos::deep_copy(B_l, p.B);
          Kokkos::deep_copy(C_l, p.C);
          p.B = B_l;
          p.C = C_l;
        }
        p.D = steps.D;
        p.z = Kokkos::subview(steps.z, all, all, l);
        p.dt_bias = steps.delta_bias;
        p.dt_softplus = true;
        p.out = Kokkos::subview(steps.out, all, all, l);
        if (use_reference) {
          reference::selective_state_update(p);
        } else {
          selective_state_update(space(), p);
          space().fence();
        }
      }
      INFO(mode << " " << sizes.name());
      require_close(steps.out, scan.out, scan.output_tolerance(max_abs(scan.out)), "outputs");
      require_close(state, scan.final_state,
                    derived_tolerance<float>(sizes.length * sizes.state, max_abs(scan.final_state)), "state");
    }
  }
}

TEST_CASE("selective state update: wrong shapes are refused with the tensor named", "[state_update][errors]") {
  host3<float> state("state", 2, 3, 4);
  host2<float> x("x", 2, 3), dt("dt", 2, 3), out("out", 2, 3), A("A", 3, 4);
  host3<float> B("B", 2, 1, 4), C("C", 2, 1, 4);
  selective_state_update_params<float, Kokkos::HostSpace> p;
  p.state = state, p.x = x, p.dt = dt, p.A = A, p.B = B, p.C = C, p.out = out;
  REQUIRE_NOTHROW(selective_state_update(space(), p));
  host2<float> wrong("wrong", 3, 3);
  p.x = wrong;
  REQUIRE_THROWS_WITH(selective_state_update(space(), p), Catch::Contains("x must be (B, D)"));
  p.x = x;
  host3<float> wrong_B("B", 2, 1, 5);
  p.B = wrong_B;
  REQUIRE_THROWS_WITH(reference::selective_state_update(p), Catch::Contains("B must be (B, G, N)"));
}

namespace {

/// L steps of a state update whose dt is dt_proj (`dt_low`, `dt_weight`): by the reference, by the
/// Kokkos path, and by the reference given the dt that the test's own loops make of them.
template <class T, class Wt>
void dt_proj_steps(scan_sizes const& sizes, std::size_t rank) {
  INFO(sizes.name() << " R=" << rank);
  scan_case<T> steps(sizes, 31);
  auto const all = Kokkos::ALL;
  host3<float> by_dt("by_dt", sizes.batch, sizes.channels, sizes.state);
  host3<T> out_by_dt("out_by_dt", sizes.batch, sizes.channels, sizes.length);
  for (char const* mode : {"reference", "kokkos"}) {
    bool const use_reference = std::string_view(mode) == "reference";
    INFO(mode);
    host3<float> state("state", sizes.batch, sizes.channels, sizes.state);
    host3<T> out("out", sizes.batch, sizes.channels, sizes.length);
    Kokkos::deep_copy(state, steps.initial_state);
    Kokkos::deep_copy(by_dt, steps.initial_state);
    for (std::size_t l = 0; l < sizes.length; ++l) {
      dt_proj_case<T, Wt> const dt_proj(sizes.batch, sizes.channels, rank, 40 + 2 * l);
      selective_state_update_params<T, Kokkos::HostSpace, Wt> p;
      p.x = Kokkos::subview(steps.u, all, all, l);
      p.A = steps.A;
      p.B = Kokkos::subview(steps.B, all, all, all, l);
      p.C = Kokkos::subview(steps.C, all, all, all, l);
      p.D = steps.D;
      p.z = Kokkos::subview(steps.z, all, all, l);
      p.dt_bias = steps.delta_bias;
      p.dt_softplus = true;
      auto q = p;  // the same step, dt given
      q.state = by_dt;
      q.dt = dt_proj.dt;
      q.out = Kokkos::subview(out_by_dt, all, all, l);
      reference::selective_state_update(q);
      p.state = state;
      p.dt_low = dt_proj.low;
      p.dt_weight = dt_proj.weight;
      p.out = Kokkos::subview(out, all, all, l);
      if (use_reference) {
        reference::selective_state_update(p);
      } else {
        selective_state_update(space(), p);
        space().fence();
      }
    }
    if (use_reference) {  // the same dt, the same loops: the same bits
      require_close(out, out_by_dt, {0.0, 0.0}, "outputs");
      require_close(state, by_dt, {0.0, 0.0}, "state");
    } else {  // the same dt; the Kokkos path's exponentials and order of sums
      require_close(out, out_by_dt, steps.output_tolerance(max_abs(out_by_dt)), "outputs");
      require_close(state, by_dt, derived_tolerance<float>(sizes.length * sizes.state, max_abs(by_dt)), "state");
    }
  }
}

}  // namespace

TEMPLATE_TEST_CASE("selective state update: dt as dt_proj (dt_low, dt_weight) equals dt given", "[state_update]",
                   float, f16, bf16) {
  using T = TestType;
  // R from 1; D not a multiple of the Kokkos path's runs of 16; groups
  dt_proj_steps<T, T>(scan_sizes{2, 19, 3, 16, 1}, 1);
  dt_proj_steps<T, T>(scan_sizes{3, 12, 2, 7, 4}, 12);
  dt_proj_steps<T, T>(scan_sizes{4, 37, 2, 16, 1}, 160);
  dt_proj_steps<T, float>(scan_sizes{2, 19, 2, 16, 1}, 5);  // fp32 weights
}

TEST_CASE("selective state update: dt and dt_proj's inputs are refused together, and by shape",
          "[state_update][errors]") {
  host3<float> state("state", 2, 3, 4);
  host2<float> x("x", 2, 3), dt("dt", 2, 3), out("out", 2, 3), A("A", 3, 4);
  host2<float> low("low", 2, 5), weight("weight", 3, 5), wrong_low("wrong_low", 2, 4);
  host3<float> B("B", 2, 1, 4), C("C", 2, 1, 4);
  selective_state_update_params<float, Kokkos::HostSpace> p;
  p.state = state, p.x = x, p.A = A, p.B = B, p.C = C, p.out = out;
  p.dt_low = low, p.dt_weight = weight;
  REQUIRE_NOTHROW(selective_state_update(space(), p));
  p.dt = dt;
  REQUIRE_THROWS_WITH(selective_state_update(space(), p), Catch::Contains("either dt or dt_low and dt_weight"));
  p.dt = {};
  p.dt_low = wrong_low;
  REQUIRE_THROWS_WITH(reference::selective_state_update(p), Catch::Contains("dt_low must be (B, R)"));
  p.dt_low = {};
  REQUIRE_THROWS_WITH(selective_state_update(space(), p), Catch::Contains("dt_low and dt_weight go together"));
}
