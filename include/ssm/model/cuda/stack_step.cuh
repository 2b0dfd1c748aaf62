#pragma once
/// \file
/// \brief A whole decoding step of the Mamba stack, every layer, in one launch on `Kokkos::Cuda`.
///
/// At one sequence a step is bound by reading the weights (5.5 GB for the 2.8B model in bf16), so
/// what matters is that they stream at the copy rate from the first layer to the last. With a
/// launch per kernel (`ssm/blocks/cuda/mamba_step.cuh`) the stream stops at every boundary: a
/// kernel's blocks start only as its predecessor's leave, and the small kernels between the two
/// big products (x_proj and the state update) read little. Here one block per multiprocessor runs
/// the whole stack:
///
/// - **one producer warp** walks the block's share of every layer's weights in the order they are
///   used, and has the copy engine (`cp.async.bulk`) bring each piece into a ring of shared-memory
///   slots, each with a "full" and an "empty" `mbarrier`. It waits only for a slot to come free,
///   never for the computation, so while the block waits for the rest of the GPU the ring fills
///   with the next weights: out_proj's rows while the state update runs, the next layer's in_proj
///   rows while out_proj runs;
/// - **the consumer warps** compute a layer in five phases, the grid meeting at a counter between
///   them (each block adds one when its part is written; the next phase reads once all have):
///   1. RMSNorm of hidden + residual, which every block computes for itself (E values from L2);
///   2. in_proj: the block's channels [c0, c1) of u and z, the lane that finishes u[c] also
///      advancing channel c's conv and writing the conv's output; z stays in shared memory;
///   3. x_proj: a few of its R + 2N rows against the whole of u;
///   4. dt_proj, softplus, the state update and the gate for the channels of phase 2;
///   5. out_proj: the block's rows of the output, and residual += hidden.
///
/// Each block owns the same channels in phases 2 and 4, so z and u never leave it, and its conv
/// and SSM states, filters, A, D, dt_proj's rows and the norm's weights come by the copy engine
/// too, into one of two parameter regions (so that the next layer's can land while this one's are
/// in use). Channels are dealt in runs of 8 so that those pieces are whole 16-byte units.
///
/// Where it stands (H200, 2.8B, bf16; docs/benchmarks.md has the timeline): 2.18 ms a token
/// against 2.04 with four launches per block, so it is not the default. A layer takes about
/// 33 µs: in_proj 11, out_proj 5.6, the norm, x_proj and the state update 2 each, and 9 in the
/// four meetings of the grid, of which 2.8 µs after in_proj is the release before the counter's
/// add waiting for the block's weight copies in flight.
///
/// The arithmetic is that of the four-launch step: the same roundings to T (normalised input,
/// in_proj's outputs, u, x_proj's outputs, dt_proj's output, y, out_proj's output), the same
/// special-function exponentials, so only the order of fp32 sums differs. The grid must be
/// resident all at once (one block per multiprocessor, launched as a cooperative kernel, which
/// CUDA refuses rather than run partly).

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <type_traits>

#include <ssm/blocks/cuda/mamba_step.cuh>
#include <ssm/blocks/mamba.hpp>
#include <ssm/core/cuda.hpp>
#include <ssm/core/cuda/copy_engine.cuh>
#include <ssm/core/cuda/fast_math.cuh>
#include <ssm/core/cuda/lanes.cuh>
#include <ssm/core/cuda/pieces.cuh>
#include <ssm/core/dtype.hpp>
#include <ssm/linear/cuda/gemv.cuh>
#include <ssm/scan/cuda/recurrence.cuh>

