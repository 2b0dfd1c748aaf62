// The selective scan on the GPU: the CUDA kernel (as the backend configures it, with each sequence
// cut into every number of pieces, and with 1, 2 or 4 tiles of channels per block) and the
// portable Kokkos path on Kokkos::Cuda, each against the sequential host reference, over edge
// shapes, storage types and optional inputs, with the state updated in place, and in the Mamba
// block's layout.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <ssm/scan/selective_scan.hpp>

#include "catch.hpp"
#include "cuda/cuda_support.hpp"
#include "scan/scan_case.hpp"
#include "support.hpp"

using namespace ssm;
using namespace ssm::test;

namespace {

namespace kernel = ssm::cuda::detail;

/// The bound of `derived_tolerance` for the GPU paths, whose fp32 math uses approximate
/// transcendentals: the kernels' `ex2.approx` and the softplus polynomial have relative errors of
/// about 2^-22 (PTX ISA; the fit's error is measured below 1.2e-7), the portable path's `fast_exp`
/// below 2^-23. Each of the `terms` steps is therefore charged 2^-22 instead of 2^-24.
template <class T>
tolerance gpu_tolerance(std::size_t terms, double scale) {
  tolerance t = derived_tolerance<T>(terms, scale);
  t.abs += 4.0 * static_cast<double>(terms) * (0x1p-22 - 0x1p-24) * scale;
  return t;
}

/// The ways to run a scan on the GPU: as the backend chooses, the portable Kokkos path, and the
/// kernel with each sequence cut into 1, 2, 4, 8 or 16 pieces, and in 1 or 16 pieces with 1 or 2
/// tiles of 32 channels per block instead of the default 4 (so that the last block holds tiles
/// past the last one), and in 2 to 16 pieces whose blocks meet through memory.
struct path {
  std::string name;
  int pieces;  ///< the kernel's pieces, or 0 for the backend and -1 for the portable path
  kernel::scan_config config = {};  ///< the kernel's configuration (pieces as above)
};

std::vector<path> make_paths() {
  std::vector<path> paths = {{"backend", 0}, {"portable", -1}};
  for (int pieces : {1, 2, 4, 8, 16}) {
    kernel::scan_config c;
    c.pieces = pieces;
    paths.push_back({"kernel, " + std::to_string(pieces) + (pieces == 1 ? " piece" : " pieces"), pieces, c});
  }
  for (int tiles : {1, 2})
    for (int pieces : {1, 16})
      paths.push_back({"kernel, " + std::to_string(pieces) + (pieces == 1 ? " piece, " : " pieces, ") +
                           std::to_string(tiles) + " tiles per block",
                       pieces, kernel::scan_config{pieces, tiles}});
  // the pieces' blocks meeting through memory, as GPUs without clusters run them
  for (int pieces : {2, 4, 8, 16})
    paths.push_back({"kernel, " + std::to_string(pieces) + " pieces through memory", pieces,
                     kernel::scan_config{pieces, kernel::scan_config{}.tiles_per_block, true}});
  paths.push_back({"kernel, 16 pieces through memory, 1 tile per block", 16, kernel::scan_config{16, 1, true}});
  return paths;
}

std::vector<path> const all_paths = make_paths();

/// Whether `p` can run a scan of sizes `s` on this GPU (pieces need N <= 16 and clusters: Hopper).
template <class T>
bool applies(path const& p, scan_shape const& s) {
  if (p.pieces <= 0) return true;
  if (!kernel::kernel_supports(s)) return false;
  if (p.pieces == 1) return true;
  if (p.config.through_memory) {  // any GPU, if the grid is resident at once (the tests' grids are small)
    std::size_t const tiles = s.batch * ((s.channels + 31) / 32);
    std::size_t const blocks = (tiles + static_cast<std::size_t>(p.config.tiles_per_block) - 1) /
                               static_cast<std::size_t>(p.config.tiles_per_block) * static_cast<std::size_t>(p.pieces);
    return s.state <= 16 && blocks <= 1024;
  }
  int log2_pieces = 0;
  while ((1 << log2_pieces) < p.pieces) ++log2_pieces;
  return s.state <= 16 && kernel::scan_occupancy_of<T>(gpu::space().cuda_device()).resident[log2_pieces] > 0;
}

/// Enqueue the scan on the GPU by path `p`.
template <class T>
void run(path const& p, selective_scan_params<T, gpu::memory> const& params) {
  auto const s = ssm::detail::check(params, "test");
  if (p.pieces == 0) selective_scan(gpu::space(), params);
  else if (p.pieces < 0) ssm::detail::selective_scan_portable(gpu::space(), params, s);
  else kernel::selective_scan_kernel(gpu::space(), params, s, p.config);
}

/// A scan problem copied to the GPU, with the same optional inputs as the host one.
template <class T>
struct device_case {
  scan_sizes s;
  gpu::dev3<T> u, delta, z, out;
  gpu::dev2<float> A;
  gpu::dev4<T> B, C;
  gpu::dev1<float> D, delta_bias;
  gpu::dev3<float> initial_state, final_state;

