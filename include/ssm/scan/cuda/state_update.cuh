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
/// shuffles; the first of them adds D·x and the gate. The exponentials are the selective scan's
/// (`exp2_approx`, `softplus_fast`, `silu_fast`) rather than the portable path's: 2.981 → 2.884 ms
/// per step at 8 sequences (2.8B model, H200, same run), before the staged kernel took 8.
///
/// History on an H200, 2.8B model at 64 sequences: the portable path (a thread per channel,
/// strided loads) took 68 µs per layer; a warp per 32 channels, lanes over the 16 states of two
/// channels per pass (4-byte accesses, seven shuffles per pass and up to 64 registers), took
/// 45 µs per layer in Nsight Compute, 43% of the step. Tried and slower before that: a group of
/// N lanes per channel with 64-bit index arithmetic per lane; passes that each waited for their
/// own loads; B and C in registers too (123 registers, 25% occupancy).
///
/// From 8 sequences, `state_update_staged_kernel` runs the same lanes with the state staged in
/// shared memory: a block asks for the states of 2 sequences (8 from 48 sequences) by `cp.async`,
/// which hold no registers while in flight, and reads B and C once per block. Decoding the 2.8B
/// model on an H200, ms per step, every variant in one run: at 64 sequences 4.996 with the
/// registers' kernel, 4.977 / 4.882 / 4.917 staged with 2 / 4 / 8 sequences a block; at 16
/// sequences 3.465 against 3.417 / 3.457 / 3.718; at 8 sequences 3.005 against 3.037 / 3.070 /
/// 3.125, hence the registers' kernel below 16 then. Nsight Compute at base clocks, 64 sequences:
/// 36.1 µs a layer for the registers' kernel, 32.0 staged with 4 sequences a block (33.3 with 8),
/// and the staged kernel was bound by issuing instructions (70% of the SM's throughput, 0.77
/// instructions per cycle per scheduler, DRAM 16%): `fast_exp` and `fast_softplus`, the portable
/// branch-free functions, cost some 25 and 80 instructions. With the scan's `exp2_approx` (one
/// special-function instruction) and `softplus_fast` instead, 48 registers rather than 60, it takes
/// 19.3 µs a layer, and a step 4.907 → 4.286 ms at 64 sequences, 3.355 → 3.202 at 16 (same run).
/// The staged kernel's arithmetic is therefore the prefill scan's, not the portable path's.
///
/// Then what belongs to a channel and a sequence (delta with its softplus, delta x, D x,
/// silu(z)) went to shared memory, computed once by one thread instead of by each of the channel's
/// N / 4 lanes, and the copies to a group per sequence, a thread updating each sequence as soon
/// as its own states have landed: 32 registers at S = 4, 48 at S = 8. Nsight Compute at base
/// clocks, 64 sequences: 19.2 µs a layer before, 16.4 with 4 sequences a block, 15.7 with 8
/// (8.9 → 5.7 M instructions; issue slots still 56% busy, DRAM 31%); a step 4.287 → 4.231 / 4.211
/// ms at 64 sequences, 3.205 → 3.170 at 16 (3.182 with 4 sequences a block there), and at 8
/// sequences 2.884 with the registers' kernel against 2.845 staged with 2 a block (same run):
/// hence 8 sequences a block from 48 sequences and the staged kernel from 8.
///
/// Then each block asked for dt, x, z, D, the bias, B and C before the state's copies rather
/// than after, so that they do not queue behind its 32 KB of copies: a step 2.837 → 2.819 ms at 8
/// sequences, 2.973 → 2.956 at 16, 4.074 → 4.057 at 64 (old and new binaries alternating, twice
/// each, same figures both times). Nsight Compute, which runs the kernel alone with cold caches,
/// reads the same 15.2 µs a layer before and after at 64 sequences: DRAM 32% busy, issue slots
/// 49%, no eligible warp on 38% of the cycles; the kernel waits on latency, and the 42 MB it moves
/// would take about 10 µs at the copy rate.
///
/// dt may come as dt_proj still to be taken (`dt_low` and `dt_weight` of
/// `selective_state_update_params`, the mixer's x_proj output and dt_proj weight): the staged
/// kernel then takes each block's products on the tensor cores (`state_update_dt_proj`), while
/// its copies of the state are in flight, so that the mixer could skip cuBLASLt's dt_proj. It
/// computes the same function and is tested, but the mixer does not take it
/// (`selective_state_update_backend<Kokkos::Cuda>::fuses_dt_proj`): it was slower at every batch.
/// Nsight Compute at base clocks, 2.8B bf16 model on an H200, a layer: at 64 sequences the staged
/// kernel 16.1 µs and dt_proj 4.8 µs, against 24.1 µs for the staged kernel with the products; at
/// 16 sequences 7.2 + 4.6 against 12.5. A step, ms, same run (the change on 44b88a3): 4.125 →
/// 4.259 at 64 sequences, 3.133 → 3.154 at 16, 2.851 → 2.911 at 8. Left to itself the compiler
/// gave the kernel with products 63 registers, 4 blocks a multiprocessor and two waves of them:
/// 4.129 → 4.616 ms at 64 sequences; with registers for 5 blocks and 4 steps of R loaded at once,
/// which spills, 4.368. The products likely wait for their operands behind the state's copies
/// that the block has just issued and that fill the memory system, a few rounds of loads, then the
/// per-channel loads after them, all before the first sequence's update. That is not the
/// reason: with the state's copies issued to the copy engine (`cp.async.bulk`, which holds no slot
/// of the load pipeline) the step took 4.065 ms at 64 sequences without the products and 4.228
/// with them (docs/benchmarks.md, 2026-12-01). Holding dt_proj's weights in registers across
/// several tiles of sequences remains to be tried.
///
/// Given `state_settled` (the mixer's decoding step gives it), the staged kernel asks for its
/// state before it waits for the kernel before it, and in the mixer that kernel is dt_proj on
/// `shallow_gemm` (`ssm/linear/cuda/shallow.cuh`), a programmatic dependent that lets this one
/// start at once: the copies overlap dt_proj and the launch. Decoding on an H200 (2.8B, bf16),
/// ms per step at 8 / 16 / 64 sequences, the binaries alternating twice in one call: 2.796 /
/// 2.928 / 4.004 → 2.771 / 2.841 / 3.892 (2.772 / 2.892 / 3.961 once x_proj's launch was made
/// ordinary to fix a race, `narrow.cuh`, since undone). Behind cuBLASLt's dt_proj, an ordinary launch that
/// lets nothing start before it ends, the early copies alone had given 3.995 → 3.947 at 64
/// sequences and 2.908 → 2.926 at 16.
///
/// Taken when N divides 32 and the state, A, B and C are contiguous along n (the mixer's layout),
/// with the state and A in aligned 16-byte pieces when N >= 4; otherwise the portable path runs.

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include <ssm/core/cuda.hpp>
#include <ssm/core/cuda/copy_engine.cuh>
#include <ssm/core/cuda/fast_math.cuh>
#include <ssm/core/cuda/lanes.cuh>
#include <ssm/core/cuda/mma.cuh>
#include <ssm/core/dtype.hpp>
#include <ssm/core/math.hpp>
#include <ssm/scan/cuda/recurrence.cuh>
#include <ssm/scan/selective_scan.hpp>

