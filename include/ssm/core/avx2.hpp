#pragma once
/// \file
/// \brief Eight-lane fp32 building blocks of the host decoding loops, in AVX2 intrinsics.
///
/// The host's hot loops (`host::dot_row`, `detail::update_channel`) each have a portable loop,
/// written so that GCC vectorizes it, and where the compiler targets AVX2 with FMA and F16C (the
/// `avx2` preset) a twin in intrinsics that computes the same partial sums in the same order.
/// This header holds what the twins share: loading eight weights of any storage type as fp32,
/// the exponential of eight floats, and the sum of eight lanes. Everything here exists only in
/// such a compilation (`SSM_HOST_AVX2`); `avx2::available` says whether it does.

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__) && !defined(__CUDA_ARCH__)
/// \brief Defined where the host compilation has AVX2, FMA and F16C, and so this header's
/// functions.
#define SSM_HOST_AVX2 1
#include <immintrin.h>
#endif

#include <ssm/core/dtype.hpp>

namespace ssm::avx2 {

#ifdef SSM_HOST_AVX2
/// \brief Whether this host compilation has AVX2, FMA and F16C (and the functions below).
inline constexpr bool available = true;

/// \brief Eight consecutive values as fp32, one load each: f32 as is, bf16 zero-extended and
/// shifted into the upper half, f16 through the F16C conversion. All three are exact.
/// \param p eight values, any alignment. \return them as fp32.
inline __m256 widen8(float const* p) { return _mm256_loadu_ps(p); }
/// \copydoc widen8(float const*)
inline __m256 widen8(bf16 const* p) {
  __m128i const bits = _mm_loadu_si128(reinterpret_cast<__m128i const*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
}
/// \copydoc widen8(float const*)
inline __m256 widen8(f16 const* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<__m128i const*>(p))); }

/// \brief The sum of eight lanes as a tree: lane j += lane j + 4, then j += j + 2, then j += j + 1
/// (the order of the portable loops' `partial` arrays).
/// \param v eight floats. \return their sum.
inline float sum8(__m256 v) {
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  return _mm_cvtss_f32(h);
}

/// \brief `ssm::fast_exp` of eight floats, with the same bits where GCC fuses the scalar
/// function's multiply-adds (as it does at -O3 with FMA): the same range reduction and
/// polynomial, with the range checks as float compares and blends. The scalar function masks
/// integers instead, which GCC vectorizes into twice the instructions.
/// \param x eight exponents. \return \f$e^x\f$ of each: 0 below -87, infinity above 88.3, NaN
/// for NaN.
inline __m256 exp8(__m256 x) {
  __m256 const lowest = _mm256_set1_ps(-87.0f), highest = _mm256_set1_ps(88.3f);
  __m256 const clamped = _mm256_min_ps(_mm256_max_ps(x, lowest), highest);
  __m256 const shifter = _mm256_set1_ps(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  __m256 const k = _mm256_sub_ps(_mm256_fmadd_ps(clamped, _mm256_set1_ps(1.44269504088896341f), shifter), shifter);
  __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), clamped);
  r = _mm256_fmadd_ps(k, _mm256_set1_ps(2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  __m256 const e_r = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.0f));
  __m256i const scaled =
      _mm256_add_epi32(_mm256_castps_si256(e_r), _mm256_slli_epi32(_mm256_cvttps_epi32(k), 23));  // times 2^k
  __m256 const below = _mm256_cmp_ps(x, lowest, _CMP_LT_OQ), above = _mm256_cmp_ps(x, highest, _CMP_GT_OQ);
  __m256 result = _mm256_blendv_ps(_mm256_castsi256_ps(scaled), _mm256_set1_ps(__builtin_huge_valf()), above);
  result = _mm256_andnot_ps(below, result);
  return _mm256_blendv_ps(result, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));  // NaN stays NaN
}
#else
/// \brief Whether this host compilation has AVX2, FMA and F16C (and the functions of this header).
inline constexpr bool available = false;
#endif

}  // namespace ssm::avx2
