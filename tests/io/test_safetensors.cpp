/// \file
/// \brief Tests of `ssm::io::safetensors_file`: the golden fixture of scripts/make_fixtures.py, files
/// crafted by hand to be malformed in one way each, and F16/BF16/integer conversions of hand-made files.

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <ssm/io/safetensors.hpp>

#include "catch.hpp"
#include "support.hpp"


namespace {

using ssm::test::temp_dir;

namespace fs = std::filesystem;
using ssm::io::safetensors_error;
using ssm::io::safetensors_file;
using shape_t = std::vector<std::int64_t>;

std::string fixture(std::string const& name) { return std::string(SSM_FIXTURE_DIR) + "/mamba_tiny/" + name; }

void append_le(std::string& out, std::uint64_t value, int nbytes) {
  for (int i = 0; i < nbytes; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xFFu));
}

/// A safetensors file: the 8-byte little-endian length of `header`, `header`, then `data`.
std::string make_file(std::string const& header, std::string const& data) {
  std::string out;
  append_le(out, header.size(), 8);
  return out + header + data;
}

fs::path write(fs::path const& dir, std::string const& name, std::string const& contents) {
  fs::path const p = dir / name;
  std::ofstream f(p, std::ios::binary);
  f.write(contents.data(), static_cast<std::streamsize>(contents.size()));
  return p;
}

/// The message of the safetensors_error that `f` throws, or "" if it throws none.
template <class F>
std::string error_of(F&& f) {
  return ssm::test::error_of<safetensors_error>(std::forward<F>(f));
}

using ssm::test::contains;

std::string zeros(std::size_t n) { return std::string(n, '\0'); }

/// Little-endian bytes of 16-bit patterns.
std::string bits16(std::vector<std::uint16_t> const& bits) {
  std::string out;
  for (auto b : bits) append_le(out, b, 2);
  return out;
}

}  // namespace

TEST_CASE("safetensors: the mamba_tiny fixture loads with the expected names and shapes", "[io][safetensors]") {
  safetensors_file const file(fixture("model.safetensors"));
  std::int64_t const V = 101, E = 38, D = 76, N = 12, W = 4, R = 5;

  auto const names = file.names();
  CHECK(names.size() == 2 + 3 * 10);
  CHECK_FALSE(file.contains("lm_head.weight"));  // tied to the embeddings
  CHECK(file.metadata().at("format") == "pt");

  auto const emb = file.read_as<float>("backbone.embeddings.weight", {V, E});
  CHECK(emb.size() == static_cast<std::size_t>(V * E));
  CHECK(file.info("backbone.norm_f.weight").shape == shape_t{E});
  for (int i = 0; i < 3; ++i) {
    std::string const p = "backbone.layers." + std::to_string(i) + ".";
    CAPTURE(p);
    CHECK(file.info(p + "norm.weight").shape == shape_t{E});
    CHECK(file.info(p + "mixer.in_proj.weight").shape == shape_t{2 * D, E});
    CHECK(file.info(p + "mixer.conv1d.weight").shape == shape_t{D, 1, W});
    CHECK(file.info(p + "mixer.conv1d.bias").shape == shape_t{D});
    CHECK(file.info(p + "mixer.x_proj.weight").shape == shape_t{R + 2 * N, D});
    CHECK(file.info(p + "mixer.dt_proj.weight").shape == shape_t{D, R});
    CHECK(file.info(p + "mixer.dt_proj.bias").shape == shape_t{D});
    CHECK(file.info(p + "mixer.D").shape == shape_t{D});
    CHECK(file.info(p + "mixer.out_proj.weight").shape == shape_t{E, D});
    CHECK(file.info(p + "mixer.A_log").dtype == "F32");

    // A = exp(A_log) was drawn in [0.5, 16]; the norm weights in [0.7, 1.3].
    for (float a : file.read_as<float>(p + "mixer.A_log", {D, N})) {
      REQUIRE(std::exp(a) >= 0.5f - 1e-5f);
      REQUIRE(std::exp(a) <= 16.0f + 1e-4f);
    }
    for (float g : file.read_as<float>(p + "norm.weight", {E})) {
      REQUIRE(g >= 0.7f);
      REQUIRE(g <= 1.3f);
    }
  }
  CHECK_THROWS_AS(file.read_as<float>("backbone.embeddings.weight", {E, V}), safetensors_error);
  CHECK_THROWS_AS(file.read_as<std::int64_t>("backbone.embeddings.weight"), safetensors_error);
  CHECK_THROWS_AS(file.info("no.such.tensor"), safetensors_error);
}

