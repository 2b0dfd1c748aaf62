#pragma once
/// \file
/// \brief The one place where `ssm` absorbs the API differences between Kokkos 3.4 and 4.x.
///
/// Kokkos 3.4 (the version Debian 12 ships inside Trilinos) keeps its math functions in
/// `Kokkos::Experimental`, has no labelled `fence`, and no `Kokkos::min/max`. Kokkos 3.7 and 4.x
/// moved the math functions to `Kokkos::`. Nothing else in the library may test
/// `KOKKOS_VERSION`; it calls the wrappers below instead. `prefetch` likewise absorbs the one
/// difference between host and device code that the host kernels need.

#include <Kokkos_Complex.hpp>
#include <Kokkos_Core.hpp>

namespace ssm::compat {

#if KOKKOS_VERSION >= 30700
namespace kmath = ::Kokkos;
#else
namespace kmath = ::Kokkos::Experimental;
#endif

/// \brief \f$e^x\f$ in single precision, on host and device.
/// \param x the exponent.
/// \return \f$e^x\f$.
KOKKOS_INLINE_FUNCTION float exp(float x) { return kmath::exp(x); }
/// \brief \f$e^x\f$ in double precision, on host and device.
/// \param x the exponent.
/// \return \f$e^x\f$.
KOKKOS_INLINE_FUNCTION double exp(double x) { return kmath::exp(x); }
/// \brief \f$e^x - 1\f$, accurate for small \f$x\f$ (single precision).
/// \param x the exponent.
/// \return \f$e^x - 1\f$.
KOKKOS_INLINE_FUNCTION float expm1(float x) { return kmath::expm1(x); }
/// \brief \f$e^x - 1\f$, accurate for small \f$x\f$ (double precision).
/// \param x the exponent.
/// \return \f$e^x - 1\f$.
KOKKOS_INLINE_FUNCTION double expm1(double x) { return kmath::expm1(x); }
/// \brief \f$\log(1 + x)\f$, accurate for small \f$x\f$ (single precision).
/// \param x the argument, \f$x > -1\f$.
/// \return \f$\log(1 + x)\f$ (natural logarithm).
KOKKOS_INLINE_FUNCTION float log1p(float x) { return kmath::log1p(x); }
/// \brief \f$\log(1 + x)\f$, accurate for small \f$x\f$ (double precision).
/// \param x the argument, \f$x > -1\f$.
/// \return \f$\log(1 + x)\f$ (natural logarithm).
KOKKOS_INLINE_FUNCTION double log1p(double x) { return kmath::log1p(x); }
/// \brief Natural logarithm (double precision).
/// \param x the argument, \f$x > 0\f$.
/// \return \f$\log x\f$.
KOKKOS_INLINE_FUNCTION double log(double x) { return kmath::log(x); }
/// \brief Square root (single precision).
/// \param x the argument, \f$x \ge 0\f$.
/// \return \f$\sqrt{x}\f$.
KOKKOS_INLINE_FUNCTION float sqrt(float x) { return kmath::sqrt(x); }
/// \brief Square root (double precision).
/// \param x the argument, \f$x \ge 0\f$.
/// \return \f$\sqrt{x}\f$.
KOKKOS_INLINE_FUNCTION double sqrt(double x) { return kmath::sqrt(x); }
/// \brief Sine (single precision).
/// \param x the angle in radians.
/// \return \f$\sin x\f$.
KOKKOS_INLINE_FUNCTION float sin(float x) { return kmath::sin(x); }
/// \brief Sine (double precision).
/// \param x the angle in radians.
/// \return \f$\sin x\f$.
KOKKOS_INLINE_FUNCTION double sin(double x) { return kmath::sin(x); }
/// \brief Cosine (single precision).
/// \param x the angle in radians.
/// \return \f$\cos x\f$.
KOKKOS_INLINE_FUNCTION float cos(float x) { return kmath::cos(x); }
/// \brief Cosine (double precision).
/// \param x the angle in radians.
/// \return \f$\cos x\f$.
KOKKOS_INLINE_FUNCTION double cos(double x) { return kmath::cos(x); }
/// \brief Absolute value (single precision).
/// \param x the argument.
/// \return \f$|x|\f$.
KOKKOS_INLINE_FUNCTION float fabs(float x) { return kmath::fabs(x); }
/// \brief Absolute value (double precision).
/// \param x the argument.
/// \return \f$|x|\f$.
KOKKOS_INLINE_FUNCTION double fabs(double x) { return kmath::fabs(x); }

/// \brief Complex exponential (the same function in every Kokkos version).
/// \tparam Real `float` or `double`.
/// \param z the complex exponent.
/// \return \f$e^z\f$.
template <class Real>
KOKKOS_INLINE_FUNCTION Kokkos::complex<Real> exp(Kokkos::complex<Real> const& z) {
  return Kokkos::exp(z);
}

/// \brief Wait for all work submitted to `space`; the label names the wait in Kokkos Tools.
///
/// Blocks the calling host thread. Kokkos 3.4 cannot label a fence, so there the label is ignored.
/// \tparam ExecSpace a Kokkos execution space.
/// \param space the execution space instance to wait for.
/// \param label a name for the fence in Kokkos Tools (ignored on Kokkos 3.4).
template <class ExecSpace>
void fence(ExecSpace const& space, [[maybe_unused]] char const* label) {
#if KOKKOS_VERSION >= 30700
  space.fence(label);
#else
  space.fence();
#endif
}

/// \brief Number of threads an execution space instance can run at once.
/// \tparam ExecSpace a Kokkos execution space.
/// \param space the execution space instance.
/// \return its concurrency (at least 1).
template <class ExecSpace>
int concurrency(ExecSpace const& space) {
  return space.concurrency();  // static in 3.4, a member in 4.x: this spelling works for both
}

/// \brief Ask the host's caches to start loading the line at `address` (a hint: no fault, no
/// effect on the result). Compiles to nothing in device code.
/// \param address any address, valid or not.
KOKKOS_FORCEINLINE_FUNCTION void prefetch(void const* address) {
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__) || defined(__SYCL_DEVICE_ONLY__)
  (void)address;
#else
  __builtin_prefetch(address, /*read*/ 0, /*keep in every level*/ 3);
#endif
}

/// \brief A policy whose kernel can be recorded in a CUDA graph (`ssm::graph`).
///
/// Kokkos' CUDA backend copies a functor of more than 512 bytes to constant memory before the
/// launch, with a host-side wait on an event, which stream capture forbids. Marked light-weight,
/// a functor of up to 4 KB goes as a kernel argument instead. Other backends ignore the mark.
/// \tparam Policy a Kokkos execution policy.
/// \param policy the policy.
/// \return the same policy, marked `HintLightWeight`.
template <class Policy>
auto capturable(Policy const& policy) {
  return Kokkos::Experimental::require(policy, Kokkos::Experimental::WorkItemProperty::HintLightWeight);
}

/// \brief Initialize Kokkos with a number of host threads (0 keeps Kokkos' default); pair with
/// `Kokkos::finalize`. Kokkos 3.7 replaced `InitArguments` with `InitializationSettings`.
/// \param threads threads of the host backend (OpenMP, Threads); ignored by Serial.
inline void initialize(int threads) {
#if KOKKOS_VERSION >= 30700
  Kokkos::InitializationSettings settings;
  if (threads > 0) settings.set_num_threads(threads);
  Kokkos::initialize(settings);
#else
  Kokkos::InitArguments arguments;
  if (threads > 0) arguments.num_threads = threads;
  Kokkos::initialize(arguments);
#endif
}

}  // namespace ssm::compat
