/// \file
/// \brief Differential test of `ssm::text::tokenizer` against HuggingFace tokenizers itself: a few
/// thousand random strings of a mixed alphabet (every script and kind of character the pipeline
/// treats differently, special tokens and pieces of them, runs of white space) are encoded, and
/// random id sequences decoded, by both, and must agree exactly.
///
/// Python's `tokenizers` is run through popen with a small inline script that reads the job as
/// JSON on stdin. Where `python3 -c "import tokenizers"` fails, the test says so (WARN) and checks
/// nothing: CI installs the package when it can (.ci/run). Set SSM_TOKENIZER_JSON to the path of
/// another tokenizer.json (GPT-NeoX's own, say) to compare on it as well, SSM_TOKENIZER_DIFF_COUNT
/// and SSM_TOKENIZER_DIFF_SEED for more or other strings, SSM_TOKENIZER_DIFF_SHOW to see more
/// mismatches.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include <ssm/text/tokenizer.hpp>

#include "catch.hpp"
#include "text_support.hpp"

namespace {

namespace fs = std::filesystem;
using ssm::test::read_json;
using ssm::test::shown;
using ssm::test::tokenizer_fixture;
using ssm::text::tokenizer;
using ids_t = std::vector<std::int32_t>;

/// The string as one shell word, in single quotes.
std::string shell_quoted(std::string const& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out.push_back(c);
    }
  }
  return out + "'";
}

bool python_tokenizers_available() {
  return std::system("python3 -c \"import tokenizers\" >/dev/null 2>&1") == 0;
}

// Encodes job["texts"] with special tokens matched and as text, decodes job["decode"] with and
// without special tokens, and writes the results as JSON to the file argv[2].
constexpr char const* python_script = R"(
import json, sys
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
job = json.load(sys.stdin)
out = {"version": __import__("tokenizers").__version__}
out["ids"] = [tok.encode(s).ids for s in job["texts"]]
tok.encode_special_tokens = True
out["ids_special_as_text"] = [tok.encode(s).ids for s in job["texts"]]
out["decoded"] = [tok.decode(ids, skip_special_tokens=False) for ids in job["decode"]]
out["decoded_skip_special"] = [tok.decode(ids, skip_special_tokens=True) for ids in job["decode"]]
with open(sys.argv[2], "w", encoding="utf-8") as f:
    json.dump(out, f, ensure_ascii=True)
)";

/// The pieces random strings are made of, each a few characters at most.
std::vector<std::string> const alphabet = {
    // ASCII, with more weight on letters, spaces and the apostrophes of contractions
    "a", "b", "e", "s", "t", "A", "T", "Z", "x", "0", "7", "42", " ", " ", " ", " ", "  ", "   ", "\t", "\n", "\r\n",
    "\r", "\v", "\f", "!", "?", ".", ",", ";", "'", "\"", "-", "_", "(", "]", "{", "<", ">", "|", "/", "\\", "@",
    "#", "$", "%", "^", "&", "*", "+", "=", "~", "`", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL",
    "'D", "\x1C", "\x1F", "\x7F", std::string(1, '\0'),
    // Latin with accents, precomposed and decomposed, and combining marks alone
    "\u00e9", "\u00e8", "\u00fc", "\u00f1", "\u00e7", "\u00c5", "\u00f8", "\u00df", "e\u0301", "A\u030a",
    "\u0301", "\u0308", "\u0323", "\u0327", "\u20dd", "\u212b", "\u1e0b\u0323", "\ufb01", "\u01c5", "\u02b0",
    // Greek, Cyrillic, Hebrew, Arabic, Devanagari, Thai
    "\u03b1", "\u03a9", "\u0436", "\u042f", "\u05e9", "\u0639", "\u064b", "\u0915", "\u093f", "\u094d", "\u0e01",
    "\u0e31",
    // CJK, kana, Hangul syllables and conjoining jamo (NFC composes them), width variants
    "\u4e2d", "\u6587", "\u65e5", "\u672c", "\u306e", "\u30ab", "\ud55c", "\u1100", "\u1161", "\u11a8", "\uff76",
    "\uff21", "\uff11", "\u3005", "\u3007",
    // numbers of other kinds
    "\u0663", "\u096a", "\u00b2", "\u00bd", "\u216b", "\u2460",
    // white space of every kind, and what only looks like it
    "\u00a0", "\u2009", "\u3000", "\u0085", "\u2028", "\u2029", "\u1680", "\u180e", "\u200b", "\u200d", "\ufeff",
    // symbols and emoji: skin tones, ZWJ sequences, flags, variation selectors
    "\u2019", "\u00ab", "\u20ac", "\u24b6", "\U0001d400", "\U00010400", "\ue000", "\ufffd", "\U0001F600",
    "\U0001F44D", "\U0001F3FD", "\U0001F469\u200d\U0001F467", "\U0001F1EB\U0001F1F7", "\u2764\ufe0f",
    "\U0001F3F3\ufe0f\u200d\U0001F308", "\U0001F9D1\u200d\U0001F91D\u200d\U0001F9D1", "\U0001F984",
    // special tokens, pieces of them, and the added tokens of the flags fixture
    "<|endoftext|>", "<|padding|>", "<|", "|>", "endoftext", "<mask>", "<sep>", "[both]", "word", "raw\u00e9",
    "rawe\u0301", "\u03a9-mark", "\u2126-mark",
};

