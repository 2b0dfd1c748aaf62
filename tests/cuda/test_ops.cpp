/// \file
/// \brief GPU tests of ops that run their portable Kokkos path on Kokkos::Cuda: the embedding lookup
/// and one decoding step of the selective scan (`selective_state_update`), against their sequential
/// host references.

#include "catch.hpp"

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include <ssm/linear/embedding.hpp>
#include <ssm/scan/state_update.hpp>

#include "cuda_support.hpp"
#include "scan/scan_case.hpp"

namespace {

namespace gpu = ssm::test::gpu;
using ssm::test::host1;
using ssm::test::host2;
using ssm::test::host3;
using ssm::test::types;

/// The GPU's L steps of a state update against the reference's: two fp32 evaluations of the same
/// recurrence (the GPU with its fast exponentials and FMAs), the outputs sums of N products along
/// L steps rounded once to T, the state L N terms in fp32: the bounds of the host test.
template <class T>
void require_steps_close(ssm::test::scan_case<T> const& steps, ssm::test::scan_sizes const& sizes, auto const& out,
                         host3<T> const& out_expected, auto const& state, host3<float> const& state_expected) {
  ssm::test::require_close(gpu::to_host(out), out_expected, steps.output_tolerance(ssm::test::max_abs(out_expected)),
                           "out");
  ssm::test::require_close(gpu::to_host(state), state_expected,
                           ssm::test::derived_tolerance<float>(sizes.length * sizes.state,
                                                               ssm::test::max_abs(state_expected)),
                           "state");
}

}  // namespace

TEMPLATE_TEST_CASE("cuda embedding: rows of the table, widened and rounded like the reference", "[cuda][embedding]",
                   (types<float, float>), (types<ssm::f16, ssm::f16>), (types<ssm::bf16, ssm::bf16>),
                   (types<float, ssm::bf16>), (types<ssm::f16, float>)) {
  using T = typename TestType::act;
  using Wt = typename TestType::weight;
  std::size_t const V = 11;
  for (std::size_t const M : {1, 7, 300})
    for (std::size_t const E : {1, 5, 2560}) {
      CAPTURE(M, E);
      host2<Wt> table("table", V, E);
      ssm::test::fill_uniform(table, M + E);
      Kokkos::View<std::int32_t*, Kokkos::LayoutRight, Kokkos::HostSpace> ids("ids", M);
      for (std::size_t m = 0; m < M; ++m) ids(m) = static_cast<std::int32_t>((7 * m + 3) % V);  // every id, repeats
      host2<T> expected("expected", M, E);
      ssm::reference::embedding(ssm::embedding_params<T, Wt, Kokkos::HostSpace>{ids, table, expected});
      gpu::dev2<T> out("out", M, E);
      gpu::poison(out);
      gpu::space space;
      ssm::embedding(space, ssm::embedding_params<T, Wt, gpu::memory>{gpu::to_device(ids), gpu::to_device(table), out});
      space.fence();
      // a copy and one rounding, the same on both sides: exact
      ssm::test::require_close(gpu::to_host(out), expected, {0.0, 0.0}, "embedding");
    }
}

TEST_CASE("cuda embedding: ids outside the vocabulary are refused before anything is read", "[cuda][embedding][errors]") {
  gpu::dev2<float> table("table", 4, 3), out("out", 2, 3);
  Kokkos::View<std::int32_t*, Kokkos::LayoutRight, Kokkos::HostSpace> ids("ids", 2);
  for (std::int32_t const bad : {4, -1}) {
    ids(0) = 1;
    ids(1) = bad;
    REQUIRE_THROWS_WITH(
        ssm::embedding(gpu::space(), ssm::embedding_params<float, float, gpu::memory>{gpu::to_device(ids), table, out}),
        Catch::Contains("outside the vocabulary [0, 4)"));
  }
}

