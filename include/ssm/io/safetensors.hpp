#pragma once
/// \file
/// \brief A minimal, defensive reader of the safetensors format (the checkpoint format of HuggingFace).
///
/// A safetensors file is: an unsigned 64-bit little-endian header length \f$n\f$; \f$n\f$ bytes of UTF-8
/// JSON, an object that maps each tensor name to `{"dtype": "F32", "shape": [..], "data_offsets": [b, e]}`
/// and may hold a `"__metadata__"` object of string values; then the data section, in which tensor
/// `name` occupies bytes \f$[b, e)\f$, row-major (C order), little-endian.
///
/// `ssm::io::safetensors_file` memory-maps the file (POSIX `mmap`, read-only and private; where
/// `<sys/mman.h>` is missing it reads the whole file instead), so opening a multi-GB checkpoint
/// costs neither its size in memory nor the time to read it: the pages of a tensor are read from
/// disk when the tensor is. It validates the file completely before any tensor is read, as the
/// reference implementation does: every entry must be well formed, the dtype known, the shape
/// non-negative with a product that fits in 64 bits, the byte range consistent with shape and dtype,
/// and the tensors must tile the data section exactly (no overlap, no hole, no trailing bytes).
/// Anything else throws `ssm::io::safetensors_error`, whose message names the file and the problem;
/// a malformed file never crashes, hangs or makes the reader allocate much more than the file's size.
///
/// As with any memory-mapped file, the file must not be truncated or rewritten in place while a
/// `safetensors_file` (or a copy of it) is open: the operating system would then signal the process
/// (SIGBUS) when a vanished page is read. Replacing the file (writing a new one and renaming it over
/// the old, as tools do) is safe.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#if __has_include(<sys/mman.h>)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
/// \brief 1 where `ssm::io::safetensors_file` memory-maps files (POSIX), 0 where it reads them whole.
#define SSM_SAFETENSORS_MMAP 1
#else
/// \brief 1 where `ssm::io::safetensors_file` memory-maps files (POSIX), 0 where it reads them whole.
#define SSM_SAFETENSORS_MMAP 0
#endif

#include <nlohmann/json.hpp>

#include <ssm/core/dtype.hpp>
#include <ssm/core/error.hpp>

namespace ssm::io {

/// \brief The error thrown for a missing, unreadable or malformed safetensors file, or a bad request.
///
/// `what()` reads: safetensors file 'PATH': PROBLEM, with PATH the file's path and PROBLEM the
/// description of what is wrong.
class safetensors_error : public ssm::error {
 public:
  /// \brief Build the message from the file's path and a description of the problem.
  /// \param path the file concerned
  /// \param problem what is wrong with it
  safetensors_error(std::string const& path, std::string const& problem)
      : ssm::error("safetensors file '" + path + "': " + problem) {}
};

/// \brief Where and how one tensor is stored.
struct tensor_info {
  std::string dtype;                ///< safetensors dtype string: "F32", "F16", "BF16", "I64", ...
  std::vector<std::int64_t> shape;  ///< dimensions, outermost first (row-major); empty for a scalar
  std::uint64_t begin = 0;          ///< first byte, relative to the start of the data section
  std::uint64_t end = 0;            ///< one past the last byte, relative to the start of the data section