std::string random_text(std::mt19937_64& rng) {
  std::uniform_int_distribution<std::size_t> pick(0, alphabet.size() - 1);
  std::uniform_int_distribution<int> length(0, 40);
  std::uniform_int_distribution<int> kind(0, 9);
  std::string text;
  int const n = length(rng);
  for (int i = 0; i < n; ++i) {
    if (kind(rng) == 0) {
      text.append(static_cast<std::size_t>(length(rng) % 30 + 1), ' ');  // long runs of spaces
    } else {
      text += alphabet[pick(rng)];
    }
  }
  return text;
}

/// An integer from the environment, or a default.
long from_environment(char const* name, long fallback) {
  char const* value = std::getenv(name);
  return value != nullptr ? std::strtol(value, nullptr, 10) : fallback;
}

/// Texts that put code point `c` where each branch of the split pattern and NFC would see it.
std::string around(char32_t c) {
  std::string ch;
  ssm::text::detail::append_utf8(c, ch);
  return "x" + ch + "y " + ch + ch + "1" + ch + " '" + ch + "s" + ch + "  " + ch + "\u00e9" + ch + "e\u0301" + ch;
}

/// Compare the two on `job` (texts to encode, id sequences to decode); the number of mismatches.
int compare_job(tokenizer const& tok, std::string const& path, nlohmann::json const& job, std::uint64_t salt);

void compare_with_python(std::string const& path, std::uint64_t seed) {
  tokenizer const tok = tokenizer::from_file(path);
  std::mt19937_64 rng(seed + static_cast<std::uint64_t>(from_environment("SSM_TOKENIZER_DIFF_SEED", 0)));
  nlohmann::json job;
  job["texts"] = nlohmann::json::array();
  long const count = from_environment("SSM_TOKENIZER_DIFF_COUNT", 3000);
  for (long i = 0; i < count; ++i) job["texts"].push_back(random_text(rng));
  job["decode"] = nlohmann::json::array();
  std::uniform_int_distribution<std::int32_t> any_id(0, tok.vocab_size() + 2);
  std::uniform_int_distribution<int> length(0, 16);
  for (int i = 0; i < 1000; ++i) {
    ids_t ids(static_cast<std::size_t>(length(rng)));
    for (auto& id : ids) id = any_id(rng);
    job["decode"].push_back(ids);
  }
  CHECK(compare_job(tok, path, job, rng()) == 0);
}

