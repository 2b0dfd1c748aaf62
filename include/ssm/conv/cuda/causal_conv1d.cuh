#pragma once
/// \file
/// \brief CUDA kernels of the causal conv1d and of its streaming update: `causal_conv1d_backend`
/// for `Kokkos::Cuda`. Included by `ssm/conv/causal_conv1d.hpp` when Kokkos has CUDA.
///
/// **Layout.** Mamba's activations are token-major: seen as (B, D, L), the stride over d is 1 and
/// the stride over l is D (or 2D for the u half of `in_proj`'s output). So a thread owns one channel
/// and walks a run of `conv_tokens_per_thread` tokens: at every token the 32 threads of a warp read
/// and write 32 neighbouring channels, one coalesced access, and the last W-1 inputs stay in
/// registers. Any other strides are correct too, only not coalesced. Where the layout allows
/// (`conv_takes_pieces`: stride 1 over d, D a multiple of 8 in 16-bit types, aligned rows), a
/// thread owns a 16-byte piece of channels instead (`causal_conv1d_pieces_kernel`): one load or
/// store instruction per token for 8 channels, each value widened once. At the 2.8B shape
/// (B = 1, D = 5120, L = 2048, W = 4, bf16, in_proj's layout) on an H200 that took the forward
/// conv from 0.0437 ms (one channel a thread, with the portable `fast_silu`) to 0.0223 ms, and
/// prefill of 2048 tokens from 30.55 to 29.07 ms; then reading each thread's (8, W) filters as
/// 16-byte pieces too, not value by value (Nsight Compute had found 63% of the kernel's sectors
/// excess, from those scattered 2-byte loads), to 0.0190 ms (prefill 29.29 → 29.11 ms, old and
/// new binaries alternating in one run). Runs of 8 or 32 tokens a thread, or registers capped
/// for 3 or 4 blocks a multiprocessor, were within 0.0005 ms of 16 tokens. Nsight Compute still
/// finds it bound by latency, not bandwidth: 253 registers a thread leave 8 warps a
/// multiprocessor, and 640 blocks make 2.4 waves.
///
/// **Work.** A block covers `conv_channels_per_block` channels of one run of tokens of one batch
/// entry. A thread first loads its W-1 inputs before the run (from x, or from `initial_state` for
/// the first run) and the run itself, all independent loads in flight at once, then convolves from
/// registers. The width is a template parameter, so the window is fully unrolled.
///
/// **States.** `initial_state` and `final_state` may alias. Only the thread of the first run of a
/// (b, d) reads `initial_state` (runs are at least W-1 tokens long, so later runs find their history
/// in x), and the same thread writes `final_state` after its loads, copying the last W-1 entries of
/// \f$\tilde x = [s, x]\f$ in increasing order, each read before any write could reach it.

#include <Kokkos_Core.hpp>

#if !defined(KOKKOS_ENABLE_CUDA)
#error "ssm/conv/cuda/causal_conv1d.cuh needs Kokkos with its CUDA backend"
#endif

#include <cstdint>
#include <type_traits>

#include <ssm/conv/causal_conv1d.hpp>
#include <ssm/core/cuda.hpp>
#include <ssm/core/cuda/fast_math.cuh>
#include <ssm/core/cuda/pieces.cuh>
#include <ssm/core/dtype.hpp>

