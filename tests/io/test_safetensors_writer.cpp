// The safetensors writer, read back by the reader: every dtype, names, shapes, metadata, and the
// reproducibility of its bytes; and a model saved by save_checkpoint.
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <unistd.h>

#include <ssm/io/safetensors.hpp>
#include <ssm/io/safetensors_writer.hpp>
#include <ssm/model/presets.hpp>
#include <ssm/model/save.hpp>

#include "catch.hpp"

namespace fs = std::filesystem;

namespace {

fs::path scratch_dir(std::string const& name) {
  auto const dir = fs::temp_directory_path() / ("ssm-test-" + name + "-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return dir;
}

std::string file_bytes(fs::path const& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace

TEST_CASE("safetensors writer: what it writes reads back exactly", "[io][writer]") {
  auto const dir = scratch_dir("writer");
  std::vector<float> const f = {1.0f, -2.5f, 3.25f, 0.0f, 1e-3f, -7.0f};
  std::vector<ssm::bf16> const b = {ssm::bf16{0x3F80}, ssm::bf16{0xC020}};  // 1.0, -2.5 by hand
  std::vector<ssm::f16> const h = {ssm::f16{0x3C00}, ssm::f16{0xC100}, ssm::f16{0x7C00}};  // 1, -2.5, inf
  std::vector<std::int64_t> const ids = {5, -1, 1LL << 40};
  auto write = [&](fs::path const& path) {
    ssm::io::safetensors_writer w;
    w.add<float>("z.weight", {2, 3}, f);
    w.add<ssm::bf16>("a.bias", {2}, b);
    w.add<ssm::f16>("m.half", {3, 1}, h);
    w.add<std::int64_t>("ids", {3}, ids);
    w.metadata("format", "pt");
    w.write(path);
  };
  write(dir / "one.safetensors");
  write(dir / "two.safetensors");
  REQUIRE(file_bytes(dir / "one.safetensors") == file_bytes(dir / "two.safetensors"));  // reproducible

  ssm::io::safetensors_file const r(dir / "one.safetensors");
  REQUIRE(r.names() == std::vector<std::string>{"a.bias", "ids", "m.half", "z.weight"});
  REQUIRE(r.info("z.weight").dtype == "F32");
  REQUIRE(r.info("m.half").shape == std::vector<std::int64_t>{3, 1});
  REQUIRE(r.read_as<float>("z.weight", {2, 3}) == f);
  REQUIRE(r.read_as<float>("a.bias") == std::vector<float>{1.0f, -2.5f});
  auto const halves = r.read_as<float>("m.half");
  REQUIRE(halves[1] == -2.5f);
  REQUIRE(std::isinf(halves[2]));
  REQUIRE(r.read_as<std::int64_t>("ids") == ids);
  REQUIRE(r.metadata().at("format") == "pt");

  ssm::io::safetensors_writer dup;
  dup.add<float>("x", {1}, std::span<float const>(f.data(), 1));
  REQUIRE_THROWS_WITH(dup.add<float>("x", {1}, std::span<float const>(f.data(), 1)), Catch::Contains("added twice"));
  REQUIRE_THROWS_WITH(dup.add<float>("y", {2, 2}, std::span<float const>(f.data(), 3)), Catch::Contains("3 values for a shape of 4"));
  fs::remove_all(dir);
}

TEST_CASE("save_checkpoint: mamba_ssm names, shapes and dtypes", "[io][writer]") {
  auto const dir = scratch_dir("save");
  auto const config = ssm::preset_config("tiny");
  auto const w = ssm::random_lm_weights<ssm::bf16>(config, 3);
  ssm::save_checkpoint(w, dir);
  ssm::io::safetensors_file const r(dir / "model.safetensors");
  REQUIRE(r.info("backbone.embedding.weight").shape == std::vector<std::int64_t>{50280, 64});
  REQUIRE(r.info("backbone.embedding.weight").dtype == "BF16");
  REQUIRE(r.info("backbone.layers.1.mixer.conv1d.weight").shape == std::vector<std::int64_t>{128, 1, 4});
  REQUIRE(r.info("backbone.layers.1.mixer.A_log").dtype == "F32");
  REQUIRE_FALSE(r.contains("lm_head.weight"));  // tied
  auto const A_log = r.read_as<float>("backbone.layers.0.mixer.A_log");
  REQUIRE(A_log[5] == Approx(std::log(-w.mixers[0].A.data()[5])));
  auto const config_text = file_bytes(dir / "config.json");
  REQUIRE(config_text.find("\"d_model\": 64") != std::string::npos);
  fs::remove_all(dir);
}
