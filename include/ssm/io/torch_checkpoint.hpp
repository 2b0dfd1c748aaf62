#pragma once
/// \file
/// \brief A defensive reader of PyTorch checkpoints (`pytorch_model.bin`), the zip archives that
/// `torch.save` writes since PyTorch 1.6.
///
/// Such a file is a zip archive whose entries all lie in one folder (`archive/`, or the stem of the
/// file's name), every entry *stored* (not compressed):
///
/// - `<archive>/data.pkl`: a pickle (protocol 2 in practice) of the state dict, an `OrderedDict` (or a
///   `dict`) that maps each tensor's name to
///   `torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks[, metadata])`,
///   where `storage` is a *persistent id*, the tuple `("storage", torch.FloatStorage, key, location, numel)`;
/// - `<archive>/data/<key>`: the raw little-endian elements of each storage;
/// - `<archive>/version`, `<archive>/byteorder` (`little`), `<archive>/.data/serialization_id`, ... .
///
/// Several tensors can share one storage (a tied `lm_head.weight` and embedding), and a tensor can be a
/// view into its storage, with an offset and strides.
///
/// `ssm::io::torch_checkpoint` reads the zip directory (ZIP64 included: checkpoints of more than 4 GB) and
/// `data.pkl` on construction, and every tensor on demand from its offset in the file, so a checkpoint of
/// many gigabytes is never read into memory at once. The pickle is read by a *restricted* unpickler: a
/// stack machine that knows only the opcodes a state dict needs and calls nothing: the only globals it
/// accepts are `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`,
/// `torch._utils._rebuild_parameter` and the storage types `torch.FloatStorage`, `HalfStorage`,
/// `BFloat16Storage`, `DoubleStorage`, `LongStorage`, `IntStorage`, `ShortStorage`, `CharStorage`,
/// `ByteStorage` and `BoolStorage`, and it builds only dictionaries, tuples, lists, scalars and tensor
/// descriptions. Anything else — another global (`os.system`, `builtins.eval`, ...), an unknown opcode,
/// a malformed structure, a truncated file, an offset or size outside the file, a view reaching past its
/// storage, a compressed entry, a size or nesting bomb — throws `ssm::io::torch_checkpoint_error`, whose
/// message names the file and the problem. A malformed file never crashes the reader, runs code, or
/// makes it allocate much more than the size of the file.

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include <ssm/core/dtype.hpp>
#include <ssm/core/error.hpp>
#include <ssm/io/safetensors.hpp>

namespace ssm::io {

/// \brief The error thrown for a missing, unreadable or malformed PyTorch checkpoint, or a bad request.
///
/// `what()` reads: pytorch checkpoint 'PATH': PROBLEM, with PATH the file's path and PROBLEM the
/// description of what is wrong.
class torch_checkpoint_error : public ssm::error {
 public:
  /// \brief Build the message from the file's path and a description of the problem.
  /// \param path the file concerned
  /// \param problem what is wrong with it
  torch_checkpoint_error(std::string const& path, std::string const& problem)
      : ssm::error("pytorch checkpoint '" + path + "': " + problem) {}
};

/// \brief Where a tensor of a PyTorch checkpoint lies within its storage.
///
/// Element \f$(i_0, \dots, i_{k-1})\f$ of the tensor is element
/// \f$\mathrm{storage\_offset} + \sum_d i_d \, \mathrm{stride}_d\f$ of the storage.
struct torch_tensor_layout {
  std::string storage_key;           ///< the storage's key: its elements are the entry `<archive>/data/<key>`
  std::string location;              ///< where the storage was when it was saved, e.g. `"cpu"`, `"cuda:0"`
  std::int64_t storage_numel = 0;    ///< number of elements of the whole storage
  std::int64_t storage_offset = 0;   ///< index, in the storage, of the tensor's first element
  std::vector<std::int64_t> stride;  ///< distance in the storage between neighbours along each dimension
  bool contiguous = true;            ///< whether the strides are those of a row-major (C order) tensor
};

namespace detail::torch_ckpt {

/// \brief What the internals throw; `torch_checkpoint` adds the file's path.
class malformed : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

[[noreturn]] inline void fail(std::string const& problem) { throw malformed(problem); }

inline std::string hex(std::uint64_t value, int digits) {
  static constexpr char symbols[] = "0123456789abcdef";
  std::string out = "0x";
  for (int i = digits - 1; i >= 0; --i) out += symbols[(value >> (4 * i)) & 0xFu];
  return out;
}

/// \brief `[a, b)` for messages.
inline std::string range_string(std::uint64_t begin, std::uint64_t end) {
  std::string out = "[";  // built in steps: GCC 12 warns falsely (-Wrestrict) on "literal" + string&&
  out += std::to_string(begin);
  out += ", ";
  out += std::to_string(end);
  out += ")";
  return out;
}

/// \brief A name quoted for messages, with bytes outside printable ASCII escaped and long names cut.
inline std::string quote_name(std::string_view s) {
  std::string out = "'";
  std::size_t const shown = std::min<std::size_t>(s.size(), 200);
  for (std::size_t i = 0; i < shown; ++i) {
    auto const c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7F && c != '\\' && c != '\'') out += static_cast<char>(c);
    else out += "\\x" + hex(c, 2).substr(2);
  }
  if (shown < s.size()) out += "...";
  return out + "'";
}

/// \brief CRC-32 (ISO-HDLC, as zip uses) of `n` bytes.
inline std::uint32_t crc32(std::byte const* p, std::size_t n) {
  static std::array<std::uint32_t, 256> const table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  std::uint32_t crc = 0xFFFFFFFFu;
  for (std::size_t i = 0; i < n; ++i) crc = table[(crc ^ std::to_integer<std::uint32_t>(p[i])) & 0xFFu] ^ (crc >> 8);
  return ~crc;
}

/// \brief Reads byte ranges of one file, each checked against the file's size first.
class file_reader {
 public:
  explicit file_reader(std::filesystem::path const& path) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec)) fail("does not exist or is not a regular file");
    std::uintmax_t const size = std::filesystem::file_size(path, ec);
    if (ec) fail("cannot get the file size: " + ec.message());
    if (size > static_cast<std::uintmax_t>(std::numeric_limits<std::streamoff>::max())) fail("file too large");
    size_ = static_cast<std::uint64_t>(size);
    in_.open(path, std::ios::binary);
    if (!in_) fail("cannot open the file");
  }

  [[nodiscard]] std::uint64_t size() const noexcept { return size_; }

  /// Read bytes [offset, offset + n) into `out`; `what` names them in messages.
  void read(std::uint64_t offset, std::byte* out, std::size_t n, std::string const& what) {
    if (offset > size_ || n > size_ - offset) {
      fail(what + " " + range_string(offset, offset + n) + " runs past the end of the file (" +
           std::to_string(size_) + " bytes)");
    }
    if (n == 0) return;
    in_.clear();
    in_.seekg(static_cast<std::streamoff>(offset));
    in_.read(reinterpret_cast<char*>(out), static_cast<std::streamsize>(n));
    if (!in_ || static_cast<std::size_t>(in_.gcount()) != n) {
      fail("cannot read " + what + " " + range_string(offset, offset + n) + " (did the file change?)");
    }
  }

  [[nodiscard]] std::vector<std::byte> read(std::uint64_t offset, std::size_t n, std::string const& what) {
    if (offset > size_ || n > size_ - offset) {
      fail(what + " " + range_string(offset, offset + n) + " runs past the end of the file (" +
           std::to_string(size_) + " bytes)");
    }
    std::vector<std::byte> out(n);
    read(offset, out.data(), n, what);
    return out;
  }

 private:
  std::ifstream in_;
  std::uint64_t size_ = 0;
};

/// \brief Little-endian fields of a byte buffer, read in order; reading past the end throws.
class le_cursor {
 public:
  le_cursor(std::byte const* data, std::size_t size, std::string what) : data_(data), size_(size), what_(std::move(what)) {}

  [[nodiscard]] std::size_t left() const noexcept { return size_ - pos_; }
  [[nodiscard]] std::size_t pos() const noexcept { return pos_; }

  template <class U>
  U get() {
    need(sizeof(U));
    U const v = ssm::io::detail::load_le<U>(data_ + pos_);
    pos_ += sizeof(U);
    return v;
  }
  std::string bytes(std::size_t n) {
    need(n);
    std::string s(reinterpret_cast<char const*>(data_ + pos_), n);
    pos_ += n;
    return s;
  }
  void skip(std::size_t n) {
    need(n);
    pos_ += n;
  }

