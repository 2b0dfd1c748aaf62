#pragma once
/// \file
/// \brief Linear layers on `Kokkos::Cuda`: cuBLASLt, and the choice between it, the
/// weight-streaming GEMV (`gemv.cuh`) and the portable kernel; fp32 accumulation throughout.
///
/// \f$y = x W^\top + b\f$ with row-major x (M, K), W (N, K) and y (M, N) is, read column-major,
/// \f$y^\top (N \times M) = W^\top{}' \cdot x^\top\f$: A = W seen as a column-major (K, N) matrix
/// and transposed, B = x seen as column-major (K, M). The bias is cuBLASLt's `BIAS` epilogue, a
/// vector over the N rows of that column-major result. A plan (descriptors and an algorithm) is
/// made once per shape, leading dimensions, pointer alignment and type, and reused: decoding calls
/// the same few shapes thousands of times, and a CUDA graph can capture the calls.
///
/// **The algorithm.** cuBLASLt's heuristic proposes several; its first is not always the fastest.
/// On an H200 (2.8B shapes, bf16, `bench_cuda_linear --prefill` and `--decode`) in_proj took
/// 145.6 µs for 2048 rows with the first and 139.4 with the fourth, and 16.5 µs for 64 rows with
/// the first against 15.5 with the second. Wherever the first did not split K (14 shapes, 8 to
/// 2048 rows), every other candidate that did not either gave its bits exactly; those that split K
/// did not. So when the first does not split K, the plan times the candidates that do not either,
/// on the call's own operands, and keeps the fastest of those whose output matches the first's bit
/// for bit: the results are the heuristic's, only sooner (`choose_algorithm`). That costs the
/// first call of a shape a few dozen products; a shape first planned while its stream is captured
/// into a graph keeps the first. Another candidate must save 3% of the first's time to replace it
/// (`least_gain`). In whole decoding steps and prefills on an H200 it helped from 64 rows and was
/// a gamble below, so it is on from 64 rows (`tuned_from_rows`); `SSM_CUBLASLT_TUNE=1` turns it
/// on for every shape, `SSM_CUBLASLT_TUNE=0` off.
///
/// cuBLASLt needs activations and weights of one type and contiguous rows; few rows of
/// mixed types go to the GEMV, and what neither takes to the portable Kokkos kernel. Many rows of
/// a product with few outputs and a long K go to `narrow_gemm` (`narrow.cuh`), up to 128 rows of
/// one with a short K and many outputs to `shallow_gemm` (`shallow.cuh`).

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <functional>
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

