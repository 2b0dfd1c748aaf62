#pragma once
/// \file
/// \brief HuggingFace `tokenizer.json` byte-level BPE, as GPT-NeoX (the tokenizer of the
/// state-spaces/mamba models) uses it: `ssm::text::tokenizer` and `ssm::text::stream_decoder`.
///
/// Encoding follows HuggingFace tokenizers (0.22) step by step, and gives the same ids:
///
/// 1. **Added tokens that are not normalized** (`"normalized": false`: GPT-NeoX's special tokens
///    `<|endoftext|>` and `<|padding|>`) are found in the raw text, leftmost first and, among
///    those that start at the same byte, longest first. A token with `single_word` matches only
///    where neither the character before nor the one after is a word character (Unicode `\w`:
///    alphabetic, mark, decimal digit, connector punctuation, join control); `lstrip` and `rstrip`
///    make the token swallow the white space (Unicode White_Space) on its left or right.
/// 2. Each piece of text between them is **normalized** (NFC, with utf8proc) on its own, then the
///    **added tokens that are normalized** (GPT-NeoX's runs of 2 to 24 spaces; their content is
///    normalized too) are found in it the same way.
/// 3. Each piece left is **pre-tokenized** by `ByteLevel`: a space is prepended when
///    `add_prefix_space` is set and the piece does not start with one, the piece is split by GPT-2's
///    pattern `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
///    (when `use_regex`, the default; PCRE2 in UTF and Unicode-property mode, with `\s` spelled
///    `\p{White_Space}` as Oniguruma, the engine of tokenizers, reads it), and every byte of each
///    part is mapped to GPT-2's printable stand-in character for it.
/// 4. Each part is **split into bytes and merged by BPE**: the adjacent pair of lowest merge rank
///    is merged first (leftmost among equals), until no pair has a rank. Results are cached per
///    part (the pieces of natural text repeat a lot), in a cache shared by copies of the tokenizer.
///
/// Decoding maps each id to its token (an added token's content as written in the file, as
/// tokenizers 0.22 does, where 0.23 takes its normalized content; or the vocabulary's string),
/// maps each token's characters back to bytes (a token with a character outside GPT-2's byte
/// alphabet, such as an added run of spaces, counts as its own UTF-8 bytes), and turns the bytes
/// into text as Rust's `String::from_utf8_lossy` does: every ill-formed part becomes one U+FFFD
/// (see ssm/text/utf8.hpp). Ids that name no token are skipped, as tokenizers skips them.
///
/// What is accepted from `tokenizer.json`: model `BPE` (with `unk_token`, `fuse_unk` and
/// `ignore_merges`; merges as `"a b"` strings or `["a", "b"]` pairs; vocabulary ids 0..N-1);
/// normalizer `NFC` or none (or a `Sequence` of `NFC`s); pre-tokenizer and decoder `ByteLevel`;
/// post-processor `ByteLevel` or none (neither adds tokens to an encoding). Anything else is
/// refused with a `tokenizer_error` that names the file and what is unsupported or malformed.
/// `truncation` and `padding` are batch settings of tokenizers' Python API and are ignored:
/// `encode` neither truncates nor pads.
///
/// The ids of added tokens must be those tokenizers gives them: the vocabulary's id for a token in
/// the vocabulary, else the next id after the vocabulary and the added tokens before it
/// (tokenizers ignores the file's id, and warns at most). A file that says otherwise is refused.
///
/// The text to encode must be well-formed UTF-8 (tokenizers takes Rust strings, which always are;
/// Python hands it nothing else): `encode` refuses any other input with a `tokenizer_error` that
/// gives the offset of the first bad byte, rather than guess what it meant.
///
/// Unicode data comes from the system's PCRE2 (character properties of the split pattern) and
/// utf8proc (NFC). Where their Unicode version differs from the one tokenizers was built with
/// (Oniguruma's, and unicode-normalization's), characters assigned in between could be classified
/// differently. With Debian 12's PCRE2 10.42 and utf8proc 2.8, every code point, put in contexts
/// that exercise each branch of the pattern and NFC, encodes as tokenizers 0.22.1 encodes it
/// (tests/text/test_differential.cpp, "[sweep]").

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <utility>
#include <vector>

#ifndef PCRE2_CODE_UNIT_WIDTH
/// \brief PCRE2 is used with 8-bit code units (UTF-8); the `_8` functions are called explicitly.
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>
#include <utf8proc.h>

#include <nlohmann/json.hpp>

#include <ssm/core/error.hpp>
#include <ssm/text/utf8.hpp>