 private:
  std::byte const* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
  std::string what_;

  void need(std::size_t n) const {
    if (n > left()) fail(what_ + " is truncated");
  }
};

// ---------------------------------------------------------------------------------------------- zip

/// \brief One stored entry of the archive.
struct zip_entry {
  std::string name;
  std::uint64_t data_offset = 0;  // first byte of its data in the file
  std::uint64_t size = 0;         // bytes of data (stored: compressed size == uncompressed size)
  std::uint32_t crc = 0;          // CRC-32 of the data, from the central directory
};

inline constexpr std::uint32_t sig_local = 0x04034b50u;
inline constexpr std::uint32_t sig_central = 0x02014b50u;
inline constexpr std::uint32_t sig_eocd = 0x06054b50u;
inline constexpr std::uint32_t sig_zip64_eocd = 0x06064b50u;
inline constexpr std::uint32_t sig_zip64_locator = 0x07064b50u;
inline constexpr std::uint64_t max_central_directory_bytes = 64u << 20;

inline std::string method_name(std::uint16_t method) {
  switch (method) {
    case 8: return "deflate";
    case 9: return "deflate64";
    case 12: return "bzip2";
    case 14: return "lzma";
    case 93: return "zstd";
    case 95: return "xz";
    case 99: return "AES encryption";
    default: return "unknown";
  }
}

/// \brief Read and check the central directory: every entry stored, within the file, named uniquely.
inline std::map<std::string, zip_entry> read_zip_directory(file_reader& file) {
  std::uint64_t const file_size = file.size();
  if (file_size < 22) {
    fail("file is too short to be a zip archive (" + std::to_string(file_size) + " bytes)");
  }

  // The end of central directory record: 22 bytes and a comment of at most 65535 that ends the file.
  std::uint64_t const tail_size = std::min<std::uint64_t>(file_size, 22 + 65535);
  std::uint64_t const tail_start = file_size - tail_size;
  std::vector<std::byte> const tail = file.read(tail_start, static_cast<std::size_t>(tail_size), "end of the file");
  std::size_t eocd = tail.size();
  for (std::size_t p = tail.size() - 22 + 1; p-- > 0;) {
    if (ssm::io::detail::load_le<std::uint32_t>(tail.data() + p) != sig_eocd) continue;
    std::size_t const comment = ssm::io::detail::load_le<std::uint16_t>(tail.data() + p + 20);
    if (p + 22 + comment == tail.size()) {
      eocd = p;
      break;
    }
  }
  if (eocd == tail.size()) {
    std::vector<std::byte> const head = file.read(0, 2, "first bytes");
    if (head[0] == std::byte{0x80} && std::to_integer<int>(head[1]) <= 5) {
      fail("not a zip archive but a bare pickle: the legacy torch.save format (before PyTorch 1.6) is "
           "not supported; re-save the checkpoint with a recent PyTorch");
    }
    fail("no end of central directory record: not a zip archive, or truncated");
  }
  std::uint64_t const eocd_offset = tail_start + eocd;
  le_cursor e(tail.data() + eocd + 4, 18, "end of central directory record");
  std::uint16_t const disk = e.get<std::uint16_t>();
  std::uint16_t const cd_disk = e.get<std::uint16_t>();
  std::uint64_t entries_on_disk = e.get<std::uint16_t>();
  std::uint64_t entries = e.get<std::uint16_t>();
  std::uint64_t cd_size = e.get<std::uint32_t>();
  std::uint64_t cd_offset = e.get<std::uint32_t>();
  bool const wants_zip64 =
      disk == 0xFFFF || cd_disk == 0xFFFF || entries == 0xFFFF || cd_size == 0xFFFFFFFFu || cd_offset == 0xFFFFFFFFu;

  // ZIP64: a 20-byte locator just before the record points at the 56-byte ZIP64 record.
  std::uint64_t cd_end = eocd_offset;  // where the central directory must end
  bool zip64 = false;
  if (eocd_offset >= 20) {
    std::vector<std::byte> const loc = file.read(eocd_offset - 20, 20, "ZIP64 end of central directory locator");
    if (ssm::io::detail::load_le<std::uint32_t>(loc.data()) == sig_zip64_locator) {
      le_cursor l(loc.data() + 4, 16, "ZIP64 end of central directory locator");
      std::uint32_t const z_disk = l.get<std::uint32_t>();
      std::uint64_t const z_offset = l.get<std::uint64_t>();
      std::uint32_t const disks = l.get<std::uint32_t>();
      if (z_disk != 0 || disks > 1) fail("multi-disk (split) zip archives are not supported");
      std::uint64_t const locator_offset = eocd_offset - 20;
      if (z_offset > locator_offset || locator_offset - z_offset < 56) {
        fail("ZIP64 end of central directory record at offset " + std::to_string(z_offset) +
             " does not fit before its locator at offset " + std::to_string(locator_offset));
      }
      std::vector<std::byte> const rec = file.read(z_offset, 56, "ZIP64 end of central directory record");
      le_cursor z(rec.data(), rec.size(), "ZIP64 end of central directory record");
      if (z.get<std::uint32_t>() != sig_zip64_eocd) {
        fail("no ZIP64 end of central directory record at offset " + std::to_string(z_offset) +
             " (bad signature)");
      }
      std::uint64_t const record_size = z.get<std::uint64_t>();
      if (record_size < 44 || record_size > locator_offset - z_offset - 12) {
        fail("ZIP64 end of central directory record has an impossible size of " + std::to_string(record_size) +
             " bytes");
      }
      z.skip(4);  // versions made by, needed
      std::uint32_t const disk64 = z.get<std::uint32_t>();
      std::uint32_t const cd_disk64 = z.get<std::uint32_t>();
      if (disk64 != 0 || cd_disk64 != 0) fail("multi-disk (split) zip archives are not supported");
      entries_on_disk = z.get<std::uint64_t>();
      entries = z.get<std::uint64_t>();
      cd_size = z.get<std::uint64_t>();
      cd_offset = z.get<std::uint64_t>();
      cd_end = z_offset;
      zip64 = true;
    }
  }
  if (!zip64) {
    if (wants_zip64) {
      fail("end of central directory record holds ZIP64 markers (0xFFFF...) but there is no ZIP64 locator");
    }
    if (disk != 0 || cd_disk != 0) fail("multi-disk (split) zip archives are not supported");
  }
  if (entries_on_disk != entries) fail("multi-disk (split) zip archives are not supported");
  if (cd_offset > cd_end || cd_size != cd_end - cd_offset) {
    fail("central directory " + range_string(cd_offset, cd_offset + cd_size) +
         " does not end where the end of central directory record begins (" + std::to_string(cd_end) +
         "): broken zip directory, or the file is truncated or has bytes prepended");
  }
  if (cd_size > max_central_directory_bytes) {
    fail("central directory of " + std::to_string(cd_size) + " bytes exceeds the limit of " +
         std::to_string(max_central_directory_bytes));
  }
  if (entries > cd_size / 46) {
    fail("central directory of " + std::to_string(cd_size) + " bytes cannot hold the " + std::to_string(entries) +
         " entries it claims");
  }
  std::vector<std::byte> const cd = file.read(cd_offset, static_cast<std::size_t>(cd_size), "central directory");

  std::map<std::string, zip_entry> out;
  le_cursor c(cd.data(), cd.size(), "central directory");
  for (std::uint64_t index = 0; index < entries; ++index) {
    std::string const where = "central directory entry " + std::to_string(index);
    if (c.get<std::uint32_t>() != sig_central) fail(where + " has a bad signature (broken zip directory)");
    c.skip(4);  // versions made by, needed
    std::uint16_t const flags = c.get<std::uint16_t>();
    std::uint16_t const method = c.get<std::uint16_t>();
    c.skip(4);  // time, date
    std::uint32_t const crc = c.get<std::uint32_t>();
    std::uint64_t csize = c.get<std::uint32_t>();
    std::uint64_t usize = c.get<std::uint32_t>();
    std::size_t const name_len = c.get<std::uint16_t>();
    std::size_t const extra_len = c.get<std::uint16_t>();
    std::size_t const comment_len = c.get<std::uint16_t>();
    std::uint32_t start_disk = c.get<std::uint16_t>();
    c.skip(6);  // internal, external attributes
    std::uint64_t local = c.get<std::uint32_t>();
    std::string const name = c.bytes(name_len);
    std::string const extra = c.bytes(extra_len);
    c.skip(comment_len);
    std::string const entry = "entry " + quote_name(name);

    // ZIP64 extended information: the fields whose 32-bit value is all ones, in this order.
    bool const need_u = usize == 0xFFFFFFFFu, need_c = csize == 0xFFFFFFFFu, need_l = local == 0xFFFFFFFFu;
    bool const need_d = start_disk == 0xFFFFu;
    bool found = false;
    le_cursor x(reinterpret_cast<std::byte const*>(extra.data()), extra.size(), "extra field of " + entry);
    while (x.left() >= 4) {
      std::uint16_t const id = x.get<std::uint16_t>();
      std::size_t const len = x.get<std::uint16_t>();
      if (len > x.left()) fail("extra field of " + entry + " runs past its end");
      if (id != 0x0001) {
        x.skip(len);
        continue;
      }
      if (found) fail(entry + " has two ZIP64 extra fields");
      found = true;
      std::size_t const needed = 8 * (std::size_t{need_u} + need_c + need_l) + 4 * std::size_t{need_d};
      if (len < needed) {
        fail("ZIP64 extra field of " + entry + " is too short (" + std::to_string(len) + " bytes, needs " +
             std::to_string(needed) + ")");
      }
      std::size_t const field_start = x.pos();
      if (need_u) usize = x.get<std::uint64_t>();
      if (need_c) csize = x.get<std::uint64_t>();
      if (need_l) local = x.get<std::uint64_t>();
      if (need_d) start_disk = x.get<std::uint32_t>();
      x.skip(len - (x.pos() - field_start));
    }
    if ((need_u || need_c || need_l || need_d) && !found) {
      fail(entry + " has ZIP64 markers (0xFFFFFFFF) but no ZIP64 extra field");
    }
    if (start_disk != 0) fail("multi-disk (split) zip archives are not supported");
    if (flags & 0x41u) fail(entry + " is encrypted");
    if (method != 0) {
      fail(entry + " is compressed (method " + std::to_string(method) + ", " + method_name(method) +
           "): only stored (uncompressed) entries are supported, as torch.save writes them");
    }
    if (csize != usize) {
      fail(entry + " is stored but its compressed size " + std::to_string(csize) + " differs from its size " +
           std::to_string(usize));
    }
    if (name.empty()) fail(where + " has an empty name");

    // The local header: its fixed part, and its own name and extra field before the data.
    if (local > cd_offset || cd_offset - local < 30) {
      fail("local header of " + entry + " at offset " + std::to_string(local) +
           " is past the end of the entries (the central directory begins at " + std::to_string(cd_offset) + ")");
    }
    std::vector<std::byte> const lh = file.read(local, 30, "local header of " + entry);
    le_cursor h(lh.data(), lh.size(), "local header of " + entry);
    if (h.get<std::uint32_t>() != sig_local) {
      fail("local header of " + entry + " at offset " + std::to_string(local) + " has a bad signature");
    }
    h.skip(4);  // version needed, flags
    std::uint16_t const local_method = h.get<std::uint16_t>();
    h.skip(16);  // time, date, crc, sizes (may be zero or ZIP64 markers: the central directory is authoritative)
    std::size_t const local_name_len = h.get<std::uint16_t>();
    std::size_t const local_extra_len = h.get<std::uint16_t>();
    std::uint64_t const data_offset = local + 30 + local_name_len + local_extra_len;
    if (data_offset > cd_offset || usize > cd_offset - data_offset) {
      fail("data of " + entry + " " + range_string(data_offset, data_offset + usize) +
           " runs past the start of the central directory at " + std::to_string(cd_offset));
    }
    std::vector<std::byte> const local_name = file.read(local + 30, local_name_len, "local header of " + entry);
    if (std::string_view(reinterpret_cast<char const*>(local_name.data()), local_name.size()) != name) {
      fail("local header of " + entry + " names another entry");
    }
    if (local_method != method) fail("local header of " + entry + " disagrees with the central directory");

    zip_entry z{name, data_offset, usize, crc};
    if (!out.emplace(name, std::move(z)).second) fail("the archive holds two entries named " + quote_name(name));
  }
  if (c.left() != 0) {
    fail("central directory holds " + std::to_string(c.left()) + " bytes after its " + std::to_string(entries) +
         " entries");
  }
  return out;
}