TEST_CASE("safetensors: the recorded outputs are consistent with the weights", "[io][safetensors]") {
  safetensors_file const model(fixture("model.safetensors"));
  safetensors_file const out(fixture("outputs.safetensors"));
  std::int64_t const V = 101, E = 38;
  auto const emb = model.read_as<float>("backbone.embeddings.weight", {V, E});

  auto const ids = out.read_as<std::int64_t>("case0.input_ids", {2, 13});
  for (auto id : ids) {
    REQUIRE(id >= 0);
    REQUIRE(id < V);
  }
  CHECK(out.read_as<std::int32_t>("case0.input_ids") == std::vector<std::int32_t>(ids.begin(), ids.end()));
  CHECK_THROWS_AS(out.read_as<float>("case0.input_ids"), safetensors_error);

  // Layer 0's residual is the embedding: hidden = embedding[id] + mixer_out.
  auto const hidden = out.read_as<float>("case0.layer0.hidden", {2, 13, E});
  auto const mixer = out.read_as<float>("case0.layer0.mixer_out", {2, 13, E});
  for (std::size_t t = 0; t < ids.size(); ++t) {
    for (std::int64_t e = 0; e < E; ++e) {
      std::size_t const k = t * static_cast<std::size_t>(E) + static_cast<std::size_t>(e);
      REQUIRE(std::abs(hidden[k] - mixer[k] - emb[static_cast<std::size_t>(ids[t] * E + e)]) <= 1e-5f);
    }
  }
  // The tied head: logits = norm_f(h) @ embedding^T.
  auto const norm_f = out.read_as<float>("case2.norm_f", {1, 40, E});
  auto const logits = out.read_as<float>("case2.logits", {1, 40, V});
  for (std::size_t t = 0; t < 40; t += 13) {
    for (std::int64_t v = 0; v < V; v += 7) {
      double dot = 0;
      for (std::int64_t e = 0; e < E; ++e) {
        dot += double(norm_f[t * E + static_cast<std::size_t>(e)]) * emb[static_cast<std::size_t>(v * E + e)];
      }
      REQUIRE(std::abs(logits[t * V + static_cast<std::size_t>(v)] - dot) <= 1e-3);
    }
  }
}

