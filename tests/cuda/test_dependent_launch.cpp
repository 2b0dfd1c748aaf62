/// \file
/// \brief The ops whose kernels are launched as programmatic dependents (`ssm::cuda::launch`) wait
/// for what they read. Each op is enqueued right after a kernel that lets the next kernel start at
/// once but writes the op's input only a while later (`late_copy`); the op's output must then be,
/// bit for bit, what the same op gives with its input in place beforehand. A kernel that reads its
/// input before `wait_for_previous_kernel` returns, or that the compiler lets read it earlier,
/// reads the poison that the input holds until the copy lands. (With x_proj's `narrow_gemm`
/// reading x through `__ldg`, whose loads the compiler issued before the wait, its cases failed
/// on every run: docs/benchmarks.md, "x_proj's race found".)
///
/// Each op's values are checked against the host references in the other GPU tests; this one only
/// asks that the timing of the kernel before it cannot change them.

#include "catch.hpp"

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>

#include <ssm/blocks/mamba.hpp>
#include <ssm/conv/causal_conv1d.hpp>
#include <ssm/linear/linear.hpp>
#include <ssm/model/generate.hpp>
#include <ssm/norm/rms_norm.hpp>
#include <ssm/scan/state_update.hpp>

#include "blocks/mamba_case.hpp"
#include "cuda_support.hpp"

