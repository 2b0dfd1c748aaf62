/// \file
/// \brief Tests of `ssm::io::torch_checkpoint`: the torch.save archives of scripts/make_torch_fixtures.py
/// (fp32/fp16/bf16/f64/integer tensors, a tied pair, views with offsets and strides, protocol 4, ZIP64),
/// a corpus of files malformed in one way each, and every truncation and many mutations of a valid file.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <ssm/io/torch_checkpoint.hpp>

#include "catch.hpp"
#include "support.hpp"


namespace {

using ssm::test::temp_dir;

namespace fs = std::filesystem;
using ssm::io::torch_checkpoint;
using ssm::io::torch_checkpoint_error;
using shape_t = std::vector<std::int64_t>;
using floats = std::vector<float>;

fs::path fixture(std::string const& name) { return fs::path(SSM_FIXTURE_DIR) / "torch" / name; }

std::string read_file(fs::path const& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

fs::path write(fs::path const& p, std::string const& contents) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(contents.data(), static_cast<std::streamsize>(contents.size()));
  return p;
}

/// The message of the torch_checkpoint_error that `f` throws, or "" if it throws none.
template <class F>
std::string error_of(F&& f) {
  return ssm::test::error_of<torch_checkpoint_error>(std::forward<F>(f));
}

using ssm::test::contains;

std::uint32_t float_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

std::uint32_t get_le32(std::string const& s, std::size_t at) {
  std::uint32_t v = 0;
  for (std::size_t i = 0; i < 4; ++i) v |= static_cast<std::uint32_t>(static_cast<unsigned char>(s[at + i])) << (8 * i);
  return v;
}
std::uint32_t get_le16(std::string const& s, std::size_t at) {
  return static_cast<std::uint32_t>(static_cast<unsigned char>(s[at])) |
         static_cast<std::uint32_t>(static_cast<unsigned char>(s[at + 1])) << 8;
}
void put_le32(std::string& s, std::size_t at, std::uint32_t v) {
  for (std::size_t i = 0; i < 4; ++i) s[at + i] = static_cast<char>((v >> (8 * i)) & 0xFFu);
}

/// Where data.pkl, the first entry of a fixture written without ZIP64 and without comment, lies:
/// its data, and the offset of its central-directory record (CRC at +16, sizes at +20 and +24).
struct pickle_location {
  std::size_t data = 0, size = 0, central = 0;
};
pickle_location locate_pickle(std::string const& zip) {
  std::size_t const eocd = zip.size() - 22;
  REQUIRE(get_le32(zip, eocd) == 0x06054b50u);
  pickle_location loc;
  loc.central = get_le32(zip, eocd + 16);
  REQUIRE(get_le32(zip, loc.central) == 0x02014b50u);
  std::size_t const local = get_le32(zip, loc.central + 42);
  REQUIRE(local == 0);
  loc.data = 30 + get_le16(zip, 26) + get_le16(zip, 28);
  loc.size = get_le32(zip, loc.central + 24);
  REQUIRE(zip.substr(loc.central + 46, 16) == "archive/data.pkl");
  return loc;
}

/// Give data.pkl the size `size` and the CRC of its first `size` bytes, so that only the pickle is wrong.
void fix_pickle_entry(std::string& zip, pickle_location const& loc, std::size_t size) {
  auto const crc = ssm::io::detail::torch_ckpt::crc32(reinterpret_cast<std::byte const*>(zip.data() + loc.data), size);
  put_le32(zip, loc.central + 16, crc);
  put_le32(zip, loc.central + 20, static_cast<std::uint32_t>(size));
  put_le32(zip, loc.central + 24, static_cast<std::uint32_t>(size));
}

std::string le_bytes(std::uint64_t v, int bytes) {
  std::string s;
  for (int i = 0; i < bytes; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xFFu));
  return s;
}

