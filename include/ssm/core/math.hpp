#pragma once
/// \file
/// \brief Scalar activation functions of Mamba, in fp32, on host and device.

#include <ssm/core/compat.hpp>

namespace ssm {

/// \brief \f$\mathrm{softplus}(x) = \log(1 + e^x)\f$, and \f$x\f$ itself above 20, exactly as
/// `torch.nn.functional.softplus` (beta 1, threshold 20) and mamba_ssm's kernels compute it.
KOKKOS_INLINE_FUNCTION float softplus(float x) {
  return x <= 20.0f ? compat::log1p(compat::exp(x)) : x;
}

/// \brief Logistic sigmoid \f$\sigma(x) = 1 / (1 + e^{-x})\f$.
KOKKOS_INLINE_FUNCTION float sigmoid(float x) { return 1.0f / (1.0f + compat::exp(-x)); }

/// \brief SiLU (swish) \f$x\,\sigma(x)\f$.
KOKKOS_INLINE_FUNCTION float silu(float x) { return x / (1.0f + compat::exp(-x)); }

/// \brief The smaller of two values (Kokkos 3.4 has no `Kokkos::min`).
template <class T>
KOKKOS_INLINE_FUNCTION constexpr T min(T a, T b) {
  return b < a ? b : a;
}

/// \brief The larger of two values (Kokkos 3.4 has no `Kokkos::max`).
template <class T>
KOKKOS_INLINE_FUNCTION constexpr T max(T a, T b) {
  return a < b ? b : a;
}

}  // namespace ssm
