#pragma once
/// \file
/// \brief Exceptions thrown by `ssm`, and the shape checks every entry point runs.

#include <cstddef>
#include <sstream>
#include <stdexcept>
#include <string>

namespace ssm {

/// \brief Base class of every exception `ssm` throws.
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// \brief A tensor passed to an `ssm` function has the wrong shape, or a parameter is out of range.
class shape_error : public error {
 public:
  using error::error;
};

namespace detail {

/// \brief Throw a `shape_error` naming the function and the tensor when `ok` is false.
/// \param function the public function that checks, e.g. `"ssm::selective_scan"`.
/// \param what what went wrong, e.g. `"delta must have the shape of u (B, D, L)"`.
inline void require(bool ok, char const* function, std::string const& what) {
  if (!ok) throw shape_error(std::string(function) + ": " + what);
}

/// \brief Format a shape as "(a, b, c)" for error messages.
template <class... Extents>
std::string shape_string(Extents... extents) {
  std::ostringstream out;
  out << '(';
  std::size_t i = 0;
  ((out << (i++ ? ", " : "") << extents), ...);
  out << ')';
  return out.str();
}

}  // namespace detail
}  // namespace ssm
