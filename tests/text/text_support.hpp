#pragma once
// Helpers of the tokenizer tests: fixture paths, reading JSON, and printing strings readably.
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#ifndef SSM_FIXTURE_DIR  // set by tests/CMakeLists.txt; this fallback works from the repository root
#define SSM_FIXTURE_DIR "tests/fixtures"
#endif

namespace ssm::test {

/// A file of tests/fixtures/tokenizer/.
inline std::string tokenizer_fixture(std::string const& name) {
  return std::string(SSM_FIXTURE_DIR) + "/tokenizer/" + name;
}

/// The whole of a file.
inline std::string read_file(std::filesystem::path const& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

/// A JSON file, parsed.
inline nlohmann::json read_json(std::filesystem::path const& path) { return nlohmann::json::parse(read_file(path)); }

/// A string as JSON with every non-ASCII character escaped: readable in any terminal.
inline std::string shown(std::string const& s) {
  return nlohmann::json(s).dump(-1, ' ', true, nlohmann::json::error_handler_t::replace);
}

/// Ids as [1, 2, 3].
inline std::string shown(std::vector<std::int32_t> const& ids) { return nlohmann::json(ids).dump(); }

}  // namespace ssm::test
