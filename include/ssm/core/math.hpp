#pragma once
/// \file
/// \brief Scalar activation functions of Mamba, in fp32, on host and device.

#include <cmath>
#include <cstdint>
#include <cstring>

#include <ssm/core/compat.hpp>
#include <ssm/core/dtype.hpp>

namespace ssm {

/// \brief \f$\mathrm{softplus}(x) = \log(1 + e^x)\f$, and \f$x\f$ itself above 20, exactly as
/// `torch.nn.functional.softplus` (beta 1, threshold 20) and mamba_ssm's kernels compute it.
/// \param x any float.
/// \return \f$\mathrm{softplus}(x) \ge 0\f$.
KOKKOS_INLINE_FUNCTION float softplus(float x) {
  return x <= 20.0f ? compat::log1p(compat::exp(x)) : x;
}

/// \brief Logistic sigmoid \f$\sigma(x) = 1 / (1 + e^{-x})\f$.
/// \param x any float.
/// \return \f$\sigma(x) \in [0, 1]\f$.
KOKKOS_INLINE_FUNCTION float sigmoid(float x) { return 1.0f / (1.0f + compat::exp(-x)); }

/// \brief SiLU (swish) \f$x\,\sigma(x)\f$.
/// \param x any float.
/// \return \f$x / (1 + e^{-x})\f$.
KOKKOS_INLINE_FUNCTION float silu(float x) { return x / (1.0f + compat::exp(-x)); }

/// \brief \f$e^x\f$ in fp32 without branches or calls, so that loops of it vectorize.
///
/// Range reduction \f$x = k \ln 2 + r\f$, \f$|r| \le \ln 2 / 2\f$ (with \f$\ln 2\f$ split in two
/// parts so \f$r\f$ is exact), then a degree-6 polynomial for \f$e^r\f$ (Cephes' `expf`
/// coefficients) and \f$2^k\f$ put into the exponent bits. Relative error below \f$2^{-23}\f$
/// (8.3e-8, measured against `std::exp` in double over every float in range) for \f$-87 \le x \le 88.3\f$. Below, where \f$e^x < 1.7 \cdot
/// 10^{-38}\f$ nears the subnormal floats, the result flushes to zero; above, where \f$e^x > 2.1 \cdot
/// 10^{38}\f$ nears the largest float, it is infinity.
/// \param x the exponent. \return \f$e^x\f$.
KOKKOS_FORCEINLINE_FUNCTION float fast_exp(float x) {
  // The range checks are integer compares of the bits, combined as masks: float compares and
  // selects would not vectorize unless the caller compiles with -fno-trapping-math.
  std::uint32_t const bits = detail::bit_cast<std::uint32_t>(x);
  constexpr std::uint32_t lowest = 0xC2AE0000u;   // -87.0f; larger patterns are smaller negatives
  constexpr std::uint32_t highest = 0x42B0999Au;  // 88.3f
  std::uint32_t const nan = 0u - static_cast<std::uint32_t>((bits & 0x7FFFFFFFu) > 0x7F800000u);
  std::uint32_t const low = 0u - static_cast<std::uint32_t>(bits > lowest);
  std::uint32_t const high = 0u - static_cast<std::uint32_t>((bits > highest) & (bits < 0x80000000u));
  float const clamped = detail::bit_cast<float>((low & lowest) | (high & highest) | (~(low | high) & bits));
  // k = round(x / ln 2) by the 1.5 * 2^23 trick: adding it rounds to an integer in float
  float const shifter = 12582912.0f;
  float const k = (clamped * 1.44269504088896341f + shifter) - shifter;
  float r = clamped - k * 0.693359375f;  // ln 2 = 0.693359375 - 2.12194440e-4, the first part exact
  r = r - k * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  float const e_r = p * r * r + r + 1.0f;  // in [0.70, 1.42]
  auto const scaled = static_cast<std::uint32_t>(detail::bit_cast<std::int32_t>(e_r) +
                                                 static_cast<std::int32_t>(k) * (1 << 23));  // times 2^k
  std::uint32_t const result = (~low & ~high & scaled) | (high & 0x7F800000u);  // 0 below, inf above
  return detail::bit_cast<float>((nan & bits) | (~nan & result));              // NaN stays NaN
}

/// \brief \f$\log y\f$ in fp32 without branches or calls, for positive normal \f$y\f$.
///
/// \f$y = m\, 2^e\f$ with \f$\sqrt{1/2} \le m < \sqrt 2\f$, then Cephes' `logf` polynomial in
/// \f$m - 1\f$. Relative error of a few units in the last place. Zero, negative, subnormal,
/// infinite and NaN arguments give unspecified results: callers keep \f$y\f$ in range.
/// \param y a positive normal float. \return \f$\log y\f$.
KOKKOS_FORCEINLINE_FUNCTION float fast_log(float y) {
  std::uint32_t const bits = detail::bit_cast<std::uint32_t>(y);
  std::int32_t exponent = static_cast<std::int32_t>((bits >> 23) & 0xFFu) - 126;
  std::uint32_t const mantissa_bits = (bits & 0x007FFFFFu) | 0x3F000000u;  // m in [0.5, 1)
  std::uint32_t const small = 0u - static_cast<std::uint32_t>(mantissa_bits < 0x3F3504F3u);  // m < sqrt(1/2)
  exponent -= static_cast<std::int32_t>(small & 1u);
  float const m = detail::bit_cast<float>(mantissa_bits);
  float const x = detail::bit_cast<float>((small & detail::bit_cast<std::uint32_t>(m + m - 1.0f)) |
                                          (~small & detail::bit_cast<std::uint32_t>(m - 1.0f)));
  float const e = static_cast<float>(exponent);
  float const z = x * x;
  float p = 7.0376836292e-2f;
  p = p * x - 1.1514610310e-1f;
  p = p * x + 1.1676998740e-1f;
  p = p * x - 1.2420140846e-1f;
  p = p * x + 1.4249322787e-1f;
  p = p * x - 1.6668057665e-1f;
  p = p * x + 2.0000714765e-1f;
  p = p * x - 2.4999993993e-1f;
  p = p * x + 3.3333331174e-1f;
  float r = p * x * z;
  r += e * -2.12194440e-4f;
  r += -0.5f * z;
  return x + r + e * 0.693359375f;
}

/// \brief `softplus` (threshold 20) without branches or calls, so that loops of it vectorize.
///
/// \f$\log(1 + e^x)\f$ as \f$\log(y) \cdot e^x / (y - 1)\f$ with \f$y = 1 + e^x\f$ rounded, which
/// cancels the rounding of \f$y\f$ (Goldberg's `log1p`); \f$x\f$ itself above 20, as torch does.
/// Agrees with `ssm::softplus` to a few units in the last place.
/// \param x any float. \return \f$\mathrm{softplus}(x)\f$.
KOKKOS_FORCEINLINE_FUNCTION float fast_softplus(float x) {
  std::uint32_t const bits = detail::bit_cast<std::uint32_t>(x);
  std::uint32_t const keep = 0u - static_cast<std::uint32_t>(((bits > 0x41A00000u) & (bits < 0x80000000u)) |
                                                             ((bits & 0x7FFFFFFFu) > 0x7F800000u));  // x > 20, NaN
  float const e = fast_exp(detail::bit_cast<float>(~keep & bits));  // 0 where x is kept
  float const y = 1.0f + e;
  float const d = y - 1.0f;
  std::uint32_t const tiny = 0u - static_cast<std::uint32_t>(detail::bit_cast<std::uint32_t>(d) == 0u);  // y == 1
  float const safe_d = detail::bit_cast<float>((tiny & 0x3F800000u) | (~tiny & detail::bit_cast<std::uint32_t>(d)));
  float const log1p_e = fast_log(y) * (e / safe_d);
  std::uint32_t const result = (tiny & detail::bit_cast<std::uint32_t>(e)) | (~tiny & detail::bit_cast<std::uint32_t>(log1p_e));
  return detail::bit_cast<float>((keep & bits) | (~keep & result));
}

/// \brief `silu` \f$x / (1 + e^{-x})\f$ through `fast_exp`, so that loops of it vectorize.
/// \param x any float. \return \f$x\,\sigma(x)\f$.
KOKKOS_FORCEINLINE_FUNCTION float fast_silu(float x) { return x / (1.0f + fast_exp(-x)); }

/// \brief The smaller of two values (Kokkos 3.4 has no `Kokkos::min`).
/// \tparam T any type with `operator<`.
/// \param a,b the values.
/// \return `b` if `b < a`, else `a`.
template <class T>
KOKKOS_INLINE_FUNCTION constexpr T min(T a, T b) {
  return b < a ? b : a;
}

/// \brief The larger of two values (Kokkos 3.4 has no `Kokkos::max`).
/// \tparam T any type with `operator<`.
/// \param a,b the values.
/// \return `b` if `a < b`, else `a`.
template <class T>
KOKKOS_INLINE_FUNCTION constexpr T max(T a, T b) {
  return a < b ? b : a;
}

}  // namespace ssm
