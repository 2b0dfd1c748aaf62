/// \file
/// \brief GPU tests of `ssm::causal_conv1d` and `ssm::causal_conv1d_update` on Kokkos::Cuda: the CUDA
/// kernels (`causal_conv1d_backend<Kokkos::Cuda>`) and the portable Kokkos path, both against the
/// sequential host reference, over edge shapes, options, aliased states and the layouts the model
/// uses; and the kernels' bandwidth at the target model's sizes (hidden tag [.bench]).

#include "catch.hpp"

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>

#include <ssm/conv/causal_conv1d.hpp>

#include "cuda_support.hpp"

namespace {

namespace gpu = ssm::test::gpu;
using ssm::test::host1;
using ssm::test::host2;
using ssm::test::host3;
using ssm::test::types;

/// Where the channels and tokens of a (B, D, L) activation, and of a (B, D, W-1) state, lie.
enum class layout {
  channel_major,  ///< (B, D, L) contiguous, stride 1 over l; states (B, D, W-1) contiguous
  token_major,    ///< (B, L, D) contiguous, stride 1 over d; states (B, W-1, D) contiguous
  in_proj,        ///< x the first half of a (B, L, 2D) buffer, out (B, L, D): the model's layout
};

char const* name(layout l) {
  switch (l) {
    case layout::channel_major: return "channel-major";
    case layout::token_major: return "token-major";
    default: return "in_proj halves";
  }
}

/// A rank-3 tensor with any strides, in a host buffer and a GPU buffer of the same layout.
template <class T>
struct strided3 {
  std::size_t n0, n1, n2, s0, s1, s2;
  host1<T> host;
  gpu::dev1<T> device;

  strided3(std::string const& label, std::size_t e0, std::size_t e1, std::size_t e2, std::size_t t0, std::size_t t1,
           std::size_t t2)
      : n0(e0), n1(e1), n2(e2), s0(t0), s1(t1), s2(t2),
        host(label, e0 * e1 * e2 == 0 ? 0 : 1 + (e0 - 1) * t0 + (e1 - 1) * t1 + (e2 - 1) * t2),
        device(label, host.extent(0)) {}

