// The `ssm` command: run, score, benchmark, inspect and convert Mamba checkpoints on the CPU.
//
//   ssm score      -m DIR (--ids 1,2,3 | -f FILE) [--json]
//   ssm perplexity -m DIR -f FILE
//   ssm generate   -m DIR --ids 1,2,3 -n N [--temp T --top-k K --top-p P --min-p P --repeat-penalty R --seed S] [--json]
//   ssm bench      (-m DIR | --preset NAME) [-p 512] [-n 128] [-b 1,8] [-r 3] [-t THREADS] [-o md|json]
//   ssm tokenize   -m (DIR | tokenizer.json) (-p TEXT | -f FILE) [--json]
//   ssm detokenize -m (DIR | tokenizer.json) (--ids 1,2,3 | -f FILE) [--json]
//   ssm make-model --preset tiny|130m|370m|790m|1.4b|2.8b --dtype f32|f16|bf16 -o DIR
//   ssm info       -m DIR
//   ssm convert    -m DIR -o DIR          (pytorch_model.bin -> model.safetensors)
//
// Text goes through the model's tokenizer.json (GPT-NeoX byte-level BPE); ids work everywhere too.
// Every error is one line naming
// the file and the problem, and a non-zero exit.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <ssm/ssm.hpp>
#include <ssm/text/tokenizer.hpp>