/// A zip archive of stored entries (no ZIP64, no alignment), as small as can be.
std::string stored_zip(std::vector<std::pair<std::string, std::string>> const& entries) {
  std::string out, cd;
  for (auto const& [name, data] : entries) {
    auto const crc = ssm::io::detail::torch_ckpt::crc32(reinterpret_cast<std::byte const*>(data.data()), data.size());
    std::string const common = le_bytes(0, 2) + le_bytes(0, 2) + le_bytes(0, 4) + le_bytes(crc, 4) +
                               le_bytes(data.size(), 4) + le_bytes(data.size(), 4) + le_bytes(name.size(), 2) +
                               le_bytes(0, 2);  // flags, method, time and date, crc, sizes, name and extra lengths
    cd += le_bytes(0x02014b50u, 4) + le_bytes(20, 2) + le_bytes(20, 2) + common + le_bytes(0, 2) + le_bytes(0, 2) +
          le_bytes(0, 2) + le_bytes(0, 4) + le_bytes(out.size(), 4) + name;
    out += le_bytes(0x04034b50u, 4) + le_bytes(20, 2) + common + name + data;
  }
  return out + cd + le_bytes(0x06054b50u, 4) + le_bytes(0, 4) + le_bytes(entries.size(), 2) +
         le_bytes(entries.size(), 2) + le_bytes(cd.size(), 4) + le_bytes(out.size(), 4) + le_bytes(0, 2);
}

/// Open a file that may be malformed; if it opens, read every tensor as float and as int64.
/// Only torch_checkpoint_error may come out; return whether the file opened.
bool open_and_read_everything(fs::path const& p) {
  try {
    torch_checkpoint const ckpt(p);
    for (auto const& name : ckpt.names()) {
      (void)ckpt.info(name);
      try {
        (void)ckpt.read_as<float>(name);
      } catch (torch_checkpoint_error const&) {
      }
      try {
        (void)ckpt.read_as<std::int64_t>(name);
      } catch (torch_checkpoint_error const&) {
      }
    }
    return true;
  } catch (torch_checkpoint_error const&) {
    return false;
  }
}

}  // namespace

TEST_CASE("torch checkpoint: valid.bin loads with the expected names, dtypes, shapes and layouts",
          "[io][torch]") {
  torch_checkpoint const ckpt(fixture("valid.bin"));
  CHECK(ckpt.archive_name() == "archive");
  CHECK(ckpt.names() == std::vector<std::string>{"b16", "backbone.embeddings.weight", "empty", "f64", "h16", "i32",
                                                 "ids", "lm_head.weight", "param", "scalar", "tail", "w32", "w32_t",
                                                 "window"});
  CHECK(ckpt.contains("w32"));
  CHECK_FALSE(ckpt.contains("w33"));

  std::map<std::string, std::pair<std::string, shape_t>> const expected = {
      {"w32", {"F32", {2, 3}}},   {"w32_t", {"F32", {3, 2}}},  {"h16", {"F16", {5}}},     {"b16", {"BF16", {2, 2}}},
      {"tail", {"F32", {4}}},     {"window", {"F32", {2, 2}}}, {"scalar", {"F32", {}}},   {"ids", {"I64", {4}}},
      {"i32", {"I32", {2, 2}}},   {"f64", {"F64", {2}}},       {"param", {"F32", {3}}},   {"empty", {"F32", {0, 3}}},
      {"lm_head.weight", {"F32", {3, 2}}}};
  for (auto const& [name, want] : expected) {
    CAPTURE(name);
    CHECK(ckpt.info(name).dtype == want.first);
    CHECK(ckpt.info(name).shape == want.second);
  }
  CHECK(ckpt.info("scalar").numel() == 1);
  CHECK(ckpt.info("empty").numel() == 0);

  // Layouts: the transpose shares the storage of w32 with swapped strides; offsets count elements,
  // begin/end bytes within the storage.
  auto const& t = ckpt.layout("w32_t");
  CHECK(t.storage_key == "0");
  CHECK(t.location == "cpu");
  CHECK(t.storage_numel == 6);
  CHECK(t.stride == shape_t{1, 3});
  CHECK_FALSE(t.contiguous);
  CHECK(ckpt.layout("w32").contiguous);
  CHECK(ckpt.layout("w32").stride == shape_t{3, 1});
  CHECK(ckpt.layout("tail").storage_offset == 6);
  CHECK(ckpt.layout("tail").contiguous);
  CHECK(ckpt.info("tail").begin == 24);
  CHECK(ckpt.info("tail").end == 40);
  CHECK(ckpt.layout("window").storage_offset == 1);
  CHECK_FALSE(ckpt.layout("window").contiguous);
  CHECK(ckpt.info("window").begin == 4);
  CHECK(ckpt.info("window").end == 32);  // up to element 7 of the storage
  CHECK(ckpt.layout("scalar").stride.empty());
  CHECK(ckpt.info("empty").begin == ckpt.info("empty").end);

  // The tied pair, and views of one storage.
  CHECK(ckpt.shares_storage("lm_head.weight", "backbone.embeddings.weight"));
  CHECK(ckpt.shares_storage("w32", "w32_t"));
  CHECK(ckpt.shares_storage("tail", "window"));
  CHECK_FALSE(ckpt.shares_storage("w32", "h16"));
  CHECK_THROWS_AS(ckpt.shares_storage("w32", "nope"), torch_checkpoint_error);
  CHECK_THROWS_AS(ckpt.info("nope"), torch_checkpoint_error);
  CHECK_THROWS_AS(ckpt.layout("nope"), torch_checkpoint_error);
}

