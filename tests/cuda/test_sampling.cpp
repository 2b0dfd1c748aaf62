/// \file
/// \brief GPU tests of the choices of tokens from logits on Kokkos::Cuda: `ssm::argmax_rows` (the
/// greedy choice of a decoding step) and `ssm::top_logits` (the largest logits that sampling with
/// top-k needs), each by its CUDA kernel (`token_choice_backend<Kokkos::Cuda>`, aligned contiguous
/// rows) and by the portable team per row it leaves the other layouts to, against a sort of each
/// row on the host. Rows of the vocabulary's length and longer, so that threads take several
/// rounds of pieces; ties within and across pieces and at the last place taken; NaN, infinities
/// and signed zeros; maxima in the tail of a row; more logits asked for than a row has numbers.

#include "catch.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <random>
#include <utility>
#include <vector>

#include <ssm/model/generate.hpp>
#include <ssm/model/scoring.hpp>

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

/// The oracle: the tokens of a row's numbers (as stored), largest first, ties by the smaller token.
template <class T>
std::vector<int> sorted_tokens(std::vector<T> const& row) {
  std::vector<int> order;
  for (int v = 0; v < static_cast<int>(row.size()); ++v)
    if (!std::isnan(to_float(row[v]))) order.push_back(v);
  std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return to_float(row[x]) > to_float(row[y]); });
  return order;
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
  for (int v = 0; v < V; v += std::max(1, V / 100)) plant(5, v, 55.0f);  // ties spread over the row
  for (auto& x : rows[7]) x = from_float<T>(-inf);  // only -inf: still a number, every one tied
  return rows;
}

/// The rows on the GPU, laid out as `where` says, as the (B, V) tensor the choices are given;
/// `rows_of(b)` is the tensor holding row b and its row there (one tensor for all but `single`).
template <class T>
class device_rows {
 public:
  device_rows(std::vector<std::vector<T>> const& rows, layout where) : where_(where) {
    int const B = static_cast<int>(rows.size()), V = static_cast<int>(rows[0].size());
    if (where == layout::columns) {
      Kokkos::View<T**, Kokkos::LayoutLeft, Kokkos::HostSpace> host("logits", B, V);
      for (int b = 0; b < B; ++b)
        for (int v = 0; v < V; ++v) host(b, v) = rows[b][v];
      keep_.push_back(flat_copy(host.data(), host.span()));
      tensors_.emplace_back(keep_.back().data(), Kokkos::LayoutStride(B, 1, V, B));
    } else if (where == layout::single) {
      for (int b = 0; b < B; ++b) {
        keep_.push_back(flat_copy(rows[b].data(), rows[b].size()));
        tensors_.emplace_back(keep_.back().data(), Kokkos::LayoutStride(1, V, V, 1));
      }
    } else {
      constexpr int piece = static_cast<int>(16 / sizeof(T));
      int const offset = where == layout::shifted ? 1 : 0;
      int const pitch = where == layout::padded ? (V + piece - 1) / piece * piece + piece : V;
      std::vector<T> flat(static_cast<std::size_t>(B) * pitch + offset, from_float<T>(1e4f));  // padding above any logit
      for (int b = 0; b < B; ++b) std::copy(rows[b].begin(), rows[b].end(), flat.begin() + offset + b * pitch);
      keep_.push_back(flat_copy(flat.data(), flat.size()));
      tensors_.emplace_back(keep_.back().data() + offset, Kokkos::LayoutStride(B, pitch, V, 1));
    }
  }
  /// The tensors to give the choices, and the row of each tensor that holds row b.
  std::vector<ssm::view2<const T, gpu::memory>> const& tensors() const { return tensors_; }
  std::pair<std::size_t, int> where_is(int b) const {
    return where_ == layout::single ? std::pair<std::size_t, int>{static_cast<std::size_t>(b), 0}
                                    : std::pair<std::size_t, int>{0, b};
  }

 private:
  static gpu::dev1<T> flat_copy(T const* data, std::size_t n) {
    Kokkos::View<T const*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> host(data, n);
    gpu::dev1<T> device("rows", n);
    Kokkos::deep_copy(device, host);
    return device;
  }
  layout where_;
  std::vector<gpu::dev1<T>> keep_;
  std::vector<ssm::view2<const T, gpu::memory>> tensors_;
};

