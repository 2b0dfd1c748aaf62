#pragma once
/// \file
/// \brief The selective scan on NVIDIA GPUs: a hand-written CUDA kernel that takes over from the
/// portable Kokkos path through `selective_scan_backend<Kokkos::Cuda>`.
///
/// Included by `ssm/scan/selective_scan.hpp` when Kokkos has its CUDA backend. Same semantics as
/// `ssm::reference::selective_scan` (mamba_ssm's `selective_scan_fwd`); every tensor may be
/// strided. The kernel is tuned for the layout the Mamba block produces: u, delta, z and out
/// token-major (the stride of d is 1), so that the 32 lanes of a warp, one channel each, read and
/// write whole rows of a token (64 bytes in 16-bit types); B and C columns of x_proj's output.
///
/// ## The algorithm
///
/// A warp owns a tile of 32 channels (one per lane) and a slice of 16 states, which every lane
/// keeps in registers, and walks the tokens of its piece of the sequence in steps of
/// `scan_tokens` = 4. Per token and state:
/// \f[
///   a = 2^{\Delta\, A_n \log_2 e}, \qquad h_n \leftarrow a\, h_n + (\Delta u)\, B_n, \qquad
///   y \mathrel{+}= C_n h_n,
/// \f]
/// with the exponential on the special-function unit (`ex2.approx`; \f$\log_2 e\f$ is folded into
/// A once). B and C of a token are the same for every channel of a group, so each warp stages the
/// step's B and C in shared memory as floats and every lane reads them as broadcasts.
///
/// Each thread reads through pointers it advances token by token (`token_streams`): no address
/// arithmetic from the strides per load and no branch around a load, since every pointer is kept
/// inside its tensor (inactive lanes read channel D - 1, tokens past the end re-read the last one,
/// and their results are dropped). Two register buffers take the steps in turn, each loaded while
/// the other is processed. In token-major layouts (the Mamba block's) the warp also asks L2 for
/// the step two steps beyond the one it loads, with one `prefetch.global.L2` per step whose 32
/// lanes cover the step's 4 tensors x 4 tokens x 2 sectors, so that the loads find their data in
/// L2, whose latency the two buffers hide, instead of waiting for DRAM. A step runs in three
/// phases, each one basic block over its 4 tokens so that the compiler interleaves their
/// independent chains (`scan_step`): the 4 step sizes (softplus), the states and \f$C^\top h\f$
/// (in two chains of additions), then the 4 outputs (skip, gate, stores).
///
/// One thread block holds `scan_config::tiles_per_block` tiles (4 by default; one warp each, of
/// any batch) for N <= 16, or one tile in ceil(N / 16) warps, one per slice (the slices' partial
/// outputs summed through shared memory). The kernel has an instantiation for each: for N <= 16
/// at most 4 warps per block and 3 resident blocks per SM (`scan_narrow_blocks`), which leaves
/// 168 registers per thread, enough for the loop (167) not to spill, and the prefetch; for
/// N > 16 up to 16 warps per block at 128 registers, without the prefetch.
///
/// When the (batch, tile) pairs alone cannot fill the GPU (B = 1 at D = 5120: 160 warps for 132
/// SMs), the sequence is cut into a head and S pieces, and runs in a thread-block cluster of S
/// blocks (Hopper; S up to 16):
/// 1. block 0 runs the head from the initial state, with its outputs; meanwhile every other block
///    q runs piece q (1 to S - 1) from a zero state without outputs, giving per state the piece's
///    end state \f$h^0_n\f$ and, from the sum of its step sizes, its decay
///    \f$P_n = \prod_t a_{t,n} = 2^{A_n \log_2 e \sum_t \Delta_t}\f$ (one exponential per state
///    for the whole piece);
/// 2. the cluster scans these pairs, \f$(P, h) \circ (P', h') = (P P', P' h + h')\f$, starting
///    from block 0's (0, head's end state), through distributed shared memory, each block folding
///    1/S of each tile's (state, channel) pairs and writing into block r the state entering piece
///    r + 1;
/// 3. block r runs piece r + 1 from its true incoming state, with outputs; the last block's end
///    state is the final state.
/// GPUs without clusters (before Hopper) cut sequences too (`scan_config::through_memory`): the S
/// blocks of a sequence's tiles are consecutive blocks of the grid that hand each other the pairs
/// and the entering states through global memory (scratch the launch allocates and frees on its
/// stream) and meet at counters of their own (`meet_blocks`) where a cluster would meet at its
/// barrier. The whole grid must then be resident at once; the launcher checks it.
///
/// The first pass (no C, no outputs) costs about 0.6 of the second in instructions and about 0.7
/// to 0.8 in time, so the head is 0.7 of a piece (`head_tenths`): while the other blocks make
/// their first passes, block 0, which has no first pass to make, does useful work. A sequence of
/// L tokens then takes about the time of a second pass over \f$1.7 L / (S + 0.7)\f$ tokens,
/// against \f$1.7 L / S\f$ with S equal pieces, whose last block idles in the first phase.
///
/// `selective_scan_backend<Kokkos::Cuda>` picks S from the sizes and the device
/// (`choose_scan_config`), and falls back to the portable path where the groups of B and C would
/// split a tile of 32 channels (G > 1 with D / G not a multiple of 32).
///
/// ## Performance
///
/// Measured on an H200 (132 SMs) with `bench_cuda_scan`: bf16, D = 5120, L = 2048, N = 16, with z
/// gate, D skip, delta bias and softplus, in the Mamba block's token-major layout; the median of
/// 50 runs. Before this design, then (in one run) with 128 registers and no prefetch, and now:
///
/// | B  | before               | 128 registers        | now                                       | of 4.3 TB/s |
/// |----|----------------------|----------------------|-------------------------------------------|-------------|
/// | 1  | 0.309 ms (16 pieces) | 0.191 ms (8 pieces)  | 0.180 ms (8 pieces, chosen; 16: 0.178 ms) | 11 %        |
/// | 8  | 0.981 ms (1 piece)   | 0.808 ms (1 piece)   | 0.715 ms (1 piece)                        | 22 %        |
/// | 64 | 5.76 ms (1 piece)    | 4.74 ms (1 piece)    | 4.45 ms (1 piece)                         | 28 %        |
///
/// With the head run by block 0 during the first passes (later, in one run): B = 1 0.164-0.166 ms
/// in 8 pieces (0.174-0.178 with equal pieces), B = 2 0.296 ms in 4 (0.338).
///
/// Built for sm_80 and run on the same H200, so without clusters (three runs): B = 1 0.215-0.236
/// ms as the launcher chooses (8 pieces through memory) against 0.405-0.406 in one piece, B = 2
/// 0.342-0.363 (4 pieces) against 0.404-0.406; B = 4 is best in one piece (0.513; 2 pieces through
/// memory 0.562-0.575). The same pieces in clusters take 0.165, 0.289 and 0.497: meeting through L2, and
/// wherever the dispatcher puts the blocks of a group, costs the rest (`through_memory_cost`).
///
/// Still far from the DRAM bandwidth (B = 64 would take about 1.3 ms at 4.3 TB/s): the kernel is
/// bound by instruction issue and the special-function unit, and at small B by latency. The
/// compiled loop of the second pass spends about 151 instructions per token and warp: 88 for the
/// 16 states (per state one exponential, two multiplications, two FMAs and half a shared-memory
/// load), about 20 for softplus and the gate (three more special-function operations), the rest
/// for loads, pointers, the prefetch, stores and conversions. At B = 64 (12 resident warps per
/// SM) that is about 222 cycles (at 1.98 GHz) per token and warp on each of the SM's four
/// schedulers: 0.68 instructions per cycle, with the special-function unit (19 operations of 8
/// cycles per token) busy about 68 % of the time. With one warp per scheduler (B = 1 in one piece:
/// 0.405 ms, 387 cycles per token) the time goes into latency. Nsight Compute's samples of B = 1
/// in 6 pieces (2 warps per scheduler) find the warps issuing 28 % of the time, waiting on
/// fixed-latency dependencies 24 % (two fifths of it at the exponentials), on loads 12 % and at
/// the cluster barrier 10 %.
///
/// The two changes from the 128-register kernel, each measured in one run against the kernel with
/// both: 128 registers (4 blocks per SM, the loop spilling a just-loaded value every step, and
/// so waiting there for the load: 23 % of the samples of B = 1 in one piece waited on loads) took
/// 4.55, 0.773 and 0.183 ms at B = 64, 8 and 1 (8 pieces), against 4.44, 0.710 and 0.173 ms; no
/// prefetch took 4.67, 0.735 and 0.178 ms.
///
/// Tried, measured in the same benchmark run, and dropped:
/// - Fewer registers for more resident warps: 2 tokens per step with the registers capped at 96
///   (20 warps per SM) or 80 (24 warps per SM, a few spills): B = 64 in 5.17 and 6.31 ms,
///   B = 8 in 1.01 and 1.46 ms, B = 1 in 0.222 and 0.213 ms. More warps did not make up for the
///   loop overhead of shorter steps and the spills.
/// - 4 of the 16 exponentials on the FMA pipe (a degree-6 polynomial and exponent-bit scaling,
///   11 instructions instead of one): B = 64 in 5.99 ms, B = 8 in 1.04 ms, B = 1 in 0.224 ms. The
///   special-function unit is not the limit; the extra instructions are.
/// - Cutting sequences into 2 pieces at B = 8 and 64 (1.23 and 8.37 ms), and 1 tile per block with
///   clusters at B = 1 (0.232 ms in 16 pieces): clusters of one-warp blocks fit badly on the SMs.
///   2 and 4 tiles per block are within 1 % of each other everywhere.
/// - Any number of pieces from 2 to 16 (168 registers): at B = 1 in blocks of 4 tiles, 5 and 7
///   pieces took 0.198 ms, 6 pieces 0.226 ms, 9 to 15 pieces 0.191 to 0.228 ms, against 0.173 ms
///   in 8 (in blocks of 1 tile: 6 pieces 0.167 ms, 8 pieces 0.217 ms). How clusters of other sizes
///   land on the SMs is erratic, and none won reliably.
/// - Prefetching into L1 instead of L2 (2 or 3 steps ahead), or into L2 4 steps ahead: within 2 %
///   of 2 steps into L2 everywhere (B = 1: 0.176 to 0.181 ms, B = 8: 0.713 to 0.723 ms, B = 64:
///   4.44 to 4.47 ms).
///
/// Next steps, untried: at B = 64 issue and the special-function unit are about equally busy, so
/// a gain needs fewer of both per token, e.g. two channels per thread (one 32-bit load for both in
/// token-major layouts; the shared-memory reads of B and C, the pointer updates and the loop
/// shared by both) with 8 states each to fit the registers, a channel's two halves of states in
/// lanes l and l + 16, adding their partial outputs by a shuffle and sharing softplus and the gate
/// by tokens; and for B = 1 a cheaper first pass: with 2 or 3 warps per scheduler it costs about
/// 0.8 of the second.
///
/// ## Accuracy
///
/// fp32 throughout, with approximate transcendentals: `ex2.approx.ftz` (relative error about
/// \f$2^{-22}\f$) for every exponential, a degree-9 polynomial for \f$\log(1 + t)\f$ in softplus
/// (relative error below \f$1.2 \cdot 10^{-7}\f$) and `__fdividef` in silu; split sequences
/// reassociate the recurrence at the pieces' boundaries and take a piece's decay as one
/// exponential of its summed step sizes (rounding of the sum: about \f$2^{-24}\f$ relative per
/// token, well inside the per-step budget). Results agree with the reference to a
/// few units of \f$2^{-22}\f$ relative per step, before rounding to the storage type.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <mutex>
#include <type_traits>