namespace ssm {

namespace cuda::detail {

/// \brief The tensors of a state update as the kernel reads them (see
/// `selective_state_update_params`); `skip` (the D of the equations), `z` and `dt_bias` may be
/// null, and so may `dt` where `dt_low` and `dt_weight` give it (`state_update_staged_dt_proj_kernel`;
/// the weight's type is then T).
template <class T>
struct state_update_args {
  tensor_ref<float, 3> state;
  tensor_ref<T const, 2> x, dt, z;
  tensor_ref<T const, 2> dt_low, dt_weight;  ///< (B, R) and (D, R), or null
  tensor_ref<float const, 2> A;
  tensor_ref<T const, 3> B, C;
  tensor_ref<float const, 1> skip, dt_bias;
  tensor_ref<T, 2> out;
  int batch, channels, states, channels_per_group;  ///< B, D, N, D / G
  int rank;                                        ///< R of `dt_low` (0 without it)
  bool softplus;                                   ///< softplus of dt + bias
  bool state_settled;  ///< `selective_state_update_params::state_settled`: the staged kernel copies the state early
};

/// \brief Threads per block of the state update.
inline constexpr int state_update_threads = 256;
/// \brief States of one channel per thread (fewer when N < 4): one 16-byte access of fp32.
inline constexpr int state_update_chunk = 4;
/// \brief Sequences per thread: each thread updates the same channel and states of this many.
inline constexpr int state_update_sequences = 2;

/// \brief Sequences from which the state update takes `state_update_staged_kernel` (where it
/// applies): 2 sequences per block below `state_update_staged_wide_batch`, 8 from there (4 at
/// N = 4 and 8, see `state_update_staged_sequences`).
inline constexpr std::size_t state_update_staged_min_batch = 8;
/// \brief Sequences from which a block of `state_update_staged_kernel` takes 8 of them.
inline constexpr std::size_t state_update_staged_wide_batch = 48;

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
  if (!a.state_settled) allow_next_kernel();  // with it, the promise holds for the next step (`state_settled`)
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
  float A2[V];  // A log2(e): exp(delta A) = 2^(delta A2)
  load_chunk<V>(&a.A(d, n0), A2);
#pragma unroll
  for (int j = 0; j < V; ++j) A2[j] *= 1.44269504088896341f;
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
    float const delta = a.softplus ? softplus_fast(dt[s]) : dt[s];
    float y = 0.0f;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      h[s][j] = next_state(delta, A2[j], h[s][j], delta * x[s], Bv[s][j]);
      y += Cv[s][j] * h[s][j];
    }
    y = lanes_sum<P>(y);
    if (!has || b >= a.batch) continue;
    store_chunk<V>(&a.state(b, d, n0), h[s]);
    if (n0 == 0) {
      if (a.skip) y += skip * x[s];
      if (a.z) y *= silu_fast(to_float(a.z(b, d)));
      a.out(b, d) = from_float<T>(y);
    }
  }
}