// ------------------------------------------------------------------------------------------- pickle

/// \brief A storage type of the allow-list: torch's name, the safetensors dtype, the element size.
struct storage_type {
  std::string_view torch_name;
  std::string_view dtype;
  std::size_t itemsize;
};
inline constexpr storage_type storage_types[] = {
    {"FloatStorage", "F32", 4}, {"HalfStorage", "F16", 2}, {"BFloat16Storage", "BF16", 2},
    {"DoubleStorage", "F64", 8}, {"LongStorage", "I64", 8}, {"IntStorage", "I32", 4},
    {"ShortStorage", "I16", 2}, {"CharStorage", "I8", 1},   {"ByteStorage", "U8", 1},
    {"BoolStorage", "BOOL", 1}};

/// \brief The callables and classes the unpickler accepts (storage types follow, from `storage_base`).
enum global_id : std::int64_t { ordered_dict = 0, rebuild_tensor_v2 = 1, rebuild_parameter = 2, storage_base = 16 };

inline std::string global_name(std::int64_t id) {
  if (id == ordered_dict) return "collections.OrderedDict";
  if (id == rebuild_tensor_v2) return "torch._utils._rebuild_tensor_v2";
  if (id == rebuild_parameter) return "torch._utils._rebuild_parameter";
  return "torch." + std::string(storage_types[static_cast<std::size_t>(id - storage_base)].torch_name);
}

/// \brief The allowed global `module.name`, or -1.
inline std::int64_t find_global(std::string_view module, std::string_view name) {
  if (module == "collections" && name == "OrderedDict") return ordered_dict;
  if (module == "torch._utils" && name == "_rebuild_tensor_v2") return rebuild_tensor_v2;
  if (module == "torch._utils" && name == "_rebuild_parameter") return rebuild_parameter;
  if (module == "torch") {
    for (std::size_t i = 0; i < std::size(storage_types); ++i) {
      if (storage_types[i].torch_name == name) return storage_base + static_cast<std::int64_t>(i);
    }
  }
  return -1;
}

/// \brief A storage named by a persistent id.
struct storage_ref {
  std::string key;
  std::size_t type = 0;  // index into storage_types
  std::string location;
  std::int64_t numel = 0;
};

/// \brief A tensor built by `_rebuild_tensor_v2` (its values checked later, against its storage).
struct tensor_ref {
  std::size_t storage = 0;  // index into the storages
  std::int64_t offset = 0;
  std::vector<std::int64_t> shape;
  std::vector<std::int64_t> stride;
};

enum class kind : std::uint8_t { none, boolean, integer, floating, string, tuple, list, dict, global, storage, tensor };

inline char const* kind_name(kind k) {
  switch (k) {
    case kind::none: return "None";
    case kind::boolean: return "bool";
    case kind::integer: return "int";
    case kind::floating: return "float";
    case kind::string: return "str";
    case kind::tuple: return "tuple";
    case kind::list: return "list";
    case kind::dict: return "dict";
    case kind::global: return "global";
    case kind::storage: return "storage";
    case kind::tensor: return "tensor";
  }
  return "?";
}

/// \brief A value on the stack: a scalar, or the index of an object in one of the unpickler's arenas
/// (so that an object shared through the memo is shared, and a cycle costs nothing).
struct value {
  kind k = kind::none;
  std::int64_t i = 0;  // bool, int, bits of a float, or an index
};

