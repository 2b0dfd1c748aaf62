/// \file
/// \brief Tests of `ssm::text::tokenizer` against HuggingFace tokenizers' own outputs
/// (tests/fixtures/tokenizer/cases.json, made by scripts/make_tokenizer_fixtures.py), and of the
/// API around them: ids and tokens, invalid input, streaming decoding, threads, copies.

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstdint>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <ssm/text/tokenizer.hpp>

#include "catch.hpp"
#include "text_support.hpp"

namespace {

using ssm::test::read_json;
using ssm::test::shown;
using ssm::test::tokenizer_fixture;
using ssm::text::stream_decoder;
using ssm::text::tokenizer;
using ssm::text::tokenizer_error;
using ids_t = std::vector<std::int32_t>;

/// Everything the stream decoder hands out for `ids`, then its flush.
std::string streamed(tokenizer const& tok, ids_t const& ids, bool skip_special) {
  stream_decoder decoder(tok, skip_special);
  std::string out;
  for (std::int32_t id : ids) {
    std::string const piece = decoder.push(id);
    REQUIRE(ssm::text::utf8::is_valid(piece));
    out += piece;
    REQUIRE(decoder.pending().size() <= 3);
  }
  return out + decoder.flush();
}

void check_against_cases(std::string const& file) {
  auto const cases = read_json(tokenizer_fixture("cases.json"));
  auto const& mine = cases.at(file);
  tokenizer const tok = tokenizer::from_file(tokenizer_fixture(file));
  CHECK(tok.vocab_size() == mine.at("vocab_size").get<std::int32_t>());

  for (auto const& c : mine.at("encode")) {
    std::string const text = c.at("text").get<std::string>();
    ids_t const expected = c.at("ids").get<ids_t>();
    INFO(file << ": text " << shown(text));
    ids_t const ids = tok.encode(text);
    INFO("expected " << shown(expected) << "\nactual   " << shown(ids));
    CHECK(ids == expected);
    CHECK(tok.encode(text, false) == c.at("ids_special_as_text").get<ids_t>());
    CHECK(tok.decode(expected) == c.at("decoded").get<std::string>());
    CHECK(tok.decode(expected, true) == c.at("decoded_skip_special").get<std::string>());
  }
  for (auto const& c : mine.at("decode")) {
    ids_t const ids = c.at("ids").get<ids_t>();
    INFO(file << ": ids " << shown(ids));
    std::string const text = c.at("text").get<std::string>();
    CHECK(tok.decode(ids) == text);
    CHECK(tok.decode(ids, true) == c.at("text_skip_special").get<std::string>());
    CHECK(streamed(tok, ids, false) == text);
    CHECK(streamed(tok, ids, true) == c.at("text_skip_special").get<std::string>());
  }
}

}  // namespace

TEST_CASE("tokenizer: the GPT-NeoX-shaped fixture encodes and decodes as HuggingFace tokenizers", "[text]") {
  check_against_cases("tokenizer.json");
}

TEST_CASE("tokenizer: added tokens with lstrip, rstrip, single_word and normalized flags as tokenizers",
          "[text]") {
  check_against_cases("tokenizer_flags.json");
}

TEST_CASE("tokenizer: the fixtures hold about a hundred tricky strings and cover every run of spaces", "[text]") {
  auto const cases = read_json(tokenizer_fixture("cases.json"));
  auto const& encode = cases.at("tokenizer.json").at("encode");
  CHECK(encode.size() >= 100);
  for (int n = 1; n <= 30; ++n) {
    CHECK(std::any_of(encode.begin(), encode.end(),
                      [&](auto const& c) { return c.at("text").template get<std::string>() == std::string(std::size_t(n), ' '); }));
  }
}

