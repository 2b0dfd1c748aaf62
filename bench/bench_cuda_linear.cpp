// Benchmark of the dense layers of a decoding step on the GPU at the Mamba-2.8B shapes, bf16:
// in_proj (10240 x 2560), x_proj (192 x 5120), out_proj (2560 x 5120) and lm_head (50280 x 2560),
// for 1 and 8 rows, through the weight-streaming kernel (what ssm::linear uses up to 8 rows) and
// through cuBLASLt. Each is timed with CUDA events: three warm-up calls, then the median of 50.
// The rate counts the weights read once; the fraction is of the device-to-device copy rate
// measured in the same run (bytes read plus written).
//
// Then each layer as a decoding step sees it: a CUDA graph of back-to-back launches, each on its
// own copy of the weights (together several times the L2), timed per launch; for one row, the
// kernel's variants too with `--variants` (outputs per warp, loads per batch, warps per output),
// so that its choices can be checked on the GPU at hand; for x_proj also 16 and 64 rows through
// the few-outputs kernel (what ssm::linear uses from 9 to 128 rows there) and cuBLASLt, with
// `--variants` at other tiles, slices in flight and cluster sizes too, and then for in_proj and
// out_proj at 16 and 64 rows as well, beside cuBLASLt over 2, 4 or 8 slices of K into fp32
// partial sums (one strided-batch call, no reduction launch: `partial_products`); last, dt_proj at
// 8, 16 and 64 rows through the short-K kernel (ssm::linear's choice there) and cuBLASLt.
//
// `--prefill` instead times the four products of a 2048-token prefill, through ssm::linear and
// through each algorithm cuBLASLt's heuristic proposes for the shape (`algorithm_sweep`);
// `--decode` the cuBLASLt products of a decoding step at 8, 16 and 64 rows (in_proj also at 32,
// 48, 96 and 128), through those algorithms and through the first two with K split other ways
// (`decode_sweep`). Both say of each algorithm whether its output has the first's bits, which
// `ssm::linear`'s timed choice among them relies on (ssm/linear/cuda/cublaslt.cuh).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <cuda_runtime.h>

#include <ssm/linear/linear.hpp>

#include "bench_cuda_common.hpp"

namespace {

using space = Kokkos::Cuda;
using memory = Kokkos::CudaSpace;
using T = ssm::bf16;

using ssm::bench::graph_ms;
using ssm::bench::median_ms;
using view2 = Kokkos::View<T**, Kokkos::LayoutRight, memory>;

/// One variant of the matrix-vector kernel: outputs per warp, loads per batch, warps per output.
struct variant {
  int rows, depth, split;
};

/// Enqueue `v` on `s` for one row (the variants the benchmark tries).
void gemv_variant(space const& s, variant v, int N, int K, view2 const& x, view2 const& w, view2 const& y) {
  auto run = [&](auto rows, auto depth) {
    ssm::cuda::detail::gemv_with<decltype(rows)::value, decltype(depth)::value, T, T>(
        ssm::cuda::stream(s), v.split, 1, N, K, x.data(), K, w.data(), K, nullptr, y.data(), N);
  };
  using std::integral_constant;
  auto with_depth = [&](auto rows) {
    if (v.depth == 2) run(rows, integral_constant<int, 2>{});
    else if (v.depth == 4) run(rows, integral_constant<int, 4>{});
    else run(rows, integral_constant<int, 8>{});
  };
  if (v.rows == 1) with_depth(integral_constant<int, 1>{});
  else if (v.rows == 2) with_depth(integral_constant<int, 2>{});
  else with_depth(integral_constant<int, 4>{});
}

/// What the two cuBLASLt setups below share: the handle, the descriptor of y^T = W^T' x^T with
/// fp32 sums (A = W, transposed), and the layouts of A, B = x and D = y, which the owner creates
/// and this destroys.
struct lt_product {
  explicit lt_product(char const* name) : what(name) {
    ok(cublasLtCreate(&handle));
    ok(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t const transpose = CUBLAS_OP_T;
    ok(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &transpose, sizeof transpose));
  }
  lt_product(lt_product const&) = delete;
  lt_product& operator=(lt_product const&) = delete;
  ~lt_product() {
    for (auto layout : {a, b, d})
      if (layout) cublasLtMatrixLayoutDestroy(layout);
    cublasLtMatmulDescDestroy(desc);
    cublasLtDestroy(handle);
  }
  /// Throw naming the setup when a cuBLASLt call fails.
  void ok(cublasStatus_t status) const {
    if (status != CUBLAS_STATUS_SUCCESS) throw ssm::error(std::string(what) + ": cuBLASLt status " + std::to_string(status));
  }