TEST_CASE("torch checkpoint: valid.bin reads back the values it was written with", "[io][torch]") {
  torch_checkpoint const ckpt(fixture("valid.bin"));

  // fp32, and its transpose (a non-contiguous view): element (i, j) of w32_t is storage[i + 3 j].
  auto const w = ckpt.read_as<float>("w32", {2, 3});
  CHECK(w == floats{1.0f, -2.5f, 0.5f, 3.0f, 0.25f, -8.0f});
  CHECK(float_bits(w[0]) == 0x3F800000u);
  CHECK(float_bits(w[1]) == 0xC0200000u);
  CHECK(ckpt.read_as<float>("w32_t", {3, 2}) == floats{1.0f, 3.0f, -2.5f, 0.25f, 0.5f, -8.0f});
  auto const wb = ckpt.read_as<ssm::bf16>("w32_t");  // F32 -> BF16, all exact
  std::vector<std::uint16_t> const wb_bits = {0x3F80, 0x4040, 0xC020, 0x3E80, 0x3F00, 0xC100};
  for (std::size_t i = 0; i < 6; ++i) CHECK(wb[i].bits == wb_bits[i]);

  // fp16: 1, -2.5, 65504 (largest finite), 2^-24 (smallest subnormal), -0.
  auto const h = ckpt.read_as<float>("h16", {5});
  floats const h_vals = {1.0f, -2.5f, 65504.0f, 0x1p-24f, -0.0f};
  std::vector<std::uint16_t> const h_bits = {0x3C00, 0xC100, 0x7BFF, 0x0001, 0x8000};
  auto const h16 = ckpt.read_as<ssm::f16>("h16");
  for (std::size_t i = 0; i < 5; ++i) {
    CAPTURE(i);
    CHECK(h[i] == h_vals[i]);
    CHECK(std::signbit(h[i]) == std::signbit(h_vals[i]));
    CHECK(h16[i].bits == h_bits[i]);  // same dtype: the bits unchanged
  }

  // bf16: 1, -2.5, 3.140625, -infinity; to f16: 0x3C00, 0xC100, 0x4248, 0xFC00.
  auto const b = ckpt.read_as<float>("b16", {2, 2});
  CHECK(b[0] == 1.0f);
  CHECK(b[1] == -2.5f);
  CHECK(b[2] == 3.140625f);
  CHECK(b[3] == -INFINITY);
  auto const bb = ckpt.read_as<ssm::bf16>("b16");
  auto const bh = ckpt.read_as<ssm::f16>("b16");
  std::vector<std::uint16_t> const b_bits = {0x3F80, 0xC020, 0x4049, 0xFF80};
  std::vector<std::uint16_t> const b_as_h = {0x3C00, 0xC100, 0x4248, 0xFC00};
  for (std::size_t i = 0; i < 4; ++i) {
    CHECK(bb[i].bits == b_bits[i]);
    CHECK(bh[i].bits == b_as_h[i]);
  }

  // The tied pair reads the same values.
  floats const emb = {0.0f, 1.0f, -1.0f, 2.0f, -2.5f, 1.5f};
  CHECK(ckpt.read_as<float>("backbone.embeddings.weight", {3, 2}) == emb);
  CHECK(ckpt.read_as<float>("lm_head.weight", {3, 2}) == emb);

  // Storage offsets: storage 4 holds 10, 11, ..., 19; tail starts at 6, window = elements 1, 3, 5, 7.
  CHECK(ckpt.read_as<float>("tail", {4}) == floats{16.0f, 17.0f, 18.0f, 19.0f});
  CHECK(ckpt.read_as<float>("window", {2, 2}) == floats{11.0f, 13.0f, 15.0f, 17.0f});
  CHECK(ckpt.read_as<double>("window") == std::vector<double>{11.0, 13.0, 15.0, 17.0});

  // A scalar, a parameter, an empty tensor, f64.
  CHECK(ckpt.read_as<float>("scalar") == floats{7.25f});
  CHECK(ckpt.read_as<float>("param", {3}) == floats{1.0f, 2.0f, 3.0f});
  CHECK(ckpt.read_as<float>("empty", {0, 3}).empty());
  CHECK(ckpt.read_as<double>("f64") == std::vector<double>{0.1, -2.5});
  CHECK(ckpt.read_as<float>("f64") == floats{0.1f, -2.5f});

  // Integers: exact, range-checked; reals and integers do not mix.
  CHECK(ckpt.read_as<std::int64_t>("ids", {4}) == std::vector<std::int64_t>{0, 5, -3, std::int64_t{1} << 40});
  CHECK(ckpt.read_as<std::int64_t>("i32", {2, 2}) == std::vector<std::int64_t>{0, 7, -3, 100});
  CHECK(ckpt.read_as<std::int32_t>("i32") == std::vector<std::int32_t>{0, 7, -3, 100});
  std::string const range_error = error_of([&] { (void)ckpt.read_as<std::int32_t>("ids"); });
  CHECK(contains(range_error, "valid.bin"));
  CHECK(contains(range_error, "element 3 = 1099511627776 does not fit in int32_t"));
  CHECK(contains(error_of([&] { (void)ckpt.read_as<std::uint32_t>("i32"); }), "element 2 = -3"));
  CHECK(contains(error_of([&] { (void)ckpt.read_as<float>("ids"); }), "cannot read tensor 'ids' of dtype I64 as float"));
  CHECK_THROWS_AS(ckpt.read_as<std::int64_t>("w32"), torch_checkpoint_error);

  std::string const shape_error = error_of([&] { (void)ckpt.read_as<float>("w32", {3, 2}); });
  CHECK(contains(shape_error, "pytorch checkpoint '"));
  CHECK(contains(shape_error, "valid.bin"));
  CHECK(contains(shape_error, "has shape [2, 3], expected [3, 2]"));
  CHECK(contains(error_of([&] { (void)ckpt.read_as<float>("nope"); }), "no tensor named 'nope'"));
}

