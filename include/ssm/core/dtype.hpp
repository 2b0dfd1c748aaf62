#pragma once
/// \file
/// \brief Storage types: `ssm::f16` (IEEE binary16) and `ssm::bf16` (bfloat16).
///
/// These are *storage* types: 16 bits in memory, converted to `float` for every computation.
/// `ssm` does not use Kokkos' `half_t`/`bhalf_t` because on host-only builds of Kokkos those are
/// plain `float` (four bytes), which would silently double the memory of a 16-bit checkpoint.
/// Conversions round to nearest, ties to even, keep infinities and turn NaN into a quiet NaN,
/// exactly as the hardware conversions of x86 (F16C) and NVIDIA GPUs do.

#include <cstdint>
#include <cstring>
#include <string_view>
#include <type_traits>

#include <Kokkos_Core.hpp>

namespace ssm {

/// \brief IEEE 754 binary16: 1 sign bit, 5 exponent bits, 10 mantissa bits. Storage only.
struct f16 {
  std::uint16_t bits;  ///< the raw binary16 pattern
};

/// \brief bfloat16: the upper 16 bits of an IEEE binary32. Storage only.
struct bf16 {
  std::uint16_t bits;  ///< the raw bfloat16 pattern
};

namespace detail {
/// \brief Reinterpret the bits of one trivially copyable type as another of the same size.
template <class To, class From>
KOKKOS_INLINE_FUNCTION To bit_cast(From const& from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast needs types of equal size");
  To to;
  std::memcpy(&to, &from, sizeof(To));
  return to;
}
}  // namespace detail

/// \brief Widen a storage value to `float` (the identity for `float`).
/// \param x the value.
/// \return `x` unchanged.
KOKKOS_INLINE_FUNCTION float to_float(float x) { return x; }

/// \brief Widen a bfloat16 to `float`: exact.
/// \param x the bfloat16 value.
/// \return the same value as a `float`.
KOKKOS_INLINE_FUNCTION float to_float(bf16 x) {
  return detail::bit_cast<float>(static_cast<std::uint32_t>(x.bits) << 16);
}

/// \brief Widen a binary16 to `float`: exact, subnormals included.
/// \param x the binary16 value.
/// \return the same value as a `float`.
KOKKOS_INLINE_FUNCTION float to_float(f16 x) {
  // Without branches, so that loops of it vectorize: all three cases are computed and the right
  // one is picked with integer masks.
  std::uint32_t const h = x.bits;
  std::uint32_t const sign = (h & 0x8000u) << 16;
  std::uint32_t const body = (h & 0x7FFFu) << 13;  // exponent and mantissa in binary32 position
  std::uint32_t const exponent = h & 0x7C00u;
  std::uint32_t const normal = body + (112u << 23);      // re-bias the exponent from 15 to 127
  std::uint32_t const special = body + (224u << 23);     // infinity or NaN: exponent 255
  // zero or subnormal, mantissa * 2^-24: (1 + mantissa / 1024) * 2^-14 - 2^-14, exact in float
  float const subnormal = detail::bit_cast<float>(body + (113u << 23)) - detail::bit_cast<float>(113u << 23);
  std::uint32_t const is_special = 0u - static_cast<std::uint32_t>(exponent == 0x7C00u);
  std::uint32_t const is_subnormal = 0u - static_cast<std::uint32_t>(exponent == 0u);
  std::uint32_t const magnitude = (is_special & special) | (is_subnormal & detail::bit_cast<std::uint32_t>(subnormal)) |
                                  (~(is_special | is_subnormal) & normal);
  return detail::bit_cast<float>(sign | magnitude);
}

/// \brief Narrow a `float` to a storage type, rounding to nearest even.
/// \tparam T `float`, `ssm::f16` or `ssm::bf16`.
/// \param x the value to narrow.
/// \return the nearest value of type `T` (NaN stays NaN, overflow becomes infinity).
template <class T>
KOKKOS_INLINE_FUNCTION T from_float(float x);

/// \brief `from_float` for `float`: the identity.
/// \param x the value.
/// \return `x` unchanged.
template <>
KOKKOS_INLINE_FUNCTION float from_float<float>(float x) {
  return x;
}

/// \brief `from_float` for bfloat16: round to nearest even; NaN becomes a quiet NaN of the same sign.
/// \param x the value to narrow.
/// \return the nearest bfloat16 (overflow rounds to infinity).
template <>
KOKKOS_INLINE_FUNCTION bf16 from_float<bf16>(float x) {
  std::uint32_t u = detail::bit_cast<std::uint32_t>(x);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) {  // NaN: keep the sign, make it quiet
    return bf16{static_cast<std::uint16_t>((u >> 16) | 0x0040u)};
  }
  u += 0x7FFFu + ((u >> 16) & 1u);  // round to nearest, ties to even
  return bf16{static_cast<std::uint16_t>(u >> 16)};
}

