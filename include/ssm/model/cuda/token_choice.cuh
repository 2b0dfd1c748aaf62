#pragma once
/// \file
/// \brief The choices of tokens from logits on `Kokkos::Cuda` (`token_choice_backend`): the greedy
/// choice of each row (`argmax_rows`) and its largest logits for sampling (`top_logits`), for
/// contiguous rows in aligned 16-byte pieces. Included by `ssm/model/generate.hpp` when Kokkos has
/// CUDA; other layouts keep the portable path.
///
/// Both kernels give a row a block of 1024 threads, and each thread asks for its 16-byte pieces
/// of the row 8 at a time (6 or 7 pieces of a 50,280-token row in a 16-bit type) before it looks
/// at any. A value is ranked by the portable path's key (`ssm::detail::logit_key`): its order
/// (`ordered_logit`, 0 for NaN) above the complement of its token, so that ties go to the smaller
/// token and NaN loses to every number. The portable path's team of 512 threads reads its runs of
/// 8 values one after another, a chain of 12 round trips to memory per thread for such a row, and
/// takes the `count` largest logits of `top_logits` by as many passes over the row.
///
/// **argmax.** Each thread keeps its largest key; the block takes the largest of those through
/// warp shuffles and shared memory.
///
/// **The count largest.** A radix select on the 32-bit orders: three passes over the row (11, 11
/// and 10 bits, most significant first), each counting in shared memory the digits of the values
/// that match the digits chosen so far, find the order t of the count-th largest number and how
/// many values equal to t are needed. A thread owns a contiguous range of the row, so that a
/// block-wide prefix sum of the threads' counts of values equal to t ranks them by token; a last
/// pass gathers the values above t and the first of those equal to it into shared memory, and each
/// gathered key's rank (how many keys are larger) is its place in the output. Rows with fewer
/// numbers than `count` end with token -1 and value 0, as the portable path's.
///
/// Both are launched as programmatic dependents, so that their blocks are resident when the
/// product that writes the logits (lm_head) ends.

#include <cub/block/block_scan.cuh>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include <ssm/core/cuda.hpp>
#include <ssm/core/cuda/pieces.cuh>
#include <ssm/core/dtype.hpp>
#include <ssm/core/views.hpp>

