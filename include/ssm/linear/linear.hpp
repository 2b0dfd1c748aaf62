#pragma once
/// \file
/// \brief Linear layers \f$y = x W^\top + b\f$ with weights stored [out, in] row-major, as PyTorch's
/// `nn.Linear` stores them, in any storage type; accumulation in fp32.
///
/// Three implementations: a plain reference GEMM (the oracle), Eigen on host execution spaces,
/// and a portable Kokkos kernel everywhere else. `linear_backend` chooses by execution space.
/// `linear_partials` leaves a product as fp32 partial sums over slices of K, for a norm to add.

#include <cstddef>
#include <string>
#include <type_traits>

#include <ssm/core/compat.hpp>
#include <ssm/core/dtype.hpp>
#include <ssm/core/error.hpp>
#include <ssm/core/views.hpp>
#include <ssm/linear/eigen.hpp>
#include <ssm/linear/host_gemv.hpp>

namespace ssm {

/// \brief Everything a linear layer reads and writes.
///
/// GEMM sizes: M rows (tokens), K input features, N output features. Only `bias` is optional
/// (a default-constructed view means "absent").
/// \tparam T activation storage type (`float`, `ssm::f16` or `ssm::bf16`).
/// \tparam Wt weight storage type (same choices).
/// \tparam MemSpace the memory space of every tensor.
template <class T, class Wt, class MemSpace>
struct linear_params {
  view2<const T, MemSpace> x;         ///< (M, K) one row per token
  view2<const Wt, MemSpace> weight;   ///< (N, K) [out, in]
  view1<const Wt, MemSpace> bias;     ///< (N); optional
  view2<T, MemSpace> y;               ///< (M, N); must not overlap x
};

namespace detail {

template <class T, class Wt, class MemSpace>
void check(linear_params<T, Wt, MemSpace> const& p, char const* function) {
  require(given(p.x) && given(p.weight) && given(p.y), function, "x, weight and y are required");
  auto const M = p.x.extent(0), K = p.x.extent(1), N = p.weight.extent(0);
  require(p.weight.extent(1) == K, function,
          "weight must be (N, K) with K = " + std::to_string(K) + ", the width of x; got " +
              shape_string(p.weight.extent(0), p.weight.extent(1)));
  require(p.y.extent(0) == M && p.y.extent(1) == N, function, "y must be (M, N) = " + shape_string(M, N));
  if (given(p.bias)) require(p.bias.extent(0) == N, function, "bias must be (N) with N = " + std::to_string(N));
}

}  // namespace detail

namespace reference {

/// \brief Plain triple loop, fp32 accumulation in the order k = 0 ... K-1. Host only.
///
/// Synchronous host code; the oracle of the tests.
/// \tparam T activation storage type (`float`, `ssm::f16` or `ssm::bf16`).
/// \tparam Wt weight storage type (same choices).
/// \tparam MemSpace the memory space of every tensor; must be host-accessible.
/// \param p `x` (M, K), `weight` (N, K), optional `bias` (N), output `y` (M, N); see `linear_params`.
/// \throws ssm::shape_error if a required tensor is missing or the shapes disagree.
template <class T, class Wt, class MemSpace>
void linear(linear_params<T, Wt, MemSpace> const& p) {
  static_assert(is_accessible_v<Kokkos::DefaultHostExecutionSpace, MemSpace>,
                "ssm::reference::linear: the tensors must be in host-accessible memory");
  detail::check(p, "ssm::reference::linear");
  for (std::size_t m = 0; m < p.x.extent(0); ++m) {
    for (std::size_t n = 0; n < p.weight.extent(0); ++n) {
      float acc = given(p.bias) ? to_float(p.bias(n)) : 0.0f;
      for (std::size_t k = 0; k < p.x.extent(1); ++k) acc += to_float(p.x(m, k)) * to_float(p.weight(n, k));
      p.y(m, n) = from_float<T>(acc);
    }
  }
}

}  // namespace reference

namespace detail {

/// \brief The portable Kokkos kernel of a linear layer: one work item per output (m, n), fp32
/// accumulation in the order k = 0 ... K-1 (asynchronous). The shapes must have been checked.
/// Runs on any execution space, host ones included (the backend of non-host spaces).
template <class ExecSpace, class T, class Wt, class MemSpace>
void linear_kokkos(ExecSpace const& space, linear_params<T, Wt, MemSpace> const& p) {
  using policy = Kokkos::MDRangePolicy<ExecSpace, Kokkos::Rank<2>>;
  int const M = static_cast<int>(p.x.extent(0)), N = static_cast<int>(p.weight.extent(0));
  int const K = static_cast<int>(p.x.extent(1));
  bool const has_bias = given(p.bias);
  auto const params = p;
  Kokkos::parallel_for(
      "ssm::linear::kokkos", compat::capturable(policy(space, {0, 0}, {M, N})), KOKKOS_LAMBDA(int const m, int const n) {
        auto const& q = params;
        float acc = has_bias ? to_float(q.bias(n)) : 0.0f;
        for (int k = 0; k < K; ++k) acc += to_float(q.x(m, k)) * to_float(q.weight(n, k));
        q.y(m, n) = from_float<T>(acc);
      });
}

}  // namespace detail

/// \brief Which implementation of a linear layer runs on an execution space.
///
/// Host execution spaces use Eigen's blocked GEMM (`ssm::eigen::linear`); any other space runs
/// the portable Kokkos kernel. A backend with a vendor library (cuBLASLt) specialises this trait.
/// `ssm::linear` calls `run` only after checking the shapes and with M, N > 0.
/// \tparam ExecSpace a Kokkos execution space.
template <class ExecSpace>
struct linear_backend {
  /// \brief Run \f$y = x W^\top + b\f$ on `space`.
  ///
  /// On a host space with host-accessible tensors: up to `host::few_rows` rows stream the weights
  /// in parallel on the space (`host::linear_few_rows`, asynchronous); more rows fence `space`, then
  /// run Eigen's GEMM synchronously on the calling thread. Elsewhere the portable Kokkos kernel
  /// (asynchronous).
  /// \tparam T activation storage type (`float`, `ssm::f16` or `ssm::bf16`).
  /// \tparam Wt weight storage type (same choices).
  /// \tparam MemSpace the memory space of every tensor.
  /// \param space the execution space instance.
  /// \param p the checked tensors: `x` (M, K), `weight` (N, K), optional `bias` (N), `y` (M, N).
  template <class T, class Wt, class MemSpace>
  static void run(ExecSpace const& space, linear_params<T, Wt, MemSpace> const& p) {
    if constexpr (is_accessible_v<Kokkos::DefaultHostExecutionSpace, MemSpace> &&
                  std::is_same_v<typename ExecSpace::memory_space, Kokkos::HostSpace>) {
      if (p.x.extent(0) <= host::few_rows && p.weight.stride(1) == 1) {
        host::linear_few_rows(space, p.x, p.weight, p.bias, p.y);  // decoding: stream the weights
      } else {
        space.fence();  // Eigen runs on the calling thread: wait for earlier work on the space
        eigen::linear(p.x, p.weight, p.bias, p.y);
      }
    } else {
      detail::linear_kokkos(space, p);
    }
  }
};

/// \brief A linear layer \f$y = x W^\top + b\f$ on an execution space.
///
/// \f$y_{mn} = b_n + \sum_k x_{mk} W_{nk}\f$, accumulated in fp32. Treat it as asynchronous: fence
/// `space` before reading `p.y` (the host Eigen path happens to finish before returning).
/// \tparam ExecSpace a Kokkos execution space that can access `MemSpace`.
/// \tparam T activation storage type (`float`, `ssm::f16` or `ssm::bf16`).
/// \tparam Wt weight storage type (same choices).
/// \tparam MemSpace the memory space of every tensor.
/// \param space the execution space instance the work runs on.
/// \param p `x` (M, K), `weight` (N, K), optional `bias` (N), output `y` (M, N), which must not
///          overlap `x`; see `linear_params`.
/// \throws ssm::shape_error if a required tensor is missing or the shapes disagree.
template <class ExecSpace, class T, class Wt, class MemSpace>
void linear(ExecSpace const& space, linear_params<T, Wt, MemSpace> const& p) {
  static_assert(is_accessible_v<ExecSpace, MemSpace>,
                "ssm::linear: the tensors must be accessible from the execution space");
  detail::check(p, "ssm::linear");
  if (p.x.extent(0) == 0 || p.weight.extent(0) == 0) return;
  linear_backend<ExecSpace>::run(space, p);
}

/// \brief A linear layer's products over S slices of its inputs, each into an fp32 partial sum.
///
/// \f$y_s = x_{:, K_s} W_{:, K_s}^\top\f$ for the slices \f$K_s = [sK/S, (s+1)K/S)\f$, so that
/// \f$\sum_s y_s = x W^\top\f$. A layer whose output only feeds an RMSNorm can leave its output so
/// (`rms_norm_params::x_partials` adds them): the sum over K then needs no launch of its own, which
/// a GPU's split-K product otherwise spends on few rows. No bias.
/// \tparam T activation storage type. \tparam Wt weight storage type.
/// \tparam MemSpace the memory space of every tensor.
template <class T, class Wt, class MemSpace>
struct linear_partials_params {
  view2<const T, MemSpace> x;         ///< (M, K) one row per token
  view2<const Wt, MemSpace> weight;   ///< (N, K) [out, in]
  view3<float, MemSpace> partials;    ///< (S, M, N), S dividing K; must not overlap x
};

namespace detail {

template <class T, class Wt, class MemSpace>
void check(linear_partials_params<T, Wt, MemSpace> const& p, char const* function) {
  require(given(p.x) && given(p.weight) && given(p.partials), function, "x, weight and partials are required");
  auto const M = p.x.extent(0), K = p.x.extent(1), N = p.weight.extent(0), S = p.partials.extent(0);
  require(p.weight.extent(1) == K, function,
          "weight must be (N, K) with K = " + std::to_string(K) + ", the width of x; got " +
              shape_string(p.weight.extent(0), p.weight.extent(1)));
  require(S > 0 && K % S == 0, function,
          "partials must hold S > 0 slices of K = " + std::to_string(K) + ", S dividing K; got S = " + std::to_string(S));
  require(p.partials.extent(1) == M && p.partials.extent(2) == N, function,
          "partials must be (S, M, N) with (M, N) = " + shape_string(M, N));
}

/// \brief The portable Kokkos kernel of `linear_partials`: one work item per (s, m, n), fp32 sums
/// in the order of k (asynchronous). The shapes must have been checked.
template <class ExecSpace, class T, class Wt, class MemSpace>
void linear_partials_kokkos(ExecSpace const& space, linear_partials_params<T, Wt, MemSpace> const& p) {
  using policy = Kokkos::MDRangePolicy<ExecSpace, Kokkos::Rank<3>>;
  int const S = static_cast<int>(p.partials.extent(0)), M = static_cast<int>(p.x.extent(0));
  int const N = static_cast<int>(p.weight.extent(0)), slice = static_cast<int>(p.x.extent(1)) / S;
  auto const params = p;
  Kokkos::parallel_for(
      "ssm::linear_partials::kokkos", compat::capturable(policy(space, {0, 0, 0}, {S, M, N})),
      KOKKOS_LAMBDA(int const s, int const m, int const n) {
        auto const& q = params;
        float acc = 0.0f;
        for (int k = s * slice; k < (s + 1) * slice; ++k) acc += to_float(q.x(m, k)) * to_float(q.weight(n, k));
        q.partials(s, m, n) = acc;
      });
}

}  // namespace detail

/// \brief Which implementation of `linear_partials` runs on an execution space: the portable
/// Kokkos kernel, unless a backend specialises it (cuBLASLt on `Kokkos::Cuda`).
/// \tparam ExecSpace a Kokkos execution space.
template <class ExecSpace>
struct linear_partials_backend {
  /// \brief Run the products on `space` (asynchronous).
  /// \tparam T activation storage type. \tparam Wt weight storage type.
  /// \tparam MemSpace the memory space of every tensor.
  /// \param space the execution space instance. \param p the checked tensors.
  template <class T, class Wt, class MemSpace>
  static void run(ExecSpace const& space, linear_partials_params<T, Wt, MemSpace> const& p) {
    detail::linear_partials_kokkos(space, p);
  }
};

/// \brief A linear layer's products over S slices of its inputs, into fp32 partial sums (see
/// `linear_partials_params`), on an execution space (asynchronous: fence `space` before reading
/// `p.partials`).
/// \tparam ExecSpace a Kokkos execution space that can access `MemSpace`.
/// \tparam T activation storage type. \tparam Wt weight storage type.
/// \tparam MemSpace the memory space of every tensor.
/// \param space the execution space instance the work runs on.
/// \param p `x` (M, K), `weight` (N, K) and the partial sums (S, M, N).
/// \throws ssm::shape_error if a tensor is missing, the shapes disagree or S does not divide K.
template <class ExecSpace, class T, class Wt, class MemSpace>
void linear_partials(ExecSpace const& space, linear_partials_params<T, Wt, MemSpace> const& p) {
  static_assert(is_accessible_v<ExecSpace, MemSpace>,
                "ssm::linear_partials: the tensors must be accessible from the execution space");
  detail::check(p, "ssm::linear_partials");
  if (p.x.extent(0) == 0 || p.weight.extent(0) == 0) return;
  linear_partials_backend<ExecSpace>::run(space, p);
}

}  // namespace ssm

#if defined(KOKKOS_ENABLE_CUDA)
#include <ssm/linear/cuda/cublaslt.cuh>
#endif
