#pragma once
/// \file
/// \brief The Mamba-1 mixer and the residual block around it.
///
/// The mixer, for hidden states \f$x\f$ of E features per token (mamba_ssm's `Mamba`):
/// - in_proj: \f$[u;\ z] = W_{\mathrm{in}}\, x\f$ (2D outputs: the input u and the gate z)
/// - conv: \f$u \leftarrow \mathrm{silu}(\mathrm{conv1d}(u))\f$ (causal, width W)
/// - x_proj: \f$[\delta_{\mathrm{low}};\ B;\ C] = W_x\, u\f$ (R + 2N outputs per token)
/// - dt_proj: \f$\delta = W_{\Delta}\, \delta_{\mathrm{low}}\f$ (its bias \f$\beta\f$ goes to the scan)
/// - scan: \f$y = \mathrm{selective\_scan}(u, \mathrm{softplus}(\delta + \beta), A, B, C, D) \cdot \mathrm{silu}(z)\f$
/// - out_proj: \f$\mathrm{out} = W_{\mathrm{out}}\, y\f$
/// The block (mamba_ssm's `Block` with `fused_add_norm`): residual += hidden;
/// hidden = mixer(RMSNorm(residual)). Start a stack of blocks with residual = 0.
///
/// Activations are token-major, (B, L, E) and (B, L, D): what the dense layers produce. The conv
/// and the scan see them as (B, D, L) through strides, so nothing is transposed.

#include <cstddef>
#include <string>

#include <ssm/conv/causal_conv1d.hpp>
#include <ssm/core/error.hpp>
#include <ssm/core/views.hpp>
#include <ssm/linear/linear.hpp>
#include <ssm/norm/rms_norm.hpp>
#include <ssm/scan/selective_scan.hpp>
#include <ssm/scan/state_update.hpp>

namespace ssm {

/// \brief Sizes and options of a Mamba-1 mixer (mamba_ssm's names).
struct mamba_config {
  int d_model = 0;         ///< E, features of the residual stream
  int d_inner = 0;         ///< D = expand * d_model, channels of the scan
  int d_state = 16;        ///< N, state size per channel
  int d_conv = 4;          ///< W, width of the causal conv
  int dt_rank = 0;         ///< R, rank of the step-size projection
  bool conv_bias = true;   ///< conv1d has a bias
  bool bias = false;       ///< in_proj and out_proj have biases
  float norm_eps = 1e-5f;  ///< epsilon of the block's RMSNorm

  /// \brief Throw `ssm::shape_error` unless every size is in range.
  /// \throws ssm::shape_error naming the first size out of range.
  void validate() const {
    auto const require = [](bool ok, std::string const& what) { detail::require(ok, "ssm::mamba_config", what); };
    require(d_model >= 1, "d_model must be positive, got " + std::to_string(d_model));
    require(d_inner >= 1, "d_inner must be positive, got " + std::to_string(d_inner));
    require(d_state >= 1 && d_state <= max_state_size, "d_state must be in [1, 256], got " + std::to_string(d_state));
    require(d_conv >= 1 && d_conv <= max_conv_width, "d_conv must be in [1, 8], got " + std::to_string(d_conv));
    require(dt_rank >= 1, "dt_rank must be positive, got " + std::to_string(dt_rank));
    require(norm_eps >= 0.0f, "norm_eps must not be negative");
  }
};

/// \brief The weights of one mixer, as mamba_ssm names them (`mixer.in_proj.weight`, ...).
/// \tparam Wt storage type of the dense and conv weights; `A`, `D` and `dt_proj_bias` are fp32.
/// \tparam MemSpace the memory space holding them.
template <class Wt, class MemSpace>
struct mamba_mixer_weights {
  /// \brief A contiguous row-major matrix [rows, cols].
  /// \tparam V element type.
  template <class V>
  using matrix = Kokkos::View<V**, Kokkos::LayoutRight, MemSpace>;
  /// \brief A contiguous vector.
  /// \tparam V element type.
  template <class V>
  using vector = Kokkos::View<V*, Kokkos::LayoutRight, MemSpace>;

  matrix<Wt> in_proj_weight;    ///< (2D, E)
  vector<Wt> in_proj_bias;      ///< (2D); only when `bias`
  matrix<Wt> conv1d_weight;     ///< (D, W) (PyTorch stores (D, 1, W): the same memory)
  vector<Wt> conv1d_bias;       ///< (D); only when `conv_bias`
  matrix<Wt> x_proj_weight;     ///< (R + 2N, D)
  matrix<Wt> dt_proj_weight;    ///< (D, R)
  vector<float> dt_proj_bias;   ///< (D)
  matrix<float> A;              ///< (D, N) = -exp(A_log)
  vector<float> D;              ///< (D)
  matrix<Wt> out_proj_weight;   ///< (E, D)
  vector<Wt> out_proj_bias;     ///< (E); only when `bias`

  /// \brief Copy every tensor of `from`, weights of the same sizes held in any memory space
  /// (host weights to a GPU, say), into these (synchronous).
  /// \tparam Src the memory space of `from`.
  /// \param from the weights to copy; absent biases stay absent.
  template <class Src>
  void copy_from(mamba_mixer_weights<Wt, Src> const& from) const {
    Kokkos::deep_copy(in_proj_weight, from.in_proj_weight);
    Kokkos::deep_copy(in_proj_bias, from.in_proj_bias);
    Kokkos::deep_copy(conv1d_weight, from.conv1d_weight);
    Kokkos::deep_copy(conv1d_bias, from.conv1d_bias);
    Kokkos::deep_copy(x_proj_weight, from.x_proj_weight);
    Kokkos::deep_copy(dt_proj_weight, from.dt_proj_weight);
    Kokkos::deep_copy(dt_proj_bias, from.dt_proj_bias);
    Kokkos::deep_copy(A, from.A);
    Kokkos::deep_copy(D, from.D);
    Kokkos::deep_copy(out_proj_weight, from.out_proj_weight);
    Kokkos::deep_copy(out_proj_bias, from.out_proj_bias);
  }