TEST_CASE("tokenizer: ids, tokens and special tokens of the GPT-NeoX-shaped fixture", "[text]") {
  tokenizer const tok = tokenizer::from_file(tokenizer_fixture("tokenizer.json"));
  REQUIRE(tok.eos_id() == 0);
  CHECK(tok.token_id("<|endoftext|>") == 0);
  CHECK(tok.token_id("<|padding|>") == 1);
  CHECK(tok.token_text(0) == "<|endoftext|>");
  CHECK(tok.token_text(1) == "<|padding|>");
  CHECK(tok.is_special(0));
  CHECK(tok.is_special(1));
  CHECK_FALSE(tok.is_special(2));
  CHECK_FALSE(tok.is_special(-1));
  CHECK_FALSE(tok.is_special(tok.vocab_size()));
  CHECK_FALSE(tok.token_id("no such token").has_value());
  CHECK(tok.source() == tokenizer_fixture("tokenizer.json"));

  // The byte-level alphabet: "Ġ" is the space, and is one token of its own.
  auto const space = tok.token_id("\xC4\xA0");
  REQUIRE(space.has_value());
  CHECK(tok.token_bytes(*space) == " ");
  CHECK(tok.encode(" ") == ids_t{*space});

  // The runs of 2..24 spaces are non-special added tokens after the model's vocabulary.
  std::size_t runs = 0;
  for (auto const& t : tok.added_tokens()) {
    if (t.content.find_first_not_of(' ') != std::string::npos) continue;
    ++runs;
    CHECK_FALSE(t.special);
    CHECK(t.normalized);
    CHECK(tok.token_text(t.id) == t.content);
    CHECK(tok.token_bytes(t.id) == t.content);
    CHECK(tok.encode(t.content) == ids_t{t.id});
    CHECK_FALSE(tok.is_special(t.id));
  }
  CHECK(runs == 23);
  CHECK(tok.vocab_size() == 2000 + 23);

  // Every token's text maps back to its id, and every id's bytes decode to themselves.
  for (std::int32_t id = 0; id < tok.vocab_size(); ++id) {
    CHECK(tok.token_id(tok.token_text(id)) == id);
  }

  CHECK_THROWS_AS(tok.token_text(-1), tokenizer_error);
  CHECK_THROWS_AS(tok.token_text(tok.vocab_size()), tokenizer_error);
  CHECK_THROWS_WITH(tok.token_bytes(99999), Catch::Contains("no token has id 99999"));

  // decode skips ids that name no token, as tokenizers does.
  ids_t const hello = tok.encode("Hello");
  ids_t with_unknown = hello;
  with_unknown.insert(with_unknown.begin() + 1, 99999);
  with_unknown.push_back(-5);
  CHECK(tok.decode(with_unknown) == "Hello");
}

TEST_CASE("tokenizer: special tokens are matched only when allowed and skipped on request", "[text]") {
  tokenizer const tok = tokenizer::from_file(tokenizer_fixture("tokenizer.json"));
  ids_t const ids = tok.encode("a<|endoftext|>b");
  REQUIRE(ids.size() == 3);
  CHECK(ids[1] == 0);
  CHECK(tok.decode(ids) == "a<|endoftext|>b");
  CHECK(tok.decode(ids, true) == "ab");
  ids_t const plain = tok.encode("a<|endoftext|>b", false);
  CHECK(std::find(plain.begin(), plain.end(), 0) == plain.end());
  CHECK(tok.decode(plain) == "a<|endoftext|>b");
  CHECK(tok.encode("") == ids_t{});
}

