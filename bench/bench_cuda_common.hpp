#pragma once
// What the GPU benchmarks share: timing a call with CUDA events on its stream.
#include <algorithm>
#include <functional>
#include <vector>

#include <cuda_runtime.h>

#include <ssm/core/cuda.hpp>

namespace ssm::bench {

/// Milliseconds of one call of `run` on `space`'s stream: three warm-up calls, then the median of
/// 50, each between two CUDA events.
inline double median_ms(Kokkos::Cuda const& space, std::function<void()> const& run) {
  cuda::event_timer const timer("benchmark: CUDA events");
  for (int i = 0; i < 3; ++i) run();
  std::vector<float> ms;
  for (int i = 0; i < 50; ++i) {
    timer.start(cuda::stream(space));
    run();
    timer.stop(cuda::stream(space));
    ms.push_back(timer.milliseconds());
  }
  std::sort(ms.begin(), ms.end());
  return static_cast<double>(ms[ms.size() / 2]);
}

/// Milliseconds of one replay of what `record` enqueues on `space`'s stream, captured once as a
/// CUDA graph: back-to-back launches as a decoding step replays them, without the host's launch
/// cost between them. Timed as `median_ms` times a call.
inline double graph_ms(Kokkos::Cuda const& space, std::function<void()> const& record) {
  char const* what = "benchmark: CUDA graph";
  cudaStream_t const stream = cuda::stream(space);
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  cuda::check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed), what);
  record();
  cuda::check(cudaStreamEndCapture(stream, &graph), what);
  cuda::check(cudaGraphInstantiate(&exec, graph, 0), what);
  double const ms = median_ms(space, [&] { cuda::check(cudaGraphLaunch(exec, stream), what); });
  cuda::check(cudaGraphExecDestroy(exec), what);
  cuda::check(cudaGraphDestroy(graph), what);
  return ms;
}

}  // namespace ssm::bench
