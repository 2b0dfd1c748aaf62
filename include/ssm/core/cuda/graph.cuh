#pragma once
/// \file
/// \brief `ssm::graph<Kokkos::Cuda>`: the work captured from the instance's stream into a CUDA
/// graph, and replayed with one `cudaGraphLaunch`.

#include <cuda_runtime.h>

#include <functional>
#include <memory>

#include <ssm/core/cuda.hpp>

namespace ssm {

/// \brief A CUDA graph captured from the work that a callable enqueues on a `Kokkos::Cuda` stream.
///
/// Capture is in relaxed mode, so that the calls Kokkos and cuBLASLt make on the side (attribute
/// queries) are allowed; the work must not allocate or synchronise while it is captured, which is
/// why it runs once before `record`.
template <>
class graph<Kokkos::Cuda> {
 public:
  /// \brief Capture what `work` enqueues on `space`'s stream (nothing runs now).
  /// \param space the execution space instance the work enqueues on.
  /// \param work enqueues the work; called once, during the capture.
  /// \throws ssm::error if the work cannot be captured.
  void record(Kokkos::Cuda const& space, std::function<void()> const& work) {
    stream_ = cuda::stream(space);
    cudaGraph_t captured = nullptr;
    cuda::check(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeRelaxed), "ssm::graph: begin capture");
    try {
      work();
    } catch (...) {
      cudaStreamEndCapture(stream_, &captured);
      if (captured) cudaGraphDestroy(captured);
      cudaGetLastError();  // the failed capture's error must not be reported by the next launch
      throw;
    }
    cuda::check(cudaStreamEndCapture(stream_, &captured), "ssm::graph: end capture");
    std::unique_ptr<CUgraph_st, decltype(&cudaGraphDestroy)> owned(captured, cudaGraphDestroy);
    cudaGraphExec_t exec = nullptr;
    cuda::check(cudaGraphInstantiate(&exec, captured, 0), "ssm::graph: instantiate");
    exec_.reset(exec);
  }
  /// \brief Launch the captured graph on the stream it was captured from (asynchronous).
  /// \throws ssm::error if the launch fails.
  void replay() const { cuda::check(cudaGraphLaunch(exec_.get(), stream_), "ssm::graph: launch"); }
  /// \brief Whether something was recorded. \return true after `record`.
  bool recorded() const { return static_cast<bool>(exec_); }

 private:
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<CUgraphExec_st, decltype(&cudaGraphExecDestroy)> exec_{nullptr, cudaGraphExecDestroy};
};

}  // namespace ssm