  /// \brief Number of elements: the product of `shape` (1 for a scalar).
  /// \return the element count (validated on load not to overflow).
  [[nodiscard]] std::int64_t numel() const {
    std::int64_t n = 1;
    for (auto d : shape) n *= d;  // validated on load: cannot overflow
    return n;
  }
  /// \brief Number of bytes of the data, `end - begin`.
  /// \return the byte count, `numel()` times the dtype's size.
  [[nodiscard]] std::uint64_t nbytes() const { return end - begin; }
};

namespace detail {

/// \brief Size in bytes of one element of a safetensors dtype, or 0 if the dtype is unknown.
inline std::size_t dtype_itemsize(std::string_view dtype) {
  static constexpr std::pair<std::string_view, std::size_t> table[] = {
      {"BOOL", 1}, {"U8", 1},       {"I8", 1},       {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"I16", 2},
      {"U16", 2},  {"F16", 2},      {"BF16", 2},     {"I32", 4},     {"U32", 4},     {"F32", 4},
      {"F64", 8},  {"I64", 8},      {"U64", 8}};
  for (auto const& [name, size] : table) {
    if (name == dtype) return size;
  }
  return 0;
}

/// \brief Read an unsigned integer of type `U` stored little-endian at `p` (no alignment needed).
template <class U>
U load_le(std::byte const* p) {
  static_assert(std::is_unsigned_v<U>);
  U value = 0;
  for (std::size_t i = 0; i < sizeof(U); ++i) {
    value |= static_cast<U>(static_cast<U>(std::to_integer<std::uint8_t>(p[i])) << (8 * i));
  }
  return value;
}

/// \brief Read a value of arithmetic type `V` stored little-endian at `p` (no alignment needed).
template <class V>
V load_value(std::byte const* p) {
  using bits_t = std::conditional_t<sizeof(V) == 1, std::uint8_t,
                 std::conditional_t<sizeof(V) == 2, std::uint16_t,
                 std::conditional_t<sizeof(V) == 4, std::uint32_t, std::uint64_t>>>;
  static_assert(sizeof(V) == sizeof(bits_t));
  bits_t const bits = load_le<bits_t>(p);
  V value;
  std::memcpy(&value, &bits, sizeof(V));
  return value;
}

/// \brief Render a shape as `[d0, d1, ...]` for messages.
inline std::string shape_string(std::vector<std::int64_t> const& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

/// \brief A readable name of a destination type, for messages.
template <class T>
std::string type_name() {
  if constexpr (std::is_same_v<T, float>) return "float";
  else if constexpr (std::is_same_v<T, double>) return "double";
  else if constexpr (std::is_same_v<T, ssm::f16>) return "ssm::f16";
  else if constexpr (std::is_same_v<T, ssm::bf16>) return "ssm::bf16";
  else if constexpr (std::is_signed_v<T>) return "int" + std::to_string(8 * sizeof(T)) + "_t";
  else return "uint" + std::to_string(8 * sizeof(T)) + "_t";
}

/// \brief Destination types that hold real numbers: `float`, `double`, `ssm::f16`, `ssm::bf16`.
template <class T>
inline constexpr bool is_real_v = std::is_same_v<T, float> || std::is_same_v<T, double> ||
                                  std::is_same_v<T, ssm::f16> || std::is_same_v<T, ssm::bf16>;

/// \brief Destination types that hold integers (`bool` and the character types excluded).
template <class T>
inline constexpr bool is_integer_v =
    std::is_integral_v<T> && !std::is_same_v<T, bool> && !std::is_same_v<T, char> &&
    !std::is_same_v<T, wchar_t> && !std::is_same_v<T, char8_t> && !std::is_same_v<T, char16_t> &&
    !std::is_same_v<T, char32_t>;

/// \brief Convert a real value of storage type `S` to the destination type `T` (see `read_as`).
template <class T, class S>
T convert_real(S x) {
  if constexpr (std::is_same_v<T, S>) {
    return x;  // same storage type: the bits are copied unchanged
  } else if constexpr (std::is_same_v<S, double>) {
    if constexpr (std::is_same_v<T, float>) return static_cast<float>(x);
    else return ssm::from_float<T>(static_cast<float>(x));  // (two roundings for f16/bf16)
  } else {
    float const f = ssm::to_float(x);  // exact for float, f16 and bf16
    if constexpr (std::is_same_v<T, float>) return f;
    else if constexpr (std::is_same_v<T, double>) return static_cast<double>(f);
    else return ssm::from_float<T>(f);
  }
}

/// \brief The bytes of a whole file, read-only: a private memory mapping where POSIX `mmap` exists, a
/// copy in memory elsewhere. Neither copyable nor movable: share it through a `shared_ptr`.
class file_bytes {
 public:
  file_bytes() = default;
  file_bytes(file_bytes const&) = delete;
  file_bytes& operator=(file_bytes const&) = delete;
  ~file_bytes() {
#if SSM_SAFETENSORS_MMAP
    if (mapping_ != nullptr) ::munmap(mapping_, size_);
#endif
  }

  /// Map (or read) the regular file at `path`; on failure, call `fail(problem)`, which must throw.
  template <class Fail>
  static std::shared_ptr<file_bytes const> open(std::filesystem::path const& path, Fail const& fail) {
    auto out = std::make_shared<file_bytes>();
    std::error_code ec;
    // Checked before opening: opening a FIFO for reading would block.
    if (!std::filesystem::is_regular_file(path, ec)) fail("does not exist or is not a regular file");
#if SSM_SAFETENSORS_MMAP
    int const fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail("cannot open the file: " + std::generic_category().message(errno));
    struct ::stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size < 0) {
      ::close(fd);
      fail("does not exist or is not a regular file");
    }
    constexpr auto max_size = static_cast<std::uintmax_t>(std::numeric_limits<std::ptrdiff_t>::max());
    if (static_cast<std::uintmax_t>(st.st_size) > max_size) {
      ::close(fd);
      fail("file too large");
    }
    out->size_ = static_cast<std::size_t>(st.st_size);
    if (out->size_ > 0) {  // mmap refuses a length of 0; an empty file has no bytes to map
      void* const p = ::mmap(nullptr, out->size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        int const err = errno;
        ::close(fd);
        fail("cannot map the file into memory: " + std::generic_category().message(err));
      }
      out->mapping_ = p;
      out->data_ = static_cast<std::byte const*>(p);
    }
    ::close(fd);  // the mapping stays valid without the descriptor
#else
    std::uintmax_t const size = std::filesystem::file_size(path, ec);
    if (ec) fail("cannot get the file size: " + ec.message());
    if (size > static_cast<std::uintmax_t>(std::numeric_limits<std::ptrdiff_t>::max())) fail("file too large");
    std::ifstream in(path, std::ios::binary);
    if (!in) fail("cannot open the file");
    out->copy_.resize(static_cast<std::size_t>(size));
    in.read(reinterpret_cast<char*>(out->copy_.data()), static_cast<std::streamsize>(size));
    if (static_cast<std::uintmax_t>(in.gcount()) != size) fail("cannot read the whole file");
    out->size_ = out->copy_.size();
    out->data_ = out->copy_.data();
#endif
    return out;
  }

  /// The first byte (null for an empty file).
  std::byte const* data() const noexcept { return data_; }
  /// The number of bytes.
  std::size_t size() const noexcept { return size_; }

 private:
  std::byte const* data_ = nullptr;
  std::size_t size_ = 0;
#if SSM_SAFETENSORS_MMAP
  void* mapping_ = nullptr;
#else
  std::vector<std::byte> copy_;
#endif
};

}  // namespace detail

/// \brief A safetensors file, memory-mapped read-only and validated on construction.
///
/// Copies are cheap and share the mapping, which lives until the last copy is destroyed.
///
/// Example:
/// \code
///   ssm::io::safetensors_file file("model.safetensors");
///   std::vector<float> w = file.read_as<float>("backbone.norm_f.weight", {38});
/// \endcode
class safetensors_file {
 public:
  /// \brief Largest header accepted, in bytes (as in the reference implementation).
  static constexpr std::uint64_t max_header_bytes = 100'000'000;
  /// \brief Deepest JSON nesting accepted in the header (a valid header nests 3 deep).
  static constexpr int max_json_depth = 8;

