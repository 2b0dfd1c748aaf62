#pragma once
/// \file
/// \brief `ssm::graph`: record a piece of work once, replay it many times.
///
/// Decoding enqueues the same few hundred small kernels for every token. On a GPU, launching them
/// one by one costs more than many of them run; captured into a CUDA graph, a whole step is one
/// launch (`ssm/core/cuda/graph.cuh`). On other execution spaces a graph simply calls the work.
/// What the work touches must be the same memory at every replay (a graph records addresses),
/// and everything it allocates or plans must already exist: run it once before recording.

#include <functional>
#include <utility>

#include <Kokkos_Core.hpp>

namespace ssm {

/// \brief Work recorded once and replayed; the primary template replays by calling it again.
/// \tparam ExecSpace a Kokkos execution space.
template <class ExecSpace>
class graph {
 public:
  /// \brief Record `work`, which enqueues its kernels on `space` (nothing runs now).
  /// \param space the execution space instance the work enqueues on.
  /// \param work a callable; it must enqueue the same work whenever called.
  void record([[maybe_unused]] ExecSpace const& space, std::function<void()> work) { work_ = std::move(work); }
  /// \brief Enqueue the recorded work again (asynchronous, like the work itself).
  void replay() const { work_(); }
  /// \brief Whether something was recorded. \return true after `record`.
  bool recorded() const { return static_cast<bool>(work_); }

 private:
  std::function<void()> work_;
};

}  // namespace ssm

#if defined(KOKKOS_ENABLE_CUDA)
#include <ssm/core/cuda/graph.cuh>
#endif