  char const* what;
  cublasLtHandle_t handle{};
  cublasLtMatmulDesc_t desc{};
  cublasLtMatrixLayout_t a{}, b{}, d{};
};

/// y = x W^T as S products over slices of K, each into its own fp32 (M, N) partial: one
/// strided-batch cuBLASLt call and no launch to add the slices. What a decoding step's out_proj
/// could hand to the next layer's RMSNorm, which would add the partials with the residual; timed
/// here against cuBLASLt's own split K, whose reduction is a second launch.
class partial_products {
 public:
  partial_products(int M, int N, int K, std::int32_t S) {
    auto const ok = [&](cublasStatus_t status) { lt_.ok(status); };
    auto const slice = static_cast<std::uint64_t>(K / S);
    auto const batched = [&](cublasLtMatrixLayout_t& layout, cudaDataType_t type, std::uint64_t rows,
                             std::uint64_t cols, std::int64_t ld, std::int64_t stride) {
      ok(cublasLtMatrixLayoutCreate(&layout, type, rows, cols, ld));
      ok(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &S, sizeof S));
      ok(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride));
    };
    batched(lt_.a, CUDA_R_16BF, slice, static_cast<std::uint64_t>(N), K, static_cast<std::int64_t>(slice));
    batched(lt_.b, CUDA_R_16BF, slice, static_cast<std::uint64_t>(M), K, static_cast<std::int64_t>(slice));
    batched(lt_.d, CUDA_R_32F, static_cast<std::uint64_t>(N), static_cast<std::uint64_t>(M), N,
            static_cast<std::int64_t>(M) * N);
    cublasLtMatmulPreference_t preference;
    ok(cublasLtMatmulPreferenceCreate(&preference));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    ok(cublasLtMatmulAlgoGetHeuristic(lt_.handle, lt_.desc, lt_.a, lt_.b, lt_.d, lt_.d, preference, 1, &result, &found));
    cublasLtMatmulPreferenceDestroy(preference);
    if (found == 0) throw ssm::error(std::string(lt_.what) + ": no algorithm");
    algo_ = result.algo;
    ssm::cuda::check(cudaMalloc(&partials_, sizeof(float) * static_cast<std::size_t>(S) * M * N), lt_.what);
  }
  partial_products(partial_products const&) = delete;
  partial_products& operator=(partial_products const&) = delete;
  ~partial_products() { cudaFree(partials_); }
  /// Enqueue the S products of x (M, K) and w (N, K), both with rows K apart.
  void run(cudaStream_t stream, T const* x, T const* w) const {
    float const one = 1.0f, zero = 0.0f;
    if (cublasLtMatmul(lt_.handle, lt_.desc, &one, w, lt_.a, x, lt_.b, &zero, partials_, lt_.d, partials_, lt_.d, &algo_,
                       nullptr, 0, stream) != CUBLAS_STATUS_SUCCESS)
      throw ssm::error("bench_cuda_linear: partial products: cublasLtMatmul");
  }

 private:
  lt_product lt_{"bench_cuda_linear: partial products"};
  cublasLtMatmulAlgo_t algo_{};
  float* partials_ = nullptr;
};

/// Fill with a hash of the index, uniform in [-0.5, 0.5): quick for 260 MB and never zeros.
void fill(Kokkos::View<T**, Kokkos::LayoutRight, memory> const& v) {
  T* data = v.data();
  Kokkos::parallel_for("fill", Kokkos::RangePolicy<space>(0, v.span()), KOKKOS_LAMBDA(std::size_t const i) {
    std::uint32_t h = static_cast<std::uint32_t>(i) * 2654435761u;
    h ^= h >> 15;
    data[i] = ssm::from_float<T>(static_cast<float>(h & 0xFFFFu) / 65536.0f - 0.5f);
  });
}

