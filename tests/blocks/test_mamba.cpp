// The Mamba mixer and block: the mixer against the same equations composed from the sequential
// references on plain channel-major copies; forward over L tokens against L steps; a sequence in
// pieces against the whole; the residual block; shape errors.
#include <array>
#include <cstddef>
#include <string>

#include <ssm/blocks/mamba.hpp>

#include "blocks/mamba_case.hpp"
#include "catch.hpp"
#include "support.hpp"

using namespace ssm;
using namespace ssm::test;

namespace {

/// The mixer, written out stage by stage with the reference ops and explicit (B, D, L) copies.
/// Rounds to T wherever the mixer stores an intermediate, so both see the same values.
template <class T, class Wt>
host3<T> reference_mixer(mamba_config const& c, mamba_mixer_weights<Wt, Kokkos::HostSpace> const& w,
                         host3<T> const& hidden) {
  std::size_t const B = hidden.extent(0), L = hidden.extent(1), E = c.d_model, D = c.d_inner;
  std::size_t const N = c.d_state, R = c.dt_rank, M = B * L;
  using H = Kokkos::HostSpace;
  auto rows = [](auto const& v3) {  // (B, L, F) -> (B*L, F)
    using V = typename std::remove_reference_t<decltype(v3)>::value_type;
    return Kokkos::View<V**, Kokkos::LayoutRight, H>(v3.data(), v3.extent(0) * v3.extent(1), v3.extent(2));
  };
  host3<T> xz("xz", B, L, 2 * D);
  reference::linear(linear_params<T, Wt, H>{rows(hidden), w.in_proj_weight, w.in_proj_bias, rows(xz)});

  host3<T> x("x", B, D, L), z("z", B, D, L), xc("xc", B, D, L);
  for (std::size_t b = 0; b < B; ++b)
    for (std::size_t d = 0; d < D; ++d)
      for (std::size_t l = 0; l < L; ++l) x(b, d, l) = xz(b, l, d), z(b, d, l) = xz(b, l, D + d);
  causal_conv1d_params<T, Wt, H> conv;
  conv.x = x, conv.weight = w.conv1d_weight, conv.bias = w.conv1d_bias, conv.silu_activation = true, conv.out = xc;
  reference::causal_conv1d(conv);

  host3<T> xc_tokens("xc_tokens", B, L, D), x_dbl("x_dbl", B, L, R + 2 * N), dt_tokens("dt", B, L, D);
  for (std::size_t b = 0; b < B; ++b)
    for (std::size_t d = 0; d < D; ++d)
      for (std::size_t l = 0; l < L; ++l) xc_tokens(b, l, d) = xc(b, d, l);
  reference::linear(linear_params<T, Wt, H>{rows(xc_tokens), w.x_proj_weight, {}, rows(x_dbl)});
  host2<T> dt_low("dt_low", M, R);
  for (std::size_t m = 0; m < M; ++m)
    for (std::size_t r = 0; r < R; ++r) dt_low(m, r) = x_dbl.data()[m * (R + 2 * N) + r];
  reference::linear(linear_params<T, Wt, H>{dt_low, w.dt_proj_weight, {}, rows(dt_tokens)});

  host3<T> delta("delta", B, D, L), y("y", B, D, L);
  host4<T> Bm("B", B, 1, N, L), Cm("C", B, 1, N, L);
  for (std::size_t b = 0; b < B; ++b)
    for (std::size_t l = 0; l < L; ++l) {
      for (std::size_t d = 0; d < D; ++d) delta(b, d, l) = dt_tokens(b, l, d);
      for (std::size_t n = 0; n < N; ++n) Bm(b, 0, n, l) = x_dbl(b, l, R + n), Cm(b, 0, n, l) = x_dbl(b, l, R + N + n);
    }
  selective_scan_params<T, H> scan;
  scan.u = xc, scan.delta = delta, scan.A = w.A, scan.B = Bm, scan.C = Cm, scan.D = w.D, scan.z = z;
  scan.delta_bias = w.dt_proj_bias, scan.delta_softplus = true, scan.out = y;
  reference::selective_scan(scan);

  host3<T> y_tokens("y_tokens", B, L, D), out("out", B, L, E);
  for (std::size_t b = 0; b < B; ++b)
    for (std::size_t d = 0; d < D; ++d)
      for (std::size_t l = 0; l < L; ++l) y_tokens(b, l, d) = y(b, d, l);
  reference::linear(linear_params<T, Wt, H>{rows(y_tokens), w.out_proj_weight, w.out_proj_bias, rows(out)});
  return out;
}

/// Tolerance of a whole mixer: intermediates are rounded to T at five stages (xz, xc, x_dbl, dt,
/// y) and both paths may round a value differently by one unit; each stage's error is carried
/// forward with a gain of order one (the weights are scaled so), and the fp32 sums have up to
/// max(E, D) + L + N terms.
template <class T>
tolerance mixer_tolerance(mamba_config const& c, std::size_t L, double scale) {
  auto t = derived_tolerance<T>(static_cast<std::size_t>(std::max(c.d_model, c.d_inner)) + L + c.d_state, scale);
  return {5.0 * t.rel, 5.0 * t.abs};
}

}  // namespace

