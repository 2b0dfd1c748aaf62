/// \file
/// \brief The language model's decoding step with every layer in one launch on the GPU
/// (`mamba_stack_step`, `ssm/model/cuda/stack_step.cuh`) against the host model's step, whose
/// every op is tested against its sequential reference: the logits and every layer's conv and SSM
/// states, over several steps from random states, at shapes that leave most blocks of the grid
/// without channels, that deal several runs of channels to each, and at the 2.8B model's widths.

#include "catch.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <ssm/model/mamba_lm.hpp>

#include "blocks/mamba_case.hpp"
#include "cuda_support.hpp"

namespace {

using namespace ssm;
using namespace ssm::test;
using backend = mamba_stack_step_backend<gpu::space>;

model_config model_shape(int d_model, int d_inner, int d_state, int d_conv, int dt_rank, bool bias, int n_layer) {
  model_config c;
  c.d_model = d_model;
  c.n_layer = n_layer;
  c.vocab_size = 50;
  c.padded_vocab_size = 56;
  c.d_state = d_state;
  c.d_conv = d_conv;
  c.d_inner = d_inner;
  c.expand = d_inner / d_model;
  c.dt_rank = dt_rank;
  c.conv_bias = bias;
  c.bias = bias;
  c.tie_embeddings = !bias;
  return c;
}

/// Seeded random weights for every layer (`random_weights`'s scales), norms about 1.
template <class Wt>
mamba_lm_weights<Wt, Kokkos::HostSpace> random_model(model_config const& c, std::uint64_t seed) {
  auto w = mamba_lm_weights<Wt, Kokkos::HostSpace>::allocate(c);
  fill_uniform(w.embedding, seed, -1.0f, 1.0f);
  for (int i = 0; i < c.n_layer; ++i) {
    w.mixers[static_cast<std::size_t>(i)] = random_weights<Wt>(c.mixer(), seed + 10 + static_cast<std::uint64_t>(i));
    fill_uniform(w.norms[static_cast<std::size_t>(i)], seed + 100 + static_cast<std::uint64_t>(i), 0.5f, 1.5f);
  }
  fill_uniform(w.norm_f, seed + 200, 0.5f, 1.5f);
  if (!c.tie_embeddings) fill_uniform(w.lm_head, seed + 201, -0.3f, 0.3f);
  return w;
}

/// The largest |x| of a contiguous host view.
template <class View>
double largest(View const& v) {
  double m = 0.0;
  for (std::size_t i = 0; i < v.span(); ++i) m = std::max(m, std::abs(static_cast<double>(to_float(v.data()[i]))));
  return m;
}

/// For fp32 activations, the reassociation of the fp32 sums (`derived_tolerance` over the terms of
/// a layer, times the layers they pass through); for 16-bit activations, a few roundings of T per
/// layer: an intermediate stored in T (the normalised input, u, x_proj's output, dt, y) may round
/// to the neighbouring value in one path and not the other, which moves the layer's output by
/// about one unit of T relative to its scale, and the next layers carry it.
template <class T, class View>
tolerance stack_tolerance(View const& expected, model_config const& c) {
  double const scale = largest(expected);
  std::size_t const terms = static_cast<std::size_t>(c.d_inner) * static_cast<std::size_t>(c.d_state + 4) *
                            static_cast<std::size_t>(c.n_layer);
  if constexpr (std::is_same_v<T, float>) return derived_tolerance<float>(terms, scale);
  else return {8.0 * unit_roundoff<T>(), 8.0 * c.n_layer * unit_roundoff<T>() * scale};
}

/// The model's step of B sequences on the GPU against the host's, from random states: the logits
/// and every layer's states after each step; and that the one-launch kernel took the steps exactly
/// when it is on, B = 1 and its ring fits.
template <class T, class Wt>
void compare(model_config const& c, int steps, int B = 1) {
  CAPTURE(c.d_model, c.d_inner, c.d_state, c.d_conv, c.dt_rank, c.bias, c.n_layer, B);
  using host_lm = mamba_lm<Kokkos::DefaultHostExecutionSpace, T, Wt>;
  using gpu_lm = mamba_lm<gpu::space, T, Wt>;
  auto const weights = random_model<Wt>(c, 31);
  host_lm const on_host(weights);
  gpu_lm const on_gpu(mamba_lm_weights<Wt, gpu::memory>::copy_of(weights));
  auto host_cache = on_host.make_cache(B);
  auto gpu_cache = on_gpu.make_cache(B);
  for (int i = 0; i < c.n_layer; ++i) {
    auto& h = host_cache.layers[static_cast<std::size_t>(i)];
    auto& g = gpu_cache.layers[static_cast<std::size_t>(i)];
    fill_uniform(h.conv, 40 + static_cast<std::uint64_t>(i));
    fill_uniform(h.ssm, 80 + static_cast<std::uint64_t>(i));
    Kokkos::deep_copy(g.conv, h.conv);
    Kokkos::deep_copy(g.ssm, h.ssm);
  }
  std::size_t const V = on_host.vocab();
  Kokkos::View<std::int32_t*, Kokkos::LayoutRight, Kokkos::HostSpace> ids("ids", B);
  Kokkos::View<std::int32_t*, Kokkos::LayoutRight, gpu::memory> d_ids("ids", B);
  host2<T> logits("logits", B, V);
  gpu::dev2<T> d_logits("logits", B, V);
  std::size_t const runs_before = backend::runs;
  for (int s = 0; s < steps; ++s) {
    CAPTURE(s);
    for (int b = 0; b < B; ++b) ids(b) = static_cast<std::int32_t>((7 * s + 5 * b + 3) % c.vocab_size);
    Kokkos::deep_copy(d_ids, ids);
    on_host.step(Kokkos::DefaultHostExecutionSpace(), ids, logits, host_cache);
    Kokkos::DefaultHostExecutionSpace().fence();
    gpu::poison(d_logits);
    on_gpu.step(gpu::space(), d_ids, d_logits, gpu_cache);
    require_close(gpu::to_host(d_logits), logits, stack_tolerance<T>(logits, c), "logits");
    for (int i = 0; i < c.n_layer; ++i) {
      CAPTURE(i);
      auto const& h = host_cache.layers[static_cast<std::size_t>(i)];
      auto const& g = gpu_cache.layers[static_cast<std::size_t>(i)];
      require_close(gpu::to_host(g.ssm), h.ssm, stack_tolerance<T>(h.ssm, c), "SSM state");
      require_close(gpu::to_host(g.conv), h.conv, stack_tolerance<T>(h.conv, c), "conv state");
    }
  }
  // the step went through the one-launch kernel, not the blocks' own steps, wherever its ring of
  // weight slots fits in shared memory (not for fp32 weights of the 2.8B model's width) and the
  // build and the GPU have Hopper's copy engine
  int device = 0, available = 0;
  ssm::cuda::check(cudaGetDevice(&device), "cudaGetDevice");
  ssm::cuda::check(cudaDeviceGetAttribute(&available, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), "shared memory");
  bool const fits =
      ssm::cuda::stack_layout_for<T, Wt>(c.mixer(), ssm::cuda::multiprocessors(), static_cast<std::size_t>(available)).slots > 0;
  CHECK(fits == !(std::is_same_v<Wt, float> && c.d_model == 2560));
  bool const hopper = ssm::cuda::runs_hopper_code(ssm::cuda::kernels::mamba_stack_step<T, Wt>);
  bool const taken = backend::enabled && B == 1 && fits && hopper;
  REQUIRE(backend::runs == runs_before + (taken ? static_cast<std::size_t>(steps) : 0u));
}

/// Turns the one-launch step on for a scope (it is off by default), and back as it was.
struct stack_step_on {
  bool const was = backend::enabled;
  stack_step_on() { backend::enabled = true; }
  ~stack_step_on() { backend::enabled = was; }
};

template <class T, class Wt>
void sweep() {
  stack_step_on const on;
  compare<T, Wt>(model_shape(64, 128, 16, 4, 8, true, 6), 3);       // 16 runs of channels: most blocks have none
  compare<T, Wt>(model_shape(96, 200, 48, 3, 5, true, 2), 3);       // N > 32, W = 3, D = 25 runs
  compare<T, Wt>(model_shape(32, 64, 1, 1, 1, false, 3), 3);        // N = 1, W = 1: no conv state
  compare<T, Wt>(model_shape(256, 2048, 16, 4, 160, false, 2), 2);  // 1 or 2 runs a block, R = 160
  compare<T, Wt>(model_shape(2560, 5120, 16, 4, 160, false, 2), 2);  // the 2.8B model's widths
}

}  // namespace

