/// \file
/// \brief GPU tests of `ssm::rms_norm` on Kokkos::Cuda: the CUDA kernel (`rms_norm_backend<Kokkos::Cuda>`)
/// and the portable Kokkos path, both against the sequential host reference, over edge shapes, the
/// optional and aliased residual, and layouts that take the kernel's vectorized path, its vectorized
/// path with a scalar tail, and its strided path; and the kernel's bandwidth at the target model's
/// sizes (hidden tag [.bench]).

#include "catch.hpp"

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

#include <ssm/norm/rms_norm.hpp>

#include "cuda_support.hpp"

namespace {

namespace gpu = ssm::test::gpu;
using ssm::test::host1;
using ssm::test::host2;
using ssm::test::types;

/// Where the rows and features of the (M, E) tensors, and of the weight (E), lie.
enum class layout {
  contiguous,  ///< rows of E, weight contiguous: vectorized where E is a multiple of 8
  padded,      ///< rows padded to a multiple of 8 plus 8: vectorized, with a scalar tail when 8 does not divide E
  misaligned,  ///< contiguous, but every tensor starts one element past an aligned address: strided path
  transposed,  ///< stride 1 over rows, M over features, weight stride 3: strided path
};

char const* name(layout l) {
  switch (l) {
    case layout::contiguous: return "contiguous";
    case layout::padded: return "padded rows";
    case layout::misaligned: return "misaligned";
    default: return "transposed";
  }
}

/// A rank-2 tensor (or, with n0 = 1 seen as rank 1, the weight) with any strides and a start
/// offset, in a host buffer and a GPU buffer of the same layout.
template <class T>
struct strided2 {
  std::size_t n0, n1, s0, s1, offset;
  host1<T> host;
  gpu::dev1<T> device;

  strided2(std::string const& label, std::size_t e0, std::size_t e1, std::size_t t0, std::size_t t1, std::size_t start)
      : n0(e0), n1(e1), s0(t0), s1(t1), offset(start),
        host(label, start + (e0 * e1 == 0 ? 0 : 1 + (e0 - 1) * t0 + (e1 - 1) * t1)), device(label, host.extent(0)) {}

