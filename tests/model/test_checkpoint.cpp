/// \file
/// \brief Tests of `ssm::load_checkpoint` and `ssm::load_weights`: the transformers fixture against
/// the raw safetensors reads, and small checkpoints written here (F32, F16, BF16; one file or
/// shards with an index; tied or untied head; both naming conventions), whole or broken in one way
/// each, with the error messages checked.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <ssm/model/checkpoint.hpp>

#include "catch.hpp"
#include "support.hpp"


namespace {

using ssm::test::temp_dir;

namespace fs = std::filesystem;
using shape_t = std::vector<std::int64_t>;

void write_text(fs::path const& p, std::string const& contents) {
  std::ofstream f(p, std::ios::binary);
  f.write(contents.data(), static_cast<std::streamsize>(contents.size()));
}

std::string read_text(fs::path const& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

/// The message of the exception of type E that `f` throws, or "" if it throws none.
template <class E, class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (E const& e) {
    return e.what();
  }
  return "";
}

bool contains(std::string const& text, std::string const& part) { return text.find(part) != std::string::npos; }

// ---- A minimal safetensors writer --------------------------------------------------------------

/// A tensor to write: its dtype and shape, and its little-endian bytes.
struct raw_tensor {
  std::string dtype;
  shape_t shape;
  std::string bytes;
};
using tensor_map = std::map<std::string, raw_tensor>;

void append_le(std::string& out, std::uint64_t value, int nbytes) {
  for (int i = 0; i < nbytes; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xFFu));
}

/// Values rounded to `dtype` (F32, F16 or BF16), as little-endian bytes.
std::string encode(std::vector<float> const& values, std::string const& dtype) {
  std::string out;
  for (float v : values) {
    if (dtype == "F32") {
      std::uint32_t bits;
      std::memcpy(&bits, &v, 4);
      append_le(out, bits, 4);
    } else if (dtype == "F16") {
      append_le(out, ssm::from_float<ssm::f16>(v).bits, 2);
    } else if (dtype == "BF16") {
      append_le(out, ssm::from_float<ssm::bf16>(v).bits, 2);
    } else {
      FAIL("encode: unknown dtype " << dtype);
    }
  }
  return out;
}

/// The value a float becomes once stored as `dtype` (and read back exactly).
float stored(float v, std::string const& dtype) {
  if (dtype == "F16") return ssm::to_float(ssm::from_float<ssm::f16>(v));
  if (dtype == "BF16") return ssm::to_float(ssm::from_float<ssm::bf16>(v));
  return v;
}

/// Write a safetensors file: 8-byte header length, JSON header padded with spaces to 8 bytes, data.
void write_safetensors(fs::path const& p, tensor_map const& tensors) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  header["__metadata__"] = {{"format", "pt"}};
  std::string data;
  for (auto const& [name, t] : tensors) {
    header[name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {data.size(), data.size() + t.bytes.size()}}};
    data += t.bytes;
  }
  std::string text = header.dump();
  while (text.size() % 8 != 0) text += ' ';
  std::string file;
  append_le(file, text.size(), 8);
  write_text(p, file + text + data);
}

// ---- Synthetic models ----------------------------------------------------------------------------

/// A small model: its config.json and its tensors as floats (before rounding to a dtype).
struct synthetic {
  nlohmann::json config;
  std::map<std::string, std::pair<shape_t, std::vector<float>>> tensors;
};

struct synthetic_options {
  bool mamba_ssm = true;   // mamba_ssm's config and names (else transformers')
  bool tied = true;        // tie the head to the embedding
  bool bias = false;       // in_proj / out_proj biases
  bool conv_bias = true;   // conv1d bias
};