  /// \brief Allocate (zero-filled, labelled) weights of the shapes `c` gives.
  ///
  /// Optional biases are allocated only when `c.bias` / `c.conv_bias` ask for them.
  /// \param c the sizes; validated first.
  /// \param prefix the start of every view's label, e.g. `"layers.0.mixer"` gives
  ///        `"layers.0.mixer.in_proj.weight"`.
  /// \return the weights, every shape as listed above; fill them before use.
  /// \throws ssm::shape_error if `c` is out of range.
  static mamba_mixer_weights allocate(mamba_config const& c, std::string const& prefix = "mixer") {
    c.validate();
    mamba_mixer_weights w;
    auto const label = [&](char const* name) { return prefix + "." + name; };
    int const D = c.d_inner, E = c.d_model;
    w.in_proj_weight = matrix<Wt>(label("in_proj.weight"), 2 * D, E);
    if (c.bias) w.in_proj_bias = vector<Wt>(label("in_proj.bias"), 2 * D);
    w.conv1d_weight = matrix<Wt>(label("conv1d.weight"), D, c.d_conv);
    if (c.conv_bias) w.conv1d_bias = vector<Wt>(label("conv1d.bias"), D);
    w.x_proj_weight = matrix<Wt>(label("x_proj.weight"), c.dt_rank + 2 * c.d_state, D);
    w.dt_proj_weight = matrix<Wt>(label("dt_proj.weight"), D, c.dt_rank);
    w.dt_proj_bias = vector<float>(label("dt_proj.bias"), D);
    w.A = matrix<float>(label("A"), D, c.d_state);
    w.D = vector<float>(label("D"), D);
    w.out_proj_weight = matrix<Wt>(label("out_proj.weight"), E, D);
    if (c.bias) w.out_proj_bias = vector<Wt>(label("out_proj.bias"), E);
    return w;
  }
};

/// \brief The recurrent state of one mixer for B sequences: what decoding carries between tokens.
/// \tparam T activation storage type (`float`, `ssm::f16`, `ssm::bf16`) of the conv state.
/// \tparam MemSpace the memory space holding it.
template <class T, class MemSpace>
struct mamba_state {
  Kokkos::View<T***, Kokkos::LayoutRight, MemSpace> conv;     ///< (B, D, W-1) last inputs of the conv
  Kokkos::View<float***, Kokkos::LayoutRight, MemSpace> ssm;  ///< (B, D, N) state of the scan