  ssm::view2<T, Kokkos::HostSpace> on_host() const { return ssm::strided(host.data() + offset, n0, s0, n1, s1); }
  ssm::view2<T, gpu::memory> on_device() const {
    return ssm::strided<T, gpu::memory>(device.data() + offset, n0, s0, n1, s1);
  }
  /// Row 0 as a rank-1 tensor (for the weight).
  ssm::view1<T, Kokkos::HostSpace> row_on_host() const { return Kokkos::subview(on_host(), 0, Kokkos::ALL); }
  ssm::view1<T, gpu::memory> row_on_device() const { return Kokkos::subview(on_device(), 0, Kokkos::ALL); }
  void upload() const { Kokkos::deep_copy(device, host); }
  /// The host buffer's values as a contiguous (n0, n1) tensor.
  host2<T> gather() const {
    host2<T> dense("dense", n0, n1);
    auto const v = on_host();
    for (std::size_t i = 0; i < n0; ++i)
      for (std::size_t j = 0; j < n1; ++j) dense(i, j) = v(i, j);
    return dense;
  }
  /// The GPU buffer's values as a contiguous (n0, n1) tensor (the host buffer is left alone).
  host2<T> download() const {
    strided2 copy = *this;
    copy.host = host1<T>("download", host.extent(0));
    Kokkos::deep_copy(copy.host, device);
    return copy.gather();
  }
};

/// An (M, E) tensor in layout `l`.
template <class T>
strided2<T> rows(std::string const& label, std::size_t M, std::size_t E, layout l) {
  switch (l) {
    case layout::contiguous: return strided2<T>(label, M, E, E, 1, 0);
    case layout::padded: return strided2<T>(label, M, E, (E + 7) / 8 * 8 + 8, 1, 0);
    case layout::misaligned: return strided2<T>(label, M, E, E, 1, 1);
    default: return strided2<T>(label, M, E, 1, M, 0);
  }
}

/// The weight (E) in layout `l`, as row 0 of a (1, E) tensor.
template <class T>
strided2<T> weights(std::size_t E, layout l) {
  switch (l) {
    case layout::misaligned: return strided2<T>("weight", 1, E, E, 1, 1);
    case layout::transposed: return strided2<T>("weight", 1, E, 3 * E, 3, 0);
    default: return strided2<T>("weight", 1, E, E, 1, 0);
  }
}

// The sum of squares is an fp32 sum of E terms; reassociating it (the GPU reduces in a tree, the
// reference in order) moves 1/rms by at most about E 2^-24 relative, and the output is rounded once
// to T: derived_tolerance over E terms, scaled by the largest output. residual_out is x + residual
// in fp32 on both sides: exact.
template <class T, class View>
ssm::test::tolerance out_tolerance(std::size_t E, View const& expected) {
  return ssm::test::derived_tolerance<T>(E, ssm::test::max_abs(expected));
}

constexpr ssm::test::tolerance exact{0.0, 0.0};

enum class path { kernel, portable };

char const* name(path p) { return p == path::kernel ? "CUDA kernel" : "portable Kokkos path"; }

/// Both GPU paths against the reference for one shape and layout, every option: with and without
/// residual and residual_out, and the two the same memory.
template <class T, class Wt>
void compare(std::size_t M, std::size_t E, layout lay) {
  std::uint64_t const seed = 100 * M + E;
  auto x = rows<T>("x", M, E, lay);
  auto residual = rows<float>("residual", M, E, lay);
  auto out = rows<T>("out", M, E, lay);
  auto residual_out = rows<float>("residual_out", M, E, lay);
  auto stream = rows<float>("stream", M, E, lay);  // residual and residual_out at once
  auto weight = weights<Wt>(E, lay);
  ssm::test::fill_uniform(x.host, seed, -2.0f, 2.0f);
  ssm::test::fill_uniform(residual.host, seed + 1, -2.0f, 2.0f);
  ssm::test::fill_uniform(weight.host, seed + 2, -1.5f, 1.5f);
  x.upload();
  residual.upload();
  weight.upload();
  float const eps = 1e-5f;

  for (int options = 0; options < 5; ++options) {
    bool const aliased = options == 4;
    bool const has_residual = aliased || (options & 1), has_residual_out = aliased || (options & 2);
    CAPTURE(M, E, name(lay), has_residual, has_residual_out, aliased);

    ssm::rms_norm_params<T, Wt, Kokkos::HostSpace> r;
    r.x = x.on_host();
    if (has_residual) r.residual = residual.on_host();
    r.weight = weight.row_on_host();
    r.eps = eps;
    r.out = out.on_host();
    if (has_residual_out) r.residual_out = residual_out.on_host();
    ssm::reference::rms_norm(r);
    auto const out_expected = out.gather();
    auto const residual_expected = residual_out.gather();

    for (path const which : {path::kernel, path::portable}) {
      INFO(name(which));
      ssm::rms_norm_params<T, Wt, gpu::memory> p;
      p.x = x.on_device();
      p.weight = weight.row_on_device();
      p.eps = eps;
      gpu::poison(out.device);
      p.out = out.on_device();
      auto const& written = aliased ? stream : residual_out;
      if (aliased) {
        Kokkos::deep_copy(stream.device, residual.device);
        p.residual = stream.on_device();
        p.residual_out = stream.on_device();
      } else {
        if (has_residual) p.residual = residual.on_device();
        gpu::poison(residual_out.device);
        if (has_residual_out) p.residual_out = residual_out.on_device();
      }
      gpu::space space;
      if (which == path::kernel) ssm::rms_norm(space, p);  // dispatches to rms_norm_backend<Kokkos::Cuda>
      else ssm::detail::rms_norm_portable(space, p);
      space.fence();
      ssm::test::require_close(out.download(), out_expected, out_tolerance<T>(E, out_expected), "out");
      if (has_residual_out) ssm::test::require_close(written.download(), residual_expected, exact, "residual_out");
    }
  }
}

}  // namespace

TEMPLATE_TEST_CASE("cuda rms_norm: kernel and portable path match the reference", "[cuda][norm]",
                   (types<float, float>), (types<ssm::f16, ssm::f16>), (types<ssm::bf16, ssm::bf16>),
                   (types<ssm::bf16, float>)) {
  using T = typename TestType::act;
  using Wt = typename TestType::weight;
  // E = 8: one vector; 2560: the target model; 2561: not a multiple of the vector width; 20000:
  // longer than the registers of a row's threads hold (16384). M = 17 with small E: several rows
  // per block, the last block partly empty.
  for (layout const lay : {layout::contiguous, layout::padded, layout::misaligned, layout::transposed})
    for (std::size_t const M : {1, 3, 17})
      for (std::size_t const E : {1, 5, 8, 19, 64, 257, 2560, 2561, 20000}) compare<T, Wt>(M, E, lay);
}