int compare_job(tokenizer const& tok, std::string const& path, nlohmann::json const& job, std::uint64_t salt) {
  fs::path const out = fs::temp_directory_path() / ("ssm_tokenizer_diff_" + std::to_string(salt) + ".json");
  std::string const command = "python3 -c " + shell_quoted(python_script) + " " +
                              shell_quoted(path) + " " + shell_quoted(out.string());
  FILE* pipe = popen(command.c_str(), "w");
  REQUIRE(pipe != nullptr);
  std::string const input = job.dump(-1, ' ', true);
  std::size_t const written = std::fwrite(input.data(), 1, input.size(), pipe);
  int const status = pclose(pipe);
  REQUIRE(written == input.size());
  REQUIRE(status == 0);
  auto const answer = read_json(out);
  fs::remove(out);
  INFO(path << " against tokenizers " << answer.at("version").get<std::string>());

  int mismatches = 0;
  auto const report = [&](std::string const& what) {
    if (++mismatches <= from_environment("SSM_TOKENIZER_DIFF_SHOW", 5)) WARN(what);
  };
  for (std::size_t i = 0; i < job["texts"].size(); ++i) {
    std::string const text = job["texts"][i].get<std::string>();
    ids_t const ids = tok.encode(text);
    ids_t const expected = answer.at("ids")[i].get<ids_t>();
    if (ids != expected) report("encode " + shown(text) + "\n  tokenizers " + shown(expected) + "\n  ssm        " + shown(ids));
    ids_t const plain = tok.encode(text, false);
    ids_t const plain_expected = answer.at("ids_special_as_text")[i].get<ids_t>();
    if (plain != plain_expected) {
      report("encode, special tokens as text, " + shown(text) + "\n  tokenizers " + shown(plain_expected) +
             "\n  ssm        " + shown(plain));
    }
  }
  for (std::size_t i = 0; i < job["decode"].size(); ++i) {
    ids_t const ids = job["decode"][i].get<ids_t>();
    std::string const text = tok.decode(ids);
    std::string const expected = answer.at("decoded")[i].get<std::string>();
    if (text != expected) report("decode " + shown(ids) + "\n  tokenizers " + shown(expected) + "\n  ssm        " + shown(text));
    std::string const skipped = tok.decode(ids, true);
    std::string const skipped_expected = answer.at("decoded_skip_special")[i].get<std::string>();
    if (skipped != skipped_expected) {
      report("decode, skipping special tokens, " + shown(ids) + "\n  tokenizers " + shown(skipped_expected) +
             "\n  ssm        " + shown(skipped));
    }
  }
  return mismatches;
}

}  // namespace

TEST_CASE("tokenizer: random strings of a mixed alphabet encode and decode as Python tokenizers", "[text][python]") {
  if (!python_tokenizers_available()) {
    WARN("python3 cannot import tokenizers (pip install tokenizers): the differential test is skipped");
    return;
  }
  compare_with_python(tokenizer_fixture("tokenizer.json"), 1);
  compare_with_python(tokenizer_fixture("tokenizer_flags.json"), 2);
  if (char const* extra = std::getenv("SSM_TOKENIZER_JSON")) compare_with_python(extra, 3);  // a real one, say
}

// Hidden (run it with `test_text "[sweep]"`, a minute or so): every code point but the surrogates,
// in the contexts of around(), encoded by both. It finds where the Unicode data of PCRE2 and
// utf8proc differ from those tokenizers was built with.
TEST_CASE("tokenizer: every code point encodes as Python tokenizers", "[.][sweep]") {
  if (!python_tokenizers_available()) {
    WARN("python3 cannot import tokenizers (pip install tokenizers): the sweep is skipped");
    return;
  }
  char const* extra = std::getenv("SSM_TOKENIZER_JSON");
  std::string const path = extra != nullptr ? std::string(extra) : tokenizer_fixture("tokenizer.json");
  tokenizer const tok = tokenizer::from_file(path);
  nlohmann::json job;
  job["texts"] = nlohmann::json::array();
  job["decode"] = nlohmann::json::array();
  for (char32_t c = 0; c < 0x110000; ++c) {
    if (c >= 0xD800 && c < 0xE000) continue;
    job["texts"].push_back(around(c));
  }
  CHECK(compare_job(tok, path, job, 99) == 0);
}