  ssm::view3<T, Kokkos::HostSpace> on_host() const { return ssm::strided(host.data(), n0, s0, n1, s1, n2, s2); }
  ssm::view3<T, gpu::memory> on_device() const {
    return ssm::strided<T, gpu::memory>(device.data(), n0, s0, n1, s1, n2, s2);
  }
  void upload() const { Kokkos::deep_copy(device, host); }
  /// The host buffer's values as a contiguous (n0, n1, n2) tensor.
  host3<T> gather() const {
    host3<T> dense("dense", n0, n1, n2);
    auto const v = on_host();
    for (std::size_t i = 0; i < n0; ++i)
      for (std::size_t j = 0; j < n1; ++j)
        for (std::size_t k = 0; k < n2; ++k) dense(i, j, k) = v(i, j, k);
    return dense;
  }
  /// The GPU buffer's values as a contiguous (n0, n1, n2) tensor (the host buffer is left alone).
  host3<T> download() const {
    strided3 copy = *this;
    copy.host = host1<T>("download", host.extent(0));
    Kokkos::deep_copy(copy.host, device);
    return copy.gather();
  }
};

/// A (B, D, L) activation in layout `l`; `input` picks the u half of in_proj's (B, L, 2D) output.
template <class T>
strided3<T> activation(std::string const& label, std::size_t B, std::size_t D, std::size_t L, layout l, bool input) {
  switch (l) {
    case layout::channel_major: return strided3<T>(label, B, D, L, D * L, L, 1);
    case layout::token_major: return strided3<T>(label, B, D, L, L * D, 1, D);
    default: return input ? strided3<T>(label, B, D, L, 2 * L * D, 1, 2 * D) : strided3<T>(label, B, D, L, L * D, 1, D);
  }
}

/// A (B, D, W-1) state in layout `l`.
template <class T>
strided3<T> state(std::string const& label, std::size_t B, std::size_t D, std::size_t W, layout l) {
  if (l == layout::token_major) return strided3<T>(label, B, D, W - 1, (W - 1) * D, 1, D);
  return strided3<T>(label, B, D, W - 1, D * (W - 1), W - 1, 1);
}

/// Each output is a sum of W products of values in [-1, 1) plus a bias: |sum| <= W + 1, and an fp32
/// evaluation of W + 1 terms (the GPU contracts them into FMAs; the bound covers any order and
/// rounding of them); SiLU is 1.1-Lipschitz, well inside the factor 4 of headroom. With SiLU the two
/// sides also evaluate it differently (`fast_silu` on the GPU, documented within 8 x 2^-24 relative;
/// `silu` in the reference, a few units): 16 x 2^-24 relative more.
template <class T>
ssm::test::tolerance conv_tolerance(std::size_t W, bool silu) {
  auto tol = ssm::test::derived_tolerance<T>(W + 1, static_cast<double>(W + 1));
  if (silu) tol.rel += 16.0 * 0x1p-24;
  return tol;
}

constexpr ssm::test::tolerance exact{0.0, 0.0};

/// The two GPU paths under test.
enum class path { kernel, portable };

char const* name(path p) { return p == path::kernel ? "CUDA kernel" : "portable Kokkos path"; }

template <class T, class Wt>
void run_forward(path which, ssm::causal_conv1d_params<T, Wt, gpu::memory> const& p) {
  gpu::space space;
  if (which == path::kernel) ssm::causal_conv1d(space, p);  // dispatches to causal_conv1d_backend<Kokkos::Cuda>
  else ssm::detail::causal_conv1d_portable(space, p, ssm::detail::check(p, "test"));
  space.fence();
}

template <class T, class Wt>
void run_update(path which, ssm::causal_conv1d_update_params<T, Wt, gpu::memory> const& p) {
  gpu::space space;
  if (which == path::kernel) ssm::causal_conv1d_update(space, p);
  else ssm::detail::causal_conv1d_update_portable(space, p, ssm::detail::check(p, "test"));
  space.fence();
}

/// Both GPU paths against the reference for one shape and layout, every option: bias, SiLU,
/// initial_state, final_state, and initial_state and final_state the same memory.
template <class T, class Wt>
void compare_forward(std::size_t B, std::size_t D, std::size_t L, std::size_t W, layout lay) {
  std::uint64_t const seed = 1000 * B + 100 * D + 10 * L + W;
  auto x = activation<T>("x", B, D, L, lay, true);
  auto out = activation<T>("out", B, D, L, lay, false);
  auto initial = state<T>("initial", B, D, W, lay);
  auto final_state = state<T>("final", B, D, W, lay);
  auto shared = state<T>("shared", B, D, W, lay);  // initial and final state at once
  host2<Wt> weight("weight", D, W);
  host1<Wt> bias("bias", D);
  ssm::test::fill_uniform(x.host, seed);
  ssm::test::fill_uniform(weight, seed + 1);
  ssm::test::fill_uniform(bias, seed + 2);
  ssm::test::fill_uniform(initial.host, seed + 3);
  x.upload();
  initial.upload();
  auto const weight_d = gpu::to_device(weight);
  auto const bias_d = gpu::to_device(bias);
  // the same filters with rows W + 1 apart, which the kernels read value by value rather than as
  // 16-byte pieces; used where initial_state is given
  host2<Wt> padded("padded weight", D, W + 1);
  for (std::size_t d = 0; d < D; ++d)
    for (std::size_t k = 0; k < W; ++k) padded(d, k) = weight(d, k);
  auto const padded_d = gpu::to_device(padded);
  ssm::view2<const Wt, gpu::memory> const weight_rows =
      Kokkos::subview(padded_d, Kokkos::ALL, std::make_pair(std::size_t{0}, W));

  for (int options = 0; options < 20; ++options) {
    // 0..15: every combination of the four flags; 16..19: aliased states, with and without bias, SiLU
    bool const aliased = options >= 16;
    bool const has_bias = options & 1, silu = options & 2;
    bool const has_initial = aliased || (options & 4), has_final = aliased || (options & 8);
    CAPTURE(B, D, L, W, name(lay), has_bias, silu, has_initial, has_final, aliased);

    ssm::causal_conv1d_params<T, Wt, Kokkos::HostSpace> r;
    r.x = x.on_host();
    r.weight = weight;
    if (has_bias) r.bias = bias;
    r.silu_activation = silu;
    if (has_initial) r.initial_state = initial.on_host();
    r.out = out.on_host();
    if (has_final) r.final_state = final_state.on_host();
    ssm::reference::causal_conv1d(r);
    auto const out_expected = out.gather();
    auto const final_expected = final_state.gather();

    for (path const which : {path::kernel, path::portable}) {
      INFO(name(which));
      ssm::causal_conv1d_params<T, Wt, gpu::memory> p;
      p.x = x.on_device();
      if (has_initial) p.weight = weight_rows;
      else p.weight = weight_d;
      if (has_bias) p.bias = bias_d;
      p.silu_activation = silu;
      gpu::poison(out.device);
      p.out = out.on_device();
      auto const& written = aliased ? shared : final_state;
      if (aliased) {
        Kokkos::deep_copy(shared.device, initial.device);
        p.initial_state = shared.on_device();
        p.final_state = shared.on_device();
      } else {
        if (has_initial) p.initial_state = initial.on_device();
        gpu::poison(final_state.device);
        if (has_final) p.final_state = final_state.on_device();
      }
      run_forward(which, p);
      ssm::test::require_close(out.download(), out_expected, conv_tolerance<T>(W, silu), "out");
      if (has_final) ssm::test::require_close(written.download(), final_expected, exact, "final_state");
    }
  }
}

/// L streaming steps of both GPU paths against L steps of the reference, every option.
template <class T, class Wt>
void compare_update(std::size_t B, std::size_t D, std::size_t L, std::size_t W, layout lay) {
  std::uint64_t const seed = 7000 + 1000 * B + 100 * D + 10 * L + W;
  auto x = activation<T>("x", B, D, L, lay, true);
  auto out = activation<T>("out", B, D, L, lay, false);
  auto initial = state<T>("initial", B, D, W, lay);
  auto running = state<T>("state", B, D, W, lay);
  host2<Wt> weight("weight", D, W);
  host1<Wt> bias("bias", D);
  ssm::test::fill_uniform(x.host, seed);
  ssm::test::fill_uniform(weight, seed + 1);
  ssm::test::fill_uniform(bias, seed + 2);
  ssm::test::fill_uniform(initial.host, seed + 3);
  x.upload();
  initial.upload();
  auto const weight_d = gpu::to_device(weight);
  auto const bias_d = gpu::to_device(bias);
  auto const all = Kokkos::ALL;

  for (int options = 0; options < 4; ++options) {
    bool const has_bias = options & 1, silu = options & 2;
    CAPTURE(B, D, L, W, name(lay), has_bias, silu);
    Kokkos::deep_copy(running.host, initial.host);
    for (std::size_t l = 0; l < L; ++l) {
      ssm::causal_conv1d_update_params<T, Wt, Kokkos::HostSpace> r;
      r.x = Kokkos::subview(x.on_host(), all, all, l);
      r.state = running.on_host();
      r.weight = weight;
      if (has_bias) r.bias = bias;
      r.silu_activation = silu;
      r.out = Kokkos::subview(out.on_host(), all, all, l);
      ssm::reference::causal_conv1d_update(r);
    }
    auto const out_expected = out.gather();
    auto const state_expected = running.gather();

    for (path const which : {path::kernel, path::portable}) {
      INFO(name(which));
      gpu::poison(out.device);
      Kokkos::deep_copy(running.device, initial.device);
      for (std::size_t l = 0; l < L; ++l) {
        ssm::causal_conv1d_update_params<T, Wt, gpu::memory> p;
        p.x = Kokkos::subview(x.on_device(), all, all, l);
        p.state = running.on_device();
        p.weight = weight_d;
        if (has_bias) p.bias = bias_d;
        p.silu_activation = silu;
        p.out = Kokkos::subview(out.on_device(), all, all, l);
        run_update(which, p);
      }
      ssm::test::require_close(out.download(), out_expected, conv_tolerance<T>(W, silu), "out");
      ssm::test::require_close(running.download(), state_expected, exact, "state");
    }
  }
}

}  // namespace