namespace ssm {

namespace cuda {

namespace kernels {

/// \brief Consumer warps per block of `mamba_stack_step` (one more warp produces).
inline constexpr int stack_consumers = 8;
/// \brief Threads per block of `mamba_stack_step`.
inline constexpr int stack_threads = 32 * (1 + stack_consumers);
/// \brief The most layers one launch takes (their pointers travel in the kernel's parameters).
inline constexpr int stack_max_layers = 128;
/// \brief The most weight rows in one ring entry (a warp's sums for them live in registers).
inline constexpr int stack_item_rows = 4;
/// \brief Channels are dealt to blocks in runs of this many (16-byte pieces of their parameters).
inline constexpr int stack_channel_run = 8;
/// \brief The most ring slots (their barriers have fixed places).
inline constexpr int stack_max_slots = 64;

/// \brief One layer's tensors (see `mamba_mixer_weights`, `mamba_state`), one sequence.
template <class T, class Wt>
struct stack_layer {
  Wt const* norm_weight;  ///< (E)
  Wt const* in_proj;      ///< (2D, E)
  Wt const* in_bias;      ///< (2D) or null
  Wt const* conv_weight;  ///< (D, W)
  Wt const* conv_bias;    ///< (D) or null
  Wt const* x_proj;       ///< (R + 2N, D)
  Wt const* dt_proj;      ///< (D, R)
  float const* dt_bias;   ///< (D)
  float const* A;         ///< (D, N)
  float const* skip;      ///< (D), the D of the equations
  Wt const* out_proj;     ///< (E, D)
  Wt const* out_bias;     ///< (E) or null
  T* conv_state;          ///< (D, W-1), updated in place
  float* ssm_state;       ///< (D, N), updated in place
};

/// \brief Where things live in the dynamic shared memory of `mamba_stack_step` (byte offsets).
struct stack_layout {
  int full, empty, params_full, params_empty;  ///< mbarriers: per slot, per parameter region
  int partial;                                 ///< (consumers) floats: the norm's partial sums
  int sums;                                    ///< (E) floats: residual + hidden
  int act;                                     ///< (max(E, D)) T: the normalised row, u, or y
  int x_dbl;                                   ///< (R + 2N) T: x_proj's outputs
  int own_u, own_z;                            ///< (channels) T: the block's u and z
  int params[2];                               ///< two parameter regions, each laid out as below
  int norm_weight, conv_weight, conv_bias, conv_state, dt_proj, dt_bias, A, skip, ssm_state;  ///< within a region
  int region_bytes;                            ///< one region
  int ring, slot_bytes, slots;                 ///< the ring of weight slots
  int bytes;                                   ///< all of it
  int channels;                                ///< the most channels a block owns
};

/// \brief The kernel's arguments: every layer, the stream's tensors, the sizes.
template <class T, class Wt>
struct stack_args {
  stack_layer<T, Wt> layers[stack_max_layers];  ///< the first `n_layer` are the model's
  T* hidden;          ///< (E) the blocks' output stream, in and out
  float* residual;    ///< (E) the residual stream, in and out
  T* u;               ///< (D) scratch: the conv's output
  T* x_dbl;           ///< (R + 2N) scratch: x_proj's output
  T* y;               ///< (D) scratch: the gated state output
  unsigned* counter;  ///< zero at launch: blocks that have finished each phase
  int n_layer, E, D, N, R, W;  ///< layers; d_model, d_inner, d_state, dt_rank, d_conv
  float eps;                   ///< RMSNorm's epsilon
  stack_layout s;              ///< the shared memory's layout
};

/// \brief `Count` consecutive values of T (a multiple of a 16-byte piece, `p` aligned) that other
/// blocks wrote in this launch, read through L2 (`ld.global.cg`), all requests before any use.
template <class T, int Count>
__device__ inline void l2_values(T const* p, float (&out)[Count]) {
  constexpr int per = piece_values<T>;
  static_assert(Count % per == 0, "whole 16-byte pieces");
  uint4 raw[Count / per];
#pragma unroll
  for (int i = 0; i < Count / per; ++i) raw[i] = __ldcg(reinterpret_cast<uint4 const*>(p) + i);
#pragma unroll
  for (int i = 0; i < Count / per; ++i) {
    float part[per];
    widen_piece<T>(raw[i], part);
#pragma unroll
    for (int j = 0; j < per; ++j) out[i * per + j] = part[j];
  }
}

/// \brief The dot products of `Rows` weight rows of a ring slot, `row_bytes` apart, with a row of
/// activations in shared memory, over `pieces` 16-byte pieces of weights; each lane's partial sums.
/// `Unroll` pieces a trip, every load of the trip issued before the first product, each piece with
/// its own sums, so that the trip waits for shared memory once.
template <int Rows, int Unroll, class T, class Wt>
__device__ inline void dot_fixed(unsigned char const* slot, int row_bytes, T const* act, int pieces,
                                 float (&sum)[stack_item_rows]) {
  constexpr int vec = 16 / sizeof(Wt), per = piece_values<T>, act_loads = vec / per;
  int const lane = static_cast<int>(threadIdx.x) % 32;
  float acc[Unroll][Rows] = {};
  int p = lane;
  auto trip = [&](auto count) {  // `count` pieces from p, 32 apart
    constexpr int n = decltype(count)::value;
    uint4 w[n][Rows], x[n][act_loads];
#pragma unroll
    for (int u = 0; u < n; ++u) {
#pragma unroll
      for (int i = 0; i < act_loads; ++i) x[u][i] = load_shared(act + (p + 32 * u) * vec + i * per);
#pragma unroll
      for (int r = 0; r < Rows; ++r) w[u][r] = load_shared(slot + r * row_bytes + (p + 32 * u) * 16);
    }
#pragma unroll
    for (int u = 0; u < n; ++u) {
      float xv[vec];
#pragma unroll
      for (int i = 0; i < act_loads; ++i) {
        float part[per];
        widen_piece<T>(x[u][i], part);
#pragma unroll
        for (int j = 0; j < per; ++j) xv[i * per + j] = part[j];
      }
#pragma unroll
      for (int r = 0; r < Rows; ++r) {
        float wv[vec];
        widen_piece<Wt>(w[u][r], wv);
#pragma unroll
        for (int j = 0; j < vec; ++j) acc[u][r] += wv[j] * xv[j];
      }
    }
  };
  for (; p + 32 * (Unroll - 1) < pieces; p += 32 * Unroll) trip(std::integral_constant<int, Unroll>{});
  for (; p < pieces; p += 32) trip(std::integral_constant<int, 1>{});
#pragma unroll
  for (int r = 0; r < stack_item_rows; ++r) {
    float total = 0.0f;
    if (r < Rows) {
#pragma unroll
      for (int u = 0; u < Unroll; ++u) total += acc[u][r < Rows ? r : 0];
    }
    sum[r] = total;
  }
}

/// \brief The dot products of `rows` (at most `stack_item_rows`) weight rows of K values, `row_bytes`
/// apart in a ring slot, with a row of activations in shared memory; every lane gets every sum.
template <class T, class Wt>
__device__ inline void dot_rows(unsigned char const* slot, int row_bytes, T const* act, int K, int rows,
                                float (&sum)[stack_item_rows]) {
  static_assert(stack_item_rows == 4, "one case a row count");
  int const pieces = K / (16 / static_cast<int>(sizeof(Wt)));
  switch (rows) {
    case 1: dot_fixed<1, 4, T, Wt>(slot, row_bytes, act, pieces, sum); break;
    case 2: dot_fixed<2, 2, T, Wt>(slot, row_bytes, act, pieces, sum); break;
    case 3: dot_fixed<3, 1, T, Wt>(slot, row_bytes, act, pieces, sum); break;
    default: dot_fixed<4, 1, T, Wt>(slot, row_bytes, act, pieces, sum); break;
  }
#pragma unroll
  for (int r = 0; r < stack_item_rows; ++r)
    if (r < rows) sum[r] = warp_sum(sum[r]);
}

/// \brief The sum of row `lane` among a warp's `stack_item_rows` sums (0 past them), without
/// indexing registers by a variable.
__device__ inline float own_sum(float const (&sum)[stack_item_rows], int lane) {
  float mine = 0.0f;
#pragma unroll
  for (int r = 0; r < stack_item_rows; ++r)
    if (r == lane) mine = sum[r];
  return mine;
}

/// \brief Every layer's decoding step for one sequence (see the file comment).
///
/// Grid: one block per multiprocessor, all resident; `stack_threads` threads; `a.s.bytes` of
/// dynamic shared memory. The arguments (some 14 KB of pointers) stay in parameter memory
/// (`__grid_constant__`): the kernel takes references into them without a local copy.
template <class T, class Wt>
__global__ void __launch_bounds__(stack_threads, 1) mamba_stack_step(__grid_constant__ stack_args<T, Wt> const a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  __trap();  // the copy engine's bulk copies and mbarrier waits are Hopper's; `fuses` says no before
#else
  extern __shared__ __align__(128) unsigned char shared[];
  stack_layout const& s = a.s;
  int const warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  int const G = static_cast<int>(gridDim.x), b = static_cast<int>(blockIdx.x);
  int const E = a.E, D = a.D, N = a.N, R = a.R, W = a.W, X = R + 2 * N;
  // the block's share: channels (in runs of 8), x_proj rows, out_proj rows
  int const runs = D / stack_channel_run;
  int const c0 = runs * b / G * stack_channel_run, c1 = runs * (b + 1) / G * stack_channel_run, nc = c1 - c0;
  int const k0 = X * b / G, k1 = X * (b + 1) / G;
  int const j0 = E * b / G, j1 = E * (b + 1) / G;
  int const in_bytes = E * static_cast<int>(sizeof(Wt)), d_bytes = D * static_cast<int>(sizeof(Wt));
  int const in_per = min(stack_item_rows, s.slot_bytes / in_bytes), d_per = min(stack_item_rows, s.slot_bytes / d_bytes);
  int const n_in = (nc + in_per - 1) / in_per, n_xp = (k1 - k0 + d_per - 1) / d_per, n_out = (j1 - j0 + d_per - 1) / d_per;
  long const per_layer = 2L * n_in + n_xp + n_out;  // ring entries a layer (the parameters apart)
  int const S = s.slots;

  auto* const full = reinterpret_cast<std::uint64_t*>(shared + s.full);
  auto* const empty = reinterpret_cast<std::uint64_t*>(shared + s.empty);
  auto* const params_full = reinterpret_cast<std::uint64_t*>(shared + s.params_full);
  auto* const params_empty = reinterpret_cast<std::uint64_t*>(shared + s.params_empty);
  unsigned char* const ring = shared + s.ring;
  if (threadIdx.x == 0) {
    for (int i = 0; i < S; ++i) barrier_init(full + i, 1), barrier_init(empty + i, 1);
    for (int i = 0; i < 2; ++i) barrier_init(params_full + i, 1), barrier_init(params_empty + i, stack_consumers);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();

  if (warp == 0) {  // the producer
    if (lane != 0) return;
    long k = 0;
    auto rows = [&](Wt const* m, int row_bytes, int first, int last, int per) {
      for (int r = first; r < last; r += per, ++k) {
        int const slot = static_cast<int>(k % S);
        unsigned const bytes = static_cast<unsigned>(min(per, last - r) * row_bytes);
        barrier_wait(empty + slot, static_cast<unsigned>((k / S) & 1) ^ 1u);
        barrier_expect(full + slot, bytes);
        bulk_copy(ring + static_cast<std::size_t>(slot) * s.slot_bytes,
                  reinterpret_cast<unsigned char const*>(m) + static_cast<std::size_t>(r) * row_bytes, bytes, full + slot);
      }
    };
    for (int l = 0; l < a.n_layer; ++l) {
      stack_layer<T, Wt> const& L = a.layers[l];
      int const region = l & 1;
      unsigned char* const p = shared + s.params[region];
      barrier_wait(params_empty + region, static_cast<unsigned>((l >> 1) & 1) ^ 1u);
      unsigned const n = static_cast<unsigned>(nc);
      unsigned const conv_bytes = n * W * sizeof(Wt), conv_bias_bytes = L.conv_bias ? n * sizeof(Wt) : 0u;
      unsigned const history_bytes = n * (W - 1) * sizeof(T), dt_bytes = n * R * sizeof(Wt);
      unsigned const state_bytes = n * N * sizeof(float), channel_bytes = n * sizeof(float);
      unsigned const norm_bytes = E * sizeof(Wt);
      barrier_expect(params_full + region, norm_bytes + conv_bytes + conv_bias_bytes + history_bytes + dt_bytes +
                                               2 * state_bytes + 2 * channel_bytes);
      bulk_copy(p + s.norm_weight, L.norm_weight, norm_bytes, params_full + region);
      if (n > 0) {
        bulk_copy(p + s.conv_weight, L.conv_weight + static_cast<std::size_t>(c0) * W, conv_bytes, params_full + region);
        if (conv_bias_bytes) bulk_copy(p + s.conv_bias, L.conv_bias + c0, conv_bias_bytes, params_full + region);
        if (history_bytes)
          bulk_copy(p + s.conv_state, L.conv_state + static_cast<std::size_t>(c0) * (W - 1), history_bytes,
                    params_full + region);
        bulk_copy(p + s.dt_proj, L.dt_proj + static_cast<std::size_t>(c0) * R, dt_bytes, params_full + region);
        bulk_copy(p + s.dt_bias, L.dt_bias + c0, channel_bytes, params_full + region);
        bulk_copy(p + s.A, L.A + static_cast<std::size_t>(c0) * N, state_bytes, params_full + region);
        bulk_copy(p + s.skip, L.skip + c0, channel_bytes, params_full + region);
        bulk_copy(p + s.ssm_state, L.ssm_state + static_cast<std::size_t>(c0) * N, state_bytes, params_full + region);
      }
      rows(L.in_proj, in_bytes, c0, c1, in_per);
      rows(L.in_proj, in_bytes, D + c0, D + c1, in_per);
      rows(L.x_proj, d_bytes, k0, k1, d_per);
      rows(L.out_proj, d_bytes, j0, j1, d_per);
    }
    return;
  }

  // the consumers
  constexpr int threads = 32 * stack_consumers;
  int const cw = warp - 1, ct = static_cast<int>(threadIdx.x) - 32;
  auto sync_consumers = [] { asm volatile("bar.sync 1, %0;" ::"n"(threads) : "memory"); };
  unsigned phase = 0;
  auto grid_sync = [&] {  // this block's part of the phase is written; wait for every block's
    sync_consumers();
    ++phase;
    if (ct == 0) {  // the block's writes, ordered before the add by the barrier above, go with it
      add_release(a.counter);
      unsigned const target = phase * static_cast<unsigned>(G);
      while (load_acquire(a.counter) < target) {
      }
    }
    sync_consumers();
  };
  // Ring entry k goes to consumer warp k % stack_consumers. An mbarrier's parity tells only
  // consecutive phases apart, so before waiting for entry k a warp waits until entry k - S, the
  // slot's previous one, has been used: then the slot's "full" barrier is in entry k's phase. (With
  // at least `stack_consumers` slots, entry k - 2S was used before this warp's previous entry was
  // copied, so that wait is within one phase too.)
  auto first_item = [&](long k) {  // the first i >= 0 with entry k + i this warp's
    return static_cast<int>(((cw - k) % stack_consumers + stack_consumers) % stack_consumers);
  };
  auto take = [&](long k, auto&& use) {  // ring entry k: wait for it, use it, give the slot back
    int const slot = static_cast<int>(k % S);
    if (k >= S) barrier_wait(empty + slot, static_cast<unsigned>((k / S - 1) & 1));
    barrier_wait(full + slot, static_cast<unsigned>((k / S) & 1));
    use(ring + static_cast<std::size_t>(slot) * s.slot_bytes);
    __syncwarp();
    if (lane == 0) barrier_arrive(empty + slot);
  };
  float* const partial = reinterpret_cast<float*>(shared + s.partial);
  float* const sums = reinterpret_cast<float*>(shared + s.sums);
  T* const act = reinterpret_cast<T*>(shared + s.act);
  T* const x_dbl = reinterpret_cast<T*>(shared + s.x_dbl);
  T* const own_u = reinterpret_cast<T*>(shared + s.own_u);
  T* const own_z = reinterpret_cast<T*>(shared + s.own_z);
  auto stage = [&](T const* from, int count) {  // a row other blocks wrote, into `act`
    constexpr int per = piece_values<T>;
    for (int i = ct; i < count / per; i += threads)
      reinterpret_cast<uint4*>(act)[i] = __ldcg(reinterpret_cast<uint4 const*>(from) + i);
    sync_consumers();
  };

  for (int l = 0; l < a.n_layer; ++l) {
    stack_layer<T, Wt> const& L = a.layers[l];
    int const region = l & 1;
    unsigned char const* const p = shared + s.params[region];
    long const base = l * per_layer;

    // 1. RMSNorm of residual + hidden into `act`, 8 features a thread at a time, all loads first
    barrier_wait(params_full + region, static_cast<unsigned>((l >> 1) & 1));
    {
      float squares = 0.0f;
      for (int e = 8 * ct; e < E; e += 8 * threads) {
        float h[8], r[8];
        l2_values<T, 8>(a.hidden + e, h);
        l2_values<float, 8>(a.residual + e, r);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          float const v = h[j] + r[j];
          sums[e + j] = v;
          squares += v * v;
        }
      }
      squares = warp_sum(squares);
      if (lane == 0) partial[cw] = squares;
      sync_consumers();
      float total = 0.0f;
      for (int w = 0; w < stack_consumers; ++w) total += partial[w];
      float const inv_rms = 1.0f / sqrtf(total / static_cast<float>(E) + a.eps);
      Wt const* const norm_weight = reinterpret_cast<Wt const*>(p + s.norm_weight);
      for (int e = ct; e < E; e += threads) act[e] = from_float<T>(sums[e] * inv_rms * to_float(norm_weight[e]));
      sync_consumers();
    }

    // 2. in_proj for the block's channels; the conv update on u's
    for (int i = first_item(base); i < 2 * n_in; i += stack_consumers) {
      bool const gate = i >= n_in;
      int const first = (gate ? D : 0) + c0 + (gate ? i - n_in : i) * in_per;
      int const rows = min(in_per, (gate ? D : 0) + c1 - first);
      float sum[stack_item_rows];
      take(base + i, [&](unsigned char const* slot) { dot_rows<T, Wt>(slot, in_bytes, act, E, rows, sum); });
      if (lane < rows) {
        int const n = first + lane;
        float out = own_sum(sum, lane);
        if (L.in_bias) out += to_float(L.in_bias[n]);
        T const v = from_float<T>(out);
        if (gate) {
          own_z[n - D - c0] = v;
        } else {
          int const c = n - c0;  // the conv update of channel n, as `norm_in_proj_conv`'s
          Wt const* filter = reinterpret_cast<Wt const*>(p + s.conv_weight) + c * W;
          T const* past = reinterpret_cast<T const*>(p + s.conv_state) + c * (W - 1);
          float acc = L.conv_bias ? to_float(reinterpret_cast<Wt const*>(p + s.conv_bias)[c]) : 0.0f;
          for (int k = 0; k + 1 < W; ++k) acc += to_float(filter[k]) * to_float(past[k]);
          acc += to_float(filter[W - 1]) * to_float(v);
          T* const history = L.conv_state + static_cast<std::size_t>(n) * (W - 1);
          for (int k = 0; k + 2 < W; ++k) history[k] = past[k + 1];
          if (W > 1) history[W - 2] = v;
          T const u = from_float<T>(detail::silu_fast(acc));
          own_u[c] = u;
          a.u[n] = u;
        }
      }
    }
    grid_sync();

    // 3. x_proj: the block's rows against the whole of u
    stage(a.u, D);
    for (int i = first_item(base + 2 * n_in); i < n_xp; i += stack_consumers) {
      int const first = k0 + i * d_per, rows = min(d_per, k1 - first);
      float sum[stack_item_rows];
      take(base + 2 * n_in + i, [&](unsigned char const* slot) { dot_rows<T, Wt>(slot, d_bytes, act, D, rows, sum); });
      if (lane < rows) a.x_dbl[first + lane] = from_float<T>(own_sum(sum, lane));
    }
    grid_sync();

    // 4. dt_proj, softplus, the state update and the gate (`dt_state_update`'s), two channels a warp
    // at once, a half-warp each: the block's channels are a chain of dependent steps per warp
    for (int e = ct; e < X; e += threads) x_dbl[e] = load_from_l2(a.x_dbl + e);
    sync_consumers();
    int const half = lane / 16, hl = lane % 16;
    for (int pair = 2 * cw; pair < nc; pair += 2 * stack_consumers) {
      bool const has = pair + half < nc;
      int const c = has ? pair + half : pair;  // a real channel's addresses; nothing stored
      Wt const* w_dt = reinterpret_cast<Wt const*>(p + s.dt_proj) + static_cast<std::size_t>(c) * R;
      float dt = 0.0f;
      for (int r = hl; r < R; r += 16) dt += to_float(w_dt[r]) * to_float(x_dbl[r]);
      dt = detail::step_size<T>(lanes_sum<16>(dt), reinterpret_cast<float const*>(p + s.dt_bias)[c]);
      float const u = to_float(own_u[c]);
      float const* A = reinterpret_cast<float const*>(p + s.A) + c * N;
      float const* h = reinterpret_cast<float const*>(p + s.ssm_state) + c * N;
      float* const h_out = L.ssm_state + static_cast<std::size_t>(c0 + c) * N;
      float out = 0.0f;
      for (int n = hl; n < N; n += 16) {
        float const next = detail::next_state(dt, A[n] * detail::log2e, h[n], dt * u, to_float(x_dbl[R + n]));
        if (has) h_out[n] = next;
        out += to_float(x_dbl[R + N + n]) * next;
      }
      out = lanes_sum<16>(out);
      if (hl == 0 && has) {
        float const skip = reinterpret_cast<float const*>(p + s.skip)[c];
        a.y[c0 + c] = from_float<T>(detail::gated_output(out, skip, u, to_float(own_z[c])));
      }
    }
    __syncwarp();
    if (lane == 0) barrier_arrive(params_empty + region);
    grid_sync();

    // 5. out_proj: the block's outputs, and residual += hidden
    stage(a.y, D);
    for (int i = first_item(base + 2 * n_in + n_xp); i < n_out; i += stack_consumers) {
      int const first = j0 + i * d_per, rows = min(d_per, j1 - first);
      float sum[stack_item_rows];
      take(base + 2 * n_in + n_xp + i,
           [&](unsigned char const* slot) { dot_rows<T, Wt>(slot, d_bytes, act, D, rows, sum); });
      if (lane < rows) {
        int const j = first + lane;
        float out = own_sum(sum, lane);
        if (L.out_bias) out += to_float(L.out_bias[j]);
        a.residual[j] = sums[j];  // residual + hidden, as phase 1 read them
        a.hidden[j] = from_float<T>(out);
      }
    }
    if (l + 1 < a.n_layer) grid_sync();
  }
#endif
}

}  // namespace kernels

/// \brief The shared memory of `mamba_stack_step` for these sizes, with the ring taking what is
/// left of `available` bytes; `slots` is 0 when fewer than `stack_consumers` fit.
/// \tparam T activation storage type. \tparam Wt weight storage type.
/// \param c the sizes. \param blocks the grid. \param available bytes a block may have.
/// \return the layout.
template <class T, class Wt>
kernels::stack_layout stack_layout_for(mamba_config const& c, int blocks, std::size_t available) {
  using kernels::stack_channel_run;
  kernels::stack_layout s{};
  std::size_t const E = static_cast<std::size_t>(c.d_model), D = static_cast<std::size_t>(c.d_inner);
  std::size_t const N = static_cast<std::size_t>(c.d_state), R = static_cast<std::size_t>(c.dt_rank);
  std::size_t const W = static_cast<std::size_t>(c.d_conv), X = R + 2 * N;
  std::size_t const runs = D / stack_channel_run;
  std::size_t const channels = (runs + static_cast<std::size_t>(blocks) - 1) / static_cast<std::size_t>(blocks) * stack_channel_run;
  std::size_t offset = 0;
  auto place = [&](std::size_t bytes, std::size_t align = 16) {
    offset = (offset + align - 1) / align * align;
    std::size_t const at = offset;
    offset += bytes;
    return static_cast<int>(at);
  };
  constexpr std::size_t bar = sizeof(std::uint64_t);
  s.full = place(kernels::stack_max_slots * bar);
  s.empty = place(kernels::stack_max_slots * bar);
  s.params_full = place(2 * bar);
  s.params_empty = place(2 * bar);
  s.partial = place(kernels::stack_consumers * sizeof(float));
  s.sums = place(E * sizeof(float));
  s.act = place(std::max(E, D) * sizeof(T));
  s.x_dbl = place(X * sizeof(T));
  s.own_u = place(channels * sizeof(T));
  s.own_z = place(channels * sizeof(T));
  std::size_t region = 0;
  auto within = [&](std::size_t bytes) {
    std::size_t const at = region;
    region += (bytes + 15) / 16 * 16;
    return static_cast<int>(at);
  };
  s.norm_weight = within(E * sizeof(Wt));
  s.conv_weight = within(channels * W * sizeof(Wt));
  s.conv_bias = within(channels * sizeof(Wt));
  s.conv_state = within(channels * (W - 1) * sizeof(T));
  s.dt_proj = within(channels * R * sizeof(Wt));
  s.dt_bias = within(channels * sizeof(float));
  s.A = within(channels * N * sizeof(float));
  s.skip = within(channels * sizeof(float));
  s.ssm_state = within(channels * N * sizeof(float));
  s.region_bytes = static_cast<int>(region);
  s.params[0] = place(region, 128);
  s.params[1] = place(region, 128);
  std::size_t const row = std::max(E, D) * sizeof(Wt);
  std::size_t const slot = std::max<std::size_t>((row + 127) / 128 * 128, 4096);
  s.ring = place(0, 128);
  std::size_t const room = available > static_cast<std::size_t>(s.ring) ? available - static_cast<std::size_t>(s.ring) : 0;
  // at least one a consumer warp (see `mamba_stack_step`): 0 when fewer fit
  std::size_t slots = std::min<std::size_t>(room / slot, kernels::stack_max_slots);
  if (slots < static_cast<std::size_t>(kernels::stack_consumers)) slots = 0;
  s.slot_bytes = static_cast<int>(slot);
  s.slots = static_cast<int>(slots);
  s.bytes = s.ring + static_cast<int>(slots * slot);
  s.channels = static_cast<int>(channels);
  return s;
}

}  // namespace cuda

/// \brief On `Kokkos::Cuda` a decoding step of one sequence through every layer is one launch of
/// `mamba_stack_step` (see the file comment).
///
/// Not yet the default: on an H200 (2.8B, bf16) a token takes 2.18 ms this way against 2.04 with
/// each block's step as its own four launches (docs/benchmarks.md says where the time goes).
/// `SSM_CUDA_STACK_STEP=1` in the environment, or `enabled = true`, turns it on.
template <>
struct mamba_stack_step_backend<Kokkos::Cuda> {
  static constexpr bool fused = true;  ///< `mamba_lm::step` asks `fuses`, then calls `run`
  /// \brief Device words the model keeps for `run`: the grid's phase counter.
  /// \tparam T activation storage type. \return 1.
  template <class T>
  static std::size_t scratch_words(mamba_config const&) {
    return 1;
  }

