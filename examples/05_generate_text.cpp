// 05 — Text in, text out: the trained model of models/fortunes-mamba, from C++.
//
// Loads a checkpoint and its tokenizer, and streams a sampled continuation of a prompt. Give the
// model directory as the first argument (default: models/fortunes-mamba, from the repository root).
//
// What to check: English, fortune-shaped text, the same every run (the sampler is seeded).
#include <iostream>
#include <string>

#include <ssm/ssm.hpp>
#include <ssm/text/tokenizer.hpp>

int main(int argc, char* argv[]) {
  Kokkos::ScopeGuard kokkos(argc, argv);
  std::string const dir = argc > 1 ? argv[1] : "models/fortunes-mamba";
  using space = Kokkos::DefaultExecutionSpace;
  auto const tokenizer = ssm::text::tokenizer::from_file(dir + "/tokenizer.json");
  ssm::mamba_lm<space, float, ssm::f16> const model(ssm::load_checkpoint<ssm::f16, space::memory_space>(dir));

  ssm::generation_options options;  // llama.cpp's defaults: temperature 0.8, top-k 40, top-p 0.95
  options.max_tokens = 60;
  options.sampling.seed = 42;
  options.eos = tokenizer.eos_id();
  std::string const prompt = "<|endoftext|>The secret of life is";  // every fortune began after <|endoftext|>
  std::cout << prompt.substr(13);
  ssm::text::stream_decoder out(tokenizer, /*skip_special=*/true);
  ssm::generate(model, {tokenizer.encode(prompt)}, options, [&](std::size_t, std::int32_t id) {
    std::cout << out.push(id) << std::flush;
    return true;
  });
  std::cout << out.flush() << "\n";
  return 0;
}