TEST_CASE("tokenizer: text that is not UTF-8 is refused with the offset of the first bad byte", "[text][errors]") {
  tokenizer const tok = tokenizer::from_file(tokenizer_fixture("tokenizer.json"));
  std::string const prefix = "tokenizer '" + tokenizer_fixture("tokenizer.json") + "': the text to encode is not valid UTF-8";
  struct bad {
    std::string text;
    std::string where;
  };
  std::vector<bad> const cases = {
      {"\xFF", "byte 0xff at offset 0"},
      {"ok \x80", "byte 0x80 at offset 3"},
      {"overlong \xC0\x80", "byte 0xc0 at offset 9"},
      {"overlong \xE0\x80\x80", "offset 9"},
      {"surrogate \xED\xA0\x80", "byte 0xed at offset 10"},
      {"too large \xF4\x90\x80\x80", "byte 0xf4 at offset 10"},
      {"cut at the end \xE2\x82", "byte 0xe2 at offset 15"},
      {"cut in the middle \xE2\x82x", "offset 18"},
      {"caf\xC3", "offset 3"},
  };
  for (auto const& c : cases) {
    INFO(shown(ssm::text::utf8::lossy(c.text)));
    CHECK_THROWS_WITH(tok.encode(c.text), Catch::Contains(prefix) && Catch::Contains(c.where));
    CHECK_THROWS_AS(tok.encode(c.text), ssm::error);
  }
  // NUL and other controls are well-formed UTF-8, and encoded.
  CHECK(tok.decode(tok.encode(std::string("a\0b\x01", 4))) == std::string("a\0b\x01", 4));
}

TEST_CASE("utf8: repair replaces each maximal ill-formed subpart by one U+FFFD, as from_utf8_lossy", "[text]") {
  using ssm::text::utf8::lossy;
  std::string const r = "\xEF\xBF\xBD";
  CHECK(lossy("plain") == "plain");
  CHECK(lossy("\xE2\x82\xAC") == "\xE2\x82\xAC");
  CHECK(lossy("\xE2\x82") == r);                    // a cut-off character: one
  CHECK(lossy("\xE2\x82" "A") == r + "A");
  CHECK(lossy("\xF0\x9F\x98") == r);
  CHECK(lossy("\xF0\x80\x80") == r + r + r);        // F0 80 is never a prefix: one per byte
  CHECK(lossy("\xED\xA0\x80") == r + r + r);        // surrogates
  CHECK(lossy("\xC0\xAF") == r + r);                // overlong
  CHECK(lossy("\xF4\x90\x80\x80") == r + r + r + r);
  CHECK(lossy("\x80\xBF") == r + r);
  CHECK(lossy("a\xFF" "b\xFE") == "a" + r + "b" + r);
  CHECK(lossy("\xE1\x80\xE2\xF0\x91\x92\xF1\xBF\x41") == r + r + r + r + "A");  // Unicode 16 Table 3-11
  CHECK(ssm::text::utf8::complete_prefix("ab\xE2\x82") == 2);
  CHECK(ssm::text::utf8::complete_prefix("ab\xE2\x82\xAC") == 5);
  CHECK(ssm::text::utf8::complete_prefix("ab\xE2\x41") == 4);
  CHECK(ssm::text::utf8::complete_prefix("\xF0\x9F\x98") == 0);
}

TEST_CASE("stream decoder: the pieces of any id sequence add up to decode, in whole characters", "[text]") {
  tokenizer const tok = tokenizer::from_file(tokenizer_fixture("tokenizer_flags.json"));
  std::mt19937 rng(7);
  std::uniform_int_distribution<std::int32_t> any_id(-2, tok.vocab_size() + 2);
  std::uniform_int_distribution<int> length(0, 24);
  for (int trial = 0; trial < 2000; ++trial) {
    ids_t ids(static_cast<std::size_t>(length(rng)));
    for (auto& id : ids) id = any_id(rng);
    INFO(shown(ids));
    CHECK(streamed(tok, ids, false) == tok.decode(ids));
    CHECK(streamed(tok, ids, true) == tok.decode(ids, true));
  }
  // An emoji of 4 bytes split over byte tokens comes out once complete.
  ids_t const ids = tok.encode("\xF0\x9F\x98\x80!");
  stream_decoder decoder(tok);
  std::string out;
  for (std::int32_t id : ids) {
    std::string const piece = decoder.push(id);
    CHECK((piece.empty() || piece == "\xF0\x9F\x98\x80" || piece == "!" || piece == "\xF0\x9F\x98\x80!"));
    out += piece;
  }
  CHECK(decoder.flush().empty());
  CHECK(out == "\xF0\x9F\x98\x80!");
  // A stream that ends inside a character ends with one U+FFFD (a unicorn is not in the
  // training text: it is 4 byte tokens, or at least 2).
  ids_t const unicorn = tok.encode("\xF0\x9F\xA6\x84");
  REQUIRE(unicorn.size() >= 2);
  stream_decoder cut(tok);
  for (std::size_t i = 0; i + 1 < unicorn.size(); ++i) CHECK(cut.push(unicorn[i]).empty());
  CHECK_FALSE(cut.pending().empty());
  CHECK(cut.flush() == "\xEF\xBF\xBD");
  CHECK(cut.pending().empty());
}