TEST_CASE("the stack's step in one launch matches the host model's step in fp32", "[cuda][stack]") {
  sweep<float, float>();
}
TEST_CASE("the stack's step in one launch, fp32 activations over bf16 weights", "[cuda][stack]") {
  sweep<float, bf16>();
}
TEST_CASE("the stack's step in one launch matches the host model's step in bf16", "[cuda][stack]") {
  sweep<bf16, bf16>();
}

TEST_CASE("the stack's step in one launch is not taken for a batch, or when switched off", "[cuda][stack]") {
  model_config const c = model_shape(64, 128, 16, 4, 8, true, 2);
  mamba_lm<gpu::space, float, float> const model(mamba_lm_weights<float, gpu::memory>::copy_of(random_model<float>(c, 3)));
  auto cache = model.make_cache(2);
  Kokkos::View<std::int32_t*, Kokkos::LayoutRight, gpu::memory> ids("ids", 2);
  gpu::dev2<float> logits("logits", 2, model.vocab());
  std::size_t const before = backend::runs;
  {
    stack_step_on const on;
    model.step(gpu::space(), ids, logits, cache);
  }
  REQUIRE(backend::runs == before);
  bool const was = backend::enabled;
  backend::enabled = false;
  auto one = model.make_cache(1);
  Kokkos::View<std::int32_t*, Kokkos::LayoutRight, gpu::memory> id("id", 1);
  gpu::dev2<float> row("row", 1, model.vocab());
  model.step(gpu::space(), id, row, one);
  backend::enabled = was;
  REQUIRE(backend::runs == before);
  gpu::space().fence();
}