// E = 8, 2 layers, V = 10 (padded to 16 by mamba_ssm), N = 4, W = 3, D = 16, R = ceil(8 / 16) = 1.
synthetic make_model(synthetic_options const& o, std::uint64_t seed = 1) {
  std::int64_t const E = 8, L = 2, N = 4, W = 3, D = 16, R = 1;
  std::int64_t const V = o.mamba_ssm ? 16 : 10;
  synthetic s;
  if (o.mamba_ssm) {
    s.config = {{"d_model", E}, {"n_layer", L}, {"vocab_size", 10},
                {"ssm_cfg", {{"d_state", N}, {"d_conv", W}, {"bias", o.bias}, {"conv_bias", o.conv_bias}}},
                {"tie_embeddings", o.tied}};
  } else {
    s.config = {{"model_type", "mamba"}, {"hidden_size", E},     {"num_hidden_layers", L},   {"vocab_size", 10},
                {"state_size", N},       {"conv_kernel", W},      {"use_bias", o.bias},       {"use_conv_bias", o.conv_bias},
                {"tie_word_embeddings", o.tied}};
  }
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  auto const add = [&](std::string const& name, shape_t const& shape, float lo = -1.0f, float hi = 1.0f) {
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    std::vector<float> v(static_cast<std::size_t>(n));
    for (float& x : v) x = lo + (hi - lo) * 0.5f * (dist(rng) + 1.0f);
    s.tensors[name] = {shape, v};
  };
  add(o.mamba_ssm ? "backbone.embedding.weight" : "backbone.embeddings.weight", {V, E});
  for (int i = 0; i < L; ++i) {
    std::string const p = "backbone.layers." + std::to_string(i) + ".";
    add(p + "norm.weight", {E}, 0.5f, 1.5f);
    add(p + "mixer.in_proj.weight", {2 * D, E});
    if (o.bias) add(p + "mixer.in_proj.bias", {2 * D});
    add(p + "mixer.conv1d.weight", {D, 1, W});
    if (o.conv_bias) add(p + "mixer.conv1d.bias", {D});
    add(p + "mixer.x_proj.weight", {R + 2 * N, D});
    add(p + "mixer.dt_proj.weight", {D, R});
    add(p + "mixer.dt_proj.bias", {D}, -4.0f, -2.0f);
    add(p + "mixer.A_log", {D, N}, 0.0f, 2.5f);
    add(p + "mixer.D", {D});
    add(p + "mixer.out_proj.weight", {E, D});
    if (o.bias) add(p + "mixer.out_proj.bias", {E});
  }
  add("backbone.norm_f.weight", {E}, 0.5f, 1.5f);
  if (!o.tied) add("lm_head.weight", {V, E});
  return s;
}

tensor_map encode_all(synthetic const& s, std::string const& dtype) {
  tensor_map out;
  for (auto const& [name, t] : s.tensors) out[name] = {dtype, t.first, encode(t.second, dtype)};
  return out;
}

/// Write `s` to `dir` in `dtype`: config.json and model.safetensors, or `shards` shards and an index.
void write_checkpoint(fs::path const& dir, synthetic const& s, std::string const& dtype, int shards = 0) {
  fs::create_directories(dir);
  write_text(dir / "config.json", s.config.dump(2));
  tensor_map const all = encode_all(s, dtype);
  if (shards == 0) {
    write_safetensors(dir / "model.safetensors", all);
    return;
  }
  std::vector<tensor_map> parts(static_cast<std::size_t>(shards));
  nlohmann::json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", nlohmann::json::object()}};
  std::size_t k = 0;
  for (auto const& [name, t] : all) {
    std::size_t const shard = k++ % parts.size();
    parts[shard][name] = t;
    index["weight_map"][name] = "model-0000" + std::to_string(shard + 1) + "-of-0000" + std::to_string(shards) + ".safetensors";
  }
  for (std::size_t i = 0; i < parts.size(); ++i) {
    write_safetensors(dir / ("model-0000" + std::to_string(i + 1) + "-of-0000" + std::to_string(shards) + ".safetensors"),
                      parts[i]);
  }
  write_text(dir / "model.safetensors.index.json", index.dump(2));
}

/// Count the elements of `view` that differ (bitwise, after conversion to the view's type) from
/// `expected`, mapped through `f`; report the first.
template <class View>
void require_values(View const& view, std::vector<float> const& expected, std::string const& what,
                    float (*f)(float) = nullptr) {
  using T = typename View::non_const_value_type;
  auto const host = Kokkos::create_mirror_view(view);
  Kokkos::deep_copy(host, view);
  REQUIRE(host.span() == expected.size());
  std::size_t wrong = 0, first = 0;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    T const want = ssm::from_float<T>(f ? f(expected[i]) : expected[i]);
    if (std::memcmp(&want, host.data() + i, sizeof(T)) != 0 && wrong++ == 0) first = i;
  }
  INFO(what << ": " << wrong << " elements differ, the first at " << first);
  REQUIRE(wrong == 0);
}

float minus_exp(float a) { return static_cast<float>(-std::exp(static_cast<double>(a))); }