namespace ssm {

namespace cuda::detail {

/// \brief Threads (channels) per block of the conv kernels.
inline constexpr int conv_channels_per_block = 128;
/// \brief Tokens each thread of the forward kernel convolves (one run).
inline constexpr int conv_tokens_per_thread = 16;
static_assert(conv_tokens_per_thread >= max_conv_width - 1,
              "a run must cover the history of the next, so that only the first run reads initial_state");

/// \brief The tensors of a causal conv1d as the forward kernel reads them: pointers and strides in
/// elements. Flags say which optional tensors are present.
template <class T, class Wt>
struct conv_args {
  T const* x;                                     ///< (B, D, L) input
  std::int64_t x_b, x_d, x_l;                     ///< its strides
  Wt const* weight;                               ///< (D, W)
  std::int64_t weight_d, weight_k;                ///< its strides
  Wt const* bias;                                 ///< (D); read only if has_bias
  std::int64_t bias_d;                            ///< its stride
  T const* initial;                               ///< (B, D, W-1); read only if has_initial
  std::int64_t initial_b, initial_d, initial_k;   ///< its strides
  T* out;                                         ///< (B, D, L)
  std::int64_t out_b, out_d, out_l;               ///< its strides
  T* final_state;                                 ///< (B, D, W-1); written only if has_final; may alias initial
  std::int64_t final_b, final_d, final_k;         ///< its strides
  int batch, channels, length;                    ///< B, D, L
  bool has_bias, has_initial, has_final, silu;    ///< optional tensors present; SiLU applied
  bool weight_pieces;                             ///< weight (D, W) contiguous and 16-byte aligned
};

/// \brief Forward kernel: thread (channel d, run of tokens, batch b); see the file comment.
/// \tparam W the conv width.
template <int W, class T, class Wt>
__global__ void __launch_bounds__(conv_channels_per_block) causal_conv1d_kernel(conv_args<T, Wt> const a) {
  constexpr int history = W - 1;
  constexpr int run = conv_tokens_per_thread;
  int const d = static_cast<int>(blockIdx.x) * conv_channels_per_block + static_cast<int>(threadIdx.x);
  if (d >= a.channels) return;
  float w[W];
#pragma unroll
  for (int k = 0; k < W; ++k) w[k] = to_float(a.weight[d * a.weight_d + k * a.weight_k]);
  float const beta = a.has_bias ? to_float(a.bias[d * a.bias_d]) : 0.0f;
  std::int64_t const runs = a.length == 0 ? 1 : (a.length + run - 1) / run;  // L = 0 still copies the state
  for (std::int64_t item = blockIdx.y; item < a.batch * runs; item += gridDim.y) {
    std::int64_t const b = item / runs;
    int const l0 = static_cast<int>(item % runs) * run;
    T const* x = a.x + b * a.x_b + d * a.x_d;
    T const* initial = a.has_initial ? a.initial + b * a.initial_b + d * a.initial_d : nullptr;
    // v[i] = x̃ at token l0 - (W-1) + i: the history, then the run (zeros past the end)
    float v[history + run];
#pragma unroll
    for (int k = 0; k < history; ++k) {
      int const l = l0 - history + k;
      v[k] = l >= 0 ? to_float(x[l * a.x_l]) : a.has_initial ? to_float(initial[(l + history) * a.initial_k]) : 0.0f;
    }
#pragma unroll
    for (int i = 0; i < run; ++i) v[history + i] = l0 + i < a.length ? to_float(x[(l0 + i) * a.x_l]) : 0.0f;
    T* out = a.out + b * a.out_b + d * a.out_d;
#pragma unroll
    for (int i = 0; i < run; ++i) {
      if (l0 + i < a.length) {
        float acc = beta;
#pragma unroll
        for (int k = 0; k < W; ++k) acc += w[k] * v[i + k];
        out[(l0 + i) * a.out_l] = from_float<T>(a.silu ? silu_fast(acc) : acc);
      }
    }
    if (l0 == 0 && a.has_final) {
      // final(k) = x̃[L + k]; with aliased states, initial(L + k) is read before final(L + k) is written
      T* final_state = a.final_state + b * a.final_b + d * a.final_d;
#pragma unroll
      for (int k = 0; k < history; ++k) {
        int const source = a.length + k;
        T const value = source >= history ? x[(source - history) * a.x_l]
                        : a.has_initial   ? initial[source * a.initial_k]
                                          : from_float<T>(0.0f);
        final_state[k * a.final_k] = value;
      }
    }
  }
}

/// \brief Forward kernel for token-major layouts, a 16-byte piece of channels per thread (8 in the
/// 16-bit types, 4 floats): thread (piece of channels, run of tokens, batch b). Every load and store
/// of x and out is one 16-byte access (a warp's, 512 contiguous bytes of a token), and each value
/// is widened once, into a sliding window of the last W tokens, instead of once per output.
/// Requires stride 1 over d for x and out, D a multiple of the piece, and 16-byte aligned pieces
/// (`conv_takes_pieces`); the states keep any strides (read and written value by value).
/// \tparam W the conv width.
template <int W, class T, class Wt>
__global__ void __launch_bounds__(conv_channels_per_block) causal_conv1d_pieces_kernel(conv_args<T, Wt> const a) {
  constexpr int V = piece_values<T>;
  constexpr int history = W - 1;
  constexpr int run = conv_tokens_per_thread;
  int const d0 = (static_cast<int>(blockIdx.x) * conv_channels_per_block + static_cast<int>(threadIdx.x)) * V;
  if (d0 >= a.channels) return;
  // The piece's weights: (V, W) values, as 16-byte pieces where (D, W) is contiguous and aligned
  float w[W][V], beta[V];
  constexpr int weight_pieces = V * W * static_cast<int>(sizeof(Wt)) / 16;
  if constexpr (V * W * sizeof(Wt) % 16 == 0) {
    if (a.weight_pieces) {
      float flat[weight_pieces][piece_values<Wt>];
      auto const* source = reinterpret_cast<uint4 const*>(a.weight + static_cast<std::int64_t>(d0) * W);
#pragma unroll
      for (int i = 0; i < weight_pieces; ++i) widen_piece<Wt>(__ldg(source + i), flat[i]);
#pragma unroll
      for (int j = 0; j < V; ++j)
#pragma unroll
        for (int k = 0; k < W; ++k) w[k][j] = flat[(j * W + k) / piece_values<Wt>][(j * W + k) % piece_values<Wt>];
    }
  }
  if (V * W * sizeof(Wt) % 16 != 0 || !a.weight_pieces) {
#pragma unroll
    for (int j = 0; j < V; ++j)
#pragma unroll
      for (int k = 0; k < W; ++k) w[k][j] = to_float(a.weight[(d0 + j) * a.weight_d + k * a.weight_k]);
  }
#pragma unroll
  for (int j = 0; j < V; ++j) beta[j] = a.has_bias ? to_float(a.bias[(d0 + j) * a.bias_d]) : 0.0f;
  std::int64_t const runs = a.length == 0 ? 1 : (a.length + run - 1) / run;
  for (std::int64_t item = blockIdx.y; item < a.batch * runs; item += gridDim.y) {
    std::int64_t const b = item / runs;
    int const l0 = static_cast<int>(item % runs) * run;
    T const* x = a.x + b * a.x_b + d0;
    T const* initial = a.has_initial ? a.initial + b * a.initial_b + d0 * a.initial_d : nullptr;
    // every load of the run in flight at once: the history's pieces (before token 0 they come from
    // the state, below), then the run's (zero past the end)
    uint4 raw[history + run];
#pragma unroll
    for (int k = 0; k < history + run; ++k) {
      int const l = l0 - history + k;
      raw[k] = l >= 0 && l < a.length ? __ldg(reinterpret_cast<uint4 const*>(x + l * a.x_l)) : make_uint4(0u, 0u, 0u, 0u);
    }
    // window[k] = x̃ at token l0 + i - (W-1) + k for the output i being computed
    float window[W][V];
#pragma unroll
    for (int k = 0; k < history; ++k) {
      int const l = l0 - history + k;
      if (l >= 0 || !a.has_initial) {
        widen_piece<T>(raw[k], window[k]);
      } else {
#pragma unroll
        for (int j = 0; j < V; ++j) window[k][j] = to_float(initial[j * a.initial_d + (l + history) * a.initial_k]);
      }
    }
    T* out = a.out + b * a.out_b + d0;
#pragma unroll
    for (int i = 0; i < run; ++i) {
      widen_piece<T>(raw[history + i], window[history]);
      if (l0 + i < a.length) {
        float y[V];
#pragma unroll
        for (int j = 0; j < V; ++j) {
          float acc = beta[j];
#pragma unroll
          for (int k = 0; k < W; ++k) acc = fmaf(w[k][j], window[k][j], acc);
          y[j] = a.silu ? silu_fast(acc) : acc;
        }
        *reinterpret_cast<uint4*>(out + (l0 + i) * a.out_l) = narrow_piece<T>(y);
      }
#pragma unroll
      for (int k = 0; k < history; ++k)
#pragma unroll
        for (int j = 0; j < V; ++j) window[k][j] = window[k + 1][j];
    }
    if (l0 == 0 && a.has_final) {
      // as in causal_conv1d_kernel, value by value: final(k) = x̃[L + k], each read before any write
      T* final_state = a.final_state + b * a.final_b + d0 * a.final_d;
#pragma unroll
      for (int j = 0; j < V; ++j)
#pragma unroll
        for (int k = 0; k < history; ++k) {
          int const source = a.length + k;
          T const value = source >= history ? x[(source - history) * a.x_l + j]
                          : a.has_initial   ? initial[j * a.initial_d + source * a.initial_k]
                                            : from_float<T>(0.0f);
          final_state[j * a.final_d + k * a.final_k] = value;
        }
    }
  }
}

/// \brief The tensors of one streaming step as the update kernel reads them: pointers and strides
/// in elements.
template <class T, class Wt>
struct conv_update_args {
  T const* x;                              ///< (B, D) input of this token
  std::int64_t x_b, x_d;                   ///< its strides
  T* state;                                ///< (B, D, W-1), updated in place
  std::int64_t state_b, state_d, state_k;  ///< its strides
  Wt const* weight;                        ///< (D, W)
  std::int64_t weight_d, weight_k;         ///< its strides
  Wt const* bias;                          ///< (D); read only if has_bias
  std::int64_t bias_d;                     ///< its stride
  T* out;                                  ///< (B, D)
  std::int64_t out_b, out_d;               ///< its strides
  int batch, channels;                     ///< B, D
  bool has_bias, silu;                     ///< bias present; SiLU applied
};

/// \brief Update kernel: one thread per (channel d, batch b), threads over channels; the thread
/// reads its W-1 state entries, convolves, and writes the state back shifted by one token.
/// \tparam W the conv width.
template <int W, class T, class Wt>
__global__ void __launch_bounds__(conv_channels_per_block) causal_conv1d_update_kernel(conv_update_args<T, Wt> const a) {
  constexpr int history = W - 1;
  allow_next_kernel();
  int const d = static_cast<int>(blockIdx.x) * conv_channels_per_block + static_cast<int>(threadIdx.x);
  if (d >= a.channels) return;
  float w[W];
#pragma unroll
  for (int k = 0; k < W; ++k) w[k] = to_float(a.weight[d * a.weight_d + k * a.weight_k]);
  float const beta = a.has_bias ? to_float(a.bias[d * a.bias_d]) : 0.0f;
  wait_for_previous_kernel();  // launched as a programmatic dependent: the weights are read first
  for (std::int64_t b = blockIdx.y; b < a.batch; b += gridDim.y) {
    T* state = a.state + b * a.state_b + d * a.state_d;
    T s[W];  // s[0 .. W-2] the state, s[W-1] this token's input
#pragma unroll
    for (int k = 0; k < history; ++k) s[k] = state[k * a.state_k];
    s[history] = a.x[b * a.x_b + d * a.x_d];
    float acc = beta;
#pragma unroll
    for (int k = 0; k < W; ++k) acc += w[k] * to_float(s[k]);
    a.out[b * a.out_b + d * a.out_d] = from_float<T>(a.silu ? silu_fast(acc) : acc);
#pragma unroll
    for (int k = 0; k < history; ++k) state[k * a.state_k] = s[k + 1];
  }
}

/// \brief Whether the forward convolution may run as 16-byte pieces of channels
/// (`causal_conv1d_pieces_kernel`): x and out token-major with stride 1 over d, D a multiple of
/// the piece, and every piece aligned (the pointers, and the strides over b and l, in whole pieces).
/// \param a the kernel's arguments. \return the condition.
template <class T, class Wt>
bool conv_takes_pieces(conv_args<T, Wt> const& a) {
  constexpr std::int64_t V = piece_values<T>;
  auto whole = [](std::int64_t stride) { return stride % V == 0; };
  return a.x_d == 1 && a.out_d == 1 && a.channels % V == 0 && piece_aligned(a.x) && piece_aligned(a.out) &&
         whole(a.x_b) && whole(a.x_l) && whole(a.out_b) && whole(a.out_l);
}

/// \brief Call `f(std::integral_constant<int, W>{})` for a runtime width W in [1, max_conv_width].
/// \param width the conv width, already checked. \param f a generic callable.
template <class F>
void with_conv_width(int width, F&& f) {
  static_assert(max_conv_width == 8, "with_conv_width has one case per width");
  with_constant<1, 2, 3, 4, 5, 6, 7, 8>(width, f);
}

/// \brief Blocks along the grid's y dimension: `items`, at most CUDA's limit (kernels loop over the rest).
/// \param items work items along y. \return the grid's y extent.
inline unsigned grid_y(std::int64_t items) {
  constexpr std::int64_t limit = 65535;
  return static_cast<unsigned>(items < 1 ? 1 : items < limit ? items : limit);
}

}  // namespace cuda::detail

/// \brief The CUDA backend of the causal conv1d: the kernels of `ssm/conv/cuda/causal_conv1d.cuh`,
/// launched on the stream of the `Kokkos::Cuda` instance.
///
/// Threads over channels, each thread a channel walking a run of tokens with its last W-1 inputs in
/// registers: coalesced for the token-major layout (stride 1 over d), correct for any strides.
template <>
struct causal_conv1d_backend<Kokkos::Cuda> {
  /// \brief Convolve a whole sequence on `space` (asynchronous: returns once the kernel is enqueued).
  /// \tparam T activation storage type (`float`, `ssm::f16` or `ssm::bf16`).
  /// \tparam Wt weight storage type (same choices).
  /// \tparam MemSpace a memory space accessible from `Kokkos::Cuda`.
  /// \param space the instance whose stream runs the kernel.
  /// \param p the checked tensors and flags: `x`, `out` (B, D, L); `weight` (D, W); `bias` (D);
  ///          `initial_state`, `final_state` (B, D, W-1), which may alias.
  /// \param s their sizes, as returned by the shape check (B, D > 0).
  /// \throws ssm::error if CUDA refuses the launch.
  template <class T, class Wt, class MemSpace>
  static void run(Kokkos::Cuda const& space, causal_conv1d_params<T, Wt, MemSpace> const& p, conv_shape const& s) {
    cuda::detail::conv_args<T, Wt> a{};
    a.x = p.x.data();
    a.x_b = static_cast<std::int64_t>(p.x.stride(0));
    a.x_d = static_cast<std::int64_t>(p.x.stride(1));
    a.x_l = static_cast<std::int64_t>(p.x.stride(2));
    a.weight = p.weight.data();
    a.weight_d = static_cast<std::int64_t>(p.weight.stride(0));
    a.weight_k = static_cast<std::int64_t>(p.weight.stride(1));
    a.weight_pieces = a.weight_k == 1 && a.weight_d == static_cast<std::int64_t>(s.width) && cuda::piece_aligned(a.weight);
    a.has_bias = given(p.bias);
    if (a.has_bias) {
      a.bias = p.bias.data();
      a.bias_d = static_cast<std::int64_t>(p.bias.stride(0));
    }
    a.has_initial = given(p.initial_state);
    if (a.has_initial) {
      a.initial = p.initial_state.data();
      a.initial_b = static_cast<std::int64_t>(p.initial_state.stride(0));
      a.initial_d = static_cast<std::int64_t>(p.initial_state.stride(1));
      a.initial_k = static_cast<std::int64_t>(p.initial_state.stride(2));
    }
    a.out = p.out.data();
    a.out_b = static_cast<std::int64_t>(p.out.stride(0));
    a.out_d = static_cast<std::int64_t>(p.out.stride(1));
    a.out_l = static_cast<std::int64_t>(p.out.stride(2));
    a.has_final = given(p.final_state);
    if (a.has_final) {
      a.final_state = p.final_state.data();
      a.final_b = static_cast<std::int64_t>(p.final_state.stride(0));
      a.final_d = static_cast<std::int64_t>(p.final_state.stride(1));
      a.final_k = static_cast<std::int64_t>(p.final_state.stride(2));
    }
    a.batch = static_cast<int>(s.batch);
    a.channels = static_cast<int>(s.channels);
    a.length = static_cast<int>(s.length);
    a.silu = p.silu_activation;

    constexpr int run = cuda::detail::conv_tokens_per_thread;
    std::int64_t const runs = s.length == 0 ? 1 : (static_cast<std::int64_t>(s.length) + run - 1) / run;
    bool const pieces = cuda::detail::conv_takes_pieces(a);
    std::size_t const threads = pieces ? s.channels / cuda::piece_values<T> : s.channels;
    dim3 const grid(cuda::blocks_for(threads, cuda::detail::conv_channels_per_block),
                    cuda::detail::grid_y(static_cast<std::int64_t>(s.batch) * runs));
    dim3 const block(cuda::detail::conv_channels_per_block);
    cuda::detail::with_conv_width(static_cast<int>(s.width), [&](auto width) {
      constexpr int W = decltype(width)::value;
      if (pieces)
        cuda::detail::causal_conv1d_pieces_kernel<W, T, Wt><<<grid, block, 0, cuda::stream(space)>>>(a);
      else
        cuda::detail::causal_conv1d_kernel<W, T, Wt><<<grid, block, 0, cuda::stream(space)>>>(a);
    });
    cuda::check_launch("ssm::causal_conv1d::cuda");
  }

