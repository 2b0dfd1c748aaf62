#pragma once
/// \file
/// \brief One token of the selective recurrence for one channel, as the CUDA kernels of a decoding
/// step compute it: the state update (`ssm/scan/cuda/state_update.cuh`), the fused block step's
/// `dt_state_update` and `x_proj_state_update` (`ssm/blocks/cuda/`), and the one-launch step of
/// the whole model (`ssm/model/cuda/stack_step.cuh`):
///
///     dt   = softplus(dt_proj · dt_low + bias)
///     h[n] = exp(dt A[n]) h[n] + dt u B[n]        for every state n
///     y    = (C · h + D u) silu(z)
///
/// The kernels differ in how they spread a channel's states and sums over lanes; the arithmetic is
/// here once. The exponentials are the special-function unit's (`ssm/core/cuda/fast_math.cuh`),
/// with A given as A log2(e), so that exp(dt A) is one `ex2`.

#include <ssm/core/cuda/fast_math.cuh>
#include <ssm/core/dtype.hpp>

namespace ssm::cuda::detail {

/// \brief The step size from dt_proj's product: softplus(dot + bias), the product first rounded
/// to T, where the op-by-op path stores it.
/// \tparam T activation storage type. \param dot dt_proj · dt_low (fp32). \param bias dt's bias.
/// \return dt.
template <class T>
__device__ __forceinline__ float step_size(float dot, float bias) {
  return softplus_fast(round_to<T>(dot) + bias);
}

/// \brief One state's update, exp(dt A) h + (dt u) B.
/// \param dt the step size. \param a2 A log2(e). \param h the state. \param dt_u dt times the input u.
/// \param b B's value for this state. \return the new state.
__device__ __forceinline__ float next_state(float dt, float a2, float h, float dt_u, float b) {
  return exp2_approx(dt * a2) * h + dt_u * b;
}

/// \brief The channel's output, (C · h + D u) silu(z).
/// \param c_h C · h over the channel's states. \param skip D. \param u the input. \param z the gate's input.
/// \return y.
__device__ __forceinline__ float gated_output(float c_h, float skip, float u, float z) {
  return (c_h + skip * u) * silu_fast(z);
}

}  // namespace ssm::cuda::detail