#include <Kokkos_Core.hpp>

#include <ssm/core/cuda.hpp>
#include <ssm/core/cuda/cluster.cuh>
#include <ssm/core/cuda/copy_engine.cuh>
#include <ssm/core/cuda/fast_math.cuh>
#include <ssm/core/dtype.hpp>
#include <ssm/core/error.hpp>
#include <ssm/core/views.hpp>
#include <ssm/scan/selective_scan.hpp>

namespace ssm::cuda::detail {

/// \brief Channels per warp, one per lane.
inline constexpr int scan_tile = 32;
/// \brief States per thread: a slice of the N states of a channel.
inline constexpr int scan_slice = 16;
/// \brief Tokens per step: each step is loaded while the one before is processed.
inline constexpr int scan_tokens = 4;
/// \brief Tiles of 32 channels per thread block for N <= 16 (one warp each), the default of
/// `scan_config::tiles_per_block`.
inline constexpr int scan_tiles_per_block = 4;
/// \brief The most pieces a sequence is cut into: blocks per cluster (16 is beyond the portable 8,
/// and needs the non-portable cluster size that Hopper allows).
inline constexpr int max_scan_pieces = 16;
/// \brief Resident blocks per SM (of `scan_tiles_per_block` warps) that the kernel for N <= 16 is
/// compiled for: 168 registers per thread, which its loop uses (167) without spilling. With 4
/// blocks, at 128 registers, it spilled a freshly loaded value every step, and so waited for the
/// load there.
inline constexpr int scan_narrow_blocks = 3;
/// \brief The cost of the first pass over a piece relative to the second (no C, no outputs, no
/// products of decays), for the launcher's model.
inline constexpr double first_pass_cost = 0.6;
/// \brief The head of a sequence cut into S pieces, in tenths of a piece: block 0 runs it with its
/// outputs while the other blocks make their first passes, which take about 0.7 of a second pass
/// in time (0.6 in instructions).
inline constexpr int head_tenths = 7;

/// \brief The launcher's model counts pieces whose blocks meet through memory (GPUs without
/// clusters) at this much the time of the same pieces in clusters. On an H200, built for sm_80
/// (ms, two rounds): B = 1 in 8 pieces 0.224-0.236 through memory against 0.164-0.165 in
/// clusters and 0.406 in one piece; B = 2 in 4 pieces 0.352-0.363 against 0.286-0.289 and 0.406;
/// B = 4 in 2 pieces 0.562-0.575 against 0.497-0.501 and 0.513. The model, which reads 2 pieces
/// at B = 4 as 0.89 of one, must then keep one piece there.
inline constexpr double through_memory_cost = 1.2;

/// \brief A strided tensor as the kernel sees it: a pointer and strides in elements.
/// \tparam V element type (`const` for inputs).
/// \tparam Rank number of dimensions.
template <class V, int Rank>
struct strided_tensor {
  V* data = nullptr;               ///< first element; null for an absent optional tensor
  std::int64_t stride[Rank] = {};  ///< stride of each dimension, in elements
};

/// \brief The pointer and strides of a Kokkos view; null data for an absent (not `given`) view.
/// \tparam Rank the view's rank.
/// \tparam View a Kokkos view type.
/// \param v the view.
/// \return `v`'s data and strides.
template <int Rank, class View>
strided_tensor<typename View::value_type, Rank> tensor_of(View const& v) {
  strided_tensor<typename View::value_type, Rank> t;
  if (!given(v)) return t;
  t.data = v.data();
  for (int r = 0; r < Rank; ++r) t.stride[r] = static_cast<std::int64_t>(v.stride(static_cast<std::size_t>(r)));
  return t;
}

/// \brief The arguments of the kernel: the tensors of `selective_scan_params`, as pointers and
/// strides, and the sizes.
/// \tparam T storage type of activations.
template <class T>
struct scan_args {
  strided_tensor<const T, 3> u;                  ///< (B, D, L) input
  strided_tensor<const T, 3> delta;              ///< (B, D, L) step before bias and softplus
  strided_tensor<const T, 3> z;                  ///< (B, D, L) gate; null if absent
  strided_tensor<T, 3> out;                      ///< (B, D, L) output
  strided_tensor<const float, 2> A;              ///< (D, N)
  strided_tensor<const T, 4> B;                  ///< (B, G, N, L)
  strided_tensor<const T, 4> C;                  ///< (B, G, N, L)
  strided_tensor<const float, 1> D;              ///< (D) skip; null if absent
  strided_tensor<const float, 1> delta_bias;     ///< (D); null if absent
  strided_tensor<const float, 3> initial_state;  ///< (B, D, N); null if absent
  strided_tensor<float, 3> final_state;          ///< (B, D, N); null if absent; may alias initial_state
  int batch = 0;                                 ///< B
  int channels = 0;                              ///< D
  int length = 0;                                ///< L
  int state = 0;                                 ///< N
  int channels_per_group = 0;                    ///< D / G
  bool softplus = false;                         ///< apply softplus to delta + bias
  /// Pieces a sequence is cut into whose blocks meet through global memory instead of a cluster
  /// (`scan_config::through_memory`), or 0; then `pairs`, `entering` and `meetings` are scratch:
  /// per (cluster-sized group of blocks, piece, tile of the block) 16 x 32 (P, h) pairs and
  /// entering states, and two zero words per group.
  int memory_pieces = 0;
  float2* pairs = nullptr;
  float* entering = nullptr;
  unsigned* meetings = nullptr;
};

/// \brief The kernel's arguments from checked parameters.
/// \tparam T storage type of activations.
/// \tparam MemSpace a memory space the GPU can access.
/// \param p the tensors and flags: `u`, `delta`, `z`, `out` (B, D, L); `A` (D, N); `B`, `C`
///          (B, G, N, L); `D`, `delta_bias` (D); `initial_state`, `final_state` (B, D, N).
/// \param s their sizes.
/// \return pointers, strides and sizes.
template <class T, class MemSpace>
scan_args<T> make_scan_args(selective_scan_params<T, MemSpace> const& p, scan_shape const& s) {
  scan_args<T> a;
  a.u = tensor_of<3>(p.u);
  a.delta = tensor_of<3>(p.delta);
  a.z = tensor_of<3>(p.z);
  a.out = tensor_of<3>(p.out);
  a.A = tensor_of<2>(p.A);
  a.B = tensor_of<4>(p.B);
  a.C = tensor_of<4>(p.C);
  a.D = tensor_of<1>(p.D);
  a.delta_bias = tensor_of<1>(p.delta_bias);
  a.initial_state = tensor_of<3>(p.initial_state);
  a.final_state = tensor_of<3>(p.final_state);
  a.batch = static_cast<int>(s.batch);
  a.channels = static_cast<int>(s.channels);
  a.length = static_cast<int>(s.length);
  a.state = static_cast<int>(s.state);
  a.channels_per_group = static_cast<int>(s.channels / s.groups);
  a.softplus = p.delta_softplus;
  return a;
}

/// \brief Read-only load through the non-coherent cache.
/// \param p the element. \return its value.
__device__ __forceinline__ float load(float const* p) { return __ldg(p); }
/// \brief Read-only load of a bfloat16 (its 16 bits) through the non-coherent cache.
/// \param p the element. \return its value.
__device__ __forceinline__ bf16 load(bf16 const* p) { return bf16{__ldg(&p->bits)}; }
/// \brief Read-only load of a binary16 (its 16 bits) through the non-coherent cache.
/// \param p the element. \return its value.
__device__ __forceinline__ f16 load(f16 const* p) { return f16{__ldg(&p->bits)}; }

/// \brief `float` to `float`.
/// \param x the value. \return `x`.
__device__ __forceinline__ float widen(float x) { return x; }
/// \brief bfloat16 to `float`, exact: the bits shifted into the top half.
/// \param x the value. \return `x` as a float.
__device__ __forceinline__ float widen(bf16 x) { return __uint_as_float(static_cast<unsigned>(x.bits) << 16); }
/// \brief binary16 to `float`, exact, with the hardware conversion.
/// \param x the value. \return `x` as a float.
__device__ __forceinline__ float widen(f16 x) { return __half2float(__ushort_as_half(x.bits)); }

/// \brief Round a `float` to the storage type, to nearest even, with the hardware conversions.
/// \tparam T `float`, `ssm::f16` or `ssm::bf16`.
/// \param x the value. \return `x` rounded.
template <class T>
__device__ __forceinline__ T narrow(float x) {
  if constexpr (std::is_same_v<T, bf16>) return bf16{__bfloat16_as_ushort(__float2bfloat16_rn(x))};
  else if constexpr (std::is_same_v<T, f16>) return f16{__half_as_ushort(__float2half_rn(x))};
  else return x;
}

/// \brief Ask for the L2 sector holding `p` (`prefetch.global.L2`): one instruction, no register,
/// nothing to wait for.
/// \param p an address inside a tensor.
__device__ __forceinline__ void prefetch_l2(void const* p) { asm volatile("prefetch.global.L2 [%0];" : : "l"(p)); }

/// \brief What one thread reads for `Tokens` consecutive tokens of its channel, kept in storage
/// type so that the next step can be loaded while this one is processed: u, delta, z, and its
/// share of the tokens' B and C of the warp's slice of states: lane j reads state j % 16 of B
/// (j < 16) or of C (j >= 16).
/// \tparam T storage type.
/// \tparam Tokens number of tokens.
template <class T, int Tokens>
struct token_inputs {
  T u[Tokens];      ///< (Tokens) u of the thread's channel
  T delta[Tokens];  ///< (Tokens) delta of the thread's channel
  T z[Tokens];      ///< (Tokens) z of the thread's channel (anything if absent)
  T bc[Tokens];     ///< (Tokens) the lane's share of B and C
};

/// \brief Where a thread reads: its batch, channel (clamped into range), group and slice.
struct thread_place {
  int b;        ///< batch
  int d0;       ///< first channel of the tile
  int d;        ///< channel of the lane, clamped to D - 1 for addressing
  bool active;  ///< the lane's channel exists (d < D)
  int g;        ///< group of B and C: the same for the whole tile
  int n0;       ///< first state of the thread's slice
  int slice;    ///< the warp's slice of states, n0 / 16
  int slices;   ///< slices of the tile (warps that share its channels), ceil(N / 16)
  bool state_ok;  ///< the lane's share of B and C, state n0 + lane % 16, exists (< N)
  unsigned owns;  ///< bit t: the warp stores token t of a step (t % slices == slice), t < 4
};

/// \brief The tokens of a step whose outputs a slice stores: token t by slice t % slices.
/// \param slice the warp's slice. \param slices the tile's slices.
/// \return bit t set for the slice's tokens, t < `scan_tokens`.
__device__ __forceinline__ unsigned owned_tokens(int slice, int slices) {
  unsigned owns = 0;
  for (int t = 0; t < scan_tokens; ++t)
    if (t % slices == slice) owns |= 1u << t;
  return owns;
}

/// \brief A thread's read and write positions, advanced token by token: every load is one
/// instruction from a pointer and one 64-bit add, with no branch. Every pointer stays inside its
/// tensor: an inactive lane reads channel D - 1 (`thread_place::d`), states beyond N read state 0
/// (zeroed when staged), tokens past the end re-read the last token, and an absent z reads u.
///
/// In token-major layouts (the stride of d, and of n in B and C, is 1) the warp also asks L2 for
/// the step two steps beyond the one it loads, one instruction per step: lane 8q + 2t + h takes
/// tensor q (u, delta, z, then B for h = 0 and C for h = 1) at token t of that step, at channel
/// d0 + 16 h (the two 32-byte sectors of a 16-bit row of the tile). The loads then find their
/// data in L2, whose latency the register double buffer hides, instead of waiting for DRAM.
/// \tparam T storage type.
template <class T>
struct token_streams {
  T const* u;                 ///< u at token `next`
  T const* delta;             ///< delta at token `next`
  T const* z;                 ///< z at token `next` (u if absent)
  T const* bc;                ///< the lane's B or C at token `next`
  T* out;                     ///< out at the next token to store
  T const* ahead;             ///< the lane's share of the step to prefetch, at token `ahead_token` (< L)
  std::int64_t ahead_stride;  ///< the stride of tokens in the prefetched tensor
  int ahead_token;            ///< the token of `ahead`; L or beyond: nothing more to prefetch
  int next;                   ///< the next token to load
};

/// \brief A thread's streams from token `l` on (l < L).
/// \tparam Prefetch whether to prefetch (in token-major layouts); else `ahead` is unused.
/// \tparam T storage type.
/// \param a the kernel arguments. \param at the thread's place. \param l the first token.
/// \return the pointers.
template <bool Prefetch, class T>
__device__ __forceinline__ token_streams<T> streams_at(scan_args<T> const& a, thread_place const& at, int l) {
  int const lane = static_cast<int>(threadIdx.x) % scan_tile;
  auto at_token = [&](auto const& x, std::int64_t bd, std::int64_t stride) { return x.data + bd + l * stride; };
  token_streams<T> s;
  s.u = at_token(a.u, at.b * a.u.stride[0] + at.d * a.u.stride[1], a.u.stride[2]);
  s.delta = at_token(a.delta, at.b * a.delta.stride[0] + at.d * a.delta.stride[1], a.delta.stride[2]);
  s.z = a.z.data ? at_token(a.z, at.b * a.z.stride[0] + at.d * a.z.stride[1], a.z.stride[2]) : s.u;
  s.out = at_token(a.out, at.b * a.out.stride[0] + at.d * a.out.stride[1], a.out.stride[2]);
  // B for the first half of the lanes, C for the second, chosen field by field: a reference to
  // either tensor would make the compiler copy the kernel arguments to local memory
  int const n = at.state_ok ? at.n0 + lane % scan_slice : 0;
  s.bc = lane < scan_slice ? a.B.data + (at.b * a.B.stride[0] + at.g * a.B.stride[1] + n * a.B.stride[2] +
                                         l * a.B.stride[3])
                           : a.C.data + (at.b * a.C.stride[0] + at.g * a.C.stride[1] + n * a.C.stride[2] +
                                         l * a.C.stride[3]);
  s.next = l;
  s.ahead = s.u, s.ahead_stride = 0, s.ahead_token = a.length;  // no prefetch
  if constexpr (Prefetch) {
    static_assert(scan_tokens == 4, "the prefetch maps the 32 lanes onto 4 tensors x 4 tokens x 2 halves");
    bool const rows = a.u.stride[1] == 1 && a.delta.stride[1] == 1 && (!a.z.data || a.z.stride[1] == 1) &&
                      a.B.stride[2] == 1 && a.C.stride[2] == 1;
    int const q = lane / 8, half = lane % 2;
    int const ahead = l + 2 * scan_tokens + lane % 8 / 2, la = min(ahead, a.length - 1);
    std::int64_t const ch = min(at.d0 + half * (scan_tile / 2), a.channels - 1);
    // u, delta, z (u if absent) at channel ch, or B or C at the slice's first state; token la
    auto row = [&](auto const& x) { return x.data + (at.b * x.stride[0] + ch * x.stride[1] + la * x.stride[2]); };
    auto state_row = [&](auto const& x) {
      return x.data + (at.b * x.stride[0] + at.g * x.stride[1] + at.n0 * x.stride[2] + la * x.stride[3]);
    };
    if (q == 0 || (q == 2 && !a.z.data)) s.ahead = row(a.u), s.ahead_stride = a.u.stride[2];
    else if (q == 1) s.ahead = row(a.delta), s.ahead_stride = a.delta.stride[2];
    else if (q == 2) s.ahead = row(a.z), s.ahead_stride = a.z.stride[2];
    else if (half == 0) s.ahead = state_row(a.B), s.ahead_stride = a.B.stride[3];
    else s.ahead = state_row(a.C), s.ahead_stride = a.C.stride[3];
    if (rows) s.ahead_token = ahead;
  }
  return s;
}

/// \brief Load the next `Tokens` tokens and advance the streams; the position stops at the last
/// token of the sequence, which tokens past the end re-read (their step size is zeroed, and
/// their outputs are not stored).
/// With `Prefetch`, also asks L2 for the lane's share of the step two steps further on.
/// \tparam Tokens number of tokens.
/// \tparam Prefetch whether to prefetch.
/// \tparam T storage type.
/// \param a the kernel arguments. \param s (in, out) the streams. \param in (out) the values.
template <int Tokens, bool Prefetch, class T>
__device__ __forceinline__ void load_tokens(scan_args<T> const& a, token_streams<T>& s, token_inputs<T, Tokens>& in) {
  std::int64_t const bc_stride = static_cast<int>(threadIdx.x) % scan_tile < scan_slice ? a.B.stride[3] : a.C.stride[3];
  if constexpr (Prefetch) {
    if (s.ahead_token < a.length) prefetch_l2(s.ahead);
    s.ahead_token += Tokens;
    if (s.ahead_token < a.length) s.ahead += Tokens * s.ahead_stride;  // stays inside the tensor
  }
  if (s.next + Tokens < a.length) {  // the whole step and the token after it exist: no checks
#pragma unroll
    for (int t = 0; t < Tokens; ++t) {
      in.u[t] = load(s.u);
      in.delta[t] = load(s.delta);
      in.z[t] = load(s.z);
      in.bc[t] = load(s.bc);
      s.u += a.u.stride[2];
      s.delta += a.delta.stride[2];
      s.z += a.z.stride[2];
      s.bc += bc_stride;
    }
    s.next += Tokens;
    return;
  }
#pragma unroll
  for (int t = 0; t < Tokens; ++t) {
    in.u[t] = load(s.u);
    in.delta[t] = load(s.delta);
    in.z[t] = load(s.z);
    in.bc[t] = load(s.bc);
    if (s.next + 1 < a.length) {  // the same for the whole warp
      s.u += a.u.stride[2];
      s.delta += a.delta.stride[2];
      s.z += a.z.stride[2];  // 0 if absent
      s.bc += bc_stride;
      ++s.next;
    }
  }
}

/// \brief Put the warp's share of a step's B and C into its staging area, as floats: row t of
/// 32 holds B_0..B_15 then C_0..C_15 of token t, zero for states beyond N. Callers order it with
/// the warp's reads by `__syncwarp`.
/// \tparam Tokens number of tokens.
/// \tparam T storage type.
/// \param in the loaded values. \param state_ok the lane's state exists.
/// \param staged the warp's staging area (`Tokens` x 32 floats).
template <int Tokens, class T>
__device__ __forceinline__ void stage(token_inputs<T, Tokens> const& in, bool state_ok, float* staged) {
  int const lane = static_cast<int>(threadIdx.x) % scan_tile;
#pragma unroll
  for (int t = 0; t < Tokens; ++t) staged[t * scan_tile + lane] = state_ok ? widen(in.bc[t]) : 0.0f;
}

/// \brief B and C of states 4q..4q+3 of staged token t, as broadcasts from shared memory.
/// \param staged the warp's staging area. \param t the token in the step. \param q the group of four states.
/// \param Bv (out) the four B. \param Cv (out) the four C.
__device__ __forceinline__ void staged_bc(float const* staged, int t, int q, float (&Bv)[4], float (&Cv)[4]) {
  float4 const Bq = reinterpret_cast<float4 const*>(staged + t * scan_tile)[q];
  float4 const Cq = reinterpret_cast<float4 const*>(staged + t * scan_tile)[scan_slice / 4 + q];
  Bv[0] = Bq.x, Bv[1] = Bq.y, Bv[2] = Bq.z, Bv[3] = Bq.w;
  Cv[0] = Cq.x, Cv[1] = Cq.y, Cv[2] = Cq.z, Cv[3] = Cq.w;
}

/// \brief Per-channel constants of a thread: \f$A \log_2 e\f$ of its slice, delta bias and skip.
struct channel_constants {
  float A2[scan_slice];  ///< (16) \f$A_{d, n_0 + k} \log_2 e\f$, zero beyond N or D
  float bias;            ///< delta_bias(d), or 0
  float skip;            ///< D(d), or 0
};

/// \brief Read a thread's channel constants.
/// \tparam T storage type.
/// \param a the kernel arguments.
/// \param at the thread's place.
/// \return its constants.
template <class T>
__device__ __forceinline__ channel_constants load_constants(scan_args<T> const& a, thread_place const& at) {
  channel_constants k;
#pragma unroll
  for (int n = 0; n < scan_slice; ++n) {
    bool const ok = at.active && at.n0 + n < a.state;
    k.A2[n] = ok ? __ldg(a.A.data + at.d * a.A.stride[0] + (at.n0 + n) * a.A.stride[1]) * log2e : 0.0f;
  }
  k.bias = at.active && a.delta_bias.data ? __ldg(a.delta_bias.data + at.d * a.delta_bias.stride[0]) : 0.0f;
  k.skip = at.active && a.D.data ? __ldg(a.D.data + at.d * a.D.stride[0]) : 0.0f;
  return k;
}

/// \brief One step of K = `scan_tokens` tokens from `l0` on (see `walk`), in three phases, each one basic block
/// over the K tokens so that the compiler can interleave their independent chains: the step sizes
/// (softplus), the states and \f$y = C^\top h\f$, and the outputs (gate, skip, stores).
/// \tparam Outputs the second pass (outputs) or the first (decays).
/// \tparam T storage type.
/// \param a the kernel arguments. \param at the thread's place. \param k its constants.
/// \param in the step's inputs. \param staged the warp's staging area (K x 32 floats).
/// \param partial with `Outputs` and several slices: (2, slices, K, 32) partial outputs.
/// \param l0 the step's first token. \param end one past the last token. \param step the step's
/// number (its parity picks the half of `partial`).
/// \param h (in, out) (16) the slice of states. \param dt_sum (in, out) sum of the step sizes.
/// \param out (in, out) where the step's first output goes; advanced past its valid tokens.
template <bool Outputs, class T>
__device__ __forceinline__ void scan_step(scan_args<T> const& a, thread_place const& at, channel_constants const& k,
                                          token_inputs<T, scan_tokens> const& in, float* staged, float* partial,
                                          int l0, int end, int step, float (&h)[scan_slice], float& dt_sum, T*& out) {
  constexpr int K = scan_tokens;
  [[maybe_unused]] int const lane = static_cast<int>(threadIdx.x) % scan_tile;
  __syncwarp();  // the warp is done reading the previous step's B and C
  stage(in, at.state_ok, staged);
  __syncwarp();
  // 1. Step sizes: zero past the end, which leaves the state untouched (a = 1, no input).
  float dt[K], dt_u[K];
  if (a.softplus) {
#pragma unroll
    for (int t = 0; t < K; ++t) dt[t] = softplus_fast(widen(in.delta[t]) + k.bias);
  } else {
#pragma unroll
    for (int t = 0; t < K; ++t) dt[t] = widen(in.delta[t]) + k.bias;
  }
#pragma unroll
  for (int t = 0; t < K; ++t) {
    dt[t] = l0 + t < end ? dt[t] : 0.0f;
    dt_u[t] = dt[t] * widen(in.u[t]);
    if constexpr (!Outputs) dt_sum += dt[t];
  }
  // 2. The states, and y in two chains of additions (even and odd groups of states).
  [[maybe_unused]] float y[K][2];
#pragma unroll
  for (int t = 0; t < K; ++t) {
    y[t][0] = y[t][1] = 0.0f;
#pragma unroll
    for (int q = 0; q < scan_slice / 4; ++q) {
      float Bv[4], Cv[4];
      staged_bc(staged, t, q, Bv, Cv);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        int const n = 4 * q + j;
        float const decay = exp2_approx(dt[t] * k.A2[n]);
        h[n] = fmaf(decay, h[n], dt_u[t] * Bv[j]);
        if constexpr (Outputs) y[t][q % 2] = fmaf(Cv[j], h[n], y[t][q % 2]);
      }
    }
  }
  if constexpr (Outputs) {
    // 3. The outputs: (y + D u) silu(z), by the single slice or, from the slices' partial sums,
    // token t by slice t % slices.
    int const valid = min(K, end - l0);  // tokens of the step that exist
    float yt[K];
    if (at.slices == 1) {
#pragma unroll
      for (int t = 0; t < K; ++t) yt[t] = y[t][0] + y[t][1];
    } else {
#pragma unroll
      for (int t = 0; t < K; ++t)
        partial[(((step & 1) * at.slices + at.slice) * K + t) * scan_tile + lane] = y[t][0] + y[t][1];
      __syncthreads();
      float const* const step_partial = partial + (step & 1) * at.slices * K * scan_tile;
#pragma unroll
      for (int t = 0; t < K; ++t) {
        yt[t] = 0.0f;
        if ((at.owns >> t) & 1u)
          for (int s = 0; s < at.slices; ++s) yt[t] += step_partial[(s * K + t) * scan_tile + lane];
      }
    }
#pragma unroll
    for (int t = 0; t < K; ++t) yt[t] = fmaf(k.skip, widen(in.u[t]), yt[t]);
    if (a.z.data) {
#pragma unroll
      for (int t = 0; t < K; ++t) yt[t] *= silu_fast(widen(in.z[t]));
    }
    if (at.active) {
#pragma unroll
      for (int t = 0; t < K; ++t)
        if (t < valid && ((at.owns >> t) & 1u)) out[t * a.out.stride[2]] = narrow<T>(yt[t]);
    }
    out += valid * a.out.stride[2];
  }
}