TEST_CASE("cuda rms_norm: the model's sizes, M = 2048 and 16384 rows of E = 2560, bf16", "[cuda][norm]") {
  for (std::size_t const M : {2048, 16384}) compare<ssm::bf16, ssm::bf16>(M, 2560, layout::contiguous);
}

TEST_CASE("cuda rms_norm: bandwidth at M=2048, E=2560, bf16, residual stream in place", "[.bench]") {
  using T = ssm::bf16;
  std::size_t const M = 2048, E = 2560;
  host2<T> x("x", M, E);
  host2<float> stream("stream", M, E);
  host1<T> weight("weight", E);
  ssm::test::fill_uniform(x, 1);
  ssm::test::fill_uniform(stream, 2);
  ssm::test::fill_uniform(weight, 3);
  gpu::dev2<T> out("out", M, E);
  auto const stream_d = gpu::to_device(stream);
  ssm::rms_norm_params<T, T, gpu::memory> p;
  p.x = gpu::to_device(x);
  p.residual = stream_d;
  p.weight = gpu::to_device(weight);
  p.out = out;
  p.residual_out = stream_d;
  // x and the residual read, the residual and out written; the weight is negligible
  double const bytes = static_cast<double>(M * E * (2 * sizeof(T) + 2 * sizeof(float)) + E * sizeof(T));
  auto report = [&](char const* what, double ms) {
    std::printf("rms_norm %-22s M=%zu E=%zu bf16 + fp32 residual: %.4f ms, %.0f GB/s\n", what, M, E, ms,
                bytes / (ms * 1e-3) / 1e9);
  };
  report("CUDA kernel", gpu::milliseconds_per_call(gpu::space(), 100, [&](gpu::space const& sp) {
           ssm::rms_norm_backend<Kokkos::Cuda>::run(sp, p);
         }));
  report("portable Kokkos path", gpu::milliseconds_per_call(gpu::space(), 100, [&](gpu::space const& sp) {
           ssm::detail::rms_norm_portable(sp, p);
         }));
}

namespace {

/// x as S fp32 partial sums on the GPU (kernel and portable path) against the host reference given
/// the same partial sums; the residual stream exactly.
template <class T>
void compare_partials(std::size_t S, std::size_t M, std::size_t E) {
  CAPTURE(S, M, E);
  ssm::test::host3<float> partials("partials", S, M, E);
  ssm::test::host2<float> residual("residual", M, E), residual_expected("residual_expected", M, E);
  ssm::test::host1<T> weight("weight", E);
  ssm::test::host2<T> expected("expected", M, E);
  ssm::test::fill_uniform(partials, 3 * S + M + E, -1.5f, 1.5f);
  ssm::test::fill_uniform(residual, 5, -2.0f, 2.0f);
  ssm::test::fill_uniform(weight, 6, -1.5f, 1.5f);
  ssm::rms_norm_params<T, T, Kokkos::HostSpace> r;
  r.x_partials = partials;
  r.residual = residual;
  r.weight = weight;
  r.out = expected;
  r.residual_out = residual_expected;
  ssm::reference::rms_norm(r);
  auto const d_partials = gpu::to_device(partials);
  auto const d_weight = gpu::to_device(weight);
  for (path const which : {path::kernel, path::portable}) {
    INFO(name(which));
    auto const d_stream = gpu::to_device(residual);  // residual and residual_out at once
    gpu::dev2<T> d_out("out", M, E);
    gpu::poison(d_out);
    ssm::rms_norm_params<T, T, gpu::memory> p;
    p.x_partials = d_partials;
    p.residual = d_stream;
    p.weight = d_weight;
    p.out = d_out;
    p.residual_out = d_stream;
    gpu::space space;
    if (which == path::kernel) ssm::rms_norm(space, p);
    else ssm::detail::rms_norm_portable(space, p);
    space.fence();
    ssm::test::require_close(gpu::to_host(d_out), expected, out_tolerance<T>(E, expected), "out");
    ssm::test::require_close(gpu::to_host(d_stream), residual_expected, exact, "residual_out");
  }
}

}  // namespace

TEST_CASE("cuda rms_norm: x as partial sums, added in order and rounded to T", "[cuda][norm]") {
  // E = 2560 with 16-byte pieces; 2561 and 19 with a tail of single features
  for (std::size_t const S : {1, 2, 3})
    for (std::size_t const M : {1, 8, 64})
      for (std::size_t const E : {19, 2560, 2561}) {
        compare_partials<float>(S, M, E);
        compare_partials<ssm::bf16>(S, M, E);
      }
}