TEMPLATE_TEST_CASE("mamba mixer: forward equals the reference ops composed by hand", "[mamba]",
                   (std::pair<float, float>), (std::pair<float, bf16>), (std::pair<float, f16>),
                   (std::pair<bf16, bf16>)) {
  using T = typename TestType::first_type;
  using Wt = typename TestType::second_type;
  auto c = small_config();
  for (bool biases : {true, false}) {
    c.bias = biases;
    c.conv_bias = biases;
    auto const weights = random_weights<Wt>(c, 5);
    mamba_mixer<space, T, Wt> mixer(c, weights);
    for (auto [B, L] : {std::pair<std::size_t, std::size_t>{1, 1}, {2, 7}, {3, 33}}) {
      host3<T> hidden("hidden", B, L, c.d_model), out("out", B, L, c.d_model);
      fill_uniform(hidden, 17 + L, -2.0f, 2.0f);
      mixer.forward(space(), hidden, out);
      space().fence();
      auto const expected = reference_mixer<T, Wt>(c, weights, hidden);
      INFO("B = " << B << ", L = " << L << ", biases " << biases);
      REQUIRE(max_abs(expected) > 0.1);  // the mixer really moves its output
      require_close(out, expected, mixer_tolerance<T>(c, L, max_abs(expected)), "mixer out");
    }
  }
}

TEMPLATE_TEST_CASE("mamba mixer: forward over L tokens equals L steps", "[mamba]", float, bf16) {
  using T = TestType;
  auto const c = small_config();
  mamba_mixer<space, T, T> mixer(c, random_weights<T>(c, 8));
  std::size_t const B = 2, L = 19;
  host3<T> hidden("hidden", B, L, c.d_model), out("out", B, L, c.d_model), stepped("stepped", B, L, c.d_model);
  fill_uniform(hidden, 3, -2.0f, 2.0f);
  auto whole = mamba_state<T, Kokkos::HostSpace>::zeros(c, B);
  mixer.forward(space(), hidden, out, &whole);

  auto state = mamba_state<T, Kokkos::HostSpace>::zeros(c, B);
  host2<T> token("token", B, c.d_model), token_out("token_out", B, c.d_model);
  for (std::size_t l = 0; l < L; ++l) {
    for (std::size_t b = 0; b < B; ++b)
      for (int e = 0; e < c.d_model; ++e) token(b, e) = hidden(b, l, e);
    mixer.step(space(), token, token_out, state);
    space().fence();
    for (std::size_t b = 0; b < B; ++b)
      for (int e = 0; e < c.d_model; ++e) stepped(b, l, e) = token_out(b, e);
  }
  space().fence();
  require_close(stepped, out, mixer_tolerance<T>(c, L, max_abs(out)), "outputs");
  require_close(state.ssm, whole.ssm, mixer_tolerance<T>(c, L, max_abs(whole.ssm)), "ssm state");
  require_close(state.conv, whole.conv, mixer_tolerance<T>(c, L, max_abs(whole.conv)), "conv state");
}