/// \brief Walk tokens [begin, end) of the thread's channel, K = `scan_tokens` at a time, updating
/// its slice of states `h`; each step's inputs are loaded while the step before is processed, into
/// two buffers used in turn.
///
/// With `Outputs`, also the outputs: a single slice stores them; several add their partial outputs
/// in `partial` (double-buffered by step parity, so that a warp writing the next step's partials
/// cannot overtake one still reading this step's: both pass the block barrier in between) and
/// split the stores. Without, the first pass over a piece of the sequence: only the states and
/// the sum of the step sizes, from which the products of the decays follow,
/// \f$\prod_t 2^{\Delta_t A_n \log_2 e} = 2^{A_n \log_2 e \sum_t \Delta_t}\f$ (no outputs).
/// `begin` is a multiple of K and every warp of the block walks the same tokens.
/// \tparam Outputs the second pass (outputs) or the first (decays).
/// \tparam Prefetch whether to prefetch into L2 (`token_streams`).
/// \tparam T storage type.
/// \param a the kernel arguments. \param at the thread's place. \param k its constants.
/// \param staged the warp's staging area (K x 32 floats).
/// \param partial with `Outputs` and several slices: (2, slices, K, 32) partial outputs.
/// \param begin first token. \param end one past the last token.
/// \param h (in, out) (16) the slice of states. \param dt_sum (in, out) sum of the step sizes.
template <bool Outputs, bool Prefetch, class T>
__device__ __forceinline__ void walk(scan_args<T> const& a, thread_place const& at, channel_constants const& k,
                                     float* staged, float* partial, int begin, int end, float (&h)[scan_slice],
                                     float& dt_sum) {
  constexpr int K = scan_tokens;
  if (begin >= end) return;
  token_streams<T> s = streams_at<Prefetch>(a, at, begin);
  token_inputs<T, K> even, odd;  // the inputs of even and odd steps
  load_tokens<K, Prefetch>(a, s, even);
  for (int l0 = begin, step = 0; l0 < end; l0 += 2 * K, step += 2) {
    if (l0 + K < end) load_tokens<K, Prefetch>(a, s, odd);
    scan_step<Outputs>(a, at, k, even, staged, partial, l0, end, step, h, dt_sum, s.out);
    if (l0 + K >= end) break;
    if (l0 + 2 * K < end) load_tokens<K, Prefetch>(a, s, even);
    scan_step<Outputs>(a, at, k, odd, staged, partial, l0 + K, end, step + 1, h, dt_sum, s.out);
  }
}

