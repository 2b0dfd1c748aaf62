/// \file
/// \brief GPU tests of `ssm::argmax_rows` on Kokkos::Cuda, the greedy choice of a decoding step:
/// the CUDA kernel (`argmax_rows_backend<Kokkos::Cuda>`, aligned contiguous rows) and the portable
/// team per row it leaves the other layouts to, against a sort of each row on the host. Rows of the
/// vocabulary's length and longer, so that threads take several rounds of pieces; ties within
/// and across pieces; NaN, infinities and signed zeros; maxima in the tail of a row.

#include "catch.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include <ssm/model/generate.hpp>

#include "cuda_support.hpp"

namespace {

namespace gpu = ssm::test::gpu;
using ssm::from_float;
using ssm::to_float;

/// Where the rows lie in the (B, V) tensor the kernel is given.
enum class layout {
  contiguous,  ///< rows of V: the kernel where V T is a multiple of 16 bytes, else the portable path
  padded,      ///< rows of V, a pitch of whole pieces and one more: the kernel, with a tail unless V is whole pieces
  single,      ///< each row alone, (1, V) at an aligned address: the kernel, with a tail unless V is whole pieces
  shifted,     ///< rows of V starting one element past an aligned address: the portable path
  columns,     ///< stride 1 over rows (LayoutLeft): the portable path
};

/// The oracle: the first of the largest numbers of a row (as stored), -1 if it holds none.
template <class T>
std::int32_t expected_token(std::vector<T> const& row) {
  std::vector<int> order;
  for (int v = 0; v < static_cast<int>(row.size()); ++v)
    if (!std::isnan(to_float(row[v]))) order.push_back(v);
  if (order.empty()) return -1;
  std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return to_float(row[x]) > to_float(row[y]); });
  return order[0];
}

/// Rows of V logits: random, then a planted case per row (see the file comment).
template <class T>
std::vector<std::vector<T>> planted_rows(int V, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, 3.0f);
  float const nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  int const B = 8;
  std::vector<std::vector<T>> rows(B, std::vector<T>(V));
  for (auto& row : rows)
    for (auto& x : row) x = from_float<T>(normal(rng));
  for (auto& x : rows[3]) x = from_float<T>(-std::abs(to_float(x)) - 1.0f);  // every logit negative
  for (auto& x : rows[4]) x = from_float<T>(nan);                            // no number at all
  auto plant = [&](int b, int v, float x) {
    if (v >= 0 && v < V) rows[b][v] = from_float<T>(x);
  };
  plant(0, V - 2, 50.0f);  // a tie for the first place, far apart: the smaller token wins
  plant(0, 3, 50.0f);
  plant(1, 5, nan);
  plant(1, V / 2, inf);
  plant(2, V - 1, 40.0f);  // the last token, in the row's tail when V is not whole pieces
  plant(3, V / 3, -0.0f);  // signed zeros tie: the smaller token wins
  plant(3, V / 3 + 1, 0.0f);
  plant(3, 0, -inf);
  plant(5, 1, 60.0f);  // a tie inside one piece
  plant(5, 2, 60.0f);
  plant(6, V - 1, 70.0f);  // a tie between the last piece and the tail
  plant(6, V - 9, 70.0f);
  for (auto& x : rows[7]) x = from_float<T>(-inf);  // only -inf: still a number
  return rows;
}

template <class T>
void check_argmax(int V, layout where, std::mt19937_64& rng) {
  auto const rows = planted_rows<T>(V, rng);
  int const B = static_cast<int>(rows.size());
  CAPTURE(V, static_cast<int>(where));
  std::vector<std::int32_t> chosen(B);
  if (where == layout::columns) {
    Kokkos::View<T**, Kokkos::LayoutLeft, Kokkos::HostSpace> host("logits", B, V);
    for (int b = 0; b < B; ++b)
      for (int v = 0; v < V; ++v) host(b, v) = rows[b][v];
    auto const device = gpu::to_device(host);
    gpu::dev1<std::int32_t> tokens("tokens", B);
    ssm::argmax_rows(gpu::space(), ssm::view2<const T, gpu::memory>(device), ssm::view1<std::int32_t, gpu::memory>(tokens));
    auto const back = gpu::to_host(tokens);
    for (int b = 0; b < B; ++b) chosen[b] = back(b);
  } else if (where == layout::single) {
    for (int b = 0; b < B; ++b) {
      Kokkos::View<T**, Kokkos::LayoutRight, Kokkos::HostSpace> host("logits", 1, V);
      for (int v = 0; v < V; ++v) host(0, v) = rows[b][v];
      auto const device = gpu::to_device(host);
      gpu::dev1<std::int32_t> tokens("tokens", 1);
      Kokkos::deep_copy(tokens, -2);  // no row's answer
      ssm::argmax_rows(gpu::space(), ssm::view2<const T, gpu::memory>(device), ssm::view1<std::int32_t, gpu::memory>(tokens));
      chosen[b] = gpu::to_host(tokens)(0);
    }
  } else {
    constexpr int piece = static_cast<int>(16 / sizeof(T));
    int const offset = where == layout::shifted ? 1 : 0;
    int const pitch = where == layout::padded ? (V + piece - 1) / piece * piece + piece : V;
    Kokkos::View<T*, Kokkos::HostSpace> flat("flat", static_cast<std::size_t>(B) * pitch + offset);
    for (std::size_t i = 0; i < flat.size(); ++i) flat(i) = from_float<T>(1e4f);  // padding, larger than any logit
    for (int b = 0; b < B; ++b)
      for (int v = 0; v < V; ++v) flat(offset + static_cast<std::size_t>(b) * pitch + v) = rows[b][v];
    auto const device = gpu::to_device(flat);
    ssm::view2<const T, gpu::memory> const logits(device.data() + offset,
                                                  Kokkos::LayoutStride(B, static_cast<std::size_t>(pitch), V, 1));
    gpu::dev1<std::int32_t> tokens("tokens", B);
    Kokkos::deep_copy(tokens, -2);  // no row's answer
    ssm::argmax_rows(gpu::space(), logits, ssm::view1<std::int32_t, gpu::memory>(tokens));
    auto const back = gpu::to_host(tokens);
    for (int b = 0; b < B; ++b) chosen[b] = back(b);
  }
  for (int b = 0; b < B; ++b) {
    CAPTURE(b);
    REQUIRE(chosen[b] == expected_token(rows[b]));
  }
}

template <class T>
void sweep() {
  std::mt19937_64 rng(17);
  // 1 to 9: less than a piece, one, one and a tail; 50280 the 2.8B model's vocabulary (whole pieces
  // in every type); 50277 with a tail; 70001 more than one round of pieces per thread
  for (int V : {1, 7, 8, 9, 37, 4099, 50280, 50277, 70001})
    for (layout where : {layout::contiguous, layout::padded, layout::single, layout::shifted, layout::columns}) check_argmax<T>(V, where, rng);
}

}  // namespace

TEST_CASE("argmax_rows on the GPU agrees with a sort of each row, fp32", "[cuda][sampling]") { sweep<float>(); }
TEST_CASE("argmax_rows on the GPU agrees with a sort of each row, bf16", "[cuda][sampling]") { sweep<ssm::bf16>(); }
TEST_CASE("argmax_rows on the GPU agrees with a sort of each row, fp16", "[cuda][sampling]") { sweep<ssm::f16>(); }