  /// \brief A zero state for `batch` sequences: the state before the first token.
  /// \param c the mixer's sizes (D = `d_inner`, W = `d_conv`, N = `d_state`).
  /// \param batch B, the number of sequences.
  /// \return `conv` (B, D, W-1) and `ssm` (B, D, N), zero-filled (synchronously, by Kokkos).
  static mamba_state zeros(mamba_config const& c, int batch) {
    return {Kokkos::View<T***, Kokkos::LayoutRight, MemSpace>("ssm::mamba_state::conv", batch, c.d_inner, c.d_conv - 1),
            Kokkos::View<float***, Kokkos::LayoutRight, MemSpace>("ssm::mamba_state::ssm", batch, c.d_inner, c.d_state)};
  }
};

/// \brief The middle of a decoding step of a mixer, between in_proj and out_proj: what a backend
/// may fuse into few kernels.
///
/// conv update and SiLU, x_proj, dt_proj, softplus, the state update and the gate, for one token
/// of each of B sequences. Every tensor is contiguous.
/// \tparam T activation storage type. \tparam Wt weight storage type.
/// \tparam MemSpace the memory space of every tensor.
template <class T, class Wt, class MemSpace>
struct mamba_step_params {
  T* xz;                                          ///< (B, 2D) in_proj's output: u, then the gate z
  T* conv_state;                                  ///< (B, D, W-1) updated in place
  float* ssm_state;                               ///< (B, D, N) updated in place
  T* xc;                                          ///< (B, D) out: the conv's output (the scan's u)
  T* x_dbl;                                       ///< (B, R + 2N) scratch: x_proj's output
  mamba_mixer_weights<Wt, MemSpace> const* weights;  ///< conv1d, x_proj, dt_proj, A and D
  T* y;                                           ///< (B, D) out: the gated scan output
  int batch;                                      ///< B
  /// A word of scratch, zero between steps, for a backend whose step makes the blocks of one
  /// launch meet (`ssm/blocks/cuda/x_proj_state.cuh`); null where the mixer has none.
  unsigned* meeting = nullptr;
};

/// \brief Whether an execution space fuses the middle of a decoding step (`mamba_step_params`).
///
/// The primary template does not: the mixer runs `causal_conv1d_update`, two `linear` layers and
/// `selective_state_update`. A backend that fuses specialises it with `fused = true`,
/// `fuses(batch)` (whether it fuses a step of that many sequences) and `run(space, config, params)`.
/// \tparam ExecSpace a Kokkos execution space.
template <class ExecSpace>
struct mamba_step_backend {
  static constexpr bool fused = false;  ///< the step runs op by op
};

/// \brief A decoding step of a whole block, residual add and RMSNorm included: what a backend may
/// fuse across the norm and the mixer's dense layers. Every tensor is contiguous.
/// \tparam T activation storage type. \tparam Wt weight storage type.
/// \tparam MemSpace the memory space of every tensor.
template <class T, class Wt, class MemSpace>
struct mamba_block_step_params {
  T const* hidden;                          ///< (B, E) the previous block's output
  float* residual;                          ///< (B, E) the residual stream: residual += hidden
  Wt const* norm_weight;                    ///< (E) the RMSNorm scale
  mamba_step_params<T, Wt, MemSpace> mixer;  ///< the mixer's state, scratch and weights
  T* out;                                   ///< (B, E) the mixer's output; may be `hidden`
};

/// \brief Whether an execution space fuses a whole block's decoding step
/// (`mamba_block_step_params`).
///
/// The primary template does not: the block runs `rms_norm`, then `mamba_mixer::step`. A backend
/// that fuses specialises it with `fused = true`, `fuses(config, params)` (whether it takes this
/// step) and `run(space, config, params)`, which must leave `residual`, `out` and the state as
/// the unfused step does. The host spaces do (`ssm/blocks/host/mamba_step.hpp`), and so does
/// `Kokkos::Cuda` (`ssm/blocks/cuda/mamba_step.cuh`).
/// \tparam ExecSpace a Kokkos execution space.
/// \tparam Enable room for a partial specialisation that selects a family of spaces.
template <class ExecSpace, class Enable = void>
struct mamba_block_step_backend {
  static constexpr bool fused = false;  ///< the step runs as the norm, then the mixer
};

/// \brief The Mamba-1 mixer: `forward` over sequences and `step` for one token.
///
/// A mixer keeps scratch buffers between calls, so one object must not run two calls at once.
/// Copies share their weights (Kokkos views are reference-counted handles) but not the scratch.
/// \tparam ExecSpace Kokkos execution space; weights, activations and state live in its memory space.
/// \tparam T activation storage type (`float`, `ssm::f16` or `ssm::bf16`).
/// \tparam Wt weight storage type (same choices; defaults to `T`).
template <class ExecSpace, class T = float, class Wt = T>
class mamba_mixer {
 public:
  using memory_space = typename ExecSpace::memory_space;   ///< where weights and activations live
  using weights_type = mamba_mixer_weights<Wt, memory_space>;  ///< the weights
  using state_type = mamba_state<T, memory_space>;        ///< the recurrent state
  /// \brief Contiguous rank-3 activations, token-major: (B, L, E).
  /// \tparam V element type.
  template <class V>
  using tensor3 = Kokkos::View<V***, Kokkos::LayoutRight, memory_space>;
  /// \brief Contiguous rank-2 activations: (B, E), one token per sequence.
  /// \tparam V element type.
  template <class V>
  using tensor2 = Kokkos::View<V**, Kokkos::LayoutRight, memory_space>;
  /// \brief A decoding step's out_proj output as S fp32 partial sums over slices of D: (S, B, E).
  using partials_type = Kokkos::View<float***, Kokkos::LayoutRight, memory_space>;

  /// \brief A mixer of the given sizes and weights.
  /// \param config the sizes and options; validated.
  /// \param weights the weights (shared, not copied), of the shapes `config` gives.
  /// \throws ssm::shape_error if `config` is out of range or a weight has the wrong shape.
  mamba_mixer(mamba_config const& config, weights_type weights) : config_(config), weights_(std::move(weights)) {
    config_.validate();
    check_weights();
  }

  /// \brief The sizes.
  /// \return the validated configuration.
  mamba_config const& config() const { return config_; }
  /// \brief The weights.
  /// \return the weights given to the constructor.
  weights_type const& weights() const { return weights_; }

