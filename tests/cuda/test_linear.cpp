/// \file
/// \brief `ssm::linear` on the GPU: cuBLASLt (same storage type for activations and weights,
/// contiguous rows) and the portable Kokkos kernel (mixed types, strided rows) against the host
/// reference triple loop, over storage types, decode-sized and prefill-sized shapes, odd sizes,
/// pitched rows and unaligned slices.

#include "catch.hpp"

#include <cstddef>
#include <cstdint>

#include <ssm/linear/linear.hpp>

#include "cuda_support.hpp"

namespace {

using namespace ssm::test;

/// x is a (M, K) window at column `offset` of a (M, K + pad) buffer: pitched rows, and with an odd
/// offset a pointer that is not 16-byte aligned.
template <class T, class Wt>
void compare(std::size_t M, std::size_t K, std::size_t N, bool has_bias, std::size_t pad = 0, std::size_t offset = 0) {
  CAPTURE(M, K, N, has_bias, pad, offset);
  std::size_t const pitch = K + pad;
  host2<T> x_buffer("x", M, pitch);
  host2<Wt> weight("weight", N, K);
  host1<Wt> bias("bias", N);
  std::uint64_t const seed = 7919 * M + 31 * K + N;
  fill_uniform(x_buffer, seed);
  fill_uniform(weight, seed + 1);
  fill_uniform(bias, seed + 2);
  auto const x = ssm::strided<T>(x_buffer.data() + offset, M, pitch, K, 1);

  host2<T> expected("expected", M, N);
  ssm::linear_params<T, Wt, Kokkos::HostSpace> reference{x, weight, {}, expected};
  if (has_bias) reference.bias = bias;
  ssm::reference::linear(reference);
  auto const tol = gemm_tolerance<T>(x, weight, reference.bias);

  auto const d_x = gpu::to_device(x_buffer);
  auto const d_weight = gpu::to_device(weight);
  auto const d_bias = gpu::to_device(bias);
  gpu::dev2<T> d_y("y", M, N);
  ssm::linear_params<T, Wt, gpu::memory> p;
  p.x = ssm::strided<const T, gpu::memory>(d_x.data() + offset, M, pitch, K, 1);
  p.weight = d_weight;
  if (has_bias) p.bias = d_bias;
  p.y = d_y;
  gpu::space space;

  gpu::poison(d_y);
  ssm::linear(space, p);  // cuBLASLt when T == Wt
  require_close(gpu::to_host(d_y), expected, tol, "ssm::linear on Kokkos::Cuda");

  gpu::poison(d_y);
  ssm::detail::linear_kokkos(space, p);
  require_close(gpu::to_host(d_y), expected, tol, "the portable Kokkos kernel on Kokkos::Cuda");
}

template <class T, class Wt>
void sweep() {
  for (std::size_t M : {1, 2, 8, 33})
    for (bool bias : {false, true}) {
      compare<T, Wt>(M, 64, 48, bias);
      compare<T, Wt>(M, 37, 19, bias);               // odd sizes
      compare<T, Wt>(M, 160, 96, bias, 192 - 160, 0);  // dt_proj's view of x_proj's output
      compare<T, Wt>(M, 24, 40, bias, 9, 3);        // pitched and misaligned rows
    }
  compare<T, Wt>(512, 256, 384, true);  // a prefill-sized product, through the tensor cores
  for (std::size_t M : {1, 3}) compare<T, Wt>(M, 64, 8195, true);  // two outputs per warp, N odd
  compare<T, Wt>(1, 1, 1, true);
}

}  // namespace

TEST_CASE("linear on the GPU matches the reference in fp32", "[cuda][linear]") { sweep<float, float>(); }
TEST_CASE("linear on the GPU matches the reference in bf16", "[cuda][linear]") { sweep<ssm::bf16, ssm::bf16>(); }
TEST_CASE("linear on the GPU matches the reference in fp16", "[cuda][linear]") { sweep<ssm::f16, ssm::f16>(); }
TEST_CASE("linear on the GPU with fp32 activations over bf16 weights", "[cuda][linear]") {
  sweep<float, ssm::bf16>();
}