/// \brief Dynamic shared memory of the kernel, in 4-byte words: the warps' staging areas, then
/// either the partial outputs of several slices or, per tile, the cluster's scan of a cut sequence.
/// \param slices warps per tile, ceil(N / 16). \param pieces blocks per cluster.
/// \param tiles tiles per block (1 where slices > 1).
/// \return bytes.
constexpr std::size_t scan_shared_bytes(int slices, int pieces, int tiles) {
  std::size_t const step = std::size_t{scan_tokens} * scan_tile;
  std::size_t const staging = step * static_cast<std::size_t>(slices) * static_cast<std::size_t>(tiles);
  std::size_t const partial = slices > 1 ? 2 * staging : 0;
  std::size_t const scan =  // (P, h) out and h in, per tile
      pieces > 1 ? 3 * std::size_t{scan_slice} * scan_tile * static_cast<std::size_t>(tiles) : 0;
  return (staging + (partial > scan ? partial : scan)) * sizeof(float);
}

/// \brief The selective scan kernel: per piece of the sequence, one block per `tiles` tiles of 32
/// channels (of any batch), one warp per tile and slice of 16 states (see the file for the
/// algorithm).
///
/// Launched with ceil(N / 16) * tiles warps per block (tiles = 1 for N > 16),
/// `scan_shared_bytes` of dynamic shared memory and clusters of S blocks, S = 1 or, for N <= 16,
/// 2, 4, 8 or 16: the pieces of the sequence. Warps of tiles past the last (in the last blocks)
/// walk with inactive lanes, since they take part in the barriers.
/// \tparam T storage type.
/// \tparam Narrow the instantiation for N <= 16 (one slice of states, at most
/// `scan_tiles_per_block` warps per block, `scan_narrow_blocks` blocks per SM), or for any N (up
/// to 16 warps per block, one block per SM: 128 registers).
/// \param a the arguments; grid = ceil(B * ceil(D / 32) / tiles) * S blocks, a cluster's blocks
/// consecutive.
template <class T, bool Narrow>
__global__ void __launch_bounds__(Narrow ? scan_tile * scan_tiles_per_block : scan_tile * (max_state_size / scan_slice),
                                  Narrow ? scan_narrow_blocks : 1)
    selective_scan_fwd_kernel(scan_args<T> const a) {
  constexpr int K = scan_tokens;
  constexpr bool prefetch = Narrow;  // the wide kernel has no registers to spare
  extern __shared__ float4 scan_shared[];  // float4: 16-byte alignment for the staged rows
  float* const shared = reinterpret_cast<float*>(scan_shared);
  int const lane = static_cast<int>(threadIdx.x) % scan_tile;
  int const warp = static_cast<int>(threadIdx.x) / scan_tile;
  int const warps = static_cast<int>(blockDim.x) / scan_tile;
  int const slices = Narrow ? 1 : (a.state + scan_slice - 1) / scan_slice;
  int const slice = warp % slices, tile_in_block = warp / slices, tiles_per_block = warps / slices;
  bool const in_memory = Narrow && a.memory_pieces > 1;  // the pieces' blocks meet through memory
  int const pieces = in_memory ? a.memory_pieces : cluster_blocks();
  int const piece = in_memory ? static_cast<int>(blockIdx.x) % pieces : cluster_rank();
  int const tiles = (a.channels + scan_tile - 1) / scan_tile;
  int const all_tiles = a.batch * tiles;
  int const wanted = static_cast<int>(blockIdx.x) / pieces * tiles_per_block + tile_in_block;
  int const tile = min(wanted, all_tiles - 1);  // past the last: a real tile's addresses, no lanes active
  int const d0 = tile % tiles * scan_tile;
  thread_place const at{tile / tiles,
                        d0,
                        min(d0 + lane, a.channels - 1),
                        wanted < all_tiles && d0 + lane < a.channels,
                        d0 / a.channels_per_group,
                        slice * scan_slice,
                        slice,
                        slices,
                        slice * scan_slice + lane % scan_slice < a.state,
                        owned_tokens(slice, slices)};
  channel_constants const k = load_constants(a, at);
  float* const staged = shared + warp * K * scan_tile;
  float* const rest = shared + warps * K * scan_tile;

  // With S > 1 pieces, the head of the sequence (about `head_tenths` / 10 of a piece) and then S
  // pieces, each a whole number of steps (see the file comment).
  int head = 0, piece_tokens = a.length;
  if (pieces > 1) {
    auto const whole_steps = [](std::int64_t tokens) { return static_cast<int>((tokens + K - 1) / K * K); };
    // L / (S + head_tenths / 10) in whole steps; the head takes what S such pieces leave, rounded
    // down to whole steps, and the pieces then share the rest
    std::int64_t const tenths = 10 * pieces + head_tenths;
    int const estimate = whole_steps((std::int64_t{10} * a.length + tenths - 1) / tenths);
    head = max(0, a.length - pieces * estimate) / K * K;
    piece_tokens = whole_steps((a.length - head + pieces - 1) / pieces);
  }
  auto piece_begin = [&](int q) { return min(head + (q - 1) * piece_tokens, a.length); };  // q = 1 .. S
  auto initial = [&](int d, int n) {
    bool const ok = d < a.channels && n < a.state && a.initial_state.data;
    return ok ? a.initial_state.data[at.b * a.initial_state.stride[0] + d * a.initial_state.stride[1] +
                                     n * a.initial_state.stride[2]]
              : 0.0f;
  };
  float h[scan_slice];
  float dt_sum = 0.0f;
#pragma unroll
  for (int n = 0; n < scan_slice; ++n)
    h[n] = at.active && (!Narrow || pieces == 1 || piece == 0) ? initial(at.d, at.n0 + n) : 0.0f;
  int begin = 0, end = a.length;  // what the block walks with outputs, last
  if (Narrow && pieces > 1) {  // (the kernel for N > 16 runs whole sequences only)
    // 1. Block 0 runs the head from the initial state, with outputs, and gives its end state as
    // the pair (0, h); block q > 0 runs piece q from a zero state without outputs, for its decay
    // and end state (piece S needs neither).
    // In a cluster, the pairs and states are in the blocks' shared memory; through memory, in
    // `pairs` and `entering`, at the group's and piece's and tile's slot.
    constexpr int pairs_per_tile = scan_slice * scan_tile;
    std::size_t const group = blockIdx.x / static_cast<unsigned>(pieces);
    auto const slot = [&](int r) {
      auto const z = [](int v) { return static_cast<std::size_t>(v); };
      return ((group * z(pieces) + z(r)) * z(tiles_per_block) + z(tile_in_block)) * z(pairs_per_tile);
    };
    unsigned* const meetings = in_memory ? a.meetings + 2 * group : nullptr;
    float* const tile_rest = rest + tile_in_block * 3 * pairs_per_tile;
    float2* const out_pair = in_memory ? a.pairs + slot(piece) : reinterpret_cast<float2*>(tile_rest);  // (16, 32) (P, h) of this piece
    float* const in_state = in_memory ? a.entering + slot(piece) : tile_rest + 2 * pairs_per_tile;  // (16, 32) state entering it
    if (piece == 0) {
      walk<true, prefetch>(a, at, k, staged, rest, 0, head, h, dt_sum);
#pragma unroll
      for (int n = 0; n < scan_slice; ++n) out_pair[n * scan_tile + lane] = make_float2(0.0f, h[n]);
    } else {
      int const first = piece_begin(piece);
      walk<false, prefetch>(a, at, k, staged, rest, first, min(first + piece_tokens, a.length), h, dt_sum);
#pragma unroll
      for (int n = 0; n < scan_slice; ++n)
        out_pair[n * scan_tile + lane] = make_float2(exp2_approx(k.A2[n] * dt_sum), h[n]);
    }
    if (in_memory) meet_blocks(meetings, 1, static_cast<unsigned>(pieces));
    else cluster_barrier();
    // 2. The cluster's scan of the pairs: this block folds pairs p of its share, state p / 32 of
    // channel d0 + p % 32, and hands block r the state entering piece r + 1, which it runs next.
    int const share = pairs_per_tile / pieces;
    for (int p = piece * share + lane; p < (piece + 1) * share; p += scan_tile) {
      float2 pair[max_scan_pieces];  // every block's pair first: the remote loads overlap
#pragma unroll
      for (int r = 0; r < max_scan_pieces; ++r)
        pair[r] = r >= pieces   ? make_float2(1.0f, 0.0f)
                  : in_memory ? __ldcg(a.pairs + slot(r) + p)
                              : in_block(out_pair, r)[p];
      float run = 0.0f;  // block 0's pair (0, h) replaces it
#pragma unroll
      for (int r = 0; r < max_scan_pieces; ++r) {
        if (r >= pieces) break;
        run = fmaf(pair[r].x, run, pair[r].y);
        (in_memory ? a.entering + slot(r) : in_block(in_state, r))[p] = run;
      }
    }
    if (in_memory) {
      meet_blocks(meetings, 2, static_cast<unsigned>(pieces));
      leave_meetings(meetings, static_cast<unsigned>(pieces));
    } else {
      cluster_barrier();
    }
#pragma unroll
    for (int n = 0; n < scan_slice; ++n) h[n] = in_memory ? __ldcg(in_state + n * scan_tile + lane) : in_state[n * scan_tile + lane];
    begin = piece_begin(piece + 1), end = min(begin + piece_tokens, a.length);
  }
  // 3. The block's piece from its true incoming state, with the outputs.
  walk<true, prefetch>(a, at, k, staged, rest, begin, end, h, dt_sum);
  if (piece == pieces - 1 && a.final_state.data && at.active) {
#pragma unroll
    for (int n = 0; n < scan_slice; ++n)
      if (at.n0 + n < a.state)
        a.final_state.data[at.b * a.final_state.stride[0] + at.d * a.final_state.stride[1] +
                           (at.n0 + n) * a.final_state.stride[2]] = h[n];
  }
}