namespace {

using namespace ssm::test;

/// How long `late_copy` waits before it writes, in nanoseconds: far longer than a launch takes,
/// so that a dependent's blocks are running (and past any early read) when the input lands.
constexpr long long copy_delay_ns = 200'000;

__device__ long long global_nanoseconds() {
  long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

/// Let the next kernel start, wait `delay_ns`, then copy `words` 32-bit words of src to dst.
__global__ void late_copy(std::uint32_t const* src, std::uint32_t* dst, std::size_t words, long long delay_ns) {
  ssm::cuda::allow_next_kernel();
  long long const start = global_nanoseconds();
  while (global_nanoseconds() - start < delay_ns) __nanosleep(1000);
  for (std::size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < words; i += gridDim.x * blockDim.x) dst[i] = src[i];
}

/// The raw bytes of a contiguous GPU view, on the host.
template <class View>
std::string bytes_of(View const& device) {
  auto const host = gpu::to_host(device);
  std::string bytes(host.span() * sizeof(typename View::value_type), '\0');
  std::memcpy(bytes.data(), host.data(), bytes.size());
  return bytes;
}

/// How many 32-bit words of `got` differ from `expected` (strings of whole words, equal lengths);
/// `first` becomes the index of the first that does (or the count of words if none does).
std::size_t words_differing(std::string const& got, std::string const& expected, std::size_t& first) {
  std::size_t const words = expected.size() / 4;
  std::size_t count = 0;
  first = words;
  for (std::size_t i = 0; i < words; ++i)
    if (std::memcmp(got.data() + 4 * i, expected.data() + 4 * i, 4) != 0) {
      if (count++ == 0) first = i;
    }
  return count;
}

/// A contiguous GPU view's memory as 32-bit words.
template <class View>
auto words_of(View const& device) {
  std::size_t const bytes = device.span() * sizeof(typename View::value_type);
  REQUIRE(bytes % 4 == 0);
  using words = Kokkos::View<std::uint32_t*, gpu::memory, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
  return words(reinterpret_cast<std::uint32_t*>(device.data()), bytes / 4);
}

/// Fill a contiguous GPU view with a NaN in every type of 2 or 4 bytes (and, read as an int32, no
/// token of any vocabulary).
template <class View>
void poison_words(View const& device) {
  Kokkos::deep_copy(words_of(device), std::uint32_t{0x7fc07fc0u});
}

/// `run(space)` reads `input` (a contiguous GPU view, already holding its values) and writes
/// `output` (contiguous); `prepare(space)` restores whatever else `run` changes. Run once with the
/// input in place; then, three times, poison the input, enqueue `late_copy` of its values back into
/// it and `run` right behind, and compare the output's bytes with the first run's.
template <class Input, class Output, class Prepare, class Run>
void check_waits(char const* what, Input const& input, Output const& output, Prepare&& prepare, Run&& run) {
  INFO(what);
  auto const words = words_of(input);
  Kokkos::View<std::uint32_t*, gpu::memory> saved("saved", words.extent(0));
  Kokkos::deep_copy(saved, words);

  gpu::space space;
  poison_words(output);
  prepare(space);
  run(space);
  space.fence();
  std::string const expected = bytes_of(output);

  for (int round = 0; round < 3; ++round) {
    CAPTURE(round);
    poison_words(input);
    poison_words(output);
    prepare(space);
    late_copy<<<4, 256, 0, ssm::cuda::stream(space)>>>(saved.data(), words.data(), words.extent(0), copy_delay_ns);
    ssm::cuda::check_launch("late_copy");
    run(space);
    space.fence();
    std::size_t first = 0;
    std::size_t const differing = words_differing(bytes_of(output), expected, first);
    CAPTURE(first);
    CHECK(differing == 0);
  }
}

/// `check_waits` for an op that changes nothing but its output.
template <class Input, class Output, class Run>
void check_waits(char const* what, Input const& input, Output const& output, Run&& run) {
  check_waits(what, input, output, [](gpu::space const&) {}, std::forward<Run>(run));
}

template <class T>
void linear_waits(std::size_t M, std::size_t K, std::size_t N, std::size_t pitch, char const* what) {
  CAPTURE(M, K, N, pitch);
  gpu::dev2<T> d_x("x", M, pitch), d_w("w", N, K), y("y", M, N);
  gpu::fill_uniform_on_device(d_x, 11 * M + K);
  gpu::fill_uniform_on_device(d_w, 13 * N + K);
  ssm::linear_params<T, T, gpu::memory> p;
  p.x = ssm::strided<const T, gpu::memory>(d_x.data(), M, pitch, K, 1);
  p.weight = d_w;
  p.y = y;
  check_waits(what, d_x, y, [&](gpu::space const& space) { ssm::linear(space, p); });
}

}  // namespace

TEST_CASE("linear's own kernels wait for their input", "[cuda][dependent]") {
  using T = ssm::bf16;
  linear_waits<T>(1, 2560, 640, 2560, "the matrix-vector kernel, 1 row");
  linear_waits<T>(8, 5120, 192, 5120, "the matrix-vector kernel, 8 rows (x_proj of 8 sequences)");
  linear_waits<T>(16, 5120, 192, 5120, "narrow_gemm, 16 rows (x_proj of 16 sequences)");
  linear_waits<T>(64, 5120, 192, 5120, "narrow_gemm, 64 rows");
  linear_waits<T>(16, 160, 5120, 192, "shallow_gemm, 16 rows (dt_proj of 16 sequences)");
  linear_waits<T>(64, 160, 5120, 192, "shallow_gemm, 64 rows");
}

TEST_CASE("rms_norm's kernel waits for its input", "[cuda][dependent]") {
  using T = ssm::bf16;
  for (std::size_t M : {1, 16, 64}) {
    CAPTURE(M);
    std::size_t const E = 2560;
    gpu::dev2<T> d_x("x", M, E), out("out", M, E);
    gpu::dev2<float> d_residual("residual", M, E);
    gpu::dev1<T> d_weight("weight", E);
    gpu::fill_uniform_on_device(d_x, 3 * M);
    gpu::fill_uniform_on_device(d_residual, 5 * M);
    gpu::fill_uniform_on_device(d_weight, 7);
    ssm::rms_norm_params<T, T, gpu::memory> p;
    p.residual = d_residual;
    p.weight = d_weight;
    p.out = out;
    p.x = d_x;
    check_waits("rms_norm, x late", d_x, out, [&](gpu::space const& space) { ssm::rms_norm(space, p); });
    check_waits("rms_norm, the residual late", d_residual, out,
                [&](gpu::space const& space) { ssm::rms_norm(space, p); });
  }
}

TEST_CASE("causal_conv1d_update's kernel waits for its input", "[cuda][dependent]") {
  using T = ssm::bf16;
  for (std::size_t B : {1, 16}) {
    CAPTURE(B);
    std::size_t const D = 5120, W = 4;
    gpu::dev2<T> d_x("x", B, D), d_weight("weight", D, W), out("out", B, D);
    gpu::dev3<T> d_initial("initial state", B, D, W - 1), d_state("state", B, D, W - 1);
    gpu::dev1<T> d_bias("bias", D);
    gpu::fill_uniform_on_device(d_x, 17 * B);
    gpu::fill_uniform_on_device(d_weight, 19);
    gpu::fill_uniform_on_device(d_initial, 23 * B);
    gpu::fill_uniform_on_device(d_bias, 29);
    ssm::causal_conv1d_update_params<T, T, gpu::memory> p;
    p.x = d_x;
    p.state = d_state;
    p.weight = d_weight;
    p.bias = d_bias;
    p.silu_activation = true;
    p.out = out;
    // the state is updated in place: each run starts from the same one
    check_waits(
        "causal_conv1d_update", d_x, out, [&](gpu::space const& space) { Kokkos::deep_copy(space, d_state, d_initial); },
        [&](gpu::space const& space) { ssm::causal_conv1d_update(space, p); });
  }
}

TEST_CASE("argmax_rows' and top_logits' kernels wait for the logits", "[cuda][dependent]") {
  using T = ssm::bf16;
  for (std::size_t B : {1, 8}) {
    CAPTURE(B);
    std::size_t const V = 50280;
    gpu::dev2<T> d_logits("logits", B, V);
    gpu::fill_uniform_on_device(d_logits, 31 * B, -8.0f, 8.0f);
    ssm::view2<const T, gpu::memory> const in(d_logits);
    gpu::dev1<std::int32_t> tokens("tokens", B);
    gpu::dev2<std::int32_t> top("top", B, 40);
    gpu::dev2<float> values("values", B, 40);
    check_waits("argmax_rows", d_logits, tokens, [&](gpu::space const& space) {
      ssm::argmax_rows(space, in, ssm::view1<std::int32_t, gpu::memory>(tokens));
    });
    check_waits("top_logits", d_logits, values, [&](gpu::space const& space) {
      ssm::top_logits(space, in, ssm::view2<std::int32_t, gpu::memory>(top), ssm::view2<float, gpu::memory>(values));
    });
  }
}

TEST_CASE("selective_state_update's kernels wait for their inputs", "[cuda][dependent]") {
  using T = ssm::bf16;
  for (std::size_t B : {1, 16}) {
    CAPTURE(B);
    std::size_t const D = 5120, N = 16;
    gpu::dev2<T> d_x("x", B, D), d_dt("dt", B, D), d_z("z", B, D), out("out", B, D);
    gpu::dev3<T> d_B("B", B, 1, N), d_C("C", B, 1, N);
    gpu::dev3<float> d_initial("initial state", B, D, N), d_state("state", B, D, N);
    gpu::dev2<float> d_A("A", D, N);
    gpu::dev1<float> d_skip("D", D), d_bias("dt_bias", D);
    gpu::fill_uniform_on_device(d_x, 37 * B);
    gpu::fill_uniform_on_device(d_dt, 41 * B, -3.0f, 0.0f);
    gpu::fill_uniform_on_device(d_z, 43 * B);
    gpu::fill_uniform_on_device(d_B, 47 * B);
    gpu::fill_uniform_on_device(d_C, 53 * B);
    gpu::fill_uniform_on_device(d_initial, 59 * B);
    gpu::fill_uniform_on_device(d_A, 61, -4.0f, -0.5f);
    gpu::fill_uniform_on_device(d_skip, 67);
    gpu::fill_uniform_on_device(d_bias, 71, -1.0f, 1.0f);
    ssm::selective_state_update_params<T, gpu::memory> p;
    p.state = d_state;
    p.x = d_x;
    p.dt = d_dt;
    p.A = d_A;
    p.B = d_B;
    p.C = d_C;
    p.D = d_skip;
    p.z = d_z;
    p.dt_bias = d_bias;
    p.dt_softplus = true;
    p.out = out;
    auto const restore = [&](gpu::space const& space) { Kokkos::deep_copy(space, d_state, d_initial); };
    auto const run = [&](gpu::space const& space) { ssm::selective_state_update(space, p); };
    check_waits("the state update, x late", d_x, out, restore, run);
    check_waits("the state update, dt late", d_dt, out, restore, run);
    check_waits("the state update, C late", d_C, out, restore, run);
  }
}

TEST_CASE("a block's decoding step waits for its input", "[cuda][dependent]") {
  using T = ssm::bf16;
  using block = ssm::mamba_block<gpu::space, T, T>;
  using backend = ssm::mamba_block_step_backend<gpu::space>;
  struct restore_choice {
    ~restore_choice() { backend::force_x_proj_state = -1; }
  } const restore_choice;
  ssm::mamba_config const c = mamba_shape(2560, 5120, 16, 4, 160, false, false);  // the 2.8B model's widths
  auto const weights = ssm::mamba_mixer_weights<T, gpu::memory>::allocate(c);
  weights.copy_from(random_weights<T>(c, 73));
  gpu::dev1<T> d_norm("norm", static_cast<std::size_t>(c.d_model));
  gpu::fill_uniform_on_device(d_norm, 79, 0.5f, 1.5f);
  block const on_gpu(typename block::mixer_type(c, weights), d_norm);
  // 1, 2 and 16 sequences through the fused kernels, 64 op by op; x_proj and the state update in
  // one launch or two
  for (int one_launch : {1, 0})
    for (int B : {1, 2, 16, 64}) {
      CAPTURE(one_launch, B);
      backend::force_x_proj_state = one_launch;
      auto const E = static_cast<std::size_t>(c.d_model), batch = static_cast<std::size_t>(B);
      auto initial = block::state_type::zeros(c, B);
      auto state = block::state_type::zeros(c, B);
      gpu::fill_uniform_on_device(initial.conv, 83 * batch);
      gpu::fill_uniform_on_device(initial.ssm, 89 * batch);
      gpu::dev2<T> d_hidden("hidden", batch, E), out("out", batch, E);
      gpu::dev2<float> d_initial_residual("initial residual", batch, E), d_residual("residual", batch, E);
      gpu::fill_uniform_on_device(d_hidden, 97 * batch);
      gpu::fill_uniform_on_device(d_initial_residual, 101 * batch, -2.0f, 2.0f);
      // the step advances the state and adds to the residual in place: each run starts from the same
      auto const restore = [&](gpu::space const& space) {
        Kokkos::deep_copy(space, state.conv, initial.conv);
        Kokkos::deep_copy(space, state.ssm, initial.ssm);
        Kokkos::deep_copy(space, d_residual, d_initial_residual);
      };
      auto const run = [&](gpu::space const& space) { on_gpu.step(space, d_hidden, d_residual, out, state); };
      check_waits("the block step, hidden late", d_hidden, out, restore, run);
    }
}
