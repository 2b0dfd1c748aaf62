#pragma once
/// \file
/// \brief 16-byte pieces of activations or weights: a `uint4` loaded or stored in one instruction,
/// holding 8 values of a 16-bit type or 4 floats, widened to fp32 for arithmetic and rounded back.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include <ssm/core/dtype.hpp>

namespace ssm::cuda {

/// \brief Values of type T in a 16-byte piece.
template <class T>
inline constexpr int piece_values = static_cast<int>(16 / sizeof(T));

/// \brief Widen the values of a 16-byte piece to fp32 (exact).
/// \tparam T `float`, `ssm::f16` or `ssm::bf16`.
/// \param raw the piece. \param out its values, in memory order.
template <class T>
__device__ inline void widen_piece(uint4 const& raw, float (&out)[piece_values<T>]) {
  T values[piece_values<T>];
  static_assert(sizeof(values) == sizeof(raw));
  std::memcpy(values, &raw, sizeof raw);
#pragma unroll
  for (int j = 0; j < piece_values<T>; ++j) out[j] = to_float(values[j]);
}

/// \brief Round fp32 values to a 16-byte piece of T, to nearest even (the hardware's paired
/// conversions for the 16-bit types).
/// \tparam T `float`, `ssm::f16` or `ssm::bf16`.
/// \param in the values, in memory order. \return the piece.
template <class T>
__device__ inline uint4 narrow_piece(float const (&in)[piece_values<T>]) {
  std::uint32_t words[4];
  if constexpr (std::is_same_v<T, float>) {
    std::memcpy(words, in, sizeof words);
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      if constexpr (std::is_same_v<T, bf16>) {
        __nv_bfloat162 const pair = __floats2bfloat162_rn(in[2 * i], in[2 * i + 1]);
        std::memcpy(&words[i], &pair, sizeof pair);
      } else {
        static_assert(std::is_same_v<T, f16>, "ssm::cuda::narrow_piece: float, f16 or bf16");
        __half2 const pair = __floats2half2_rn(in[2 * i], in[2 * i + 1]);
        std::memcpy(&words[i], &pair, sizeof pair);
      }
    }
  }
  return make_uint4(words[0], words[1], words[2], words[3]);
}

/// \brief Whether `p` may be read or written as 16-byte pieces.
/// \param p any address. \return `p` is 16-byte aligned.
inline bool piece_aligned(void const* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

}  // namespace ssm::cuda
