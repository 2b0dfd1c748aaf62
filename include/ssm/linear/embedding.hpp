#pragma once
/// \file
/// \brief Embedding lookup: one row of a (V, E) table per token id.
///
/// \f$\mathrm{out}_{m,e} = W_{\mathrm{id}_m, e}\f$, widened from the table's storage type and
/// rounded to the activations'. Ids outside [0, V) are refused before anything is read, unless the
/// caller vouches for them (`check_ids = false`: ids chosen on the device, in a recorded graph);
/// even then such an id reads nothing and gives a row of NaN.

#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>

#include <ssm/core/compat.hpp>
#include <ssm/core/dtype.hpp>
#include <ssm/core/error.hpp>
#include <ssm/core/views.hpp>

namespace ssm {

/// \brief Everything an embedding lookup reads and writes.
/// \tparam T activation storage type. \tparam Wt table storage type. \tparam MemSpace memory space.
template <class T, class Wt, class MemSpace>
struct embedding_params {
  view1<const std::int32_t, MemSpace> ids;  ///< (M) token ids, each in [0, V)
  view2<const Wt, MemSpace> table;          ///< (V, E) one row per token
  view2<T, MemSpace> out;                   ///< (M, E) the rows of the ids
  bool check_ids = true;                    ///< refuse bad ids first (waits for the space)
};

namespace reference {

/// \brief Sequential reference of the embedding lookup. Host memory only.
/// \tparam T activation storage type. \tparam Wt table storage type. \tparam MemSpace host-accessible.
/// \param p the tensors. \throws ssm::shape_error for wrong shapes or an id outside [0, V).
template <class T, class Wt, class MemSpace>
void embedding(embedding_params<T, Wt, MemSpace> const& p) {
  static_assert(is_accessible_v<Kokkos::DefaultHostExecutionSpace, MemSpace>,
                "ssm::reference::embedding: the tensors must be in host-accessible memory");
  char const* fn = "ssm::reference::embedding";
  detail::require(p.out.extent(0) == p.ids.extent(0) && p.out.extent(1) == p.table.extent(1), fn,
                  "out must be (M, E) = " + detail::shape_string(p.ids.extent(0), p.table.extent(1)));
  for (std::size_t m = 0; m < p.ids.extent(0); ++m) {
    std::int32_t const id = p.ids(m);
    detail::require(id >= 0 && static_cast<std::size_t>(id) < p.table.extent(0), fn,
                    "token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                        std::to_string(p.table.extent(0)) + ")");
    for (std::size_t e = 0; e < p.table.extent(1); ++e) p.out(m, e) = from_float<T>(to_float(p.table(id, e)));
  }
}

}  // namespace reference

/// \brief Embedding lookup on an execution space (asynchronous, after a check of the ids).
///
/// With `p.check_ids`, the ids are checked first with a reduction on `space` (which waits for
/// it), so a bad id is an exception. Without, nothing waits (the lookup can be recorded in a
/// graph) and a bad id gives a row of NaN. Either way nothing is read out of bounds.
/// \tparam ExecSpace a Kokkos execution space that can access `MemSpace`.
/// \tparam T activation storage type. \tparam Wt table storage type. \tparam MemSpace memory space.
/// \param space the execution space instance. \param p the tensors.
/// \throws ssm::shape_error for wrong shapes, or an id outside [0, V) when checking.
template <class ExecSpace, class T, class Wt, class MemSpace>
void embedding(ExecSpace const& space, embedding_params<T, Wt, MemSpace> const& p) {
  static_assert(is_accessible_v<ExecSpace, MemSpace>,
                "ssm::embedding: the tensors must be accessible from the execution space");
  char const* fn = "ssm::embedding";
  std::size_t const M = p.ids.extent(0), V = p.table.extent(0), E = p.table.extent(1);
  detail::require(p.out.extent(0) == M && p.out.extent(1) == E, fn,
                  "out must be (M, E) = " + detail::shape_string(M, E));
  if (M == 0) return;
  auto const ids = p.ids;
  if (p.check_ids) {
    int bad = 0;
    Kokkos::parallel_reduce(
        "ssm::embedding::check_ids", Kokkos::RangePolicy<ExecSpace>(space, 0, static_cast<int>(M)),
        KOKKOS_LAMBDA(int const m, int& count) {
          count += (ids(m) < 0 || static_cast<std::size_t>(ids(m)) >= V) ? 1 : 0;
        },
        bad);
    detail::require(bad == 0, fn, std::to_string(bad) + " token id(s) outside the vocabulary [0, " + std::to_string(V) + ")");
  }
  auto const table = p.table;
  auto const out = p.out;
  using policy = Kokkos::MDRangePolicy<ExecSpace, Kokkos::Rank<2>>;
  Kokkos::parallel_for(
      "ssm::embedding", compat::capturable(policy(space, {0, 0}, {static_cast<long>(M), static_cast<long>(E)})),
      KOKKOS_LAMBDA(long const m, long const e) {
        std::int32_t const id = ids(m);
        bool const valid = id >= 0 && static_cast<std::size_t>(id) < V;
        out(m, e) = from_float<T>(valid ? to_float(table(valid ? id : 0, e)) : std::numeric_limits<float>::quiet_NaN());
      });
}

}  // namespace ssm
