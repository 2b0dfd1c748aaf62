#pragma once
// Helpers shared by the tests: seeded random tensors, and comparisons with tolerances derived
// from the storage type and the length of the sums involved.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <random>
#include <sstream>
#include <string>
#include <system_error>
#include <vector>

#include <Kokkos_Core.hpp>

#include <ssm/core/dtype.hpp>
#include <ssm/core/error.hpp>
#include <ssm/core/views.hpp>

#include "catch.hpp"

namespace ssm::test {

/// The execution space the tests run the Kokkos paths on, and its (host-accessible) memory.
using space = Kokkos::DefaultHostExecutionSpace;  // CUDA builds test the GPU in tests/cuda
using memory = space::memory_space;

/// The storage types of one instantiation of a templated test: `act` for activations, `weight`
/// for weights (TEMPLATE_TEST_CASE's `TestType`).
template <class T, class Wt>
struct types {
  using act = T;
  using weight = Wt;
};

/// A contiguous host tensor of rank 1 to 4.
template <class T>
using host1 = Kokkos::View<T*, Kokkos::LayoutRight, Kokkos::HostSpace>;
template <class T>
using host2 = Kokkos::View<T**, Kokkos::LayoutRight, Kokkos::HostSpace>;
template <class T>
using host3 = Kokkos::View<T***, Kokkos::LayoutRight, Kokkos::HostSpace>;
template <class T>
using host4 = Kokkos::View<T****, Kokkos::LayoutRight, Kokkos::HostSpace>;

/// Fill a contiguous view with values uniform in [lo, hi), rounded to its storage type.
template <class View>
void fill_uniform(View const& v, std::uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  using T = typename View::non_const_value_type;
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  for (std::size_t i = 0; i < v.span(); ++i) v.data()[i] = from_float<T>(dist(rng));
}

/// Element-wise bound |actual - expected| <= abs + rel * |expected|.
struct tolerance {
  double rel;  ///< relative part
  double abs;  ///< absolute part
};

/// The bound for comparing two fp32 evaluations of sums of `terms` products of magnitude about
/// `scale`, each rounded once to storage type T at the end: one rounding of T either way
/// (2u_T relative) plus the fp32 reassociation error of the sums (about terms * 2^-24 * scale),
/// with a factor 4 of headroom for the worst case of the bound, never for "what passed".
template <class T>
tolerance derived_tolerance(std::size_t terms, double scale = 1.0) {
  double const u = unit_roundoff<T>();
  double const fp32 = 0x1p-24;
  return {4.0 * u, 4.0 * static_cast<double>(terms) * fp32 * scale + 4.0 * u * scale};
}

/// The bound of an fp32 evaluation of y = x W^T + b in any order: the K + 1 terms of each output
/// reassociated (about (K + 1) 2^-24 times the sum of their magnitudes), then one rounding to T.
/// `scale` is the largest sum of magnitudes |b_n| + sum_k |x_mk w_nk|, computed here in double.
template <class T, class X, class W, class B>
tolerance gemm_tolerance(X const& x, W const& w, B const& bias) {
  double scale = 0.0;
  for (std::size_t m = 0; m < x.extent(0); ++m)
    for (std::size_t n = 0; n < w.extent(0); ++n) {
      double sum = given(bias) ? std::abs(static_cast<double>(to_float(bias(n)))) : 0.0;
      for (std::size_t k = 0; k < x.extent(1); ++k)
        sum += std::abs(static_cast<double>(to_float(x(m, k))) * static_cast<double>(to_float(w(n, k))));
      scale = std::fmax(scale, sum);
    }
  return derived_tolerance<T>(x.extent(1) + 1, scale);
}

/// Compare two contiguous views of the same size element by element; report the worst element.
template <class A, class E>
void require_close(A const& actual, E const& expected, tolerance tol, std::string const& what = "") {
  REQUIRE(actual.span() == expected.span());
  double worst = 0.0;
  std::size_t worst_index = 0;
  bool ok = true;
  for (std::size_t i = 0; i < expected.span(); ++i) {
    double const a = to_float(actual.data()[i]);
    double const e = to_float(expected.data()[i]);
    double const excess = std::abs(a - e) - (tol.abs + tol.rel * std::abs(e));
    if (!(excess <= 0.0)) ok = false;  // NaN fails too
    if (i == 0 || std::isnan(excess) || excess > worst) {
      worst = excess;
      worst_index = i;
    }
  }
  std::ostringstream msg;
  msg << what << ": worst element " << worst_index << " actual " << to_float(actual.data()[worst_index])
      << " expected " << to_float(expected.data()[worst_index]) << " (bound abs " << tol.abs << ", rel " << tol.rel
      << ")";
  INFO(msg.str());
  REQUIRE(ok);
}

/// The largest |x| of a contiguous view.
template <class View>
double max_abs(View const& v) {
  double m = 0.0;
  for (std::size_t i = 0; i < v.span(); ++i) m = std::fmax(m, std::abs(static_cast<double>(to_float(v.data()[i]))));
  return m;
}

/// A fresh temporary directory, removed with everything in it at the end of the test.
struct temp_dir {
  std::filesystem::path path;  ///< the directory
  temp_dir() {
    std::random_device rd;
    path = std::filesystem::temp_directory_path() / ("ssm_test_" + std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  temp_dir(temp_dir const&) = delete;
  temp_dir& operator=(temp_dir const&) = delete;
};

/// `f()` throws `ssm::shape_error` whose message contains every one of `parts`.
template <class F>
void require_shape_error(F&& f, std::vector<std::string> const& parts) {
  bool thrown = false;
  try {
    f();
  } catch (ssm::shape_error const& e) {
    thrown = true;
    std::string const message = e.what();
    INFO("message: " << message);
    for (auto const& part : parts) CHECK(message.find(part) != std::string::npos);
  }
  CHECK(thrown);
}

/// The message of the `Error` that `f` throws, or "" if it throws none.
template <class Error, class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (Error const& e) {
    return e.what();
  }
  return "";
}

/// Whether `text` contains `part`.
inline bool contains(std::string const& text, std::string const& part) { return text.find(part) != std::string::npos; }

}  // namespace ssm::test