TEST_CASE("mamba mixer: a sequence in pieces equals the whole, with the state carried", "[mamba]") {
  auto const c = small_config();
  mamba_mixer<space, float, float> mixer(c, random_weights<float>(c, 9));
  std::size_t const B = 2, L = 23;
  host3<float> hidden("hidden", B, L, c.d_model), out("out", B, L, c.d_model);
  fill_uniform(hidden, 4, -2.0f, 2.0f);
  mixer.forward(space(), hidden, out);
  space().fence();
  for (std::size_t k : {std::size_t{1}, std::size_t{2}, std::size_t{10}, std::size_t{22}}) {
    auto state = mamba_state<float, Kokkos::HostSpace>::zeros(c, static_cast<int>(B));
    host3<float> first("first", B, k, c.d_model), second("second", B, L - k, c.d_model);
    host3<float> first_out("first_out", B, k, c.d_model), second_out("second_out", B, L - k, c.d_model);
    Kokkos::deep_copy(first, Kokkos::subview(hidden, Kokkos::ALL, Kokkos::make_pair(std::size_t{0}, k), Kokkos::ALL));
    Kokkos::deep_copy(second, Kokkos::subview(hidden, Kokkos::ALL, Kokkos::make_pair(k, L), Kokkos::ALL));
    mixer.forward(space(), first, first_out, &state);
    mixer.forward(space(), second, second_out, &state);
    space().fence();
    host3<float> joined("joined", B, L, c.d_model);
    Kokkos::deep_copy(Kokkos::subview(joined, Kokkos::ALL, Kokkos::make_pair(std::size_t{0}, k), Kokkos::ALL), first_out);
    Kokkos::deep_copy(Kokkos::subview(joined, Kokkos::ALL, Kokkos::make_pair(k, L), Kokkos::ALL), second_out);
    INFO("split at k = " << k);
    require_close(joined, out, mixer_tolerance<float>(c, L, max_abs(out)), "outputs");
  }
}

TEST_CASE("mamba block: residual add, RMSNorm, mixer, and forward equals steps", "[mamba]") {
  auto const c = small_config();
  auto const weights = random_weights<float>(c, 12);
  Kokkos::View<float*, Kokkos::LayoutRight, Kokkos::HostSpace> norm_weight("norm", c.d_model);
  fill_uniform(norm_weight, 13, 0.7f, 1.3f);
  mamba_block<space, float, float> block(mamba_mixer<space, float, float>(c, weights), norm_weight);
  std::size_t const B = 2, L = 9;
  host3<float> hidden("hidden", B, L, c.d_model), out("out", B, L, c.d_model), residual("residual", B, L, c.d_model);
  fill_uniform(hidden, 14, -2.0f, 2.0f);
  fill_uniform(residual, 15, -2.0f, 2.0f);
  host3<float> const residual_in("residual_in", B, L, c.d_model);
  Kokkos::deep_copy(residual_in, residual);
  block.forward(space(), hidden, residual, out);
  space().fence();

  // by the definition: r = hidden + residual; out = mixer(rms_norm(r))
  host3<float> r("r", B, L, c.d_model), normed("normed", B, L, c.d_model);
  for (std::size_t i = 0; i < r.span(); ++i) r.data()[i] = hidden.data()[i] + residual_in.data()[i];
  require_close(residual, r, {0.0, 0.0}, "residual stream");
  rms_norm_params<float, float, Kokkos::HostSpace> norm;
  norm.x = Kokkos::View<float**, Kokkos::LayoutRight, Kokkos::HostSpace>(r.data(), B * L, c.d_model);
  norm.weight = norm_weight;
  norm.out = Kokkos::View<float**, Kokkos::LayoutRight, Kokkos::HostSpace>(normed.data(), B * L, c.d_model);
  reference::rms_norm(norm);
  auto const expected = reference_mixer<float, float>(c, weights, normed);
  require_close(out, expected, mixer_tolerance<float>(c, L, max_abs(expected)), "block out");

  // and token by token, with the residual stream per token
  auto state = mamba_state<float, Kokkos::HostSpace>::zeros(c, static_cast<int>(B));
  host2<float> token("token", B, c.d_model), token_residual("token_residual", B, c.d_model), token_out("o", B, c.d_model);
  host3<float> stepped("stepped", B, L, c.d_model);
  for (std::size_t l = 0; l < L; ++l) {
    for (std::size_t b = 0; b < B; ++b)
      for (int e = 0; e < c.d_model; ++e) token(b, e) = hidden(b, l, e), token_residual(b, e) = residual_in(b, l, e);
    block.step(space(), token, token_residual, token_out, state);
    space().fence();
    for (std::size_t b = 0; b < B; ++b)
      for (int e = 0; e < c.d_model; ++e) stepped(b, l, e) = token_out(b, e);
  }
  require_close(stepped, out, mixer_tolerance<float>(c, L, max_abs(out)), "block steps");
}