TEST_CASE("torch checkpoint: protocol 4, another archive folder and a plain dict", "[io][torch]") {
  torch_checkpoint const ckpt(fixture("valid_p4.bin"));
  CHECK(ckpt.archive_name() == "pytorch_model");
  CHECK(ckpt.names() == std::vector<std::string>{"a", "a_t", "h"});
  CHECK(ckpt.read_as<float>("a", {2, 2}) == floats{1.0f, -2.5f, 0.5f, 3.0f});
  CHECK(ckpt.read_as<float>("a_t", {2, 2}) == floats{1.0f, 0.5f, -2.5f, 3.0f});
  CHECK(ckpt.read_as<float>("h", {2}) == floats{0.5f, -2.5f});
  CHECK(ckpt.shares_storage("a", "a_t"));
}

TEST_CASE("torch checkpoint: a file written by torch.save itself loads and reads", "[io][torch]") {
  // The language-model fixtures (scripts/make_lm_fixtures.py, made with torch) hold one, when present.
  fs::path const real = fs::path(SSM_FIXTURE_DIR) / "lm" / "mamba_ssm_f16" / "pytorch_model.bin";
  if (!fs::exists(real)) return;
  torch_checkpoint const ckpt(real);
  REQUIRE_FALSE(ckpt.names().empty());
  for (auto const& name : ckpt.names()) {
    CAPTURE(name);
    CHECK(ckpt.read_as<float>(name).size() == static_cast<std::size_t>(ckpt.info(name).numel()));
  }
  if (ckpt.contains("lm_head.weight") && ckpt.contains("backbone.embedding.weight") &&
      ckpt.shares_storage("lm_head.weight", "backbone.embedding.weight")) {
    CHECK(ckpt.read_as<float>("lm_head.weight") == ckpt.read_as<float>("backbone.embedding.weight"));
  }
}