/// Whether two views hold the same bits (copied to the host; the space is fenced first).
bool same_bits(view2 const& a, view2 const& b) {
  Kokkos::fence();
  auto const ha = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, a);
  auto const hb = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, b);
  return std::memcmp(ha.data(), hb.data(), a.size() * sizeof(T)) == 0;
}

}  // namespace

/// y = x W^T (bf16, fp32 sums) through each of the algorithms cuBLASLt's heuristic proposes for
/// the shape, not only its first: to see whether the first is the fastest at prefill's sizes.
class algorithm_sweep {
 public:
  /// x (M, K) rows `ldx` apart, W (N, K) and y (M, N) contiguous; up to `wanted` algorithms.
  algorithm_sweep(int M, int N, int K, int ldx, int wanted) {
    auto const ok = [&](cublasStatus_t status) { lt_.ok(status); };
    ok(cublasLtMatrixLayoutCreate(&lt_.a, CUDA_R_16BF, static_cast<std::uint64_t>(K), static_cast<std::uint64_t>(N), K));
    ok(cublasLtMatrixLayoutCreate(&lt_.b, CUDA_R_16BF, static_cast<std::uint64_t>(K), static_cast<std::uint64_t>(M), ldx));
    ok(cublasLtMatrixLayoutCreate(&lt_.d, CUDA_R_16BF, static_cast<std::uint64_t>(N), static_cast<std::uint64_t>(M), N));
    cublasLtMatmulPreference_t preference;
    ok(cublasLtMatmulPreferenceCreate(&preference));
    std::uint64_t const bytes = ssm::cuda::cublaslt::workspace_bytes;
    ok(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &bytes, sizeof bytes));
    ok(cublasLtMatmulAlgoGetHeuristic(lt_.handle, lt_.desc, lt_.a, lt_.b, lt_.d, lt_.d, preference, std::min(wanted, most),
                                      results_, &found_));
    cublasLtMatmulPreferenceDestroy(preference);
    ssm::cuda::check(cudaMalloc(&workspace_, bytes), "bench_cuda_linear: algorithm sweep: workspace");
  }
  algorithm_sweep(algorithm_sweep const&) = delete;
  algorithm_sweep& operator=(algorithm_sweep const&) = delete;
  ~algorithm_sweep() { cudaFree(workspace_); }
  /// The number of algorithms proposed.
  int size() const { return found_; }
  /// Enqueue the product with algorithm `i` (in the heuristic's order).
  void run(cudaStream_t stream, int i, T const* x, T const* w, T* y) const { run(stream, results_[i].algo, x, w, y); }
  /// Enqueue the product with `algo`.
  void run(cudaStream_t stream, cublasLtMatmulAlgo_t const& algo, T const* x, T const* w, T* y) const {
    float const one = 1.0f, zero = 0.0f;
    if (cublasLtMatmul(lt_.handle, lt_.desc, &one, w, lt_.a, x, lt_.b, &zero, y, lt_.d, y, lt_.d, &algo, workspace_,
                       ssm::cuda::cublaslt::workspace_bytes, stream) != CUBLAS_STATUS_SUCCESS)
      throw ssm::error("bench_cuda_linear: algorithm sweep: cublasLtMatmul");
  }
  /// Algorithm `i` as proposed.
  cublasLtMatmulAlgo_t const& algorithm(int i) const { return results_[i].algo; }
  /// Algorithm `i` with K split `splits` ways, the slices added in fp32 in the workspace by a
  /// second kernel (1: no split), if cuBLASLt accepts that configuration for the shape.
  std::optional<cublasLtMatmulAlgo_t> with_split(int i, std::uint32_t splits) const {
    cublasLtMatmulAlgo_t algo = results_[i].algo;
    auto const scheme = static_cast<std::uint32_t>(splits > 1 ? CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE
                                                              : CUBLASLT_REDUCTION_SCHEME_NONE);
    cublasLtMatmulHeuristicResult_t check{};
    if (cublasLtMatmulAlgoConfigSetAttribute(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splits, sizeof splits) !=
            CUBLAS_STATUS_SUCCESS ||
        cublasLtMatmulAlgoConfigSetAttribute(&algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &scheme, sizeof scheme) !=
            CUBLAS_STATUS_SUCCESS ||
        cublasLtMatmulAlgoCheck(lt_.handle, lt_.desc, lt_.a, lt_.b, lt_.d, lt_.d, &algo, &check) != CUBLAS_STATUS_SUCCESS ||
        check.workspaceSize > ssm::cuda::cublaslt::workspace_bytes)
      return std::nullopt;
    return algo;
  }
  /// A configuration's tile, K splits and reduction scheme, as cuBLASLt numbers them.
  static std::string describe(cublasLtMatmulAlgo_t const& algo) {
    std::int32_t id = 0;
    std::uint32_t tile = 0, splits = 0, scheme = 0, stages = 0;
    std::uint16_t cluster = 0;
    cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_ID, &id, sizeof id, nullptr);
    cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof tile, nullptr);
    cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splits, sizeof splits, nullptr);
    cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &scheme, sizeof scheme, nullptr);
    cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof stages, nullptr);
    cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, &cluster, sizeof cluster, nullptr);
    return "algorithm " + std::to_string(id) + ", tile " + std::to_string(tile) + ", split K " + std::to_string(splits) +
           ", reduction " + std::to_string(scheme) + ", stages " + std::to_string(stages) + ", cluster " +
           std::to_string(cluster);
  }

 private:
  lt_product lt_{"bench_cuda_linear: algorithm sweep"};
  static constexpr int most = 16;
  cublasLtMatmulHeuristicResult_t results_[most] = {};
  int found_ = 0;
  void* workspace_ = nullptr;
};

