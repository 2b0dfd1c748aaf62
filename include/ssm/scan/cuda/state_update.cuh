#pragma once
/// \file
/// \brief The selective state update on `Kokkos::Cuda`: the lanes of a warp over the states of
/// 32 / N channels at a time, so that every load of the state, A, B and C is one coalesced access.
///
/// The portable path gives each thread a channel and its N states: at the 2.8B shape and 64
/// sequences (21 MB of fp32 state per layer, read and written) its strided loads reached 0.34 TB/s
/// on an H200, 68 µs per layer and half of a decoding step. Here a warp owns 32 channels: each
/// lane takes one channel's dt, softplus and x, then the warp passes over the channels 32 / N at
/// a time, lane n of a group of N owning state n, and sums C·h by shuffles; all the passes' loads
/// are issued first, B and C (shared by a group's channels, so mostly L1 hits) as each pass
/// needs them, at most 64 registers a thread. The arithmetic is the portable path's; only the
/// order of the N-term sum differs. At 64 sequences on the H200 this took the 2.8B model's step
/// from 7.75 to 6.28 ms. Tried and slower: a group of N lanes per channel, each lane with its own
/// softplus and 64-bit index arithmetic (9.1 ms); passes that each waited for their own loads
/// (6.78 ms); B and C in registers too, 123 registers and 25% occupancy (6.72 ms).
///
/// Taken when N divides 32 and the state, A, B and C are contiguous along n (the mixer's
/// layout); otherwise the portable path runs.

#include <cuda_runtime.h>

#include <type_traits>

#include <ssm/core/cuda.hpp>
#include <ssm/core/dtype.hpp>
#include <ssm/core/math.hpp>