  /// Steps this thread has enqueued through `run` (the tests check that the kernel ran).
  static inline thread_local std::size_t runs = 0;

  /// Whether `run` may be used at all: off unless `SSM_CUDA_STACK_STEP=1` (the tests set it).
  static inline bool enabled = [] {
    char const* v = std::getenv("SSM_CUDA_STACK_STEP");
    return v && std::string(v) == "1";
  }();

  /// \brief Whether a step of `batch` sequences may be taken at all (switched on, one sequence):
  /// asked before the model gathers every block's tensors for `fuses`.
  /// \param batch B. \return true if `fuses` may say yes.
  static bool takes(std::size_t batch) { return enabled && batch == 1; }

  /// \brief Whether one launch takes this step: one sequence, at most `stack_max_layers` layers,
  /// whole 16-byte pieces and runs of 8 channels (E and D multiples of 8, every tensor 16-byte
  /// aligned), a conv of at most `max_fused_conv_width` taps, and a shared-memory layout with at
  /// least `stack_consumers` ring slots on this device.
  /// \tparam T activation storage type. \tparam Wt weight storage type. \tparam MemSpace memory space.
  /// \param c the blocks' sizes. \param layers each block's tensors (`mamba_block::step_tensors`).
  /// \return true if `run` takes it.
  template <class T, class Wt, class MemSpace>
  static bool fuses(mamba_config const& c, std::span<mamba_block_step_params<T, Wt, MemSpace> const> layers) {
    if constexpr (!cuda::gemv_types<T, Wt>) {
      return false;
    } else {
      if (!enabled || layers.empty() || layers.size() > static_cast<std::size_t>(cuda::kernels::stack_max_layers))
        return false;
      if (c.d_model % 8 != 0 || c.d_inner % 8 != 0 || c.d_conv > cuda::kernels::max_fused_conv_width) return false;
      auto const& first = layers.front();
      if (first.mixer.batch != 1 || !cuda::aligned(first.hidden, 16) || !cuda::aligned(first.residual, 16) ||
          first.out != first.hidden || !cuda::aligned(first.mixer.xc, 16) || !cuda::aligned(first.mixer.y, 16))
        return false;
      for (auto const& p : layers) {
        auto const& w = *p.mixer.weights;
        bool const ok = p.hidden == first.hidden && p.residual == first.residual && p.out == first.out &&
                        cuda::aligned(w.in_proj_weight.data(), 16) && cuda::aligned(w.out_proj_weight.data(), 16) &&
                        cuda::aligned(w.x_proj_weight.data(), 16) && cuda::aligned(w.dt_proj_weight.data(), 16) &&
                        cuda::aligned(w.conv1d_weight.data(), 16) &&
                        (!c.conv_bias || cuda::aligned(w.conv1d_bias.data(), 16)) &&
                        cuda::aligned(w.dt_proj_bias.data(), 16) && cuda::aligned(w.A.data(), 16) &&
                        cuda::aligned(w.D.data(), 16) && cuda::aligned(p.mixer.conv_state, 16) &&
                        cuda::aligned(p.mixer.ssm_state, 16);
        if (!ok) return false;
      }
      return plan<T, Wt>(c).s.slots > 0;
    }
  }

