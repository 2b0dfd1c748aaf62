#pragma once
/// \file
/// \brief What the hand-written CUDA kernels share: error checks, the stream of an execution space
/// instance, and fp32 conversions of the storage types in device code.
///
/// Every name here exists only when Kokkos has its CUDA backend (`KOKKOS_ENABLE_CUDA`); the header
/// is empty otherwise, so that it can be included everywhere. The kernels themselves live beside
/// their op, in `ssm/<op>/cuda/*.cuh`, and take over through the op's backend trait for
/// `Kokkos::Cuda`.

#include <Kokkos_Core.hpp>

#if defined(KOKKOS_ENABLE_CUDA)

#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>

#include <ssm/core/dtype.hpp>
#include <ssm/core/error.hpp>

namespace ssm::cuda {

/// \brief Throw `ssm::error` naming `what` and CUDA's message when `status` is not `cudaSuccess`.
/// \param status the return code of a CUDA runtime call.
/// \param what the call, e.g. `"ssm::selective_scan: launch"`.
inline void check(cudaError_t status, char const* what) {
  if (status != cudaSuccess)
    throw error(std::string(what) + ": " + cudaGetErrorName(status) + " (" + cudaGetErrorString(status) + ")");
}

/// \brief Check that the kernel just launched was accepted (bad configuration, missing image).
/// \param what the kernel, e.g. `"ssm::selective_scan::cuda"`.
inline void check_launch(char const* what) { check(cudaGetLastError(), what); }

/// \brief The CUDA stream an execution space instance enqueues its work on.
/// \param space the instance. \return its stream.
inline cudaStream_t stream(Kokkos::Cuda const& space) { return space.cuda_stream(); }

/// \brief Blocks needed to cover `n` items with `per_block` items per block.
/// \param n items. \param per_block items per block. \return the rounded-up quotient, at least 1.
constexpr unsigned blocks_for(std::size_t n, std::size_t per_block) {
  return static_cast<unsigned>(n == 0 ? 1 : (n + per_block - 1) / per_block);
}

/// \brief Call `f(std::integral_constant<int, V>{})` for the V among `Values` that equals `v`: a
/// runtime size turned into the compile-time one a kernel is instantiated for.
/// \tparam Values the sizes there are kernels for. \param v the size. \param f a generic callable.
/// \throws ssm::error if `v` is none of them (the callers check their sizes first).
template <int... Values, class F>
void with_constant(int v, F&& f) {
  bool const found = ((v == Values && (f(std::integral_constant<int, Values>{}), true)) || ...);
  if (!found) throw error("ssm::cuda::with_constant: no kernel for the size " + std::to_string(v));
}

/// \brief Call `f(std::integral_constant<int, V>{})` for each V of `Values`, in order: to compare
/// the kernels instantiated for several sizes.
/// \tparam Values the sizes. \param f a generic callable.
template <int... Values, class F>
void for_each_constant(F&& f) {
  (f(std::integral_constant<int, Values>{}), ...);
}

/// \brief The number of the current device (`cudaGetDevice`).
/// \return the device.
inline int current_device() {
  int device = 0;
  check(cudaGetDevice(&device), "ssm::cuda::current_device: cudaGetDevice");
  return device;
}

/// \brief A value of each device, found the first time it is asked for on that device and kept for
/// the process: the device's properties, and the launch plans that follow from them. Safe to ask
/// from several host threads. Devices past the 64th share the slots of the first 64.
/// \tparam V the value's type.
template <class V>
class per_device {
 public:
  /// \brief The current device's value, `find(device)` the first time.
  /// \param find a callable taking the device number and returning a V.
  /// \return the value.
  template <class Find>
  V const& get(Find&& find) {
    int const device = current_device();
    slot& s = slots_[device % 64];
    if (!s.known.load(std::memory_order_acquire)) {
      std::lock_guard<std::mutex> const lock(mutex_);
      if (!s.known.load(std::memory_order_relaxed)) {
        s.value = find(device);
        s.known.store(true, std::memory_order_release);
      }
    }
    return s.value;
  }