namespace ssm {

namespace cuda::detail {

/// \brief The tensors of a state update as the kernel reads them (see
/// `selective_state_update_params`); `skip` (the D of the equations), `z` and `dt_bias` may be
/// null.
template <class T>
struct state_update_args {
  tensor_ref<float, 3> state;
  tensor_ref<T const, 2> x, dt, z;
  tensor_ref<float const, 2> A;
  tensor_ref<T const, 3> B, C;
  tensor_ref<float const, 1> skip, dt_bias;
  tensor_ref<T, 2> out;
  int batch, channels, states, channels_per_group;  ///< B, D, N, D / G
  bool softplus;                                   ///< softplus of dt + bias
};

/// \brief Threads per block of the state update.
inline constexpr int state_update_threads = 256;

/// \brief One step of 32 channels of one sequence per warp. Each lane first takes one channel's
/// dt (softplus included) and x; then, in N passes of 32 / N channels, a group of N lanes per
/// channel updates its states, lane n owning state n, and sums C·h by shuffles; the lane that
/// owns the channel collects the sum. Every pass's state and A loads are issued before any is
/// used (the passes unrolled: N is a template parameter), so that they are in flight together.
/// Grid: (ceil(D / 256), B) blocks of 256 threads.
/// \tparam N states per channel, a power of two up to 32.
template <int N, class T>
__global__ void __launch_bounds__(state_update_threads, 4) state_update_kernel(state_update_args<T> const a) {
  allow_next_kernel();
  constexpr unsigned full = 0xffffffffu;
  constexpr int per_pass = 32 / N;  // channels per pass; N passes cover the warp's 32
  int const lane = static_cast<int>(threadIdx.x) & 31;
  int const d0 = (static_cast<int>(blockIdx.x) * (state_update_threads / 32) + static_cast<int>(threadIdx.x) / 32) * 32;
  int const b = static_cast<int>(blockIdx.y);
  int const D = a.channels;
  if (d0 >= D) return;  // the whole warp
  int const mine = d0 + lane;
  bool const has = mine < D;
  int const n = lane % N, slot = lane / N;
  auto channel = [&](int pass) { return d0 + pass * per_pass + slot; };
  // the weights first: nothing before this kernel writes them
  float A[N];
#pragma unroll
  for (int pass = 0; pass < N; ++pass) A[pass] = channel(pass) < D ? a.A(channel(pass), n) : 0.0f;
  float const bias = has && a.dt_bias ? a.dt_bias(mine) : 0.0f;
  float const skip = has && a.skip ? a.skip(mine) : 0.0f;
  wait_for_previous_kernel();  // launched as a programmatic dependent: see ssm::cuda::launch

  float h[N];
#pragma unroll
  for (int pass = 0; pass < N; ++pass) h[pass] = channel(pass) < D ? a.state(b, channel(pass), n) : 0.0f;
  float dt = has ? to_float(a.dt(b, mine)) + bias : 0.0f;
  if (a.softplus) dt = fast_softplus(dt);
  float const x = has ? to_float(a.x(b, mine)) : 0.0f;
  float const dt_x = dt * x;
  float y_mine = 0.0f;
#pragma unroll
  for (int pass = 0; pass < N; ++pass) {
    int const c = pass * per_pass + slot;
    float const dt_c = __shfl_sync(full, dt, c), dt_x_c = __shfl_sync(full, dt_x, c);
    // B and C: one group's, shared by its channels, so these loads mostly hit L1
    bool const in = d0 + c < D;
    int const g = in ? (d0 + c) / a.channels_per_group : 0;
    float const next = fast_exp(dt_c * A[pass]) * h[pass] + dt_x_c * to_float(a.B(b, g, n));
    if (in) a.state(b, d0 + c, n) = next;
    float y = to_float(a.C(b, g, n)) * next;
#pragma unroll
    for (int offset = N / 2; offset > 0; offset /= 2) y += __shfl_xor_sync(full, y, offset);
    float const total = __shfl_sync(full, y, ((lane - pass * per_pass) & (per_pass - 1)) * N);
    if (lane >= pass * per_pass && lane < (pass + 1) * per_pass) y_mine = total;
  }
  if (has) {
    if (a.skip) y_mine += skip * x;
    if (a.z) y_mine *= fast_silu(to_float(a.z(b, mine)));
    a.out(b, mine) = from_float<T>(y_mine);
  }
}

}  // namespace cuda::detail

/// \brief On `Kokkos::Cuda` the state update runs `cuda::detail::state_update_kernel` when N
/// divides 32 and the state, A, B and C are contiguous along n; the portable path otherwise.
template <>
struct selective_state_update_backend<Kokkos::Cuda> {
  /// \brief Run one step on `space`'s stream (asynchronous).
  /// \tparam T storage type of activations. \tparam MemSpace the memory space of every tensor.
  /// \param space the execution space instance. \param p the checked tensors and flags.
  /// \param s their sizes (L = 1).
  template <class T, class MemSpace>
  static void run(Kokkos::Cuda const& space, selective_state_update_params<T, MemSpace> const& p, scan_shape const& s) {
    int const N = static_cast<int>(s.state);
    bool const lanes = N <= 32 && 32 % N == 0;
    bool const unit_n = p.state.stride(2) == 1 && p.A.stride(1) == 1 && p.B.stride(2) == 1 && p.C.stride(2) == 1;
    if (!lanes || !unit_n) {
      detail::selective_state_update_portable(space, p, s);
      return;
    }
    cuda::detail::state_update_args<T> a{};
    a.state = cuda::ref(p.state);
    a.x = cuda::ref(p.x);
    a.dt = cuda::ref(p.dt);
    a.A = cuda::ref(p.A);
    a.B = cuda::ref(p.B);
    a.C = cuda::ref(p.C);
    a.skip = cuda::ref(p.D);
    a.z = cuda::ref(p.z);
    a.dt_bias = cuda::ref(p.dt_bias);
    a.out = cuda::ref(p.out);
    a.batch = static_cast<int>(s.batch);
    a.channels = static_cast<int>(s.channels);
    a.states = N;
    a.channels_per_group = static_cast<int>(s.channels / s.groups);
    a.softplus = p.dt_softplus;
    dim3 const grid(cuda::blocks_for(s.channels, cuda::detail::state_update_threads), static_cast<unsigned>(s.batch));
    auto launch = [&](auto states) {
      cuda::launch(cuda::detail::state_update_kernel<decltype(states)::value, T>, grid,
                   dim3(cuda::detail::state_update_threads), 0, cuda::stream(space), "ssm::selective_state_update::cuda", a);
    };
    switch (N) {
      case 1: launch(std::integral_constant<int, 1>{}); break;
      case 2: launch(std::integral_constant<int, 2>{}); break;
      case 4: launch(std::integral_constant<int, 4>{}); break;
      case 8: launch(std::integral_constant<int, 8>{}); break;
      case 16: launch(std::integral_constant<int, 16>{}); break;
      default: launch(std::integral_constant<int, 32>{}); break;
    }
  }
};

}  // namespace ssm