/// \brief The names of the pickle opcodes, for messages (`nullptr` if the byte is no opcode).
inline char const* opcode_name(std::uint8_t op) {
  switch (op) {
    case '(': return "MARK";
    case '.': return "STOP";
    case '0': return "POP";
    case '1': return "POP_MARK";
    case '2': return "DUP";
    case 'F': return "FLOAT";
    case 'I': return "INT";
    case 'J': return "BININT";
    case 'K': return "BININT1";
    case 'L': return "LONG";
    case 'M': return "BININT2";
    case 'N': return "NONE";
    case 'P': return "PERSID";
    case 'Q': return "BINPERSID";
    case 'R': return "REDUCE";
    case 'S': return "STRING";
    case 'T': return "BINSTRING";
    case 'U': return "SHORT_BINSTRING";
    case 'V': return "UNICODE";
    case 'X': return "BINUNICODE";
    case 'a': return "APPEND";
    case 'b': return "BUILD";
    case 'c': return "GLOBAL";
    case 'd': return "DICT";
    case '}': return "EMPTY_DICT";
    case 'e': return "APPENDS";
    case 'g': return "GET";
    case 'h': return "BINGET";
    case 'i': return "INST";
    case 'j': return "LONG_BINGET";
    case 'l': return "LIST";
    case ']': return "EMPTY_LIST";
    case 'o': return "OBJ";
    case 'p': return "PUT";
    case 'q': return "BINPUT";
    case 'r': return "LONG_BINPUT";
    case 's': return "SETITEM";
    case 't': return "TUPLE";
    case ')': return "EMPTY_TUPLE";
    case 'u': return "SETITEMS";
    case 'G': return "BINFLOAT";
    case 0x80: return "PROTO";
    case 0x81: return "NEWOBJ";
    case 0x82: return "EXT1";
    case 0x83: return "EXT2";
    case 0x84: return "EXT4";
    case 0x85: return "TUPLE1";
    case 0x86: return "TUPLE2";
    case 0x87: return "TUPLE3";
    case 0x88: return "NEWTRUE";
    case 0x89: return "NEWFALSE";
    case 0x8a: return "LONG1";
    case 0x8b: return "LONG4";
    case 0x8c: return "SHORT_BINUNICODE";
    case 0x8d: return "BINUNICODE8";
    case 0x8e: return "BINBYTES8";
    case 0x8f: return "EMPTY_SET";
    case 0x90: return "ADDITEMS";
    case 0x91: return "FROZENSET";
    case 0x92: return "NEWOBJ_EX";
    case 0x93: return "STACK_GLOBAL";
    case 0x94: return "MEMOIZE";
    case 0x95: return "FRAME";
    case 0x96: return "BYTEARRAY8";
    case 0x97: return "NEXT_BUFFER";
    case 0x98: return "READONLY_BUFFER";
    case 'B': return "BINBYTES";
    case 'C': return "SHORT_BINBYTES";
    default: return nullptr;
  }
}

/// \brief Whether `s` is valid UTF-8 (no overlong forms, no surrogates, at most U+10FFFF).
inline bool valid_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    auto const c = static_cast<unsigned char>(s[i]);
    std::size_t n = 0;
    std::uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0u) == 0xC0u) {
      n = 1;
      cp = c & 0x1Fu;
    } else if ((c & 0xF0u) == 0xE0u) {
      n = 2;
      cp = c & 0x0Fu;
    } else if ((c & 0xF8u) == 0xF0u) {
      n = 3;
      cp = c & 0x07u;
    } else {
      return false;
    }
    if (s.size() - i <= n) return false;
    for (std::size_t k = 1; k <= n; ++k) {
      auto const cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0u) != 0x80u) return false;
      cp = (cp << 6) | (cc & 0x3Fu);
    }
    static constexpr std::uint32_t smallest[] = {0, 0x80, 0x800, 0x10000};
    if (cp < smallest[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n + 1;
  }
  return true;
}

/// \brief The restricted unpickler: a stack machine over the opcodes of a state dict, which builds
/// values and tensor descriptions and calls nothing.
class unpickler {
 public:
  static constexpr std::size_t max_mark_depth = 256;       ///< MARKs open at once
  static constexpr std::size_t max_stack = 1u << 20;       ///< values on the stack
  static constexpr std::size_t max_memo = 1u << 22;        ///< memo entries
  static constexpr std::size_t max_values = 1u << 23;      ///< values created in all
  static constexpr std::size_t max_rank = 64;              ///< dimensions of a tensor
  static constexpr std::size_t max_global_line = 256;      ///< bytes of a GLOBAL's module or name

  unpickler(std::byte const* data, std::size_t size, std::string what) : data_(data), size_(size), what_(std::move(what)) {}

  /// Run to STOP; return the single value left.
  value run() {
    while (true) {
      if (pos_ >= size_) fail(what_ + ": truncated: the pickle ends without a STOP opcode");
      op_pos_ = pos_;
      op_ = byte();
      if (step()) break;
    }
    if (stack_.size() != 1 || !marks_.empty()) {
      fail_here("STOP leaves " + std::to_string(stack_.size()) + " values and " + std::to_string(marks_.size()) +
                " open MARKs on the stack (expected one value)");
    }
    if (pos_ != size_) fail_here(std::to_string(size_ - pos_) + " bytes follow the STOP opcode");
    return stack_.back();
  }

  [[nodiscard]] std::string const& string_of(value v) const { return strings_[index(v)]; }
  [[nodiscard]] std::vector<std::pair<value, value>> const& dict_of(value v) const { return dicts_[index(v)]; }
  [[nodiscard]] std::vector<storage_ref> const& storages() const noexcept { return storages_; }
  [[nodiscard]] std::vector<tensor_ref> const& tensors() const noexcept { return tensors_; }
  static std::size_t index(value v) { return static_cast<std::size_t>(v.i); }

 private:
  std::byte const* data_;
  std::size_t size_;
  std::string what_;
  std::size_t pos_ = 0;
  std::size_t op_pos_ = 0;
  std::uint8_t op_ = 0;
  std::size_t created_ = 0;

  std::vector<value> stack_;
  std::vector<std::size_t> marks_;
  std::unordered_map<std::uint32_t, value> memo_;
  std::vector<std::string> strings_;
  std::vector<std::vector<value>> sequences_;  // tuples and lists
  std::vector<std::vector<std::pair<value, value>>> dicts_;
  std::vector<storage_ref> storages_;
  std::map<std::string, std::size_t> storage_by_key_;
  std::vector<tensor_ref> tensors_;

  [[noreturn]] void fail_here(std::string const& problem) const {
    std::string at = what_ + " at byte " + std::to_string(op_pos_);
    if (char const* name = opcode_name(op_); name && op_pos_ < size_) at += " (" + std::string(name) + ")";
    fail(at + ": " + problem);
  }

  std::uint8_t byte() {
    if (pos_ >= size_) fail_here("truncated: the pickle ends inside an opcode's argument");
    return std::to_integer<std::uint8_t>(data_[pos_++]);
  }
  std::byte const* take(std::uint64_t n) {
    if (n > size_ - pos_) {
      fail_here("truncated: an argument of " + std::to_string(n) + " bytes runs past the end of the pickle (" +
                std::to_string(size_ - pos_) + " bytes left)");
    }
    std::byte const* p = data_ + pos_;
    pos_ += static_cast<std::size_t>(n);
    return p;
  }
  template <class U>
  U le() {
    return ssm::io::detail::load_le<U>(take(sizeof(U)));
  }