  /// \brief Map and validate the file at `path`.
  /// \param path the file to read
  /// \throws safetensors_error if the file cannot be opened, mapped or read, or is malformed in any way
  explicit safetensors_file(std::filesystem::path const& path) : path_(path.string()) {
    file_ = detail::file_bytes::open(path, [this](std::string const& problem) { fail(problem); });
    parse_header();
  }

  /// \brief The path the file was read from, as given.
  /// \return the path, as a string.
  [[nodiscard]] std::string const& path() const noexcept { return path_; }

  /// \brief Whether the file holds a tensor of this name.
  /// \param name tensor name, e.g. `"backbone.norm_f.weight"`
  /// \return true if `name` is one of `names()`.
  [[nodiscard]] bool contains(std::string const& name) const { return tensors_.count(name) != 0; }

  /// \brief The names of all tensors, sorted.
  /// \return a new vector of the names (without `__metadata__`).
  [[nodiscard]] std::vector<std::string> names() const {
    std::vector<std::string> out;
    out.reserve(tensors_.size());
    for (auto const& entry : tensors_) out.push_back(entry.first);
    return out;
  }

  /// \brief Dtype, shape and byte range of a tensor.
  /// \param name tensor name
  /// \return its entry, valid as long as this object lives.
  /// \throws safetensors_error if there is no such tensor
  [[nodiscard]] tensor_info const& info(std::string const& name) const {
    auto const it = tensors_.find(name);
    if (it == tensors_.end()) fail("no tensor named '" + name + "'");
    return it->second;
  }