/// \brief Sequences per block of `state_update_staged_kernel` at N states, `wanted` where the
/// block's static shared memory (the staged state, 4 KB a sequence, and a float4 and dt_proj's
/// float per channel and sequence) stays within 48 KB, fewer otherwise.
template <int N>
constexpr int state_update_staged_sequences(int wanted) {
  int const channels = state_update_threads / (N / state_update_chunk);
  int const bytes_per_sequence = state_update_threads * 16 + channels * 20 + 2 * N * 4;
  int s = wanted;
  while (s > 1 && s * bytes_per_sequence > 48 * 1024) s /= 2;
  return s;
}

/// \brief Whether the staged kernel takes dt_proj for activations T over weights Wt: on the
/// tensor cores, so both 16-bit and the same type.
template <class T, class Wt>
inline constexpr bool state_update_dt_proj_types = mma_types<T, Wt>;

/// \brief Steps of 16 along R whose loads a warp of `state_update_dt_proj` issues before their
/// products: the loads come from L2, and one step at a time would wait for each in turn. 2 rather
/// than 4: fewer registers to spill under `state_update_dt_proj_min_blocks` (Nsight Compute, 2.8B
/// shape: 24.1 against 25.5 µs at 64 sequences, 12.5 against 20.2 at 16).
inline constexpr int state_update_dt_proj_unroll = 2;