TEST_CASE("safetensors: malformed files throw an error that names the file", "[io][safetensors]") {
  temp_dir const dir;
  std::string const ok_entry = R"("x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  std::string deep = R"({"x":)";
  for (int i = 0; i < 100000; ++i) deep += "[";  // must be refused without recursing 100000 deep

  struct bad_case {
    std::string file;      // file name
    std::string contents;  // bytes of the file
    std::string problem;   // a fragment of the expected message
  };
  std::vector<bad_case> const cases = {
      {"empty.safetensors", "", "shorter than 8 bytes"},
      {"short.safetensors", std::string("\x05\0\0\0\0", 5), "shorter than 8 bytes"},
      {"len_past_end.safetensors", std::string("\x40\0\0\0\0\0\0\0", 8) + "{}", "larger than the file"},
      {"len_huge.safetensors", std::string("\xff\xff\xff\xff\xff\xff\xff\xff", 8) + "{}", "exceeds the limit"},
      {"len_over_100mb.safetensors", std::string("\x01\xe1\xf5\x05\0\0\0\0", 8) + "{}", "exceeds the limit"},
      {"not_json.safetensors", make_file("this is not json", ""), "not valid JSON"},
      {"truncated_json.safetensors", make_file(R"({"x":{"dtype":"F32")", ""), "not valid JSON"},
      {"bad_utf8.safetensors", make_file("{\"\xff\xfe\":{}}", ""), "not valid JSON"},
      {"array_header.safetensors", make_file("[1,2,3]", ""), "not a JSON object"},
      {"string_header.safetensors", make_file(R"("hello")", ""), "not a JSON object"},
      {"too_deep.safetensors", make_file(deep, ""), "nests deeper"},
      {"duplicate.safetensors", make_file("{" + ok_entry + "," + ok_entry + "}", zeros(8)), "twice"},
      {"entry_not_object.safetensors", make_file(R"({"x":[1,2]})", ""), "not a JSON object"},
      {"no_dtype.safetensors", make_file(R"({"x":{"shape":[2],"data_offsets":[0,8]}})", zeros(8)), "dtype"},
      {"no_shape.safetensors", make_file(R"({"x":{"dtype":"F32","data_offsets":[0,8]}})", zeros(8)), "shape"},
      {"no_offsets.safetensors", make_file(R"({"x":{"dtype":"F32","shape":[2]}})", zeros(8)), "data_offsets"},
      {"unknown_dtype.safetensors", make_file(R"({"x":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})", zeros(8)),
       "unknown dtype"},
      {"dtype_not_string.safetensors", make_file(R"({"x":{"dtype":4,"shape":[2],"data_offsets":[0,8]}})", zeros(8)),
       "dtype"},
      {"reversed.safetensors", make_file(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", zeros(8)),
       "reversed"},
      {"past_end.safetensors", make_file(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", zeros(4)),
       "past the end"},
      {"size_mismatch.safetensors", make_file(R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", zeros(8)),
       "need 12"},
      {"overflow.safetensors",
       make_file(R"({"x":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", zeros(8)),
       "overflows"},
      {"bytes_overflow.safetensors",
       make_file(R"({"x":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,8]}})", zeros(8)),
       "overflows"},
      {"negative_dim.safetensors", make_file(R"({"x":{"dtype":"F32","shape":[-1,2],"data_offsets":[0,8]}})", zeros(8)),
       "negative dimension"},
      {"float_dim.safetensors", make_file(R"({"x":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", zeros(8)),
       "not an integer"},
      {"three_offsets.safetensors",
       make_file(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8,8]}})", zeros(8)), "two integers"},
      {"negative_offset.safetensors",
       make_file(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", zeros(8)), "negative"},
      {"overlap.safetensors",
       make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                 R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                 zeros(8)),
       "overlap"},
      {"hole.safetensors", make_file(R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", zeros(8)),
       "belong to no tensor"},
      {"trailing.safetensors", make_file("{" + ok_entry + "}", zeros(12)), "belong to no tensor"},
      {"metadata_not_string.safetensors", make_file(R"({"__metadata__":{"format":1}})", ""), "not a string"},
  };
  REQUIRE(cases.size() >= 10);
  for (auto const& c : cases) {
    fs::path const p = write(dir.path, c.file, c.contents);
    CAPTURE(c.file);
    std::string const what = error_of([&] { safetensors_file const f(p); });
    CAPTURE(what);
    REQUIRE_FALSE(what.empty());  // it threw safetensors_error
    CHECK(contains(what, c.file));
    CHECK(contains(what, c.problem));
  }

  // A file that does not exist, and a directory.
  CHECK(contains(error_of([&] { safetensors_file(dir.path / "missing.safetensors"); }), "missing.safetensors"));
  CHECK_THROWS_AS(safetensors_file(dir.path), std::runtime_error);
}

TEST_CASE("safetensors: F16, BF16, F32 and integer tensors convert as specified", "[io][safetensors]") {
  temp_dir const dir;
  // f16: 1, -2, 0.5, 65504 (largest finite), 2^-24 (smallest subnormal), -0
  std::vector<std::uint16_t> const h_bits = {0x3C00, 0xC000, 0x3800, 0x7BFF, 0x0001, 0x8000};
  std::vector<float> const h_vals = {1.0f, -2.0f, 0.5f, 65504.0f, 0x1p-24f, -0.0f};
  // bf16: 1, -2, 0.5, 3.140625, 2^-133 (smallest subnormal), -infinity
  std::vector<std::uint16_t> const b_bits = {0x3F80, 0xC000, 0x3F00, 0x4049, 0x0001, 0xFF80};
  std::vector<float> const b_vals = {1.0f, -2.0f, 0.5f, 3.140625f, 0x1p-133f, -INFINITY};
  // f32: 1 (0x3F800000), pi (0x40490FDB), 1/3 (0x3EAAAAAB)
  std::string f32;
  for (std::uint32_t u : {0x3F800000u, 0x40490FDBu, 0x3EAAAAABu}) append_le(f32, u, 4);
  // i32 ids and i64 values, one too large for int32
  std::string i32;
  for (std::int32_t v : {0, 7, -3, 100}) append_le(i32, static_cast<std::uint32_t>(v), 4);
  std::string i64;
  for (std::int64_t v : {std::int64_t{5}, std::int64_t{1} << 40}) append_le(i64, static_cast<std::uint64_t>(v), 8);

  std::string const header =
      R"({"__metadata__":{"who":"hand"},)"
      R"("h":{"dtype":"F16","shape":[2,3],"data_offsets":[0,12]},)"
      R"("b":{"dtype":"BF16","shape":[3,2],"data_offsets":[12,24]},)"
      R"("f":{"dtype":"F32","shape":[3],"data_offsets":[24,36]},)"
      R"("ids":{"dtype":"I32","shape":[2,2],"data_offsets":[36,52]},)"
      R"("big":{"dtype":"I64","shape":[2],"data_offsets":[52,68]},)"
      R"("empty":{"dtype":"F32","shape":[0,5],"data_offsets":[68,68]}})";
  std::string const data = bits16(h_bits) + bits16(b_bits) + f32 + i32 + i64;
  fs::path const p = write(dir.path, "hand.safetensors", make_file(header + "  ", data));  // padded header

  safetensors_file const file(p);
  CHECK(file.names() == std::vector<std::string>{"b", "big", "empty", "f", "h", "ids"});
  CHECK(file.metadata().at("who") == "hand");
  CHECK(file.info("h").shape == shape_t{2, 3});
  CHECK(file.info("b").begin == 12);
  CHECK(file.info("b").end == 24);
  CHECK(file.bytes("f").size() == 12);

  auto const h = file.read_as<float>("h", {2, 3});
  auto const b = file.read_as<float>("b", {3, 2});
  for (std::size_t i = 0; i < 6; ++i) {
    CAPTURE(i);
    CHECK(h[i] == h_vals[i]);
    CHECK(std::signbit(h[i]) == std::signbit(h_vals[i]));
    CHECK(b[i] == b_vals[i]);
  }
  // Same dtype: the bits come back unchanged.
  auto const h16 = file.read_as<ssm::f16>("h");
  auto const b16 = file.read_as<ssm::bf16>("b");
  for (std::size_t i = 0; i < 6; ++i) {
    CHECK(h16[i].bits == h_bits[i]);
    CHECK(b16[i].bits == b_bits[i]);
  }
  // BF16 -> F16: 1, -2, 0.5, 3.140625 = 0x4248, 2^-133 underflows to +0, -inf.
  std::vector<std::uint16_t> const b_as_h = {0x3C00, 0xC000, 0x3800, 0x4248, 0x0000, 0xFC00};
  auto const bh = file.read_as<ssm::f16>("b");
  for (std::size_t i = 0; i < 6; ++i) CHECK(bh[i].bits == b_as_h[i]);
  // F32 -> BF16 and F16, rounded to nearest even: pi -> 0x4049 / 0x4248, 1/3 -> 0x3EAB / 0x3555.
  auto const fb = file.read_as<ssm::bf16>("f", {3});
  auto const fh = file.read_as<ssm::f16>("f", {3});
  CHECK(fb[0].bits == 0x3F80);
  CHECK(fb[1].bits == 0x4049);
  CHECK(fb[2].bits == 0x3EAB);
  CHECK(fh[0].bits == 0x3C00);
  CHECK(fh[1].bits == 0x4248);
  CHECK(fh[2].bits == 0x3555);
  auto const fd = file.read_as<double>("f");
  CHECK(fd[1] == double(3.14159274101257324f));

  CHECK(file.read_as<std::int64_t>("ids", {2, 2}) == std::vector<std::int64_t>{0, 7, -3, 100});
  CHECK(file.read_as<std::int32_t>("ids") == std::vector<std::int32_t>{0, 7, -3, 100});
  CHECK_THROWS_AS(file.read_as<std::uint32_t>("ids"), safetensors_error);  // -3
  CHECK(file.read_as<std::int64_t>("big") == std::vector<std::int64_t>{5, std::int64_t{1} << 40});
  CHECK(contains(error_of([&] { (void)file.read_as<std::int32_t>("big"); }), "hand.safetensors"));
  CHECK_THROWS_AS(file.read_as<float>("ids"), safetensors_error);
  CHECK_THROWS_AS(file.read_as<std::int64_t>("h"), safetensors_error);

  CHECK(file.read_as<float>("empty", {0, 5}).empty());
  std::string const shape_error = error_of([&] { (void)file.read_as<float>("h", {3, 2}); });
  CHECK(contains(shape_error, "hand.safetensors"));
  CHECK(contains(shape_error, "has shape [2, 3], expected [3, 2]"));
}