/// \brief How the CUDA scan runs: into how many pieces, one block each in a thread-block cluster,
/// each sequence is cut, and how many tiles of 32 channels share a block.
struct scan_config {
  int pieces = 1;                              ///< 1, or for N <= 16: 2, 4, 8 or 16
  int tiles_per_block = scan_tiles_per_block;  ///< for N <= 16: 1, 2 or 4 tiles (warps) per block
  /// The pieces' blocks meet through global memory (scratch the launch allocates on the stream)
  /// rather than in a thread-block cluster (Hopper or later): for GPUs without clusters. The
  /// whole grid must then be resident at once.
  bool through_memory = false;
};

/// \brief Whether the kernel can run a scan of these sizes: every tile of 32 channels must lie in
/// one group of B and C (G = 1, or D / G a multiple of 32), and the sizes must fit in `int`.
/// \param s the sizes. \return whether `selective_scan_kernel` accepts them.
inline bool kernel_supports(scan_shape const& s) {
  constexpr std::size_t limit = std::size_t{1} << 30;
  return (s.groups == 1 || s.channels / s.groups % scan_tile == 0) && s.batch < limit && s.channels < limit &&
         s.length < limit;
}

/// \brief What the launcher knows of a device for the kernel of one storage type, N <= 16, in
/// blocks of `scan_tiles_per_block` warps.
struct scan_occupancy {
  int sms = 0;                  ///< streaming multiprocessors
  int blocks_per_sm = 0;        ///< resident blocks per SM without clusters
  int resident[5] = {};         ///< blocks resident at once in clusters of 1, 2, 4, 8, 16 (0: impossible)
};

