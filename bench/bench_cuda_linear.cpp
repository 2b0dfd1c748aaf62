// Benchmark of the dense layers of a decoding step on the GPU at the Mamba-2.8B shapes, bf16:
// in_proj (10240 x 2560), x_proj (192 x 5120), out_proj (2560 x 5120) and lm_head (50280 x 2560),
// for 1 and 8 rows, through the weight-streaming kernel (what ssm::linear uses up to 8 rows) and
// through cuBLASLt. Each is timed with CUDA events: three warm-up calls, then the median of 50.
// The rate counts the weights read once; the fraction is of the device-to-device copy rate
// measured in the same run (bytes read plus written).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <vector>

#include <cuda_runtime.h>

#include <ssm/linear/linear.hpp>

#include "bench_cuda_common.hpp"

namespace {

using space = Kokkos::Cuda;
using memory = Kokkos::CudaSpace;
using T = ssm::bf16;

using ssm::bench::median_ms;

/// Fill with a hash of the index, uniform in [-0.5, 0.5): quick for 260 MB and never zeros.
void fill(Kokkos::View<T**, Kokkos::LayoutRight, memory> const& v) {
  T* data = v.data();
  Kokkos::parallel_for("fill", Kokkos::RangePolicy<space>(0, v.span()), KOKKOS_LAMBDA(std::size_t const i) {
    std::uint32_t h = static_cast<std::uint32_t>(i) * 2654435761u;
    h ^= h >> 15;
    data[i] = ssm::from_float<T>(static_cast<float>(h & 0xFFFFu) / 65536.0f - 0.5f);
  });
}

}  // namespace

int main(int argc, char** argv) {
  Kokkos::initialize(argc, argv);
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
  }
  Kokkos::finalize();
  return 0;
}