namespace ssm {

namespace cuda::detail {

/// \brief Threads of a row's block.
inline constexpr int choice_threads = 1024;
/// \brief 16-byte pieces a thread has in flight at once.
inline constexpr int choice_pieces_in_flight = 8;
/// \brief The most logits a row's `top_logits_kernel` returns (its gathered keys fill shared memory).
inline constexpr int top_max_count = 1024;

/// \brief The larger of two keys. \param a,b keys. \return the larger.
__device__ __forceinline__ std::uint64_t larger_key(std::uint64_t a, std::uint64_t b) { return a > b ? a : b; }

/// \brief A key from a value's order and its token (`ssm::detail::logit_key` from the order).
__device__ __forceinline__ std::uint64_t order_key(std::uint32_t order, int v) {
  return (std::uint64_t{order} << 32) | static_cast<std::uint32_t>(~static_cast<std::uint32_t>(v));
}

/// \brief Call `f(order, token)` for the values of pieces [first, last) of a row, in token order,
/// `choice_pieces_in_flight` pieces asked for at a time.
/// \tparam T `float`, `ssm::f16` or `ssm::bf16`. \param pieces the row as 16-byte pieces.
template <class T, class F>
__device__ __forceinline__ void for_pieces(uint4 const* pieces, int first, int last, F&& f) {
  constexpr int P = piece_values<T>;
  for (int c = first; c < last; c += choice_pieces_in_flight) {
    uint4 raw[choice_pieces_in_flight];
#pragma unroll
    for (int i = 0; i < choice_pieces_in_flight; ++i) raw[i] = c + i < last ? pieces[c + i] : make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
    for (int i = 0; i < choice_pieces_in_flight; ++i) {
      if (c + i >= last) break;
      float values[P];
      widen_piece<T>(raw[i], values);
#pragma unroll
      for (int j = 0; j < P; ++j) f(ssm::detail::ordered_logit(values[j]), (c + i) * P + j);
    }
  }
}

/// \brief tokens[b tokens_stride] = the token of the largest key of row b (-1 if the row has
/// no number). Grid: one block of `choice_threads` per row. Rows are `ld` values apart and
/// 16-byte aligned. The logits are not `__restrict__`: the kernel before writes them (see
/// `wait_for_previous_kernel`).
/// \tparam T `float`, `ssm::f16` or `ssm::bf16`.
template <class T>
__global__ void __launch_bounds__(choice_threads)
    argmax_rows_kernel(T const* logits, std::int64_t ld, int V, std::int32_t* __restrict__ tokens,
                       std::int64_t tokens_stride) {
  constexpr int P = piece_values<T>;
  int const b = static_cast<int>(blockIdx.x), tid = static_cast<int>(threadIdx.x);
  T const* const row = logits + b * ld;
  int const whole = V / P;  // whole pieces; the last V mod P values are read one by one
  std::uint64_t key = 0;
  wait_for_previous_kernel();  // launched as a programmatic dependent: the logits come from the kernel before
  // pieces tid, tid + 1024, ...: a warp's loads are contiguous
  for (int p0 = tid; p0 < whole; p0 += choice_pieces_in_flight * choice_threads) {
    uint4 raw[choice_pieces_in_flight];
#pragma unroll
    for (int i = 0; i < choice_pieces_in_flight; ++i) {
      int const p = p0 + i * choice_threads;
      raw[i] = p < whole ? reinterpret_cast<uint4 const*>(row)[p] : make_uint4(0u, 0u, 0u, 0u);
    }
#pragma unroll
    for (int i = 0; i < choice_pieces_in_flight; ++i) {
      int const p = p0 + i * choice_threads;
      if (p >= whole) break;
      float values[P];
      widen_piece<T>(raw[i], values);
#pragma unroll
      for (int j = 0; j < P; ++j) key = larger_key(key, ssm::detail::logit_key(values[j], p * P + j));
    }
  }
  for (int v = whole * P + tid; v < V; v += choice_threads) key = larger_key(key, ssm::detail::logit_key(to_float(row[v]), v));

  for (int offset = 16; offset > 0; offset /= 2) key = larger_key(key, __shfl_xor_sync(0xFFFFFFFFu, key, offset));
  __shared__ std::uint64_t warp_keys[choice_threads / 32];
  if (tid % 32 == 0) warp_keys[tid / 32] = key;
  __syncthreads();
  if (tid < 32) {
    key = warp_keys[tid];  // choice_threads / 32 == 32 warps
    for (int offset = 16; offset > 0; offset /= 2) key = larger_key(key, __shfl_xor_sync(0xFFFFFFFFu, key, offset));
    if (tid == 0) tokens[b * tokens_stride] = ssm::detail::key_token(key);
  }
}

/// \brief The `count` largest logits of row b, most likely first (see the file comment): tokens
/// (b, i) at `tokens + b tokens_b + i tokens_i`, their values likewise. Grid: one block of
/// `choice_threads` per row; rows `ld` values apart and 16-byte aligned; count <= `top_max_count`.
/// The logits are not `__restrict__`: the kernel before writes them (see
/// `wait_for_previous_kernel`).
/// \tparam T `float`, `ssm::f16` or `ssm::bf16`.
template <class T>
__global__ void __launch_bounds__(choice_threads)
    top_logits_kernel(T const* logits, std::int64_t ld, int V, int count, std::int32_t* __restrict__ tokens,
                      std::int64_t tokens_b, std::int64_t tokens_i, float* __restrict__ values, std::int64_t values_b,
                      std::int64_t values_i) {
  constexpr int P = piece_values<T>;
  constexpr int digits[3] = {11, 11, 10}, most_bins = 1 << 11;
  int const b = static_cast<int>(blockIdx.x), tid = static_cast<int>(threadIdx.x);
  T const* const row = logits + b * ld;
  int const whole = V / P, per_thread = (whole + choice_threads - 1) / choice_threads;
  int const first = min(tid * per_thread, whole), last = min(first + per_thread, whole);
  // f(order, token) for the thread's own values in token order: its pieces, then, for the last
  // thread, the row's last V mod P values
  auto visit = [&](auto&& f) {
    for_pieces<T>(reinterpret_cast<uint4 const*>(row), first, last, f);
    if (tid == choice_threads - 1)
      for (int v = whole * P; v < V; ++v) f(ssm::detail::ordered_logit(to_float(row[v])), v);
  };

  __shared__ unsigned bins[most_bins];
  __shared__ std::uint32_t chosen;  // the digits chosen so far
  __shared__ int still;             // how many of the largest numbers lie at or below them
  __shared__ int numbers;           // the row's numbers (values other than NaN)
  if (tid == 0) chosen = 0u, still = count;
  wait_for_previous_kernel();  // launched as a programmatic dependent: the logits come from the kernel before

  // The radix select: after pass k, `chosen` holds the top digits of the count-th largest order
  // and `still` how many of the largest numbers share them.
  std::uint32_t mask = 0u;
  int shift = 32;
  bool fewer = false;  // the row has at most `count` numbers: every number is taken
#pragma unroll
  for (int k = 0; k < 3; ++k) {
    int const width = digits[k], bins_now = 1 << width;
    shift -= width;
    for (int i = tid; i < bins_now; i += choice_threads) bins[i] = 0u;
    __syncthreads();
    std::uint32_t const prefix = chosen;
    visit([&](std::uint32_t order, int) {
      if (order != 0u && (order & mask) == prefix) atomicAdd(&bins[(order >> shift) & (bins_now - 1)], 1u);
    });
    __syncthreads();
    if (tid < 32) {
      int const want = still;  // read before any lane writes it below
      // lane l holds a run of bins_now / 32 consecutive bins, lane 0 the highest run
      int const run = bins_now / 32, top = bins_now - 1 - tid * run;
      int sum = 0;
      for (int i = 0; i < run; ++i) sum += static_cast<int>(bins[top - i]);
      int above = sum;  // inclusive prefix over the lanes, highest bins first
      for (int offset = 1; offset < 32; offset *= 2) {
        int const other = __shfl_up_sync(0xFFFFFFFFu, above, offset);
        if (tid >= offset) above += other;
      }
      int const total = __shfl_sync(0xFFFFFFFFu, above, 31);
      above -= sum;  // the numbers in higher lanes' bins
      if (k == 0 && tid == 0) numbers = total;
      if (!(k == 0 && total <= want) && above < want && above + sum >= want) {
        for (int i = 0; i < run; ++i) {
          int const n = static_cast<int>(bins[top - i]);
          if (above + n >= want) {
            chosen = prefix | (static_cast<std::uint32_t>(top - i) << shift);
            still = want - above;
            break;
          }
          above += n;
        }
      }
    }
    __syncthreads();
    if (k == 0 && numbers <= count) {
      fewer = true;
      break;
    }
    mask |= static_cast<std::uint32_t>(bins_now - 1) << shift;
  }

  // Gather: the orders above t, then the first `need` tokens whose order is t.
  std::uint32_t const t = fewer ? 0u : chosen;
  int const need = fewer ? 0 : still, taken = fewer ? numbers : count;
  int equal_mine = 0;
  if (need > 0) visit([&](std::uint32_t order, int) { equal_mine += order == t; });
  using block_scan = cub::BlockScan<int, choice_threads>;
  __shared__ typename block_scan::TempStorage scan_storage;
  int equal_before = 0;
  block_scan(scan_storage).ExclusiveSum(equal_mine, equal_before);
  __shared__ std::uint64_t keys[top_max_count];
  __shared__ int placed;  // keys above t placed so far
  if (tid == 0) placed = 0;
  __syncthreads();
  int const above_t = taken - need;
  visit([&](std::uint32_t order, int v) {
    if (order > t) keys[atomicAdd(&placed, 1)] = order_key(order, v);
    else if (need > 0 && order == t) {
      if (equal_before < need) keys[above_t + equal_before] = order_key(order, v);
      ++equal_before;
    }
  });
  __syncthreads();

  // Each key's place: how many keys are larger (they are distinct).
  for (int i = tid; i < count; i += choice_threads) {
    std::int32_t token = -1;
    float value = 0.0f;
    int place = i;
    if (i < taken) {
      std::uint64_t const key = keys[i];
      place = 0;
      for (int j = 0; j < taken; ++j) place += keys[j] > key;
      token = ssm::detail::key_token(key);
      value = ssm::detail::key_logit(key);
    }
    tokens[b * tokens_b + place * tokens_i] = token;
    values[b * values_b + place * values_i] = value;
  }
}

}  // namespace cuda::detail

/// \brief `argmax_rows` and `top_logits` on `Kokkos::Cuda`: the kernels above for rows of stride 1
/// that start on 16-byte boundaries (a row's last V mod 8 or 4 values one by one) and, for
/// `top_logits`, at most `top_max_count` logits a row; the portable team per row otherwise.
template <>
struct token_choice_backend<Kokkos::Cuda> {
  /// \brief The greedy choice of each row on `space` (asynchronous; see `argmax_rows`).
  /// \tparam T `float`, `ssm::f16` or `ssm::bf16`. \tparam MemSpace accessible from `Kokkos::Cuda`.
  /// \param space the instance whose stream runs the kernel.
  /// \param logits (B, V), B >= 1. \param tokens (B) out.
  /// \throws ssm::error if CUDA refuses the launch.
  template <class T, class MemSpace>
  static void argmax(Kokkos::Cuda const& space, view2<const T, MemSpace> const& logits,
                     view1<std::int32_t, MemSpace> const& tokens) {
    if (!in_pieces(logits)) {
      ssm::detail::argmax_rows_portable(space, logits, tokens);
      return;
    }
    cuda::launch(cuda::detail::argmax_rows_kernel<T>, dim3(static_cast<unsigned>(logits.extent(0))),
                 dim3(cuda::detail::choice_threads), 0, cuda::stream(space), "ssm::argmax_rows::cuda", logits.data(),
                 pitch(logits), static_cast<int>(logits.extent(1)), tokens.data(),
                 static_cast<std::int64_t>(tokens.stride(0)));
  }