  /// \brief Mix B sequences of L tokens (asynchronous on `space`).
  ///
  /// Enqueues in_proj, conv, x_proj, dt_proj, the scan and out_proj on `space` and returns: fence
  /// `space` before reading `out` or `*state` on the host.
  /// \param space the execution space instance the work runs on.
  /// \param hidden (B, L, E) input.
  /// \param out (B, L, E) output; may be the same memory as `hidden`.
  /// \param state optional: if given, `conv` (B, D, W-1) and `ssm` (B, D, N) hold the state before
  ///              token 0 on entry and after token L-1 on return (updated in place); if null, the
  ///              sequences start from a zero state.
  /// \throws ssm::shape_error if `hidden` does not have E features, `out` differs in shape or the
  ///         state has the wrong shape.
  void forward(ExecSpace const& space, tensor3<const T> const& hidden, tensor3<T> const& out,
               state_type* state = nullptr) const {
    char const* fn = "ssm::mamba_mixer::forward";
    std::size_t const B = hidden.extent(0), L = hidden.extent(1);
    check_tokens(fn, hidden.extent(2), out.extent(0) == B && out.extent(1) == L && out.extent(2) == hidden.extent(2));
    if (state) check_state(fn, *state, B);
    std::size_t const M = B * L, D = config_.d_inner, N = config_.d_state, R = config_.dt_rank;
    std::size_t const E = config_.d_model, xw = R + 2 * N;  // xw: width of x_proj's output
    if (M == 0) return;
    reserve(M);
    T* xz = scratch_.xz.data();
    T* xc = scratch_.xc.data();
    T* xdbl = scratch_.x_dbl.data();
    T* dt = scratch_.dt.data();
    T* y = scratch_.y.data();

    using M_ = memory_space;
    linear(space, linear_params<T, Wt, M_>{strided<const T, M_>(hidden.data(), M, E, E, 1), weights_.in_proj_weight,
                                           weights_.in_proj_bias, strided<T, M_>(xz, M, 2 * D, 2 * D, 1)});
    causal_conv1d_params<T, Wt, M_> conv;
    conv.x = strided<const T, M_>(xz, B, L * 2 * D, D, 1, L, 2 * D);  // u half of in_proj, as (B, D, L)
    conv.weight = weights_.conv1d_weight;
    conv.bias = weights_.conv1d_bias;
    conv.silu_activation = true;
    conv.out = strided<T, M_>(xc, B, L * D, D, 1, L, D);
    if (state) {
      conv.initial_state = state->conv;
      conv.final_state = state->conv;
    }
    causal_conv1d(space, conv);
    linear(space, linear_params<T, Wt, M_>{strided<const T, M_>(xc, M, D, D, 1), weights_.x_proj_weight, {},
                                           strided<T, M_>(xdbl, M, xw, xw, 1)});
    linear(space, linear_params<T, Wt, M_>{strided<const T, M_>(xdbl, M, xw, R, 1), weights_.dt_proj_weight, {},
                                           strided<T, M_>(dt, M, D, D, 1)});
    selective_scan_params<T, M_> scan;
    scan.u = strided<const T, M_>(xc, B, L * D, D, 1, L, D);
    scan.delta = strided<const T, M_>(dt, B, L * D, D, 1, L, D);
    scan.A = weights_.A;
    scan.B = group_view(xdbl + R, B, L, xw);
    scan.C = group_view(xdbl + R + N, B, L, xw);
    scan.D = weights_.D;
    scan.z = strided<const T, M_>(xz + D, B, L * 2 * D, D, 1, L, 2 * D);  // z half of in_proj
    scan.delta_bias = weights_.dt_proj_bias;
    scan.delta_softplus = true;
    scan.out = strided<T, M_>(y, B, L * D, D, 1, L, D);
    if (state) {
      scan.initial_state = state->ssm;
      scan.final_state = state->ssm;
    }
    selective_scan(space, scan);
    linear(space, linear_params<T, Wt, M_>{strided<const T, M_>(y, M, D, D, 1), weights_.out_proj_weight,
                                           weights_.out_proj_bias, strided<T, M_>(out.data(), M, E, E, 1)});
  }

  /// \brief Mix one token of each of B sequences, advancing their state (asynchronous on `space`).
  ///
  /// Equals `forward` over L tokens when called L times. Costs the same whatever the context length.
  /// \param space the execution space instance the work runs on; fence it before reading `out`
  ///              or `state` on the host.
  /// \param hidden (B, E) input, one token per sequence.
  /// \param out (B, E) output; may be the same memory as `hidden`.
  /// \param state `conv` (B, D, W-1) and `ssm` (B, D, N): the state before this token on entry,
  ///              after it on return (updated in place).
  /// \throws ssm::shape_error if `hidden` does not have E features, `out` differs in shape or the
  ///         state has the wrong shape.
  void step(ExecSpace const& space, tensor2<const T> const& hidden, tensor2<T> const& out, state_type& state) const {
    char const* fn = "ssm::mamba_mixer::step";
    std::size_t const B = hidden.extent(0);
    check_tokens(fn, hidden.extent(1), out.extent(0) == B && out.extent(1) == hidden.extent(1));
    check_state(fn, state, B);
    if (B == 0) return;
    T const* y = step_to_y(space, hidden, state);
    using M_ = memory_space;
    std::size_t const D = config_.d_inner;
    linear(space, linear_params<T, Wt, M_>{strided<const T, M_>(y, B, D, D, 1), weights_.out_proj_weight,
                                           weights_.out_proj_bias, out});
  }

  /// \brief `step`, with out_proj's output left as S fp32 partial sums over slices of D
  /// (`ssm::linear_partials`) for the next block's norm to add (`rms_norm_params::x_partials`).
  /// \param space,hidden,state as for `step`.
  /// \param out (S, B, E) out_proj's partial sums, S dividing D.
  /// \throws ssm::shape_error as `step` does, if S does not divide D, or if out_proj has a bias.
  void step(ExecSpace const& space, tensor2<const T> const& hidden, partials_type const& out, state_type& state) const {
    char const* fn = "ssm::mamba_mixer::step";
    std::size_t const B = hidden.extent(0);
    check_tokens(fn, hidden.extent(1), out.extent(1) == B && out.extent(2) == hidden.extent(1));
    detail::require(!config_.bias, fn, "out_proj's output can be left as partial sums only without a bias");
    check_state(fn, state, B);
    if (B == 0) return;
    T const* y = step_to_y(space, hidden, state);
    using M_ = memory_space;
    std::size_t const D = config_.d_inner;
    linear_partials(space, linear_partials_params<T, Wt, M_>{strided<const T, M_>(y, B, D, D, 1),
                                                             weights_.out_proj_weight,
                                                             strided<float, M_>(out.data(), out.extent(0), out.stride(0),
                                                                                B, out.stride(1), out.extent(2), 1)});
  }