TEST_CASE("torch checkpoint: the opcodes torch rarely writes are read", "[io][torch]") {
  // FRAME, LONG_BINPUT/LONG_BINGET, MEMOIZE, BINUNICODE8, BININT2, TUPLE1/TUPLE3, _rebuild_parameter, and a
  // BUILD state holding BINFLOAT, NEWTRUE, NONE in a list (see opcodes_pickle in the script).
  torch_checkpoint const ckpt(fixture("valid_opcodes.bin"));
  CHECK(ckpt.names() == std::vector<std::string>{"x", "y", "z"});
  CHECK(ckpt.read_as<float>("x", {2}) == floats{1.0f, -2.5f});
  CHECK(ckpt.read_as<float>("y", {1}) == floats{-2.5f});  // a parameter, at storage offset 1
  CHECK(ckpt.layout("y").storage_offset == 1);
  CHECK(ckpt.read_as<float>("z", {1, 1, 2}) == floats{1.0f, -2.5f});
  CHECK(ckpt.layout("z").contiguous);  // the stride of a dimension of size 1 does not matter
  CHECK(ckpt.shares_storage("x", "z"));
}

TEST_CASE("torch checkpoint: ZIP64 records and extra fields are read", "[io][torch]") {
  // data.pkl has all three ZIP64 fields (size, compressed size, offset), the storages only the offset;
  // the classic end record holds 0xFFFF.. markers and the ZIP64 record the real values.
  torch_checkpoint const ckpt(fixture("zip64.bin"));
  CHECK(ckpt.names() == std::vector<std::string>{"x", "y"});
  CHECK(ckpt.read_as<float>("x", {3}) == floats{1.0f, -2.5f, 0.5f});
  CHECK(ckpt.read_as<float>("y", {2}) == floats{1.0f, -2.5f});
  CHECK(ckpt.info("y").dtype == "BF16");
}

