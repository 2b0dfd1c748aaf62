/// \file
/// \brief The copy engine's helpers (`ssm/core/cuda/copy_engine.cuh`) in the protocol that
/// `mamba_stack_step` runs (`ssm/model/cuda/stack_step.cuh`): one producer lane copies rounds of
/// data into two shared-memory regions by `cp.async.bulk`, each announced on a "full" mbarrier,
/// and eight consumer warps read a region and hand it back on an "empty" mbarrier (one arrival a
/// warp, as the stack step's parameter regions are handed back), or, in the second case, each
/// region is read by a warp of its own and handed back by one arrival (as the ring's slots are).
/// Sixteen rounds take each barrier through eight phases. Each warp's sums are checked against the
/// host's (integers, exact in fp32 in any order).
///
/// An mbarrier's parity tells only consecutive phases apart, so a warp must not wait on a barrier
/// that may be more than one phase past its last wait: hence a region's own warp. (With 8 warps
/// taking turns over the 2 regions, a warp that has read round r waits next for round r + 8, and
/// passes while the region still holds round r + 2, whose phase has the other parity; a first
/// version of this test did so, and its launch failed.) The stack step keeps at least as
/// many ring slots as consumer warps for that reason.
///
/// Under compute-sanitizer's racecheck both cases pass and racecheck reports hazards between the
/// copies and the consumers' reads, as it does for the stack step (docs/benchmarks.md, 2026-12-01).

#include "catch.hpp"

#include <cstdint>

#include <ssm/core/cuda.hpp>
#include <ssm/core/cuda/copy_engine.cuh>

#include "cuda_support.hpp"

namespace {

using namespace ssm::cuda;

constexpr int floats_per_round = 1024, rounds = 16, consumers = 8;

/// Round r's data into region r % 2; every consumer warp (shared) or consumer warp r % 2 (own) sums it.
template <bool Shared>
__global__ void copy_protocol(float const* data, float* sums) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ __align__(128) unsigned char smem[];
  auto* const full = reinterpret_cast<std::uint64_t*>(smem);
  auto* const empty = full + 2;
  auto* const region = reinterpret_cast<float*>(smem + 128);
  int const warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  if (threadIdx.x == 0) {
    for (int i = 0; i < 2; ++i) barrier_init(full + i, 1), barrier_init(empty + i, Shared ? consumers : 1);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  if (warp == 0) {
    if (lane != 0) return;
    for (int r = 0; r < rounds; ++r) {
      int const b = r % 2;
      barrier_wait(empty + b, static_cast<unsigned>((r / 2) & 1) ^ 1u);
      barrier_expect(full + b, floats_per_round * sizeof(float));
      bulk_copy(region + b * floats_per_round, data + r * floats_per_round, floats_per_round * sizeof(float), full + b);
    }
    return;
  }
  int const cw = warp - 1;
  for (int r = 0; r < rounds; ++r) {
    int const b = r % 2;
    if (!Shared && b != cw) continue;
    barrier_wait(full + b, static_cast<unsigned>((r / 2) & 1));
    float sum = 0.0f;
    for (int i = lane; i < floats_per_round; i += 32) sum += region[b * floats_per_round + i];
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    __syncwarp();
    if (lane == 0) {
      barrier_arrive(empty + b);
      sums[r * consumers + cw] = sum;
    }
  }
#else
  (void)data, (void)sums;
#endif
}

template <bool Shared>
void check_protocol() {
  auto const kernel = copy_protocol<Shared>;
  if (!runs_hopper_code(kernel)) {
    WARN("the copy engine's bulk copies need a build for, and a GPU of, compute capability 9.0 (Hopper) or later: "
         "not tested");
    return;
  }
  ssm::test::host1<float> h_data("data", rounds * floats_per_round);
  for (std::size_t i = 0; i < h_data.extent(0); ++i) h_data(i) = static_cast<float>(i % 97) - 48.0f;
  auto const d_data = ssm::test::gpu::to_device(h_data);
  ssm::test::gpu::dev1<float> d_sums("sums", rounds * consumers);
  std::size_t const bytes = 128 + 2 * floats_per_round * sizeof(float);
  ssm::cuda::check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)),
                   "copy_protocol");
  kernel<<<1, 32 * (1 + consumers), bytes>>>(d_data.data(), d_sums.data());
  ssm::cuda::check(cudaDeviceSynchronize(), "copy_protocol");
  auto const sums = ssm::test::gpu::to_host(d_sums);
  for (int r = 0; r < rounds; ++r) {
    double expected = 0.0;
    for (int i = 0; i < floats_per_round; ++i) expected += h_data(r * floats_per_round + i);
    for (int w = 0; w < consumers; ++w)
      if (Shared || r % 2 == w) CHECK(sums(r * consumers + w) == static_cast<float>(expected));
  }
}

}  // namespace

TEST_CASE("bulk copies into regions shared by eight consumer warps", "[cuda][copy_engine]") { check_protocol<true>(); }
TEST_CASE("bulk copies into regions each read by one consumer warp", "[cuda][copy_engine]") { check_protocol<false>(); }