  /// \brief The tensors a decoding step of B sequences works on: this mixer's scratch (grown to B
  /// rows), `state` and the weights; for a backend that fuses a whole block's step
  /// (`mamba_block_step_backend`). The same rules as `step`: one call at a time per mixer.
  /// \param B sequences. \param state `conv` (B, D, W-1) and `ssm` (B, D, N).
  /// \return the pointers, batch B.
  /// \throws ssm::shape_error if the state has the wrong shape.
  mamba_step_params<T, Wt, memory_space> step_tensors(std::size_t B, state_type& state) const {
    check_state("ssm::mamba_mixer::step", state, B);
    reserve(B);
    return {scratch_.xz.data(),    state.conv.data(), state.ssm.data(),   scratch_.xc.data(),
            scratch_.x_dbl.data(), &weights_,         scratch_.y.data(),   static_cast<int>(B),
            scratch_.meeting.data()};
  }

 private:
  /// \brief `step` up to out_proj: in_proj and the middle (fused where the backend fuses it).
  /// \return the gated scan output y (B, D) in the mixer's scratch.
  T const* step_to_y(ExecSpace const& space, tensor2<const T> const& hidden, state_type& state) const {
    std::size_t const B = hidden.extent(0), D = config_.d_inner;
    reserve(B);
    T* xz = scratch_.xz.data();
    T* xc = scratch_.xc.data();
    T* y = scratch_.y.data();
    using M_ = memory_space;
    linear(space, linear_params<T, Wt, M_>{hidden, weights_.in_proj_weight, weights_.in_proj_bias,
                                           strided<T, M_>(xz, B, 2 * D, 2 * D, 1)});
    if constexpr (mamba_step_backend<ExecSpace>::fused) {
      if (mamba_step_backend<ExecSpace>::fuses(B)) {
        mamba_step_backend<ExecSpace>::run(space, config_,
                                           mamba_step_params<T, Wt, M_>{xz, state.conv.data(), state.ssm.data(), xc,
                                                                        scratch_.x_dbl.data(), &weights_, y,
                                                                        static_cast<int>(B)});
        return y;
      }
    }
    step_op_by_op(space, B, state);
    return y;
  }

  /// \brief The middle of `step` (see `mamba_step_params`) as portable ops, one after another.
  void step_op_by_op(ExecSpace const& space, std::size_t B, state_type& state) const {
    std::size_t const D = config_.d_inner, N = config_.d_state, R = config_.dt_rank;
    std::size_t const xw = R + 2 * N;
    T* xz = scratch_.xz.data();
    T* xc = scratch_.xc.data();
    T* xdbl = scratch_.x_dbl.data();
    T* dt = scratch_.dt.data();
    T* y = scratch_.y.data();
    using M_ = memory_space;
    causal_conv1d_update_params<T, Wt, M_> conv;
    conv.x = strided<const T, M_>(xz, B, 2 * D, D, 1);
    conv.state = state.conv;
    conv.weight = weights_.conv1d_weight;
    conv.bias = weights_.conv1d_bias;
    conv.silu_activation = true;
    conv.out = strided<T, M_>(xc, B, D, D, 1);
    causal_conv1d_update(space, conv);
    linear(space, linear_params<T, Wt, M_>{strided<const T, M_>(xc, B, D, D, 1), weights_.x_proj_weight, {},
                                           strided<T, M_>(xdbl, B, xw, xw, 1)});
    selective_state_update_params<T, M_, Wt> update;
    // dt_proj: inside the state update where its backend takes it, a product of its own otherwise
    scan_shape const sizes{B, D, 1, N, 1};
    if (selective_state_update_backend<ExecSpace>::template fuses_dt_proj<T, Wt>(sizes, R)) {
      update.dt_low = strided<const T, M_>(xdbl, B, xw, R, 1);
      update.dt_weight = weights_.dt_proj_weight;
    } else {
      linear(space, linear_params<T, Wt, M_>{strided<const T, M_>(xdbl, B, xw, R, 1), weights_.dt_proj_weight, {},
                                             strided<T, M_>(dt, B, D, D, 1)});
      update.dt = strided<const T, M_>(dt, B, D, D, 1);
    }
    update.state = state.ssm;
    update.x = strided<const T, M_>(xc, B, D, D, 1);
    update.A = weights_.A;
    update.B = view3<const T, M_>(xdbl + R, Kokkos::LayoutStride(B, xw, 1, xw, N, 1));
    update.C = view3<const T, M_>(xdbl + R + N, Kokkos::LayoutStride(B, xw, 1, xw, N, 1));
    update.D = weights_.D;
    update.z = strided<const T, M_>(xz + D, B, 2 * D, D, 1);
    update.dt_bias = weights_.dt_proj_bias;
    update.dt_softplus = true;
    update.out = strided<T, M_>(y, B, D, D, 1);
    // The promise holds: a state that may be read early (8 or more sequences on the GPU) is
    // written only by this update, the scan and portable ops, none of which lets the kernel after
    // it start before it has finished; the fused kernels that do write states of one or two.
    update.state_settled = true;
    selective_state_update(space, update);
  }

  /// \brief B or C, columns [offset, offset + N) of x_proj's output (B*L, R+2N), as (B, 1, N, L).
  view4<const T, memory_space> group_view(T const* first, std::size_t B, std::size_t L, std::size_t xw) const {
    std::size_t const N = config_.d_state;
    return view4<const T, memory_space>(first, Kokkos::LayoutStride(B, L * xw, 1, L * xw, N, 1, L, xw));
  }

  void check_tokens(char const* fn, std::size_t features, bool out_matches) const {
    detail::require(features == static_cast<std::size_t>(config_.d_model), fn,
                    "hidden must have d_model = " + std::to_string(config_.d_model) + " features, got " +
                        std::to_string(features));
    detail::require(out_matches, fn, "out must have the shape of hidden");
  }