namespace {

/// A wider mixer than `small_config`: rows long enough for the 32-wide loops of the host
/// matrix-vector product, with tails, no dense biases and a 16-wide state.
mamba_config wide_config() { return mamba_shape(72, 150, 16, 4, 37, true, false); }

/// B sequences of L tokens through a block, once by `forward` and once token by token with
/// `step` (on the host, up to 8 sequences take the fused step of `ssm/blocks/host/mamba_step.hpp`
/// and more go op by op): the outputs, the residual stream and the final states must agree.
template <class T, class Wt>
void check_block_steps(mamba_config const& c, std::size_t B, bool out_is_hidden) {
  std::size_t const L = 7, E = c.d_model;
  Kokkos::View<Wt*, Kokkos::LayoutRight, Kokkos::HostSpace> norm_weight("norm", E);
  fill_uniform(norm_weight, 21, 0.7f, 1.3f);
  mamba_block<space, T, Wt> block(mamba_mixer<space, T, Wt>(c, random_weights<Wt>(c, 22)), norm_weight);
  host3<T> hidden("hidden", B, L, E), out("out", B, L, E), stepped("stepped", B, L, E);
  host3<float> residual("residual", B, L, E), residual_in("residual_in", B, L, E), stream("stream", B, L, E);
  fill_uniform(hidden, 23, -2.0f, 2.0f);
  fill_uniform(residual, 24, -2.0f, 2.0f);
  Kokkos::deep_copy(residual_in, residual);
  auto whole = mamba_state<T, Kokkos::HostSpace>::zeros(c, static_cast<int>(B));
  block.forward(space(), hidden, residual, out, &whole);
  space().fence();

  auto state = mamba_state<T, Kokkos::HostSpace>::zeros(c, static_cast<int>(B));
  host2<T> token("token", B, E), token_out("token_out", B, E);
  host2<float> token_residual("token_residual", B, E);
  for (std::size_t l = 0; l < L; ++l) {
    for (std::size_t b = 0; b < B; ++b)
      for (std::size_t e = 0; e < E; ++e) token(b, e) = hidden(b, l, e), token_residual(b, e) = residual_in(b, l, e);
    block.step(space(), token, token_residual, out_is_hidden ? token : token_out, state);
    space().fence();
    host2<T> const& result = out_is_hidden ? token : token_out;
    for (std::size_t b = 0; b < B; ++b)
      for (std::size_t e = 0; e < E; ++e) stepped(b, l, e) = result(b, e), stream(b, l, e) = token_residual(b, e);
  }
  INFO("B = " << B << ", E = " << E << ", out is hidden: " << out_is_hidden);
  REQUIRE(max_abs(out) > 0.1);
  require_close(stream, residual, {0.0, 0.0}, "residual stream");
  auto const tol = [&](auto const& v) { return mixer_tolerance<T>(c, L, max_abs(v)); };
  require_close(stepped, out, tol(out), "block steps");
  require_close(state.ssm, whole.ssm, tol(whole.ssm), "ssm state");
  require_close(state.conv, whole.conv, tol(whole.conv), "conv state");
}

}  // namespace

TEST_CASE("mamba block: steps of 1 to 9 sequences equal forward, in every storage type", "[mamba]") {
  for (auto const& c : {small_config(), wide_config()})
    for (std::size_t B : {1, 3, 8, 9}) {
      check_block_steps<float, float>(c, B, B == 3);
      check_block_steps<float, bf16>(c, B, B == 1);
      check_block_steps<bf16, bf16>(c, B, B == 8);
      check_block_steps<f16, f16>(c, B, false);
    }
}