/// Check every weight of `w` against `s` stored as `dtype` (each value is `stored(v, dtype)`, then
/// converted to the view's type; A is -exp(A_log)).
template <class Wt, class M>
void require_model(ssm::mamba_lm_weights<Wt, M> const& w, synthetic const& s, std::string const& dtype) {
  auto const values = [&](std::string const& name) {
    INFO(name);
    REQUIRE(s.tensors.count(name) == 1);
    std::vector<float> v = s.tensors.at(name).second;
    for (float& x : v) x = stored(x, dtype);
    return v;
  };
  std::string const emb = s.tensors.count("backbone.embedding.weight") ? "backbone.embedding.weight"
                                                                        : "backbone.embeddings.weight";
  require_values(w.embedding, values(emb), emb);
  require_values(w.norm_f, values("backbone.norm_f.weight"), "norm_f");
  if (w.config.tie_embeddings) {
    CHECK(w.lm_head.data() == w.embedding.data());
  } else {
    CHECK(w.lm_head.data() != w.embedding.data());
    require_values(w.lm_head, values("lm_head.weight"), "lm_head");
  }
  REQUIRE(w.mixers.size() == static_cast<std::size_t>(w.config.n_layer));
  for (int i = 0; i < w.config.n_layer; ++i) {
    std::string const p = "backbone.layers." + std::to_string(i) + ".";
    auto const& m = w.mixers[static_cast<std::size_t>(i)];
    require_values(w.norms[static_cast<std::size_t>(i)], values(p + "norm.weight"), p + "norm.weight");
    require_values(m.in_proj_weight, values(p + "mixer.in_proj.weight"), p + "in_proj");
    require_values(m.conv1d_weight, values(p + "mixer.conv1d.weight"), p + "conv1d");
    require_values(m.x_proj_weight, values(p + "mixer.x_proj.weight"), p + "x_proj");
    require_values(m.dt_proj_weight, values(p + "mixer.dt_proj.weight"), p + "dt_proj");
    require_values(m.dt_proj_bias, values(p + "mixer.dt_proj.bias"), p + "dt_proj.bias");
    require_values(m.A, values(p + "mixer.A_log"), p + "A", minus_exp);
    require_values(m.D, values(p + "mixer.D"), p + "D");
    require_values(m.out_proj_weight, values(p + "mixer.out_proj.weight"), p + "out_proj");
    if (w.config.conv_bias) require_values(m.conv1d_bias, values(p + "mixer.conv1d.bias"), p + "conv1d.bias");
    if (w.config.bias) {
      require_values(m.in_proj_bias, values(p + "mixer.in_proj.bias"), p + "in_proj.bias");
      require_values(m.out_proj_bias, values(p + "mixer.out_proj.bias"), p + "out_proj.bias");
    }
  }
}

/// Records the calls of the progress callback.
struct progress_log {
  std::vector<std::pair<std::size_t, std::size_t>> calls;
  ssm::load_progress callback() {
    return [this](std::size_t done, std::size_t total) { calls.emplace_back(done, total); };
  }
  void require_complete(std::size_t expected_total) const {
    REQUIRE(calls.size() >= 2);
    CHECK(calls.front().first == 0);
    CHECK(calls.back().first == expected_total);
    for (std::size_t i = 0; i < calls.size(); ++i) {
      CHECK(calls[i].second == expected_total);
      if (i) CHECK(calls[i].first > calls[i - 1].first);
    }
  }
};

// A source held in memory with the reader's API, but no file: messages name no file.
struct memory_source {
  struct info_t {
    std::string dtype;
    std::vector<std::int64_t> shape;
  };
  std::map<std::string, std::pair<info_t, std::vector<float>>> tensors;
  bool contains(std::string const& name) const { return tensors.count(name) != 0; }
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (auto const& t : tensors) out.push_back(t.first);
    return out;
  }
  info_t const& info(std::string const& name) const { return tensors.at(name).first; }
  template <class T>
  std::vector<T> read_as(std::string const& name, std::vector<std::int64_t> const& shape) const {
    REQUIRE(shape == info(name).shape);
    std::vector<T> out;
    for (float v : tensors.at(name).second) out.push_back(ssm::from_float<T>(v));
    return out;
  }
};

}  // namespace