  void push(value v) {
    if (stack_.size() >= max_stack) fail_here("more than " + std::to_string(max_stack) + " values on the stack");
    if (++created_ > max_values) fail_here("the pickle creates more than " + std::to_string(max_values) + " values");
    stack_.push_back(v);
  }
  value pop() {
    if (stack_.size() <= floor()) fail_here("stack underflow");
    value const v = stack_.back();
    stack_.pop_back();
    return v;
  }
  value& top() {
    if (stack_.size() <= floor()) fail_here("stack underflow");
    return stack_.back();
  }
  /// The values above the current MARK are not visible to ordinary opcodes.
  [[nodiscard]] std::size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }
  /// Pop the values down to the last MARK, and the MARK.
  std::vector<value> pop_mark() {
    if (marks_.empty()) fail_here("no MARK to pop to (stack underflow)");
    std::size_t const m = marks_.back();
    marks_.pop_back();
    std::vector<value> items(stack_.begin() + static_cast<std::ptrdiff_t>(m), stack_.end());
    stack_.resize(m);
    return items;
  }

  value make_string(std::byte const* p, std::size_t n) {
    std::string s(reinterpret_cast<char const*>(p), n);
    if (!valid_utf8(s)) fail_here("a string is not valid UTF-8");
    strings_.push_back(std::move(s));
    return {kind::string, static_cast<std::int64_t>(strings_.size() - 1)};
  }
  value make_sequence(kind k, std::vector<value> items) {
    sequences_.push_back(std::move(items));
    return {k, static_cast<std::int64_t>(sequences_.size() - 1)};
  }
  value make_dict() {
    dicts_.emplace_back();
    return {kind::dict, static_cast<std::int64_t>(dicts_.size() - 1)};
  }

  void memo_put(std::uint32_t key) {
    value const v = top();
    if (memo_.size() >= max_memo && !memo_.count(key)) {
      fail_here("the memo grows past " + std::to_string(max_memo) + " entries");
    }
    memo_[key] = v;
  }
  void memo_get(std::uint32_t key) {
    auto const it = memo_.find(key);
    if (it == memo_.end()) {
      fail_here("memo index " + std::to_string(key) + " is not defined (memo out of range)");
    }
    push(it->second);
  }

  void global(std::string_view module, std::string_view name) {
    std::int64_t const id = find_global(module, name);
    if (id < 0) {
      fail_here("GLOBAL " + quote_name(std::string(module) + "." + std::string(name)) +
                " is not allowed: a state dict needs only collections.OrderedDict, "
                "torch._utils._rebuild_tensor_v2 / _rebuild_parameter and torch.*Storage");
    }
    push({kind::global, id});
  }
  std::string line() {
    std::size_t const start = pos_;
    while (pos_ < size_ && data_[pos_] != std::byte{'\n'}) {
      if (pos_ - start >= max_global_line) fail_here("a GLOBAL name is longer than " + std::to_string(max_global_line) + " bytes");
      ++pos_;
    }
    if (pos_ >= size_) fail_here("truncated: the pickle ends inside a GLOBAL name");
    std::string s(reinterpret_cast<char const*>(data_ + start), pos_ - start);
    ++pos_;  // the newline
    return s;
  }

  /// Execute the opcode `op_`; return true on STOP.
  bool step() {
    switch (op_) {
      case 0x80: {  // PROTO
        std::uint8_t const v = byte();
        if (v > 5) fail_here("unsupported pickle protocol " + std::to_string(v));
        return false;
      }
      case 0x95: {  // FRAME: a hint of how many bytes follow
        std::uint64_t const n = le<std::uint64_t>();
        if (n > size_ - pos_) fail_here("truncated: a frame of " + std::to_string(n) + " bytes runs past the end");
        return false;
      }
      case '.': return true;  // STOP
      case '(':  // MARK
        if (marks_.size() >= max_mark_depth) {
          fail_here("MARKs nest deeper than " + std::to_string(max_mark_depth) + " levels (a nesting bomb?)");
        }
        marks_.push_back(stack_.size());
        return false;
      case '}': push(make_dict()); return false;                        // EMPTY_DICT
      case ')': push(make_sequence(kind::tuple, {})); return false;     // EMPTY_TUPLE
      case ']': push(make_sequence(kind::list, {})); return false;      // EMPTY_LIST
      case 't': {                                                       // TUPLE
        auto items = pop_mark();
        push(make_sequence(kind::tuple, std::move(items)));
        return false;
      }
      case 0x85:
      case 0x86:
      case 0x87: {  // TUPLE1, TUPLE2, TUPLE3
        std::size_t const n = static_cast<std::size_t>(op_ - 0x84);
        std::vector<value> items(n);
        for (std::size_t k = n; k-- > 0;) items[k] = pop();
        push(make_sequence(kind::tuple, std::move(items)));
        return false;
      }
      case 'J': push({kind::integer, static_cast<std::int32_t>(le<std::uint32_t>())}); return false;  // BININT
      case 'K': push({kind::integer, byte()}); return false;                                          // BININT1
      case 'M': push({kind::integer, le<std::uint16_t>()}); return false;                             // BININT2
      case 0x8a: {  // LONG1: n bytes of two's complement, little-endian
        std::size_t const n = byte();
        if (n > 8) fail_here("an integer of " + std::to_string(n) + " bytes does not fit in 64 bits");
        std::byte const* p = take(n);
        std::uint64_t u = 0;
        for (std::size_t k = 0; k < n; ++k) u |= std::to_integer<std::uint64_t>(p[k]) << (8 * k);
        if (n > 0 && n < 8 && (std::to_integer<unsigned>(p[n - 1]) & 0x80u)) u |= ~std::uint64_t{0} << (8 * n);
        push({kind::integer, static_cast<std::int64_t>(u)});
        return false;
      }
      case 'G': {  // BINFLOAT: big-endian double
        std::byte const* p = take(8);
        std::uint64_t u = 0;
        for (std::size_t k = 0; k < 8; ++k) u = (u << 8) | std::to_integer<std::uint64_t>(p[k]);
        push({kind::floating, static_cast<std::int64_t>(u)});
        return false;
      }
      case 'X': {  // BINUNICODE
        std::uint32_t const n = le<std::uint32_t>();
        std::byte const* p = take(n);
        push(make_string(p, n));
        return false;
      }
      case 0x8c: {  // SHORT_BINUNICODE
        std::size_t const n = byte();
        std::byte const* p = take(n);
        push(make_string(p, n));
        return false;
      }
      case 0x8d: {  // BINUNICODE8
        std::uint64_t const n = le<std::uint64_t>();
        std::byte const* p = take(n);
        push(make_string(p, static_cast<std::size_t>(n)));
        return false;
      }
      case 'N': push({kind::none, 0}); return false;        // NONE
      case 0x88: push({kind::boolean, 1}); return false;    // NEWTRUE
      case 0x89: push({kind::boolean, 0}); return false;    // NEWFALSE
      case 'q': memo_put(byte()); return false;              // BINPUT
      case 'r': memo_put(le<std::uint32_t>()); return false;  // LONG_BINPUT
      case 0x94: {                                            // MEMOIZE
        if (memo_.size() > std::numeric_limits<std::uint32_t>::max()) fail_here("memo too large");
        memo_put(static_cast<std::uint32_t>(memo_.size()));
        return false;
      }
      case 'h': memo_get(byte()); return false;               // BINGET
      case 'j': memo_get(le<std::uint32_t>()); return false;  // LONG_BINGET
      case 'c': {                                             // GLOBAL
        std::string const module = line();
        std::string const name = line();
        global(module, name);
        return false;
      }
      case 0x93: {  // STACK_GLOBAL
        value const name = pop();
        value const module = pop();
        if (name.k != kind::string || module.k != kind::string) fail_here("module and name are not strings");
        global(string_of(module), string_of(name));
        return false;
      }
      case 'R': reduce(); return false;
      case 'b': {  // BUILD: set the state of the object below; only dictionaries' (e.g. `_metadata`) are ignored
        value const state = pop();
        value const target = top();
        if (target.k != kind::dict) fail_here(std::string("BUILD on an object of type ") + kind_name(target.k) + " is not supported");
        if (state.k != kind::dict && state.k != kind::none) {
          fail_here(std::string("BUILD with a state of type ") + kind_name(state.k) + " is not supported");
        }
        return false;
      }
      case 's': {  // SETITEM
        value const v = pop();
        value const k = pop();
        value const d = top();
        if (d.k != kind::dict) fail_here(std::string("SETITEM on an object of type ") + kind_name(d.k) + ", not a dict");
        dicts_[index(d)].emplace_back(k, v);
        return false;
      }
      case 'u': {  // SETITEMS
        auto items = pop_mark();
        value const d = top();
        if (d.k != kind::dict) fail_here(std::string("SETITEMS on an object of type ") + kind_name(d.k) + ", not a dict");
        if (items.size() % 2 != 0) fail_here("SETITEMS with an odd number of values");
        for (std::size_t k = 0; k < items.size(); k += 2) dicts_[index(d)].emplace_back(items[k], items[k + 1]);
        return false;
      }
      case 'a': {  // APPEND
        value const v = pop();
        value const l = top();
        if (l.k != kind::list) fail_here(std::string("APPEND to an object of type ") + kind_name(l.k) + ", not a list");
        sequences_[index(l)].push_back(v);
        return false;
      }
      case 'e': {  // APPENDS
        auto items = pop_mark();
        value const l = top();
        if (l.k != kind::list) fail_here(std::string("APPENDS to an object of type ") + kind_name(l.k) + ", not a list");
        auto& seq = sequences_[index(l)];
        seq.insert(seq.end(), items.begin(), items.end());
        return false;
      }
      case 'Q': persistent_id(); return false;  // BINPERSID
      default: {
        char const* name = opcode_name(op_);
        fail_here(std::string(name ? "unsupported" : "unknown") + " opcode " + hex(op_, 2) +
                  (name ? std::string(" (") + name + ")" : std::string()) + ": not part of a state dict");
      }
    }
  }

  /// BINPERSID: ('storage', torch.XStorage, key, location, numel) names a storage.
  void persistent_id() {
    value const pid = pop();
    if (pid.k != kind::tuple) fail_here(std::string("the persistent id is of type ") + kind_name(pid.k) + ", not a tuple");
    auto const& t = sequences_[index(pid)];
    if (t.size() != 5 || t[0].k != kind::string || string_of(t[0]) != "storage") {
      fail_here("the persistent id is not a tuple ('storage', type, key, location, numel)");
    }
    if (t[1].k != kind::global || t[1].i < storage_base) {
      fail_here("the persistent id's storage type is not one of torch's storage classes");
    }
    if (t[2].k != kind::string || t[3].k != kind::string) fail_here("the persistent id's key or location is not a string");
    if (t[4].k != kind::integer || t[4].i < 0) fail_here("the persistent id's element count is not an integer >= 0");
    storage_ref s{string_of(t[2]), static_cast<std::size_t>(t[1].i - storage_base), string_of(t[3]), t[4].i};
    if (s.key.empty()) fail_here("a storage has an empty key");
    auto const it = storage_by_key_.find(s.key);
    if (it != storage_by_key_.end()) {
      storage_ref const& old = storages_[it->second];
      if (old.type != s.type || old.numel != s.numel) {
        fail_here("storage " + quote_name(s.key) + " is named twice with different types or sizes");
      }
      push({kind::storage, static_cast<std::int64_t>(it->second)});
      return;
    }
    storages_.push_back(std::move(s));
    storage_by_key_.emplace(storages_.back().key, storages_.size() - 1);
    push({kind::storage, static_cast<std::int64_t>(storages_.size() - 1)});
  }

  std::vector<std::int64_t> int_tuple(value v, char const* what) {
    if (v.k != kind::tuple) fail_here(std::string("_rebuild_tensor_v2: the ") + what + " is of type " + kind_name(v.k) + ", not a tuple");
    auto const& items = sequences_[index(v)];
    if (items.size() > max_rank) {
      fail_here(std::string("_rebuild_tensor_v2: the ") + what + " has more than " + std::to_string(max_rank) +
                " dimensions");
    }
    std::vector<std::int64_t> out;
    for (value const& x : items) {
      if (x.k != kind::integer) fail_here(std::string("_rebuild_tensor_v2: the ") + what + " holds a non-integer");
      out.push_back(x.i);
    }
    return out;
  }

  /// REDUCE: call an allowed callable; nothing else can be called.
  void reduce() {
    value const args_v = pop();
    value const callable = pop();
    if (callable.k != kind::global) fail_here(std::string("REDUCE of an object of type ") + kind_name(callable.k) + ", not a callable");
    if (args_v.k != kind::tuple) fail_here("REDUCE with arguments that are not a tuple");
    if (sequences_[index(args_v)].size() > 7) {
      fail_here("REDUCE with " + std::to_string(sequences_[index(args_v)].size()) + " arguments (at most 7 are used)");
    }
    std::vector<value> const args = sequences_[index(args_v)];  // a copy: the arenas grow below
    switch (callable.i) {
      case ordered_dict:
        if (!args.empty()) fail_here("collections.OrderedDict is called with arguments");
        push(make_dict());
        return;
      case rebuild_tensor_v2: {
        if (args.size() != 6 && args.size() != 7) {
          fail_here("_rebuild_tensor_v2 takes 6 or 7 arguments, not " + std::to_string(args.size()));
        }
        if (args[0].k != kind::storage) fail_here(std::string("_rebuild_tensor_v2: the storage is of type ") + kind_name(args[0].k) + ", not a persistent storage");
        if (args[1].k != kind::integer) fail_here("_rebuild_tensor_v2: the storage offset is not an integer");
        tensor_ref t{index(args[0]), args[1].i, int_tuple(args[2], "size"), int_tuple(args[3], "stride")};
        if (t.shape.size() != t.stride.size()) {
          fail_here("_rebuild_tensor_v2: size and stride have different lengths (" + std::to_string(t.shape.size()) +
                    " and " + std::to_string(t.stride.size()) + ")");
        }
        if (args[4].k != kind::boolean && args[4].k != kind::integer) {
          fail_here("_rebuild_tensor_v2: requires_grad is not a bool");
        }
        for (std::size_t k = 5; k < args.size(); ++k) {
          if (args[k].k != kind::dict && args[k].k != kind::none) {
            fail_here("_rebuild_tensor_v2: backward hooks or metadata are not a dict");
          }
        }
        tensors_.push_back(std::move(t));
        push({kind::tensor, static_cast<std::int64_t>(tensors_.size() - 1)});
        return;
      }
      case rebuild_parameter:  // (data, requires_grad, backward_hooks): the tensor itself
        if (args.size() != 3 || args[0].k != kind::tensor) {
          fail_here("_rebuild_parameter takes (tensor, requires_grad, backward_hooks)");
        }
        push(args[0]);
        return;
      default:
        fail_here("REDUCE of " + quote_name(global_name(callable.i)) + " is not allowed");
    }
  }
};