  /// \brief The `__metadata__` map of the header (empty if the header has none).
  /// \return key to value, both strings, sorted by key.
  [[nodiscard]] std::map<std::string, std::string> const& metadata() const noexcept { return metadata_; }

  /// \brief The raw little-endian bytes of a tensor.
  /// \param name tensor name
  /// \returns a view of `info(name).nbytes()` bytes, valid as long as this object lives
  [[nodiscard]] std::span<std::byte const> bytes(std::string const& name) const {
    tensor_info const& t = info(name);
    return {file_->data() + data_start_ + t.begin, static_cast<std::size_t>(t.nbytes())};
  }

  /// \brief Read a tensor, converted element by element to `T`, in row-major order.
  ///
  /// Conversions:
  /// - to a real `T` (`float`, `double`, `ssm::f16`, `ssm::bf16`) from F32, F16, BF16 or F64: an identical
  ///   dtype copies the bits; otherwise the value is widened exactly with `ssm::to_float` and narrowed,
  ///   rounding to nearest even, with `ssm::from_float<T>` (F64 is first rounded to `float`).
  /// - to an integer `T` from I8, I16, I32, I64, U8, U16, U32 or U64 (token ids): exact, and a value
  ///   that `T` cannot represent throws.
  /// - anything else (a real dtype to an integer `T`, an integer dtype to a real `T`, BOOL, F8) throws.
  ///
  /// \tparam T destination element type
  /// \param name tensor name
  /// \param expected_shape if not empty, the shape the tensor must have, e.g. `{D, N}` for `A_log`
  ///        (an empty vector means: do not check; so a scalar's shape cannot be checked this way)
  /// \returns `info(name).numel()` values of type `T`, row-major (for shape `(d0, d1)`, element
  ///          `(i, j)` is at `i * d1 + j`)
  /// \throws safetensors_error if there is no such tensor, its shape differs from a non-empty
  ///         `expected_shape`, the conversion is not supported or an integer is out of range
  template <class T>
  [[nodiscard]] std::vector<T> read_as(std::string const& name,
                                       std::vector<std::int64_t> const& expected_shape = {}) const {
    static_assert(detail::is_real_v<T> || detail::is_integer_v<T>,
                  "read_as<T>: T must be float, double, ssm::f16, ssm::bf16 or an integer type");
    tensor_info const& t = info(name);
    if (!expected_shape.empty() && expected_shape != t.shape) {
      fail("tensor '" + name + "' has shape " + detail::shape_string(t.shape) + ", expected " +
           detail::shape_string(expected_shape));
    }
    auto const n = static_cast<std::size_t>(t.numel());
    std::byte const* const src = file_->data() + data_start_ + t.begin;
    std::vector<T> out;
    out.reserve(n);  // n * itemsize <= file size was checked on load
    auto const unsupported = [&]() {
      fail("cannot read tensor '" + name + "' of dtype " + t.dtype + " as " + detail::type_name<T>());
    };
    if constexpr (detail::is_real_v<T>) {
      if (t.dtype == "F32") convert_real<T, float>(src, n, out);
      else if (t.dtype == "F16") convert_real<T, ssm::f16>(src, n, out);
      else if (t.dtype == "BF16") convert_real<T, ssm::bf16>(src, n, out);
      else if (t.dtype == "F64") convert_real<T, double>(src, n, out);
      else unsupported();
    } else {
      if (t.dtype == "I64") convert_integer<T, std::int64_t>(name, src, n, out);
      else if (t.dtype == "I32") convert_integer<T, std::int32_t>(name, src, n, out);
      else if (t.dtype == "I16") convert_integer<T, std::int16_t>(name, src, n, out);
      else if (t.dtype == "I8") convert_integer<T, std::int8_t>(name, src, n, out);
      else if (t.dtype == "U64") convert_integer<T, std::uint64_t>(name, src, n, out);
      else if (t.dtype == "U32") convert_integer<T, std::uint32_t>(name, src, n, out);
      else if (t.dtype == "U16") convert_integer<T, std::uint16_t>(name, src, n, out);
      else if (t.dtype == "U8") convert_integer<T, std::uint8_t>(name, src, n, out);
      else unsupported();
    }
    return out;
  }