  explicit device_case(scan_case<T> const& c)
      : s(c.s), u(gpu::to_device(c.u)), delta(gpu::to_device(c.delta)), z(gpu::to_device(c.z)),
        out(gpu::to_device(c.out)), A(gpu::to_device(c.A)), B(gpu::to_device(c.B)), C(gpu::to_device(c.C)),
        D(gpu::to_device(c.D)), delta_bias(gpu::to_device(c.delta_bias)),
        initial_state(gpu::to_device(c.initial_state)), final_state(gpu::to_device(c.final_state)) {}

  selective_scan_params<T, gpu::memory> params() const {
    selective_scan_params<T, gpu::memory> p;
    p.u = u, p.delta = delta, p.A = A, p.B = B, p.C = C, p.out = out, p.final_state = final_state;
    if (s.has_D) p.D = D;
    if (s.has_z) p.z = z;
    if (s.has_bias) p.delta_bias = delta_bias;
    p.delta_softplus = s.softplus;
    if (s.has_initial) p.initial_state = initial_state;
    return p;
  }
};

/// Run `p` on a fresh (poisoned) output and final state; compare both with the reference's.
template <class T>
void check_path(path const& p, scan_case<T> const& expected, device_case<T> const& gpu_case) {
  INFO(p.name << ": " << expected.s.name());
  gpu::poison(gpu_case.out);
  gpu::poison(gpu_case.final_state);
  run(p, gpu_case.params());
  gpu::space().fence();
  std::size_t const terms = expected.s.length + expected.s.state;
  require_close(gpu::to_host(gpu_case.out), expected.out, gpu_tolerance<T>(terms, max_abs(expected.out)), "out");
  require_close(gpu::to_host(gpu_case.final_state), expected.final_state,
                gpu_tolerance<float>(terms, max_abs(expected.final_state)), "final state");
}

/// B, D, L, N, G. L = 1; L odd, and not a multiple of the kernel's step of 4 tokens or of any number
/// of pieces, so that the last piece ends mid-step and the last pieces can be empty (L = 7 in 16
/// pieces of 4 tokens); L = 3000; D below, at and above a tile of 32 channels, and not a multiple;
/// B > 1; N = 1, N < 16, N = 16, N = 64 (4 slices of 16) and N = 200 (a partial last slice);
/// groups of B and C that hold whole tiles (32 or 64 channels each) and, on the backend and the
/// portable path only, groups of 3 channels that split a tile.
std::vector<scan_sizes> edge_shapes() {
  return {
      {1, 1, 1, 1, 1},    {2, 5, 7, 1, 1},     {1, 19, 33, 16, 1},  {2, 64, 17, 12, 2},  {1, 40, 100, 16, 1},
      {1, 32, 3000, 16, 1}, {3, 9, 1, 5, 3},   {1, 64, 50, 64, 2},  {1, 3, 5, 200, 1},   {2, 96, 300, 16, 3},
  };
}

/// The optional inputs to try: all 32 combinations on small shapes; on large ones none, all, and
/// combinations that leave each one out in turn.
std::vector<int> options_for(scan_sizes const& s) {
  std::vector<int> options;
  if (s.channels * s.length <= 1024)
    for (int o = 0; o < 32; ++o) options.push_back(o);
  else
    options = {0, 31, 30, 29, 27, 23, 15};
  return options;
}

}  // namespace

