/// \file
/// \brief Malformed and unsupported tokenizer files (tests/fixtures/tokenizer/malformed/, made by
/// scripts/make_tokenizer_fixtures.py) are refused with a `tokenizer_error` naming the file and
/// the problem.

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <ssm/text/tokenizer.hpp>

#include "catch.hpp"
#include "text_support.hpp"

namespace {

using ssm::test::tokenizer_fixture;
using ssm::text::tokenizer;
using ssm::text::tokenizer_error;

struct malformed {
  char const* file;     // in tests/fixtures/tokenizer/malformed/
  char const* problem;  // a part of the message that says what is wrong
};

std::vector<malformed> const corpus = {
    {"not_json.json", "not valid JSON"},
    {"truncated.json", "not valid JSON"},
    {"top_level_array.json", "the top level is not a JSON object"},
    {"bad_utf8_in_vocab.json", "UTF-8"},
    {"lone_surrogate_in_vocab.json", "surrogate"},
    {"unknown_version.json", "unknown format version \"2.0\""},
    {"missing_model.json", "missing the field \"model\""},
    {"model_unigram.json", "model type 'Unigram' is not supported (only BPE)"},
    {"model_without_type.json", "the model has no \"type\""},
    {"missing_vocab.json", "missing the field \"vocab\""},
    {"missing_merges.json", "missing the field \"merges\""},
    {"vocab_id_not_integer.json", "vocab: the id of 'b' is not an integer"},
    {"vocab_duplicate_id.json", "vocab: duplicate id 0 ('a' and 'b')"},
    {"vocab_id_out_of_range.json", "vocab: id 99 of 'ab' is outside 0..4"},
    {"merge_unknown_token.json", "merge 1 'a zz': 'zz' is not in the vocabulary"},
    {"merge_result_not_in_vocab.json", "merge 1 'b a': the merged token 'ba' is not in the vocabulary"},
    {"merge_three_parts.json", "merge 1 'a b c' is not two tokens separated by one space"},
    {"merges_mixed_forms.json", "merge 2 is not a string like the others"},
    {"dropout.json", "model BPE: dropout 0.1 is not supported"},
    {"byte_fallback.json", "byte_fallback is not supported"},
    {"unk_not_in_vocab.json", "the unk_token '<unk>' is not in the vocabulary"},
    {"normalizer_lowercase.json", "normalizer 'Lowercase' is not supported"},
    {"missing_pre_tokenizer.json", "missing the field \"pre_tokenizer\""},
    {"pre_tokenizer_whitespace.json", "pre_tokenizer 'Whitespace' is not supported (only ByteLevel)"},
    {"pre_tokenizer_without_prefix_option.json", "pre_tokenizer ByteLevel has no \"add_prefix_space\""},
    {"decoder_wordpiece.json", "decoder 'WordPiece' is not supported (only ByteLevel)"},
    {"post_processor_template.json", "post_processor 'TemplateProcessing' is not supported"},
    {"added_token_wrong_id.json", "added token '<|endoftext|>' has id 7 but the vocabulary gives it id 4"},
    {"added_token_without_content.json", "added token 0 has no \"content\" string"},
    {"added_token_twice.json", "added token '<|endoftext|>' appears twice"},
    {"added_token_flag_not_bool.json", "added token '<|endoftext|>': \"lstrip\" is not true or false"},
    {"added_token_new_id_gap.json", "added token '<new>' has id 9 but, not being in the vocabulary of 5 tokens, it gets id 5"},
};

}  // namespace

TEST_CASE("tokenizer files: each malformed one is refused with its path and its problem", "[text][errors]") {
  REQUIRE(corpus.size() >= 12);
  for (auto const& c : corpus) {
    std::string const path = tokenizer_fixture(std::string("malformed/") + c.file);
    INFO(path);
    REQUIRE(std::filesystem::exists(path));
    std::string message;
    try {
      (void)tokenizer::from_file(path);
    } catch (tokenizer_error const& e) {
      message = e.what();
    }
    INFO("message: " << message);
    CHECK(message.rfind("tokenizer '" + path + "': ", 0) == 0);
    CHECK(message.find(c.problem) != std::string::npos);
  }
}

TEST_CASE("tokenizer files: the corpus's base file loads, so each refusal is its one flaw", "[text][errors]") {
  tokenizer const tok = tokenizer::from_file(tokenizer_fixture("malformed/valid.json"));
  CHECK(tok.vocab_size() == 5);
  CHECK(tok.eos_id() == 4);
  CHECK(tok.encode("ab<|endoftext|>") == std::vector<std::int32_t>{2, 4});
}

TEST_CASE("tokenizer files: a missing file, and JSON given as text, name their source", "[text][errors]") {
  CHECK_THROWS_WITH(tokenizer::from_file(tokenizer_fixture("no/such/tokenizer.json")),
                    Catch::Contains("tokenizer '" + tokenizer_fixture("no/such/tokenizer.json") + "': cannot open the file"));
  CHECK_THROWS_WITH(tokenizer::from_file(tokenizer_fixture("malformed")),
                    Catch::Contains("tokenizer '" + tokenizer_fixture("malformed") + "': is a directory"));
  CHECK_THROWS_WITH(tokenizer::from_json("{}", "inline"), Catch::Contains("tokenizer 'inline': missing the field"));
  CHECK_THROWS_WITH(tokenizer::from_json("nonsense"), Catch::Contains("tokenizer '<memory>': not valid JSON"));
  CHECK_THROWS_AS(tokenizer::from_json("{}"), ssm::error);
}
