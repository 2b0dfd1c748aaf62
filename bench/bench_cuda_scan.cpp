// Benchmark of the selective scan on the GPU at the Mamba-2.8B layer shape: D = 5120, N = 16,
// L = 2048, bf16, with z gate, D skip, delta bias and softplus, at B = 1, 2, 4, 8 and 64, in the
// layout the Mamba block uses (u, delta and out token-major; z the second half of in_proj's
// output; B and C columns of x_proj's output, R = 160).
//
// Each path is timed with CUDA events on its stream: three warm-up runs, then the median of 50.
// Bytes: u, delta, z, out (B*D*L each) and B, C (B*N*L each), once each, in storage type; the
// fraction is of the H200's 4.3 TB/s. Paths: the CUDA backend as it chooses; the kernel with 1, 2
// or 4 tiles of 32 channels per block and each sequence cut into each number of pieces it could
// choose (at B = 8 and 64 only 1 and 2: more pieces only add work there); for B <= 4, the pieces'
// blocks meeting through memory instead of in a cluster, as on GPUs before Hopper, wherever the
// grid is resident at once; and, for B <= 8, the portable Kokkos path on the same GPU. Inputs are filled on the GPU with a hash of the index
// (uniform in each tensor's range), so that B = 64 (5 GB) starts quickly.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include <ssm/scan/selective_scan.hpp>

#include "bench_cuda_common.hpp"