namespace ssm::text {

/// \brief The error thrown for a missing, unreadable, malformed or unsupported tokenizer file, and
/// for text or ids the tokenizer cannot take.
///
/// `what()` reads: tokenizer 'SOURCE': PROBLEM, with SOURCE the file's path (or the name given to
/// `tokenizer::from_json`) and PROBLEM the description of what is wrong.
class tokenizer_error : public ssm::error {
 public:
  /// \brief Build the message from the tokenizer's source and a description of the problem.
  /// \param source the file's path, or the name of a tokenizer read from a string
  /// \param problem what is wrong
  tokenizer_error(std::string const& source, std::string const& problem)
      : ssm::error("tokenizer '" + source + "': " + problem) {}
};

/// \brief One entry of the `added_tokens` of `tokenizer.json`: a token matched in the text before
/// BPE (tokenizers' `AddedToken`).
struct added_token {
  std::int32_t id = 0;       ///< its id
  std::string content;       ///< the text it stands for, as written in the file
  bool special = false;      ///< special: skipped by `decode(ids, true)`, matched only when encoding allows it
  bool single_word = false;  ///< matches only between non-word characters (or the ends of the text)
  bool lstrip = false;       ///< swallows the white space on its left
  bool rstrip = false;       ///< swallows the white space on its right
  bool normalized = true;    ///< matched in the normalized text (its content normalized too), not the raw text
};

namespace detail {

/// \brief GPT-2's map between bytes and the printable characters that stand for them in
/// byte-level vocabularies (`bytes_to_unicode` of openai/gpt-2's encoder.py), computed as there.
struct byte_level_alphabet {
  std::array<char32_t, 256> char_of_byte{};     ///< the character that stands for each byte
  std::array<std::string, 256> utf8_of_byte{};  ///< its UTF-8
  std::array<std::int16_t, 512> byte_of_char{};  ///< the byte each character below U+0200 stands for, or -1
};

/// \brief Append the UTF-8 encoding of a code point (below U+110000, not a surrogate).
inline void append_utf8(char32_t c, std::string& out) {
  auto const u = static_cast<std::uint32_t>(c);
  if (u < 0x80u) {
    out.push_back(static_cast<char>(u));
  } else if (u < 0x800u) {
    out.push_back(static_cast<char>(0xC0u | (u >> 6)));
    out.push_back(static_cast<char>(0x80u | (u & 0x3Fu)));
  } else if (u < 0x10000u) {
    out.push_back(static_cast<char>(0xE0u | (u >> 12)));
    out.push_back(static_cast<char>(0x80u | ((u >> 6) & 0x3Fu)));
    out.push_back(static_cast<char>(0x80u | (u & 0x3Fu)));
  } else {
    out.push_back(static_cast<char>(0xF0u | (u >> 18)));
    out.push_back(static_cast<char>(0x80u | ((u >> 12) & 0x3Fu)));
    out.push_back(static_cast<char>(0x80u | ((u >> 6) & 0x3Fu)));
    out.push_back(static_cast<char>(0x80u | (u & 0x3Fu)));
  }
}

/// \brief Decode the character of well-formed UTF-8 at `pos` and advance `pos` past it.
inline char32_t decode_utf8(std::string_view s, std::size_t& pos) {
  auto const b = [&](std::size_t i) { return static_cast<std::uint32_t>(static_cast<unsigned char>(s[i])); };
  std::uint32_t const lead = b(pos);
  if (lead < 0x80u) {
    pos += 1;
    return lead;
  }
  if (lead < 0xE0u) {
    char32_t const c = ((lead & 0x1Fu) << 6) | (b(pos + 1) & 0x3Fu);
    pos += 2;
    return c;
  }
  if (lead < 0xF0u) {
    char32_t const c = ((lead & 0x0Fu) << 12) | ((b(pos + 1) & 0x3Fu) << 6) | (b(pos + 2) & 0x3Fu);
    pos += 3;
    return c;
  }
  char32_t const c =
      ((lead & 0x07u) << 18) | ((b(pos + 1) & 0x3Fu) << 12) | ((b(pos + 2) & 0x3Fu) << 6) | (b(pos + 3) & 0x3Fu);
  pos += 4;
  return c;
}

/// \brief The byte-level alphabet, built once.
inline byte_level_alphabet const& byte_level() {
  static byte_level_alphabet const alphabet = [] {
    byte_level_alphabet a;
    std::array<bool, 256> printable{};
    for (unsigned b = '!'; b <= '~'; ++b) printable[b] = true;
    for (unsigned b = 0xA1; b <= 0xAC; ++b) printable[b] = true;
    for (unsigned b = 0xAE; b <= 0xFF; ++b) printable[b] = true;
    char32_t next = 256;
    for (unsigned b = 0; b < 256; ++b) a.char_of_byte[b] = printable[b] ? char32_t(b) : next++;
    a.byte_of_char.fill(-1);
    for (unsigned b = 0; b < 256; ++b) {
      append_utf8(a.char_of_byte[b], a.utf8_of_byte[b]);
      a.byte_of_char[a.char_of_byte[b]] = static_cast<std::int16_t>(b);
    }
    return a;
  }();
  return alphabet;
}

/// \brief What tokenizers' ByteLevel decoder makes of one token: the bytes its characters stand
/// for, or the token's own UTF-8 when one of its characters is outside the byte-level alphabet.
inline std::string byte_level_decode(std::string_view token) {
  auto const& alphabet = byte_level();
  std::string bytes;
  std::size_t pos = 0;
  while (pos < token.size()) {
    char32_t const c = decode_utf8(token, pos);
    if (c >= alphabet.byte_of_char.size() || alphabet.byte_of_char[c] < 0) return std::string(token);
    bytes.push_back(static_cast<char>(static_cast<unsigned char>(alphabet.byte_of_char[c])));
  }
  return bytes;
}

/// \brief A compiled PCRE2 pattern (UTF and Unicode properties, JIT-compiled where available),
/// shared by copies.
class regex {
 public:
  regex() = default;
  /// \brief Compile `pattern`; throws std::logic_error when it does not compile (a bug).
  explicit regex(std::string_view pattern) {
    int code = 0;
    PCRE2_SIZE offset = 0;
    pcre2_code_8* compiled = pcre2_compile_8(reinterpret_cast<PCRE2_SPTR8>(pattern.data()), pattern.size(),
                                             PCRE2_UTF | PCRE2_UCP, &code, &offset, nullptr);
    if (compiled == nullptr) {
      throw std::logic_error("ssm::text: PCRE2 does not compile '" + std::string(pattern) + "': " + message(code));
    }
    code_.reset(compiled, [](pcre2_code_8* p) { pcre2_code_free_8(p); });
    (void)pcre2_jit_compile_8(compiled, PCRE2_JIT_COMPLETE);  // the interpreter is the fallback
  }
  /// \brief The compiled pattern.
  [[nodiscard]] pcre2_code_8 const* get() const noexcept { return code_.get(); }
  /// \brief PCRE2's description of an error code.
  static std::string message(int code) {
    std::array<PCRE2_UCHAR8, 256> buffer{};
    int const n = pcre2_get_error_message_8(code, buffer.data(), buffer.size());
    return n < 0 ? "PCRE2 error " + std::to_string(code)
                 : std::string(reinterpret_cast<char const*>(buffer.data()), static_cast<std::size_t>(n));
  }

 private:
  std::shared_ptr<pcre2_code_8> code_;
};

/// \brief Match data for one regex, owned by one thread at a time.
class matcher {
 public:
  /// \brief Match data sized for `re`.
  explicit matcher(regex const& re)
      : re_(&re), data_(pcre2_match_data_create_from_pattern_8(re.get(), nullptr), &pcre2_match_data_free_8) {
    if (!data_) throw std::bad_alloc();
  }
  /// \brief Search `subject` (well-formed UTF-8) from `offset`; on a match set [begin, end).
  /// \return true on a match, false on none; throws std::runtime_error on a PCRE2 failure.
  bool find(std::string_view subject, std::size_t offset, std::size_t& begin, std::size_t& end,
            std::uint32_t options = 0) {
    int const rc = pcre2_match_8(re_->get(), reinterpret_cast<PCRE2_SPTR8>(subject.data()), subject.size(), offset,
                                 options | PCRE2_NO_UTF_CHECK, data_.get(), nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) return false;
    if (rc < 0) throw std::runtime_error("PCRE2 matching failed: " + regex::message(rc));
    PCRE2_SIZE const* ovector = pcre2_get_ovector_pointer_8(data_.get());
    begin = ovector[0];
    end = ovector[1];
    return true;
  }
  /// \brief Whether the pattern matches at exactly `offset` (anchored there).
  bool matches_at(std::string_view subject, std::size_t offset) {
    std::size_t begin = 0, end = 0;
    return find(subject, offset, begin, end, PCRE2_ANCHORED);
  }