 private:
  struct slot {
    V value{};
    std::atomic<bool> known{false};
  };
  slot slots_[64];
  std::mutex mutex_;
};

/// \brief An attribute of the current device (read once per device).
/// \tparam Attribute the attribute. \param what names the caller in errors.
/// \return its value.
template <cudaDeviceAttr Attribute>
int device_attribute(char const* what) {
  static per_device<int> values;
  return values.get([&](int device) {
    int value = 0;
    check(cudaDeviceGetAttribute(&value, Attribute, device), what);
    return value;
  });
}

/// \brief The major compute capability of the current device (read once per device): 9 for
/// Hopper, whose copy engine (`cp.async.bulk`) and clusters some kernels take.
/// \return the major version.
inline int compute_major() {
  return device_attribute<cudaDevAttrComputeCapabilityMajor>("ssm::cuda::compute_major");
}

/// \brief Multiprocessors of the current device (read once per device).
/// \return the count.
inline int multiprocessors() { return device_attribute<cudaDevAttrMultiProcessorCount>("ssm::cuda::multiprocessors"); }

/// \brief Whether `kernel` runs Hopper's code on the current device: the device is a Hopper or
/// later (compute capability 9.0 on) and the kernel was compiled for one (its PTX from 9.0 on),
/// so that what it guards with `__CUDA_ARCH__ >= 900` (clusters, the copy engine, the waits of
/// programmatic launches) was not compiled out. A build for an earlier GPU also runs on a Hopper,
/// from its PTX, without them.
/// \param kernel the `__global__` function. \return true if its Hopper code runs.
template <class... Params>
bool runs_hopper_code(void (*kernel)(Params...)) {
  if (compute_major() < 9) return false;
  cudaFuncAttributes attributes{};
  check(cudaFuncGetAttributes(&attributes, kernel), "ssm::cuda::runs_hopper_code");
  return attributes.ptxVersion >= 90;
}

/// \brief The most shared memory one block of the current device may ask for (read once per
/// device), the opt-in limit above the default 48 KiB: a kernel must be allowed it (`allow_shared`).
/// \return bytes.
inline std::size_t max_shared_per_block() {
  return static_cast<std::size_t>(
      device_attribute<cudaDevAttrMaxSharedMemoryPerBlockOptin>("ssm::cuda::max_shared_per_block"));
}

/// \brief Let `kernel` take `bytes` of dynamic shared memory, past the default 48 KiB if need be.
/// \param kernel the `__global__` function. \param bytes its dynamic shared memory.
/// \throws ssm::error if the device refuses.
template <class... Params>
void allow_shared(void (*kernel)(Params...), std::size_t bytes) {
  if (bytes <= 48 * 1024) return;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)),
        "ssm::cuda::allow_shared");
}

/// \brief Whether a pointer is aligned to `bytes`.
/// \param p the pointer. \param bytes a power of two. \return `p % bytes == 0`.
inline bool aligned(void const* p, std::size_t bytes) {
  return reinterpret_cast<std::uintptr_t>(p) % bytes == 0;
}

/// \brief Two CUDA events that time what a stream runs between `start` and `stop`, destroyed with
/// the timer, also when a CUDA call throws. For benchmarks, tests and timed choices (cuBLASLt's
/// algorithms); not for the hot path.
class event_timer {
 public:
  /// \brief Create the two events. \param what names the timer in errors.
  /// \throws ssm::error if CUDA cannot create them.
  explicit event_timer(char const* what) : what_(what) {
    check(cudaEventCreate(&start_), what_);
    if (cudaError_t const e = cudaEventCreate(&stop_); e != cudaSuccess) {
      cudaEventDestroy(start_);
      check(e, what_);
    }
  }
  event_timer(event_timer const&) = delete;
  event_timer& operator=(event_timer const&) = delete;
  ~event_timer() {
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }

  /// \brief Mark the start on `stream`. \param stream the stream.
  void start(cudaStream_t stream) const { check(cudaEventRecord(start_, stream), what_); }
  /// \brief Mark the end on `stream`. \param stream the stream.
  void stop(cudaStream_t stream) const { check(cudaEventRecord(stop_, stream), what_); }
  /// \brief Wait for the end mark; the milliseconds between the two marks.
  /// \return the elapsed time.
  float milliseconds() const {
    check(cudaEventSynchronize(stop_), what_);
    float elapsed = 0.0f;
    check(cudaEventElapsedTime(&elapsed, start_, stop_), what_);
    return elapsed;
  }

 private:
  char const* what_;
  cudaEvent_t start_{};
  cudaEvent_t stop_{};
};

