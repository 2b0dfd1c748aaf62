#pragma once
// Shared by the benchmarks: a median-of-repeats timer, and a description of the machine and the
// Kokkos backend, printed with every result so that figures can be compared.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <Kokkos_Core.hpp>

#include <ssm/core/compat.hpp>
#include <ssm/core/dtype.hpp>

namespace ssm::bench {

/// Seconds of one call of `run`, the median of `repeats` calls after one warm-up call.
inline double median_seconds(int repeats, std::function<void()> const& run) {
  run();
  std::vector<double> times;
  for (int i = 0; i < repeats; ++i) {
    auto const start = std::chrono::steady_clock::now();
    run();
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

/// The CPU model, from /proc/cpuinfo where there is one.
inline std::string cpu_model() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

/// One line naming the machine, the Kokkos version and the backend with its thread count.
inline void print_machine() {
  using space = Kokkos::DefaultExecutionSpace;
  std::printf("machine: %s; Kokkos %d.%d.%d, %s with %d threads\n", cpu_model().c_str(), KOKKOS_VERSION / 10000,
              KOKKOS_VERSION / 100 % 100, KOKKOS_VERSION % 100, space::name(), compat::concurrency(space()));
}

/// Fill a view with seeded values uniform in [lo, hi), rounded to its storage type (on the host,
/// then copied to the view's memory).
template <class View>
void fill(View const& v, std::uint64_t seed, float lo, float hi) {
  using T = typename View::non_const_value_type;
  auto host = Kokkos::create_mirror_view(v);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  for (std::size_t i = 0; i < host.span(); ++i) host.data()[i] = from_float<T>(dist(rng));
  Kokkos::deep_copy(v, host);
}

/// True when the program was asked for its quick smoke-test mode (tiny sizes, one repeat).
inline bool quick_mode(int argc, char* argv[]) {
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]) == "--quick") return true;
  return false;
}

}  // namespace ssm::bench