TEST_CASE("mamba mixer: wrong weights and inputs are refused with the tensor named", "[mamba][errors]") {
  auto const c = small_config();
  auto weights = random_weights<float>(c, 1);
  weights.x_proj_weight = decltype(weights.x_proj_weight)("x_proj", c.dt_rank + 2 * c.d_state + 1, c.d_inner);
  REQUIRE_THROWS_WITH((mamba_mixer<space, float, float>(c, weights)), Catch::Contains("x_proj.weight must be"));

  auto bad = c;
  bad.d_state = 0;
  REQUIRE_THROWS_WITH(bad.validate(), Catch::Contains("d_state"));

  mamba_mixer<space, float, float> mixer(c, random_weights<float>(c, 1));
  host3<float> hidden("hidden", 1, 3, c.d_model + 1), out("out", 1, 3, c.d_model + 1);
  REQUIRE_THROWS_WITH(mixer.forward(space(), hidden, out), Catch::Contains("d_model = 12"));
  auto state = mamba_state<float, Kokkos::HostSpace>::zeros(c, 2);
  host3<float> good("good", 1, 3, c.d_model), good_out("good_out", 1, 3, c.d_model);
  REQUIRE_THROWS_WITH(mixer.forward(space(), good, good_out, &state), Catch::Contains("state.conv must be"));
}

TEST_CASE("mamba mixer: a conv of width 1 has an empty conv state, and still steps", "[mamba]") {
  auto c = small_config();
  c.d_conv = 1;
  mamba_mixer<space, float, float> mixer(c, random_weights<float>(c, 21));
  std::size_t const B = 1, L = 5;
  host3<float> hidden("hidden", B, L, c.d_model), out("out", B, L, c.d_model);
  fill_uniform(hidden, 22, -2.0f, 2.0f);
  mixer.forward(space(), hidden, out);
  space().fence();
  require_close(out, reference_mixer<float, float>(c, mixer.weights(), hidden),
                mixer_tolerance<float>(c, L, max_abs(out)), "forward");
  auto state = mamba_state<float, Kokkos::HostSpace>::zeros(c, static_cast<int>(B));
  REQUIRE(state.conv.extent(2) == 0);
  host2<float> token("token", B, c.d_model), token_out("token_out", B, c.d_model);
  for (std::size_t l = 0; l < L; ++l) {
    for (int e = 0; e < c.d_model; ++e) token(0, e) = hidden(0, l, e);
    mixer.step(space(), token, token_out, state);
    space().fence();
    for (int e = 0; e < c.d_model; ++e)
      CHECK(token_out(0, e) == Approx(out(0, l, e)).margin(1e-5 * std::max(1.0, max_abs(out))));
  }
}