TEST_CASE("torch checkpoint: malformed files throw an error that names the file and the problem",
          "[io][torch]") {
  std::map<std::string, std::string> const cases = {
      // the zip archive
      {"empty.bin", "too short to be a zip archive (0 bytes)"},
      {"not_a_zip.bin", "no end of central directory record"},
      {"truncated.bin", "no end of central directory record: not a zip archive, or truncated"},
      {"legacy_pickle.bin", "legacy torch.save format"},
      {"broken_directory.bin", "central directory entry 0 has a bad signature"},
      {"cd_offset_wrong.bin", "does not end where the end of central directory record begins"},
      {"zip64_no_locator.bin", "there is no ZIP64 locator"},
      {"zip64_short_extra.bin", "ZIP64 extra field of entry 'archive/.format_version' is too short"},
      {"entry_offset_past_end.bin", "local header of entry 'archive/data/0' at offset 10000000 is past the end"},
      {"entry_size_past_end.bin", "runs past the start of the central directory"},
      {"compressed.bin", "entry 'archive/data.pkl' is compressed (method 8, deflate)"},
      {"encrypted.bin", "entry 'archive/data.pkl' is encrypted"},
      {"no_data_pkl.bin", "no data.pkl entry"},
      {"bad_crc.bin", "entry 'archive/data.pkl' is corrupt: CRC-32 mismatch"},
      {"duplicate_entry.bin", "two entries named 'archive/version'"},
      {"big_endian.bin", "byteorder is 'big': only little-endian"},
      {"local_name_mismatch.bin", "names another entry"},
      // the pickle
      {"global_os_system.bin", "GLOBAL 'os.system' is not allowed"},
      {"global_builtins_eval.bin", "GLOBAL 'builtins.eval' is not allowed"},
      {"global_posix_system.bin", "GLOBAL 'posix.system' is not allowed"},
      {"global_quint8_storage.bin", "GLOBAL 'torch.QUInt8Storage' is not allowed"},
      {"reduce_storage_class.bin", "REDUCE of 'torch.FloatStorage' is not allowed"},
      {"unknown_opcode.bin", "unknown opcode 0xff"},
      {"unsupported_opcode.bin", "unsupported opcode 0x69 (INST)"},
      {"stack_underflow.bin", "(TUPLE2): stack underflow"},
      {"memo_out_of_range.bin", "memo index 7 is not defined"},
      {"truncated_pickle.bin", "truncated"},
      {"string_length_bomb.bin", "runs past the end of the pickle"},
      {"mark_bomb.bin", "MARKs nest deeper than 256 levels"},
      {"trailing_after_stop.bin", "2 bytes follow the STOP opcode"},
      {"stop_with_two_values.bin", "STOP leaves 2 values"},
      {"protocol_6.bin", "unsupported pickle protocol 6"},
      {"long_too_big.bin", "an integer of 9 bytes does not fit in 64 bits"},
      {"bad_utf8_key.bin", "a string is not valid UTF-8"},
      {"setitems_odd.bin", "SETITEMS with an odd number of values"},
      {"build_on_tensor.bin", "BUILD on an object of type tensor is not supported"},
      {"rebuild_wrong_arity.bin", "_rebuild_tensor_v2 takes 6 or 7 arguments, not 5"},
      {"pid_not_storage.bin", "the persistent id is not a tuple ('storage', type, key, location, numel)"},
      // the state dict
      {"not_a_dict.bin", "the pickled object is of type list, not a dict"},
      {"value_not_tensor.bin", "the state dict's entry 'x' is of type int, not a tensor"},
      {"duplicate_key.bin", "the state dict holds the key 'x' twice"},
      {"storage_type_conflict.bin", "storage '0' is named twice with different types or sizes"},
      // tensors against their storages
      {"storage_key_missing.bin", "tensor 'x': its storage key '0' has no entry 'archive/data/0'"},
      {"storage_too_small.bin", "reach element 15 of storage '0', which holds only 10 (storage too small)"},
      {"stride_too_large.bin", "reach element 11 of storage '0', which holds only 6 (storage too small)"},
      {"offset_too_large.bin", "reach element 10 of storage '0', which holds only 10 (storage too small)"},
      {"storage_entry_size.bin", "storage '0' of 6 F32 elements needs 6 x 4 bytes, but its entry holds 20"},
      {"negative_size.bin", "tensor 'x': negative size -1 in dimension 0"},
      {"negative_stride.bin", "tensor 'x': negative stride -1 in dimension 0"},
      {"negative_offset.bin", "tensor 'x': negative storage offset -1"},
      {"shape_overflow.bin", "the product of the size [1099511627776, 1099511627776] overflows 64 bits"},
      {"expanded_view.bin", "views that repeat elements (stride 0, expand) are not supported"},
  };
  REQUIRE(cases.size() >= 15);

  // Every file of the corpus has its case, and every case its file.
  std::set<std::string> on_disk;
  for (auto const& entry : fs::directory_iterator(fixture("bad"))) on_disk.insert(entry.path().filename().string());
  std::set<std::string> listed;
  for (auto const& c : cases) listed.insert(c.first);
  CHECK(on_disk == listed);

  for (auto const& [file, problem] : cases) {
    CAPTURE(file);
    fs::path const p = fixture("bad") / file;
    std::string const what = error_of([&] { torch_checkpoint const ckpt(p); });
    CAPTURE(what);
    REQUIRE_FALSE(what.empty());  // it threw torch_checkpoint_error
    CHECK(contains(what, "pytorch checkpoint '"));
    CHECK(contains(what, file));
    CHECK(contains(what, problem));
  }

  // A file that does not exist, and a directory.
  temp_dir const dir;
  std::string const missing = error_of([&] { torch_checkpoint const ckpt(dir.path / "missing.bin"); });
  CHECK(contains(missing, "missing.bin"));
  CHECK(contains(missing, "does not exist"));
  CHECK_THROWS_AS(torch_checkpoint(dir.path), ssm::error);
}