  /// \brief One streaming step on `space` (asynchronous: returns once the kernel is enqueued).
  /// \tparam T activation storage type (`float`, `ssm::f16` or `ssm::bf16`).
  /// \tparam Wt weight storage type (same choices).
  /// \tparam MemSpace a memory space accessible from `Kokkos::Cuda`.
  /// \param space the instance whose stream runs the kernel.
  /// \param p the checked tensors and flags: `x`, `out` (B, D); `state` (B, D, W-1), updated in
  ///          place; `weight` (D, W); `bias` (D).
  /// \param s their sizes, as returned by the shape check (B, D > 0, L = 1).
  /// \throws ssm::error if CUDA refuses the launch.
  template <class T, class Wt, class MemSpace>
  static void run(Kokkos::Cuda const& space, causal_conv1d_update_params<T, Wt, MemSpace> const& p,
                  conv_shape const& s) {
    cuda::detail::conv_update_args<T, Wt> a{};
    a.x = p.x.data();
    a.x_b = static_cast<std::int64_t>(p.x.stride(0));
    a.x_d = static_cast<std::int64_t>(p.x.stride(1));
    a.state = p.state.data();
    a.state_b = static_cast<std::int64_t>(p.state.stride(0));
    a.state_d = static_cast<std::int64_t>(p.state.stride(1));
    a.state_k = static_cast<std::int64_t>(p.state.stride(2));
    a.weight = p.weight.data();
    a.weight_d = static_cast<std::int64_t>(p.weight.stride(0));
    a.weight_k = static_cast<std::int64_t>(p.weight.stride(1));
    a.has_bias = given(p.bias);
    if (a.has_bias) {
      a.bias = p.bias.data();
      a.bias_d = static_cast<std::int64_t>(p.bias.stride(0));
    }
    a.out = p.out.data();
    a.out_b = static_cast<std::int64_t>(p.out.stride(0));
    a.out_d = static_cast<std::int64_t>(p.out.stride(1));
    a.batch = static_cast<int>(s.batch);
    a.channels = static_cast<int>(s.channels);
    a.silu = p.silu_activation;

    dim3 const grid(cuda::blocks_for(s.channels, cuda::detail::conv_channels_per_block),
                    cuda::detail::grid_y(static_cast<std::int64_t>(s.batch)));
    dim3 const block(cuda::detail::conv_channels_per_block);
    cuda::detail::with_conv_width(static_cast<int>(s.width), [&](auto width) {
      cuda::launch(cuda::detail::causal_conv1d_update_kernel<decltype(width)::value, T, Wt>, grid, block, 0,
                   cuda::stream(space), "ssm::causal_conv1d_update::cuda", a);
    });
  }
};

}  // namespace ssm