TEST_CASE("tokenizer: legacy merges with a version line and modern merges give the same encodings", "[text]") {
  auto doc = read_json(tokenizer_fixture("tokenizer.json"));
  tokenizer const legacy = tokenizer::from_json(doc.dump(), "legacy");
  auto& merges = doc.at("model").at("merges");
  nlohmann::json modern = nlohmann::json::array();
  for (auto const& m : merges) {
    auto const line = m.get<std::string>();
    auto const space = line.find(' ');
    modern.push_back({line.substr(0, space), line.substr(space + 1)});
  }
  auto with_version = doc;
  with_version.at("model").at("merges").insert(with_version.at("model").at("merges").begin(), "#version: 0.2");
  merges = modern;
  doc.at("pre_tokenizer")["use_regex"] = true;
  tokenizer const pairs = tokenizer::from_json(doc.dump(), "pairs");
  tokenizer const versioned = tokenizer::from_json(with_version.dump(), "versioned");
  auto const cases = read_json(tokenizer_fixture("cases.json"));
  for (auto const& c : cases.at("tokenizer.json").at("encode")) {
    std::string const text = c.at("text").get<std::string>();
    INFO(shown(text));
    ids_t const expected = c.at("ids").get<ids_t>();
    CHECK(legacy.encode(text) == expected);
    CHECK(pairs.encode(text) == expected);
    CHECK(versioned.encode(text) == expected);
  }
}

TEST_CASE("tokenizer: options of the pre-tokenizer and the model beyond GPT-NeoX's", "[text]") {
  // A tiny vocabulary: the byte-level alphabet, "ab", and an unknown token.
  nlohmann::json vocab = nlohmann::json::object();
  auto const& alphabet = ssm::text::detail::byte_level();
  std::int32_t next = 0;
  for (std::size_t b = 0; b < 256; ++b) {
    if (b == 'z') continue;  // left out: unknown
    vocab[alphabet.utf8_of_byte[b]] = next++;
  }
  vocab["ab"] = next++;
  vocab["abc"] = next++;
  vocab["<unk>"] = next++;
  vocab["\xC4\xA0" "ab"] = next++;
  nlohmann::json doc = {
      {"version", "1.0"},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"post_processor", nullptr},
      {"model",
       {{"type", "BPE"}, {"unk_token", "<unk>"}, {"fuse_unk", false}, {"vocab", vocab},
        {"merges", {"a b", "ab c", "\xC4\xA0 ab"}}}},
  };
  auto const id = [&](std::string const& t) { return vocab.at(t).get<std::int32_t>(); };
  auto const unk = id("<unk>");
  {
    tokenizer const tok = tokenizer::from_json(doc.dump(), "prefix");
    CHECK(tok.encode("ab") == ids_t{id("\xC4\xA0" "ab")});  // a space is prepended
    CHECK(tok.encode(" ab") == ids_t{id("\xC4\xA0" "ab")});  // but not to a piece that has one
    CHECK(tok.encode("abc") == ids_t{id("\xC4\xA0"), id("abc")});
    CHECK(tok.encode("zz") == ids_t{id("\xC4\xA0"), unk, unk});  // unknown bytes, not fused
    CHECK(tok.decode(tok.encode("ab")) == " ab");
  }
  doc["model"]["fuse_unk"] = true;
  doc["pre_tokenizer"]["add_prefix_space"] = false;
  {
    tokenizer const tok = tokenizer::from_json(doc.dump(), "fused");
    CHECK(tok.encode("zzz") == ids_t{unk});
    CHECK(tok.encode("azzb") == ids_t{id("a"), unk, id("b")});
  }
  doc["model"]["unk_token"] = nullptr;
  {
    tokenizer const tok = tokenizer::from_json(doc.dump(), "dropped");
    CHECK(tok.encode("azzb") == ids_t{id("ab")});  // without unk_token, tokenizers drops them: "a" meets "b"
  }
  doc["pre_tokenizer"]["use_regex"] = false;
  {
    tokenizer const tok = tokenizer::from_json(doc.dump(), "no regex");
    CHECK(tok.encode("ab ab") == ids_t{id("ab"), id("\xC4\xA0" "ab")});  // one word: "abĠab"
  }
  doc["model"]["ignore_merges"] = true;
  doc["model"]["merges"] = {"a b"};
  doc["pre_tokenizer"]["use_regex"] = true;
  {
    tokenizer const tok = tokenizer::from_json(doc.dump(), "ignore merges");
    CHECK(tok.encode("abc") == ids_t{id("abc")});  // in the vocabulary: one token, no merges needed
    CHECK(tok.encode(" ab") == ids_t{id("\xC4\xA0" "ab")});
  }
}

