#pragma once
/// \file
/// \brief The host backend of `ssm::linear`: Eigen's cache-blocked GEMM.
///
/// fp32 tensors with unit stride along their rows are used in place. Anything else (16-bit
/// weights or activations, a column stride) is widened to fp32 first: the activations whole, the
/// weights a panel of rows at a time, so no fp32 copy of a whole weight matrix is ever made.

#include <algorithm>
#include <cstddef>
#include <type_traits>
#include <vector>

// ssm calls Eigen from host code only. Under nvcc, Eigen would otherwise mark its functions
// __host__ __device__, which nvcc then warns about; EIGEN_NO_CUDA keeps Eigen host-only.
#if defined(__CUDACC__) && !defined(EIGEN_NO_CUDA)
#define EIGEN_NO_CUDA
#endif
#include <Eigen/Core>

#include <ssm/core/dtype.hpp>
#include <ssm/core/views.hpp>

namespace ssm::eigen {

using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;  ///< fp32 row-major
using const_map = Eigen::Map<const matrix, 0, Eigen::OuterStride<>>;  ///< a read-only strided fp32 matrix
using map = Eigen::Map<matrix, 0, Eigen::OuterStride<>>;              ///< a writable strided fp32 matrix

/// \brief Rows of weights widened to fp32 at a time when the weights are not fp32.
inline constexpr std::size_t weight_panel_rows = 256;

namespace detail {

/// \brief True when a rank-2 view of T can be used in place as a row-major fp32 matrix.
template <class View>
bool is_plain_fp32(View const& v) {
  return std::is_same_v<std::remove_const_t<typename View::value_type>, float> && v.stride(1) == 1;
}

/// \brief Widen rows [row0, row0 + rows) of a rank-2 view into a row-major fp32 buffer.
template <class View>
void widen(View const& v, std::size_t row0, std::size_t rows, std::vector<float>& buffer) {
  std::size_t const cols = v.extent(1);
  buffer.resize(rows * cols);
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t c = 0; c < cols; ++c) buffer[r * cols + c] = to_float(v(row0 + r, c));
}

}  // namespace detail

/// \brief \f$y = x W^\top + b\f$ with Eigen, on the calling thread (Eigen may use OpenMP threads).
///
/// Synchronous. Does not check shapes (`ssm::linear` does). fp32 row-contiguous operands are used
/// in place; others are widened to fp32 (the weights a panel of `weight_panel_rows` rows at a time).
/// \tparam XView,WView,BView,YView rank-2 (rank-1 for `BView`) host-accessible Kokkos views of
///         `float`, `ssm::f16` or `ssm::bf16`.
/// \param x (M, K) activations.
/// \param weight (N, K) weights, [out, in].
/// \param bias (N), or a default-constructed view for none.
/// \param y (M, N) output; must not overlap `x`, `weight` or `bias`.
template <class XView, class WView, class BView, class YView>
void linear(XView const& x, WView const& weight, BView const& bias, YView const& y) {
  using T = typename YView::value_type;
  std::size_t const M = x.extent(0), K = x.extent(1), N = weight.extent(0);

  std::vector<float> x_buffer;
  if (!detail::is_plain_fp32(x)) detail::widen(x, 0, M, x_buffer);
  const_map const X = detail::is_plain_fp32(x)
                          ? const_map(reinterpret_cast<float const*>(x.data()), M, K, Eigen::OuterStride<>(x.stride(0)))
                          : const_map(x_buffer.data(), M, K, Eigen::OuterStride<>(K));

  std::vector<float> y_buffer;
  bool const y_in_place = detail::is_plain_fp32(y);
  if (!y_in_place) y_buffer.resize(M * N);
  map Y = y_in_place ? map(reinterpret_cast<float*>(y.data()), M, N, Eigen::OuterStride<>(y.stride(0)))
                     : map(y_buffer.data(), M, N, Eigen::OuterStride<>(N));

  if (detail::is_plain_fp32(weight)) {
    const_map const Wm(reinterpret_cast<float const*>(weight.data()), N, K, Eigen::OuterStride<>(weight.stride(0)));
    Y.noalias() = X * Wm.transpose();
  } else {
    std::vector<float> panel;
    for (std::size_t n0 = 0; n0 < N; n0 += weight_panel_rows) {
      std::size_t const rows = std::min(weight_panel_rows, N - n0);
      detail::widen(weight, n0, rows, panel);
      const_map const Wp(panel.data(), rows, K, Eigen::OuterStride<>(K));
      Y.middleCols(n0, rows).noalias() = X * Wp.transpose();
    }
  }
  if (given(bias))
    for (std::size_t n = 0; n < N; ++n) Y.col(n).array() += to_float(bias(n));
  if (!y_in_place)
    for (std::size_t m = 0; m < M; ++m)
      for (std::size_t n = 0; n < N; ++n) y(m, n) = from_float<T>(Y(m, n));
}

}  // namespace ssm::eigen