/// \brief Blocks of `state_update_staged_dt_proj_kernel` that a multiprocessor must hold:
/// registers for 5, as the kernel without it has (48 a thread at 8 sequences a block; its 43 KB
/// of shared memory allow 5 too), so that 64 sequences of the 2.8B shape (640 blocks) run in one
/// wave of 660 on an H200. Left to itself the compiler took 63 registers: 4 blocks, two waves.
inline constexpr int state_update_dt_proj_min_blocks = 5;

/// \brief The first `state_update_dt_proj_unroll` steps of dt_proj's weight fragments of this
/// warp's first tile (see `state_update_dt_proj`): weights, which nothing before the kernel
/// writes, so loaded before it waits for the previous one. Zero for a warp without a tile.
/// \tparam C channels of the block, a multiple of 8.
/// \param a the tensors (`dt_weight`, `rank`). \param c0 the block's first channel.
/// \param fb out: the fragments.
template <int C, class T>
__device__ inline void state_update_dt_proj_weights(state_update_args<T> const& a, int c0,
                                                    std::uint32_t (&fb)[state_update_dt_proj_unroll][2]) {
  int const warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  int const row = lane / 4, pair = (lane % 4) * 2;
  bool const has_tile = warp < C / 8;
  T const* const w = &a.dt_weight(c0 + (has_tile ? warp : 0) * 8 + row, 0);
#pragma unroll
  for (int u = 0; u < state_update_dt_proj_unroll; ++u)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      int const k = 16 * u + 8 * h + pair;
      fb[u][h] = has_tile && k < a.rank ? *reinterpret_cast<std::uint32_t const*>(w + k) : 0u;
    }
}

/// \brief dt_proj for the block of `state_update_staged` that covers sequences [b0, b0 + S)
/// and channels [c0, c0 + C): \f$dt[s][c] = \mathrm{round}_T(\sum_r \delta_{low}[b_0 + s, r]\,
/// W_\Delta[c_0 + c, r])\f$ on the tensor cores, fp32 sums. Warp w takes channels [8 j, 8 j + 8)
/// for j = w, w + 8, ...: one m16n8k16 product per 16 of R, its tile's rows the S sequences (rows
/// S to 15 zero), each fragment's pair of values one 4-byte load straight from memory (zero past R).
/// Needs R even, `dt_low` and `dt_weight` contiguous along r with even row strides, 4-byte aligned.
/// \tparam S sequences, at most 8. \tparam C channels, a multiple of 8.
/// \param a the tensors (`dt_low`, `dt_weight`, `rank`, `batch`). \param b0 the first sequence.
/// \param c0 the first channel. \param first the warp's first weight fragments, from
/// `state_update_dt_proj_weights`. \param dt out: the block's products, rounded to T, as fp32.
template <int S, int C, class T>
__device__ inline void state_update_dt_proj(state_update_args<T> const& a, int b0, int c0,
                                            std::uint32_t const (&first)[state_update_dt_proj_unroll][2],
                                            float (&dt)[S][C]) {
  static_assert(S <= 8 && C % 8 == 0, "ssm::cuda::detail::state_update_dt_proj: S <= 8, C a multiple of 8");
  constexpr int U = state_update_dt_proj_unroll;
  int const warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  int const row = lane / 4, pair = (lane % 4) * 2;  // the fragments' coordinates (m16n8k16)
  int const R = a.rank;
  bool const has_row = row < S && b0 + row < a.batch;
  T const* const low = &a.dt_low(has_row ? b0 + row : 0, 0);
  auto pair_at = [](T const* p) { return *reinterpret_cast<std::uint32_t const*>(p); };
  for (int tile = warp; tile < C / 8; tile += state_update_threads / 32) {
    T const* const w = &a.dt_weight(c0 + tile * 8 + row, 0);  // B's column `row`: a row of dt_proj
    float acc[4] = {};
    for (int k0 = 0; k0 < R; k0 += 16 * U) {
      std::uint32_t fa[U][4] = {}, fb[U][2];
      bool const prefetched = tile == warp && k0 == 0;
#pragma unroll
      for (int u = 0; u < U; ++u)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          int const k = k0 + 16 * u + 8 * h + pair;  // R is even: k < R means k + 1 < R
          fa[u][2 * h] = has_row && k < R ? pair_at(low + k) : 0u;
          fb[u][h] = prefetched ? first[u][h] : k < R ? pair_at(w + k) : 0u;
        }
#pragma unroll
      for (int u = 0; u < U; ++u) mma_16816<T>(acc, fa[u], fb[u]);
    }
    // acc[0] and acc[1]: sequence `row`, channels pair and pair + 1 of the tile (acc[2], acc[3]: rows 8 to 15)
    if (row < S) {
      dt[row][tile * 8 + pair] = round_to<T>(acc[0]);
      dt[row][tile * 8 + pair + 1] = round_to<T>(acc[1]);
    }
  }
}

