#pragma once
/// \file
/// \brief Linear layers on `Kokkos::Cuda`: cuBLASLt, and the choice between it, the
/// weight-streaming GEMV (`gemv.cuh`) and the portable kernel; fp32 accumulation throughout.
///
/// \f$y = x W^\top + b\f$ with row-major x (M, K), W (N, K) and y (M, N) is, read column-major,
/// \f$y^\top (N \times M) = W^\top{}' \cdot x^\top\f$: A = W seen as a column-major (K, N) matrix
/// and transposed, B = x seen as column-major (K, M). The bias is cuBLASLt's `BIAS` epilogue, a
/// vector over the N rows of that column-major result. A plan (descriptors and the algorithm the
/// heuristic chose) is made once per shape, leading dimensions, pointer alignment and type, and
/// reused: decoding calls the same few shapes thousands of times, and a CUDA graph can capture the
/// calls. cuBLASLt needs activations and weights of one type and contiguous rows; few rows of
/// mixed types go to the GEMV, and what neither takes to the portable Kokkos kernel. Many rows of
/// a product with few outputs and a long K go to `narrow_gemm` (`narrow.cuh`), up to 128 rows of
/// one with a short K and many outputs to `shallow_gemm` (`shallow.cuh`).

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>

#include <ssm/core/cuda.hpp>
#include <ssm/core/dtype.hpp>
#include <ssm/core/error.hpp>
#include <ssm/linear/cuda/gemv.cuh>
#include <ssm/linear/cuda/narrow.cuh>
#include <ssm/linear/cuda/shallow.cuh>

namespace ssm::cuda {

/// \brief The CUDA data type of a storage type. \tparam T `float`, `ssm::f16` or `ssm::bf16`.
template <class T>
constexpr cudaDataType_t data_type() {
  if constexpr (std::is_same_v<T, float>) return CUDA_R_32F;
  else if constexpr (std::is_same_v<T, f16>) return CUDA_R_16F;
  else {
    static_assert(std::is_same_v<T, bf16>, "ssm::cuda::data_type: float, f16 or bf16");
    return CUDA_R_16BF;
  }
}

/// \brief Throw `ssm::error` naming `what` when a cuBLASLt call fails.
/// \param status the return code. \param what the call.
inline void check(cublasStatus_t status, char const* what) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw error(std::string(what) + ": cuBLASLt status " + std::to_string(static_cast<int>(status)));
}

/// \brief cuBLASLt's handle, a workspace and the plans made so far, for one device.
///
/// One per device for the life of the process (see `cublaslt::get`). It is never destroyed: the
/// CUDA runtime may already be shut down when static objects are, and the process frees all.
class cublaslt {
 public:
  /// \brief Bytes of workspace offered to the matmul algorithms (what the H100 guides advise).
  static constexpr std::size_t workspace_bytes = std::size_t{32} << 20;

  /// \brief The context of the current device, made at first use.
  /// \return it, valid for the rest of the process.
  static cublaslt& get() {
    static std::mutex mutex;
    static std::map<int, cublaslt*> contexts;
    int device = 0;
    ssm::cuda::check(cudaGetDevice(&device), "ssm::linear (cuBLASLt): cudaGetDevice");
    std::lock_guard<std::mutex> lock(mutex);
    auto& context = contexts[device];
    if (!context) context = new cublaslt();  // never freed: see the class comment
    return *context;
  }