/// Prefill's four products at M = 2048 tokens: ssm::linear, then every algorithm the heuristic
/// proposes (up to 16), in microseconds and TFLOP/s. dt_proj reads the first R = 160 columns of
/// x_proj's (M, 192) output, as the mixer does.
void prefill_sweep(space const& s) {
  std::printf("| layer | M x N x K | kernel | us | TFLOP/s |\n|---|---|---|---:|---:|\n");
  struct shape { char const* name; int N, K, ldx; };
  int const M = 2048;
  for (auto const& [name, N, K, ldx] : {shape{"in_proj", 10240, 2560, 2560}, shape{"x_proj", 192, 5120, 5120},
                                        shape{"dt_proj", 5120, 160, 192}, shape{"out_proj", 2560, 5120, 5120}}) {
    view2 w("w", N, K), x("x", M, ldx), y("y", M, N);
    fill(w);
    fill(x);
    double const flop = 2.0 * M * N * K;
    auto report = [&](char const* kernel, double ms) {
      std::printf("| %s | %d x %d x %d | %s | %.1f | %.0f |\n", name, M, N, K, kernel, 1e3 * ms, flop / ms / 1e9);
    };
    report("ssm::linear (cuBLASLt, first algorithm)", median_ms(s, [&] {
             ssm::cuda::cublaslt::get().linear<T>(ssm::cuda::stream(s), M, N, K, x.data(), ldx, w.data(), K, nullptr,
                                                  y.data(), N);
           }));
    algorithm_sweep const sweep(M, N, K, ldx, 16);
    view2 first("first", M, N), other("other", M, N);
    if (sweep.size() > 0) sweep.run(ssm::cuda::stream(s), 0, x.data(), w.data(), first.data());
    for (int i = 0; i < sweep.size(); ++i) {
      sweep.run(ssm::cuda::stream(s), i, x.data(), w.data(), other.data());
      char label[160];
      std::snprintf(label, sizeof label, "cuBLASLt algorithm %d of %d (%s; %s bits)", i + 1, sweep.size(),
                    algorithm_sweep::describe(sweep.algorithm(i)).c_str(), same_bits(first, other) ? "same" : "other");
      report(label, median_ms(s, [&] { sweep.run(ssm::cuda::stream(s), i, x.data(), w.data(), y.data()); }));
    }
  }
}