/// \brief The kernel's occupancy on `device` for N <= 16, measured once per device and cached.
/// Also allows the non-portable cluster size 16 where the device has it.
/// \tparam T storage type (the kernel's instantiation).
/// \param device a CUDA device ordinal.
/// \return its SM count and how many blocks can be resident at once per cluster size.
template <class T>
scan_occupancy const& scan_occupancy_of(int device) {
  static std::mutex mutex;
  static std::map<int, scan_occupancy> known;
  std::lock_guard<std::mutex> lock(mutex);
  auto found = known.find(device);
  if (found != known.end()) return found->second;
  char const* what = "ssm::selective_scan::cuda: occupancy";
  constexpr int tiles = scan_tiles_per_block;
  auto const kernel = selective_scan_fwd_kernel<T, true>;
  scan_occupancy o;
  int previous = 0;
  check(cudaGetDevice(&previous), what);
  check(cudaSetDevice(device), what);
  check(cudaDeviceGetAttribute(&o.sms, cudaDevAttrMultiProcessorCount, device), what);
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&o.blocks_per_sm, kernel, tiles * scan_tile,
                                                      scan_shared_bytes(1, 1, tiles)),
        what);
  o.resident[0] = o.sms * o.blocks_per_sm;
  if (runs_hopper_code(kernel)) {
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) != cudaSuccess)
      (void)cudaGetLastError();  // then 16 is refused below
    for (int i = 1; i < 5; ++i) {
      int const pieces = 1 << i;
      cudaLaunchConfig_t config{};
      config.gridDim = dim3(static_cast<unsigned>(pieces * o.sms));
      config.blockDim = dim3(tiles * scan_tile);
      config.dynamicSmemBytes = scan_shared_bytes(1, pieces, tiles);
      cudaLaunchAttribute cluster{};
      cluster.id = cudaLaunchAttributeClusterDimension;
      cluster.val.clusterDim.x = static_cast<unsigned>(pieces);
      cluster.val.clusterDim.y = 1;
      cluster.val.clusterDim.z = 1;
      config.attrs = &cluster;
      config.numAttrs = 1;
      int clusters = 0;
      if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &config) != cudaSuccess) {
        (void)cudaGetLastError();  // not possible on this device: leave 0
        clusters = 0;
      }
      o.resident[i] = clusters * pieces;
    }
  }
  check(cudaSetDevice(previous), what);
  return known.emplace(device, o).first->second;
}

