#pragma once
// Catch2 2.13 (Debian 12) and Catch2 3.x spell their headers and a few names differently; the
// tests include this and use the 2.x spellings.
#if __has_include(<catch2/catch_test_macros.hpp>)
#include <string>

#include <catch2/catch_approx.hpp>
#include <catch2/catch_session.hpp>
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
using Catch::Approx;
namespace Catch {
inline auto Contains(std::string const& text) { return Matchers::ContainsSubstring(text); }
}  // namespace Catch
#else
#include <catch2/catch.hpp>
#endif
