// 03 — Streaming causal convolution: process a long signal in pieces, or one sample at a time.
//
// A causal conv of width W only needs the last W-1 inputs to continue. ssm::causal_conv1d takes
// them as initial_state and returns them as final_state, and ssm::causal_conv1d_update does one
// sample at a time, as decoding does. Here a 4-tap moving average (weights 1/4) runs over
// x = 1, 2, ..., 10 three ways: whole, in chunks of 3, and sample by sample.
//
// What to check: the three columns are equal, and each value is the mean of the last four inputs
// (zeros before the start): 0.25, 0.75, 1.5, 2.5, 3.5, ...
#include <cstdio>

#include <ssm/ssm.hpp>

int main(int argc, char* argv[]) {
  Kokkos::ScopeGuard kokkos(argc, argv);
  using space = Kokkos::DefaultHostExecutionSpace;
  using memory = Kokkos::HostSpace;
  constexpr int L = 10, W = 4;

  Kokkos::View<float***, Kokkos::LayoutRight, memory> x("x", 1, 1, L), whole("whole", 1, 1, L), chunked("chunked", 1, 1, L);
  Kokkos::View<float**, Kokkos::LayoutRight, memory> weight("weight", 1, W);
  for (int l = 0; l < L; ++l) x(0, 0, l) = static_cast<float>(l + 1);
  for (int k = 0; k < W; ++k) weight(0, k) = 0.25f;

  ssm::causal_conv1d_params<float, float, memory> p;
  p.x = x;
  p.weight = weight;
  p.out = whole;
  ssm::causal_conv1d(space(), p);

  // in chunks of 3, carrying the last W-1 inputs from one chunk to the next
  Kokkos::View<float***, Kokkos::LayoutRight, memory> state("state", 1, 1, W - 1);
  for (int start = 0; start < L; start += 3) {
    auto const chunk = Kokkos::make_pair(start, start + 3 < L ? start + 3 : L);
    ssm::causal_conv1d_params<float, float, memory> q;
    q.x = Kokkos::subview(x, Kokkos::ALL, Kokkos::ALL, chunk);
    q.weight = weight;
    q.initial_state = state;
    q.final_state = state;
    q.out = Kokkos::subview(chunked, Kokkos::ALL, Kokkos::ALL, chunk);
    ssm::causal_conv1d(space(), q);
  }

  // one sample at a time
  Kokkos::View<float***, Kokkos::LayoutRight, memory> stream_state("stream_state", 1, 1, W - 1);
  Kokkos::View<float**, Kokkos::LayoutRight, memory> sample("sample", 1, 1), sample_out("sample_out", 1, 1);
  std::printf("   x   whole  chunks of 3  one at a time\n");
  space().fence();
  for (int l = 0; l < L; ++l) {
    sample(0, 0) = x(0, 0, l);
    ssm::causal_conv1d_update_params<float, float, memory> s;
    s.x = sample;
    s.state = stream_state;
    s.weight = weight;
    s.out = sample_out;
    ssm::causal_conv1d_update(space(), s);
    space().fence();
    std::printf("%4g  %6.2f  %11.2f  %13.2f\n", x(0, 0, l), whole(0, 0, l), chunked(0, 0, l), sample_out(0, 0));
  }
  return 0;
}
