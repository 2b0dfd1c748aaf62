#pragma once
/// \file
/// \brief Writing safetensors files: a header of sorted names, then the tensors' bytes in order.
///
/// Tensors are added as raw little-endian bytes with a dtype and a shape; `write` lays them out
/// contiguously in name order, pads the JSON header with spaces to a multiple of 8 bytes (as the
/// reference implementation does), and writes the file. The output of the same tensors is the
/// same bytes, so files are reproducible.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include <ssm/core/dtype.hpp>
#include <ssm/core/error.hpp>

namespace ssm::io {

/// \brief Collects tensors, then writes them as one safetensors file.
class safetensors_writer {
 public:
  /// \brief Add a tensor of a storage type, copying its values.
  /// \tparam T `float`, `ssm::f16`, `ssm::bf16`, `std::int32_t` or `std::int64_t`.
  /// \param name the tensor's name. \param shape its dimensions, outermost first.
  /// \param values (product of shape) the values, row-major.
  /// \throws ssm::error if the name is taken or the count does not match the shape.
  template <class T>
  void add(std::string const& name, std::vector<std::int64_t> const& shape, std::span<T const> values) {
    std::uint64_t count = 1;
    for (auto const d : shape) count *= static_cast<std::uint64_t>(d);
    if (count != values.size())
      throw error("safetensors writer: tensor '" + name + "' has " + std::to_string(values.size()) +
                  " values for a shape of " + std::to_string(count));
    if (!tensors_.emplace(name, entry{dtype_name<T>(), shape, {}}).second)
      throw error("safetensors writer: tensor '" + name + "' was added twice");
    auto& bytes = tensors_[name].bytes;
    bytes.resize(values.size() * sizeof(T));
    std::memcpy(bytes.data(), values.data(), bytes.size());
  }

  /// \brief Metadata strings for the header's `__metadata__`.
  /// \param key the key. \param value the value.
  void metadata(std::string const& key, std::string const& value) { metadata_[key] = value; }

  /// \brief Write every tensor added so far to `path`.
  /// \param path the file to create or replace. \throws ssm::error if it cannot be written.
  void write(std::filesystem::path const& path) const {
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!metadata_.empty()) header["__metadata__"] = metadata_;
    std::uint64_t offset = 0;
    for (auto const& [name, t] : tensors_) {
      header[name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.bytes.size()}}};
      offset += t.bytes.size();
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    std::uint64_t const length = text.size();
    char le[8];
    for (int i = 0; i < 8; ++i) le[i] = static_cast<char>((length >> (8 * i)) & 0xFFu);
    out.write(le, 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (auto const& [name, t] : tensors_) out.write(reinterpret_cast<char const*>(t.bytes.data()), static_cast<std::streamsize>(t.bytes.size()));
    if (!out) throw error("safetensors writer: cannot write '" + path.string() + "'");
  }

 private:
  template <class T>
  static std::string dtype_name() {
    if constexpr (std::is_same_v<T, std::int32_t>) return "I32";
    else if constexpr (std::is_same_v<T, std::int64_t>) return "I64";
    else return std::string(dtype_traits<T>::name);
  }

  struct entry {
    std::string dtype;
    std::vector<std::int64_t> shape;
    std::vector<std::byte> bytes;
  };
  std::map<std::string, entry> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace ssm::io