  /// \brief Enqueue the step on `space`'s stream: the counter's reset, then the launch.
  /// \tparam T activation storage type. \tparam Wt weight storage type. \tparam MemSpace memory space.
  /// \param space the execution space instance. \param c the blocks' sizes.
  /// \param layers each block's tensors; `fuses(c, layers)` must hold.
  /// \param scratch `scratch_words` words of device memory, the model's.
  template <class T, class Wt, class MemSpace>
  static void run(Kokkos::Cuda const& space, mamba_config const& c,
                  std::span<mamba_block_step_params<T, Wt, MemSpace> const> layers, std::uint32_t* scratch) {
    if constexpr (cuda::gemv_types<T, Wt>) {
      launch_plan const& pl = plan<T, Wt>(c);
      // ~14 KB of pointers: built on the host and passed by value (CUDA 12.1+ takes 32 KB of parameters)
      auto const args = std::make_unique<cuda::kernels::stack_args<T, Wt>>();
      for (std::size_t i = 0; i < layers.size(); ++i) {
        auto const& p = layers[i];
        auto const& w = *p.mixer.weights;
        args->layers[i] = {p.norm_weight,
                           w.in_proj_weight.data(),
                           c.bias ? w.in_proj_bias.data() : nullptr,
                           w.conv1d_weight.data(),
                           c.conv_bias ? w.conv1d_bias.data() : nullptr,
                           w.x_proj_weight.data(),
                           w.dt_proj_weight.data(),
                           w.dt_proj_bias.data(),
                           w.A.data(),
                           w.D.data(),
                           w.out_proj_weight.data(),
                           c.bias ? w.out_proj_bias.data() : nullptr,
                           p.mixer.conv_state,
                           p.mixer.ssm_state};
      }
      auto const& first = layers.front();
      args->hidden = first.out;
      args->residual = first.residual;
      args->u = first.mixer.xc;
      args->x_dbl = first.mixer.x_dbl;
      args->y = first.mixer.y;
      args->counter = reinterpret_cast<unsigned*>(scratch);
      args->n_layer = static_cast<int>(layers.size());
      args->E = c.d_model, args->D = c.d_inner, args->N = c.d_state, args->R = c.dt_rank, args->W = c.d_conv;
      args->eps = c.norm_eps;
      args->s = pl.s;
      cudaStream_t const stream = cuda::stream(space);
      cuda::check(cudaMemsetAsync(scratch, 0, sizeof(std::uint32_t), stream), "ssm::mamba_lm::step (CUDA): counter");
      cudaLaunchAttribute attribute{};
      attribute.id = cudaLaunchAttributeCooperative;
      attribute.val.cooperative = 1;
      cudaLaunchConfig_t config{};
      config.gridDim = dim3(static_cast<unsigned>(pl.blocks));
      config.blockDim = dim3(cuda::kernels::stack_threads);
      config.dynamicSmemBytes = static_cast<std::size_t>(pl.s.bytes);
      config.stream = stream;
      config.attrs = &attribute;
      config.numAttrs = 1;
      cuda::check(cudaLaunchKernelEx(&config, cuda::kernels::mamba_stack_step<T, Wt>, *args),
                  "ssm::mamba_lm::step (CUDA): mamba_stack_step");
      ++runs;
    }
  }