TEMPLATE_TEST_CASE("cuda selective_state_update: L steps match L steps of the reference", "[cuda][state_update]",
                   float, ssm::f16, ssm::bf16) {
  using T = TestType;
  using ssm::test::scan_sizes;
  scan_sizes without_options{2, 19, 3, 16, 1};
  without_options.has_D = without_options.has_z = without_options.has_bias = without_options.softplus = false;
  // the staged kernel (from 8 sequences, a group's channels a multiple of a block's 256 / (N / 4))
  // without the options
  scan_sizes staged_without_options{16, 128, 2, 16, 1};
  staged_without_options.has_D = staged_without_options.has_z = staged_without_options.has_bias =
      staged_without_options.softplus = false;
  for (scan_sizes const sizes : {scan_sizes{1, 1, 1, 1, 1}, scan_sizes{2, 19, 9, 16, 1}, scan_sizes{3, 12, 5, 7, 4},
                                 scan_sizes{1, 5, 4, 130, 1}, scan_sizes{2, 300, 3, 16, 1}, without_options,
                                 // odd B (a thread's second sequence past the end), lanes per channel from
                                 // 1 (N = 2, 4) to 8 (N = 32), channels past the last block's end, groups
                                 scan_sizes{5, 70, 2, 8, 2}, scan_sizes{3, 33, 2, 32, 1}, scan_sizes{3, 65, 2, 4, 5},
                                 scan_sizes{1, 9, 2, 2, 3},
                                 // the staged kernel, from B = 8 where a block's channels (64 at N = 16)
                                 // divide a group's: 2 sequences a block (odd B: the last block's second
                                 // past the end), 8 from B = 48 (B = 49: 7 past the end; 4 at N = 4 and
                                 // 8, B = 50 and 53), N = 4 to 32, two groups; then D = 96 at N = 16 and
                                 // B = 7, where it does not apply
                                 scan_sizes{9, 128, 2, 16, 1}, scan_sizes{21, 128, 3, 16, 2}, scan_sizes{49, 64, 2, 16, 1},
                                 scan_sizes{17, 256, 2, 4, 1}, scan_sizes{16, 128, 2, 8, 1}, scan_sizes{51, 64, 2, 32, 1},
                                 scan_sizes{50, 256, 2, 4, 1}, scan_sizes{53, 128, 2, 8, 1}, staged_without_options,
                                 scan_sizes{16, 96, 2, 16, 1}, scan_sizes{7, 128, 2, 16, 1}}) {
    INFO(sizes.name());
    ssm::test::scan_case<T> steps(sizes, 21);  // its u, delta, z, B, C are (B, D, L) / (B, G, N, L)
    auto const all = Kokkos::ALL;

    // the reference, on the host
    host3<float> state_expected("state_expected", sizes.batch, sizes.channels, sizes.state);
    host3<T> out_expected("out_expected", sizes.batch, sizes.channels, sizes.length);
    Kokkos::deep_copy(state_expected, steps.initial_state);
    auto step = [&](auto const& state, auto const& x, auto const& dt, auto const& A, auto const& B, auto const& C,
                    auto const& D, auto const& z, auto const& bias, auto const& out, std::size_t l) {
      using memory = typename std::decay_t<decltype(state)>::memory_space;
      ssm::selective_state_update_params<T, memory> p;
      p.state = state;
      p.x = Kokkos::subview(x, all, all, l);
      p.dt = Kokkos::subview(dt, all, all, l);
      p.A = A;
      p.B = Kokkos::subview(B, all, all, all, l);
      p.C = Kokkos::subview(C, all, all, all, l);
      if (sizes.has_D) p.D = D;
      if (sizes.has_z) p.z = Kokkos::subview(z, all, all, l);
      if (sizes.has_bias) p.dt_bias = bias;
      p.dt_softplus = sizes.softplus;
      p.out = Kokkos::subview(out, all, all, l);
      return p;
    };
    for (std::size_t l = 0; l < sizes.length; ++l)
      ssm::reference::selective_state_update(step(state_expected, steps.u, steps.delta, steps.A, steps.B, steps.C,
                                                  steps.D, steps.z, steps.delta_bias, out_expected, l));

    // on the GPU: B and C as strided slices of the scan's (B, G, N, L) tensors (the portable
    // path), and as contiguous copies, the mixer's layout (the CUDA kernel when N divides 32),
    // with and without the promise of a settled state (the staged kernel's early copies)
    for (int const variant : {0, 1, 2}) {
      bool const contiguous = variant > 0, settled = variant == 2;
      INFO((contiguous ? "contiguous B, C" : "strided B, C") << (settled ? ", settled state" : ""));
      auto const state = gpu::to_device(steps.initial_state);
      auto const u = gpu::to_device(steps.u), delta = gpu::to_device(steps.delta), z = gpu::to_device(steps.z);
      auto const A = gpu::to_device(steps.A);
      auto const D = gpu::to_device(steps.D), bias = gpu::to_device(steps.delta_bias);
      auto const B = gpu::to_device(steps.B), C = gpu::to_device(steps.C);
      gpu::dev3<T> out("out", sizes.batch, sizes.channels, sizes.length);
      gpu::poison(out);
      gpu::space space;
      gpu::dev3<T> B_l("B_l", sizes.batch, sizes.groups, sizes.state), C_l("C_l", sizes.batch, sizes.groups, sizes.state);
      for (std::size_t l = 0; l < sizes.length; ++l) {
        auto p = step(state, u, delta, A, B, C, D, z, bias, out, l);
        p.state_settled = settled;
        if (contiguous) {
          Kokkos::deep_copy(space, B_l, p.B);
          Kokkos::deep_copy(space, C_l, p.C);
          p.B = B_l;
          p.C = C_l;
        }
        ssm::selective_state_update(space, p);
      }
      space.fence();

      require_steps_close(steps, sizes, out, out_expected, state, state_expected);
    }
  }
}

