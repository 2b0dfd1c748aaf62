#pragma once
/// \file
/// \brief The host backend of `ssm::linear` for a few rows (decoding): weight streaming.
///
/// With M <= 8 rows of activations, a dense layer is a matrix-vector product bound by the speed
/// at which the weights stream from memory. Each work item takes a few output features, widens
/// each weight row once (16-bit weights are widened in registers: no fp32 copy is ever made) and
/// dots it with every activation row (`dot_row`). The items run in parallel on the host execution
/// space's threads.

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>

#include <Kokkos_Core.hpp>

#include <ssm/core/avx2.hpp>
#include <ssm/core/compat.hpp>
#include <ssm/core/dtype.hpp>
#include <ssm/core/views.hpp>

namespace ssm::host {

/// \brief The largest number of activation rows the weight-streaming product takes.
inline constexpr std::size_t few_rows = 8;

/// \brief Output features per work item.
inline constexpr int features_per_item = 8;

/// \brief How far ahead of its reads `dot_row` asks for the weights, in bytes.
inline constexpr std::size_t prefetch_bytes = 8192;

namespace detail {

/// \brief Whether `dot_row` asks for rows of Wt ahead (see there): 16-bit weights only. One core
/// reading fp32 rows of 768 or 2560 weights streamed 31-33 GB/s without the hint and 30-32 with
/// it; in the model (130m, f32, alternating builds) the step without it was 1-3% faster.
template <class Wt>
inline constexpr bool prefetches = sizeof(Wt) < 4;

#ifdef SSM_HOST_AVX2
/// \brief `dot_row` in AVX2 intrinsics, with the same partial sums, added in the same order:
/// partial j of the portable loop is lane j % 8 of accumulator j / 8 (the bits agree too where
/// the compiler fuses the portable loop's multiply-adds, as GCC does at -O3 with FMA). GCC 12
/// vectorizes the portable loop with a 256-bit load and an extract per eight bf16 weights and
/// streamed a row of 768 bf16 weights from cache at 39 GB/s; this streams it at 65 GB/s.
template <class Wt>
inline float dot_row_avx2(Wt const* w, float const* x, int K, float init, std::uintptr_t ahead) {
  constexpr int lanes = 32, line = 64;
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int k = 0;
  for (; k + lanes <= K; k += lanes) {
    if constexpr (prefetches<Wt>)
      for (int b = 0; b < lanes * static_cast<int>(sizeof(Wt)); b += line)
        compat::prefetch(reinterpret_cast<void const*>(ahead + k * sizeof(Wt) + static_cast<unsigned>(b)));
    a0 = _mm256_fmadd_ps(avx2::widen8(w + k), _mm256_loadu_ps(x + k), a0);
    a1 = _mm256_fmadd_ps(avx2::widen8(w + k + 8), _mm256_loadu_ps(x + k + 8), a1);
    a2 = _mm256_fmadd_ps(avx2::widen8(w + k + 16), _mm256_loadu_ps(x + k + 16), a2);
    a3 = _mm256_fmadd_ps(avx2::widen8(w + k + 24), _mm256_loadu_ps(x + k + 24), a3);
  }
  for (; k + 8 <= K; k += 8) a0 = _mm256_fmadd_ps(avx2::widen8(w + k), _mm256_loadu_ps(x + k), a0);
  float acc = init;
  for (; k < K; ++k) acc += to_float(w[k]) * x[k];
  // the portable tree: j += j + 16, j += j + 8, then within 8 lanes j += j + 4, + 2, + 1
  return acc + avx2::sum8(_mm256_add_ps(_mm256_add_ps(a0, a2), _mm256_add_ps(a1, a3)));
}
#else
/// \brief Declared only, so that `dot_row` names it in a branch that is never taken here.
template <class Wt>
float dot_row_avx2(Wt const* w, float const* x, int K, float init, std::uintptr_t ahead);
#endif

/// \brief The portable loop of `dot_row` (see there); `ahead` is where its prefetches start.
template <class Wt>
KOKKOS_FORCEINLINE_FUNCTION float dot_row_portable(Wt const* w, float const* x, int K, float init,
                                                   std::uintptr_t ahead) {
  constexpr int lanes = 32;
  constexpr int line = 64;  // bytes of a cache line; one iteration reads lanes * sizeof(Wt)
  float partial[lanes] = {};
  int k = 0;
  for (; k + lanes <= K; k += lanes) {
    if constexpr (prefetches<Wt>)
      for (int b = 0; b < lanes * static_cast<int>(sizeof(Wt)); b += line)
        compat::prefetch(reinterpret_cast<void const*>(ahead + k * sizeof(Wt) + static_cast<unsigned>(b)));
    for (int j = 0; j < lanes; ++j) partial[j] += to_float(w[k + j]) * x[k + j];
  }
  for (; k + 8 <= K; k += 8)  // the rest in eighths, into the first 8 partial sums
    for (int j = 0; j < 8; ++j) partial[j] += to_float(w[k + j]) * x[k + j];
  float acc = init;
  for (; k < K; ++k) acc += to_float(w[k]) * x[k];
  for (int width = lanes / 2; width > 0; width /= 2)  // pairwise: a tree of sums
    for (int j = 0; j < width; ++j) partial[j] += partial[j + width];
  return acc + partial[0];
}

}  // namespace detail

/// \brief \f$\mathrm{init} + \sum_k w_k x_k\f$ over K terms: one weight row against one fp32
/// activation row, in fp32.
///
/// 32 independent partial sums, four AVX2 registers, so that four FMA chains hide each other's
/// latency (one core decoding 2.8b in bf16: 4.13 t/s with 16, 4.46 with 32); what is left of the
/// row after the last 32 goes eight at a time into the first eight sums (dt_proj's rows of 48 at
/// the 130m shape), and only the last K % 8 one by one. 16-bit weights are widened in registers.
/// The decoding paths all call it, so they round alike. Where the compiler targets AVX2 (the
/// `avx2` preset), the same sums run as intrinsics (`detail::dot_row_avx2`).
///
/// For 16-bit weights it asks for the weights `prefetch_bytes` ahead of those it multiplies: into
/// the next rows, which the matrix-vector products read next. The hardware prefetcher alone kept too few
/// loads in flight for one core: a row-by-row bf16 product streamed 23-25 GB/s without, 28-31
/// with the hint 8 KB ahead (4 KB ahead: 25-26; 16 KB: 27-29), on the machine of
/// `docs/benchmarks.md`.
/// \tparam Wt weight storage type (`float`, `ssm::f16`, `ssm::bf16`).
/// \param w K weights, contiguous. \param x K activations, contiguous. \param K the length.
/// \param init the value the sum starts from (a bias, or 0).
/// \return the dot product plus `init`.
template <class Wt>
KOKKOS_FORCEINLINE_FUNCTION float dot_row(Wt const* w, float const* x, int K, float init) {
  // an address computed as an integer: past the last row it may point anywhere, which a
  // prefetch allows and pointer arithmetic would not
  auto const ahead = reinterpret_cast<std::uintptr_t>(w) + prefetch_bytes;
  if constexpr (avx2::available)
    return detail::dot_row_avx2(w, x, K, init, ahead);
  else
    return detail::dot_row_portable(w, x, K, init, ahead);
}

/// \brief \f$y = x W^\top + b\f$ for M <= `few_rows` rows, streaming each weight row once.
///
/// Asynchronous on `space` like the other Kokkos paths (fence before reading `y`).
/// \tparam ExecSpace a host execution space. \tparam XView, WView, BView, YView strided rank-2
/// (x, weight, y) and rank-1 (bias) views of the linear layer's storage types.
/// \param space the execution space instance. \param x (M, K) activations.
/// \param weight (N, K) weights, contiguous along K. \param bias (N) or empty. \param y (M, N).
template <class ExecSpace, class XView, class WView, class BView, class YView>
void linear_few_rows(ExecSpace const& space, XView const& x, WView const& weight, BView const& bias, YView const& y) {
  using T = typename YView::value_type;
  using Wt = typename WView::non_const_value_type;
  int const M = static_cast<int>(x.extent(0)), K = static_cast<int>(x.extent(1)), N = static_cast<int>(weight.extent(0));
  // fp32 activations with unit stride are read in place; others are widened once to a
  // contiguous fp32 buffer (M * K values: small)
  float const* x0 = nullptr;
  std::size_t x_row = static_cast<std::size_t>(K);
  if constexpr (std::is_same_v<std::remove_const_t<typename XView::value_type>, float>) {
    if (x.stride(1) == 1) x0 = x.data(), x_row = x.stride(0);
  }
  Kokkos::View<float**, Kokkos::LayoutRight, Kokkos::HostSpace> xf;
  if (x0 == nullptr) {
    xf = decltype(xf)(Kokkos::view_alloc(Kokkos::WithoutInitializing, std::string("ssm::linear::few_rows::x")), M, K);
    Kokkos::parallel_for(
        "ssm::linear::few_rows::widen", Kokkos::RangePolicy<ExecSpace>(space, 0, M),
        KOKKOS_LAMBDA(int const m) {
          for (int k = 0; k < K; ++k) xf(m, k) = to_float(x(m, k));
        });
    x0 = xf.data();
  }
  bool const has_bias = given(bias);
  std::size_t const row_stride = weight.stride(0);
  Wt const* const w0 = weight.data();
  int const items = (N + features_per_item - 1) / features_per_item;
  Kokkos::parallel_for(
      "ssm::linear::few_rows", Kokkos::RangePolicy<ExecSpace>(space, 0, items), KOKKOS_LAMBDA(int const item) {
        int const n_end = (item + 1) * features_per_item < N ? (item + 1) * features_per_item : N;
        for (int n = item * features_per_item; n < n_end; ++n) {
          Wt const* const w = w0 + static_cast<std::size_t>(n) * row_stride;
          float const init = has_bias ? to_float(bias(n)) : 0.0f;
          for (int m = 0; m < M; ++m)
            y(m, n) = from_float<T>(dot_row(w, x0 + static_cast<std::size_t>(m) * x_row, K, init));
        }
      });
}

}  // namespace ssm::host
