#pragma once
/// \file
/// \brief The transcendental functions of the CUDA kernels: the exponential on the
/// special-function unit, and softplus and silu built on it. One instruction for \f$2^x\f$ instead
/// of the portable `ssm::fast_exp`'s polynomial (some 25 instructions), which matters in kernels
/// bound by issuing instructions (the selective scan, the state update, the causal conv).
///
/// Accuracy: `ex2.approx.ftz.f32` has a relative error of about \f$2^{-22}\f$; `softplus_fast` is
/// within \f$1.2 \cdot 10^{-7}\f$ relative of \f$\log(1 + e^x)\f$ past the exponential's error;
/// `silu_fast` adds `__fdividef`'s 2 ulp.

#include <ssm/core/dtype.hpp>

namespace ssm::cuda::detail {

/// \brief \f$\log_2 e\f$: \f$e^x = 2^{x \log_2 e}\f$.
inline constexpr float log2e = 1.44269504088896341f;

/// \brief \f$2^x\f$ by the special-function unit (`ex2.approx.ftz.f32`): one instruction,
/// relative error about \f$2^{-22}\f$, subnormal results flushed to zero.
/// \param x the exponent. \return \f$2^x\f$.
__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

/// \brief `softplus` as torch computes it (threshold 20), without `log1p`:
/// \f$\max(x, 0) + \log(1 + t)\f$ with \f$t = e^{-|x|} \in (0, 1]\f$, and \f$\log(1 + t) = t\,p(t)\f$ for
/// a degree-9 polynomial fit of \f$\log(1 + t) / t\f$ on [0, 1] (Chebyshev, relative error below
/// \f$1.2 \cdot 10^{-7}\f$ evaluated in fp32). Above 20 the correction is below half an ulp of x, so
/// the result is x itself, as torch returns.
/// \param x any float. \return \f$\log(1 + e^x)\f$.
__device__ __forceinline__ float softplus_fast(float x) {
  float const t = exp2_approx(-fabsf(x) * log2e);
  float p = -0.00317605701f;
  p = fmaf(p, t, 0.0195425265f);
  p = fmaf(p, t, -0.0563736111f);
  p = fmaf(p, t, 0.105436236f);
  p = fmaf(p, t, -0.152696669f);
  p = fmaf(p, t, 0.196632743f);
  p = fmaf(p, t, -0.249516159f);
  p = fmaf(p, t, 0.333297104f);
  p = fmaf(p, t, -0.499998927f);
  p = fmaf(p, t, 1.0f);
  return fmaxf(x, 0.0f) + t * p;
}

/// \brief `silu` \f$z / (1 + e^{-z})\f$ with `ex2.approx` and `__fdividef` (which gives 0, the
/// limit, once \f$e^{-z}\f$ passes \f$2^{126}\f$).
/// \param z any float. \return \f$z\,\sigma(z)\f$.
__device__ __forceinline__ float silu_fast(float z) { return __fdividef(z, 1.0f + exp2_approx(-z * log2e)); }

}  // namespace ssm::cuda::detail