/// \brief The launcher's choice of the number of pieces a sequence is cut into.
///
/// One piece wherever cutting sequences in 2 would need more blocks than are resident at once.
/// Otherwise a model of the time of the busiest SM, over the pieces in clusters where the GPU has
/// them, and through memory (`scan_config::through_memory`) where it does not. Each SM runs
/// `per_sm` warps (one per tile and piece), in waves of at most its resident warps; a wave of k
/// warps takes the latency-bound time of one warp's work, times k / w once k passes the w warps
/// that saturate an SM. One warp's work is a first pass (counted at `first_pass_cost` of the
/// second) and a second pass over a piece of L / (S + `head_tenths` / 10) tokens, or L in one
/// piece. S = 1 for N > 16 or short sequences.
/// \tparam T storage type.
/// \param space the execution space instance (its device).
/// \param s the sizes.
/// \return the configuration `selective_scan_backend<Kokkos::Cuda>` runs.
template <class T>
scan_config choose_scan_config(Kokkos::Cuda const& space, scan_shape const& s) {
  scan_occupancy const& o = scan_occupancy_of<T>(space.cuda_device());
  if (s.state > static_cast<std::size_t>(scan_slice) || o.blocks_per_sm == 0) return {};
  constexpr double saturating_warps = 8.0;
  constexpr int tiles_per_block = scan_config{}.tiles_per_block;
  auto const blocks = std::ceil(static_cast<double>(s.batch * ((s.channels + scan_tile - 1) / scan_tile)) /
                                tiles_per_block);
  auto const length = static_cast<double>(s.length);
  scan_config best{};
  // One piece where even 2 pieces would need a second wave of blocks. (On an H200 at D = 5120:
  // B = 4, 320 blocks in 2 pieces for 396 resident, 0.498-0.503 ms against 0.518-0.520 in one;
  // B = 8, 640 blocks, 0.911 against 0.712. Before the head of a cut sequence ran during the
  // first passes, 2 pieces at B = 4 took 0.654 ms.)
  // Without clusters (before Hopper) the pieces meet through memory, which needs the whole grid
  // resident at once, wherever its blocks land.
  bool const clusters = o.resident[1] > 0;
  auto const resident = [&](int i) {
    if (clusters || i == 0) return o.resident[i];
    return blocks * (1 << i) <= static_cast<double>(o.resident[0]) ? o.resident[0] : 0;
  };
  if (2.0 * blocks > static_cast<double>(resident(1))) return best;
  best.through_memory = !clusters;
  double best_time = -1.0;
  for (int i = 0; i < 5; ++i) {
    int const pieces = 1 << i;
    if (resident(i) == 0 || (pieces > 1 && static_cast<std::size_t>(pieces * scan_tokens * 2) > s.length)) continue;
    double const sms_used = static_cast<double>(resident(i) / o.blocks_per_sm);  // SMs the clusters fill
    double const per_sm = std::ceil(blocks * pieces / sms_used) * tiles_per_block;  // warps
    double const cap = static_cast<double>(o.blocks_per_sm) * tiles_per_block;
    double const piece = std::ceil(length / (pieces + head_tenths / 10.0));  // tokens, after the head
    double const work = pieces == 1 ? length : piece * (1.0 + first_pass_cost);
    double const full = std::floor(per_sm / cap), left = per_sm - full * cap;
    double const time = work * (full * std::max(1.0, cap / saturating_warps) +
                                (left > 0 ? std::max(1.0, left / saturating_warps) : 0.0)) *
                        (pieces > 1 && !clusters ? through_memory_cost : 1.0);
    if (best_time < 0.0 || time < best_time) best.pieces = pieces, best_time = time;
  }
  return best;
}

