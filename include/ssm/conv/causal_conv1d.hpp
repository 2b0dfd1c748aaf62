#pragma once
/// \file
/// \brief Causal depthwise 1-D convolution over (B, D, L), and its one-token streaming update.
///
/// With the sequence extended on the left by a state of the W-1 previous inputs
/// (\f$\tilde x = [s, x]\f$, zeros if no state is given):
/// \f[
///   \mathrm{out}_{b,d,l} = \phi\Big(\beta_d + \sum_{k=0}^{W-1} w_{d,k}\, \tilde x_{b,d,l+k}\Big),
/// \f]
/// \f$\phi\f$ the identity or SiLU. The final state is the last W-1 entries of \f$\tilde x\f$.
/// Semantics of the `causal_conv1d` package's `causal_conv1d_ref` and `causal_conv1d_update_ref`.

#include <cstddef>
#include <string>
#include <vector>

#include <ssm/core/dtype.hpp>
#include <ssm/core/error.hpp>
#include <ssm/core/math.hpp>
#include <ssm/core/views.hpp>

namespace ssm {

/// \brief Widest convolution the kernels accept (mamba uses 4).
inline constexpr int max_conv_width = 8;

/// \brief Everything a causal conv1d over a sequence reads and writes.
///
/// `initial_state` and `final_state` may be the same memory; `out` must not overlap `x`.
/// Only `x`, `weight` and `out` are required; default-constructed views mean "absent".
/// \tparam T activation storage type (`float`, `ssm::f16` or `ssm::bf16`).
/// \tparam Wt weight storage type (same choices).
/// \tparam MemSpace the memory space of every tensor.
template <class T, class Wt, class MemSpace>
struct causal_conv1d_params {
  view3<const T, MemSpace> x;               ///< (B, D, L) input
  view2<const Wt, MemSpace> weight;         ///< (D, W) one filter per channel
  view1<const Wt, MemSpace> bias;           ///< (D); optional
  bool silu_activation = false;             ///< apply SiLU to the result
  view3<const T, MemSpace> initial_state;   ///< (B, D, W-1) inputs before x; zeros if absent
  view3<T, MemSpace> out;                   ///< (B, D, L)
  view3<T, MemSpace> final_state;           ///< (B, D, W-1) last W-1 inputs; optional
};

/// \brief Everything one streaming step of the causal conv1d reads and writes.
///
/// Only `bias` is optional. `out` must not overlap `x` or `state`.
/// \tparam T activation storage type (`float`, `ssm::f16` or `ssm::bf16`).
/// \tparam Wt weight storage type (same choices).
/// \tparam MemSpace the memory space of every tensor.
template <class T, class Wt, class MemSpace>
struct causal_conv1d_update_params {
  view2<const T, MemSpace> x;               ///< (B, D) input of this token
  view3<T, MemSpace> state;                 ///< (B, D, W-1) previous inputs, oldest first; updated in place
  view2<const Wt, MemSpace> weight;         ///< (D, W)
  view1<const Wt, MemSpace> bias;           ///< (D); optional
  bool silu_activation = false;             ///< apply SiLU to the result
  view2<T, MemSpace> out;                   ///< (B, D)
};

/// \brief Sizes of a convolution: B, D, L and W.
struct conv_shape {
  std::size_t batch;     ///< B
  std::size_t channels;  ///< D
  std::size_t length;    ///< L (1 for an update)
  std::size_t width;     ///< W
};

namespace detail {

template <class T, class Wt, class MemSpace>
conv_shape check(causal_conv1d_params<T, Wt, MemSpace> const& p, char const* function) {
  require(given(p.x) && given(p.weight) && given(p.out), function, "x, weight and out are required");
  conv_shape const s{p.x.extent(0), p.x.extent(1), p.x.extent(2), p.weight.extent(1)};
  require(p.weight.extent(0) == s.channels, function, "weight must be (D, W) with D = " + std::to_string(s.channels));
  require(s.width >= 1 && s.width <= static_cast<std::size_t>(max_conv_width), function,
          "the conv width W = " + std::to_string(s.width) + " must be in [1, 8]");
  require(p.out.extent(0) == s.batch && p.out.extent(1) == s.channels && p.out.extent(2) == s.length, function,
          "out must be (B, D, L) = " + shape_string(s.batch, s.channels, s.length));
  if (given(p.bias)) require(p.bias.extent(0) == s.channels, function, "bias must be (D)");
  auto const state_shape = shape_string(s.batch, s.channels, s.width - 1);
  auto is_state = [&](auto const& v) {
    return v.extent(0) == s.batch && v.extent(1) == s.channels && v.extent(2) == s.width - 1;
  };
  if (given(p.initial_state)) require(is_state(p.initial_state), function, "initial_state must be (B, D, W-1) = " + state_shape);
  if (given(p.final_state)) require(is_state(p.final_state), function, "final_state must be (B, D, W-1) = " + state_shape);
  return s;
}

template <class T, class Wt, class MemSpace>
conv_shape check(causal_conv1d_update_params<T, Wt, MemSpace> const& p, char const* function) {
  require(given(p.x) && given(p.state) && given(p.weight) && given(p.out), function,
          "x, state, weight and out are required");
  conv_shape const s{p.x.extent(0), p.x.extent(1), 1, p.weight.extent(1)};
  require(p.weight.extent(0) == s.channels, function, "weight must be (D, W) with D = " + std::to_string(s.channels));
  require(s.width >= 1 && s.width <= static_cast<std::size_t>(max_conv_width), function,
          "the conv width W must be in [1, 8]");
  require(p.state.extent(0) == s.batch && p.state.extent(1) == s.channels && p.state.extent(2) == s.width - 1,
          function, "state must be (B, D, W-1) = " + shape_string(s.batch, s.channels, s.width - 1));
  require(p.out.extent(0) == s.batch && p.out.extent(1) == s.channels, function,
          "out must be (B, D) = " + shape_string(s.batch, s.channels));
  if (given(p.bias)) require(p.bias.extent(0) == s.channels, function, "bias must be (D)");
  return s;
}

}  // namespace detail

namespace reference {

/// \brief Sequential reference of the causal conv1d: builds \f$\tilde x\f$ and convolves. Host only.
///
/// Synchronous host code with fp32 accumulation; the oracle of the tests.
/// \tparam T activation storage type (`float`, `ssm::f16` or `ssm::bf16`).
/// \tparam Wt weight storage type (same choices).
/// \tparam MemSpace the memory space of every tensor; must be host-accessible.
/// \param p the tensors and flags (see `causal_conv1d_params` for the shapes).
/// \throws ssm::shape_error if a required tensor is missing or the shapes disagree.
template <class T, class Wt, class MemSpace>
void causal_conv1d(causal_conv1d_params<T, Wt, MemSpace> const& p) {
  static_assert(is_accessible_v<Kokkos::DefaultHostExecutionSpace, MemSpace>,
                "ssm::reference::causal_conv1d: the tensors must be in host-accessible memory");
  auto const s = detail::check(p, "ssm::reference::causal_conv1d");
  std::size_t const history = s.width - 1;
  std::vector<float> padded(history + s.length);  // x̃ = [initial_state, x]
  for (std::size_t b = 0; b < s.batch; ++b) {
    for (std::size_t d = 0; d < s.channels; ++d) {
      for (std::size_t k = 0; k < history; ++k)
        padded[k] = given(p.initial_state) ? to_float(p.initial_state(b, d, k)) : 0.0f;
      for (std::size_t l = 0; l < s.length; ++l) padded[history + l] = to_float(p.x(b, d, l));
      for (std::size_t l = 0; l < s.length; ++l) {
        float acc = given(p.bias) ? to_float(p.bias(d)) : 0.0f;
        for (std::size_t k = 0; k < s.width; ++k) acc += to_float(p.weight(d, k)) * padded[l + k];
        p.out(b, d, l) = from_float<T>(p.silu_activation ? silu(acc) : acc);
      }
      if (given(p.final_state))
        for (std::size_t k = 0; k < history; ++k) p.final_state(b, d, k) = from_float<T>(padded[s.length + k]);
    }
  }
}

/// \brief Sequential reference of one streaming step: out from [state, x], then shift x into the state.
///
/// Synchronous host code with fp32 accumulation; the oracle of the tests.
/// \tparam T activation storage type (`float`, `ssm::f16` or `ssm::bf16`).
/// \tparam Wt weight storage type (same choices).
/// \tparam MemSpace the memory space of every tensor; must be host-accessible.
/// \param p the tensors and flags (see `causal_conv1d_update_params`); `p.state` is updated in place.
/// \throws ssm::shape_error if a required tensor is missing or the shapes disagree.
template <class T, class Wt, class MemSpace>
void causal_conv1d_update(causal_conv1d_update_params<T, Wt, MemSpace> const& p) {
  static_assert(is_accessible_v<Kokkos::DefaultHostExecutionSpace, MemSpace>,
                "ssm::reference::causal_conv1d_update: the tensors must be in host-accessible memory");
  auto const s = detail::check(p, "ssm::reference::causal_conv1d_update");
  std::size_t const history = s.width - 1;
  for (std::size_t b = 0; b < s.batch; ++b) {
    for (std::size_t d = 0; d < s.channels; ++d) {
      float acc = given(p.bias) ? to_float(p.bias(d)) : 0.0f;
      for (std::size_t k = 0; k < history; ++k) acc += to_float(p.weight(d, k)) * to_float(p.state(b, d, k));
      acc += to_float(p.weight(d, history)) * to_float(p.x(b, d));
      p.out(b, d) = from_float<T>(p.silu_activation ? silu(acc) : acc);
      for (std::size_t k = 0; k + 1 < history; ++k) p.state(b, d, k) = p.state(b, d, k + 1);
      if (history > 0) p.state(b, d, history - 1) = p.x(b, d);
    }
  }
}

}  // namespace reference

namespace detail {

/// \brief The portable Kokkos path of the causal conv1d: one work item per (batch, channel), with
/// a sliding window of the last W inputs in registers (asynchronous).
///
/// The body of the primary `causal_conv1d_backend`; callable on any execution space, so that the
/// tests can run it where another backend takes over.
/// \tparam ExecSpace a Kokkos execution space that can access `MemSpace`.
/// \tparam T activation storage type (`float`, `ssm::f16` or `ssm::bf16`).
/// \tparam Wt weight storage type (same choices).
/// \tparam MemSpace the memory space of every tensor.
/// \param space the execution space instance the kernel runs on.
/// \param p the checked tensors and flags: `x`, `out` (B, D, L); `weight` (D, W); `bias` (D);
///          `initial_state`, `final_state` (B, D, W-1).
/// \param s their sizes, as returned by the shape check.
template <class ExecSpace, class T, class Wt, class MemSpace>
void causal_conv1d_portable(ExecSpace const& space, causal_conv1d_params<T, Wt, MemSpace> const& p,
                            conv_shape const& s) {
  int const channels = static_cast<int>(s.channels);
  int const length = static_cast<int>(s.length);
  int const width = static_cast<int>(s.width);
  bool const has_bias = given(p.bias), has_initial = given(p.initial_state), has_final = given(p.final_state);
  auto const params = p;
  Kokkos::parallel_for(
      "ssm::causal_conv1d::kokkos", Kokkos::RangePolicy<ExecSpace>(space, 0, static_cast<int>(s.batch) * channels),
      KOKKOS_LAMBDA(int const item) {
        auto const& q = params;
        int const b = item / channels;
        int const d = item % channels;
        float w[max_conv_width];
        float window[max_conv_width];  // window[k] = x̃ at l + k; the newest input goes in last
        for (int k = 0; k < width; ++k) w[k] = to_float(q.weight(d, k));
        for (int k = 0; k + 1 < width; ++k) window[k] = has_initial ? to_float(q.initial_state(b, d, k)) : 0.0f;
        float const beta = has_bias ? to_float(q.bias(d)) : 0.0f;
        for (int l = 0; l < length; ++l) {
          window[width - 1] = to_float(q.x(b, d, l));
          float acc = beta;
          for (int k = 0; k < width; ++k) acc += w[k] * window[k];
          q.out(b, d, l) = from_float<T>(q.silu_activation ? fast_silu(acc) : acc);
          for (int k = 0; k + 1 < width; ++k) window[k] = window[k + 1];
        }
        if (has_final)
          for (int k = 0; k + 1 < width; ++k) q.final_state(b, d, k) = from_float<T>(window[k]);
      });
}

/// \brief One channel's streaming step on strided pointers:
/// \f$y = \mathrm{act}(\beta + \sum_{k<W-1} w_k s_k + w_{W-1} x)\f$, then the window moves on
/// (\f$s_k \leftarrow s_{k+1}\f$, \f$s_{W-2} \leftarrow x\f$).
///
/// The arithmetic every decoding path shares: the portable update below and the fused steps of
/// `ssm/blocks/host/mamba_step.hpp` and `ssm/blocks/cuda/mamba_step.cuh`, so that they round alike.
/// \tparam T activation storage type. \tparam Wt weight storage type.
/// \param w the channel's W weights, `w_step` apart. \param state its W - 1 past inputs, oldest
/// first, `state_step` apart; updated. \param width W. \param bias \f$\beta\f$ (0 for none).
/// \param x the new input. \param silu whether act is SiLU (else the identity).
/// \return y, in T.
template <class T, class Wt>
KOKKOS_FORCEINLINE_FUNCTION T conv_update_channel(Wt const* w, std::ptrdiff_t w_step, T* state,
                                                  std::ptrdiff_t state_step, int width, float bias, T x, bool silu) {
  float acc = bias;
  for (int k = 0; k + 1 < width; ++k) acc += to_float(w[k * w_step]) * to_float(state[k * state_step]);
  acc += to_float(w[(width - 1) * w_step]) * to_float(x);
  for (int k = 0; k + 2 < width; ++k) state[k * state_step] = state[(k + 1) * state_step];
  if (width > 1) state[(width - 2) * state_step] = x;
  return from_float<T>(silu ? fast_silu(acc) : acc);
}

/// \brief The portable Kokkos path of one streaming step: one work item per (batch, channel)
/// (asynchronous).
///
/// The body of the primary `causal_conv1d_backend`; callable on any execution space, so that the
/// tests can run it where another backend takes over.
/// \tparam ExecSpace a Kokkos execution space that can access `MemSpace`.
/// \tparam T activation storage type (`float`, `ssm::f16` or `ssm::bf16`).
/// \tparam Wt weight storage type (same choices).
/// \tparam MemSpace the memory space of every tensor.
/// \param space the execution space instance the kernel runs on.
/// \param p the checked tensors and flags: `x`, `out` (B, D); `state` (B, D, W-1), updated in place;
///          `weight` (D, W); `bias` (D).
/// \param s their sizes, as returned by the shape check (L = 1).
template <class ExecSpace, class T, class Wt, class MemSpace>
void causal_conv1d_update_portable(ExecSpace const& space, causal_conv1d_update_params<T, Wt, MemSpace> const& p,
                                   conv_shape const& s) {
  int const channels = static_cast<int>(s.channels);
  int const width = static_cast<int>(s.width);
  bool const has_bias = given(p.bias);
  auto const params = p;
  Kokkos::parallel_for(
      "ssm::causal_conv1d_update::kokkos",
      Kokkos::RangePolicy<ExecSpace>(space, 0, static_cast<int>(s.batch) * channels),
      KOKKOS_LAMBDA(int const item) {
        auto const& q = params;
        int const b = item / channels;
        int const d = item % channels;
        T* const state = width > 1 ? &q.state(b, d, 0) : nullptr;  // at W = 1 there is no state
        q.out(b, d) = conv_update_channel(&q.weight(d, 0), q.weight.stride(1), state, q.state.stride(2), width,
                                          has_bias ? to_float(q.bias(d)) : 0.0f, q.x(b, d), q.silu_activation);
      });
}

}  // namespace detail

/// \brief Which implementation of the causal conv1d runs on an execution space; the primary
/// template is the portable Kokkos path (`detail::causal_conv1d_portable` and
/// `detail::causal_conv1d_update_portable`).
///
/// Specialise it for an execution space to plug in another kernel (`ssm/conv/cuda/causal_conv1d.cuh`
/// does for `Kokkos::Cuda`). `ssm::causal_conv1d` calls `run` only after checking the shapes and
/// with B, D > 0.
/// \tparam ExecSpace a Kokkos execution space.
template <class ExecSpace>
struct causal_conv1d_backend {
  /// \brief Convolve a whole sequence on `space` (asynchronous: returns once the work is enqueued).
  /// \tparam T activation storage type (`float`, `ssm::f16` or `ssm::bf16`).
  /// \tparam Wt weight storage type (same choices).
  /// \tparam MemSpace the memory space of every tensor.
  /// \param space the execution space instance the kernel runs on.
  /// \param p the checked tensors and flags (see `causal_conv1d_params` for the shapes).
  /// \param s their sizes, as returned by the shape check.
  template <class T, class Wt, class MemSpace>
  static void run(ExecSpace const& space, causal_conv1d_params<T, Wt, MemSpace> const& p, conv_shape const& s) {
    detail::causal_conv1d_portable(space, p, s);
  }