namespace kernels {

/// \brief Raise `*differs` if any byte of the (slices, rows, row_bytes) region at `a` differs from
/// the one at the same offset from `b`; rows `row_pitch` and slices `slice_pitch` bytes apart.
/// \tparam Byte `unsigned char` (a template, so that every translation unit may hold it).
template <class Byte>
__global__ void bytes_differ(Byte const* a, Byte const* b, std::int64_t slices, std::int64_t rows,
                             std::int64_t row_bytes, std::int64_t row_pitch, std::int64_t slice_pitch,
                             unsigned* differs) {
  std::int64_t const total = slices * rows * row_bytes;
  std::int64_t const step = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    std::int64_t const byte = i % row_bytes, row = i / row_bytes % rows, slice = i / row_bytes / rows;
    std::int64_t const at = slice * slice_pitch + row * row_pitch + byte;
    if (a[at] != b[at]) atomicOr(differs, 1u);
  }
}

}  // namespace kernels

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

  /// 1 to time the heuristic's candidates when planning (see the file comment), 0 to keep its
  /// first; -1, the default, for `SSM_CUBLASLT_TUNE` (1 to time them, 0 not to), or, where that
  /// is not set, to time them for products of `tuned_from_rows` rows or more. The tests set it.
  static inline thread_local int force_tuning = -1;
  /// Plans made on this thread that timed two or more candidates with the first's bits (and kept
  /// the fastest where it saved `least_gain` of the first's time).
  static inline thread_local std::size_t tuned_plans = 0;

  /// \brief Forget every plan made so far, so that each shape is planned again at its next call
  /// (for tests and benchmarks that compare ways of planning). The device must be idle.
  void forget_plans() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& entry : plans_) release(entry.second);
    for (auto& entry : partial_plans_) release(entry.second);
    plans_.clear();
    partial_plans_.clear();
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
    if (it == plans_.end()) it = plans_.emplace(key, make_plan<T>(key, bias, stream, x, w, y)).first;
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
    if (it == partial_plans_.end())
      it = partial_plans_.emplace(key, make_partials_plan(key, stream, x, w, partials)).first;
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

  /// Release a plan's descriptors.
  static void release(plan& p) {
    cublasLtMatrixLayoutDestroy(p.a);
    cublasLtMatrixLayoutDestroy(p.b);
    cublasLtMatrixLayoutDestroy(p.c);
    cublasLtMatmulDescDestroy(p.desc);
  }

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
  plan make_plan(plan_key const& key, T const* bias, cudaStream_t stream, T const* x, T const* w, T* y) {
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

    std::string const sizes = "M, N, K = " + std::to_string(M) + ", " + std::to_string(N) + ", " + std::to_string(K);
    algorithms const candidates = heuristic(p, workspace_bytes, align_w, align_x, align_y, fn, sizes);
    auto const e = static_cast<std::int64_t>(sizeof(T));
    output const out{y, 1, M, N * e, ldy * e, 0};
    p.algo = choose_algorithm(stream, candidates, out, fn, [&](cublasLtMatmulAlgo_t const& algo, void* into) {
      float const one = 1.0f, zero = 0.0f;
      T* const d = static_cast<T*>(into);
      check(cublasLtMatmul(handle_, p.desc, &one, w, p.a, x, p.b, &zero, d, p.c, d, p.c, &algo, workspace_,
                           workspace_bytes, stream),
            fn);
    });
    return p;
  }

  template <class T>
  plan make_partials_plan(partials_key const& key, cudaStream_t stream, T const* x, T const* w, float* partials) {
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

    std::string const sizes = "M, N, K, S = " + std::to_string(M) + ", " + std::to_string(N) + ", " +
                              std::to_string(K) + ", " + std::to_string(S);
    algorithms const candidates = heuristic(p, 0, align_w, align_x, align_p, fn, sizes);
    auto const f = static_cast<std::int64_t>(sizeof(float));
    output const out{partials, S, M, N * f, ldp * f, stride * f};
    p.algo = choose_algorithm(stream, candidates, out, fn, [&](cublasLtMatmulAlgo_t const& algo, void* into) {
      float const one = 1.0f, zero = 0.0f;
      auto* const d = static_cast<float*>(into);
      check(cublasLtMatmul(handle_, p.desc, &one, w, p.a, x, p.b, &zero, d, p.c, d, p.c, &algo, nullptr, 0, stream), fn);
    });
    return p;
  }

  /// \brief The most candidates asked of the heuristic.
  static constexpr int most_candidates = 8;

  /// Up to `most_candidates` algorithms, in order (an array: nvcc's front end fails on a
  /// `std::vector` of cuBLASLt's unnamed algorithm struct).
  struct algorithms {
    cublasLtMatmulAlgo_t at[most_candidates] = {};
    int count = 0;
    void add(cublasLtMatmulAlgo_t const& a) { at[count++] = a; }
  };

  /// Up to `most_candidates` algorithms the heuristic proposes for the plan's descriptors, best
  /// first, with at most `workspace` bytes and the operands' alignments (bytes) as given; throws
  /// naming `fn` and `sizes` if it has none.
  algorithms heuristic(plan const& p, std::size_t workspace, int align_w, int align_x, int align_y, char const* fn,
                       std::string const& sizes) {
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
    cublasLtMatmulHeuristicResult_t results[most_candidates] = {};
    int found = 0;
    cublasStatus_t const status = cublasLtMatmulAlgoGetHeuristic(handle_, p.desc, p.a, p.b, p.c, p.c, preference,
                                                                 most_candidates, results, &found);
    cublasLtMatmulPreferenceDestroy(preference);
    if (status != CUBLAS_STATUS_SUCCESS || found == 0) throw error(std::string(fn) + ": no algorithm for " + sizes);
    algorithms algos;
    for (int i = 0; i < found; ++i) algos.add(results[i].algo);
    return algos;
  }

  /// The region a product writes: `slices` x `rows` rows of `row_bytes`, rows `row_pitch` and
  /// slices `slice_pitch` bytes apart, from `data`.
  struct output {
    void* data;
    std::int64_t slices, rows, row_bytes, row_pitch, slice_pitch;
    std::int64_t extent() const { return (slices - 1) * slice_pitch + (rows - 1) * row_pitch + row_bytes; }
  };

  /// Device memory from `cudaMallocAsync` on a stream, given back on that stream when it goes out
  /// of scope, also when a CUDA call before then throws. `data` is null where none could be had.
  struct stream_allocation {
    cudaStream_t stream;
    void* data = nullptr;
    stream_allocation(cudaStream_t s, std::size_t bytes) : stream(s) {
      if (cudaMallocAsync(&data, bytes, s) != cudaSuccess) {
        (void)cudaGetLastError();
        data = nullptr;
      }
    }
    stream_allocation(stream_allocation const&) = delete;
    stream_allocation& operator=(stream_allocation const&) = delete;
    ~stream_allocation() {
      if (data) (void)cudaFreeAsync(data, stream);
    }
  };

  /// Rows (M) from which a plan times the heuristic's candidates unless told otherwise. On an H200
  /// (2.8B, bf16) the timed choice took 0.03-0.08 ms off a decoding step of 64 sequences and
  /// 0.1-0.6 ms off a prefill of 2048 tokens in every run, and at 16 and 32 sequences, where the
  /// candidates alone are within 1-2% of each other, it lost up to 0.11 ms in some runs
  /// (docs/benchmarks.md, "cuBLASLt's timed choice on the GPU").
  static constexpr std::int64_t tuned_from_rows = 64;

  /// Whether to time the heuristic's candidates for a product of `rows` rows (see the file comment
  /// and `force_tuning`): `force_tuning` where it is set, else `SSM_CUBLASLT_TUNE` where it is 0
  /// or 1, else from `tuned_from_rows` rows.
  static bool tuning(std::int64_t rows) {
    static int const from_environment = [] {
      char const* v = std::getenv("SSM_CUBLASLT_TUNE");
      std::string const value = v ? v : "";
      return value == "1" ? 1 : value == "0" ? 0 : -1;
    }();
    int const setting = force_tuning >= 0 ? force_tuning : from_environment;
    return setting >= 0 ? setting != 0 : rows >= tuned_from_rows;
  }

  /// Products each candidate is timed over, after one untimed, in each of two rounds.
  static constexpr int timed_products = 5;

  /// The fraction of the first candidate's time another must save to replace it. Timed alone, a
  /// product runs back to back with itself; in a decoding step it runs between other kernels,
  /// and there a candidate faster alone by 1-2% was as often slower (H200, 2.8B, bf16: with no
  /// margin, 8 and 128 sequences lost up to 0.08 ms a step in one run of two).
  static constexpr float least_gain = 0.03f;

  /// The algorithm of a new plan from the heuristic's `candidates` (see the file comment):
  /// `product(algo, into)` enqueues the plan's product on `stream` with `algo`, writing the region
  /// `out` describes at `into` rather than at `out.data`. The first candidate writes `out` itself
  /// (the call being planned overwrites it); the others write a scratch copy, compared with it on
  /// the GPU. Where the scratch cannot be had, the first candidate is kept.
  cublasLtMatmulAlgo_t choose_algorithm(cudaStream_t stream, algorithms const& candidates,
                                        output const& out, char const* fn,
                                        std::function<void(cublasLtMatmulAlgo_t const&, void*)> const& product) {
    cublasLtMatmulAlgo_t const first = candidates.at[0];
    auto const splits = [](cublasLtMatmulAlgo_t const& algo) {
      std::uint32_t n = 0;
      cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &n, sizeof n, nullptr);
      return n;
    };
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    ssm::cuda::check(cudaStreamIsCapturing(stream, &capture), fn);
    if (!tuning(out.rows) || candidates.count < 2 || capture != cudaStreamCaptureStatusNone || splits(first) > 1) return first;
    algorithms same;  // the candidates that give the first's bits
    same.add(first);
    stream_allocation const scratch(stream, static_cast<std::size_t>(out.extent()));
    stream_allocation const differs(stream, sizeof(unsigned));
    if (!scratch.data || !differs.data) return first;  // no room to compare: keep the first
    product(first, out.data);
    for (int i = 1; i < candidates.count; ++i) {
      if (splits(candidates.at[i]) > 1) continue;
      unsigned flag = 0;
      ssm::cuda::check(cudaMemsetAsync(differs.data, 0, sizeof flag, stream), fn);
      product(candidates.at[i], scratch.data);
      auto const* const a = static_cast<unsigned char const*>(out.data);
      auto const* const b = static_cast<unsigned char const*>(scratch.data);
      kernels::bytes_differ<unsigned char><<<256, 256, 0, stream>>>(a, b, out.slices, out.rows, out.row_bytes,
                                                                     out.row_pitch, out.slice_pitch,
                                                                     static_cast<unsigned*>(differs.data));
      ssm::cuda::check_launch(fn);
      ssm::cuda::check(cudaMemcpyAsync(&flag, differs.data, sizeof flag, cudaMemcpyDeviceToHost, stream), fn);
      ssm::cuda::check(cudaStreamSynchronize(stream), fn);
      if (flag == 0) same.add(candidates.at[i]);
    }
    float ms[most_candidates] = {};
    if (same.count > 1) {
      event_timer const timer(fn);
      for (int round = 0; round < 2; ++round)
        for (int i = 0; i < same.count; ++i) {
          product(same.at[i], scratch.data);
          timer.start(stream);
          for (int r = 0; r < timed_products; ++r) product(same.at[i], scratch.data);
          timer.stop(stream);
          ms[i] += timer.milliseconds();
        }
    }
    int best = 0;
    for (int i = 1; i < same.count; ++i)
      if (ms[i] < ms[best]) best = i;
    if (same.count > 1) ++tuned_plans;
    return ms[best] <= (1.0f - least_gain) * ms[0] ? same.at[best] : first;
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