TEST_CASE("checkpoint: the transformers fixture loads and matches the raw tensors", "[model][checkpoint]") {
  std::string const dir = std::string(SSM_FIXTURE_DIR) + "/mamba_tiny";
  ssm::io::safetensors_file const raw(dir + "/model.safetensors");
  progress_log log;
  auto const w = ssm::load_checkpoint<float>(dir, log.callback());
  auto const& c = w.config;
  CHECK(c.convention == "transformers");
  REQUIRE(c.d_model == 38);
  REQUIRE(c.padded_vocab_size == 101);
  std::int64_t const V = 101, E = 38, D = 76, N = 12, W = 4, R = 5;

  // Every tensor of the file is used: the total is the size of the data section.
  std::size_t data_bytes = 0;
  for (auto const& name : raw.names()) data_bytes += raw.info(name).nbytes();
  log.require_complete(data_bytes);

  require_values(w.embedding, raw.read_as<float>("backbone.embeddings.weight", {V, E}), "embedding");
  CHECK(w.lm_head.data() == w.embedding.data());  // tied
  require_values(w.norm_f, raw.read_as<float>("backbone.norm_f.weight", {E}), "norm_f");
  for (int i : {0, 2}) {
    std::string const p = "backbone.layers." + std::to_string(i) + ".";
    auto const& m = w.mixers[static_cast<std::size_t>(i)];
    require_values(w.norms[static_cast<std::size_t>(i)], raw.read_as<float>(p + "norm.weight", {E}), "norm");
    require_values(m.in_proj_weight, raw.read_as<float>(p + "mixer.in_proj.weight", {2 * D, E}), "in_proj");
    require_values(m.conv1d_weight, raw.read_as<float>(p + "mixer.conv1d.weight", {D, 1, W}), "conv1d");
    require_values(m.conv1d_bias, raw.read_as<float>(p + "mixer.conv1d.bias", {D}), "conv1d.bias");
    require_values(m.x_proj_weight, raw.read_as<float>(p + "mixer.x_proj.weight", {R + 2 * N, D}), "x_proj");
    require_values(m.dt_proj_weight, raw.read_as<float>(p + "mixer.dt_proj.weight", {D, R}), "dt_proj");
    require_values(m.dt_proj_bias, raw.read_as<float>(p + "mixer.dt_proj.bias", {D}), "dt_proj.bias");
    require_values(m.D, raw.read_as<float>(p + "mixer.D", {D}), "D");
    require_values(m.out_proj_weight, raw.read_as<float>(p + "mixer.out_proj.weight", {E, D}), "out_proj");
    // A = -exp(A_log): within one fp32 ulp of the float evaluation PyTorch does.
    auto const a_log = raw.read_as<float>(p + "mixer.A_log", {D, N});
    for (std::size_t k = 0; k < a_log.size(); ++k) {
      float const expected = -std::exp(a_log[k]);
      REQUIRE(std::abs(m.A.data()[k] - expected) <= 0x1p-23f * std::abs(expected));
    }
  }
  // A few values by position: (row, column) of the embedding is at row * E + column.
  auto const emb = raw.read_as<float>("backbone.embeddings.weight");
  CHECK(w.embedding(7, 3) == emb[7 * 38 + 3]);
  CHECK(w.embedding(100, 37) == emb[100 * 38 + 37]);
  auto const conv = raw.read_as<float>("backbone.layers.1.mixer.conv1d.weight");
  CHECK(w.mixers[1].conv1d_weight(5, 2) == conv[5 * 4 + 2]);

  // The same in 16-bit storage, and into the tests' memory space.
  auto const w16 = ssm::load_checkpoint<ssm::bf16, ssm::test::memory>(dir);
  require_values(w16.embedding, emb, "bf16 embedding");
  auto const wh = ssm::load_checkpoint<ssm::f16>(dir);
  require_values(wh.mixers[2].in_proj_weight, raw.read_as<float>("backbone.layers.2.mixer.in_proj.weight"), "f16");
  require_values(wh.mixers[2].D, raw.read_as<float>("backbone.layers.2.mixer.D"), "f16 keeps D in fp32");
}

TEST_CASE("checkpoint: synthetic F32, F16 and BF16 checkpoints convert to every storage type", "[model][checkpoint]") {
  temp_dir const tmp;
  for (bool mamba_ssm : {true, false}) {
    synthetic const s = make_model({mamba_ssm, true, false, true});
    for (std::string const dtype : {"F32", "F16", "BF16"}) {
      fs::path const dir = tmp.path / ((mamba_ssm ? "mamba_ssm_" : "hf_") + dtype);
      write_checkpoint(dir, s, dtype);
      CAPTURE(mamba_ssm, dtype);
      auto const wf = ssm::load_checkpoint<float>(dir);
      CHECK(wf.config.padded_vocab_size == (mamba_ssm ? 16 : 10));
      CHECK(wf.embedding.extent(0) == (mamba_ssm ? 16u : 10u));
      require_model(wf, s, dtype);
      require_model(ssm::load_checkpoint<ssm::f16>(dir), s, dtype);
      require_model(ssm::load_checkpoint<ssm::bf16>(dir), s, dtype);
    }
  }
  // A hand-checked conversion: 1 + 2^-9 rounds to 1 in bf16 (ties to even) but is exact in f16.
  synthetic s = make_model({});
  s.tensors["backbone.norm_f.weight"].second = {1.0f + 0x1p-9f, 1.5f, -2.0f, 0.0f, 1.0f, 3.0f, 0.25f, 65504.0f};
  write_checkpoint(tmp.path / "exact", s, "F32");
  auto const b = ssm::load_checkpoint<ssm::bf16>(tmp.path / "exact");
  auto const h = ssm::load_checkpoint<ssm::f16>(tmp.path / "exact");
  CHECK(b.norm_f(0).bits == 0x3F80);  // 1.0
  CHECK(h.norm_f(0).bits == 0x3C02);  // 1 + 2 ulps of f16 (2^-10)
  CHECK(h.norm_f(7).bits == 0x7BFF);  // 65504, the largest f16
  CHECK(b.norm_f(7).bits == 0x4780);  // 65504 rounds to 65536 in bf16
}

TEST_CASE("checkpoint: sharded checkpoints with an index, untied heads and biases", "[model][checkpoint]") {
  temp_dir const tmp;
  for (bool mamba_ssm : {true, false}) {
    synthetic const s = make_model({mamba_ssm, false, true, false}, 7);
    fs::path const dir = tmp.path / (mamba_ssm ? "mamba_ssm" : "hf");
    write_checkpoint(dir, s, "BF16", 3);
    CAPTURE(mamba_ssm);
    progress_log log;
    auto const w = ssm::load_checkpoint<float>(dir, log.callback());
    CHECK_FALSE(w.config.tie_embeddings);
    CHECK(w.config.bias);
    CHECK_FALSE(w.config.conv_bias);
    require_model(w, s, "BF16");
    std::size_t total = 0;
    for (auto const& [name, t] : s.tensors) total += 2 * t.second.size();
    log.require_complete(total);

    // The shards source on its own.
    ssm::io::safetensors_shards const shards(dir / "model.safetensors.index.json");
    CHECK(shards.shards().size() == 3);
    CHECK(shards.names().size() == s.tensors.size());
    CHECK(contains(shards.file_of("backbone.norm_f.weight"), "-of-00003.safetensors"));
    CHECK(shards.info("backbone.norm_f.weight").shape == shape_t{8});
  }
}