TEMPLATE_TEST_CASE("selective scan on the GPU: every path equals the reference", "[cuda][scan]", float, f16, bf16) {
  using T = TestType;
  std::uint64_t seed = 500;
  for (auto sizes : edge_shapes()) {
    for (int options : options_for(sizes)) {
      sizes.has_D = options & 1, sizes.has_z = options & 2, sizes.has_bias = options & 4;
      sizes.softplus = options & 8, sizes.has_initial = options & 16;
      scan_case<T> expected(sizes, seed++);
      reference::selective_scan(expected.params());
      device_case<T> const gpu_case(expected);
      auto const shape = ssm::detail::check(gpu_case.params(), "test");
      for (path const& p : all_paths)
        if (applies<T>(p, shape)) check_path(p, expected, gpu_case);
    }
  }
}

TEMPLATE_TEST_CASE("selective scan on the GPU: the state updated in place, and no final state", "[cuda][scan]",
                   float, bf16) {
  using T = TestType;
  // N = 16 runs the kernel in every number of pieces; N = 64 in 4 slices of states.
  for (scan_sizes const sizes : {scan_sizes{2, 64, 200, 16, 1}, scan_sizes{1, 64, 50, 64, 2}}) {
    scan_case<T> expected(sizes, 77);
    reference::selective_scan(expected.params());
    device_case<T> const gpu_case(expected);
    auto const shape = ssm::detail::check(gpu_case.params(), "test");
    std::size_t const terms = sizes.length + sizes.state;
    for (path const& p : all_paths) {
      if (!applies<T>(p, shape)) continue;
      INFO(p.name << ": " << sizes.name());
      // in place: one (B, D, N) tensor holds h0 on entry and hL on return
      auto const state = gpu::to_device(expected.initial_state);
      auto params = gpu_case.params();
      params.initial_state = state;
      params.final_state = state;
      gpu::poison(gpu_case.out);
      run(p, params);
      gpu::space().fence();
      require_close(gpu::to_host(state), expected.final_state,
                    gpu_tolerance<float>(terms, max_abs(expected.final_state)), "state in place");
      require_close(gpu::to_host(gpu_case.out), expected.out, gpu_tolerance<T>(terms, max_abs(expected.out)),
                    "out, state in place");
      // no final state: the outputs alone, and nothing written to a final state
      params = gpu_case.params();
      params.final_state = {};
      gpu::poison(gpu_case.out);
      gpu::poison(gpu_case.final_state);
      run(p, params);
      gpu::space().fence();
      require_close(gpu::to_host(gpu_case.out), expected.out, gpu_tolerance<T>(terms, max_abs(expected.out)),
                    "out, no final state");
      auto const untouched = gpu::to_host(gpu_case.final_state);
      bool all_poison = true;
      for (std::size_t i = 0; i < untouched.span(); ++i) all_poison = all_poison && std::isnan(untouched.data()[i]);
      CHECK(all_poison);
    }
  }
}