 private:
  regex const* re_;
  std::unique_ptr<pcre2_match_data_8, void (*)(pcre2_match_data_8*)> data_;
};

/// \brief NFC of well-formed UTF-8 by utf8proc.
inline void append_nfc_utf8proc(std::string_view s, std::string& out) {
  utf8proc_uint8_t* result = nullptr;
  utf8proc_ssize_t const n =
      utf8proc_map(reinterpret_cast<utf8proc_uint8_t const*>(s.data()), static_cast<utf8proc_ssize_t>(s.size()),
                   &result, static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  if (n < 0) throw std::runtime_error(std::string("utf8proc cannot normalize the text: ") + utf8proc_errmsg(n));
  out.append(reinterpret_cast<char const*>(result), static_cast<std::size_t>(n));
  std::free(result);
}

/// \brief NFC of well-formed UTF-8: ASCII is copied, and utf8proc normalizes each run of other
/// characters together with the ASCII character before it. That is exact: an ASCII character
/// has combining class 0 and is never the second character of a composition, so normalization
/// never reaches across it to the left.
inline std::string nfc(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  std::size_t pos = 0;
  while (pos < s.size()) {
    std::size_t ascii = pos;
    while (ascii < s.size() && static_cast<unsigned char>(s[ascii]) < 0x80u) ++ascii;
    std::size_t begin = ascii;  // the run of non-ASCII starts here, with the ASCII character before it
    if (begin > pos) --begin;
    out.append(s.substr(pos, begin - pos));
    if (ascii == s.size()) {
      out.append(s.substr(begin));
      break;
    }
    std::size_t end = ascii;
    while (end < s.size() && static_cast<unsigned char>(s[end]) >= 0x80u) ++end;
    append_nfc_utf8proc(s.substr(begin, end - begin), out);
    pos = end;
  }
  return out;
}

/// \brief A byte trie of added tokens' contents that finds leftmost-longest, non-overlapping
/// matches, as the Aho-Corasick automaton of tokenizers (`MatchKind::LeftmostLongest`) does.
class token_trie {
 public:
  /// \brief Add a pattern (not empty) with a value; a pattern added twice keeps its first value.
  void insert(std::string_view pattern, std::int32_t value) {
    std::int32_t node = 0;
    for (char ch : pattern) {
      auto const byte = static_cast<unsigned char>(ch);
      auto& next = nodes_[static_cast<std::size_t>(node)].next;
      auto it = std::lower_bound(next.begin(), next.end(), byte,
                                 [](auto const& edge, unsigned char b) { return edge.first < b; });
      if (it != next.end() && it->first == byte) {
        node = it->second;
      } else {
        auto const child = static_cast<std::int32_t>(nodes_.size());
        next.insert(it, {byte, child});
        nodes_.emplace_back();
        node = child;
      }
    }
    auto& target = nodes_[static_cast<std::size_t>(node)].value;
    if (target < 0) target = value;
    first_[static_cast<unsigned char>(pattern.front())] = true;
    empty_ = false;
  }
  /// \brief Whether no pattern was added.
  [[nodiscard]] bool empty() const noexcept { return empty_; }
  /// \brief Call `f(begin, end, value)` for each leftmost-longest match, left to right.
  template <class F>
  void for_each_match(std::string_view text, F&& f) const {
    std::size_t pos = 0;
    while (pos < text.size()) {
      if (!first_[static_cast<unsigned char>(text[pos])]) {
        ++pos;
        continue;
      }
      std::int32_t node = 0, found = -1;
      std::size_t found_end = 0;
      for (std::size_t i = pos; i < text.size(); ++i) {
        auto const byte = static_cast<unsigned char>(text[i]);
        auto const& next = nodes_[static_cast<std::size_t>(node)].next;
        auto it = std::lower_bound(next.begin(), next.end(), byte,
                                   [](auto const& edge, unsigned char b) { return edge.first < b; });
        if (it == next.end() || it->first != byte) break;
        node = it->second;
        if (nodes_[static_cast<std::size_t>(node)].value >= 0) {
          found = nodes_[static_cast<std::size_t>(node)].value;
          found_end = i + 1;
        }
      }
      if (found >= 0) {
        f(pos, found_end, found);
        pos = found_end;
      } else {
        ++pos;
      }
    }
  }

 private:
  struct trie_node {
    std::vector<std::pair<unsigned char, std::int32_t>> next;  // sorted by byte
    std::int32_t value = -1;
  };
  std::vector<trie_node> nodes_ = std::vector<trie_node>(1);
  std::array<bool, 256> first_{};
  bool empty_ = true;
};

/// \brief Hash of strings that also looks up string views.
struct string_hash {
  using is_transparent = void;  ///< enables lookups by std::string_view
  std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};

/// \brief BPE results per pre-tokenized word, shared by the copies of a tokenizer; thread-safe.
class bpe_cache {
 public:
  /// \brief Append the cached ids of `word` to `out`; false when it is not cached.
  bool find(std::string_view word, std::vector<std::int32_t>& out) const {
    std::shared_lock lock(mutex_);
#if defined(__cpp_lib_generic_unordered_lookup) && __cpp_lib_generic_unordered_lookup >= 201811L
    auto it = map_.find(word);
#else
    auto it = map_.find(std::string(word));
#endif
    if (it == map_.end()) return false;
    auto const first = ids_.begin() + static_cast<std::ptrdiff_t>(it->second.first);
    out.insert(out.end(), first, first + static_cast<std::ptrdiff_t>(it->second.second));
    return true;
  }
  /// \brief Remember the ids of `word`, unless the cache is full.
  void insert(std::string_view word, std::span<std::int32_t const> ids) {
    std::unique_lock lock(mutex_);
    if (map_.size() >= max_words || ids_.size() + ids.size() > max_ids) return;
    if (map_.emplace(std::string(word), std::pair<std::size_t, std::size_t>(ids_.size(), ids.size())).second) {
      ids_.insert(ids_.end(), ids.begin(), ids.end());
    }
  }
  static constexpr std::size_t max_words = std::size_t{1} << 18;  ///< words remembered at most
  static constexpr std::size_t max_ids = std::size_t{1} << 22;    ///< ids remembered at most
  static constexpr std::size_t max_word_bytes = 256;              ///< longer words are not cached (as tokenizers)

 private:
  mutable std::shared_mutex mutex_;
  std::unordered_map<std::string, std::pair<std::size_t, std::size_t>, string_hash, std::equal_to<>> map_;
  std::vector<std::int32_t> ids_;
};

/// \brief Everything a loaded tokenizer knows; immutable once built, shared by copies.
struct tokenizer_data {
  std::string source;  ///< the file's path, or the name given to from_json

  bool nfc = false;               ///< the normalizer is NFC (else none)
  bool add_prefix_space = false;  ///< ByteLevel's add_prefix_space
  bool use_regex = true;          ///< ByteLevel's use_regex

  std::unordered_map<std::string, std::int32_t, string_hash, std::equal_to<>> vocab;  ///< the model's tokens
  std::unordered_map<std::uint64_t, std::pair<std::int32_t, std::int32_t>> merges;    ///< (a, b) -> (rank, id of ab)
  std::array<std::int32_t, 256> byte_ids{};  ///< the id of each byte's character, or -1
  std::int32_t unk_id = -1;                  ///< the unknown token, or -1
  bool fuse_unk = false;                     ///< consecutive unknown bytes make one unknown token
  bool ignore_merges = false;                ///< a word in the vocabulary is one token, without merges

  std::vector<added_token> added;  ///< the added tokens, in the file's order
  std::unordered_map<std::string, std::int32_t, string_hash, std::equal_to<>> added_ids;  ///< content -> id
  token_trie raw_trie;         ///< the added tokens with normalized = false (values index `added`)
  token_trie normalized_trie;  ///< the added tokens with normalized = true, by normalized content

  std::vector<std::string> text;   ///< each id's token
  std::vector<std::string> bytes;  ///< what each id decodes to
  std::vector<std::uint8_t> kind;  ///< 0 no token, 1 a token, 2 a special token

  regex split;        ///< GPT-2's pre-tokenizer pattern
  regex word_char;    ///< one character of Rust's Unicode \w
  regex white_space;  ///< one character of Unicode White_Space
};

/// \brief Key of a merge: the pair of ids.
inline std::uint64_t pair_key(std::int32_t a, std::int32_t b) noexcept {
  return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
}

/// \brief A short, printable rendering of a token for error messages.
inline std::string token_for_message(std::string_view s) {
  std::string out = "'";
  for (char ch : s.substr(0, 64)) {
    auto const c = static_cast<unsigned char>(ch);
    if (c < 0x20u || c == 0x7Fu) {
      static constexpr char hex[] = "0123456789abcdef";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 0xFu];
    } else {
      out.push_back(ch);
    }
  }
  if (s.size() > 64) out += "...";
  return utf8::lossy(out) + "'";
}

/// \brief Reads a tokenizer.json document, refusing what is malformed or unsupported.
class loader {
 public:
  /// \brief Prepare to load a document from `source`.
  explicit loader(std::string source) : source_(std::move(source)) {}

