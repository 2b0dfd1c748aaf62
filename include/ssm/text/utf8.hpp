#pragma once
/// \file
/// \brief UTF-8 validation and repair with the semantics of Rust's `String::from_utf8_lossy`.
///
/// HuggingFace tokenizers decodes byte-level tokens to bytes and turns them into text with Rust's
/// `String::from_utf8_lossy`, which replaces every *maximal subpart* of an ill-formed sequence by
/// one U+FFFD REPLACEMENT CHARACTER (the practice the Unicode Standard recommends, §3.9 "U+FFFD
/// Substitution of Maximal Subparts"): a lead byte followed by fewer continuation bytes than it
/// needs counts once, a byte that can never start a sequence counts once per byte. The functions
/// here implement exactly that, on the well-formed byte sequences of Table 3-7 of the Standard (no
/// overlong forms, no surrogates, nothing above U+10FFFF).

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace ssm::text::utf8 {

/// \brief What starts at one position of a byte string: a character, an ill-formed subpart, or the
/// beginning of a character cut off by the end of the string.
struct sequence {
  /// \brief How the bytes at the position read.
  enum class kind : std::uint8_t {
    valid,       ///< a well-formed character of `length` bytes
    invalid,     ///< an ill-formed maximal subpart of `length` bytes (one U+FFFD when repaired)
    incomplete,  ///< the `length` bytes up to the end are a proper prefix of a well-formed character
  };
  kind what = kind::valid;  ///< how the bytes read
  std::size_t length = 0;   ///< how many bytes, at least 1
};

/// \brief Read the character, ill-formed subpart or cut-off character that starts at `pos`.
/// \param bytes the byte string
/// \param pos a position in it, less than `bytes.size()`
/// \return its kind and length in bytes (1 to 4)
inline sequence next_sequence(std::string_view bytes, std::size_t pos) noexcept {
  auto const byte = [&](std::size_t i) { return static_cast<unsigned char>(bytes[i]); };
  unsigned const lead = byte(pos);
  if (lead < 0x80u) return {sequence::kind::valid, 1};
  std::size_t need = 0;               // total length of the sequence the lead byte announces
  unsigned lo = 0x80u, hi = 0xBFu;    // the range of the second byte (Table 3-7)
  if (lead >= 0xC2u && lead <= 0xDFu) {
    need = 2;
  } else if (lead >= 0xE0u && lead <= 0xEFu) {
    need = 3;
    if (lead == 0xE0u) lo = 0xA0u;    // no overlong forms
    if (lead == 0xEDu) hi = 0x9Fu;    // no surrogates
  } else if (lead >= 0xF0u && lead <= 0xF4u) {
    need = 4;
    if (lead == 0xF0u) lo = 0x90u;    // no overlong forms
    if (lead == 0xF4u) hi = 0x8Fu;    // nothing above U+10FFFF
  } else {
    return {sequence::kind::invalid, 1};  // a continuation byte, C0, C1 or F5..FF
  }
  for (std::size_t k = 1; k < need; ++k) {
    if (pos + k >= bytes.size()) return {sequence::kind::incomplete, k};
    unsigned const b = byte(pos + k);
    bool const ok = k == 1 ? (b >= lo && b <= hi) : (b >= 0x80u && b <= 0xBFu);
    if (!ok) return {sequence::kind::invalid, k};
  }
  return {sequence::kind::valid, need};
}

/// \brief The offset of the first byte that is not part of a well-formed character.
/// \param bytes the byte string to check
/// \return the offset, or `std::string_view::npos` when `bytes` is well-formed UTF-8
inline std::size_t first_invalid(std::string_view bytes) noexcept {
  std::size_t pos = 0;
  while (pos < bytes.size()) {
    if (static_cast<unsigned char>(bytes[pos]) < 0x80u) {
      ++pos;
      continue;
    }
    sequence const s = next_sequence(bytes, pos);
    if (s.what != sequence::kind::valid) return pos;
    pos += s.length;
  }
  return std::string_view::npos;
}

/// \brief Whether a byte string is well-formed UTF-8.
/// \param bytes the byte string to check
/// \return true when every byte belongs to a well-formed character
inline bool is_valid(std::string_view bytes) noexcept { return first_invalid(bytes) == std::string_view::npos; }

/// \brief The UTF-8 encoding of U+FFFD REPLACEMENT CHARACTER.
inline constexpr std::string_view replacement_character = "\xEF\xBF\xBD";

/// \brief Append `bytes` to `out` as text: well-formed characters as they are, each ill-formed
/// maximal subpart (a cut-off character at the end included) as one U+FFFD, like Rust's
/// `String::from_utf8_lossy`.
/// \param bytes the byte string to repair
/// \param out the string appended to
inline void append_lossy(std::string_view bytes, std::string& out) {
  std::size_t pos = 0;
  while (pos < bytes.size()) {
    std::size_t run = pos;  // copy runs of well-formed characters at once
    while (run < bytes.size()) {
      if (static_cast<unsigned char>(bytes[run]) < 0x80u) {
        ++run;
        continue;
      }
      sequence const s = next_sequence(bytes, run);
      if (s.what != sequence::kind::valid) break;
      run += s.length;
    }
    out.append(bytes.substr(pos, run - pos));
    pos = run;
    if (pos < bytes.size()) {
      out.append(replacement_character);
      pos += next_sequence(bytes, pos).length;
    }
  }
}

/// \brief `bytes` as text, each ill-formed maximal subpart replaced by one U+FFFD (Rust's
/// `String::from_utf8_lossy`).
/// \param bytes the byte string to repair
/// \return well-formed UTF-8
inline std::string lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  append_lossy(bytes, out);
  return out;
}

/// \brief The length of the longest prefix of `bytes` that does not end inside a character that
/// more bytes could still complete: everything except a trailing `sequence::kind::incomplete`.
///
/// Repairing that prefix with `append_lossy` and the rest later, once more bytes have been
/// appended to it, gives the same text as repairing the whole at once.
/// \param bytes the bytes received so far
/// \return the length of the prefix that can be repaired and emitted now
inline std::size_t complete_prefix(std::string_view bytes) noexcept {
  std::size_t pos = 0;
  while (pos < bytes.size()) {
    if (static_cast<unsigned char>(bytes[pos]) < 0x80u) {
      ++pos;
      continue;
    }
    sequence const s = next_sequence(bytes, pos);
    if (s.what == sequence::kind::incomplete) return pos;
    pos += s.length;
  }
  return pos;
}

}  // namespace ssm::text::utf8