/// \brief The state update of many sequences with the state staged in shared memory: the lanes
/// of `state_update_kernel` (4 states of one channel each), but a block covers S sequences and
/// asks for all of their states at once by `cp.async`, a group per sequence, so that the bytes in
/// flight are bounded by shared memory (S x 4 KB per block) rather than by registers, and a thread
/// updates a sequence's states as soon as they have landed. What belongs to a channel and a
/// sequence is computed once per block, a thread per (sequence, channel), into shared memory:
/// delta (softplus included), delta x, D x and silu(z); B and C of the block's S sequences are
/// read once per block too. The exponentials are the selective scan's (`exp2_approx`,
/// `softplus_fast`, `silu_fast`).
///
/// With `LowRank`, dt is dt_proj of `dt_low` and `dt_weight`, taken by the block for its
/// sequences and channels on the tensor cores (`state_update_dt_proj`) while the state's copies
/// are in flight, instead of read from `dt`.
///
/// Needs N >= 4 (16-byte pieces) and every channel of a block in one group, hence D a multiple of
/// the block's 256 / (N / 4) channels: every lane has a channel. The body of
/// `state_update_staged_kernel` and `state_update_staged_dt_proj_kernel`; their grid: (D / (256 /
/// (N / 4)), ceil(B / S)) blocks of 256 threads.
/// \tparam N states per channel: 4, 8, 16 or 32. \tparam S sequences per block.
/// \tparam LowRank dt from `dt_low` and `dt_weight` (T bf16 or f16, see `state_update_dt_proj`).
template <int N, int S, bool LowRank, class T>
__device__ __forceinline__ void state_update_staged(state_update_args<T> const& a) {
  // With a settled state the copies below begin before the wait for the previous kernel, and the
  // next kernel may start only once this one has finished: then no later update that copies its
  // state early can read this one's before it is written (see `state_settled`).
  if (!a.state_settled) allow_next_kernel();
  constexpr int V = state_update_chunk;                // states per thread
  constexpr int P = N / V;                             // lanes per channel
  constexpr int channels = state_update_threads / P;  // per block
  __shared__ float4 staged[S][state_update_threads];   // each thread's own states, sequence by sequence
  __shared__ __align__(16) float bc[2][S][N];          // B, then C, of the block's group
  __shared__ float4 per_channel[S][channels];          // delta, delta x, D x, silu(z)
  __shared__ float low_rank_dt[LowRank ? S : 1][LowRank ? channels : 1];  // dt_proj's products
  int const lane = static_cast<int>(threadIdx.x);
  int const c0 = static_cast<int>(blockIdx.x) * channels;  // the block's first channel
  int const d = c0 + lane / P;
  int const n0 = (lane % P) * V;
  int const b0 = static_cast<int>(blockIdx.y) * S;
  int const g = c0 / a.channels_per_group;
  float A2[V];  // A log2(e): exp(delta A) = 2^(delta A2)
  load_chunk<V>(&a.A(d, n0), A2);
#pragma unroll
  for (int j = 0; j < V; ++j) A2[j] *= 1.44269504088896341f;
  std::uint32_t dt_weights[LowRank ? state_update_dt_proj_unroll : 1][2];
  if constexpr (LowRank) state_update_dt_proj_weights<channels>(a, c0, dt_weights);
  // A group of copies per sequence; none past the batch (the same for the whole block), so that
  // nothing is in flight when the block ends.
  auto ask_for_states = [&] {
#pragma unroll
    for (int s = 0; s < S; ++s) {
      if (b0 + s < a.batch) copy_async_16(&staged[s][lane], &a.state(b0 + s, d, n0));
      copy_async_commit();
    }
  };
  if (a.state_settled) ask_for_states();
  wait_for_previous_kernel();  // launched as a programmatic dependent: see ssm::cuda::launch

  // The few bytes per sequence and channel (dt, x, z) and the block's B and C are asked for
  // first, into registers in their storage type, so that they do not queue behind the block's
  // copies of the state: the first sequence's update, and so its stores, can then begin while
  // the later sequences' states are still arriving.
  constexpr int items = (S * channels + state_update_threads - 1) / state_update_threads;
  constexpr int bc_items = (2 * S * N + state_update_threads - 1) / state_update_threads;
  T dt_in[items], x_in[items], z_in[items], bc_in[bc_items];
  float bias_in[items], skip_in[items];
#pragma unroll
  for (int u = 0; u < items; ++u) {
    int const i = lane + u * state_update_threads;
    if (i >= S * channels) break;
    int const s = i / channels, c = c0 + i % channels;
    int const b = min(b0 + s, a.batch - 1);
    if constexpr (!LowRank) dt_in[u] = a.dt(b, c);
    x_in[u] = a.x(b, c);
    if (a.z) z_in[u] = a.z(b, c);
    bias_in[u] = a.dt_bias ? a.dt_bias(c) : 0.0f;
    skip_in[u] = a.skip ? a.skip(c) : 0.0f;
  }
#pragma unroll
  for (int u = 0; u < bc_items; ++u) {
    int const i = lane + u * state_update_threads;
    if (i >= 2 * S * N) break;
    int const which = i / (S * N), s = i / N % S, n = i % N;
    int const b = min(b0 + s, a.batch - 1);
    bc_in[u] = which == 0 ? a.B(b, g, n) : a.C(b, g, n);
  }
  if (!a.state_settled) ask_for_states();
#pragma unroll
  for (int u = 0; u < bc_items; ++u) {
    int const i = lane + u * state_update_threads;
    if (i >= 2 * S * N) break;
    bc[i / (S * N)][i / N % S][i % N] = to_float(bc_in[u]);
  }
  if constexpr (LowRank) {
    state_update_dt_proj<S, channels>(a, b0, c0, dt_weights, low_rank_dt);
    __syncthreads();  // each thread below reads products of other warps
  }
#pragma unroll
  for (int u = 0; u < items; ++u) {
    int const i = lane + u * state_update_threads;
    if (i >= S * channels) break;
    int const s = i / channels;
    float dt = bias_in[u];
    if constexpr (LowRank) dt += low_rank_dt[s][i % channels];
    else dt += to_float(dt_in[u]);
    float const delta = a.softplus ? softplus_fast(dt) : dt;
    float const x = to_float(x_in[u]);
    per_channel[s][i % channels] = make_float4(delta, delta * x, skip_in[u] * x, a.z ? silu_fast(to_float(z_in[u])) : 1.0f);
  }
  __syncthreads();  // bc and per_channel were written by other threads

#pragma unroll
  for (int s = 0; s < S; ++s) {
    int const b = b0 + s;
    if (b >= a.batch) break;  // the same for the whole block
    copy_async_wait_pending(S - 1 - s);  // this sequence's states have landed
    float h[V], Bv[V], Cv[V];
    float4 const q = staged[s][lane];
    h[0] = q.x, h[1] = q.y, h[2] = q.z, h[3] = q.w;
    load_chunk<V>(&bc[0][s][n0], Bv);
    load_chunk<V>(&bc[1][s][n0], Cv);
    float4 const k = per_channel[s][lane / P];
    float y = 0.0f;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      h[j] = next_state(k.x, A2[j], h[j], k.y, Bv[j]);
      y += Cv[j] * h[j];
    }
    y = lanes_sum<P>(y);
    store_chunk<V>(&a.state(b, d, n0), h);
    if (n0 == 0) a.out(b, d) = from_float<T>((y + k.z) * k.w);
  }
}