/// \brief A view as a kernel argument: its first element and its strides in elements, so that
/// kernels index it as the view does without the view's reference counting.
/// \tparam T element type (const for inputs). \tparam Rank the view's rank.
template <class T, int Rank>
struct tensor_ref {
  T* data = nullptr;                ///< the first element; null for an absent optional view
  std::int64_t stride[Rank] = {};  ///< elements between neighbours along each dimension

  /// \brief Whether the view was given. \return data != null.
  __host__ __device__ explicit operator bool() const { return data != nullptr; }
  /// \brief The element at the given indices. \param i one index per dimension.
  /// \return a reference to it.
  template <class... I>
  __device__ T& operator()(I... i) const {
    static_assert(sizeof...(I) == Rank, "one index per dimension");
    std::int64_t offset = 0;
    int k = 0;
    ((offset += static_cast<std::int64_t>(i) * stride[k++]), ...);
    return data[offset];
  }
};

/// \brief The `tensor_ref` of a view (absent views give a null one).
/// \param v a Kokkos view of rank 1 to 8. \return its pointer and strides.
template <class View>
auto ref(View const& v) {
  constexpr int rank = static_cast<int>(View::rank);
  tensor_ref<typename View::value_type, rank> r;
  r.data = v.data();
  for (int k = 0; k < rank; ++k) r.stride[k] = static_cast<std::int64_t>(v.stride(k));
  return r;
}

/// \brief In a kernel launched with `launch` (a programmatic dependent): wait until the kernel
/// before it on the stream has finished and its writes are visible. Call it before reading what
/// that kernel writes, or writing what it reads. A no-op for an ordinary launch, and before Hopper.
///
/// Read what that kernel wrote with ordinary loads or `load_after_wait`, never through the
/// read-only data path: `__ldg`, or a `T const* __restrict__` parameter (from which the compiler
/// may emit the same loads itself). Such loads (`ld.global.nc`) promise that the data does not
/// change while the kernel runs, so the compiler may issue them ahead of the wait, and they then
/// read the data before it is written (tests/cuda/test_dependent_launch.cpp catches it). The
/// weights, which no kernel of the chain writes, may still be read that way, before the wait.
__device__ inline void wait_for_previous_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/// \brief A load of what the kernel before this one wrote, after `wait_for_previous_kernel`: an
/// ordinary, coherent load (`ld.global.ca`, kept in L1 for the other warps of the block), which
/// stays after the wait (see there). Through L2 only (`__ldcg`) is as safe, but the decoding step
/// of one sequence, whose every warp reads the whole activation row, took 0.19 ms longer.
/// \tparam V a type `__ldca` takes (`uint4` for a 16-byte piece, `float`, ...).
/// \param p the value's address. \return the value.
template <class V>
__device__ inline V load_after_wait(V const* p) {
  return __ldca(p);
}

/// \brief In any kernel: let the next kernel on the stream, if launched with `launch`, start its
/// blocks now; they still wait in `wait_for_previous_kernel` for this one to finish.
__device__ inline void allow_next_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

/// \brief The launch attribute that makes a kernel a programmatic dependent of the one before it
/// (what `launch` gives; for launches with further attributes, such as clusters).
/// \return the attribute.
inline cudaLaunchAttribute programmatic_dependent() {
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  return attribute;
}

/// \brief Launch `kernel` on `stream` as a programmatic dependent of the kernel before it: its
/// blocks may start while that kernel finishes, up to their `wait_for_previous_kernel`. In a chain
/// of small kernels (a decoding step) this hides each launch behind the previous kernel's tail.
/// The kernel must call `wait_for_previous_kernel` before touching its predecessor's data. Before
/// Hopper, an ordinary launch. (A kernel whose wait was compiled out, built for an earlier GPU,
/// also never lets its dependents start early: `allow_next_kernel` is compiled out with it.)
/// \param kernel the `__global__` function. \param grid,block the launch shape.
/// \param shared dynamic shared memory in bytes. \param stream the stream.
/// \param what names the launch in errors. \param args the kernel's arguments.
/// \throws ssm::error if the launch fails.
template <class... Params, class... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t shared, cudaStream_t stream,
            char const* what, Args&&... args) {
  cudaLaunchAttribute attribute = programmatic_dependent();
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared;
  config.stream = stream;
  config.attrs = &attribute;
  config.numAttrs = compute_major() >= 9 ? 1 : 0;
  check(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...), what);
}

}  // namespace ssm::cuda

#endif  // KOKKOS_ENABLE_CUDA