  /// \brief One streaming step on `space` (asynchronous: returns once the work is enqueued).
  /// \tparam T activation storage type (`float`, `ssm::f16` or `ssm::bf16`).
  /// \tparam Wt weight storage type (same choices).
  /// \tparam MemSpace the memory space of every tensor.
  /// \param space the execution space instance the kernel runs on.
  /// \param p the checked tensors and flags (see `causal_conv1d_update_params`); `p.state` is updated in place.
  /// \param s their sizes, as returned by the shape check (L = 1).
  template <class T, class Wt, class MemSpace>
  static void run(ExecSpace const& space, causal_conv1d_update_params<T, Wt, MemSpace> const& p, conv_shape const& s) {
    detail::causal_conv1d_update_portable(space, p, s);
  }
};

/// \brief Causal depthwise conv1d over a sequence on an execution space (asynchronous).
///
/// Checks the shapes on the host, then enqueues the work on `space` and returns: fence `space`
/// before reading `p.out` or `p.final_state`.
/// \tparam ExecSpace a Kokkos execution space that can access `MemSpace`.
/// \tparam T activation storage type (`float`, `ssm::f16` or `ssm::bf16`).
/// \tparam Wt weight storage type (same choices).
/// \tparam MemSpace the memory space of every tensor.
/// \param space the execution space instance the work runs on.
/// \param p the tensors and flags (see `causal_conv1d_params` for shapes and aliasing).
/// \throws ssm::shape_error if a required tensor is missing or the shapes disagree.
template <class ExecSpace, class T, class Wt, class MemSpace>
void causal_conv1d(ExecSpace const& space, causal_conv1d_params<T, Wt, MemSpace> const& p) {
  static_assert(is_accessible_v<ExecSpace, MemSpace>,
                "ssm::causal_conv1d: the tensors must be accessible from the execution space");
  auto const s = detail::check(p, "ssm::causal_conv1d");
  if (s.batch == 0 || s.channels == 0) return;
  causal_conv1d_backend<ExecSpace>::run(space, p, s);
}

/// \brief One streaming step of the causal conv1d on an execution space (asynchronous).
///
/// Checks the shapes on the host, then enqueues the work on `space` and returns: fence `space`
/// before reading `p.out` or `p.state`.
/// \tparam ExecSpace a Kokkos execution space that can access `MemSpace`.
/// \tparam T activation storage type (`float`, `ssm::f16` or `ssm::bf16`).
/// \tparam Wt weight storage type (same choices).
/// \tparam MemSpace the memory space of every tensor.
/// \param space the execution space instance the work runs on.
/// \param p the tensors and flags (see `causal_conv1d_update_params`); `p.state` is updated in place.
/// \throws ssm::shape_error if a required tensor is missing or the shapes disagree.
template <class ExecSpace, class T, class Wt, class MemSpace>
void causal_conv1d_update(ExecSpace const& space, causal_conv1d_update_params<T, Wt, MemSpace> const& p) {
  static_assert(is_accessible_v<ExecSpace, MemSpace>,
                "ssm::causal_conv1d_update: the tensors must be accessible from the execution space");
  auto const s = detail::check(p, "ssm::causal_conv1d_update");
  if (s.batch == 0 || s.channels == 0) return;
  causal_conv1d_backend<ExecSpace>::run(space, p, s);
}

}  // namespace ssm

#if defined(KOKKOS_ENABLE_CUDA)
#include <ssm/conv/cuda/causal_conv1d.cuh>
#endif