/// \brief The staged state update with dt read from `dt` (see `state_update_staged`).
/// \tparam N states per channel: 4, 8, 16 or 32. \tparam S sequences per block.
template <int N, int S, class T>
__global__ void __launch_bounds__(state_update_threads) state_update_staged_kernel(state_update_args<T> const a) {
  state_update_staged<N, S, false>(a);
}

/// \brief The staged state update with dt_proj's products (see `state_update_staged`), in
/// registers for `state_update_dt_proj_min_blocks` blocks a multiprocessor. (A minimum of blocks
/// is an attribute of the kernel: given as 1 to the kernel without products, it took that kernel
/// from 48 registers to 80.)
/// \tparam N states per channel: 4, 8, 16 or 32. \tparam S sequences per block.
template <int N, int S, class T>
__global__ void __launch_bounds__(state_update_threads, state_update_dt_proj_min_blocks)
    state_update_staged_dt_proj_kernel(state_update_args<T> const a) {
  state_update_staged<N, S, true>(a);
}

}  // namespace cuda::detail

/// \brief On `Kokkos::Cuda` the state update runs `cuda::detail::state_update_kernel` when N
/// divides 32, the state, A, B and C are contiguous along n and (N >= 4) the state's and A's
/// chunks of 4 states are 16-byte aligned, `cuda::detail::state_update_staged_kernel` instead from
/// 8 sequences when N >= 4 and a group's channels are a multiple of a block's; the portable path
/// otherwise. dt given as dt_proj (`dt_low` and `dt_weight`) runs in the staged kernel where it
/// applies and the types and layouts suit its tensor-core products, in the portable path otherwise.
template <>
struct selective_state_update_backend<Kokkos::Cuda> {
  /// \brief Whether the staged kernel would run a step of these sizes: from 8 sequences, N = 4 to
  /// 32, a block's 256 / (N / 4) channels dividing a group's.
  /// \param s the sizes (B, D, L = 1, N, G). \return true if it would (layouts permitting).
  static bool staged(scan_shape const& s) {
    std::size_t const N = s.state;
    if (s.batch < cuda::detail::state_update_staged_min_batch || N < 4 || N > 32 || 32 % N != 0) return false;
    std::size_t const channels = cuda::detail::state_update_threads / (N / cuda::detail::state_update_chunk);
    return s.groups >= 1 && (s.channels / s.groups) % channels == 0;
  }