TEST_CASE("torch checkpoint: data.pkl is found in the archive's one folder; size limits hold", "[io][torch]") {
  temp_dir const dir;
  std::string const empty_dict = "\x80\x02}q\x01.";  // {} memoized at 1
  auto const error_for = [&](std::string const& name, std::string const& zip) {
    fs::path const p = write(dir.path / name, zip);
    std::string const what = error_of([&] { torch_checkpoint const ckpt(p); });
    CHECK(contains(what, name));
    return what;
  };

  // Any folder name; an empty state dict is a valid (empty) checkpoint.
  torch_checkpoint const ckpt(write(dir.path / "empty_dict.bin", stored_zip({{"my-model_v2/data.pkl", empty_dict}})));
  CHECK(ckpt.archive_name() == "my-model_v2");
  CHECK(ckpt.names().empty());
  CHECK(contains(error_for("nested.bin", stored_zip({{"a/b/data.pkl", empty_dict}})), "no data.pkl entry"));
  CHECK(contains(error_for("top.bin", stored_zip({{"data.pkl", empty_dict}})), "no data.pkl entry"));
  CHECK(contains(error_for("two.bin", stored_zip({{"a/data.pkl", empty_dict}, {"b/data.pkl", empty_dict}})),
                 "two data.pkl entries: 'a/data.pkl' and 'b/data.pkl'"));
  CHECK(contains(error_for("empty_name.bin", stored_zip({{"a/data.pkl", empty_dict}, {"", ""}})), "empty name"));

  // A stack of more than 2^20 values, and more than 2^23 values created in all (a list grown by APPEND).
  std::string const stack_bomb = "\x80\x02" + std::string((1u << 20) + 1, 'N') + ".";
  CHECK(contains(error_for("stack_bomb.bin", stored_zip({{"a/data.pkl", stack_bomb}})),
                 "more than 1048576 values on the stack"));
  std::string value_bomb = "\x80\x02]";
  for (std::size_t k = 0; k < (std::size_t{1} << 23); ++k) value_bomb += "Na";
  CHECK(contains(error_for("value_bomb.bin", stored_zip({{"a/data.pkl", value_bomb + "."}})),
                 "creates more than 8388608 values"));
}

TEST_CASE("torch checkpoint: every truncation of a valid file is refused", "[io][torch]") {
  temp_dir const dir;
  std::string const valid = read_file(fixture("valid.bin"));
  REQUIRE(valid.size() > 1000);
  fs::path const p = dir.path / "cut.bin";
  for (std::size_t n = 0; n < valid.size(); ++n) {
    write(p, valid.substr(0, n));
    CAPTURE(n);
    std::string const what = error_of([&] { torch_checkpoint const ckpt(p); });
    REQUIRE(contains(what, "cut.bin"));
  }

  // Truncating only the pickle (the zip directory made consistent again): always "truncated".
  pickle_location const loc = locate_pickle(valid);
  for (std::size_t n = 0; n < loc.size; ++n) {
    std::string zip = valid;
    fix_pickle_entry(zip, loc, n);
    write(p, zip);
    CAPTURE(n);
    std::string const what = error_of([&] { torch_checkpoint const ckpt(p); });
    REQUIRE(contains(what, "truncated"));
  }
}

