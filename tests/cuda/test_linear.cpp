/// \file
/// \brief `ssm::linear` on the GPU: cuBLASLt (same storage type for activations and weights,
/// contiguous rows), the few-outputs kernel `narrow_gemm` (many rows, a long K, 16-bit types), the
/// short-K kernel `shallow_gemm` (up to 128 rows, many outputs, 16-bit types) and the portable Kokkos
/// kernel (mixed types, strided rows) against the host reference triple loop,
/// over storage types, decode-sized and prefill-sized shapes, odd sizes, pitched rows and
/// unaligned slices.

#include "catch.hpp"

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include <ssm/linear/linear.hpp>

#include "cuda_support.hpp"
#include "linear/partials_case.hpp"

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
  // Few outputs, a long K, 9 to 128 rows: `narrow_gemm` when T == Wt is bf16 or f16. Odd row
  // counts, one tile of 16 rows and several of 32, outputs and K not whole tiles, pitched rows;
  // then just past each of its limits (cuBLASLt).
  for (std::size_t M : {9, 16, 17, 64, 127}) compare<T, Wt>(M, 1000, 40, M % 2 == 1);
  compare<T, Wt>(33, 1000, 40, true, 8, 0);
  compare<T, Wt>(64, 5120, 192, false);  // x_proj of 64 sequences at the 2.8B shape
  compare<T, Wt>(128, 256, 8, true);
  compare<T, Wt>(129, 1000, 40, true);
  compare<T, Wt>(64, 1004, 40, true);
  compare<T, Wt>(64, 1000, 251, true);
  // A short K and many outputs, up to 128 rows: `shallow_gemm` when T == Wt is bf16 or f16.
  // dt_proj's view of x_proj's output at the 2.8B widths, from 2 rows (past the matrix-vector
  // kernel's outputs) to 128; rows and outputs not whole tiles, K not a whole 32-wide slice, the
  // longest K, K of one piece; then just past each of its limits (cuBLASLt).
  for (std::size_t M : {2, 9, 17, 64, 128}) compare<T, Wt>(M, 160, 5120, M % 2 == 1, 192 - 160, 0);
  compare<T, Wt>(33, 40, 1000, true);
  compare<T, Wt>(70, 256, 1030, false);
  compare<T, Wt>(5, 8, 33, true);
  compare<T, Wt>(129, 160, 5120, false);
  compare<T, Wt>(64, 264, 5120, false);
}

}  // namespace

TEST_CASE("linear on the GPU matches the reference in fp32", "[cuda][linear]") { sweep<float, float>(); }
TEST_CASE("linear on the GPU matches the reference in bf16", "[cuda][linear]") { sweep<ssm::bf16, ssm::bf16>(); }
TEST_CASE("linear on the GPU matches the reference in fp16", "[cuda][linear]") { sweep<ssm::f16, ssm::f16>(); }
TEST_CASE("linear on the GPU with fp32 activations over bf16 weights", "[cuda][linear]") {
  sweep<float, ssm::bf16>();
}

TEST_CASE("products of few outputs, a long K and 9 to 128 rows take narrow_gemm", "[cuda][linear]") {
  using T = ssm::bf16;
  gpu::dev2<T> x("x", 129, 1008), w("w", 300, 1008);
  auto applies = [&](std::size_t M, std::size_t N, std::size_t K, std::size_t offset = 0) {
    return ssm::cuda::narrow_applies<T>(M, N, K, x.data() + offset, 1008, w.data(), 1008);
  };
  CHECK(applies(9, 40, 1000));
  CHECK(applies(128, 40, 1000));
  CHECK(applies(64, 250, 1000));
  CHECK(applies(128, 8, 256));
  CHECK_FALSE(applies(8, 40, 1000));   // the matrix-vector kernel's
  CHECK_FALSE(applies(129, 40, 1000));
  CHECK_FALSE(applies(64, 257, 1008));
  CHECK_FALSE(applies(64, 251, 1000));  // K shorter than 4 N
  CHECK_FALSE(applies(64, 40, 1004));   // not whole 16-byte pieces
  CHECK_FALSE(applies(64, 40, 1000, 3));  // misaligned
  STATIC_REQUIRE(ssm::cuda::narrow_types<ssm::f16, ssm::f16>);
  STATIC_REQUIRE_FALSE(ssm::cuda::narrow_types<float, float>);
  STATIC_REQUIRE_FALSE(ssm::cuda::narrow_types<float, ssm::bf16>);
}