TEST_CASE("checkpoint: order of preference, tied heads stored, unknown tensors ignored", "[model][checkpoint]") {
  temp_dir const tmp;
  synthetic s = make_model({});
  // model.safetensors wins over a (broken) index and a pytorch_model.bin.
  write_checkpoint(tmp.path / "both", s, "F32");
  write_text(tmp.path / "both" / "model.safetensors.index.json", "not json");
  write_text(tmp.path / "both" / "pytorch_model.bin", "not a zip");
  require_model(ssm::load_checkpoint<float>(tmp.path / "both"), s, "F32");

  // A tied head stored as a copy of the embedding, and tensors the loader does not know.
  s.tensors["lm_head.weight"] = s.tensors["backbone.embedding.weight"];
  s.tensors["backbone.layers.0.mixer.extra_buffer"] = {{2}, {1.0f, 2.0f}};
  s.tensors["backbone.layers.notanumber.x"] = {{1}, {1.0f}};
  s.tensors["something.else"] = {{1}, {1.0f}};
  write_checkpoint(tmp.path / "stored_head", s, "F16");
  auto const w = ssm::load_checkpoint<float>(tmp.path / "stored_head");
  CHECK(w.lm_head.data() == w.embedding.data());
  require_model(w, s, "F16");
}

TEST_CASE("checkpoint: load_weights takes any tensor source", "[model][checkpoint]") {
  static_assert(ssm::tensor_source<memory_source>);
  static_assert(ssm::tensor_source<ssm::io::safetensors_file>);
  static_assert(ssm::tensor_source<ssm::io::safetensors_shards>);

  synthetic const s = make_model({false, true, false, true});
  memory_source src;
  for (auto const& [name, t] : s.tensors) src.tensors[name] = {{"F32", t.first}, t.second};
  ssm::model_config const c = ssm::parse_model_config(s.config, "memory");
  progress_log log;
  auto const w = ssm::load_weights<ssm::bf16>(c, src, "memory", log.callback());
  require_model(w, s, "F32");
  std::size_t total = 0;
  for (auto const& [name, t] : s.tensors) total += 4 * t.second.size();
  log.require_complete(total);

  src.tensors.erase("backbone.norm_f.weight");
  std::string const what = error_of<ssm::checkpoint_error>([&] { (void)ssm::load_weights<float>(c, src, "memory"); });
  CHECK(what == "checkpoint 'memory': misses 1 tensor: 'backbone.norm_f.weight'");
}