  /// \brief Enqueue \f$y = x W^\top + b\f$ on `stream`.
  /// \tparam T storage type of x, W, b and y.
  /// \param stream the stream. \param M,N,K the sizes.
  /// \param x (M, K) rows `ldx` apart. \param ldx row pitch of x in elements.
  /// \param w (N, K) rows `ldw` apart. \param ldw row pitch of W.
  /// \param bias (N) or null. \param y (M, N) rows `ldy` apart. \param ldy row pitch of y.
  template <class T>
  void linear(cudaStream_t stream, int M, int N, int K, T const* x, std::int64_t ldx, T const* w,
              std::int64_t ldw, T const* bias, T* y, std::int64_t ldy) {
    std::lock_guard<std::mutex> lock(mutex_);
    plan_key const key{data_type<T>(), M, N, K, ldx, ldw, ldy, bias != nullptr,
                       alignment(x), alignment(w), alignment(y), alignment(bias)};
    auto it = plans_.find(key);
    if (it == plans_.end()) it = plans_.emplace(key, make_plan<T>(key, bias)).first;
    plan const& p = it->second;
    if (bias)
      check(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias),
            "ssm::linear (cuBLASLt): bias pointer");
    float const one = 1.0f, zero = 0.0f;
    check(cublasLtMatmul(handle_, p.desc, &one, w, p.a, x, p.b, &zero, y, p.c, y, p.c, &p.algo, workspace_,
                         workspace_bytes, stream),
          "ssm::linear (cuBLASLt): cublasLtMatmul");
  }

  /// \brief Enqueue the S products of `ssm::linear_partials` on `stream`: one strided-batch call,
  /// slice s of K multiplied into its fp32 partial (M, N). No workspace, so no split of K inside a
  /// slice and no launch to add one.
  /// \tparam T storage type of x and W.
  /// \param stream the stream. \param M,N,K,S the sizes, S dividing K.
  /// \param x (M, K) rows `ldx` apart. \param ldx row pitch of x in elements.
  /// \param w (N, K) rows `ldw` apart. \param ldw row pitch of W.
  /// \param partials (S, M, N): rows `ldp` apart, slices `stride` apart, in floats.
  template <class T>
  void partials(cudaStream_t stream, int M, int N, int K, int S, T const* x, std::int64_t ldx, T const* w,
                std::int64_t ldw, float* partials, std::int64_t ldp, std::int64_t stride) {
    std::lock_guard<std::mutex> lock(mutex_);
    partials_key const key{data_type<T>(), M, N, K, S, ldx, ldw, ldp, stride,
                           alignment(x), alignment(w), alignment(partials)};
    auto it = partial_plans_.find(key);
    if (it == partial_plans_.end()) it = partial_plans_.emplace(key, make_partials_plan(key)).first;
    plan const& p = it->second;
    float const one = 1.0f, zero = 0.0f;
    check(cublasLtMatmul(handle_, p.desc, &one, w, p.a, x, p.b, &zero, partials, p.c, partials, p.c, &p.algo, nullptr,
                         0, stream),
          "ssm::linear_partials (cuBLASLt): cublasLtMatmul");
  }

 private:
  // (type, M, N, K, ldx, ldw, ldy, bias?, alignments of x, w, y, bias)
  using plan_key = std::tuple<int, int, int, int, std::int64_t, std::int64_t, std::int64_t, bool, int, int, int, int>;
  // (type, M, N, K, S, ldx, ldw, ldp, slice stride, alignments of x, w, partials)
  using partials_key = std::tuple<int, int, int, int, int, std::int64_t, std::int64_t, std::int64_t, std::int64_t, int,
                                  int, int>;
  struct plan {
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
  };

  cublaslt() {
    check(cublasLtCreate(&handle_), "ssm::linear (cuBLASLt): cublasLtCreate");
    ssm::cuda::check(cudaMalloc(&workspace_, workspace_bytes), "ssm::linear (cuBLASLt): workspace");
  }

  /// The largest power of two up to 256 dividing the address (the heuristic needs it).
  static int alignment(void const* p) {
    auto const a = reinterpret_cast<std::uintptr_t>(p);
    int bytes = 256;
    while (bytes > 1 && a % static_cast<std::uintptr_t>(bytes) != 0) bytes /= 2;
    return bytes;
  }

  template <class T>
  plan make_plan(plan_key const& key, T const* bias) {
    // The bias pointer's alignment is part of the key because the heuristic reads the pointer.
    [[maybe_unused]] auto const [type, M, N, K, ldx, ldw, ldy, has_bias, align_x, align_w, align_y, align_bias] = key;
    char const* fn = "ssm::linear (cuBLASLt): planning";
    plan p{};
    check(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), fn);
    cublasOperation_t const transpose = CUBLAS_OP_T;
    check(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &transpose, sizeof transpose), fn);
    if (has_bias) {
      cublasLtEpilogue_t const epilogue = CUBLASLT_EPILOGUE_BIAS;
      cudaDataType_t const bias_type = data_type<T>();
      check(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue), fn);
      check(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof bias_type), fn);
      check(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias), fn);
    }
    auto const t = static_cast<cudaDataType_t>(type);
    check(cublasLtMatrixLayoutCreate(&p.a, t, static_cast<std::uint64_t>(K), static_cast<std::uint64_t>(N), ldw), fn);
    check(cublasLtMatrixLayoutCreate(&p.b, t, static_cast<std::uint64_t>(K), static_cast<std::uint64_t>(M), ldx), fn);
    check(cublasLtMatrixLayoutCreate(&p.c, t, static_cast<std::uint64_t>(N), static_cast<std::uint64_t>(M), ldy), fn);

    p.algo = heuristic_first(p, workspace_bytes, align_w, align_x, align_y, fn,
                             "M, N, K = " + std::to_string(M) + ", " + std::to_string(N) + ", " + std::to_string(K));
    return p;
  }

  plan make_partials_plan(partials_key const& key) {
    auto const [type, M, N, K, S, ldx, ldw, ldp, stride, align_x, align_w, align_p] = key;
    char const* fn = "ssm::linear_partials (cuBLASLt): planning";
    plan p{};
    check(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), fn);
    cublasOperation_t const transpose = CUBLAS_OP_T;
    check(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &transpose, sizeof transpose), fn);
    auto const slice = static_cast<std::uint64_t>(K / S);
    std::int32_t const count = S;
    auto const batched = [&](cublasLtMatrixLayout_t& layout, cudaDataType_t t, std::uint64_t rows, std::uint64_t cols,
                             std::int64_t ld, std::int64_t offset) {
      check(cublasLtMatrixLayoutCreate(&layout, t, rows, cols, ld), fn);
      check(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count), fn);
      check(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &offset, sizeof offset),
            fn);
    };
    auto const t = static_cast<cudaDataType_t>(type);
    batched(p.a, t, slice, static_cast<std::uint64_t>(N), ldw, static_cast<std::int64_t>(slice));
    batched(p.b, t, slice, static_cast<std::uint64_t>(M), ldx, static_cast<std::int64_t>(slice));
    batched(p.c, CUDA_R_32F, static_cast<std::uint64_t>(N), static_cast<std::uint64_t>(M), ldp, stride);

    p.algo = heuristic_first(p, 0, align_w, align_x, align_p, fn,
                             "M, N, K, S = " + std::to_string(M) + ", " + std::to_string(N) + ", " + std::to_string(K) +
                                 ", " + std::to_string(S));
    return p;
  }

  /// The heuristic's first algorithm for the plan's descriptors, with at most `workspace` bytes and
  /// the operands' alignments (bytes) as given; throws naming `fn` and `sizes` if it has none.
  cublasLtMatmulAlgo_t heuristic_first(plan const& p, std::size_t workspace, int align_w, int align_x, int align_y,
                                       char const* fn, std::string const& sizes) {
    cublasLtMatmulPreference_t preference;
    check(cublasLtMatmulPreferenceCreate(&preference), fn);
    check(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace,
                                               sizeof workspace), fn);
    auto const prefer_alignment = [&](cublasLtMatmulPreferenceAttributes_t attribute, int bytes) {
      auto const value = static_cast<std::uint32_t>(bytes);
      check(cublasLtMatmulPreferenceSetAttribute(preference, attribute, &value, sizeof value), fn);
    };
    prefer_alignment(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align_w);
    prefer_alignment(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align_x);
    prefer_alignment(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align_y);
    prefer_alignment(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align_y);
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    cublasStatus_t const status =
        cublasLtMatmulAlgoGetHeuristic(handle_, p.desc, p.a, p.b, p.c, p.c, preference, 1, &result, &found);
    cublasLtMatmulPreferenceDestroy(preference);
    if (status != CUBLAS_STATUS_SUCCESS || found == 0) throw error(std::string(fn) + ": no algorithm for " + sizes);
    return result.algo;
  }

  std::mutex mutex_;
  cublasLtHandle_t handle_{};
  void* workspace_ = nullptr;
  std::map<plan_key, plan> plans_;
  std::map<partials_key, plan> partial_plans_;
};

}  // namespace ssm::cuda

