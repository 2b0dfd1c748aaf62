#pragma once
/// \file
/// \brief The thread-block cluster of the calling block (Hopper on), written so that kernels that
/// use clusters still compile for earlier GPUs: there every block is a cluster of one. Launchers
/// ask for clusters only where the kernel runs Hopper's code (`runs_hopper_code`).

#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <ssm/core/cuda.hpp>

namespace ssm::cuda {

/// \brief Number of blocks in the calling block's cluster (1 without clusters).
/// \return the cluster size.
__device__ __forceinline__ int cluster_blocks() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  return static_cast<int>(cooperative_groups::this_cluster().num_blocks());
#else
  return 1;
#endif
}

/// \brief Rank of the calling block in its cluster (0 without clusters).
/// \return the rank.
__device__ __forceinline__ int cluster_rank() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  return static_cast<int>(cooperative_groups::this_cluster().block_rank());
#else
  return 0;
#endif
}

/// \brief Barrier of every thread of the cluster, ordering its shared and distributed shared memory
/// (a block barrier without clusters).
__device__ __forceinline__ void cluster_barrier() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cooperative_groups::this_cluster().sync();
#else
  __syncthreads();
#endif
}

/// \brief The same shared variable in block `rank` of the cluster (`mapa`), as a generic pointer
/// (the variable itself without clusters, where the only rank is 0).
/// \tparam V the variable's type.
/// \param local the variable in the calling block's shared memory. \param rank a block of the cluster.
/// \return its address in block `rank`.
template <class V>
__device__ __forceinline__ V* in_block(V* local, int rank) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  V* remote;
  asm volatile("mapa.u64 %0, %1, %2;" : "=l"(remote) : "l"(local), "r"(rank));
  return remote;
#else
  (void)rank;
  return local;
#endif
}

}  // namespace ssm::cuda
