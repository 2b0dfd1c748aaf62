#pragma once
/// \file
/// \brief The copy engine (`cp.async.bulk`, Hopper on) and the shared-memory barriers that report
/// its copies (`mbarrier`): a thread asks for a contiguous piece of global memory to land in shared
/// memory and goes on; whoever needs the piece waits on the barrier. One instruction moves a whole
/// piece, and the copies hold no registers while in flight. `mamba_stack_step` streams its weights
/// this way; `tests/cuda/test_copy_engine.cpp` checks the protocol.

#include <cuda_runtime.h>

#include <cstdint>

namespace ssm::cuda {

/// \brief The shared-memory address of a pointer into shared memory, for PTX.
__device__ inline unsigned shared_address(void const* p) { return static_cast<unsigned>(__cvta_generic_to_shared(p)); }

/// \brief `mbarrier.init`: a barrier that completes a phase after `count` arrivals.
__device__ inline void barrier_init(std::uint64_t* bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(shared_address(bar)), "r"(count) : "memory");
}

/// \brief One arrival that also expects `bytes` from the copy engine before the phase completes.
__device__ inline void barrier_expect(std::uint64_t* bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(shared_address(bar)), "r"(bytes)
               : "memory");
}

/// \brief One arrival.
__device__ inline void barrier_arrive(std::uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(shared_address(bar)) : "memory");
}

/// \brief Wait until the phase of parity `parity` has completed. The parity tells only consecutive
/// phases apart: wait on a barrier at most one phase past this thread's last wait on it, or the
/// wait may pass on an older phase of the same parity (`tests/cuda/test_copy_engine.cpp`).
__device__ inline void barrier_wait(std::uint64_t* bar, unsigned parity) {
  asm volatile(
      "{\n\t.reg .pred done;\n"
      "wait:\n\t"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n\t"
      "@!done bra wait;\n}" ::"r"(shared_address(bar)),
      "r"(parity)
      : "memory");
}

/// \brief The copy engine brings `bytes` (a multiple of 16, both ends 16-byte aligned) from global
/// to shared memory, and reports them to `bar`.
__device__ inline void bulk_copy(void* dst, void const* src, unsigned bytes, std::uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                   shared_address(dst)),
               "l"(src), "r"(bytes), "r"(shared_address(bar))
               : "memory");
}

/// \brief 16 bytes of shared memory in one instruction. (Through a `uint4` pointer and
/// `widen_piece`'s copy the compiler read such pieces a byte at a time.)
__device__ inline uint4 load_shared(void const* p) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "r"(shared_address(p)));
  return v;
}

}  // namespace ssm::cuda