TEMPLATE_TEST_CASE("cuda causal_conv1d: kernel and portable path match the reference", "[cuda][conv]",
                   (types<float, float>), (types<ssm::f16, ssm::f16>), (types<ssm::bf16, ssm::bf16>),
                   (types<ssm::bf16, float>)) {
  using T = typename TestType::act;
  using Wt = typename TestType::weight;
  // L = 16, 17, 40: one run of tokens per thread, one more token, several runs; D = 130: two blocks
  // of the kernel with a channel a thread; D = 8 and 1032: the kernel with 16-byte pieces of
  // channels in token-major layouts (one piece; two blocks, the second with one piece in f16/bf16)
  for (layout const lay : {layout::channel_major, layout::token_major, layout::in_proj})
    for (std::size_t const B : {1, 3})
      for (std::size_t const D : {1, 8, 37, 130, 1032})
        for (std::size_t const L : {0, 1, 2, 7, 16, 17, 40})
          for (std::size_t const W : {1, 2, 3, 4, 8}) compare_forward<T, Wt>(B, D, L, W, lay);
}

TEMPLATE_TEST_CASE("cuda causal_conv1d_update: kernel and portable path match the reference step by step",
                   "[cuda][conv][update]", (types<float, float>), (types<ssm::f16, ssm::f16>),
                   (types<ssm::bf16, ssm::bf16>), (types<ssm::bf16, float>)) {
  using T = typename TestType::act;
  using Wt = typename TestType::weight;
  for (layout const lay : {layout::channel_major, layout::token_major, layout::in_proj})
    for (std::size_t const B : {1, 3})
      for (std::size_t const D : {1, 37, 130})
        for (std::size_t const L : {1, 5})
          for (std::size_t const W : {1, 2, 3, 4, 8}) compare_update<T, Wt>(B, D, L, W, lay);
}

