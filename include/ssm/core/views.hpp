#pragma once
/// \file
/// \brief The tensor types of `ssm`: strided Kokkos views, and helpers that re-view memory.
///
/// Shape glossary, used in every comment of the library:
/// B batch, L length, D channels (d_inner), N state size, G groups of B/C, W conv width,
/// R dt rank, E d_model, V vocabulary; M rows (tokens, B*L) of a dense layer, whose GEMM maps
/// K input features to N output features.
///
/// Operations take `LayoutStride` views so that a caller can pass any slice of a larger buffer
/// (the x and z halves of `in_proj`'s output, or a token-major (B, L, D) tensor seen as
/// (B, D, L)) without a copy. Every `LayoutRight` or `LayoutLeft` view converts to them implicitly.

#include <type_traits>

#include <Kokkos_Core.hpp>

namespace ssm {

/// \brief A strided rank-1 tensor in memory space `MemSpace`.
/// \tparam T element type (`const`-qualified for inputs).
/// \tparam MemSpace a Kokkos memory space.
template <class T, class MemSpace>
using view1 = Kokkos::View<T*, Kokkos::LayoutStride, MemSpace>;
/// \brief A strided rank-2 tensor in memory space `MemSpace`.
/// \tparam T element type (`const`-qualified for inputs).
/// \tparam MemSpace a Kokkos memory space.
template <class T, class MemSpace>
using view2 = Kokkos::View<T**, Kokkos::LayoutStride, MemSpace>;
/// \brief A strided rank-3 tensor in memory space `MemSpace`.
/// \tparam T element type (`const`-qualified for inputs).
/// \tparam MemSpace a Kokkos memory space.
template <class T, class MemSpace>
using view3 = Kokkos::View<T***, Kokkos::LayoutStride, MemSpace>;
/// \brief A strided rank-4 tensor in memory space `MemSpace`.
/// \tparam T element type (`const`-qualified for inputs).
/// \tparam MemSpace a Kokkos memory space.
template <class T, class MemSpace>
using view4 = Kokkos::View<T****, Kokkos::LayoutStride, MemSpace>;

/// \brief True when memory of `MemSpace` can be read by code running in `ExecSpace`.
/// \tparam ExecSpace a Kokkos execution space.
/// \tparam MemSpace a Kokkos memory space.
template <class ExecSpace, class MemSpace>
inline constexpr bool is_accessible_v =
    Kokkos::SpaceAccessibility<ExecSpace, MemSpace>::accessible;

/// \brief True when an optional tensor was given (a default-constructed view was not).
///
/// A default-constructed view has no data and every extent zero; a given tensor has data or a
/// nonzero extent, so a zero-size tensor such as a (B, D, 0) conv state (width W = 1) counts as
/// given even where Kokkos gives it no memory.
/// \param v the view, of any shape.
/// \return whether `v` has data or any nonzero extent.
template <class View>
bool given(View const& v) {
  if (v.data() != nullptr) return true;
  for (unsigned r = 0; r < static_cast<unsigned>(View::rank); ++r)
    if (v.extent(r) != 0) return true;
  return false;
}

/// \brief View memory as a rank-3 strided tensor with the given extents and strides.
///
/// The result does not own the memory: the caller keeps the original alive.
/// \tparam T element type.
/// \tparam MemSpace the memory space `data` lives in (host by default).
/// \param data first element.
/// \param n0,n1,n2 extents.
/// \param s0,s1,s2 strides in elements.
/// \return (n0, n1, n2) view of `data`, `result(i, j, k) == data[i*s0 + j*s1 + k*s2]`.
template <class T, class MemSpace = Kokkos::HostSpace>
view3<T, MemSpace> strided(T* data, std::size_t n0, std::size_t s0, std::size_t n1, std::size_t s1,
                           std::size_t n2, std::size_t s2) {
  return view3<T, MemSpace>(data, Kokkos::LayoutStride(n0, s0, n1, s1, n2, s2));
}

/// \brief View memory as a rank-2 strided tensor with the given extents and strides.
///
/// The result does not own the memory: the caller keeps the original alive.
/// \tparam T element type.
/// \tparam MemSpace the memory space `data` lives in (host by default).
/// \param data first element.
/// \param n0,n1 extents.
/// \param s0,s1 strides in elements.
/// \return (n0, n1) view of `data`, `result(i, j) == data[i*s0 + j*s1]`.
template <class T, class MemSpace = Kokkos::HostSpace>
view2<T, MemSpace> strided(T* data, std::size_t n0, std::size_t s0, std::size_t n1, std::size_t s1) {
  return view2<T, MemSpace>(data, Kokkos::LayoutStride(n0, s0, n1, s1));
}

/// \brief See a token-major tensor x (B, L, D) as the channel-major (B, D, L) that
/// mamba_ssm's kernels take, by swapping the strides of its last two dimensions (no copy).
///
/// \tparam View a rank-3 Kokkos view type.
/// \param x (B, L, D) any rank-3 view. The result does not own the memory.
/// \return (B, D, L) with `result(b, d, l) == x(b, l, d)`.
template <class View>
auto transpose_last_two(View const& x) {
  using value_type = typename View::value_type;
  using memory_space = typename View::memory_space;
  static_assert(View::rank == 3, "ssm::transpose_last_two: x must be a rank-3 view");
  return view3<value_type, memory_space>(
      x.data(), Kokkos::LayoutStride(x.extent(0), x.stride(0), x.extent(2), x.stride(2),
                                     x.extent(1), x.stride(1)));
}

/// \brief See B or C of shape (B, N, L) as the grouped (B, G=1, N, L) the scan takes (no copy).
/// \tparam View a rank-3 Kokkos view type.
/// \param x (B, N, L) any rank-3 view. The result does not own the memory.
/// \return (B, 1, N, L) `view4` with `result(b, 0, n, l) == x(b, n, l)`.
template <class View>
auto one_group(View const& x) {
  using value_type = typename View::value_type;
  using memory_space = typename View::memory_space;
  static_assert(View::rank == 3, "ssm::one_group: x must be a rank-3 view");
  return view4<value_type, memory_space>(
      x.data(), Kokkos::LayoutStride(x.extent(0), x.stride(0), 1, x.stride(0), x.extent(1),
                                     x.stride(1), x.extent(2), x.stride(2)));
}

}  // namespace ssm