TEMPLATE_TEST_CASE("cuda selective_state_update: dt as dt_proj (dt_low, dt_weight) matches the reference",
                   "[cuda][state_update]", float, ssm::f16, ssm::bf16) {
  using T = TestType;
  using ssm::test::scan_sizes;
  // dt_proj's inputs are exact sixty-fourths (`dt_proj_case`): every path sums them to the same dt,
  // tensor cores included, so the bounds are those of dt given. bf16 and f16 take the staged
  // kernel's tensor-core products (from 8 sequences, a group's channels a multiple of a block's);
  // fp32, an odd R and the rest the portable path.
  struct sized {
    scan_sizes sizes;
    std::size_t rank;
  };
  for (sized const c : {// 2 sequences a block, R = 160 (the 2.8B model's: 2.5 rounds of 64), 7 and 8 past the end
                        sized{{9, 128, 2, 16, 1}, 160}, sized{{49, 64, 2, 16, 1}, 160}, sized{{64, 128, 2, 16, 2}, 48},
                        // N = 4, 8 and 32 (4 or 8 sequences a block); R below one product's 16
                        sized{{17, 256, 2, 4, 1}, 6}, sized{{50, 256, 2, 4, 1}, 22}, sized{{53, 128, 2, 8, 1}, 40},
                        sized{{51, 64, 2, 32, 1}, 64},
                        // where the staged kernel does not take it: odd R, B = 7, D = 96
                        sized{{16, 128, 2, 16, 1}, 5}, sized{{7, 128, 2, 16, 1}, 8}, sized{{16, 96, 2, 16, 1}, 8}}) {
    scan_sizes const& sizes = c.sizes;
    INFO(sizes.name() << " R=" << c.rank);
    ssm::test::scan_case<T> steps(sizes, 27);
    auto const all = Kokkos::ALL;
    host3<float> state_expected("state_expected", sizes.batch, sizes.channels, sizes.state);
    host3<T> out_expected("out_expected", sizes.batch, sizes.channels, sizes.length);
    Kokkos::deep_copy(state_expected, steps.initial_state);
    auto const state = gpu::to_device(steps.initial_state);
    auto const u = gpu::to_device(steps.u), z = gpu::to_device(steps.z);
    auto const A = gpu::to_device(steps.A);
    auto const D = gpu::to_device(steps.D), bias = gpu::to_device(steps.delta_bias);
    gpu::dev3<T> out("out", sizes.batch, sizes.channels, sizes.length);
    gpu::poison(out);
    gpu::space space;
    for (std::size_t l = 0; l < sizes.length; ++l) {
      ssm::test::dt_proj_case<T, T> const dt_proj(sizes.batch, sizes.channels, c.rank, 60 + 2 * l);
      host3<T> B_l("B_l", sizes.batch, sizes.groups, sizes.state), C_l("C_l", sizes.batch, sizes.groups, sizes.state);
      Kokkos::deep_copy(B_l, Kokkos::subview(steps.B, all, all, all, l));
      Kokkos::deep_copy(C_l, Kokkos::subview(steps.C, all, all, all, l));
      ssm::selective_state_update_params<T, Kokkos::HostSpace> p;
      p.state = state_expected;
      p.x = Kokkos::subview(steps.u, all, all, l);
      p.dt_low = dt_proj.low;
      p.dt_weight = dt_proj.weight;
      p.A = steps.A;
      p.B = B_l;
      p.C = C_l;
      p.D = steps.D;
      p.z = Kokkos::subview(steps.z, all, all, l);
      p.dt_bias = steps.delta_bias;
      p.dt_softplus = true;
      p.out = Kokkos::subview(out_expected, all, all, l);
      ssm::reference::selective_state_update(p);

      // on the GPU: dt_low as the first R columns of a wider row, as x_proj's output holds it
      host2<T> wide("wide", sizes.batch, c.rank + 2 * sizes.state);
      Kokkos::deep_copy(Kokkos::subview(wide, all, std::make_pair(std::size_t{0}, c.rank)), dt_proj.low);
      auto const d_wide = gpu::to_device(wide);
      auto const d_weight = gpu::to_device(dt_proj.weight);
      auto const d_B = gpu::to_device(B_l), d_C = gpu::to_device(C_l);
      ssm::selective_state_update_params<T, gpu::memory> q;
      q.state = state;
      q.x = Kokkos::subview(u, all, all, l);
      q.dt_low = Kokkos::subview(d_wide, all, std::make_pair(std::size_t{0}, c.rank));
      q.dt_weight = d_weight;
      q.A = A;
      q.B = d_B;
      q.C = d_C;
      q.D = D;
      q.z = Kokkos::subview(z, all, all, l);
      q.dt_bias = bias;
      q.dt_softplus = true;
      q.out = Kokkos::subview(out, all, all, l);
      ssm::selective_state_update(space, q);
      space.fence();
    }
    require_steps_close(steps, sizes, out, out_expected, state, state_expected);
  }
}