TEST_CASE("checkpoint: checkpoints that do not match their config are refused by name", "[model][checkpoint]") {
  temp_dir const tmp;
  int n = 0;
  // Write `s` (after `edit`) as a new checkpoint; return the message of the checkpoint_error it gives.
  auto const refused = [&](synthetic s, auto edit, std::string const& dtype = "F32") {
    edit(s);
    fs::path const dir = tmp.path / ("case" + std::to_string(n++));
    write_checkpoint(dir, s, dtype);
    std::string const what = error_of<ssm::checkpoint_error>([&] { (void)ssm::load_checkpoint<float>(dir); });
    CHECK(contains(what, "checkpoint '" + dir.string() + "': "));
    UNSCOPED_INFO(what);  // shown with the next assertion
    return what;
  };
  synthetic const base = make_model({});
  synthetic const untied = make_model({true, false, false, true});

  std::string what = refused(base, [](synthetic& s) { s.tensors.erase("backbone.layers.1.mixer.D"); });
  CHECK(contains(what, "misses 1 tensor: 'backbone.layers.1.mixer.D'"));

  what = refused(base, [](synthetic& s) {
    for (int i = 0; i < 2; ++i) s.tensors.erase("backbone.layers." + std::to_string(i) + ".mixer.A_log");
    s.tensors.erase("backbone.norm_f.weight");
  });
  CHECK(contains(what, "misses 3 tensors: 'backbone.layers.0.mixer.A_log', 'backbone.layers.1.mixer.A_log', "
                       "'backbone.norm_f.weight'"));

  what = refused(base, [](synthetic& s) { s.tensors.erase("backbone.embedding.weight"); });
  CHECK(contains(what, "misses 1 tensor: 'backbone.embedding.weight' or 'backbone.embeddings.weight'"));

  what = refused(untied, [](synthetic& s) { s.tensors.erase("lm_head.weight"); });
  CHECK(contains(what, "misses 1 tensor: 'lm_head.weight'"));

  // Wrong shapes: the tensor, its file, both shapes.
  what = refused(base, [](synthetic& s) {
    s.tensors["backbone.layers.1.mixer.x_proj.weight"] = {{10, 16}, std::vector<float>(160, 0.5f)};
  });
  CHECK(contains(what, "tensor 'backbone.layers.1.mixer.x_proj.weight' (in '"));
  CHECK(contains(what, "model.safetensors') has shape [10, 16], but the config needs [9, 16]"));
  // The embedding must have the padded number of rows (16), not vocab_size (10).
  what = refused(base, [](synthetic& s) {
    s.tensors["backbone.embedding.weight"] = {{10, 8}, std::vector<float>(80, 0.5f)};
  });
  CHECK(contains(what, "'backbone.embedding.weight'"));
  CHECK(contains(what, "has shape [10, 8], but the config needs [16, 8]"));
  what = refused(base, [](synthetic& s) {
    s.tensors["backbone.layers.0.mixer.conv1d.weight"] = {{16, 3}, std::vector<float>(48, 0.5f)};
  });
  CHECK(contains(what, "has shape [16, 3], but the config needs [16, 1, 3]"));
  what = refused(untied, [](synthetic& s) { s.tensors["lm_head.weight"] = {{16, 4}, std::vector<float>(64, 0.5f)}; });
  CHECK(contains(what, "'lm_head.weight'"));
  CHECK(contains(what, "[16, 4]"));

  // Tensors that contradict the config.
  what = refused(base, [](synthetic& s) { s.tensors["backbone.embeddings.weight"] = s.tensors["backbone.embedding.weight"]; });
  CHECK(contains(what, "both 'backbone.embedding.weight'"));
  what = refused(base, [](synthetic& s) {
    s.tensors["lm_head.weight"] = s.tensors["backbone.embedding.weight"];
    s.tensors["lm_head.weight"].second[21] += 0.25f;
  });
  CHECK(contains(what, "'lm_head.weight', which differs from the embedding (first at row 2, column 5)"));
  CHECK(contains(what, "tie_embeddings = true"));
  what = refused(base, [](synthetic& s) { s.tensors["backbone.layers.2.norm.weight"] = {{8}, std::vector<float>(8, 1.0f)}; });
  CHECK(contains(what, "'backbone.layers.2.norm.weight', but the config has n_layer = 2"));
  what = refused(base, [](synthetic& s) { s.tensors["backbone.layers.0.mixer.in_proj.bias"] = {{32}, std::vector<float>(32)}; });
  CHECK(contains(what, "'backbone.layers.0.mixer.in_proj.bias', but the config has no such biases (ssm_cfg.bias = false)"));
  synthetic const no_conv_bias = make_model({false, true, false, false});
  what = refused(no_conv_bias, [](synthetic& s) {
    s.tensors["backbone.layers.1.mixer.conv1d.bias"] = {{16}, std::vector<float>(16)};
  });
  CHECK(contains(what, "'backbone.layers.1.mixer.conv1d.bias', but the config has no conv bias (use_conv_bias = false)"));

  // An integer tensor where a weight belongs.
  {
    fs::path const dir = tmp.path / "int";
    write_checkpoint(dir, base, "F32");
    tensor_map t = encode_all(base, "F32");
    std::string bytes;
    for (int i = 0; i < 8; ++i) append_le(bytes, 1, 8);
    t["backbone.norm_f.weight"] = {"I64", {8}, bytes};
    write_safetensors(dir / "model.safetensors", t);
    what = error_of<ssm::checkpoint_error>([&] { (void)ssm::load_checkpoint<float>(dir); });
    CHECK(contains(what, "tensor 'backbone.norm_f.weight'"));
    CHECK(contains(what, "has dtype I64"));
  }
}