  /// \brief Build the tokenizer's data from the parsed document.
  std::shared_ptr<tokenizer_data> load(nlohmann::json const& doc) {
    if (!doc.is_object()) fail("the top level is not a JSON object");
    auto d = std::make_shared<tokenizer_data>();
    d->source = source_;
    if (auto it = doc.find("version"); it != doc.end() && !(it->is_string() && *it == "1.0")) {
      fail("unknown format version " + it->dump() + " (only \"1.0\" is known)");
    }
    read_normalizer(doc, *d);
    read_pre_tokenizer(doc, *d);
    read_decoder(doc);
    read_post_processor(doc);
    read_model(doc, *d);
    read_added_tokens(doc, *d);
    d->split = regex(
        R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\p{White_Space}\p{L}\p{N}]+)"
        R"(|\p{White_Space}+(?!\P{White_Space})|\p{White_Space}+)");
    d->word_char = regex(R"([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}])");
    d->white_space = regex(R"(\p{White_Space})");
    return d;
  }

 private:
  std::string source_;

  [[noreturn]] void fail(std::string const& problem) const { throw tokenizer_error(source_, problem); }

  static std::string type_of(nlohmann::json const& component) {
    if (component.is_null()) return "null";
    if (!component.is_object()) return component.dump();
    auto it = component.find("type");
    if (it == component.end()) return "(no type)";
    return it->is_string() ? it->get<std::string>() : it->dump();
  }

  bool optional_bool(nlohmann::json const& object, char const* key, bool fallback, std::string const& where) const {
    auto it = object.find(key);
    if (it == object.end() || it->is_null()) return fallback;
    if (!it->is_boolean()) fail(where + ": \"" + key + "\" is not true or false");
    return it->get<bool>();
  }

  void read_normalizer(nlohmann::json const& doc, tokenizer_data& d) const {
    auto it = doc.find("normalizer");
    if (it == doc.end() || it->is_null()) return;
    auto const supported = [](nlohmann::json const& n) { return n.is_object() && n.value("type", "") == "NFC"; };
    if (supported(*it)) {
      d.nfc = true;
      return;
    }
    if (it->is_object() && it->value("type", "") == "Sequence") {
      auto list = it->find("normalizers");
      if (list != it->end() && list->is_array() &&
          std::all_of(list->begin(), list->end(), [&](auto const& n) { return supported(n); })) {
        d.nfc = !list->empty();
        return;
      }
      fail("normalizer Sequence: only a sequence of NFC normalizers is supported");
    }
    fail("normalizer '" + type_of(*it) + "' is not supported (only NFC, or none)");
  }

  void read_pre_tokenizer(nlohmann::json const& doc, tokenizer_data& d) const {
    auto it = doc.find("pre_tokenizer");
    if (it == doc.end()) fail("missing the field \"pre_tokenizer\"");
    std::string const type = type_of(*it);
    if (type != "ByteLevel") fail("pre_tokenizer '" + type + "' is not supported (only ByteLevel)");
    auto prefix = it->find("add_prefix_space");
    if (prefix == it->end()) fail("pre_tokenizer ByteLevel has no \"add_prefix_space\"");
    d.add_prefix_space = optional_bool(*it, "add_prefix_space", false, "pre_tokenizer ByteLevel");
    d.use_regex = optional_bool(*it, "use_regex", true, "pre_tokenizer ByteLevel");
  }

  void read_decoder(nlohmann::json const& doc) const {
    auto it = doc.find("decoder");
    if (it == doc.end()) fail("missing the field \"decoder\"");
    std::string const type = type_of(*it);
    if (type != "ByteLevel") fail("decoder '" + type + "' is not supported (only ByteLevel)");
  }

  void read_post_processor(nlohmann::json const& doc) const {
    auto it = doc.find("post_processor");
    if (it == doc.end() || it->is_null()) return;
    std::string const type = type_of(*it);
    if (type != "ByteLevel") fail("post_processor '" + type + "' is not supported (only ByteLevel, or none)");
  }

