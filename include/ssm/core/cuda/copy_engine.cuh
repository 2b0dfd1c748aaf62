#pragma once
/// \file
/// \brief Copies into shared memory that hold no registers while in flight, and the counters that
/// let the blocks of one launch meet.
///
/// - The copy engine (`cp.async.bulk`, Hopper on) and the shared-memory barriers that report its
///   copies (`mbarrier`): a thread asks for a contiguous piece of global memory to land in shared
///   memory and goes on; whoever needs the piece waits on the barrier. One instruction moves a
///   whole piece. `mamba_stack_step` streams its weights this way;
///   `tests/cuda/test_copy_engine.cpp` checks the protocol.
/// - `cp.async` (Ampere on): each thread copies 16 bytes at a time, in groups it waits for itself.
/// - A counter added to with release semantics and read with acquire semantics, at GPU scope,
///   and meetings of blocks of a launch built on two such words (`meet_blocks`).

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

/// \brief Start copying 16 bytes from global to shared memory without holding them in registers
/// (`cp.async`, Ampere on); `copy_async_commit` closes a group of them and
/// `copy_async_wait_pending` waits for groups.
/// \param shared the destination, 16-byte aligned. \param global the source, 16-byte aligned.
__device__ inline void copy_async_16(void* shared, void const* global) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  auto const to = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(to), "l"(global) : "memory");
#else
  *static_cast<float4*>(shared) = *static_cast<float4 const*>(global);
#endif
}

/// \brief Close the group of this thread's `copy_async_16` started since the last group (an empty
/// group when none was).
__device__ inline void copy_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}

/// \brief Wait until at most `pending` (0 to 7) of this thread's latest groups of `copy_async_16`
/// are still in flight: every older group has landed in shared memory. `cp.async.wait_group` takes
/// a constant: `pending` must be one after unrolling, so that the switch folds away.
__device__ __forceinline__ void copy_async_wait_pending(int pending) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  switch (pending) {
    case 0: asm volatile("cp.async.wait_group 0;" ::: "memory"); break;
    case 1: asm volatile("cp.async.wait_group 1;" ::: "memory"); break;
    case 2: asm volatile("cp.async.wait_group 2;" ::: "memory"); break;
    case 3: asm volatile("cp.async.wait_group 3;" ::: "memory"); break;
    case 4: asm volatile("cp.async.wait_group 4;" ::: "memory"); break;
    case 5: asm volatile("cp.async.wait_group 5;" ::: "memory"); break;
    case 6: asm volatile("cp.async.wait_group 6;" ::: "memory"); break;
    default: asm volatile("cp.async.wait_group 7;" ::: "memory"); break;
  }
#else
  (void)pending;
#endif
}

/// \brief Read a counter with acquire semantics at GPU scope: what the blocks that added to it
/// wrote before their `add_release` is visible after.
__device__ inline unsigned load_acquire(unsigned const* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

/// \brief Add 1 to a counter with release semantics at GPU scope: this thread's writes before it,
/// and those of its block ordered before it by a barrier, go with it.
__device__ inline void add_release(unsigned* p) {
  asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(p) : "memory");
}

/// \brief `blocks` blocks of the launch (all resident at once) wait here until all of them have
/// arrived; what any thread of them wrote before its block arrived is then visible to every thread
/// of them (read it through L2: `__ldcg`, `load_from_l2`). Every thread of each must call it. Each
/// block adds to `words[0]` and waits for it to reach k times `blocks`: one trip to L2 and back
/// after the last arrival.
/// \param words two words of global memory that only these blocks use, zero before their first
/// meeting; `leave_meetings` sets them back to zero after their last.
/// \param k 1 for their first meeting, 2 for their second, and so on. \param blocks how many meet.
__device__ inline void meet_blocks(unsigned* words, unsigned k, unsigned blocks) {
  __syncthreads();  // the block's writes, ordered before thread 0's arrival
  if (threadIdx.x == 0) {
    add_release(words);
    while (load_acquire(words) < k * blocks) {
    }
  }
  __syncthreads();
}

/// \brief After the last `meet_blocks` of `blocks` blocks: the last of them to leave sets both words
/// back to zero (every one of them has then passed every meeting). Every thread may call it; thread
/// 0 of each block acts.
__device__ inline void leave_meetings(unsigned* words, unsigned blocks) {
  if (threadIdx.x == 0 && atomicAdd(words + 1, 1u) == blocks - 1) {
    atomicExch(words, 0u);
    atomicExch(words + 1, 0u);
  }
}

}  // namespace ssm::cuda