 private:
  struct launch_plan {
    int device = -1, blocks = 0;
    mamba_config config;
    cuda::kernels::stack_layout s{};
  };

  static bool same(mamba_config const& a, mamba_config const& b) {
    return a.d_model == b.d_model && a.d_inner == b.d_inner && a.d_state == b.d_state && a.d_conv == b.d_conv &&
           a.dt_rank == b.dt_rank;
  }

  /// The grid and layout for this device and these sizes (a few driver queries, made once per
  /// device and size, outside any capture since the first step runs eagerly).
  template <class T, class Wt>
  static launch_plan const& plan(mamba_config const& c) {
    thread_local launch_plan p;
    int device = 0;
    cuda::check(cudaGetDevice(&device), "ssm::mamba_lm::step (CUDA): cudaGetDevice");
    if (p.device == device && same(p.config, c)) return p;
    int available = 0;
    cuda::check(cudaDeviceGetAttribute(&available, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
                "ssm::mamba_lm::step (CUDA): shared memory per block");
    int const blocks = cuda::multiprocessors();
    auto const s = cuda::stack_layout_for<T, Wt>(c, blocks, static_cast<std::size_t>(available));
    p = {device, blocks, c, s};
    auto const kernel = cuda::kernels::mamba_stack_step<T, Wt>;
    if (!cuda::runs_hopper_code(kernel)) p.s.slots = 0;  // Hopper's copy engine and barriers
    if (p.s.slots == 0) return p;
    cuda::check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, s.bytes),
                "ssm::mamba_lm::step (CUDA): shared memory of mamba_stack_step");
    int resident = 0;
    cuda::check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, cuda::kernels::stack_threads, s.bytes),
                "ssm::mamba_lm::step (CUDA): occupancy of mamba_stack_step");
    if (resident < 1) p.s.slots = 0;
    return p;
  }
};

}  // namespace ssm