/// Run every path on a scan in the Mamba block's token-major layout (see the test case below), and
/// compare the outputs and final state with the reference.
template <class T>
void check_token_major(scan_sizes const& sizes) {
  std::size_t const B = sizes.batch, D = sizes.channels, L = sizes.length, N = sizes.state, R = 8;
  std::size_t const xw = R + 2 * N;
  scan_case<T> expected(sizes, 91);
  reference::selective_scan(expected.params());

  host3<T> u("u", B, L, D), delta("delta", B, L, D), xz("xz", B, L, 2 * D);
  host2<T> xdbl("xdbl", B * L, xw);
  for (std::size_t b = 0; b < B; ++b)
    for (std::size_t l = 0; l < L; ++l) {
      for (std::size_t d = 0; d < D; ++d) {
        u(b, l, d) = expected.u(b, d, l);
        delta(b, l, d) = expected.delta(b, d, l);
        xz(b, l, D + d) = expected.z(b, d, l);
      }
      for (std::size_t n = 0; n < N; ++n) {
        xdbl(b * L + l, R + n) = expected.B(b, 0, n, l);
        xdbl(b * L + l, R + N + n) = expected.C(b, 0, n, l);
      }
    }
  device_case<T> const gpu_case(expected);
  auto const u_dev = gpu::to_device(u), delta_dev = gpu::to_device(delta), xz_dev = gpu::to_device(xz);
  auto const xdbl_dev = gpu::to_device(xdbl);
  gpu::dev3<T> out_dev("out", B, L, D);
  using M = gpu::memory;
  auto params = gpu_case.params();
  params.u = strided<const T, M>(u_dev.data(), B, L * D, D, 1, L, D);
  params.delta = strided<const T, M>(delta_dev.data(), B, L * D, D, 1, L, D);
  params.z = strided<const T, M>(xz_dev.data() + D, B, L * 2 * D, D, 1, L, 2 * D);
  params.B = view4<const T, M>(xdbl_dev.data() + R, Kokkos::LayoutStride(B, L * xw, 1, L * xw, N, 1, L, xw));
  params.C = view4<const T, M>(xdbl_dev.data() + R + N, Kokkos::LayoutStride(B, L * xw, 1, L * xw, N, 1, L, xw));
  params.out = strided<T, M>(out_dev.data(), B, L * D, D, 1, L, D);
  auto const shape = ssm::detail::check(params, "test");
  for (path const& p : all_paths) {
    if (!applies<T>(p, shape)) continue;
    INFO(p.name << ": " << sizes.name());
    gpu::poison(out_dev);
    gpu::poison(gpu_case.final_state);
    run(p, params);
    gpu::space().fence();
    auto const out_host = gpu::to_host(out_dev);
    host3<T> out("out", B, D, L);
    for (std::size_t b = 0; b < B; ++b)
      for (std::size_t d = 0; d < D; ++d)
        for (std::size_t l = 0; l < L; ++l) out(b, d, l) = out_host(b, l, d);
    std::size_t const terms = L + N;
    require_close(out, expected.out, gpu_tolerance<T>(terms, max_abs(expected.out)), "token-major out");
    require_close(gpu::to_host(gpu_case.final_state), expected.final_state,
                  gpu_tolerance<float>(terms, max_abs(expected.final_state)), "final state");
  }
}

TEMPLATE_TEST_CASE("selective scan on the GPU: the Mamba block's token-major layout", "[cuda][scan]", float, bf16) {
  using T = TestType;
  // As ssm::mamba_mixer lays the tensors out: u, delta and out (B, L, D); z the second half of
  // in_proj's (B, L, 2D) output; B and C columns R and R + N of x_proj's (B*L, R + 2N) output. The
  // kernel prefetches into L2 in this layout only: 2 x 64 channels over 300 tokens, and one
  // partial tile (9 channels: the prefetch's second half, from channel 16, stops at the last one)
  // over 45 tokens (the last step is partial, and the prefetch stops at the last token).
  for (scan_sizes const sizes : {scan_sizes{2, 64, 300, 16, 1}, scan_sizes{1, 9, 45, 5, 1}})
    check_token_major<T>(sizes);
}