TEST_CASE("torch checkpoint: mutated files throw torch_checkpoint_error or load, never anything else",
          "[io][torch]") {
  temp_dir const dir;
  std::string const valid = read_file(fixture("valid.bin"));
  pickle_location const loc = locate_pickle(valid);
  fs::path const p = dir.path / "mutant.bin";

  // Every byte of the pickle, replaced by a few values (its CRC fixed so that the unpickler sees it).
  int opened = 0, refused = 0;
  for (std::size_t at = 0; at < loc.size; ++at) {
    for (int const v : {0x00, 0x01, 0x7F, 0x80, 0xFF, int{'('}}) {
      std::string zip = valid;
      if (static_cast<unsigned char>(zip[loc.data + at]) == v) continue;
      zip[loc.data + at] = static_cast<char>(v);
      fix_pickle_entry(zip, loc, loc.size);
      write(p, zip);
      CAPTURE(at, v);
      (open_and_read_everything(p) ? opened : refused)++;
    }
  }
  CHECK(refused > 0);

  // Random bytes anywhere in the file.
  std::mt19937 rng(20240601);
  std::uniform_int_distribution<std::size_t> where(0, valid.size() - 1);
  std::uniform_int_distribution<int> byte(0, 255);
  for (int k = 0; k < 2000; ++k) {
    std::string zip = valid;
    int const changes = 1 + k % 4;
    for (int c = 0; c < changes; ++c) zip[where(rng)] = static_cast<char>(byte(rng));
    write(p, zip);
    CAPTURE(k);
    (open_and_read_everything(p) ? opened : refused)++;
  }
  CHECK(opened > 0);
}

// Hidden (run it with `test_io "[large]"`): it writes a sparse file of a little over 4 GiB, which
// takes no disk space on Linux file systems but might on others.
TEST_CASE("torch checkpoint: entries past 4 GiB, found through ZIP64 offsets", "[.][io][torch][large]") {
  temp_dir const dir;
  std::string const valid = read_file(fixture("valid.bin"));
  auto const le = le_bytes;

  // The entries of valid.bin moved past 4 GiB: each central-directory record gets its local header's
  // offset through a ZIP64 extra field (local headers hold no offsets, so they move unchanged).
  std::size_t const eocd = valid.size() - 22;
  std::size_t const entries = get_le16(valid, eocd + 10);
  std::uint32_t const cd_offset = get_le32(valid, eocd + 16);
  std::uint64_t const gap = (std::uint64_t{1} << 32) + 4096;
  std::string cd;
  std::size_t at = cd_offset;
  for (std::size_t k = 0; k < entries; ++k) {
    REQUIRE(get_le32(valid, at) == 0x02014b50u);
    std::size_t const name_len = get_le16(valid, at + 28);
    REQUIRE(get_le16(valid, at + 30) == 0);  // no extra field, no comment in valid.bin's directory
    REQUIRE(get_le16(valid, at + 32) == 0);
    std::string record = valid.substr(at, 46 + name_len);
    std::uint64_t const local = get_le32(valid, at + 42);
    put_le32(record, 42, 0xFFFFFFFFu);
    record[30] = 12;  // extra field length
    cd += record + le(1, 2) + le(8, 2) + le(local + gap, 8);
    at += 46 + name_len;
  }
  std::uint64_t const new_cd = gap + cd_offset;
  std::string tail = valid.substr(0, cd_offset) + cd;
  tail += le(0x06064b50u, 4) + le(44, 8) + le(45, 2) + le(45, 2) + le(0, 4) + le(0, 4) + le(entries, 8) +
          le(entries, 8) + le(cd.size(), 8) + le(new_cd, 8);
  tail += le(0x07064b50u, 4) + le(0, 4) + le(new_cd + cd.size(), 8) + le(1, 4);
  tail += le(0x06054b50u, 4) + le(0, 4) + le(0xFFFF, 2) + le(0xFFFF, 2) + le(cd.size(), 4) + le(0xFFFFFFFFu, 4) +
          le(0, 2);
  fs::path const p = dir.path / "big.bin";
  {
    std::ofstream f(p, std::ios::binary);
    f.seekp(static_cast<std::streamoff>(gap));  // a hole: the file is sparse
    f.write(tail.data(), static_cast<std::streamsize>(tail.size()));
    REQUIRE(f.good());
  }
  REQUIRE(fs::file_size(p) > (std::uintmax_t{1} << 32));

  torch_checkpoint const big(p);
  torch_checkpoint const small(fixture("valid.bin"));
  REQUIRE(big.names() == small.names());
  for (auto const& name : small.names()) {
    CAPTURE(name);
    CHECK(big.info(name).dtype == small.info(name).dtype);
    if (small.info(name).dtype[0] == 'I') {
      CHECK(big.read_as<std::int64_t>(name) == small.read_as<std::int64_t>(name));
    } else {
      CHECK(big.read_as<float>(name) == small.read_as<float>(name));
    }
  }
}