namespace {

/// Two blocks stepped through out_proj's partial sums (`step_rows::partials`) against the same two
/// blocks stepped through rows of T: the second block's norm must add the first block's partials,
/// in order and rounded to T, into the residual stream (checked exactly), and the outputs and
/// states of both paths must agree within the rounding of a mixer.
template <class T>
void check_partial_steps(mamba_config const& c, std::size_t B, std::size_t S) {
  CAPTURE(B, S);
  std::size_t const E = c.d_model;
  Kokkos::View<T*, Kokkos::LayoutRight, Kokkos::HostSpace> norm_weight("norm", E);
  fill_uniform(norm_weight, 31, 0.7f, 1.3f);
  using block_type = mamba_block<space, T, T>;
  block_type const first(mamba_mixer<space, T, T>(c, random_weights<T>(c, 32)), norm_weight);
  block_type const second(mamba_mixer<space, T, T>(c, random_weights<T>(c, 33)), norm_weight);
  host2<T> hidden("hidden", B, E), by_rows("by_rows", B, E), by_partials("by_partials", B, E);
  host2<float> residual("residual", B, E), residual_rows("residual_rows", B, E);
  fill_uniform(hidden, 34, -2.0f, 2.0f);
  fill_uniform(residual, 35, -2.0f, 2.0f);
  Kokkos::deep_copy(residual_rows, residual);
  using state = mamba_state<T, Kokkos::HostSpace>;
  int const batch = static_cast<int>(B);
  std::array<state, 2> rows_state{state::zeros(c, batch), state::zeros(c, batch)};
  std::array<state, 2> partials_state{state::zeros(c, batch), state::zeros(c, batch)};
  Kokkos::deep_copy(by_rows, hidden);
  first.step(space(), by_rows, residual_rows, by_rows, rows_state[0]);
  second.step(space(), by_rows, residual_rows, by_rows, rows_state[1]);

  using rows = step_rows<T, Kokkos::HostSpace>;
  using input = step_rows<const T, Kokkos::HostSpace>;
  typename rows::partials_view const partials("partials", S, B, E);
  first.step(space(), input{hidden, {}}, residual, rows{{}, partials}, partials_state[0]);
  space().fence();
  host2<float> expected("expected", B, E);  // the residual stream once the second norm has added them
  for (std::size_t b = 0; b < B; ++b)
    for (std::size_t e = 0; e < E; ++e) {
      float sum = 0.0f;
      for (std::size_t s = 0; s < S; ++s) sum += partials(s, b, e);
      expected(b, e) = residual(b, e) + to_float(from_float<T>(sum));
    }
  second.step(space(), input{{}, partials}, residual, rows{by_partials, {}}, partials_state[1]);
  space().fence();
  require_close(residual, expected, {0.0, 0.0}, "residual stream after the partial sums");
  auto const tol = [&](auto const& v) { return mixer_tolerance<T>(c, 1, 4.0 * max_abs(v)); };
  require_close(residual, residual_rows, tol(residual_rows), "residual stream");
  require_close(by_partials, by_rows, tol(by_rows), "output");
  for (int i = 0; i < 2; ++i) {
    require_close(partials_state[i].ssm, rows_state[i].ssm, tol(rows_state[i].ssm), "ssm state");
    require_close(partials_state[i].conv, rows_state[i].conv, tol(rows_state[i].conv), "conv state");
  }
}

}  // namespace

TEST_CASE("mamba block: steps through out_proj's partial sums equal steps through rows", "[mamba]") {
  for (std::size_t B : {1, 3, 9})
    for (std::size_t S : {1, 2, 3}) {
      check_partial_steps<float>(wide_config(), B, S);
      check_partial_steps<bf16>(wide_config(), B, S);
    }
}

TEST_CASE("mamba block: a step's input and output are rows or partial sums, one of each", "[mamba][errors]") {
  mamba_config const c = wide_config();
  std::size_t const B = 2, E = c.d_model;
  Kokkos::View<float*, Kokkos::LayoutRight, Kokkos::HostSpace> norm_weight("norm", E);
  fill_uniform(norm_weight, 1, 0.7f, 1.3f);
  mamba_block<space, float, float> const block(mamba_mixer<space, float, float>(c, random_weights<float>(c, 2)),
                                               norm_weight);
  auto state = mamba_state<float, Kokkos::HostSpace>::zeros(c, static_cast<int>(B));
  host2<float> hidden("hidden", B, E), residual("residual", B, E);
  using rows = step_rows<float, Kokkos::HostSpace>;
  using input = step_rows<const float, Kokkos::HostSpace>;
  rows::partials_view const partials("partials", 2, B, E);
  require_shape_error([&] { block.step(space(), input{hidden, partials}, residual, rows{hidden, {}}, state); },
                      {"input must be rows or partial sums"});
  require_shape_error([&] { block.step(space(), input{hidden, {}}, residual, rows{}, state); },
                      {"output must be rows or partial sums"});
  require_shape_error(
      [&] { block.step(space(), input{hidden, {}}, residual, rows{{}, rows::partials_view("p", 7, B, E)}, state); },
      {"S dividing K"});
  mamba_config biased = c;
  biased.bias = true;
  mamba_block<space, float, float> const with_bias(
      mamba_mixer<space, float, float>(biased, random_weights<float>(biased, 3)), norm_weight);
  require_shape_error([&] { with_bias.step(space(), input{hidden, {}}, residual, rows{{}, partials}, state); },
                      {"out_proj", "bias"});
}