 private:
  std::string path_;
  std::shared_ptr<detail::file_bytes const> file_;  // the whole file, mapped
  std::size_t data_start_ = 0;    // 8 + header length
  std::map<std::string, tensor_info> tensors_;
  std::map<std::string, std::string> metadata_;

  [[noreturn]] void fail(std::string const& problem) const { throw safetensors_error(path_, problem); }

  void parse_header() {
    std::uint64_t const file_size = file_->size();
    if (file_size < 8) {
      fail("file is shorter than 8 bytes (" + std::to_string(file_size) + " bytes): no header length");
    }
    std::uint64_t const header_len = detail::load_le<std::uint64_t>(file_->data());
    if (header_len > max_header_bytes) {
      fail("header length " + std::to_string(header_len) + " exceeds the limit of " +
           std::to_string(max_header_bytes) + " bytes");
    }
    if (header_len > file_size - 8) {
      fail("header length " + std::to_string(header_len) + " is larger than the file (" +
           std::to_string(file_size) + " bytes)");
    }
    data_start_ = static_cast<std::size_t>(8 + header_len);
    std::uint64_t const data_size = file_size - data_start_;

    auto const* first = reinterpret_cast<char const*>(file_->data()) + 8;
    nlohmann::json header;
    // Refuse deep nesting before it is built, and duplicate keys (JSON parsers keep one of them silently).
    std::vector<std::set<std::string>> keys_by_depth(max_json_depth + 2);
    nlohmann::json::parser_callback_t const guard = [this, &keys_by_depth](
                                                        int depth, nlohmann::json::parse_event_t event,
                                                        nlohmann::json& parsed) {
      if (depth > max_json_depth) {
        fail("header nests deeper than " + std::to_string(max_json_depth) + " levels");
      }
      if (event == nlohmann::json::parse_event_t::object_start) {
        keys_by_depth[static_cast<std::size_t>(depth) + 1].clear();  // the keys of the new object
      } else if (event == nlohmann::json::parse_event_t::key) {
        if (!keys_by_depth[static_cast<std::size_t>(depth)].insert(parsed.get<std::string>()).second) {
          fail("header has the key '" + parsed.get<std::string>() + "' twice in one object");
        }
      }
      return true;
    };
    try {
      header = nlohmann::json::parse(first, first + header_len, guard);
    } catch (nlohmann::json::exception const& e) {
      fail(std::string("header is not valid JSON: ") + e.what());
    }
    if (!header.is_object()) fail("header is not a JSON object");

    for (auto const& [name, entry] : header.items()) {
      if (name == "__metadata__") {
        parse_metadata(entry);
      } else {
        tensors_.emplace(name, parse_entry(name, entry, data_size));
      }
    }
    check_tiling(data_size);
  }

  void parse_metadata(nlohmann::json const& meta) {
    if (!meta.is_object()) fail("__metadata__ is not a JSON object");
    for (auto const& [key, value] : meta.items()) {
      if (!value.is_string()) fail("__metadata__ value of '" + key + "' is not a string");
      metadata_.emplace(key, value.get<std::string>());
    }
  }

