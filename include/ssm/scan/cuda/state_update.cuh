#pragma once
/// \file
/// \brief The selective state update on `Kokkos::Cuda`: a few consecutive lanes per channel, each
/// owning up to 4 of its states, so that the state moves in 16-byte accesses that a warp makes
/// into 512 contiguous bytes.
///
/// At the 2.8B shape and 64 sequences the state is 21 MB of fp32 per layer, read and written at
/// every step: this kernel is bound by moving it. A thread holds `state_update_chunk` (4) states
/// of one channel for `state_update_sequences` (2) sequences, so N / 4 lanes share a channel
/// (4 at N = 16) and each thread has two 16-byte loads of state in flight: every load of the
/// state and of A is a float4, issued before any arithmetic. Each lane computes its channel's dt
/// (softplus included) itself, updates its 4 states, and the channel's N / 4 lanes sum C·h by
/// shuffles; the first of them adds D·x and the gate. The arithmetic is the portable path's; only
/// the order of the N-term sum differs.
///
/// History on an H200, 2.8B model at 64 sequences: the portable path (a thread per channel,
/// strided loads) took 68 µs per layer; a warp per 32 channels, lanes over the 16 states of two
/// channels per pass (4-byte accesses, seven shuffles per pass and up to 64 registers), took
/// 45 µs per layer in Nsight Compute, 43% of the step. Tried and slower before that: a group of
/// N lanes per channel with 64-bit index arithmetic per lane; passes that each waited for their
/// own loads; B and C in registers too (123 registers, 25% occupancy).
///
/// Taken when N divides 32 and the state, A, B and C are contiguous along n (the mixer's layout),
/// with the state and A in aligned 16-byte pieces when N >= 4; otherwise the portable path runs.

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
/// \brief States of one channel per thread (fewer when N < 4): one 16-byte access of fp32.
inline constexpr int state_update_chunk = 4;
/// \brief Sequences per thread: each thread updates the same channel and states of this many.
inline constexpr int state_update_sequences = 2;

/// \brief `V` consecutive floats at `p` (16-byte aligned when V = 4).
template <int V>
__device__ inline void load_chunk(float const* p, float (&v)[V]) {
  if constexpr (V == 4) {
    float4 const q = *reinterpret_cast<float4 const*>(p);
    v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) v[j] = p[j];
  }
}

/// \brief Store `V` consecutive floats at `p` (16-byte aligned when V = 4).
template <int V>
__device__ inline void store_chunk(float* p, float const (&v)[V]) {
  if constexpr (V == 4) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) p[j] = v[j];
  }
}

/// \brief One step: thread `part` of channel d's N / V lanes owns states [part V, part V + V) of
/// d, in `state_update_sequences` sequences. Grid: (ceil(D / (256 V / N)), ceil(B / 2)) blocks of
/// 256 threads.
/// \tparam N states per channel, a power of two up to 32.
template <int N, class T>
__global__ void __launch_bounds__(state_update_threads) state_update_kernel(state_update_args<T> const a) {
  allow_next_kernel();
  constexpr int V = N < state_update_chunk ? N : state_update_chunk;  // states per thread
  constexpr int P = N / V;                                            // lanes per channel (divides 32)
  constexpr int S = state_update_sequences;
  int const t = static_cast<int>(blockIdx.x) * state_update_threads + static_cast<int>(threadIdx.x);
  int const D = a.channels;
  // Lanes past the last channel compute channel D - 1 without storing: every lane of a warp must
  // take part in the shuffles.
  bool const has = t / P < D;
  int const d = has ? t / P : D - 1;
  int const n0 = (t % P) * V;
  int const g = d / a.channels_per_group;
  // the weights first: nothing before this kernel writes them
  float A[V];
  load_chunk<V>(&a.A(d, n0), A);
  float const bias = a.dt_bias ? a.dt_bias(d) : 0.0f;
  float const skip = a.skip ? a.skip(d) : 0.0f;
  wait_for_previous_kernel();  // launched as a programmatic dependent: see ssm::cuda::launch

  // Every sequence's loads before any arithmetic, so that they are in flight together.
  float h[S][V], Bv[S][V], Cv[S][V], dt[S], x[S];
#pragma unroll
  for (int s = 0; s < S; ++s) {
    int const b = min(static_cast<int>(blockIdx.y) * S + s, a.batch - 1);  // a repeat is not stored
    load_chunk<V>(&a.state(b, d, n0), h[s]);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      Bv[s][j] = to_float(a.B(b, g, n0 + j));
      Cv[s][j] = to_float(a.C(b, g, n0 + j));
    }
    dt[s] = to_float(a.dt(b, d)) + bias;
    x[s] = to_float(a.x(b, d));
  }
#pragma unroll
  for (int s = 0; s < S; ++s) {
    int const b = static_cast<int>(blockIdx.y) * S + s;
    float const delta = a.softplus ? fast_softplus(dt[s]) : dt[s];
    float y = 0.0f;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      h[s][j] = fast_exp(delta * A[j]) * h[s][j] + delta * x[s] * Bv[s][j];
      y += Cv[s][j] * h[s][j];
    }
#pragma unroll
    for (int offset = P / 2; offset > 0; offset /= 2) y += __shfl_xor_sync(0xffffffffu, y, offset);
    if (!has || b >= a.batch) continue;
    store_chunk<V>(&a.state(b, d, n0), h[s]);
    if (n0 == 0) {
      if (a.skip) y += skip * x[s];
      if (a.z) y *= fast_silu(to_float(a.z(b, d)));
      a.out(b, d) = from_float<T>(y);
    }
  }
}

}  // namespace cuda::detail

/// \brief On `Kokkos::Cuda` the state update runs `cuda::detail::state_update_kernel` when N
/// divides 32, the state, A, B and C are contiguous along n and (N >= 4) the state's and A's
/// chunks of 4 states are 16-byte aligned; the portable path otherwise.
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
    // N >= 4: the state and A move in float4s, so every chunk of 4 states must be 16-byte aligned
    bool const pieces = N < cuda::detail::state_update_chunk ||
                        (cuda::aligned(p.state.data(), 16) && p.state.stride(0) % 4 == 0 && p.state.stride(1) % 4 == 0 &&
                         cuda::aligned(p.A.data(), 16) && p.A.stride(0) % 4 == 0);
    if (!lanes || !unit_n || !pieces) {
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
    auto launch = [&](auto states) {
      constexpr int n = decltype(states)::value;
      constexpr int lanes_per_channel = n < cuda::detail::state_update_chunk ? 1 : n / cuda::detail::state_update_chunk;
      dim3 const grid(cuda::blocks_for(s.channels, cuda::detail::state_update_threads / lanes_per_channel),
                      cuda::blocks_for(s.batch, cuda::detail::state_update_sequences));
      cuda::launch(cuda::detail::state_update_kernel<n, T>, grid, dim3(cuda::detail::state_update_threads), 0,
                   cuda::stream(space), "ssm::selective_state_update::cuda", a);
    };
    cuda::with_constant<1, 2, 4, 8, 16, 32>(N, launch);
  }
};

}  // namespace ssm
