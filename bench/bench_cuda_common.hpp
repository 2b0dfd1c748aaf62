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
  char const* what = "benchmark: CUDA events";
  cudaEvent_t start, stop;
  cuda::check(cudaEventCreate(&start), what);
  cuda::check(cudaEventCreate(&stop), what);
  for (int i = 0; i < 3; ++i) run();
  std::vector<float> ms;
  for (int i = 0; i < 50; ++i) {
    cuda::check(cudaEventRecord(start, cuda::stream(space)), what);
    run();
    cuda::check(cudaEventRecord(stop, cuda::stream(space)), what);
    cuda::check(cudaEventSynchronize(stop), what);
    float elapsed = 0.0f;
    cuda::check(cudaEventElapsedTime(&elapsed, start, stop), what);
    ms.push_back(elapsed);
  }
  cuda::check(cudaEventDestroy(start), what);
  cuda::check(cudaEventDestroy(stop), what);
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