/// \brief `a * b` into `out`, or false if it overflows `int64_t` (both >= 0).
inline bool mul_ok(std::int64_t a, std::int64_t b, std::int64_t& out) {
  if (a != 0 && b > std::numeric_limits<std::int64_t>::max() / a) return false;
  out = a * b;
  return true;
}

}  // namespace detail::torch_ckpt

/// \brief A PyTorch checkpoint (`torch.save` zip format): its directory and state dict are read and
/// validated on construction, its tensors on demand.
///
/// Example:
/// \code
///   ssm::io::torch_checkpoint ckpt("pytorch_model.bin");
///   std::vector<float> w = ckpt.read_as<float>("backbone.norm_f.weight", {2560});
///   bool tied = ckpt.contains("lm_head.weight") &&
///               ckpt.shares_storage("lm_head.weight", "backbone.embeddings.weight");
/// \endcode
///
/// The interface mirrors `ssm::io::safetensors_file`, so that a loader can treat both alike. The
/// constructor checks everything that can be checked without reading the tensors: the zip directory
/// (entries stored, inside the file, ZIP64 fields), the CRC-32 of `data.pkl`, the pickle, and for every
/// tensor its shape, strides and offset against its storage, and its storage's entry size against the
/// storage's element count and type. `read_as` opens the file anew on each call, so `const` member
/// functions may be called from several threads at once.
class torch_checkpoint {
 public:
  /// \brief Largest `data.pkl` accepted, in bytes (that of a 2.8B-parameter Mamba is about 100 kB).
  static constexpr std::uint64_t max_pickle_bytes = 64u << 20;
  /// \brief Most tensors accepted in the state dict (a 2.8B-parameter Mamba has about 600).
  static constexpr std::size_t max_tensors = 1u << 20;

  /// \brief Read and validate the zip directory and the state dict of the checkpoint at `path`.
  /// \param path the file to read, e.g. `pytorch_model.bin`
  /// \throws torch_checkpoint_error if the file cannot be read, or is malformed in any way
  explicit torch_checkpoint(std::filesystem::path const& path) : path_(path.string()), fs_path_(path) {
    try {
      load();
    } catch (detail::torch_ckpt::malformed const& e) {
      fail(e.what());
    }
  }

  /// \brief The path the file was read from, as given.
  /// \return the path, as a string.
  [[nodiscard]] std::string const& path() const noexcept { return path_; }

  /// \brief The name of the archive's folder, e.g. `"archive"` or `"pytorch_model"`.
  /// \return the part of the entries' names before the first `/`.
  [[nodiscard]] std::string const& archive_name() const noexcept { return archive_; }

  /// \brief Whether the state dict holds a tensor of this name.
  /// \param name tensor name, e.g. `"backbone.norm_f.weight"`
  /// \return true if `name` is one of `names()`.
  [[nodiscard]] bool contains(std::string const& name) const { return tensors_.count(name) != 0; }

  /// \brief The names of all tensors, sorted.
  /// \return a new vector of the names.
  [[nodiscard]] std::vector<std::string> names() const {
    std::vector<std::string> out;
    out.reserve(tensors_.size());
    for (auto const& entry : tensors_) out.push_back(entry.first);
    return out;
  }