namespace {

using space = Kokkos::Cuda;
using memory = Kokkos::CudaSpace;
using T = ssm::bf16;
namespace kernel = ssm::cuda::detail;

constexpr double peak_bytes_per_second = 4.3e12;  // H200 HBM3e

using ssm::bench::median_ms;

/// Fill a GPU view with values uniform in [lo, hi), from a hash (splitmix64) of the seed and index.
template <class View>
void fill(View const& v, std::uint64_t seed, float lo, float hi) {
  using V = typename View::non_const_value_type;
  auto* const data = v.data();
  Kokkos::parallel_for(
      "bench_cuda_scan::fill", Kokkos::RangePolicy<space>(0, v.span()), KOKKOS_LAMBDA(std::size_t const i) {
        std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + i;
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
        x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
        x ^= x >> 31;
        float const unit = static_cast<float>(x >> 40) * 0x1p-24f;  // [0, 1)
        data[i] = ssm::from_float<V>(lo + (hi - lo) * unit);
      });
}

std::string describe(kernel::scan_config const& c) {
  return std::to_string(c.pieces) + (c.pieces == 1 ? " piece" : " pieces") + ", " + std::to_string(c.tiles_per_block) +
         " tiles/block" + (c.through_memory && c.pieces > 1 ? ", through memory" : "");
}

void run(int B, int D, int L, int N) {
  int const R = 160, xw = R + 2 * N;
  std::size_t const M = static_cast<std::size_t>(B) * L;
  Kokkos::View<T*, memory> xz("xz", M * 2 * D), xc("xc", M * D), dt("dt", M * D), xdbl("xdbl", M * xw),
      y("y", M * D);
  Kokkos::View<float**, Kokkos::LayoutRight, memory> A("A", D, N);
  Kokkos::View<float*, memory> Dv("D", D), bias("bias", D);
  fill(xz, 1, -2, 2), fill(xc, 2, -1, 1), fill(dt, 3, -3, 0), fill(xdbl, 4, -1, 1);
  fill(A, 5, -16, -1), fill(Dv, 6, 0.5, 1.5), fill(bias, 7, -2, -1);
  auto const b = static_cast<std::size_t>(B), d = static_cast<std::size_t>(D), l = static_cast<std::size_t>(L),
             n = static_cast<std::size_t>(N), r = static_cast<std::size_t>(R), w = static_cast<std::size_t>(xw);
  ssm::selective_scan_params<T, memory> p;
  p.u = ssm::strided<const T, memory>(xc.data(), b, l * d, d, 1, l, d);
  p.delta = ssm::strided<const T, memory>(dt.data(), b, l * d, d, 1, l, d);
  p.z = ssm::strided<const T, memory>(xz.data() + d, b, l * 2 * d, d, 1, l, 2 * d);
  p.A = A;
  p.B = ssm::view4<const T, memory>(xdbl.data() + r, Kokkos::LayoutStride(b, l * w, 1, l * w, n, 1, l, w));
  p.C = ssm::view4<const T, memory>(xdbl.data() + r + n, Kokkos::LayoutStride(b, l * w, 1, l * w, n, 1, l, w));
  p.D = Dv;
  p.delta_bias = bias;
  p.delta_softplus = true;
  p.out = ssm::strided<T, memory>(y.data(), b, l * d, d, 1, l, d);
  space const s;
  auto const shape = ssm::detail::check(p, "bench_cuda_scan");
  double const bytes = (4.0 * B * D * L + 2.0 * B * N * L) * sizeof(T);
  auto report = [&](std::string const& path, std::function<void()> const& go) {
    double const ms = median_ms(s, go);
    double const rate = bytes / (ms * 1e-3);
    std::printf("| %-44s | B=%d D=%d L=%d N=%d | %9.4f ms | %7.1f GB/s | %5.1f %% |\n", path.c_str(), B, D, L, N, ms,
                rate / 1e9, 100.0 * rate / peak_bytes_per_second);
  };
  auto const chosen = kernel::choose_scan_config<T>(s, shape);
  report("backend (" + describe(chosen) + ")", [&] { ssm::selective_scan(s, p); });
  std::vector<int> pieces = {1};
  auto const& occupancy = kernel::scan_occupancy_of<T>(s.cuda_device());
  for (int i = 1; i < 5; ++i)
    if (occupancy.resident[i] > 0 && (B <= 4 || i <= 1)) pieces.push_back(1 << i);
  for (int tiles : {1, 2, 4})
    for (int piece_count : pieces) {
      kernel::scan_config const c{piece_count, tiles};
      report("kernel, " + describe(c), [&] { kernel::selective_scan_kernel(s, p, shape, c); });
    }
  // the pieces' blocks meeting through memory, as on GPUs without clusters, where the grid fits
  for (int piece_count : {2, 4, 8, 16}) {
    kernel::scan_config const c{piece_count, kernel::scan_tiles_per_block, true};
    double const blocks = std::ceil(B * (D / 32.0) / kernel::scan_tiles_per_block) * piece_count;
    if (B <= 4 && blocks <= occupancy.resident[0])
      report("kernel, " + describe(c), [&] { kernel::selective_scan_kernel(s, p, shape, c); });
  }
  if (B <= 8) report("portable Kokkos path", [&] { ssm::detail::selective_scan_portable(s, p, shape); });
  if (B == 1)
    std::printf("kernel: %d blocks of %d warps per SM; blocks resident at once in clusters of 1, 2, 4, 8, 16: %d, %d, "
                "%d, %d, %d\n",
                occupancy.blocks_per_sm, kernel::scan_tiles_per_block, occupancy.resident[0], occupancy.resident[1],
                occupancy.resident[2], occupancy.resident[3], occupancy.resident[4]);
}

}  // namespace

int main(int argc, char* argv[]) {
  Kokkos::ScopeGuard kokkos(argc, argv);
  cudaDeviceProp props{};
  ssm::cuda::check(cudaGetDeviceProperties(&props, space().cuda_device()), "bench_cuda_scan: device");
  std::printf("device: %s, %d SMs; Kokkos %d.%d.%d\n", props.name, props.multiProcessorCount,
              KOKKOS_VERSION / 10000, KOKKOS_VERSION / 100 % 100, KOKKOS_VERSION % 100);
  std::printf("| path | shape | time | bandwidth | of 4.3 TB/s |\n|---|---|---|---|---|\n");
  for (int B : {1, 2, 4, 8, 64}) run(B, 5120, 2048, 16);
  return 0;
}