TEST_CASE("products of a short K, many outputs and up to 128 rows take shallow_gemm", "[cuda][linear]") {
  using T = ssm::bf16;
  gpu::dev2<T> x("x", 129, 264), w("w", 5120, 264);
  auto applies = [&](std::size_t M, std::size_t N, std::size_t K, std::size_t offset = 0) {
    return ssm::cuda::shallow_applies<T>(M, N, K, x.data() + offset, 264, w.data(), 264);
  };
  CHECK(applies(1, 5120, 160));
  CHECK(applies(128, 5120, 160));
  CHECK(applies(64, 1024, 256));
  CHECK(applies(9, 32, 8));
  CHECK_FALSE(applies(129, 5120, 160));
  CHECK_FALSE(applies(64, 5120, 264));  // K past 256
  CHECK_FALSE(applies(64, 1020, 256));  // N shorter than 4 K
  CHECK_FALSE(applies(64, 5120, 164));  // not whole 16-byte pieces
  CHECK_FALSE(applies(64, 5120, 160, 3));  // misaligned
  STATIC_REQUIRE(ssm::cuda::shallow_types<ssm::f16, ssm::f16>);
  STATIC_REQUIRE_FALSE(ssm::cuda::shallow_types<float, float>);
  STATIC_REQUIRE_FALSE(ssm::cuda::shallow_types<float, ssm::bf16>);
}

namespace {

/// `linear_partials` on the GPU (cuBLASLt where T == Wt, the portable kernel otherwise, and the
/// portable kernel always) against the host reference of each slice of K.
template <class T, class Wt>
void compare_partials(std::size_t S, std::size_t M, std::size_t K, std::size_t N) {
  CAPTURE(S, M, K, N);
  host2<T> x("x", M, K);
  host2<Wt> weight("weight", N, K);
  fill_uniform(x, 17 * S + M);
  fill_uniform(weight, 19 * S + N);
  auto const expected = reference_partials(x, weight, S);
  auto const d_x = gpu::to_device(x);
  auto const d_weight = gpu::to_device(weight);
  gpu::dev3<float> d_partials("partials", S, M, N);
  ssm::linear_partials_params<T, Wt, gpu::memory> const p{d_x, d_weight, d_partials};
  gpu::space space;
  for (bool portable : {false, true}) {
    INFO((portable ? "the portable kernel" : "ssm::linear_partials on Kokkos::Cuda"));
    gpu::poison(d_partials);
    if (portable) ssm::detail::linear_partials_kokkos(space, p);
    else ssm::linear_partials(space, p);
    auto const got = gpu::to_host(d_partials);
    for (std::size_t s = 0; s < S; ++s)
      require_close(partial(got, s), expected.products[s], expected.tolerances[s], "partial " + std::to_string(s));
  }
}

}  // namespace

TEST_CASE("linear_partials on the GPU: each slice of K is the reference product of that slice", "[cuda][linear]") {
  for (std::size_t S : {1, 2, 4}) {
    compare_partials<ssm::bf16, ssm::bf16>(S, 3, 64, 40);
    compare_partials<ssm::bf16, ssm::bf16>(S, 64, 512, 264);  // out_proj's shape scaled down by 10
    compare_partials<float, float>(S, 5, 128, 9);
    compare_partials<ssm::f16, ssm::f16>(S, 2, 64, 24);
    compare_partials<float, ssm::bf16>(S, 2, 32, 8);
  }
  compare_partials<ssm::bf16, ssm::bf16>(2, 64, 5120, 2560);  // out_proj of 64 sequences at the 2.8B shape
}