TEST_CASE("checkpoint: broken directories, indexes and files", "[model][checkpoint]") {
  temp_dir const tmp;
  synthetic const s = make_model({});

  // No directory, no config, no weights.
  std::string what = error_of<ssm::checkpoint_error>([&] { (void)ssm::load_checkpoint<float>(tmp.path / "nowhere"); });
  CHECK(contains(what, "nowhere': does not exist or is not a directory"));
  fs::create_directories(tmp.path / "empty");
  what = error_of<ssm::config_error>([&] { (void)ssm::load_checkpoint<float>(tmp.path / "empty"); });
  CHECK(contains(what, "config.json': does not exist"));
  write_text(tmp.path / "empty" / "config.json", s.config.dump());
  what = error_of<ssm::checkpoint_error>([&] { (void)ssm::load_checkpoint<float>(tmp.path / "empty"); });
  CHECK(contains(what, "holds no weights: none of model.safetensors, model.safetensors.index.json, pytorch_model.bin"));

  // A pytorch_model.bin that is not one: the reader's error, naming the file.
  write_text(tmp.path / "empty" / "pytorch_model.bin", "not a zip archive");
  what = error_of<ssm::io::torch_checkpoint_error>([&] { (void)ssm::load_checkpoint<float>(tmp.path / "empty"); });
  CHECK(contains(what, (tmp.path / "empty" / "pytorch_model.bin").string()));

  // A truncated model.safetensors: the reader's error, naming the file.
  write_checkpoint(tmp.path / "truncated", s, "F32");
  {
    std::string const bytes = read_text(tmp.path / "truncated" / "model.safetensors");
    write_text(tmp.path / "truncated" / "model.safetensors", bytes.substr(0, bytes.size() - 10));
  }
  what = error_of<ssm::io::safetensors_error>([&] { (void)ssm::load_checkpoint<float>(tmp.path / "truncated"); });
  CHECK(contains(what, "model.safetensors"));
  CHECK(contains(what, "past the end"));

  // Sharded checkpoints, broken one way each.
  int n = 0;
  auto const broken_index = [&](auto edit) {
    fs::path const dir = tmp.path / ("sharded" + std::to_string(n++));
    write_checkpoint(dir, s, "F32", 2);
    nlohmann::json index = nlohmann::json::parse(read_text(dir / "model.safetensors.index.json"));
    edit(dir, index);
    if (!index.is_null()) write_text(dir / "model.safetensors.index.json", index.dump());
    return std::pair(dir, error_of<ssm::checkpoint_error>([&] { (void)ssm::load_checkpoint<float>(dir); }));
  };
  auto const check_index_error = [](std::pair<fs::path, std::string> const& r, std::string const& part) {
    CAPTURE(r.second);
    CHECK(contains(r.second, "checkpoint '" + (r.first / "model.safetensors.index.json").string() + "': "));
    CHECK(contains(r.second, part));
  };
  using json = nlohmann::json;
  check_index_error(broken_index([](fs::path const& dir, json&) { fs::remove(dir / "model-00002-of-00002.safetensors"); }),
                    "in the shard 'model-00002-of-00002.safetensors', which does not exist");
  check_index_error(broken_index([](fs::path const&, json& j) {
                      j["weight_map"]["backbone.norm_f.weight"] = "../model-00001-of-00002.safetensors";
                    }),
                    "weight_map puts 'backbone.norm_f.weight' in '../model-00001-of-00002.safetensors', a path with '..'");
  check_index_error(broken_index([](fs::path const&, json& j) {
                      j["weight_map"]["backbone.norm_f.weight"] = "shards/../../x.safetensors";
                    }),
                    "a path with '..'");
  check_index_error(broken_index([](fs::path const& dir, json& j) {
                      j["weight_map"]["backbone.norm_f.weight"] = (dir / "model-00001-of-00002.safetensors").string();
                    }),
                    "an absolute path");
  check_index_error(broken_index([](fs::path const&, json& j) { j["weight_map"]["backbone.norm_f.weight"] = 3; }),
                    "weight_map gives 'backbone.norm_f.weight' a shard that is not a string");
  check_index_error(broken_index([](fs::path const&, json& j) { j["weight_map"]["backbone.norm_f.weight"] = ""; }),
                    "empty shard name");
  check_index_error(broken_index([](fs::path const&, json& j) { j.erase("weight_map"); }), "has no weight_map");
  check_index_error(broken_index([](fs::path const&, json& j) { j["weight_map"] = json::array(); }),
                    "weight_map must be an object");
  check_index_error(broken_index([](fs::path const&, json& j) { j = json::array(); }), "must be a JSON object");
  check_index_error(broken_index([](fs::path const& dir, json& j) {
                      write_text(dir / "model.safetensors.index.json", "{\"weight_map\": ");
                      j = nullptr;
                    }),
                    "not valid JSON");
  check_index_error(broken_index([](fs::path const& dir, json& j) {
                      write_text(dir / "model.safetensors.index.json",
                                 R"({"weight_map": {"a": "model-00001-of-00002.safetensors", )"
                                 R"("a": "model-00002-of-00002.safetensors"}})");
                      j = nullptr;
                    }),
                    "the key 'a' appears twice");
  // The index puts a tensor in the wrong shard; a tensor in two shards.
  std::string const norm_f_shard = [&] {
    nlohmann::json idx;
    write_checkpoint(tmp.path / "probe", s, "F32", 2);
    idx = nlohmann::json::parse(read_text(tmp.path / "probe" / "model.safetensors.index.json"));
    return idx["weight_map"]["backbone.norm_f.weight"].get<std::string>();
  }();
  std::string const other_shard = norm_f_shard == "model-00001-of-00002.safetensors" ? "model-00002-of-00002.safetensors"
                                                                                     : "model-00001-of-00002.safetensors";
  check_index_error(broken_index([&](fs::path const&, json& j) { j["weight_map"]["backbone.norm_f.weight"] = other_shard; }),
                    "weight_map puts 'backbone.norm_f.weight' in the shard '" + other_shard + "', which does not hold it");
  check_index_error(broken_index([&](fs::path const& dir, json&) {
                      tensor_map t = encode_all(s, "F32");
                      write_safetensors(dir / other_shard, [&] {
                        // The other shard as written, plus a copy of norm_f.
                        ssm::io::safetensors_file const f(dir / other_shard);
                        tensor_map m;
                        for (auto const& name : f.names()) m[name] = t[name];
                        m["backbone.norm_f.weight"] = t["backbone.norm_f.weight"];
                        return m;
                      }());
                    }),
                    "tensor 'backbone.norm_f.weight' is in two shards");

  // A truncated shard: the reader's error, naming the shard.
  {
    fs::path const dir = tmp.path / "truncated_shard";
    write_checkpoint(dir, s, "F32", 2);
    std::string const bytes = read_text(dir / "model-00002-of-00002.safetensors");
    write_text(dir / "model-00002-of-00002.safetensors", bytes.substr(0, bytes.size() - 1));
    what = error_of<ssm::io::safetensors_error>([&] { (void)ssm::load_checkpoint<float>(dir); });
    CHECK(contains(what, "model-00002-of-00002.safetensors"));
  }
  // An unknown dtype in a shard: the reader's error, naming the shard.
  {
    fs::path const dir = tmp.path / "unknown_dtype";
    tensor_map t = encode_all(s, "F32");
    t["backbone.norm_f.weight"].dtype = "F31";
    fs::create_directories(dir);
    write_text(dir / "config.json", s.config.dump());
    write_safetensors(dir / "model.safetensors", t);
    what = error_of<ssm::io::safetensors_error>([&] { (void)ssm::load_checkpoint<float>(dir); });
    CHECK(contains(what, (dir / "model.safetensors").string()));
    CHECK(contains(what, "unknown dtype 'F31'"));
  }
}