/// Copies of an (N, K) weight matrix of random values, together several times the L2 (at least
/// 4), so that launches back to back each read their own from memory.
std::vector<view2> weight_copies(int N, int K) {
  int const copies = static_cast<int>(std::max(4.0, 1.2e9 / (2.0 * N * K)));
  std::vector<view2> ws;
  for (int i = 0; i < copies; ++i) {
    ws.emplace_back("w", N, K);
    fill(ws.back());
  }
  return ws;
}

/// Microseconds a launch of `one`, run on each of `ws` back to back in a CUDA graph.
double us_per_launch(space const& s, std::vector<view2> const& ws, std::function<void(view2 const&)> const& one) {
  return 1e3 * graph_ms(s, [&] {
           for (auto const& w : ws) one(w);
         }) / static_cast<double>(ws.size());
}

/// A decoding step's cuBLASLt products (in_proj, out_proj, and dt_proj reading x_proj's (M, 192)
/// output) at 8, 16 and 64 rows, as the step sees them (a graph of back-to-back launches, each on
/// its own copy of the weights): ssm::linear, each algorithm the heuristic proposes (up to 8),
/// and the first two with K split 1 to 16 ways, in microseconds and weight bytes per second.
void decode_sweep(space const& s) {
  std::printf("| layer | rows | algorithm | us | weights GB/s |\n|---|---:|---|---:|---:|\n");
  struct shape { char const* name; int N, K, ldx; };
  for (auto const& [name, N, K, ldx] : {shape{"in_proj", 10240, 2560, 2560}, shape{"out_proj", 2560, 5120, 5120},
                                        shape{"dt_proj", 5120, 160, 192}}) {
    double const bytes = 2.0 * N * K;
    std::vector<view2> const ws = weight_copies(N, K);
    view2 x("x", 128, ldx), y("y", 128, N);
    fill(x);
    std::vector<int> const rows = std::string_view(name) == "in_proj" ? std::vector<int>{8, 16, 32, 48, 64, 96, 128}
                                                                       : std::vector<int>{8, 16, 64};
    for (int M : rows) {
      auto report = [&](std::string const& label, std::function<void(view2 const&)> const& one) {
        double const us = us_per_launch(s, ws, one);
        std::printf("| %s | %d | %s | %.2f | %.0f |\n", name, M, label.c_str(), us, bytes / us / 1e3);
      };
      cudaStream_t const stream = ssm::cuda::stream(s);
      report("ssm::linear", [&](view2 const& w) {
        ssm::cuda::cublaslt::get().linear<T>(stream, M, N, K, x.data(), ldx, w.data(), K, nullptr, y.data(), N);
      });
      algorithm_sweep const sweep(M, N, K, ldx, 8);
      view2 first("first", M, N), other("other", M, N);
      if (sweep.size() > 0) sweep.run(stream, 0, x.data(), ws[0].data(), first.data());
      for (int i = 0; i < sweep.size(); ++i) {
        sweep.run(stream, i, x.data(), ws[0].data(), other.data());
        bool const same = same_bits(first, other);
        report("heuristic " + std::to_string(i + 1) + " (" + algorithm_sweep::describe(sweep.algorithm(i)) + "; " +
                   (same ? "same" : "other") + " bits)",
               [&](view2 const& w) { sweep.run(stream, i, x.data(), w.data(), y.data()); });
      }
      for (int i = 0; i < std::min(2, sweep.size()); ++i)
        for (std::uint32_t splits : {1u, 2u, 3u, 4u, 6u, 8u, 12u, 16u}) {
          auto const algo = sweep.with_split(i, splits);
          if (!algo) continue;
          report("heuristic " + std::to_string(i + 1) + " as " + algorithm_sweep::describe(*algo),
                 [&](view2 const& w) { sweep.run(stream, *algo, x.data(), w.data(), y.data()); });
        }
    }
  }
}