namespace {

/// Whether two views of the GPU hold the same bits.
template <class View>
bool same_bits(View const& a, View const& b) {
  auto const ha = gpu::to_host(a);
  auto const hb = gpu::to_host(b);
  using T = typename View::non_const_value_type;
  return ha.size() == hb.size() && std::memcmp(ha.data(), hb.data(), ha.size() * sizeof(T)) == 0;
}

}  // namespace

TEST_CASE("cuBLASLt's timed choice of algorithm gives the bits of the heuristic's first", "[cuda][linear]") {
  using T = ssm::bf16;
  auto& lt = ssm::cuda::cublaslt::get();
  gpu::space space;
  cudaStream_t const stream = ssm::cuda::stream(space);
  std::size_t const tuned_before = ssm::cuda::cublaslt::tuned_plans;
  struct restore {  // the default way of planning again, and no plan of this case kept, however it ends
    ssm::cuda::cublaslt& lt;
    ~restore() {
      ssm::cuda::cublaslt::force_tuning = -1;
      lt.forget_plans();
    }
  } const restored{lt};
  struct shape { int M, N, K; bool bias; };
  // in_proj of 64 sequences at the 2.8B shape, then smaller products of prefill-like and odd sizes
  for (shape const& s : {shape{64, 10240, 2560, false}, shape{48, 4096, 1024, true}, shape{2048, 1024, 512, false},
                         shape{333, 1536, 776, true}}) {
    int const M = s.M, N = s.N, K = s.K;
    bool const has_bias = s.bias;
    CAPTURE(M, N, K, has_bias);
    gpu::dev2<T> x("x", M, K), w("w", N, K), y_first("y_first", M, N), y_timed("y_timed", M, N);
    gpu::dev1<T> bias("bias", N);
    gpu::fill_uniform_on_device(x, 11);
    gpu::fill_uniform_on_device(w, 12);
    gpu::fill_uniform_on_device(bias, 13);
    T const* b = has_bias ? bias.data() : nullptr;
    auto product = [&](int tuning, gpu::dev2<T> const& y) {
      space.fence();
      lt.forget_plans();
      ssm::cuda::cublaslt::force_tuning = tuning;
      gpu::poison(y);
      lt.linear<T>(stream, M, N, K, x.data(), K, w.data(), K, b, y.data(), N);
      space.fence();
    };
    product(0, y_first);
    product(1, y_timed);
    REQUIRE(same_bits(y_first, y_timed));
  }
  // out_proj of 64 sequences as two partial sums over halves of K, as a decoding step takes it
  {
    int const M = 64, N = 2560, K = 5120, S = 2;
    gpu::dev2<T> x("x", M, K), w("w", N, K);
    gpu::dev3<float> first("first", S, M, N), timed("timed", S, M, N);
    gpu::fill_uniform_on_device(x, 21);
    gpu::fill_uniform_on_device(w, 22);
    auto product = [&](int tuning, gpu::dev3<float> const& partials) {
      space.fence();
      lt.forget_plans();
      ssm::cuda::cublaslt::force_tuning = tuning;
      gpu::poison(partials);
      lt.partials<T>(stream, M, N, K, S, x.data(), K, w.data(), K, partials.data(), N, std::int64_t{M} * N);
      space.fence();
    };
    product(0, first);
    product(1, timed);
    REQUIRE(same_bits(first, timed));
  }
  // The heuristic offers several algorithms that do not split K at these sizes (on the H200 at
  // least 4 for each of the first three shapes): some plan must have timed two or more.
  CHECK(ssm::cuda::cublaslt::tuned_plans > tuned_before);
}