  void check_state(char const* fn, state_type const& s, std::size_t B) const {
    detail::require(s.conv.extent(0) == B && s.conv.extent(1) == static_cast<std::size_t>(config_.d_inner) &&
                        s.conv.extent(2) == static_cast<std::size_t>(config_.d_conv - 1),
                    fn, "state.conv must be (B, D, W-1) = " + detail::shape_string(B, config_.d_inner, config_.d_conv - 1));
    detail::require(s.ssm.extent(0) == B && s.ssm.extent(1) == static_cast<std::size_t>(config_.d_inner) &&
                        s.ssm.extent(2) == static_cast<std::size_t>(config_.d_state),
                    fn, "state.ssm must be (B, D, N) = " + detail::shape_string(B, config_.d_inner, config_.d_state));
  }

  void check_weights() const {
    auto const& c = config_;
    auto const& w = weights_;
    auto const check = [](auto const& v, std::size_t rows, std::size_t cols, char const* name) {
      detail::require(v.extent(0) == rows && v.extent(1) == cols, "ssm::mamba_mixer",
                      std::string(name) + " must be " + detail::shape_string(rows, cols) + ", got " +
                          detail::shape_string(v.extent(0), v.extent(1)));
    };
    auto const check1 = [](auto const& v, std::size_t n, bool wanted, char const* name) {
      detail::require(wanted ? v.extent(0) == n : !given(v), "ssm::mamba_mixer",
                      std::string(name) + (wanted ? " must be (" + std::to_string(n) + ")" : " must be absent"));
    };
    std::size_t const D = c.d_inner, E = c.d_model, N = c.d_state, R = c.dt_rank;
    check(w.in_proj_weight, 2 * D, E, "in_proj.weight");
    check(w.conv1d_weight, D, c.d_conv, "conv1d.weight");
    check(w.x_proj_weight, R + 2 * N, D, "x_proj.weight");
    check(w.dt_proj_weight, D, R, "dt_proj.weight");
    check(w.A, D, N, "A");
    check(w.out_proj_weight, E, D, "out_proj.weight");
    check1(w.dt_proj_bias, D, true, "dt_proj.bias");
    check1(w.D, D, true, "D");
    check1(w.conv1d_bias, D, c.conv_bias, "conv1d.bias");
    check1(w.in_proj_bias, 2 * D, c.bias, "in_proj.bias");
    check1(w.out_proj_bias, E, c.bias, "out_proj.bias");
  }

  /// \brief Grow the scratch buffers to hold M tokens.
  void reserve(std::size_t M) const {
    if (scratch_.tokens >= M) return;
    std::size_t const D = config_.d_inner, xw = config_.dt_rank + 2 * config_.d_state;
    auto make = [](char const* label, std::size_t rows, std::size_t cols) {
      return tensor2<T>(Kokkos::view_alloc(Kokkos::WithoutInitializing, std::string(label)), rows, cols);
    };
    scratch_.xz = make("ssm::mamba_mixer::xz", M, 2 * D);
    scratch_.xc = make("ssm::mamba_mixer::xc", M, D);
    scratch_.x_dbl = make("ssm::mamba_mixer::x_dbl", M, xw);
    scratch_.dt = make("ssm::mamba_mixer::dt", M, D);
    scratch_.y = make("ssm::mamba_mixer::y", M, D);
    if (!given(scratch_.meeting)) scratch_.meeting = Kokkos::View<unsigned*, memory_space>("ssm::mamba_mixer::meeting", 1);
    scratch_.tokens = M;
  }

  /// Buffers between the stages. A copy of a mixer starts with none of its own, so that copies
  /// (a block holds one) never share them.
  struct scratch {
    scratch() = default;
    scratch(scratch const&) {}
    scratch& operator=(scratch const&) { return *this = scratch(); }
    scratch(scratch&&) = default;
    scratch& operator=(scratch&&) = default;
    std::size_t tokens = 0;  ///< rows every buffer holds
    tensor2<T> xz;           ///< (M, 2D) in_proj output: u then z
    tensor2<T> xc;           ///< (M, D) conv + SiLU output
    tensor2<T> x_dbl;        ///< (M, R + 2N) x_proj output: dt_low, B, C
    tensor2<T> dt;           ///< (M, D) dt_proj output
    tensor2<T> y;            ///< (M, D) gated scan output
    Kokkos::View<unsigned*, memory_space> meeting;  ///< (1) zeros: `mamba_step_params::meeting`
  };