/// \brief `from_float` for binary16: round to nearest even, subnormals included, as F16C does.
///
/// Magnitudes of 65520 and above become infinity; NaN becomes a quiet NaN keeping the top of
/// its payload.
/// \param x the value to narrow.
/// \return the nearest binary16.
template <>
KOKKOS_INLINE_FUNCTION f16 from_float<f16>(float x) {
  std::uint32_t u = detail::bit_cast<std::uint32_t>(x);
  auto const sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
  u &= 0x7FFFFFFFu;
  if (u > 0x7F800000u) {  // NaN: made quiet, the top of its payload kept (as F16C does)
    return f16{static_cast<std::uint16_t>(sign | 0x7E00u | ((u >> 13) & 0x3FFu))};
  }
  if (u == 0x7F800000u) return f16{static_cast<std::uint16_t>(sign | 0x7C00u)};
  if (u >= 0x477FF000u) {  // >= 65520 rounds past the largest finite half (65504)
    return f16{static_cast<std::uint16_t>(sign | 0x7C00u)};
  }
  if (u < 0x38800000u) {  // below 2^-14: a subnormal half, in units of 2^-24
    if (u < 0x33000000u) return f16{sign};  // at most 2^-25: rounds (ties to even) to zero
    std::uint32_t const exponent = u >> 23;  // 102 ... 112
    std::uint32_t const mantissa = (u & 0x7FFFFFu) | 0x800000u;
    std::uint32_t const shift = 126u - exponent;  // 14 ... 24
    std::uint32_t result = mantissa >> shift;
    std::uint32_t const rest = mantissa & ((1u << shift) - 1u);
    std::uint32_t const halfway = 1u << (shift - 1u);
    if (rest > halfway || (rest == halfway && (result & 1u))) ++result;
    return f16{static_cast<std::uint16_t>(sign | result)};
  }
  std::uint32_t result = (u - 0x38000000u) >> 13;  // re-bias the exponent from 127 to 15
  std::uint32_t const rest = u & 0x1FFFu;
  if (rest > 0x1000u || (rest == 0x1000u && (result & 1u))) ++result;  // may carry into the exponent
  return f16{static_cast<std::uint16_t>(sign | result)};
}

/// \brief Round to the storage type T and back: what storing a T and reading it again does. The
/// fused decoding steps call it where the op-by-op path stores a value in T, so that both round alike.
/// \tparam T `float`, `ssm::f16` or `ssm::bf16`. \param x the value. \return the nearest T, as fp32.
template <class T>
KOKKOS_FORCEINLINE_FUNCTION float round_to(float x) {
  return to_float(from_float<T>(x));
}

/// \brief Name of each storage type, as safetensors spells it.
/// \tparam T `float`, `ssm::f16` or `ssm::bf16`; other types are declared but not defined.
template <class T>
struct dtype_traits;

/// \brief `dtype_traits` of `float`: safetensors `F32`.
template <>
struct dtype_traits<float> {
  static constexpr std::string_view name = "F32";  ///< safetensors dtype string
};
/// \brief `dtype_traits` of `ssm::f16`: safetensors `F16`.
template <>
struct dtype_traits<f16> {
  static constexpr std::string_view name = "F16";  ///< safetensors dtype string
};
/// \brief `dtype_traits` of `ssm::bf16`: safetensors `BF16`.
template <>
struct dtype_traits<bf16> {
  static constexpr std::string_view name = "BF16";  ///< safetensors dtype string
};

/// \brief Unit roundoff \f$u = 2^{-p}\f$ of a storage type (half the distance from 1 to the next value).
/// \tparam T `float`, `ssm::f16` or `ssm::bf16` (any other type is treated as `float`).
/// \return \f$2^{-11}\f$ for `f16`, \f$2^{-8}\f$ for `bf16`, \f$2^{-24}\f$ otherwise.
template <class T>
constexpr double unit_roundoff() {
  if constexpr (std::is_same_v<T, f16>) return 0x1p-11;
  else if constexpr (std::is_same_v<T, bf16>) return 0x1p-8;
  else return 0x1p-24;
}

}  // namespace ssm