TEST_CASE("tokenizer: copies share the cache, and threads encode at once with the same results", "[text]") {
  tokenizer const tok = tokenizer::from_file(tokenizer_fixture("tokenizer.json"));
  auto const cases = read_json(tokenizer_fixture("cases.json"));
  std::vector<std::string> texts;
  std::vector<ids_t> expected;
  for (auto const& c : cases.at("tokenizer.json").at("encode")) {
    texts.push_back(c.at("text").get<std::string>());
    expected.push_back(c.at("ids").get<ids_t>());
  }
  std::vector<int> wrong(4, 0);
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < wrong.size(); ++t) {
    threads.emplace_back([&, t] {
      tokenizer const copy = tok;
      for (int round = 0; round < 20; ++round) {
        for (std::size_t i = 0; i < texts.size(); ++i) {
          std::size_t const k = (i + t * 37 + static_cast<std::size_t>(round)) % texts.size();
          if (copy.encode(texts[k]) != expected[k]) ++wrong[t];
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  for (int w : wrong) CHECK(w == 0);
}

// Hidden (run it with `test_text "[perf]"`): the speed of encode on the text of the file named by
// SSM_TOKENIZER_BENCH_TEXT (or on the fixture's strings repeated to a few MB), cold and warm, with
// the tokenizer.json named by SSM_TOKENIZER_JSON (or the fixture's).
TEST_CASE("tokenizer: encoding speed", "[.][perf]") {
  char const* json = std::getenv("SSM_TOKENIZER_JSON");
  auto const load_start = std::chrono::steady_clock::now();
  tokenizer const tok = tokenizer::from_file(json != nullptr ? std::string(json) : tokenizer_fixture("tokenizer.json"));
  std::chrono::duration<double> const load = std::chrono::steady_clock::now() - load_start;
  WARN("loaded " << tok.source() << " (" << tok.vocab_size() << " ids) in " << load.count() << " s");
  std::string text;
  if (char const* path = std::getenv("SSM_TOKENIZER_BENCH_TEXT")) {
    text = ssm::test::read_file(path);
  } else {
    auto const cases = read_json(tokenizer_fixture("cases.json"));
    while (text.size() < (std::size_t{4} << 20)) {
      for (auto const& c : cases.at("tokenizer.json").at("encode")) text += c.at("text").get<std::string>() + " ";
    }
  }
  for (int pass = 0; pass < 2; ++pass) {
    auto const start = std::chrono::steady_clock::now();
    ids_t const ids = tok.encode(text);
    std::chrono::duration<double> const seconds = std::chrono::steady_clock::now() - start;
    double const mb = static_cast<double>(text.size()) / 1e6;
    WARN((pass == 0 ? "cold cache: " : "warm cache: ") << mb << " MB, " << ids.size() << " ids in " << seconds.count()
         << " s: " << mb / seconds.count() << " MB/s");
  }
}