  mamba_config config_;
  weights_type weights_;
  mutable scratch scratch_;
};

/// \brief A block's input or output in a decoding step, for one token of B sequences: rows (B, E)
/// of T, or out_proj's S fp32 partial sums (S, B, E) for the next block's norm to add
/// (`mamba_mixer::step`'s second form); exactly one of the two is given.
/// \tparam T activation storage type, const for an input. \tparam MemSpace their memory space.
template <class T, class MemSpace>
struct step_rows {
  using partials_view = Kokkos::View<float***, Kokkos::LayoutRight, MemSpace>;  ///< the type of `partials`
  Kokkos::View<T**, Kokkos::LayoutRight, MemSpace> rows;  ///< (B, E), or
  partials_view partials;                                 ///< (S, B, E): the rows are their sum, rounded to T
};

/// \brief How many partial sums a model should have each block's out_proj leave for the next
/// block's norm (`step_rows::partials`) in a decoding step of `batch` sequences; 0 for rows of T.
///
/// The primary template says 0 (rows of T). A backend where a product's own sum over K is a launch
/// of its own (cuBLASLt's split K on `Kokkos::Cuda`) specialises it.
/// \tparam ExecSpace a Kokkos execution space.
template <class ExecSpace>
struct step_partials {
  /// \brief The number of partial sums, or 0. \tparam T,Wt activation and weight storage types.
  /// \return 0: rows of T.
  template <class T, class Wt>
  static int slices(mamba_config const&, std::size_t) {
    return 0;
  }
};

/// \brief A Mamba residual block: residual += hidden; out = mixer(RMSNorm(residual)).
///
/// Like the mixer, it keeps scratch buffers: one object must not run two calls at once.
/// \tparam ExecSpace Kokkos execution space; everything lives in its memory space.
/// \tparam T activation storage type (`float`, `ssm::f16` or `ssm::bf16`).
/// \tparam Wt weight storage type (same choices; defaults to `T`).
template <class ExecSpace, class T = float, class Wt = T>
class mamba_block {
 public:
  using mixer_type = mamba_mixer<ExecSpace, T, Wt>;          ///< the mixer
  using memory_space = typename mixer_type::memory_space;    ///< where everything lives
  using state_type = typename mixer_type::state_type;        ///< the mixer's recurrent state
  /// \brief Contiguous tensors of rank 3, (B, L, E).
  /// \tparam V element type.
  template <class V>
  using tensor3 = typename mixer_type::template tensor3<V>;
  /// \brief Contiguous tensors of rank 2, (B, E).
  /// \tparam V element type.
  template <class V>
  using tensor2 = typename mixer_type::template tensor2<V>;

  /// \brief A block from a mixer and the weight (E) of its RMSNorm.
  /// \param mixer the mixer (a copy shares its weights, not its scratch buffers).
  /// \param norm_weight (E) the RMSNorm scale.
  /// \throws ssm::shape_error if `norm_weight` is not (E) with E = `mixer.config().d_model`.
  mamba_block(mixer_type mixer, Kokkos::View<Wt*, Kokkos::LayoutRight, memory_space> norm_weight)
      : mixer_(std::move(mixer)), norm_weight_(std::move(norm_weight)) {
    detail::require(norm_weight_.extent(0) == static_cast<std::size_t>(mixer_.config().d_model), "ssm::mamba_block",
                    "norm.weight must be (E) with E = " + std::to_string(mixer_.config().d_model));
  }

  /// \brief The mixer.
  /// \return the block's mixer.
  mixer_type const& mixer() const { return mixer_; }
  /// \brief The RMSNorm weight.
  /// \return (E) the RMSNorm scale.
  auto const& norm_weight() const { return norm_weight_; }

  /// \brief One block over B sequences of L tokens (asynchronous on `space`).
  /// \param space the execution space instance the work runs on; fence it before reading `out`,
  ///              `residual` or `*state` on the host.
  /// \param hidden (B, L, E) the previous block's output (the embeddings for the first block)
  /// \param residual (B, L, E) fp32 residual stream, zeros before the first block; updated in place
  /// \param out (B, L, E) this block's mixer output; may be the same memory as hidden
  /// \param state optional, as in `mamba_mixer::forward`: `conv` (B, D, W-1) and `ssm` (B, D, N),
  ///              updated in place; null to start from a zero state.
  /// \throws ssm::shape_error if a shape disagrees with the others or with the configuration.
  void forward(ExecSpace const& space, tensor3<const T> const& hidden, tensor3<float> const& residual,
               tensor3<T> const& out, state_type* state = nullptr) const {
    std::size_t const B = hidden.extent(0), L = hidden.extent(1), E = hidden.extent(2);
    detail::require(residual.extent(0) == B && residual.extent(1) == L && residual.extent(2) == E,
                    "ssm::mamba_block::forward", "residual must have the shape of hidden (B, L, E)");
    tensor2<T> normed = norm(space, hidden.data(), {}, residual.data(), B * L, E);
    mixer_.forward(space, tensor3<const T>(static_cast<T const*>(normed.data()), B, L, E), out, state);
  }

  /// \brief One token of each of B sequences (asynchronous on `space`).
  /// \param space the execution space instance the work runs on; fence it before reading `out`,
  ///              `residual` or `state` on the host.
  /// \param hidden (B, E) the previous block's output for this token.
  /// \param residual (B, E) fp32 residual stream; updated in place.
  /// \param out (B, E) this block's mixer output; may be the same memory as `hidden`.
  /// \param state `conv` (B, D, W-1) and `ssm` (B, D, N), advanced by one token in place.
  /// \throws ssm::shape_error if a shape disagrees with the others or with the configuration.
  void step(ExecSpace const& space, tensor2<const T> const& hidden, tensor2<float> const& residual,
            tensor2<T> const& out, state_type& state) const {
    std::size_t const B = hidden.extent(0), E = hidden.extent(1);
    detail::require(residual.extent(0) == B && residual.extent(1) == E, "ssm::mamba_block::step",
                    "residual must have the shape of hidden (B, E)");
    if constexpr (mamba_block_step_backend<ExecSpace>::fused) {
      mamba_config const& c = mixer_.config();
      detail::require(E == static_cast<std::size_t>(c.d_model), "ssm::mamba_block::step",
                      "hidden must have d_model = " + std::to_string(c.d_model) + " features");
      detail::require(out.extent(0) == B && out.extent(1) == E, "ssm::mamba_block::step",
                      "out must have the shape of hidden (B, E)");
      if (B == 0) return;
      auto const p = step_tensors(hidden, residual, out, state);
      if (mamba_block_step_backend<ExecSpace>::fuses(c, p)) {
        mamba_block_step_backend<ExecSpace>::run(space, c, p);
        return;
      }
    }
    tensor2<T> normed = norm(space, hidden.data(), {}, residual.data(), B, E);
    mixer_.step(space, tensor2<const T>(static_cast<T const*>(normed.data()), B, E), out, state);
  }