  void read_model(nlohmann::json const& doc, tokenizer_data& d) const {
    auto it = doc.find("model");
    if (it == doc.end() || it->is_null()) fail("missing the field \"model\"");
    nlohmann::json const& model = *it;
    if (!model.is_object()) fail("\"model\" is not a JSON object");
    std::string const type = type_of(model);
    if (type == "(no type)") fail("the model has no \"type\" (only BPE is supported)");
    if (type != "BPE") fail("model type '" + type + "' is not supported (only BPE)");

    if (auto p = model.find("dropout"); p != model.end() && !p->is_null()) {
      if (!p->is_number() || p->get<double>() != 0.0) fail("model BPE: dropout " + p->dump() + " is not supported");
    }
    for (char const* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      auto p = model.find(key);
      if (p != model.end() && !p->is_null() && !(p->is_string() && p->get<std::string>().empty())) {
        fail(std::string("model BPE: ") + key + " " + p->dump() + " is not supported");
      }
    }
    if (optional_bool(model, "byte_fallback", false, "model BPE")) {
      fail("model BPE: byte_fallback is not supported (a byte-level vocabulary has every byte)");
    }
    d.fuse_unk = optional_bool(model, "fuse_unk", false, "model BPE");
    d.ignore_merges = optional_bool(model, "ignore_merges", false, "model BPE");

    auto vocab = model.find("vocab");
    if (vocab == model.end()) fail("model BPE: missing the field \"vocab\"");
    if (!vocab->is_object()) fail("model BPE: \"vocab\" is not a JSON object");
    auto const n = vocab->size();
    if (n > static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max() / 2)) fail("model BPE: vocabulary too large");
    d.text.assign(n, std::string());
    d.kind.assign(n, 0);
    d.vocab.reserve(n);
    for (auto const& [token, value] : vocab->items()) {
      if (!value.is_number_integer()) fail("vocab: the id of " + token_for_message(token) + " is not an integer");
      auto const id = value.get<std::int64_t>();
      if (id < 0 || id >= static_cast<std::int64_t>(n)) {
        fail("vocab: id " + std::to_string(id) + " of " + token_for_message(token) + " is outside 0.." + std::to_string(n - 1) +
             " (the ids of N tokens must be 0..N-1)");
      }
      auto const i = static_cast<std::size_t>(id);
      if (d.kind[i] != 0) fail("vocab: duplicate id " + std::to_string(id) + " (" + token_for_message(d.text[i]) + " and " + token_for_message(token) + ")");
      if (token.empty()) fail("vocab: the empty string is not a token");
      d.kind[i] = 1;
      d.text[i] = token;
      d.vocab.emplace(token, static_cast<std::int32_t>(id));
    }

    auto const& alphabet = byte_level();
    for (std::size_t b = 0; b < 256; ++b) {
      auto found = d.vocab.find(alphabet.utf8_of_byte[b]);
      d.byte_ids[b] = found == d.vocab.end() ? -1 : found->second;
    }

    if (auto unk = model.find("unk_token"); unk != model.end() && !unk->is_null()) {
      if (!unk->is_string()) fail("model BPE: \"unk_token\" is not a string");
      auto found = d.vocab.find(unk->get<std::string>());
      if (found == d.vocab.end()) fail("model BPE: the unk_token " + token_for_message(unk->get<std::string>()) + " is not in the vocabulary");
      d.unk_id = found->second;
    }

    auto merges = model.find("merges");
    if (merges == model.end()) fail("model BPE: missing the field \"merges\"");
    if (!merges->is_array()) fail("model BPE: \"merges\" is not a JSON array");
    d.merges.reserve(merges->size());
    bool const legacy = !merges->empty() && merges->front().is_string();
    std::int32_t rank = 0;
    std::size_t index = 0;
    for (auto const& merge : *merges) {
      ++index;
      std::string a, b, shown;
      if (legacy) {
        if (!merge.is_string()) fail("merge " + std::to_string(index) + " is not a string like the others (\"a b\")");
        std::string const line = merge.get<std::string>();
        if (line.rfind("#version", 0) == 0) continue;  // a header line, as tokenizers skips
        auto const space = line.find(' ');
        if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos) {
          fail("merge " + std::to_string(index) + " " + token_for_message(line) + " is not two tokens separated by one space");
        }
        a = line.substr(0, space);
        b = line.substr(space + 1);
        shown = line;
      } else {
        if (!merge.is_array() || merge.size() != 2 || !merge[0].is_string() || !merge[1].is_string()) {
          fail("merge " + std::to_string(index) + " is not a pair of strings like the others ([\"a\", \"b\"])");
        }
        a = merge[0].get<std::string>();
        b = merge[1].get<std::string>();
        shown = a + " " + b;
      }
      auto const ia = d.vocab.find(a);
      if (ia == d.vocab.end()) fail("merge " + std::to_string(index) + " " + token_for_message(shown) + ": " + token_for_message(a) + " is not in the vocabulary");
      auto const ib = d.vocab.find(b);
      if (ib == d.vocab.end()) fail("merge " + std::to_string(index) + " " + token_for_message(shown) + ": " + token_for_message(b) + " is not in the vocabulary");
      auto const iab = d.vocab.find(a + b);
      if (iab == d.vocab.end()) {
        fail("merge " + std::to_string(index) + " " + token_for_message(shown) + ": the merged token " + token_for_message(a + b) +
             " is not in the vocabulary");
      }
      // A pair merged twice keeps its last rank, as tokenizers' map of merges does.
      d.merges[pair_key(ia->second, ib->second)] = {rank, iab->second};
      ++rank;
    }
  }

  void read_added_tokens(nlohmann::json const& doc, tokenizer_data& d) const {
    auto const model_size = static_cast<std::int32_t>(d.text.size());
    auto it = doc.find("added_tokens");
    if (it != doc.end() && !it->is_null()) {
      if (!it->is_array()) fail("\"added_tokens\" is not a JSON array");
      std::int32_t next_id = model_size;  // the ids tokenizers gives added tokens that are not in the vocabulary
      std::size_t index = 0;
      for (auto const& entry : *it) {
        std::string const where = "added token " + std::to_string(index++);
        if (!entry.is_object()) fail(where + " is not a JSON object");
        auto content = entry.find("content");
        if (content == entry.end() || !content->is_string()) fail(where + " has no \"content\" string");
        auto id = entry.find("id");
        if (id == entry.end() || !id->is_number_integer()) fail(where + " has no integer \"id\"");
        added_token t;
        t.content = content->get<std::string>();
        if (t.content.empty()) fail(where + " has an empty content");
        std::string const named = "added token " + token_for_message(t.content);
        t.special = optional_bool(entry, "special", false, named);
        t.single_word = optional_bool(entry, "single_word", false, named);
        t.lstrip = optional_bool(entry, "lstrip", false, named);
        t.rstrip = optional_bool(entry, "rstrip", false, named);
        t.normalized = optional_bool(entry, "normalized", !t.special, named);
        if (d.added_ids.count(t.content) != 0) fail(named + " appears twice");
        auto const file_id = id->get<std::int64_t>();
        std::int32_t assigned = 0;
        if (auto in_vocab = d.vocab.find(t.content); in_vocab != d.vocab.end()) {
          assigned = in_vocab->second;
          if (file_id != assigned) {
            fail(named + " has id " + std::to_string(file_id) + " but the vocabulary gives it id " + std::to_string(assigned));
          }
        } else {
          assigned = next_id++;
          if (file_id != assigned) {
            fail(named + " has id " + std::to_string(file_id) + " but, not being in the vocabulary of " +
                 std::to_string(model_size) + " tokens, it gets id " + std::to_string(assigned) +
                 " (the next after the vocabulary and the added tokens before it)");
          }
          d.text.push_back(t.content);
          d.kind.push_back(1);
        }
        t.id = assigned;
        auto const at = static_cast<std::size_t>(assigned);
        d.text[at] = t.content;
        d.kind[at] = t.special ? 2 : 1;
        d.added_ids.emplace(t.content, assigned);
        auto const value = static_cast<std::int32_t>(d.added.size());
        if (t.normalized) {
          std::string const pattern = d.nfc ? nfc(t.content) : t.content;
          d.normalized_trie.insert(pattern, value);
        } else {
          d.raw_trie.insert(t.content, value);
        }
        d.added.push_back(std::move(t));
      }
    }
    d.bytes.reserve(d.text.size());
    for (auto const& token : d.text) d.bytes.push_back(byte_level_decode(token));
  }
};

}  // namespace detail