namespace {

/// The model's step of B sequences on the GPU through out_proj's partial sums between blocks
/// (`step_partials`; forced to S where S > 0) against the host model's step through rows.
template <class T>
void compare_partials(model_config const& c, int B, int S, int steps) {
  CAPTURE(S);
  using partials = step_partials<gpu::space>;
  struct restore {
    ~restore() { partials::force_slices = -1; }
  } const restore_choice;
  partials::force_slices = S > 0 ? S : -1;
  REQUIRE(partials::slices<T, T>(c.mixer(), static_cast<std::size_t>(B)) == (S > 0 ? S : 2));
  compare<T, T>(c, steps, B);
}

}  // namespace

TEST_CASE("the model's steps through out_proj's partial sums match the host model's steps", "[cuda][stack]") {
  compare_partials<float>(model_shape(64, 128, 16, 4, 8, false, 4), 3, 2, 3);
  compare_partials<bf16>(model_shape(64, 128, 16, 4, 8, false, 4), 3, 4, 3);
  compare_partials<bf16>(model_shape(64, 128, 16, 4, 8, false, 1), 2, 2, 2);  // one block: rows only
  compare_partials<bf16>(model_shape(1280, 2560, 16, 4, 80, false, 3), 16, 0, 2);  // the default choice, 2
}
