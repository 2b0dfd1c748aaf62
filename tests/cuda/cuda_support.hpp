#pragma once
// Helpers of the GPU tests: move contiguous host tensors to the GPU and back, fill them with random
// values, and poison outputs so that an element a kernel forgot to write cannot pass for a right one.
#include <cstdint>
#include <cstring>
#include <limits>

#include <Kokkos_Core.hpp>

#include <ssm/core/cuda.hpp>

#include "support.hpp"

namespace ssm::test::gpu {

using space = Kokkos::Cuda;
using memory = Kokkos::CudaSpace;

/// A contiguous GPU tensor of rank 1 to 4.
template <class T>
using dev1 = Kokkos::View<T*, Kokkos::LayoutRight, memory>;
template <class T>
using dev2 = Kokkos::View<T**, Kokkos::LayoutRight, memory>;
template <class T>
using dev3 = Kokkos::View<T***, Kokkos::LayoutRight, memory>;
template <class T>
using dev4 = Kokkos::View<T****, Kokkos::LayoutRight, memory>;

/// A GPU copy of a contiguous host view (same shape and layout).
template <class HostView>
auto to_device(HostView const& host) {
  auto device = Kokkos::create_mirror_view(memory(), host);
  Kokkos::deep_copy(device, host);
  return device;
}

/// A host copy of a GPU view (fences the copy).
template <class DeviceView>
auto to_host(DeviceView const& device) {
  return Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), device);
}

/// Fill a contiguous GPU view as `fill_uniform` fills a host one (the same values for the same seed).
template <class DeviceView>
void fill_uniform_on_device(DeviceView const& device, std::uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  auto host = Kokkos::create_mirror_view(device);
  fill_uniform(host, seed, lo, hi);
  Kokkos::deep_copy(device, host);
}

/// Fill a GPU view with NaN bit patterns of its element type: outputs start poisoned.
template <class DeviceView>
void poison(DeviceView const& device) {
  auto host = Kokkos::create_mirror_view(device);
  using T = typename DeviceView::non_const_value_type;
  T const nan = from_float<T>(std::numeric_limits<float>::quiet_NaN());
  for (std::size_t i = 0; i < host.span(); ++i) host.data()[i] = nan;
  Kokkos::deep_copy(device, host);
}

/// Milliseconds per call of `enqueue(space)`, timed with CUDA events on the stream of `space` over
/// `calls` calls, after three untimed ones (first-touch, caches).
template <class Enqueue>
double milliseconds_per_call(space const& s, int calls, Enqueue&& enqueue) {
  for (int i = 0; i < 3; ++i) enqueue(s);
  ssm::cuda::event_timer const timer("milliseconds_per_call");
  timer.start(ssm::cuda::stream(s));
  for (int i = 0; i < calls; ++i) enqueue(s);
  timer.stop(ssm::cuda::stream(s));
  float const total = timer.milliseconds();
  return static_cast<double>(total) / calls;
}

}  // namespace ssm::test::gpu