int main(int argc, char** argv) {
  bool const variants = argc > 1 && std::string_view(argv[1]) == "--variants";
  bool const prefill = argc > 1 && std::string_view(argv[1]) == "--prefill";
  bool const decode = argc > 1 && std::string_view(argv[1]) == "--decode";
  Kokkos::initialize(argc, argv);
  if (prefill || decode) {
    if (prefill) prefill_sweep(space{});
    else decode_sweep(space{});
    Kokkos::finalize();
    return 0;
  }
  {
    space s;
    std::size_t const n = std::size_t{1} << 28;
    Kokkos::View<float*, memory> a("a", n), b("b", n);
    double const copy_ms = median_ms(s, [&] { Kokkos::deep_copy(s, a, b); });
    double const copy_GBps = 8.0 * static_cast<double>(n) / copy_ms / 1e6;
    std::printf("device-to-device copy: %.0f GB/s\n\n", copy_GBps);
    std::printf("| layer | N x K | rows | kernel | us | weights GB/s | of the copy rate |\n|---|---|---:|---|---:|---:|---:|\n");
    struct shape { char const* name; int N, K; };
    for (auto const& [name, N, K] : {shape{"in_proj", 10240, 2560}, shape{"x_proj", 192, 5120},
                                     shape{"out_proj", 2560, 5120}, shape{"lm_head", 50280, 2560}}) {
      Kokkos::View<T**, Kokkos::LayoutRight, memory> w("w", N, K), x("x", 8, K), y("y", 8, N);
      fill(w);
      fill(x);
      for (int M : {1, 8}) {
        double const bytes = 2.0 * N * K;
        auto report = [&](char const* kernel, double ms) {
          double const GBps = bytes / ms / 1e6;
          std::printf("| %s | %d x %d | %d | %s | %.1f | %.0f | %.0f%% |\n", name, N, K, M, kernel, 1e3 * ms, GBps,
                      100.0 * GBps / copy_GBps);
        };
        report("ssm gemv", median_ms(s, [&] {
                 ssm::cuda::gemv<T, T>(ssm::cuda::stream(s), M, N, K, x.data(), K, w.data(), K, nullptr, y.data(), N);
               }));
        report("cuBLASLt", median_ms(s, [&] {
                 ssm::cuda::cublaslt::get().linear<T>(ssm::cuda::stream(s), M, N, K, x.data(), K, w.data(), K, nullptr,
                                                      y.data(), N);
               }));
      }
    }

    std::printf("\nIn a CUDA graph, back to back, each launch on its own weights (no reuse in L2), "
                "microseconds per launch:\n\n");
    std::printf("| layer | rows | kernel | us | weights GB/s | of the copy rate |\n|---|---:|---|---:|---:|---:|\n");
    for (auto const& [name, N, K] : {shape{"in_proj", 10240, 2560}, shape{"x_proj", 192, 5120},
                                     shape{"out_proj", 2560, 5120}, shape{"lm_head", 50280, 2560}}) {
      double const bytes = 2.0 * N * K;
      std::vector<view2> const ws = weight_copies(N, K);
      view2 x("x", 64, K), y("y", 64, N);
      fill(x);
      auto report = [&](int M, char const* kernel, std::function<void(view2 const&)> const& one) {
        double const us = us_per_launch(s, ws, one);
        double const GBps = bytes / us / 1e3;
        std::printf("| %s | %d | %s | %.2f | %.0f | %.0f%% |\n", name, M, kernel, us, GBps, 100.0 * GBps / copy_GBps);
      };
      for (int M : {1, 8}) {
        report(M, "ssm gemv", [&](view2 const& w) {
          ssm::cuda::gemv<T, T>(ssm::cuda::stream(s), M, N, K, x.data(), K, w.data(), K, nullptr, y.data(), N);
        });
        report(M, "cuBLASLt", [&](view2 const& w) {
          ssm::cuda::cublaslt::get().linear<T>(ssm::cuda::stream(s), M, N, K, x.data(), K, w.data(), K, nullptr,
                                               y.data(), N);
        });
      }
      bool const few_outputs = N <= ssm::cuda::narrow_max_outputs;
      if (few_outputs || (variants && N <= 16384))
        for (int M : {16, 64}) {
          if (few_outputs)
            report(M, "ssm narrow_gemm", [&](view2 const& w) {
              ssm::cuda::narrow_gemm<T>(ssm::cuda::stream(s), M, N, K, x.data(), K, w.data(), K, nullptr, y.data(), N);
            });
          report(M, "cuBLASLt", [&](view2 const& w) {
            ssm::cuda::cublaslt::get().linear<T>(ssm::cuda::stream(s), M, N, K, x.data(), K, w.data(), K, nullptr,
                                                 y.data(), N);
          });
          if (!variants) continue;
          if (!few_outputs)
            for (int S : {2, 4, 8}) {
              char label[96];
              std::snprintf(label, sizeof label, "cuBLASLt, K in %d slices, fp32 partials", S);
              try {
                partial_products const products(M, N, K, S);
                report(M, label, [&](view2 const& w) { products.run(ssm::cuda::stream(s), x.data(), w.data()); });
              } catch (ssm::error const& e) {
                std::printf("| %s | %d | %s | refused: %s | | |\n", name, M, label, e.what());
              }
            }
          auto variant = [&](auto mt, auto depth) {
            constexpr int MT = decltype(mt)::value, Depth = decltype(depth)::value;
            for (int cluster : few_outputs ? std::vector<int>{4, 8, 16} : std::vector<int>{1, 2, 4}) {
              char label[96];
              std::snprintf(label, sizeof label, "narrow rows %d depth %d cluster %d", 16 * MT, Depth, cluster);
              report(M, label, [&](view2 const& w) {
                ssm::cuda::detail::narrow_gemm_with<MT, Depth, T>(ssm::cuda::stream(s), cluster, M, N, K, x.data(), K,
                                                                  w.data(), K, nullptr, y.data(), N);
              });
            }
          };
          ssm::cuda::for_each_constant<1, 2>([&](auto mt) {
            ssm::cuda::for_each_constant<2, 3, 4>([&](auto depth) { variant(mt, depth); });
          });
        }
      if (!variants) continue;
      for (int rows : {1, 2, 4})
        for (int depth : {2, 4, 8})
          for (int split : {1, 2, 4, 8}) {
            char label[64];
            std::snprintf(label, sizeof label, "gemv rows %d depth %d split %d", rows, depth, split);
            report(1, label, [&](view2 const& w) { gemv_variant(s, {rows, depth, split}, N, K, x, w, y); });
          }
    }

    // dt_proj (5120 x 160) reading x_proj's (M, 192) output, as a step of 8 to 64 sequences takes
    // it: the short-K kernel (ssm::linear's choice up to 128 rows; a programmatic dependent, so
    // that in the graph each launch may begin while the one before it ends) and cuBLASLt.
    {
      int const N = 5120, K = 160, ldx = 192;
      double const bytes = 2.0 * N * K;
      std::vector<view2> const ws = weight_copies(N, K);
      view2 x("x", 64, ldx), y("y", 64, N);
      fill(x);
      for (int M : {8, 16, 64}) {
        auto report = [&](char const* kernel, std::function<void(view2 const&)> const& one) {
          double const us = us_per_launch(s, ws, one);
          double const GBps = bytes / us / 1e3;
          std::printf("| dt_proj | %d | %s | %.2f | %.0f | %.0f%% |\n", M, kernel, us, GBps, 100.0 * GBps / copy_GBps);
        };
        report("ssm shallow_gemm", [&](view2 const& w) {
          ssm::cuda::shallow_gemm<T>(ssm::cuda::stream(s), M, N, K, x.data(), ldx, w.data(), K, nullptr, y.data(), N);
        });
        report("cuBLASLt", [&](view2 const& w) {
          ssm::cuda::cublaslt::get().linear<T>(ssm::cuda::stream(s), M, N, K, x.data(), ldx, w.data(), K, nullptr,
                                               y.data(), N);
        });
      }
    }
  }
  Kokkos::finalize();
  return 0;
}