/// \brief A HuggingFace `tokenizer.json` byte-level BPE tokenizer (GPT-2, GPT-NeoX, Pythia, Mamba):
/// encodes UTF-8 text to token ids and decodes ids to text exactly as HuggingFace tokenizers does.
///
/// See the description of ssm/text/tokenizer.hpp for the steps and what files are accepted.
/// A tokenizer is cheap to copy (copies share the immutable tables and the cache of BPE results)
/// and safe to use from several threads at once.
///
/// \code
/// auto tok = ssm::text::tokenizer::from_file("tokenizer.json");
/// std::vector<std::int32_t> ids = tok.encode("Hello world<|endoftext|>");   // GPT-NeoX: {12092, 1533, 0}
/// std::string text = tok.decode(ids);                                       // the text again
/// \endcode
class tokenizer {
 public:
  /// \brief Read a `tokenizer.json` file.
  /// \param path the file
  /// \return the tokenizer
  /// \throws tokenizer_error when the file cannot be read, or is malformed or unsupported; the
  ///   message starts with tokenizer 'PATH':
  static tokenizer from_file(std::filesystem::path const& path) {
    std::string const source = path.string();
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) {
      throw tokenizer_error(source, "is a directory, not a tokenizer.json file");
    }
    std::ifstream in(path, std::ios::binary);
    if (!in) throw tokenizer_error(source, "cannot open the file");
    std::ostringstream text;
    text << in.rdbuf();
    if (in.bad()) throw tokenizer_error(source, "cannot read the file");
    return from_json(text.str(), source);
  }

  /// \brief Read a tokenizer from the text of a `tokenizer.json`.
  /// \param json the JSON text (UTF-8)
  /// \param source the name used in error messages in place of a path
  /// \return the tokenizer
  /// \throws tokenizer_error when the text is not valid JSON, or the tokenizer is malformed or
  ///   unsupported; the message starts with tokenizer 'SOURCE':
  static tokenizer from_json(std::string_view json, std::string const& source = "<memory>") {
    nlohmann::json doc;
    try {
      doc = nlohmann::json::parse(json.begin(), json.end());
    } catch (nlohmann::json::exception const& e) {
      throw tokenizer_error(source, "not valid JSON (a tokenizer.json is UTF-8 JSON): " + utf8::lossy(e.what()));
    }
    try {
      return tokenizer(detail::loader(source).load(doc));
    } catch (nlohmann::json::exception const& e) {
      throw tokenizer_error(source, "malformed: " + utf8::lossy(e.what()));
    }
  }

  /// \brief Encode text to token ids, as tokenizers' `Tokenizer.encode(text).ids` (no special
  /// tokens are added around the text: GPT-NeoX's post-processor adds none).
  /// \param utf8 the text, well-formed UTF-8
  /// \param allow_special whether special tokens written in the text (`<|endoftext|>`) are
  ///   matched as such; when false they are encoded as the text they are, like tokenizers with
  ///   `encode_special_tokens = True`
  /// \return the ids
  /// \throws tokenizer_error when `utf8` is not well-formed UTF-8 (the message gives the offset
  ///   of the first bad byte)
  [[nodiscard]] std::vector<std::int32_t> encode(std::string_view utf8, bool allow_special = true) const {
    if (auto const bad = utf8::first_invalid(utf8); bad != std::string_view::npos) {
      std::ostringstream problem;
      problem << "the text to encode is not valid UTF-8: byte 0x" << std::hex
              << static_cast<unsigned>(static_cast<unsigned char>(utf8[bad])) << std::dec << " at offset " << bad
              << " does not start a well-formed sequence";
      throw tokenizer_error(data_->source, problem.str());
    }
    std::vector<std::int32_t> ids;
    ids.reserve(utf8.size() / 3 + 8);
    try {
      encoder(*data_, *cache_, allow_special, ids).run(utf8);
    } catch (tokenizer_error const&) {
      throw;
    } catch (std::runtime_error const& e) {  // PCRE2 or utf8proc failed (out of memory, say)
      throw tokenizer_error(data_->source, e.what());
    }
    return ids;
  }

  /// \brief Decode token ids to text, as tokenizers' `Tokenizer.decode(ids, skip_special_tokens)`.
  ///
  /// Ids that name no token are skipped (so does tokenizers); bytes that do not form UTF-8
  /// (the ids of a character cut in the middle) become U+FFFD, as in `String::from_utf8_lossy`.
  /// \param ids the token ids
  /// \param skip_special whether to leave out special tokens (`<|endoftext|>`)
  /// \return the text, well-formed UTF-8
  [[nodiscard]] std::string decode(std::span<std::int32_t const> ids, bool skip_special = false) const {
    std::string bytes;
    for (std::int32_t id : ids) {
      if (!skipped(id, skip_special)) bytes += data_->bytes[static_cast<std::size_t>(id)];
    }
    return utf8::lossy(bytes);
  }

  /// \brief The token of an id as the vocabulary writes it: byte-level characters for model
  /// tokens (`"Ġthe"` for " the"), the content for added tokens (`"<|endoftext|>"`).
  /// \param id a token id
  /// \return the token's string
  /// \throws tokenizer_error when `id` names no token
  [[nodiscard]] std::string const& token_text(std::int32_t id) const {
    check_id(id);
    return data_->text[static_cast<std::size_t>(id)];
  }

  /// \brief The bytes an id decodes to on its own, before any UTF-8 repair: possibly part of a
  /// character (a byte-level token may hold any bytes).
  /// \param id a token id
  /// \return the bytes
  /// \throws tokenizer_error when `id` names no token
  [[nodiscard]] std::string_view token_bytes(std::int32_t id) const {
    check_id(id);
    return data_->bytes[static_cast<std::size_t>(id)];
  }

  /// \brief The number of ids: the model's vocabulary and the added tokens outside it (tokenizers'
  /// `get_vocab_size(with_added_tokens=True)`); every id below it names a token.
  /// \return the number of ids
  [[nodiscard]] std::int32_t vocab_size() const noexcept { return static_cast<std::int32_t>(data_->text.size()); }

  /// \brief The id of a token given as the vocabulary writes it (`"Ġthe"`, `"<|endoftext|>"`):
  /// added tokens first, then the model's vocabulary, as tokenizers' `token_to_id`.
  /// \param token the token's string
  /// \return its id, or nothing when no token is written so
  [[nodiscard]] std::optional<std::int32_t> token_id(std::string_view token) const {
    if (auto it = data_->added_ids.find(token); it != data_->added_ids.end()) return it->second;
    if (auto it = data_->vocab.find(token); it != data_->vocab.end()) return it->second;
    return std::nullopt;
  }

  /// \brief The id of `<|endoftext|>`, the end-of-text (and beginning-of-text) token of GPT-2 and
  /// GPT-NeoX.
  /// \return its id, or nothing when the tokenizer has no such token
  [[nodiscard]] std::optional<std::int32_t> eos_id() const { return token_id("<|endoftext|>"); }

  /// \brief Whether an id names a token.
  /// \param id a token id
  /// \return true when `0 <= id < vocab_size()`
  [[nodiscard]] bool contains(std::int32_t id) const noexcept { return id >= 0 && id < vocab_size(); }

  /// \brief Whether an id is a special added token (`<|endoftext|>`, `<|padding|>`).
  /// \param id a token id
  /// \return true for a special token; false for any other id, valid or not
  [[nodiscard]] bool is_special(std::int32_t id) const noexcept {
    return contains(id) && data_->kind[static_cast<std::size_t>(id)] == 2;
  }

  /// \brief The added tokens, in the order of the file.
  /// \return the tokens with their flags and ids
  [[nodiscard]] std::vector<added_token> const& added_tokens() const noexcept { return data_->added; }

  /// \brief Where the tokenizer was read from (the path, or the name given to from_json).
  /// \return the source used in error messages
  [[nodiscard]] std::string const& source() const noexcept { return data_->source; }

 private:
  explicit tokenizer(std::shared_ptr<detail::tokenizer_data const> data)
      : data_(std::move(data)), cache_(std::make_shared<detail::bpe_cache>()) {}

  void check_id(std::int32_t id) const {
    if (!contains(id)) {
      throw tokenizer_error(data_->source, "no token has id " + std::to_string(id) + " (the ids are 0.." +
                                               std::to_string(vocab_size() - 1) + ")");
    }
  }

  [[nodiscard]] bool skipped(std::int32_t id, bool skip_special) const noexcept {
    return !contains(id) || (skip_special && data_->kind[static_cast<std::size_t>(id)] == 2);
  }

  /// The encoding of one text: the steps of the file's description, with this call's scratch.
  class encoder {
   public:
    encoder(detail::tokenizer_data const& d, detail::bpe_cache& cache, bool allow_special, std::vector<std::int32_t>& ids)
        : d_(d), cache_(cache), allow_special_(allow_special), ids_(ids), split_(d.split) {}

    void run(std::string_view text) {
      split_added(d_.raw_trie, text, [&](std::string_view piece) {
        if (!d_.nfc) {
          split_added(d_.normalized_trie, piece, [&](std::string_view part) { pre_tokenize(part); });
          return;
        }
        std::string const normalized = detail::nfc(piece);
        split_added(d_.normalized_trie, normalized, [&](std::string_view part) { pre_tokenize(part); });
      });
    }

   private:
    detail::tokenizer_data const& d_;
    detail::bpe_cache& cache_;
    bool allow_special_;
    std::vector<std::int32_t>& ids_;
    detail::matcher split_;
    std::optional<detail::matcher> word_char_, white_space_;  // made when a flag needs them
    std::vector<std::int32_t> word_ids_;
    struct symbol {
      std::int32_t id, prev, next, len;
    };
    struct merge {
      std::int32_t rank, pos, id;
    };
    std::vector<symbol> symbols_;
    std::vector<merge> queue_;

    // tokenizers' AddedVocabulary::find_matches: the added tokens of `trie` in `s` become ids,
    // the text between them goes to `rest` (empty pieces are dropped).
    template <class F>
    void split_added(detail::token_trie const& trie, std::string_view s, F&& rest) {
      if (s.empty()) return;
      if (trie.empty()) {
        rest(s);
        return;
      }
      std::size_t start_offset = 0;
      trie.for_each_match(s, [&](std::size_t start, std::size_t stop, std::int32_t index) {
        added_token const& t = d_.added[static_cast<std::size_t>(index)];
        if (t.special && !allow_special_) return;
        if (t.single_word) {
          bool const start_space = start == 0 || !ends_with_word(s.substr(0, start));
          bool const stop_space = stop == s.size() || !word_char_at(s, stop);
          if (!start_space || !stop_space) return;
        }
        if (t.lstrip) start = std::max(leftmost_space_at_end(s.substr(0, start)), start_offset);
        if (t.rstrip) stop += rightmost_space_at_start(s.substr(stop));
        if (start_offset < start) rest(s.substr(start_offset, start - start_offset));
        ids_.push_back(t.id);
        start_offset = stop;
      });
      if (start_offset < s.size()) rest(s.substr(start_offset));
    }

    bool word_char_at(std::string_view s, std::size_t pos) {
      if (!word_char_) word_char_.emplace(d_.word_char);
      return word_char_->matches_at(s, pos);
    }
    bool ends_with_word(std::string_view s) {
      std::size_t pos = s.size() - 1;  // s is not empty
      while (pos > 0 && (static_cast<unsigned char>(s[pos]) & 0xC0u) == 0x80u) --pos;
      return word_char_at(s, pos);
    }
    bool white_space_at(std::string_view s, std::size_t pos) {
      if (!white_space_) white_space_.emplace(d_.white_space);
      return white_space_->matches_at(s, pos);
    }
    std::size_t leftmost_space_at_end(std::string_view s) {  // Rust's \s*$ find: its start
      std::size_t end = s.size();
      while (end > 0) {
        std::size_t pos = end - 1;
        while (pos > 0 && (static_cast<unsigned char>(s[pos]) & 0xC0u) == 0x80u) --pos;
        if (!white_space_at(s, pos)) break;
        end = pos;
      }
      return end;
    }
    std::size_t rightmost_space_at_start(std::string_view s) {  // Rust's ^\s* find: its end
      std::size_t pos = 0;
      while (pos < s.size() && white_space_at(s, pos)) {
        std::size_t next = pos;
        (void)detail::decode_utf8(s, next);
        pos = next;
      }
      return pos;
    }

    // ByteLevel: the prefix space, then GPT-2's split; every part goes through BPE.
    void pre_tokenize(std::string_view piece) {
      std::string prefixed;
      if (d_.add_prefix_space && piece.front() != ' ') {
        prefixed.reserve(piece.size() + 1);
        prefixed.push_back(' ');
        prefixed.append(piece);
        piece = prefixed;
      }
      if (!d_.use_regex) {
        bpe(piece);
        return;
      }
      // Split with SplitDelimiterBehavior::Isolated: the matches and the text between them (of
      // which this pattern, matching every character and never the empty string, leaves none).
      std::size_t offset = 0, begin = 0, end = 0;
      while (offset < piece.size() && split_.find(piece, offset, begin, end)) {
        if (end == begin) throw std::logic_error("ssm::text: the split pattern matched the empty string");
        if (begin > offset) bpe(piece.substr(offset, begin - offset));
        bpe(piece.substr(begin, end - begin));
        offset = end;
      }
      if (offset < piece.size()) bpe(piece.substr(offset));
    }

    // BPE of one word (raw bytes), through the cache.
    void bpe(std::string_view word) {
      if (word.empty()) return;
      if (d_.ignore_merges) {
        std::string mapped;
        for (char ch : word) mapped += detail::byte_level().utf8_of_byte[static_cast<unsigned char>(ch)];
        if (auto it = d_.vocab.find(mapped); it != d_.vocab.end()) {
          ids_.push_back(it->second);
          return;
        }
      }
      if (cache_.find(word, ids_)) return;
      std::size_t const before = ids_.size();
      merge_word(word);
      if (word.size() < detail::bpe_cache::max_word_bytes) {
        cache_.insert(word, std::span<std::int32_t const>(ids_).subspan(before));
      }
    }

    void add_symbol(std::int32_t id, std::int32_t len) {
      auto const n = static_cast<std::int32_t>(symbols_.size());
      if (n > 0) symbols_.back().next = n;
      symbols_.push_back({id, n - 1, -1, len});
    }

    // tokenizers' BPE::merge_word and Word::merge_all.
    void merge_word(std::string_view word) {
      symbols_.clear();
      std::int32_t unk_len = 0;  // a pending unknown token of this many bytes
      for (char ch : word) {
        std::int32_t const id = d_.byte_ids[static_cast<unsigned char>(ch)];
        if (id >= 0) {
          if (unk_len > 0) add_symbol(d_.unk_id, unk_len);
          unk_len = 0;
          add_symbol(id, 1);
        } else if (d_.unk_id >= 0) {
          if (unk_len > 0 && !d_.fuse_unk) add_symbol(d_.unk_id, std::exchange(unk_len, 0));
          unk_len += 1;
        }  // else the byte is dropped, as tokenizers drops it
      }
      if (unk_len > 0) add_symbol(d_.unk_id, unk_len);

      auto const later = [](merge const& x, merge const& y) { return x.rank != y.rank ? x.rank > y.rank : x.pos > y.pos; };
      queue_.clear();
      for (std::size_t i = 0; i + 1 < symbols_.size(); ++i) {
        if (auto it = d_.merges.find(detail::pair_key(symbols_[i].id, symbols_[i + 1].id)); it != d_.merges.end()) {
          queue_.push_back({it->second.first, static_cast<std::int32_t>(i), it->second.second});
        }
      }
      std::make_heap(queue_.begin(), queue_.end(), later);
      while (!queue_.empty()) {
        std::pop_heap(queue_.begin(), queue_.end(), later);
        merge const top = queue_.back();
        queue_.pop_back();
        symbol& current = symbols_[static_cast<std::size_t>(top.pos)];
        if (current.len == 0 || current.next == -1) continue;
        auto const next_pos = static_cast<std::size_t>(current.next);
        symbol const right = symbols_[next_pos];
        auto it = d_.merges.find(detail::pair_key(current.id, right.id));
        if (it == d_.merges.end() || it->second.second != top.id) continue;  // an expired entry
        current.id = top.id;
        current.len += right.len;
        current.next = right.next;
        symbols_[next_pos].len = 0;
        if (right.next >= 0) symbols_[static_cast<std::size_t>(right.next)].prev = top.pos;
        if (current.prev >= 0) {
          symbol const& prev = symbols_[static_cast<std::size_t>(current.prev)];
          if (auto m = d_.merges.find(detail::pair_key(prev.id, current.id)); m != d_.merges.end()) {
            queue_.push_back({m->second.first, current.prev, m->second.second});
            std::push_heap(queue_.begin(), queue_.end(), later);
          }
        }
        if (current.next >= 0) {
          symbol const& after = symbols_[static_cast<std::size_t>(current.next)];
          if (auto m = d_.merges.find(detail::pair_key(current.id, after.id)); m != d_.merges.end()) {
            queue_.push_back({m->second.first, top.pos, m->second.second});
            std::push_heap(queue_.begin(), queue_.end(), later);
          }
        }
      }
      for (symbol const& s : symbols_) {
        if (s.len != 0) ids_.push_back(s.id);
      }
    }
  };

  std::shared_ptr<detail::tokenizer_data const> data_;
  std::shared_ptr<detail::bpe_cache> cache_;
};