  /// \brief Dtype, shape and byte range of a tensor.
  ///
  /// The dtype is spelled as in safetensors: `"F32"`, `"F16"`, `"BF16"`, `"F64"`, `"I64"`, `"I32"`, `"I16"`,
  /// `"I8"`, `"U8"` or `"BOOL"`. Unlike in a safetensors file, `begin` and `end` are relative to the start of
  /// the tensor's *storage* (the entry `<archive>/data/<key>`), and bound the bytes the tensor's elements
  /// occupy there: `end - begin` is `numel()` times the element size for a contiguous view (see `layout`) or
  /// a permutation of one (a transpose), and more for a view with gaps; both are `storage_offset` times the
  /// element size for a tensor without elements.
  /// \param name tensor name
  /// \return its entry, valid as long as this object lives.
  /// \throws torch_checkpoint_error if there is no such tensor
  [[nodiscard]] tensor_info const& info(std::string const& name) const { return record(name).info; }

  /// \brief Where a tensor lies within its storage: the storage's key, its offset and strides.
  /// \param name tensor name
  /// \return its layout, valid as long as this object lives.
  /// \throws torch_checkpoint_error if there is no such tensor
  [[nodiscard]] torch_tensor_layout const& layout(std::string const& name) const { return record(name).layout; }

  /// \brief Whether two tensors are views of one storage, as a tied `lm_head.weight` is of the embedding.
  /// \param a name of one tensor
  /// \param b name of the other
  /// \return true if both tensors use the same storage (they may still cover different elements of it).
  /// \throws torch_checkpoint_error if there is no tensor of either name
  [[nodiscard]] bool shares_storage(std::string const& a, std::string const& b) const {
    return record(a).layout.storage_key == record(b).layout.storage_key;
  }

  /// \brief Read a tensor, converted element by element to `T`, in row-major order.
  ///
  /// Offset and strides are honoured: a non-contiguous view (a transposed weight) comes back in the
  /// row-major order of its own shape. Conversions are those of `ssm::io::safetensors_file::read_as`:
  /// - to a real `T` (`float`, `double`, `ssm::f16`, `ssm::bf16`) from F32, F16, BF16 or F64: an identical
  ///   dtype copies the bits; otherwise the value is widened exactly with `ssm::to_float` and narrowed,
  ///   rounding to nearest even, with `ssm::from_float<T>` (F64 is first rounded to `float`).
  /// - to an integer `T` from I8, I16, I32, I64 or U8: exact, and a value that `T` cannot represent throws.
  /// - anything else (a real dtype to an integer `T`, an integer dtype to a real `T`, BOOL) throws.
  ///
  /// \tparam T destination element type
  /// \param name tensor name
  /// \param expected_shape if not empty, the shape the tensor must have, e.g. `{D, N}` for `A_log`
  ///        (an empty vector means: do not check; so a scalar's shape cannot be checked this way)
  /// \returns `info(name).numel()` values of type `T`, row-major (for shape `(d0, d1)`, element
  ///          `(i, j)` is at `i * d1 + j`)
  /// \throws torch_checkpoint_error if there is no such tensor, its shape differs from a non-empty
  ///         `expected_shape`, the conversion is not supported, an integer is out of range, or the file
  ///         cannot be read
  template <class T>
  [[nodiscard]] std::vector<T> read_as(std::string const& name,
                                       std::vector<std::int64_t> const& expected_shape = {}) const {
    static_assert(io::detail::is_real_v<T> || io::detail::is_integer_v<T>,
                  "read_as<T>: T must be float, double, ssm::f16, ssm::bf16 or an integer type");
    tensor_record const& r = record(name);
    tensor_info const& t = r.info;
    if (!expected_shape.empty() && expected_shape != t.shape) {
      fail("tensor '" + name + "' has shape " + io::detail::shape_string(t.shape) + ", expected " +
           io::detail::shape_string(expected_shape));
    }
    std::vector<T> out;
    auto const unsupported = [&]() {
      fail("cannot read tensor '" + name + "' of dtype " + t.dtype + " as " + io::detail::type_name<T>());
    };
    try {
      if constexpr (io::detail::is_real_v<T>) {
        if (t.dtype == "F32") read_elements<T, float>(name, r, out);
        else if (t.dtype == "F16") read_elements<T, ssm::f16>(name, r, out);
        else if (t.dtype == "BF16") read_elements<T, ssm::bf16>(name, r, out);
        else if (t.dtype == "F64") read_elements<T, double>(name, r, out);
        else unsupported();
      } else {
        if (t.dtype == "I64") read_elements<T, std::int64_t>(name, r, out);
        else if (t.dtype == "I32") read_elements<T, std::int32_t>(name, r, out);
        else if (t.dtype == "I16") read_elements<T, std::int16_t>(name, r, out);
        else if (t.dtype == "I8") read_elements<T, std::int8_t>(name, r, out);
        else if (t.dtype == "U8") read_elements<T, std::uint8_t>(name, r, out);
        else unsupported();
      }
    } catch (detail::torch_ckpt::malformed const& e) {
      fail(e.what());
    }
    return out;
  }

 private:
  struct tensor_record {
    tensor_info info;
    torch_tensor_layout layout;
    std::uint64_t storage_data_offset = 0;  // where the storage's entry begins in the file
    std::size_t itemsize = 0;
  };

  std::string path_;
  std::filesystem::path fs_path_;
  std::string archive_;
  std::map<std::string, tensor_record> tensors_;

  [[noreturn]] void fail(std::string const& problem) const { throw torch_checkpoint_error(path_, problem); }

  tensor_record const& record(std::string const& name) const {
    auto const it = tensors_.find(name);
    if (it == tensors_.end()) fail("no tensor named '" + name + "'");
    return it->second;
  }

  void load() {
    namespace tc = detail::torch_ckpt;
    tc::file_reader file(fs_path_);
    std::map<std::string, tc::zip_entry> const entries = tc::read_zip_directory(file);

    // data.pkl, in the one folder of the archive.
    tc::zip_entry const* pkl = nullptr;
    for (auto const& [name, entry] : entries) {
      std::size_t const slash = name.find('/');
      if (slash == std::string::npos || slash == 0 || name.substr(slash) != "/data.pkl") continue;
      if (pkl) tc::fail("the archive holds two data.pkl entries: " + tc::quote_name(pkl->name) + " and " + tc::quote_name(name));
      pkl = &entry;
      archive_ = name.substr(0, slash);
    }
    if (!pkl) {
      tc::fail("no data.pkl entry (expected '<archive>/data.pkl'): a zip archive, but not one that torch.save "
               "wrote");
    }
    std::string const prefix = archive_ + "/";

    if (auto const it = entries.find(prefix + "byteorder"); it != entries.end()) {
      if (it->second.size > 16) tc::fail("the byteorder entry is not 'little' or 'big'");
      auto const b = file.read(it->second.data_offset, static_cast<std::size_t>(it->second.size), "byteorder entry");
      std::string const order(reinterpret_cast<char const*>(b.data()), b.size());
      if (order != "little") {
        tc::fail("byteorder is " + tc::quote_name(order) + ": only little-endian checkpoints are supported");
      }
    }

    if (pkl->size > max_pickle_bytes) {
      tc::fail(tc::quote_name(pkl->name) + " of " + std::to_string(pkl->size) + " bytes exceeds the limit of " +
               std::to_string(max_pickle_bytes));
    }
    std::vector<std::byte> const pickle =
        file.read(pkl->data_offset, static_cast<std::size_t>(pkl->size), "entry " + tc::quote_name(pkl->name));
    if (std::uint32_t const crc = tc::crc32(pickle.data(), pickle.size()); crc != pkl->crc) {
      tc::fail("entry " + tc::quote_name(pkl->name) + " is corrupt: CRC-32 mismatch (" + tc::hex(crc, 8) +
               ", the directory says " + tc::hex(pkl->crc, 8) + ")");
    }

    tc::unpickler up(pickle.data(), pickle.size(), tc::quote_name(pkl->name));
    tc::value const root = up.run();
    if (root.k != tc::kind::dict) {
      tc::fail("the pickled object is of type " + std::string(tc::kind_name(root.k)) + ", not a dict (a state dict)");
    }
    if (up.dict_of(root).size() > max_tensors) {
      tc::fail("the state dict holds " + std::to_string(up.dict_of(root).size()) + " entries, more than the limit of " +
               std::to_string(max_tensors));
    }
    for (auto const& [key, val] : up.dict_of(root)) {
      if (key.k != tc::kind::string) {
        tc::fail(std::string("the state dict has a key of type ") + tc::kind_name(key.k) + ", not str");
      }
      std::string const& name = up.string_of(key);
      if (val.k != tc::kind::tensor) {
        tc::fail("the state dict's entry '" + name + "' is of type " + tc::kind_name(val.k) + ", not a tensor");
      }
      tensor_record r = check_tensor(name, up.tensors()[tc::unpickler::index(val)], up.storages(), entries, prefix);
      if (!tensors_.emplace(name, std::move(r)).second) tc::fail("the state dict holds the key '" + name + "' twice");
    }
  }