/// \brief Run the kernel with an explicit configuration (asynchronous).
///
/// `selective_scan_backend<Kokkos::Cuda>` calls it with `choose_scan_config`; tests and
/// benchmarks call it with each configuration.
/// \tparam T storage type of activations.
/// \tparam MemSpace a memory space the GPU can access.
/// \param space the execution space instance (its stream).
/// \param p the checked tensors and flags: `u`, `delta`, `z`, `out` (B, D, L); `A` (D, N);
///          `B`, `C` (B, G, N, L); `D`, `delta_bias` (D); `initial_state`, `final_state` (B, D, N).
/// \param s their sizes, with B, D > 0.
/// \param config the number of pieces per sequence, tiles per block (ignored for N > 16: one)
///        and states on the FMA pipe.
/// \throws ssm::shape_error if `kernel_supports(s)` is false, or the pieces are not 1, 2, 4, 8
///         or 16, or more than 1 for N > 16, or the tiles per block not 1, 2 or 4.
/// \throws ssm::shape_error also if the pieces meet through memory and the grid would not be
///         resident at once.
/// \throws ssm::error if the launch fails (e.g. clusters on a GPU before Hopper).
template <class T, class MemSpace>
void selective_scan_kernel(Kokkos::Cuda const& space, selective_scan_params<T, MemSpace> const& p,
                           scan_shape const& s, scan_config const& config) {
  char const* fn = "ssm::cuda::detail::selective_scan_kernel";
  int const pieces = config.pieces;
  ssm::detail::require(kernel_supports(s), fn,
                       "every tile of 32 channels must lie in one group (D / G a multiple of 32)");
  ssm::detail::require(pieces == 1 || pieces == 2 || pieces == 4 || pieces == 8 || pieces == 16, fn,
                       "the pieces must be 1, 2, 4, 8 or 16");
  ssm::detail::require(pieces == 1 || s.state <= static_cast<std::size_t>(scan_slice), fn,
                       "a sequence is cut into pieces only for N <= 16");
  ssm::detail::require(config.tiles_per_block == 1 || config.tiles_per_block == 2 || config.tiles_per_block == 4, fn,
                       "the tiles per block must be 1, 2 or 4");
  bool const in_memory = pieces > 1 && config.through_memory;
  if (pieces > 8 && !in_memory) (void)scan_occupancy_of<T>(space.cuda_device());  // allows clusters of 16
  auto args = make_scan_args(p, s);
  int const slices = static_cast<int>((s.state + scan_slice - 1) / scan_slice);
  int const per_block = slices > 1 ? 1 : config.tiles_per_block;
  auto const tiles = s.batch * ((s.channels + scan_tile - 1) / scan_tile);
  auto const blocks = static_cast<unsigned>((tiles + static_cast<std::size_t>(per_block) - 1) /
                                            static_cast<std::size_t>(per_block));
  cudaLaunchConfig_t launch{};
  launch.gridDim = dim3(blocks * static_cast<unsigned>(pieces));
  launch.blockDim = dim3(static_cast<unsigned>(per_block * slices * scan_tile));
  launch.dynamicSmemBytes = scan_shared_bytes(slices, in_memory ? 1 : pieces, per_block);
  launch.stream = stream(space);
  // Through memory: the pairs, the entering states and the counters, allocated and freed on the
  // stream (graph-capturable), the counters zeroed; the grid must be resident at once.
  void* scratch = nullptr;
  if (in_memory) {
    int per_sm = 0;
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, selective_scan_fwd_kernel<T, true>,
                                                        static_cast<int>(launch.blockDim.x), launch.dynamicSmemBytes),
          "ssm::selective_scan::cuda: occupancy");
    ssm::detail::require(launch.gridDim.x <= static_cast<unsigned>(per_sm * multiprocessors()), fn,
                         "pieces through memory need the whole grid resident at once");
    std::size_t const slots = std::size_t{blocks} * static_cast<std::size_t>(pieces * per_block) * scan_slice * scan_tile;
    std::size_t const pair_bytes = slots * sizeof(float2), state_bytes = slots * sizeof(float);
    std::size_t const meeting_bytes = std::size_t{blocks} * 2 * sizeof(unsigned);
    check(cudaMallocAsync(&scratch, pair_bytes + state_bytes + meeting_bytes, launch.stream),
          "ssm::selective_scan::cuda: scratch of pieces through memory");
    auto* const bytes = static_cast<unsigned char*>(scratch);
    args.memory_pieces = pieces;
    args.pairs = reinterpret_cast<float2*>(bytes);
    args.entering = reinterpret_cast<float*>(bytes + pair_bytes);
    args.meetings = reinterpret_cast<unsigned*>(bytes + pair_bytes + state_bytes);
    check(cudaMemsetAsync(args.meetings, 0, meeting_bytes, launch.stream), "ssm::selective_scan::cuda: counters");
  }
  cudaLaunchAttribute cluster{};
  cluster.id = cudaLaunchAttributeClusterDimension;
  cluster.val.clusterDim.x = static_cast<unsigned>(pieces);
  cluster.val.clusterDim.y = 1;
  cluster.val.clusterDim.z = 1;
  launch.attrs = &cluster;
  launch.numAttrs = pieces > 1 && !in_memory ? 1 : 0;
  Kokkos::Profiling::pushRegion("ssm::selective_scan::cuda");
  auto const kernel = slices == 1 ? selective_scan_fwd_kernel<T, true> : selective_scan_fwd_kernel<T, false>;
  (void)cudaLaunchKernelEx(&launch, kernel, args);  // an error is also the last error
  Kokkos::Profiling::popRegion();
  check_launch("ssm::selective_scan::cuda");
  if (scratch) check(cudaFreeAsync(scratch, launch.stream), "ssm::selective_scan::cuda: scratch of pieces through memory");
}

}  // namespace ssm::cuda::detail

namespace ssm {

/// \brief The selective scan on `Kokkos::Cuda`: the hand-written kernel of this file.
///
/// Cuts sequences into pieces as `cuda::detail::choose_scan_config` decides; falls back to
/// `detail::selective_scan_portable` where a tile of 32 channels would span two groups of B and C.
template <>
struct selective_scan_backend<Kokkos::Cuda> {
  /// \brief Run the scan on `space`'s stream (asynchronous: returns once the work is enqueued).
  ///
  /// `ssm::selective_scan` calls it only after checking the shapes and with B, D > 0.
  /// \tparam T activation storage type (`float`, `ssm::f16`, `ssm::bf16`).
  /// \tparam MemSpace a memory space the GPU can access.
  /// \param space the execution space instance; the kernel runs on its stream.
  /// \param p the checked tensors and flags: `u`, `delta`, `z`, `out` (B, D, L); `A` (D, N);
  ///          `B`, `C` (B, G, N, L); `D`, `delta_bias` (D); `initial_state`, `final_state` (B, D, N).
  /// \param s their sizes, as returned by the shape check.
  /// \throws ssm::error if a CUDA call fails.
  template <class T, class MemSpace>
  static void run(Kokkos::Cuda const& space, selective_scan_params<T, MemSpace> const& p, scan_shape const& s) {
    if (!cuda::detail::kernel_supports(s)) {
      detail::selective_scan_portable(space, p, s);
      return;
    }
    cuda::detail::selective_scan_kernel(space, p, s, cuda::detail::choose_scan_config<T>(space, s));
  }
};

}  // namespace ssm