  /// \brief The largest logits of each row on `space` (asynchronous; see `top_logits`).
  /// \tparam T `float`, `ssm::f16` or `ssm::bf16`. \tparam MemSpace accessible from `Kokkos::Cuda`.
  /// \param space the instance whose stream runs the kernel.
  /// \param logits (B, V), B >= 1. \param tokens (B, count) out, count >= 1. \param values (B, count) out.
  /// \throws ssm::error if CUDA refuses the launch.
  template <class T, class MemSpace>
  static void top(Kokkos::Cuda const& space, view2<const T, MemSpace> const& logits,
                  view2<std::int32_t, MemSpace> const& tokens, view2<float, MemSpace> const& values) {
    if (!in_pieces(logits) || tokens.extent(1) > static_cast<std::size_t>(cuda::detail::top_max_count)) {
      ssm::detail::top_logits_portable(space, logits, tokens, values);
      return;
    }
    auto const stride = [](auto const& v, int k) { return static_cast<std::int64_t>(v.stride(k)); };
    cuda::launch(cuda::detail::top_logits_kernel<T>, dim3(static_cast<unsigned>(logits.extent(0))),
                 dim3(cuda::detail::choice_threads), 0, cuda::stream(space), "ssm::top_logits::cuda", logits.data(),
                 pitch(logits), static_cast<int>(logits.extent(1)), static_cast<int>(tokens.extent(1)), tokens.data(),
                 stride(tokens, 0), stride(tokens, 1), values.data(), stride(values, 0), stride(values, 1));
  }

 private:
  /// \brief The distance between rows in values; 0 for a single row (never used then).
  template <class View>
  static std::int64_t pitch(View const& logits) {
    return logits.extent(0) > 1 ? static_cast<std::int64_t>(logits.stride(0)) : 0;
  }
  /// \brief Whether the kernels take the rows: stride 1, every row on a 16-byte boundary, sizes
  /// that fit their int indices.
  template <class View>
  static bool in_pieces(View const& logits) {
    using T = typename View::value_type;
    auto const B = logits.extent(0), V = logits.extent(1);
    return logits.stride(1) == 1 && cuda::piece_aligned(logits.data()) &&
           static_cast<std::size_t>(pitch(logits)) * sizeof(T) % 16 == 0 && V < (std::size_t{1} << 31) &&
           B < (std::size_t{1} << 31);
  }
};

}  // namespace ssm