namespace {

namespace fs = std::filesystem;
using space = Kokkos::DefaultExecutionSpace;
using memory = space::memory_space;
using clock_type = std::chrono::steady_clock;

double ms_since(clock_type::time_point start) {
  return std::chrono::duration<double, std::milli>(clock_type::now() - start).count();
}

/// "1,2,3" or whitespace-separated ids, from the command line or a file.
std::vector<std::int32_t> parse_ids(std::string const& text, std::string const& source) {
  std::vector<std::int32_t> ids;
  std::string token;
  std::istringstream in(text);
  auto flush = [&] {
    if (token.empty()) return;
    std::size_t used = 0;
    long long value = 0;
    try {
      value = std::stoll(token, &used);
    } catch (std::exception const&) {
      used = 0;
    }
    if (used != token.size() || value < 0 || value > INT32_MAX)
      throw ssm::error(source + ": '" + token + "' is not a token id");
    ids.push_back(static_cast<std::int32_t>(value));
    token.clear();
  };
  for (char ch; in.get(ch);) {
    if (ch == ',' || std::isspace(static_cast<unsigned char>(ch))) flush();
    else token += ch;
  }
  flush();
  if (ids.empty()) throw ssm::error(source + ": no token ids");
  return ids;
}

std::vector<std::int32_t> read_ids(std::string const& ids_text, std::string const& file) {
  if (!ids_text.empty()) return parse_ids(ids_text, "--ids");
  std::ifstream in(file);
  if (!in) throw ssm::error("'" + file + "': cannot open the file");
  std::stringstream text;
  text << in.rdbuf();
  return parse_ids(text.str(), "'" + file + "'");
}

/// The tokenizer of a model directory (its tokenizer.json), or a tokenizer.json given directly.
ssm::text::tokenizer load_tokenizer(std::string const& model_or_file) {
  fs::path const path(model_or_file);
  if (fs::is_directory(path)) {
    if (!fs::exists(path / "tokenizer.json"))
      throw ssm::error("'" + model_or_file + "': no tokenizer.json in the model directory (give token ids instead)");
    return ssm::text::tokenizer::from_file(path / "tokenizer.json");
  }
  return ssm::text::tokenizer::from_file(path);
}

std::string read_text_file(std::string const& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw ssm::error("'" + file + "': cannot open the file");
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

/// A progress bar on stderr, only when stderr is a terminal.
std::function<void(std::size_t, std::size_t)> progress_bar(std::string const& what) {
  if (!isatty(STDERR_FILENO)) return {};
  return [what, last = -1](std::size_t done, std::size_t total) mutable {
    int const percent = total ? static_cast<int>(100.0 * static_cast<double>(done) / static_cast<double>(total)) : 100;
    if (percent == last) return;
    last = percent;
    int const filled = percent / 4;
    std::fprintf(stderr, "\r%s [%s%s] %3d%%", what.c_str(), std::string(filled, '#').c_str(),
                 std::string(25 - filled, ' ').c_str(), percent);
    if (percent >= 100) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  };
}

template <class Wt, class T>
ssm::mamba_lm<space, T, Wt> load_model(std::string const& dir) {
  auto weights = ssm::load_checkpoint<Wt, memory>(dir, progress_bar("loading " + dir));
  return ssm::mamba_lm<space, T, Wt>(std::move(weights));
}

/// Run `body` with the model's weights in the storage type the user picked.
template <class Body>
int with_dtype(std::string const& dtype, Body&& body) {
  if (dtype == "f32") return body(float{});
  if (dtype == "f16") return body(ssm::f16{});
  if (dtype == "bf16") return body(ssm::bf16{});
  throw ssm::error("unknown dtype '" + dtype + "' (f32, f16, bf16)");
}

/// Whether the model runs on the host (activations default to fp32 there) or on a GPU (where they
/// default to the weights' type, which the tensor cores and cuBLASLt need).
constexpr bool on_host = std::is_same_v<memory, Kokkos::HostSpace>;

/// Run `body(weight tag, activation tag)`: weights as `dtype` says; activations fp32 (`f32`), the
/// weights' type (`weights`), or by default fp32 on the host and the weights' type on a GPU.
template <class Body>
int with_types(std::string const& dtype, std::string const& activations, Body&& body) {
  return with_dtype(dtype, [&](auto wt) {
    if (activations == "f32" || (activations == "auto" && on_host)) return body(wt, float{});
    if (activations == "weights" || activations == "auto") return body(wt, wt);
    throw ssm::error("unknown activation type '" + activations + "' (auto, f32, weights)");
  });
}

void print_json_array(std::ostream& out, auto const& values) {
  out << '[';
  for (std::size_t i = 0; i < values.size(); ++i) out << (i ? "," : "") << values[i];
  out << ']';
}

int cmd_score(std::string const& dir, std::string const& dtype, std::string const& activations, std::vector<std::int32_t> const& ids, bool json) {
  return with_types(dtype, activations, [&](auto wt, auto t) {
    auto const model = load_model<decltype(wt), decltype(t)>(dir);
    auto const s = ssm::score_tokens(model, std::span<std::int32_t const>(ids));
    if (json) {
      nlohmann::json j;
      j["next_token_logprob"] = s.next_token_logprob;
      j["argmax"] = s.argmax;
      j["sum_logprob"] = s.sum_logprob;
      std::cout << j.dump() << "\n";
    } else {
      std::printf("%8s %8s %12s %8s\n", "position", "token", "logprob", "argmax");
      for (std::size_t i = 0; i < ids.size(); ++i)
        std::printf("%8zu %8d %12.5f %8d\n", i, ids[i], i ? s.next_token_logprob[i - 1] : 0.0, s.argmax[i]);
      std::printf("sum of log-probabilities: %.6f over %zu predicted tokens\n", s.sum_logprob, ids.size() - 1);
    }
    return 0;
  });
}

int cmd_perplexity(std::string const& dir, std::string const& dtype, std::string const& activations, std::vector<std::int32_t> const& ids, std::size_t chunk) {
  return with_types(dtype, activations, [&](auto wt, auto t) {
    auto const model = load_model<decltype(wt), decltype(t)>(dir);
    auto const start = clock_type::now();
    auto const s = ssm::score_tokens(model, std::span<std::int32_t const>(ids), chunk);
    double const elapsed = ms_since(start);
    double const nll = -s.sum_logprob / static_cast<double>(s.next_token_logprob.size());
    std::printf("perplexity %.4f (mean negative log-likelihood %.5f nats over %zu tokens)\n", std::exp(nll), nll,
                s.next_token_logprob.size());
    std::fprintf(stderr, "scored %zu tokens in %.1f ms (%.1f tokens/s)\n", ids.size(), elapsed,
                 1000.0 * static_cast<double>(ids.size()) / elapsed);
    return 0;
  });
}

int cmd_generate(std::string const& dir, std::string const& dtype, std::string const& activations, std::string const& ids_text, std::string const& text,
                 ssm::generation_options options, bool json) {
  std::optional<ssm::text::tokenizer> tokenizer;
  if (!text.empty() || fs::exists(fs::path(dir) / "tokenizer.json")) tokenizer = load_tokenizer(dir);
  std::vector<std::int32_t> const prompt = text.empty() ? parse_ids(ids_text, "--ids") : tokenizer->encode(text);
  if (prompt.empty()) throw ssm::error("-p: the prompt is empty");
  if (tokenizer && !options.eos) options.eos = tokenizer->eos_id();
  return with_types(dtype, activations, [&](auto wt, auto t) {
    auto const model = load_model<decltype(wt), decltype(t)>(dir);
    auto const start = clock_type::now();
    clock_type::time_point first_token;
    std::size_t produced = 0;
    std::optional<ssm::text::stream_decoder> stream;
    if (tokenizer) {
      stream.emplace(*tokenizer, /*skip_special=*/true);
      if (!json) std::fputs(tokenizer->decode(prompt, /*skip_special=*/true).c_str(), stdout);
    }
    auto const out = ssm::generate(model, {prompt}, options, [&](std::size_t, std::int32_t id) {
      if (produced++ == 0) first_token = clock_type::now();
      if (!json) {
        if (stream) std::fputs(stream->push(id).c_str(), stdout);
        else std::printf("%d\n", id);
        std::fflush(stdout);
      }
      return true;
    }).front();
    if (!json && stream) std::printf("%s\n", stream->flush().c_str());
    double const prompt_ms = std::chrono::duration<double, std::milli>(first_token - start).count();
    double const eval_ms = ms_since(first_token);
    if (json) {
      nlohmann::json j;
      j["ids"] = out;
      if (tokenizer) j["text"] = tokenizer->decode(out);
      std::cout << j.dump() << "\n";
    }
    std::fprintf(stderr, "prompt eval time = %10.2f ms / %5zu tokens (%8.2f ms per token, %8.2f tokens per second)\n",
                 prompt_ms, prompt.size(), prompt_ms / static_cast<double>(prompt.size()),
                 1000.0 * static_cast<double>(prompt.size()) / prompt_ms);
    if (out.size() > 1)
      std::fprintf(stderr, "       eval time = %10.2f ms / %5zu runs   (%8.2f ms per token, %8.2f tokens per second)\n",
                   eval_ms, out.size() - 1, eval_ms / static_cast<double>(out.size() - 1),
                   1000.0 * static_cast<double>(out.size() - 1) / eval_ms);
    return 0;
  });
}

int cmd_tokenize(std::string const& source, std::string const& text, std::string const& file, bool json) {
  auto const tokenizer = load_tokenizer(source);
  auto const ids = tokenizer.encode(file.empty() ? text : read_text_file(file));
  if (json) {
    std::cout << nlohmann::json{{"ids", ids}}.dump() << "\n";
  } else {
    for (std::size_t i = 0; i < ids.size(); ++i) std::printf("%s%d", i ? "," : "", ids[i]);
    std::printf("\n");
  }
  return 0;
}

int cmd_detokenize(std::string const& source, std::vector<std::int32_t> const& ids, bool json) {
  auto const tokenizer = load_tokenizer(source);
  auto const text = tokenizer.decode(ids);
  if (json) std::cout << nlohmann::json{{"text", text}}.dump() << "\n";
  else std::cout << text << "\n";
  return 0;
}

int cmd_info(std::string const& dir) {
  auto const c = ssm::load_model_config(fs::path(dir) / "config.json");
  auto const mixer_params = static_cast<std::int64_t>(2) * c.d_inner * c.d_model + static_cast<std::int64_t>(c.d_inner) * c.d_conv +
                            (c.conv_bias ? c.d_inner : 0) + static_cast<std::int64_t>(c.dt_rank + 2 * c.d_state) * c.d_inner +
                            static_cast<std::int64_t>(c.d_inner) * c.dt_rank + c.d_inner +
                            static_cast<std::int64_t>(c.d_inner) * c.d_state + c.d_inner +
                            static_cast<std::int64_t>(c.d_model) * c.d_inner + c.d_model;
  std::int64_t const embedding = static_cast<std::int64_t>(c.padded_vocab_size) * c.d_model;
  std::int64_t const total = embedding * (c.tie_embeddings ? 1 : 2) + c.n_layer * mixer_params + c.d_model;
  std::printf("model:       %s (%s convention)\n", dir.c_str(), c.convention.c_str());
  std::printf("layers:      %d, d_model %d, d_inner %d, d_state %d, d_conv %d, dt_rank %d\n", c.n_layer, c.d_model,
              c.d_inner, c.d_state, c.d_conv, c.dt_rank);
  std::printf("vocabulary:  %d (padded to %d), embeddings %s\n", c.vocab_size, c.padded_vocab_size,
              c.tie_embeddings ? "tied" : "untied");
  std::printf("parameters:  %lld (%.3f M)\n", static_cast<long long>(total), static_cast<double>(total) / 1e6);
  std::printf("memory:      %.1f MB in f32, %.1f MB in f16/bf16 (+ %.3f MB of decoding state per sequence)\n",
              4e-6 * static_cast<double>(total), 2e-6 * static_cast<double>(total),
              1e-6 * 4.0 * c.n_layer * c.d_inner * (c.d_state + c.d_conv - 1));
  auto describe = [](char const* file, auto const& source) {
    std::map<std::string, int> dtypes;
    for (auto const& t : source.names()) ++dtypes[source.info(t).dtype];
    std::printf("weights:     %s", file);
    for (auto const& [d, count] : dtypes) std::printf(", %d tensors %s", count, d.c_str());
    std::printf("\n");
  };
  fs::path const root(dir);
  if (fs::exists(root / "model.safetensors")) describe("model.safetensors", ssm::io::safetensors_file(root / "model.safetensors"));
  else if (fs::exists(root / "model.safetensors.index.json"))
    describe("model.safetensors.index.json", ssm::io::safetensors_shards(root / "model.safetensors.index.json"));
  else if (fs::exists(root / "pytorch_model.bin")) describe("pytorch_model.bin", ssm::io::torch_checkpoint(root / "pytorch_model.bin"));
  else std::printf("weights:     none found (model.safetensors, model.safetensors.index.json or pytorch_model.bin)\n");
  return 0;
}

int cmd_make_model(std::string const& preset, std::string const& dtype, std::string const& out, std::uint64_t seed) {
  auto const config = ssm::preset_config(preset);
  return with_dtype(dtype, [&](auto wt) {
    using Wt = decltype(wt);
    auto const weights = ssm::random_lm_weights<Wt>(config, seed);
    ssm::save_checkpoint(weights, out);
    std::printf("wrote a random %s model (%s weights) to %s\n", preset.c_str(), dtype.c_str(), out.c_str());
    return 0;
  });
}

int cmd_convert(std::string const& dir, std::string const& out) {
  fs::path const source = fs::path(dir) / "pytorch_model.bin";
  ssm::io::torch_checkpoint const in(source);
  ssm::io::safetensors_writer writer;
  writer.metadata("format", "pt");
  auto const names = in.names();
  auto progress = progress_bar("converting " + source.string());
  for (std::size_t i = 0; i < names.size(); ++i) {
    auto const& name = names[i];
    if (name == "lm_head.weight" && in.contains("backbone.embedding.weight") &&
        in.shares_storage("lm_head.weight", "backbone.embedding.weight"))
      continue;  // tied: safetensors stores shared tensors once
    auto const info = in.info(name);
    auto add = [&](auto tag) {
      using T = decltype(tag);
      auto const values = in.template read_as<T>(name);
      writer.add<T>(name, info.shape, std::span<T const>(values));
    };
    if (info.dtype == "F32") add(float{});
    else if (info.dtype == "F16") add(ssm::f16{});
    else if (info.dtype == "BF16") add(ssm::bf16{});
    else if (info.dtype == "I64") add(std::int64_t{});
    else if (info.dtype == "I32") add(std::int32_t{});
    else throw ssm::error("'" + source.string() + "': tensor '" + name + "' has dtype " + info.dtype + ", which convert does not write");
    if (progress) progress(i + 1, names.size());
  }
  fs::create_directories(out);
  writer.write(fs::path(out) / "model.safetensors");
  fs::copy_file(fs::path(dir) / "config.json", fs::path(out) / "config.json", fs::copy_options::overwrite_existing);
  std::printf("wrote %s with %zu tensors\n", (fs::path(out) / "model.safetensors").string().c_str(), names.size());
  return 0;
}

/// The memory bandwidth a decode step can hope for, measured in the same run (median of repeats).
/// On the host, STREAM triad a = b + s c over three arrays of 64 MB (bytes of the 3 arrays); on a
/// GPU, a device-to-device copy of 1 GiB (bytes read plus written), which the vendor's copy engine
/// runs closer to the memory's limit than a simple kernel does.
double stream_gigabytes_per_second() {
  std::vector<double> seconds;
  double bytes = 0.0;
  if constexpr (on_host) {
    std::size_t const n = std::size_t{1} << 24;
    Kokkos::View<float*, memory> a("triad::a", n), b("triad::b", n), c("triad::c", n);
    Kokkos::deep_copy(b, 1.0f);
    Kokkos::deep_copy(c, 2.0f);
    for (int repeat = 0; repeat < 8; ++repeat) {
      auto const start = clock_type::now();
      Kokkos::parallel_for("ssm::bench::triad", Kokkos::RangePolicy<space>(0, n),
                           KOKKOS_LAMBDA(std::size_t const i) { a(i) = b(i) + 3.0f * c(i); });
      space().fence();
      if (repeat > 1) seconds.push_back(ms_since(start) / 1000.0);
    }
    bytes = 3.0 * 4.0 * static_cast<double>(n);
  } else {
    std::size_t const n = std::size_t{1} << 28;
    Kokkos::View<float*, memory> a("copy::a", n), b("copy::b", n);
    Kokkos::deep_copy(b, 1.0f);
    for (int repeat = 0; repeat < 12; ++repeat) {
      auto const start = clock_type::now();
      Kokkos::deep_copy(space(), a, b);
      space().fence();
      if (repeat > 1) seconds.push_back(ms_since(start) / 1000.0);
    }
    bytes = 2.0 * 4.0 * static_cast<double>(n);
  }
  std::sort(seconds.begin(), seconds.end());
  return bytes / seconds[seconds.size() / 2] / 1e9;
}

/// The rate of `ssm::linear` itself on a large square product in storage type T (4096 on a GPU,
/// 1024 on the host): the arithmetic a prefill can hope for, measured in the same run.
template <class T>
double gemm_gigaflops() {
  std::size_t const n = on_host ? 1024 : 4096;
  Kokkos::View<T**, Kokkos::LayoutRight, memory> x("gemm::x", n, n), w("gemm::w", n, n), y("gemm::y", n, n);
  auto h = Kokkos::create_mirror_view(x);
  for (std::size_t i = 0; i < h.span(); ++i) h.data()[i] = ssm::from_float<T>(static_cast<float>(i % 17) / 17.0f - 0.5f);
  Kokkos::deep_copy(x, h);
  Kokkos::deep_copy(w, h);
  ssm::linear_params<T, T, memory> p{x, w, {}, y};
  std::vector<double> seconds;
  for (int repeat = 0; repeat < 7; ++repeat) {
    auto const start = clock_type::now();
    ssm::linear(space(), p);
    space().fence();
    if (repeat > 1) seconds.push_back(ms_since(start) / 1000.0);
  }
  std::sort(seconds.begin(), seconds.end());
  return 2.0 * std::pow(static_cast<double>(n), 3) / seconds[seconds.size() / 2] / 1e9;
}

/// Bytes of weights one decoding step reads: every layer, the final norm and the head.
template <class Wt>
double decode_weight_bytes(ssm::model_config const& c) {
  double const D = c.d_inner, E = c.d_model, N = c.d_state, R = c.dt_rank, W = c.d_conv;
  double const stored = 2 * D * E + D * W + (c.conv_bias ? D : 0) + (R + 2 * N) * D + D * R + E * D + E;  // in Wt
  double const fp32 = D * N + 2 * D;  // A, D, dt_proj.bias
  return c.n_layer * (stored * sizeof(Wt) + fp32 * 4) + (E + static_cast<double>(c.padded_vocab_size) * E) * sizeof(Wt);
}

/// Floating-point operations of the dense layers per prompt token (2 per multiply-add): what a
/// prefill's rate is held against. The scan, conv and norms add under 1% at the published shapes.
double prefill_flops_per_token(ssm::model_config const& c) {
  double const D = c.d_inner, E = c.d_model, N = c.d_state, R = c.dt_rank;
  return 2.0 * c.n_layer * (2 * D * E + (R + 2 * N) * D + D * R + E * D);
}

/// One test of `ssm bench`, run `repetitions` times: the median and the range of its times.
struct bench_row {
  std::string test;
  std::size_t batch, tokens;
  double ms, tokens_per_second;   ///< the median run
  double tokens_per_second_min, tokens_per_second_max;
  std::vector<double> bandwidths;  ///< host decode: the triad measured right after each run
  std::vector<double> per_run;     ///< tokens/s of each run, in order
};

/// A row from the wall times of its runs.
bench_row make_row(std::string test, std::size_t batch, std::size_t tokens, std::vector<double> const& run_ms,
                   std::vector<double> bandwidths = {}) {
  bench_row r{std::move(test), batch, tokens, 0.0, 0.0, 0.0, 0.0, std::move(bandwidths), {}};
  double const work = 1000.0 * static_cast<double>(batch * tokens);
  for (double const ms : run_ms) r.per_run.push_back(work / ms);
  std::vector<double> sorted = run_ms;
  std::sort(sorted.begin(), sorted.end());
  r.ms = sorted[sorted.size() / 2];
  r.tokens_per_second = work / r.ms;
  r.tokens_per_second_min = work / sorted.back();
  r.tokens_per_second_max = work / sorted.front();
  return r;
}

/// The median of some values.
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

template <class Model>
std::vector<bench_row> run_bench(Model const& model, std::size_t prompt, std::size_t n,
                                 std::vector<std::size_t> const& batches, int repetitions) {
  using T = typename std::remove_cvref_t<decltype(model)>::activation_type;
  std::vector<bench_row> rows;
  std::size_t const V = model.vocab();
  for (std::size_t B : batches) {
    Kokkos::View<std::int32_t**, Kokkos::LayoutRight, memory> ids("ids", B, prompt);
    auto h_ids = Kokkos::create_mirror_view(ids);
    for (std::size_t i = 0; i < h_ids.span(); ++i) h_ids.data()[i] = static_cast<std::int32_t>((i * 7919) % model.config().vocab_size);
    Kokkos::deep_copy(ids, h_ids);
    Kokkos::View<T***, Kokkos::LayoutRight, memory> last("last", B, 1, V);
    if (prompt > 0) {
      auto cache = model.make_cache(static_cast<int>(B));
      model.forward(space(), ids, last, &cache);  // warm-up
      space().fence();
      std::vector<double> runs;
      for (int repeat = 0; repeat < repetitions; ++repeat) {
        cache = model.make_cache(static_cast<int>(B));
        auto const start = clock_type::now();
        model.forward(space(), ids, last, &cache);
        space().fence();
        runs.push_back(ms_since(start));
      }
      rows.push_back(make_row("pp" + std::to_string(prompt), B, prompt, runs));
    }
    if (n > 0) {
      auto cache = model.make_cache(static_cast<int>(B));
      Kokkos::View<std::int32_t*, Kokkos::LayoutRight, memory> token("token", B);
      Kokkos::View<T**, Kokkos::LayoutRight, memory> logits("logits", B, V);
      // A generation step as `ssm::generate` runs it greedily: the model's step and the choice of
      // the next tokens on the space, replayed from a graph (one launch per step on a GPU).
      auto const step = [&] {
        model.step(space(), token, logits, cache, /*check_ids=*/false);  // argmax_rows chose them
        ssm::argmax_rows(space(), ssm::view2<const T, memory>(logits), ssm::view1<std::int32_t, memory>(token));
      };
      step();  // warm-up: allocates and plans what a step needs
      ssm::graph<space> decode;
      decode.record(space(), step);
      decode.replay();
      space().fence();
      // On the host the bandwidth a shared machine gives moves from second to second, so each run
      // is paired with a triad measured right after it.
      std::vector<double> runs, bandwidths;
      for (int repeat = 0; repeat < repetitions; ++repeat) {
        auto const start = clock_type::now();
        for (std::size_t i = 0; i < n; ++i) decode.replay();
        space().fence();
        runs.push_back(ms_since(start));
        if (on_host) bandwidths.push_back(stream_gigabytes_per_second());
      }
      rows.push_back(make_row("tg" + std::to_string(n), B, n, runs, bandwidths));
    }
  }
  return rows;
}

int cmd_bench(std::string const& dir, std::string const& preset, std::string const& dtype, std::string const& activations,
              std::size_t prompt, std::size_t n, std::string const& batches_text, int repetitions,
              std::string const& format) {
  std::vector<std::size_t> batches;
  for (auto id : parse_ids(batches_text, "-b")) batches.push_back(static_cast<std::size_t>(std::max(1, id)));
  if (repetitions < 1) throw ssm::error("bench: -r must be at least 1, got " + std::to_string(repetitions));
  return with_types(dtype, activations, [&](auto wt, auto t) {
    using Wt = decltype(wt);
    using T = decltype(t);
    auto const model = dir.empty() ? ssm::mamba_lm<space, T, Wt>(ssm::mamba_lm_weights<Wt, memory>::copy_of(
                                         ssm::random_lm_weights<Wt>(ssm::preset_config(preset), 1)))
                                   : load_model<Wt, T>(dir);
    auto const rows = run_bench(model, prompt, n, batches, repetitions);
    std::string const name = dir.empty() ? preset : dir;
    std::string const types = dtype + (std::is_same_v<T, Wt> ? "" : "/f32");
    int const threads = ssm::compat::concurrency(space());
    // the bandwidth of the header line: every triad the decode runs were paired with, or one
    // measurement now
    std::vector<double> measured;
    for (auto const& r : rows) measured.insert(measured.end(), r.bandwidths.begin(), r.bandwidths.end());
    double const bandwidth = measured.empty() ? stream_gigabytes_per_second() : median(measured);
    double const gemm = gemm_gigaflops<T>();
    double const bytes = decode_weight_bytes<Wt>(model.config());
    double const flops = prefill_flops_per_token(model.config());
    double const limit = bandwidth * 1e9 / bytes;  // decode tokens/s at batch 1 if weights streamed at that bandwidth
    // Achieved rate and fraction of its limit: weights read per second for decoding (the weights
    // are read once per step whatever the batch), dense-layer FLOP per second for prefill. A
    // decode run paired with its own triad is held against that one; the fraction printed is
    // the median over the runs.
    auto const rate_of = [&](bench_row const& r, double tokens_per_second) {
      return r.test[0] == 't' ? bytes * tokens_per_second / static_cast<double>(r.batch) / 1e9
                              : flops * tokens_per_second / 1e9;
    };
    auto const achieved = [&](bench_row const& r) {
      double const rate = rate_of(r, r.tokens_per_second);
      if (r.test[0] != 't') return std::pair{rate, rate / gemm};
      if (r.bandwidths.empty()) return std::pair{rate, rate / bandwidth};
      std::vector<double> fractions;
      for (std::size_t i = 0; i < r.per_run.size(); ++i) fractions.push_back(rate_of(r, r.per_run[i]) / r.bandwidths[i]);
      return std::pair{rate, median(fractions)};
    };
    if (format == "json") {
      nlohmann::json j = {{"model", name}, {"dtype", types}, {"backend", space::name()}, {"threads", threads},
                          {"repetitions", repetitions}, {on_host ? "triad_GBps" : "copy_GBps", bandwidth},
                          {"gemm_GFLOPs", gemm}, {"decode_weight_bytes", bytes},
                          {"prefill_flops_per_token", flops}, {"results", nlohmann::json::array()}};
      for (auto const& r : rows) {
        auto const [rate, fraction] = achieved(r);
        bool const decode = r.test[0] == 't';  // a decode step is one token a sequence; a prefill is one step
        nlohmann::json row = {{"test", r.test},
                              {"batch", r.batch},
                              {"ms", r.ms},
                              {"ms_per_step", r.ms / static_cast<double>(decode ? r.tokens : 1)},
                              {"tokens_per_second", r.tokens_per_second},
                              {"tokens_per_second_min", r.tokens_per_second_min},
                              {"tokens_per_second_max", r.tokens_per_second_max},
                              {"tokens_per_second_runs", r.per_run},
                              {"fraction_of_limit", fraction}};
        row[decode ? "weights_GBps" : "GFLOPs"] = rate;
        if (!r.bandwidths.empty()) row["triad_GBps_runs"] = r.bandwidths;
        j["results"].push_back(row);
      }
      std::cout << j.dump(2) << "\n";
    } else {
      std::printf("%s %.1f GB/s; a decode step reads %.1f MB of weights: limit %.2f tokens/s per sequence\n",
                  on_host ? "STREAM triad" : "device copy", bandwidth, bytes / 1e6, limit);
      std::printf("ssm::linear %.0f GFLOP/s on a square product; a prompt token costs %.2f GFLOP in dense layers\n",
                  gemm, flops / 1e9);
      std::printf("each test ran %d times: t/s is the median run, beside the slowest and fastest%s\n\n", repetitions,
                  on_host && n > 0 ? "; each decode run is held against a triad measured right after it" : "");
      std::printf("| model | dtype | backend | threads | test | batch | t/s | range | ms per step | achieved | of the limit |\n");
      std::printf("|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|\n");
      for (auto const& r : rows) {
        auto const [rate, fraction] = achieved(r);
        bool const decode = r.test[0] == 't';
        std::printf("| %s | %s | %s | %d | %s | %zu | %.2f | %.2f-%.2f | %.3f | %.1f %s | %.0f%% |\n", name.c_str(),
                    types.c_str(), space::name(), threads, r.test.c_str(), r.batch, r.tokens_per_second,
                    r.tokens_per_second_min, r.tokens_per_second_max, r.ms / static_cast<double>(decode ? r.tokens : 1),
                    decode || on_host ? rate : rate / 1e3, decode ? "GB/s" : on_host ? "GFLOP/s" : "TFLOP/s",
                    100.0 * fraction);
      }
    }
    return 0;
  });
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ssm: run, score and benchmark Mamba language models"};
  app.require_subcommand(1);
  int threads = 0;

  std::string dir, dtype = "f32", activations = "auto", ids_text, file, out, preset, batches = "1", format = "md";
  bool json = false;
  std::size_t n = 16, prompt = 512, chunk = 512;
  int repetitions = 3;
  std::uint64_t seed = 1;
  ssm::generation_options generation;

  auto* score = app.add_subcommand("score", "teacher-forced log-probabilities of a token sequence");
  score->add_option("-m,--model", dir, "checkpoint directory")->required();
  auto* score_ids = score->add_option("--ids", ids_text, "token ids, e.g. 1,2,3");
  score->add_option("-f,--file", file, "a file of token ids")->excludes(score_ids);
  std::string score_text;
  score->add_option("-p,--prompt", score_text, "text to score (needs the model's tokenizer.json)")->excludes(score_ids);
  score->add_flag("--json", json, "print one JSON object");
  score->add_option("--dtype", dtype, "weight storage: f32, f16, bf16");

  auto* ppl = app.add_subcommand("perplexity", "perplexity of a long text, streamed through the state");
  ppl->add_option("-m,--model", dir, "checkpoint directory")->required();
  ppl->add_option("-f,--file", file, "a text file (tokenized with the model's tokenizer.json), or of ids")->required();
  bool ids_file = false;
  ppl->add_flag("--ids-file", ids_file, "the file holds token ids, not text");
  ppl->add_option("--chunk", chunk, "tokens per forward pass");
  ppl->add_option("--dtype", dtype, "weight storage: f32, f16, bf16");

  auto* gen = app.add_subcommand("generate", "continue a prompt of token ids");
  gen->add_option("-m,--model", dir, "checkpoint directory")->required();
  std::string prompt_text;
  auto* gen_ids = gen->add_option("--ids", ids_text, "prompt token ids, e.g. 1,2,3");
  gen->add_option("-p,--prompt", prompt_text, "prompt text (needs the model's tokenizer.json)")->excludes(gen_ids);
  gen->add_option("-n", generation.max_tokens, "tokens to generate");
  gen->add_option("--temp", generation.sampling.temperature, "temperature (0: greedy)");
  gen->add_option("--top-k", generation.sampling.top_k, "keep the k most likely tokens (0: all)");
  gen->add_option("--top-p", generation.sampling.top_p, "keep the smallest set of tokens reaching this probability");
  gen->add_option("--min-p", generation.sampling.min_p, "keep tokens at least this fraction as likely as the best");
  gen->add_option("--repeat-penalty", generation.sampling.repeat_penalty, "penalty of recently seen tokens (1: off)");
  gen->add_option("--repeat-last-n", generation.sampling.repeat_last_n, "how many past tokens the penalty sees");
  gen->add_option("--seed", generation.sampling.seed, "random seed");
  gen->add_flag("--json", json, "print {\"ids\": [...]}");
  gen->add_option("--dtype", dtype, "weight storage: f32, f16, bf16");

  auto* bench = app.add_subcommand("bench", "prefill and decode tokens per second, like llama-bench");
  auto* bench_model = bench->add_option("-m,--model", dir, "checkpoint directory");
  bench->add_option("--preset", preset, "random weights of a shape: tiny, 130m, 370m, 790m, 1.4b, 2.8b")->excludes(bench_model);
  bench->add_option("-p", prompt, "prompt tokens (0: no prefill test)");
  bench->add_option("-n", n, "generated tokens (0: no decode test)");
  bench->add_option("-b", batches, "batch sizes, e.g. 1,8");
  bench->add_option("-r,--repetitions", repetitions, "runs of each test; the median is reported (default 3)");
  bench->add_option("-o", format, "md or json")->check(CLI::IsMember({"md", "json"}));
  bench->add_option("--dtype", dtype, "weight storage: f32, f16, bf16");

  auto* make = app.add_subcommand("make-model", "write a random-weight checkpoint of a published shape");
  make->add_option("--preset", preset, "tiny, 130m, 370m, 790m, 1.4b or 2.8b")->required();
  make->add_option("--dtype", dtype, "f32, f16 or bf16");
  make->add_option("-o,--output", out, "directory to write")->required();
  make->add_option("--seed", seed, "random seed");

  auto* tokenize = app.add_subcommand("tokenize", "text to token ids with a tokenizer.json");
  tokenize->add_option("-m,--model", dir, "model directory or tokenizer.json")->required();
  auto* tokenize_text = tokenize->add_option("-p,--prompt", prompt_text, "the text");
  tokenize->add_option("-f,--file", file, "a file of text")->excludes(tokenize_text);
  tokenize->add_flag("--json", json, "print {\"ids\": [...]}");

  auto* detokenize = app.add_subcommand("detokenize", "token ids to text with a tokenizer.json");
  detokenize->add_option("-m,--model", dir, "model directory or tokenizer.json")->required();
  auto* detokenize_ids = detokenize->add_option("--ids", ids_text, "token ids, e.g. 1,2,3");
  detokenize->add_option("-f,--file", file, "a file of token ids")->excludes(detokenize_ids);
  detokenize->add_flag("--json", json, "print {\"text\": \"...\"}");

  auto* info = app.add_subcommand("info", "configuration, parameter count, dtypes and memory of a checkpoint");
  info->add_option("-m,--model", dir, "checkpoint directory")->required();

  auto* convert = app.add_subcommand("convert", "write model.safetensors from a pytorch_model.bin");
  convert->add_option("-m,--model", dir, "checkpoint directory holding pytorch_model.bin")->required();
  convert->add_option("-o,--output", out, "directory to write")->required();

  for (auto* command : {score, ppl, gen, bench})
    command->add_option("--act", activations, "activation storage: auto (f32 on the CPU, the weights' type on a GPU), f32, weights");
  for (auto* command : {score, ppl, gen, bench, make, info, convert, tokenize, detokenize})
    command->add_option("-t,--threads", threads, "host threads (OpenMP builds; 0: Kokkos' default)");

  CLI11_PARSE(app, argc, argv);
  ssm::compat::initialize(threads);
  int code = 1;
  try {
    if (score->parsed()) {
      if (ids_text.empty() && file.empty() && score_text.empty()) throw ssm::error("score: give --ids, -f or -p");
      auto const ids = score_text.empty() ? read_ids(ids_text, file) : load_tokenizer(dir).encode(score_text);
      code = cmd_score(dir, dtype, activations, ids, json);
    } else if (ppl->parsed()) {
      bool const text = !ids_file && fs::exists(fs::path(dir) / "tokenizer.json");
      auto const ids = text ? load_tokenizer(dir).encode(read_text_file(file)) : read_ids("", file);
      code = cmd_perplexity(dir, dtype, activations, ids, chunk);
    } else if (gen->parsed()) {
      if (ids_text.empty() && prompt_text.empty()) throw ssm::error("generate: give -p TEXT or --ids");
      code = cmd_generate(dir, dtype, activations, ids_text, prompt_text, generation, json);
    } else if (bench->parsed()) {
      if (dir.empty() && preset.empty()) throw ssm::error("bench: give -m DIR or --preset NAME");
      code = cmd_bench(dir, preset, dtype, activations, prompt, n, batches, repetitions, format);
    } else if (make->parsed()) {
      code = cmd_make_model(preset, dtype, out, seed);
    } else if (tokenize->parsed()) {
      if (prompt_text.empty() && file.empty()) throw ssm::error("tokenize: give -p TEXT or -f FILE");
      code = cmd_tokenize(dir, prompt_text, file, json);
    } else if (detokenize->parsed()) {
      code = cmd_detokenize(dir, read_ids(ids_text, file), json);
    } else if (info->parsed()) {
      code = cmd_info(dir);
    } else if (convert->parsed()) {
      code = cmd_convert(dir, out);
    }
  } catch (std::exception const& e) {
    std::fprintf(stderr, "ssm: error: %s\n", e.what());
    code = 1;
  }
  Kokkos::finalize();
  return code;
}