  /// Check a tensor against its storage, and the storage against its entry; build its record.
  static tensor_record check_tensor(std::string const& name, detail::torch_ckpt::tensor_ref const& t,
                                    std::vector<detail::torch_ckpt::storage_ref> const& storages,
                                    std::map<std::string, detail::torch_ckpt::zip_entry> const& entries,
                                    std::string const& prefix) {
    namespace tc = detail::torch_ckpt;
    std::string const where = "tensor '" + name + "': ";
    tc::storage_ref const& s = storages[t.storage];
    tc::storage_type const& type = tc::storage_types[s.type];
    auto const itemsize = static_cast<std::int64_t>(type.itemsize);

    // The storage's entry holds exactly numel elements.
    auto const entry = entries.find(prefix + "data/" + s.key);
    if (entry == entries.end()) {
      tc::fail(where + "its storage key " + tc::quote_name(s.key) + " has no entry " + tc::quote_name(prefix + "data/" + s.key));
    }
    std::int64_t storage_bytes = 0;
    if (!tc::mul_ok(s.numel, itemsize, storage_bytes) ||
        entry->second.size != static_cast<std::uint64_t>(storage_bytes)) {
      tc::fail(where + "storage " + tc::quote_name(s.key) + " of " + std::to_string(s.numel) + " " +
               std::string(type.dtype) + " elements needs " + std::to_string(s.numel) + " x " +
               std::to_string(itemsize) + " bytes, but its entry holds " + std::to_string(entry->second.size));
    }

    // Shape, strides and offset stay within the storage.
    std::int64_t numel = 1;
    for (std::size_t d = 0; d < t.shape.size(); ++d) {
      if (t.shape[d] < 0) tc::fail(where + "negative size " + std::to_string(t.shape[d]) + " in dimension " + std::to_string(d));
      if (t.stride[d] < 0) {
        tc::fail(where + "negative stride " + std::to_string(t.stride[d]) + " in dimension " + std::to_string(d));
      }
      if (!tc::mul_ok(numel, t.shape[d], numel)) {
        tc::fail(where + "the product of the size " + io::detail::shape_string(t.shape) + " overflows 64 bits");
      }
    }
    if (t.offset < 0) tc::fail(where + "negative storage offset " + std::to_string(t.offset));
    std::int64_t last = t.offset;  // index of the last element in the storage
    if (numel > 0) {
      for (std::size_t d = 0; d < t.shape.size(); ++d) {
        std::int64_t step = 0;
        if (!tc::mul_ok(t.shape[d] - 1, t.stride[d], step) || last > std::numeric_limits<std::int64_t>::max() - step) {
          tc::fail(where + "the size " + io::detail::shape_string(t.shape) + " and stride " +
                   io::detail::shape_string(t.stride) + " reach past 64-bit indices");
        }
        last += step;
      }
      if (last >= s.numel) {
        tc::fail(where + "size " + io::detail::shape_string(t.shape) + ", stride " + io::detail::shape_string(t.stride) +
                 " and offset " + std::to_string(t.offset) + " reach element " + std::to_string(last) + " of storage " +
                 tc::quote_name(s.key) + ", which holds only " + std::to_string(s.numel) + " (storage too small)");
      }
      if (numel > s.numel) {
        tc::fail(where + "has " + std::to_string(numel) + " elements but its storage holds only " +
                 std::to_string(s.numel) + ": views that repeat elements (stride 0, expand) are not supported");
      }
    } else if (t.offset > s.numel) {
      tc::fail(where + "storage offset " + std::to_string(t.offset) + " is past the end of storage " +
               tc::quote_name(s.key) + " (" + std::to_string(s.numel) + " elements)");
    }

    tensor_record r;
    r.info.dtype = std::string(type.dtype);
    r.info.shape = t.shape;
    r.info.begin = static_cast<std::uint64_t>(t.offset * itemsize);
    r.info.end = numel > 0 ? static_cast<std::uint64_t>((last + 1) * itemsize) : r.info.begin;
    r.layout.storage_key = s.key;
    r.layout.location = s.location;
    r.layout.storage_numel = s.numel;
    r.layout.storage_offset = t.offset;
    r.layout.stride = t.stride;
    if (numel > 0) {  // (a tensor without elements counts as contiguous)
      std::int64_t expected = 1;  // row-major stride; dimensions of size 1 may have any stride
      for (std::size_t d = t.shape.size(); d-- > 0;) {
        if (t.shape[d] != 1 && t.stride[d] != expected) r.layout.contiguous = false;
        expected *= t.shape[d];  // at most numel: cannot overflow
      }
    }
    r.storage_data_offset = entry->second.data_offset;
    r.itemsize = type.itemsize;
    return r;
  }

  template <class S>
  static S load_element(std::byte const* p) {
    if constexpr (std::is_same_v<S, ssm::f16> || std::is_same_v<S, ssm::bf16>) {
      return S{io::detail::load_le<std::uint16_t>(p)};
    } else {
      return io::detail::load_value<S>(p);
    }
  }

  template <class T, class S>
  void convert_one(std::string const& name, std::byte const* p, std::size_t i, std::vector<T>& out) const {
    S const x = load_element<S>(p);
    if constexpr (io::detail::is_real_v<T>) {
      out.push_back(io::detail::convert_real<T>(x));
    } else {
      if (!std::in_range<T>(x)) {
        fail("tensor '" + name + "': element " + std::to_string(i) + " = " + std::to_string(x) +
             " does not fit in " + io::detail::type_name<T>());
      }
      out.push_back(static_cast<T>(x));
    }
  }

  /// Read the elements of a tensor, of storage type `S`, converting each to `T`.
  template <class T, class S>
  void read_elements(std::string const& name, tensor_record const& r, std::vector<T>& out) const {
    static_assert(sizeof(S) == 1 || sizeof(S) == 2 || sizeof(S) == 4 || sizeof(S) == 8);
    auto const n = static_cast<std::size_t>(r.info.numel());
    if (n == 0) return;
    out.reserve(n);  // n <= storage numel, whose bytes lie in the file (checked on load)
    detail::torch_ckpt::file_reader file(fs_path_);
    std::string const what = "data of tensor '" + name + "'";
    std::uint64_t const base = r.storage_data_offset + r.info.begin;
    std::vector<std::byte> buffer;
    if (r.layout.contiguous) {  // in chunks of at most 16 MiB
      std::size_t const chunk = std::max<std::size_t>(1, (std::size_t{16} << 20) / sizeof(S));
      for (std::size_t first = 0; first < n; first += chunk) {
        std::size_t const count = std::min(chunk, n - first);
        buffer.resize(count * sizeof(S));
        file.read(base + first * sizeof(S), buffer.data(), buffer.size(), what);
        for (std::size_t k = 0; k < count; ++k) convert_one<T, S>(name, buffer.data() + k * sizeof(S), first + k, out);
      }
      return;
    }
    // A strided view: read the span of the storage it covers, then gather in row-major order.
    buffer.resize(static_cast<std::size_t>(r.info.nbytes()));
    file.read(base, buffer.data(), buffer.size(), what);
    std::vector<std::int64_t> const& shape = r.info.shape;
    std::vector<std::int64_t> const& stride = r.layout.stride;
    std::vector<std::int64_t> index(shape.size(), 0);
    std::int64_t at = 0;  // storage index relative to the offset
    for (std::size_t i = 0; i < n; ++i) {
      convert_one<T, S>(name, buffer.data() + static_cast<std::size_t>(at) * sizeof(S), i, out);
      for (std::size_t d = shape.size(); d-- > 0;) {  // the odometer: the last dimension moves fastest
        if (++index[d] < shape[d]) {
          at += stride[d];
          break;
        }
        at -= (index[d] - 1) * stride[d];
        index[d] = 0;
      }
    }
  }
};

}  // namespace ssm::io