  tensor_info parse_entry(std::string const& name, nlohmann::json const& entry, std::uint64_t data_size) const {
    std::string const where = "tensor '" + name + "': ";
    if (!entry.is_object()) fail(where + "entry is not a JSON object");
    for (char const* key : {"dtype", "shape", "data_offsets"}) {
      if (!entry.contains(key)) fail(where + "missing \"" + key + "\"");
    }
    tensor_info t;

    auto const& dtype = entry["dtype"];
    if (!dtype.is_string()) fail(where + "dtype is not a string");
    t.dtype = dtype.get<std::string>();
    std::size_t const itemsize = detail::dtype_itemsize(t.dtype);
    if (itemsize == 0) fail(where + "unknown dtype '" + t.dtype + "'");

    auto const& shape = entry["shape"];
    if (!shape.is_array()) fail(where + "shape is not an array");
    constexpr auto max_i64 = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
    std::uint64_t numel = 1;
    for (auto const& dim : shape) {
      if (!dim.is_number_integer()) fail(where + "shape holds a value that is not an integer");
      if (!dim.is_number_unsigned() && dim.get<std::int64_t>() < 0) {
        fail(where + "negative dimension " + std::to_string(dim.get<std::int64_t>()));
      }
      std::uint64_t const d = dim.is_number_unsigned() ? dim.get<std::uint64_t>()
                                                       : static_cast<std::uint64_t>(dim.get<std::int64_t>());
      if (d > max_i64 || (d != 0 && numel > max_i64 / d)) {
        fail(where + "the product of the shape overflows 64 bits");
      }
      numel *= d;
      t.shape.push_back(static_cast<std::int64_t>(d));
    }
    if (numel > std::numeric_limits<std::uint64_t>::max() / itemsize) {
      fail(where + "the byte size of the shape overflows 64 bits");
    }
    std::uint64_t const nbytes = numel * itemsize;

    auto const& offsets = entry["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2) fail(where + "data_offsets is not an array of two integers");
    std::uint64_t bounds[2] = {0, 0};
    for (std::size_t i = 0; i < 2; ++i) {
      auto const& o = offsets[i];
      if (!o.is_number_integer()) fail(where + "data_offsets holds a value that is not an integer");
      if (!o.is_number_unsigned() && o.get<std::int64_t>() < 0) fail(where + "data_offsets holds a negative value");
      bounds[i] = o.is_number_unsigned() ? o.get<std::uint64_t>() : static_cast<std::uint64_t>(o.get<std::int64_t>());
    }
    t.begin = bounds[0];
    t.end = bounds[1];
    std::string const range = "[" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "]";
    if (t.begin > t.end) fail(where + "data_offsets " + range + " are reversed");
    if (t.end > data_size) {
      fail(where + "data_offsets " + range + " run past the end of the data section (" +
           std::to_string(data_size) + " bytes)");
    }
    if (t.end - t.begin != nbytes) {
      fail(where + "data_offsets " + range + " span " + std::to_string(t.end - t.begin) + " bytes, but dtype " +
           t.dtype + " and shape " + detail::shape_string(t.shape) + " need " + std::to_string(nbytes));
    }
    return t;
  }

  // The tensors must tile the data section: sorted by offset, each starts where the previous ended,
  // the first at 0 and the last ends at the end of the file.
  void check_tiling(std::uint64_t data_size) const {
    std::vector<std::pair<std::string const*, tensor_info const*>> order;
    order.reserve(tensors_.size());
    for (auto const& [name, t] : tensors_) order.emplace_back(&name, &t);
    std::sort(order.begin(), order.end(), [](auto const& a, auto const& b) {
      return std::pair(a.second->begin, a.second->end) < std::pair(b.second->begin, b.second->end);
    });
    std::uint64_t position = 0;
    std::string const* previous = nullptr;
    for (auto const& [name, t] : order) {
      if (t->begin < position) fail("tensors '" + *previous + "' and '" + *name + "' overlap");
      if (t->begin > position) {
        fail("bytes [" + std::to_string(position) + ", " + std::to_string(t->begin) +
             ") of the data section belong to no tensor (before '" + *name + "')");
      }
      position = t->end;
      previous = name;
    }
    if (position != data_size) {
      fail("the last " + std::to_string(data_size - position) + " bytes of the data section belong to no tensor");
    }
  }

  template <class T, class S>
  static void convert_real(std::byte const* src, std::size_t n, std::vector<T>& out) {
    for (std::size_t i = 0; i < n; ++i) {
      S x;
      if constexpr (std::is_same_v<S, ssm::f16> || std::is_same_v<S, ssm::bf16>) {
        x = S{detail::load_le<std::uint16_t>(src + 2 * i)};
      } else {
        x = detail::load_value<S>(src + sizeof(S) * i);
      }
      out.push_back(detail::convert_real<T>(x));
    }
  }

  template <class T, class S>
  void convert_integer(std::string const& name, std::byte const* src, std::size_t n, std::vector<T>& out) const {
    for (std::size_t i = 0; i < n; ++i) {
      S const x = detail::load_value<S>(src + sizeof(S) * i);
      if (!std::in_range<T>(x)) {
        fail("tensor '" + name + "': element " + std::to_string(i) + " = " + std::to_string(x) +
             " does not fit in " + detail::type_name<T>());
      }
      out.push_back(static_cast<T>(x));
    }
  }
};

}  // namespace ssm::io