TEST_CASE("checkpoint: the language-model fixtures load, in every layout", "[model][checkpoint]") {
  // tests/fixtures/lm/ (scripts/make_lm_fixtures.py): one directory per layout. Each loads, and a
  // few tensors equal the raw reads of their files.
  std::string const lm = std::string(SSM_FIXTURE_DIR) + "/lm/";
  if (!fs::exists(lm)) {
    WARN("no fixtures in " << lm);
    return;
  }
  if (fs::exists(lm + "hf_f32_tied")) {
    auto const w = ssm::load_checkpoint<float>(lm + "hf_f32_tied");
    ssm::io::safetensors_file const raw(lm + "hf_f32_tied/model.safetensors");
    CHECK(w.lm_head.data() == w.embedding.data());
    require_values(w.embedding, raw.read_as<float>("backbone.embeddings.weight"), "embedding");
    require_values(w.mixers[2].x_proj_weight, raw.read_as<float>("backbone.layers.2.mixer.x_proj.weight"), "x_proj");
  }
  if (fs::exists(lm + "hf_bf16_sharded")) {
    auto const w = ssm::load_checkpoint<ssm::bf16>(lm + "hf_bf16_sharded");
    ssm::io::safetensors_shards const raw(lm + "hf_bf16_sharded/model.safetensors.index.json");
    CHECK_FALSE(w.config.tie_embeddings);
    require_values(w.lm_head, raw.read_as<float>("lm_head.weight"), "lm_head");
    require_values(w.mixers[1].D, raw.read_as<float>("backbone.layers.1.mixer.D"), "D");
  }
  static_assert(ssm::tensor_source<ssm::io::torch_checkpoint>);
  if (fs::exists(lm + "mamba_ssm_f16/pytorch_model.bin")) {
    auto const w = ssm::load_checkpoint<ssm::f16>(lm + "mamba_ssm_f16");
    ssm::io::torch_checkpoint const raw(lm + "mamba_ssm_f16/pytorch_model.bin");
    CHECK(w.config.convention == "mamba_ssm");
    CHECK(w.config.padded_vocab_size == 104);
    CHECK(w.lm_head.data() == w.embedding.data());
    require_values(w.embedding, raw.read_as<float>("backbone.embedding.weight"), "embedding");
    require_values(w.mixers[0].conv1d_weight, raw.read_as<float>("backbone.layers.0.mixer.conv1d.weight"), "conv1d");
  }
}

TEST_CASE("checkpoint: a mapped safetensors file outlives its name and is shared by copies", "[model][checkpoint]") {
  temp_dir const tmp;
  synthetic const s = make_model({});
  write_checkpoint(tmp.path, s, "F32");
  std::vector<float> const expected = s.tensors.at("backbone.norm_f.weight").second;
  auto copy = std::make_unique<ssm::io::safetensors_file>(tmp.path / "model.safetensors");
  ssm::io::safetensors_file const second = *copy;
  copy.reset();                            // the mapping lives on in the copy
  fs::remove(tmp.path / "model.safetensors");  // and without the file's name
  CHECK(second.read_as<float>("backbone.norm_f.weight", {8}) == expected);
  CHECK(second.bytes("backbone.norm_f.weight").size() == 32);
}