TEST_CASE("cuda causal_conv1d: bandwidth at B=1, D=5120, L=2048, W=4, bf16", "[.bench]") {
  using T = ssm::bf16;
  std::size_t const B = 1, D = 5120, L = 2048, W = 4;
  auto x = activation<T>("x", B, D, L, layout::in_proj, true);
  auto out = activation<T>("out", B, D, L, layout::in_proj, false);
  host2<T> weight("weight", D, W);
  host1<T> bias("bias", D);
  ssm::test::fill_uniform(x.host, 1);
  ssm::test::fill_uniform(weight, 2);
  ssm::test::fill_uniform(bias, 3);
  x.upload();
  ssm::causal_conv1d_params<T, T, gpu::memory> p;
  p.x = x.on_device();
  p.weight = gpu::to_device(weight);
  p.bias = gpu::to_device(bias);
  p.silu_activation = true;
  p.out = out.on_device();
  auto const s = ssm::detail::check(p, "bench");
  // x read and out written once; the weights are negligible
  double const bytes = static_cast<double>(B * D * L * 2 * sizeof(T) + D * (W + 1) * sizeof(T));
  auto report = [&](char const* what, double ms) {
    std::printf("causal_conv1d %-22s B=%zu D=%zu L=%zu W=%zu bf16 (in_proj layout): %.4f ms, %.0f GB/s\n", what, B, D,
                L, W, ms, bytes / (ms * 1e-3) / 1e9);
  };
  report("CUDA kernel", gpu::milliseconds_per_call(gpu::space(), 50, [&](gpu::space const& sp) {
           ssm::causal_conv1d_backend<Kokkos::Cuda>::run(sp, p, s);
         }));
  report("portable Kokkos path", gpu::milliseconds_per_call(gpu::space(), 50, [&](gpu::space const& sp) {
           ssm::detail::causal_conv1d_portable(sp, p, s);
         }));

  // one decoding step of the same layer
  auto state_d = state<T>("state", B, D, W, layout::in_proj);
  auto x1 = activation<T>("x1", B, D, 1, layout::in_proj, true);
  auto out1 = activation<T>("out1", B, D, 1, layout::in_proj, false);
  ssm::causal_conv1d_update_params<T, T, gpu::memory> u;
  u.x = Kokkos::subview(x1.on_device(), Kokkos::ALL, Kokkos::ALL, 0);
  u.state = state_d.on_device();
  u.weight = p.weight;
  u.bias = p.bias;
  u.silu_activation = true;
  u.out = Kokkos::subview(out1.on_device(), Kokkos::ALL, Kokkos::ALL, 0);
  auto const s1 = ssm::detail::check(u, "bench");
  double const update_bytes = static_cast<double>(B * D * (2 + 2 * (W - 1)) * sizeof(T) + D * (W + 1) * sizeof(T));
  auto report_update = [&](char const* what, double ms) {
    std::printf("causal_conv1d_update %-22s B=%zu D=%zu W=%zu bf16: %.4f ms, %.0f GB/s\n", what, B, D, W, ms,
                update_bytes / (ms * 1e-3) / 1e9);
  };
  report_update("CUDA kernel", gpu::milliseconds_per_call(gpu::space(), 200, [&](gpu::space const& sp) {
                  ssm::causal_conv1d_backend<Kokkos::Cuda>::run(sp, u, s1);
                }));
  report_update("portable Kokkos path", gpu::milliseconds_per_call(gpu::space(), 200, [&](gpu::space const& sp) {
                  ssm::detail::causal_conv1d_update_portable(sp, u, s1);
                }));
}