  /// \brief One token of each of B sequences (asynchronous on `space`), the input and the output
  /// each either rows of T or out_proj's partial sums (`step_rows`): a model whose backend asks for
  /// them (`step_partials`) chains its blocks through partial sums, and the sum over out_proj's
  /// slices is added by the next norm instead of a launch of its own.
  /// \param space the execution space instance the work runs on.
  /// \param in the previous block's output: rows (B, E) or partial sums (S, B, E).
  /// \param residual (B, E) fp32 residual stream; updated in place.
  /// \param out this block's output: rows (B, E), which may be the memory of `in.rows`, or partial
  ///        sums (S', B, E), S' dividing D, which may be the memory of `in.partials`.
  /// \param state `conv` (B, D, W-1) and `ssm` (B, D, N), advanced by one token in place.
  /// \throws ssm::shape_error if a shape disagrees, if not exactly one of rows and partial sums is
  ///         given for `in` or for `out`, or for partial sums out of a mixer with biases.
  void step(ExecSpace const& space, step_rows<const T, memory_space> const& in, tensor2<float> const& residual,
            step_rows<T, memory_space> const& out, state_type& state) const {
    char const* fn = "ssm::mamba_block::step";
    detail::require(given(in.rows) != given(in.partials), fn, "the input must be rows or partial sums, exactly one");
    detail::require(given(out.rows) != given(out.partials), fn, "the output must be rows or partial sums, exactly one");
    if (given(in.rows) && given(out.rows)) {
      step(space, in.rows, residual, out.rows, state);
      return;
    }
    std::size_t const B = given(in.rows) ? in.rows.extent(0) : in.partials.extent(1);
    std::size_t const E = given(in.rows) ? in.rows.extent(1) : in.partials.extent(2);
    detail::require(residual.extent(0) == B && residual.extent(1) == E, fn, "residual must be (B, E) = " +
                                                                                  detail::shape_string(B, E));
    if (given(out.rows))
      detail::require(out.rows.extent(0) == B && out.rows.extent(1) == E, fn, "out must be (B, E) = " +
                                                                                  detail::shape_string(B, E));
    if (B == 0) return;
    tensor2<T> const normed = given(in.rows) ? norm(space, in.rows.data(), {}, residual.data(), B, E)
                                             : norm(space, nullptr, in.partials, residual.data(), B, E);
    tensor2<const T> const x(static_cast<T const*>(normed.data()), B, E);
    if (given(out.rows)) mixer_.step(space, x, out.rows, state);
    else mixer_.step(space, x, out.partials, state);
  }

  /// \brief The tensors of a decoding step of this block (the arguments of `step`, the norm's
  /// weight, and the mixer's `step_tensors`): for a backend that fuses several blocks' steps
  /// (`mamba_stack_step_backend`). The same rules as `step`: one call at a time per block.
  /// \param hidden,residual,out,state as for `step`; their shapes are not checked here.
  /// \return the pointers, batch B = hidden's rows.
  /// \throws ssm::shape_error if the state does not hold B sequences.
  mamba_block_step_params<T, Wt, memory_space> step_tensors(tensor2<const T> const& hidden, tensor2<float> const& residual,
                                                            tensor2<T> const& out, state_type& state) const {
    return {hidden.data(), residual.data(), norm_weight_.data(), mixer_.step_tensors(hidden.extent(0), state), out.data()};
  }

 private:
  /// \brief residual += hidden; return RMSNorm(residual), M rows of E, in the block's scratch.
  /// hidden: M rows of E, or (with `hidden` null) the sum of `partials` (S, M, E) rounded to T.
  tensor2<T> norm(ExecSpace const& space, T const* hidden,
                  Kokkos::View<float***, Kokkos::LayoutRight, memory_space> const& partials, float* residual,
                  std::size_t M, std::size_t E) const {
    detail::require(E == static_cast<std::size_t>(mixer_.config().d_model), "ssm::mamba_block",
                    "hidden must have d_model = " + std::to_string(mixer_.config().d_model) + " features");
    if (normed_.extent(0) < M)
      normed_ = tensor2<T>(Kokkos::view_alloc(Kokkos::WithoutInitializing, std::string("ssm::mamba_block::normed")), M, E);
    using M_ = memory_space;
    rms_norm_params<T, Wt, M_> p;
    if (hidden) p.x = strided<const T, M_>(hidden, M, E, E, 1);
    else p.x_partials = partials;
    p.residual = strided<const float, M_>(residual, M, E, E, 1);
    p.weight = norm_weight_;
    p.eps = mixer_.config().norm_eps;
    p.out = strided<T, M_>(normed_.data(), M, E, E, 1);
    p.residual_out = strided<float, M_>(residual, M, E, E, 1);
    rms_norm(space, p);
    return normed_;
  }

  mixer_type mixer_;
  Kokkos::View<Wt*, Kokkos::LayoutRight, memory_space> norm_weight_;
  mutable tensor2<T> normed_;
};

}  // namespace ssm

#include <ssm/blocks/host/mamba_step.hpp>

#if defined(KOKKOS_ENABLE_CUDA)
#include <ssm/blocks/cuda/mamba_step.cuh>
#endif