  /// \brief Whether to hand dt_proj to the state update (see the primary template): no. The
  /// staged kernel takes it where it runs, T and Wt are the same 16-bit type and R is even, but
  /// on an H200 the step was slower that way at 8, 16 and 64 sequences (see the file comment).
  /// \tparam T storage type of activations. \tparam Wt storage type of `dt_weight`.
  /// \param s the sizes (B, D, L = 1, N, G). \param rank R. \return false.
  template <class T, class Wt>
  static constexpr bool fuses_dt_proj(scan_shape const& s, std::size_t rank) {
    (void)s, (void)rank;
    return false;
  }

  /// \brief Run one step on `space`'s stream (asynchronous).
  /// \tparam T storage type of activations. \tparam MemSpace the memory space of every tensor.
  /// \tparam Wt storage type of `dt_weight`.
  /// \param space the execution space instance. \param p the checked tensors and flags.
  /// \param s their sizes (L = 1).
  template <class T, class MemSpace, class Wt>
  static void run(Kokkos::Cuda const& space, selective_state_update_params<T, MemSpace, Wt> const& p,
                  scan_shape const& s) {
    int const N = static_cast<int>(s.state);
    bool const lanes = N <= 32 && 32 % N == 0;
    bool const unit_n = p.state.stride(2) == 1 && p.A.stride(1) == 1 && p.B.stride(2) == 1 && p.C.stride(2) == 1;
    // N >= 4: the state and A move in float4s, so every chunk of 4 states must be 16-byte aligned
    bool const pieces = N < cuda::detail::state_update_chunk ||
                        (cuda::aligned(p.state.data(), 16) && p.state.stride(0) % 4 == 0 && p.state.stride(1) % 4 == 0 &&
                         cuda::aligned(p.A.data(), 16) && p.A.stride(0) % 4 == 0);
    bool const low_rank = !given(p.dt);
    if (!lanes || !unit_n || !pieces || (low_rank && !low_rank_staged(p, s))) {
      detail::selective_state_update_portable(space, p, s);
      return;
    }
    cuda::detail::state_update_args<T> a{};
    a.state = cuda::ref(p.state);
    a.x = cuda::ref(p.x);
    a.dt = cuda::ref(p.dt);
    if constexpr (std::is_same_v<T, Wt>) {
      if (low_rank) {
        a.dt_low = cuda::ref(p.dt_low);
        a.dt_weight = cuda::ref(p.dt_weight);
        a.rank = static_cast<int>(p.dt_low.extent(1));
      }
    }
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
    a.state_settled = p.state_settled;
    // From 8 sequences, when a block's channels lie in one group: the staged kernel.
    if (staged(s)) {
      int const staged_channels = cuda::detail::state_update_threads / (N / cuda::detail::state_update_chunk);
      auto staged_launch = [&](auto states) {
        constexpr int n = decltype(states)::value;
        auto go = [&](auto sequences, auto products) {
          constexpr int S = decltype(sequences)::value;
          constexpr bool LowRank = decltype(products)::value;
          if constexpr (!LowRank || cuda::detail::state_update_dt_proj_types<T, Wt>) {
            dim3 const grid(static_cast<unsigned>(s.channels) / static_cast<unsigned>(staged_channels),
                            cuda::blocks_for(s.batch, S));
            auto launch_staged = [&](auto kernel) {
              cuda::launch(kernel, grid, dim3(cuda::detail::state_update_threads), 0, cuda::stream(space),
                           "ssm::selective_state_update::cuda", a);
            };
            if constexpr (LowRank) launch_staged(cuda::detail::state_update_staged_dt_proj_kernel<n, S, T>);
            else launch_staged(cuda::detail::state_update_staged_kernel<n, S, T>);
          }
        };
        auto with_products = [&](auto sequences) {
          if (low_rank) go(sequences, std::true_type{});
          else go(sequences, std::false_type{});
        };
        if (s.batch >= cuda::detail::state_update_staged_wide_batch)
          with_products(std::integral_constant<int, cuda::detail::state_update_staged_sequences<n>(8)>{});
        else with_products(std::integral_constant<int, 2>{});
      };
      cuda::with_constant<4, 8, 16, 32>(N, staged_launch);
      return;
    }
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

 private:
  /// \brief Whether the staged kernel takes this step's dt_proj: it runs (`staged`), T and Wt
  /// suit the tensor cores, and `dt_low` and `dt_weight` are contiguous along R (even), with even
  /// row strides and 4-byte alignment, so that every pair of values is one aligned word.
  template <class T, class MemSpace, class Wt>
  static bool low_rank_staged(selective_state_update_params<T, MemSpace, Wt> const& p, scan_shape const& s) {
    if constexpr (!cuda::detail::state_update_dt_proj_types<T, Wt>) {
      (void)p, (void)s;
      return false;
    } else {
      auto const words = [](auto const& v) {
        return v.stride(1) == 1 && v.stride(0) % 2 == 0 && cuda::aligned(v.data(), 4);
      };
      return staged(s) && p.dt_low.extent(1) % 2 == 0 && words(p.dt_low) && words(p.dt_weight);
    }
  }
};

}  // namespace ssm