template <class T>
void check_choices(int V, layout where, std::mt19937_64& rng) {
  auto const rows = planted_rows<T>(V, rng);
  int const B = static_cast<int>(rows.size());
  CAPTURE(V, static_cast<int>(where));
  device_rows<T> const on_gpu(rows, where);
  // the top kernel's most (1024), more than the row's numbers, and (once) past the kernel's most,
  // which leaves the row to the portable path (a pass over the row per logit: slow for long rows)
  std::vector<int> counts = {0, 1, 6, 40, 104, 1024};
  if (V + 3 < 1024) counts.push_back(V + 3);
  if (V == 4099) counts.push_back(1100);
  for (int count : counts) {
    CAPTURE(count);
    std::vector<std::int32_t> chosen(B, -2), top_tokens(static_cast<std::size_t>(B) * count, -2);
    std::vector<float> top_values(static_cast<std::size_t>(B) * count);
    for (std::size_t i = 0; i < on_gpu.tensors().size(); ++i) {
      auto const& logits = on_gpu.tensors()[i];
      int const rows_here = static_cast<int>(logits.extent(0));
      gpu::dev1<std::int32_t> tokens("tokens", rows_here);
      Kokkos::deep_copy(tokens, -2);  // no row's answer
      gpu::dev2<std::int32_t> top("top", rows_here, count);
      gpu::dev2<float> values("values", rows_here, count);
      gpu::poison(values);
      Kokkos::deep_copy(top, -2);
      ssm::argmax_rows(gpu::space(), logits, ssm::view1<std::int32_t, gpu::memory>(tokens));
      ssm::top_logits(gpu::space(), logits, ssm::view2<std::int32_t, gpu::memory>(top), ssm::view2<float, gpu::memory>(values));
      auto const h_tokens = gpu::to_host(tokens);
      auto const h_top = gpu::to_host(top);
      auto const h_values = gpu::to_host(values);
      for (int b = 0; b < B; ++b) {
        auto const [tensor, r] = on_gpu.where_is(b);
        if (tensor != i) continue;
        chosen[b] = h_tokens(r);
        for (int k = 0; k < count; ++k) {
          top_tokens[static_cast<std::size_t>(b) * count + k] = h_top(r, k);
          top_values[static_cast<std::size_t>(b) * count + k] = h_values(r, k);
        }
      }
    }
    for (int b = 0; b < B; ++b) {
      CAPTURE(b);
      auto const order = sorted_tokens(rows[b]);
      REQUIRE(chosen[b] == (order.empty() ? -1 : order[0]));
      for (int k = 0; k < count; ++k) {
        CAPTURE(k);
        std::int32_t const token = top_tokens[static_cast<std::size_t>(b) * count + k];
        float const value = top_values[static_cast<std::size_t>(b) * count + k];
        if (k >= static_cast<int>(order.size())) {  // fewer numbers than asked for
          REQUIRE(token == -1);
          REQUIRE(value == 0.0f);
          continue;
        }
        REQUIRE(token == order[k]);
        REQUIRE(value == to_float(rows[b][order[k]]));
      }
    }
  }
}

template <class T>
void sweep() {
  std::mt19937_64 rng(17);
  // 1 to 9: less than a piece, one, one and a tail; 50280 the 2.8B model's vocabulary (whole pieces
  // in every type); 50277 with a tail; 70001 more than one round of pieces per thread
  for (int V : {1, 7, 8, 9, 37, 4099, 50280, 50277, 70001})
    for (layout where : {layout::contiguous, layout::padded, layout::single, layout::shifted, layout::columns})
      check_choices<T>(V, where, rng);
}

/// score_tokens' log-softmax of rows left on the GPU against the host's loop in double.
template <class T>
void check_log_softmax() {
  std::mt19937_64 rng(23);
  std::normal_distribution<float> normal(0.0f, 20.0f);
  for (int V : {1, 37, 50280}) {
    int const L = 5;
    Kokkos::View<T**, Kokkos::LayoutRight, Kokkos::HostSpace> logits("logits", L, V);
    for (int l = 0; l < L; ++l)
      for (int v = 0; v < V; ++v) logits(l, v) = from_float<T>(normal(rng));
    logits(1, V - 1) = from_float<T>(80.0f);
    logits(2, 0) = from_float<T>(-std::numeric_limits<float>::infinity());
    int const picks[L] = {0, V - 1, V / 2, -1, V / 3};
    Kokkos::View<std::int32_t*, Kokkos::HostSpace> targets("targets", L);
    for (int l = 0; l < L; ++l) targets(l) = picks[l];
    auto const d_logits = gpu::to_device(logits);
    auto const d_targets = gpu::to_device(targets);
    gpu::dev1<double> logprob("logprob", L);
    ssm::detail::log_softmax_rows(gpu::space(), ssm::view2<const T, gpu::memory>(d_logits),
                                  ssm::view1<const std::int32_t, gpu::memory>(d_targets),
                                  ssm::view1<double, gpu::memory>(logprob));
    auto const back = gpu::to_host(logprob);
    for (int l = 0; l < L; ++l) {
      CAPTURE(V, l);
      double const expected =
          picks[l] < 0 ? 0.0 : ssm::detail::log_softmax_at(&logits(l, 0), static_cast<std::size_t>(V), static_cast<std::size_t>(picks[l]));
      if (std::isnan(expected)) {  // a row of one -inf: no distribution, NaN on both
        REQUIRE(std::isnan(back(l)));
        continue;
      }
      REQUIRE(std::abs(back(l) - expected) <= 1e-12 * (1.0 + std::abs(expected)));
    }
  }
}

}  // namespace

TEST_CASE("argmax_rows and top_logits on the GPU agree with a sort of each row, fp32", "[cuda][sampling]") { sweep<float>(); }
TEST_CASE("argmax_rows and top_logits on the GPU agree with a sort of each row, bf16", "[cuda][sampling]") {
  sweep<ssm::bf16>();
}
TEST_CASE("argmax_rows and top_logits on the GPU agree with a sort of each row, fp16", "[cuda][sampling]") {
  sweep<ssm::f16>();
}

TEST_CASE("score_tokens' log-softmax of rows on the GPU agrees with the host's", "[cuda][score]") {
  check_log_softmax<float>();
  check_log_softmax<ssm::bf16>();
}