/// \brief Decodes ids one at a time, as a model generates them, and hands out text only in whole
/// characters: bytes that may still become a character wait for the next ids.
///
/// The concatenation of everything `push` and `flush` return equals `tokenizer::decode` of all
/// the ids at once (U+FFFD included, where the bytes are not UTF-8).
///
/// \code
/// ssm::text::stream_decoder out(tok);
/// for (std::int32_t id : generated) std::cout << out.push(id) << std::flush;
/// std::cout << out.flush();
/// \endcode
class stream_decoder {
 public:
  /// \brief A decoder of ids of `tok` (which it copies: cheap, and shares its tables).
  /// \param tok the tokenizer the ids come from
  /// \param skip_special whether to leave out special tokens, as `tokenizer::decode`
  explicit stream_decoder(tokenizer tok, bool skip_special = false)
      : tokenizer_(std::move(tok)), skip_special_(skip_special) {}

  /// \brief Take one more id.
  /// \param id the next token id (ids that name no token are skipped, as by `tokenizer::decode`)
  /// \return the text completed by it: possibly empty, always whole characters
  std::string push(std::int32_t id) {
    if (!tokenizer_.contains(id) || (skip_special_ && tokenizer_.is_special(id))) return {};
    pending_ += tokenizer_.token_bytes(id);
    std::size_t const n = utf8::complete_prefix(pending_);
    std::string out;
    utf8::append_lossy(std::string_view(pending_).substr(0, n), out);
    pending_.erase(0, n);
    return out;
  }

  /// \brief End the stream: the bytes still waiting for the rest of their character (which will
  /// not come) become U+FFFD.
  /// \return the rest of the text, possibly empty
  std::string flush() {
    std::string out = utf8::lossy(pending_);
    pending_.clear();
    return out;
  }

  /// \brief The bytes received that do not make a whole character yet.
  /// \return at most 3 bytes
  [[nodiscard]] std::string_view pending() const noexcept { return pending_; }

 private:
  tokenizer tokenizer_;
  bool skip_special_;
  std::string pending_;
};

}  // namespace ssm::text