namespace ssm {

/// \brief Linear layers on `Kokkos::Cuda`: the weight-streaming matrix-vector kernel
/// (`ssm/linear/cuda/gemv.cuh`) for one row, or up to 8 rows of a matrix of at most 1024 outputs;
/// 9 to 128 rows of a product with few outputs and a long K (x_proj) on `narrow_gemm`
/// (`ssm/linear/cuda/narrow.cuh`); up to 128 rows of a product with a short K and many outputs
/// (dt_proj) on `shallow_gemm` (`ssm/linear/cuda/shallow.cuh`); otherwise cuBLASLt where the
/// activations and weights share a storage type and rows are contiguous; the portable Kokkos
/// kernel for the rest.
template <>
struct linear_backend<Kokkos::Cuda> {
  /// \brief Run \f$y = x W^\top + b\f$ on `space`'s stream (asynchronous).
  /// \tparam T activation storage type. \tparam Wt weight storage type.
  /// \tparam MemSpace the memory space of every tensor (GPU-accessible).
  /// \param space the execution space instance.
  /// \param p the checked tensors: `x` (M, K), `weight` (N, K), optional `bias` (N), `y` (M, N).
  template <class T, class Wt, class MemSpace>
  static void run(Kokkos::Cuda const& space, linear_params<T, Wt, MemSpace> const& p) {
    bool const rows_contiguous = p.x.stride(1) == 1 && p.weight.stride(1) == 1 && p.y.stride(1) == 1 &&
                                 (!given(p.bias) || p.bias.stride(0) == 1) && p.x.extent(1) > 0;
    std::size_t const m = p.x.extent(0), n = p.weight.extent(0), k = p.x.extent(1);
    auto const M = static_cast<int>(m), N = static_cast<int>(n), K = static_cast<int>(k);
    // A single row's pitch is free: give the kernels the smallest valid one.
    auto const pitch = [](auto const& v, std::size_t cols) {
      return static_cast<std::int64_t>(v.extent(0) == 1 ? cols : v.stride(0));
    };
    std::int64_t const ldx = pitch(p.x, k), ldw = pitch(p.weight, k), ldy = pitch(p.y, n);
    T const* x = p.x.data();
    Wt const* w = p.weight.data();
    Wt const* bias = given(p.bias) ? p.bias.data() : nullptr;
    T* y = p.y.data();
    cudaStream_t const stream = cuda::stream(space);
    if constexpr (cuda::gemv_types<T, Wt>) {
      // Measured on an H200 at the 2.8B model's shapes (bench/bench_cuda_linear.cpp): the kernel
      // beats cuBLASLt for one row, and for short matrices (x_proj) up to 8 rows; cuBLASLt's
      // kernels reuse each weight across rows better for more rows of a tall matrix.
      bool const streaming = m == 1 || (n <= 1024 && m <= cuda::gemv_max_rows);
      if (streaming && rows_contiguous && cuda::gemv_applies(m, k, x, ldx, w, ldw)) {
        cuda::gemv(stream, M, N, K, x, ldx, w, ldw, bias, y, ldy);
        return;
      }
    }
    if constexpr (cuda::narrow_types<T, Wt>) {
      // x_proj of many sequences (few outputs, long K): cuBLASLt's split-K and its reduction took
      // 11.8 µs at 64 rows in the step (2.8B, H200); one launch instead made the step 2% faster at
      // 64 sequences, 1% at 16 (see `narrow.cuh`).
      if (rows_contiguous && cuda::narrow_applies(m, n, k, x, ldx, w, ldw)) {
        cuda::narrow_gemm(stream, M, N, K, x, ldx, w, ldw, bias, y, ldy);
        return;
      }
    }
    if constexpr (cuda::shallow_types<T, Wt>) {
      // dt_proj of many sequences (a short K, many outputs): a programmatic dependent, so that the
      // state update after it can start at once (see `shallow.cuh`).
      if (rows_contiguous && cuda::shallow_applies(m, n, k, x, ldx, w, ldw)) {
        cuda::shallow_gemm(stream, M, N, K, x, ldx, w, ldw, bias, y, ldy);
        return;
      }
    }
    if constexpr (std::is_same_v<T, Wt>) {
      if (rows_contiguous) {
        cuda::cublaslt::get().linear<T>(stream, M, N, K, x, ldx, w, ldw, bias, y, ldy);
        return;
      }
    }
    detail::linear_kokkos(space, p);
  }
};

/// \brief `linear_partials` on `Kokkos::Cuda`: cuBLASLt's strided batch where activations and
/// weights share a storage type and every row is contiguous; the portable kernel otherwise.
template <>
struct linear_partials_backend<Kokkos::Cuda> {
  /// \brief Run the products on `space`'s stream (asynchronous).
  /// \tparam T activation storage type. \tparam Wt weight storage type.
  /// \tparam MemSpace the memory space of every tensor (GPU-accessible).
  /// \param space the execution space instance. \param p the checked tensors.
  template <class T, class Wt, class MemSpace>
  static void run(Kokkos::Cuda const& space, linear_partials_params<T, Wt, MemSpace> const& p) {
    if constexpr (std::is_same_v<T, Wt>) {
      auto const S = static_cast<int>(p.partials.extent(0)), M = static_cast<int>(p.x.extent(0));
      auto const N = static_cast<int>(p.weight.extent(0)), K = static_cast<int>(p.x.extent(1));
      auto const pitch = [](auto const& v, std::size_t rows, std::size_t cols, int dim) {
        return static_cast<std::int64_t>(rows == 1 ? cols : v.stride(dim));
      };
      bool const contiguous = K > 0 && p.x.stride(1) == 1 && p.weight.stride(1) == 1 && p.partials.stride(2) == 1;
      if (contiguous) {
        cuda::cublaslt::get().partials<T>(cuda::stream(space), M, N, K, S, p.x.data(), pitch(p.x, M, K, 0),
                                          p.weight.data(), pitch(p.weight, N, K, 0), p.partials.data(),
                                          pitch(p.partials, M, N, 1),
                                          S == 1 ? std::int64_t{M} * N : static_cast<std::int64_t>(p.partials.stride(0)));
        return;
      }
    }
    detail::linear_partials_kokkos(space, p);
  }
};

}  // namespace ssm
