/// \file
/// \brief Tests of the storage types `ssm::f16` and `ssm::bf16`: exhaustive round trips, float -> f16
/// rounding against the compiler's own `_Float16` conversion, and bf16 rounding against hand-derived
/// bit patterns and against the definition of round-to-nearest-even.

#include "catch.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include <ssm/core/dtype.hpp>

#include "support.hpp"

namespace {

std::uint32_t bits_of(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

float float_of(std::uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

std::string hex(std::uint32_t u) {
  char buffer[16];
  std::snprintf(buffer, sizeof buffer, "0x%08X", u);
  return buffer;
}

// The oracle of float -> binary16: the compiler's conversion (GCC >= 12 on x86-64: libgcc's
// __truncsfhf2, or F16C's vcvtps2ph when enabled), independent of ssm's bit manipulation.
std::uint16_t oracle_f16_bits(float x) {
  _Float16 const h = static_cast<_Float16>(x);
  std::uint16_t bits;
  std::memcpy(&bits, &h, sizeof bits);
  return bits;
}

float oracle_f16_to_float(std::uint16_t bits) {
  _Float16 h;
  std::memcpy(&h, &bits, sizeof h);
  return static_cast<float>(h);
}

bool f16_is_nan(std::uint16_t bits) { return (bits & 0x7C00u) == 0x7C00u && (bits & 0x03FFu) != 0; }
bool bf16_is_nan(std::uint16_t bits) { return (bits & 0x7F80u) == 0x7F80u && (bits & 0x007Fu) != 0; }

// Counts the floats whose conversion to f16 differs from the oracle; reports the first few.
struct f16_checker {
  std::size_t checked = 0;
  std::size_t mismatches = 0;
  std::string first;

  void operator()(std::uint32_t u) {
    float const x = float_of(u);
    std::uint16_t const got = ssm::from_float<ssm::f16>(x).bits;
    std::uint16_t const want = oracle_f16_bits(x);
    ++checked;
    bool ok;
    if (std::isnan(x)) {
      // NaN: any quiet NaN of the same sign (the payload is not part of the contract).
      ok = f16_is_nan(got) && (got & 0x0200u) != 0 && (got & 0x8000u) == ((u >> 16) & 0x8000u) && f16_is_nan(want);
    } else {
      ok = got == want;
    }
    if (!ok && ++mismatches <= 8) first += hex(u) + " -> " + hex(got) + " (want " + hex(want) + "); ";
  }
};

}  // namespace

TEST_CASE("f16: to_float is exact for all 65536 bit patterns (against _Float16)", "[dtype][f16]") {
  std::size_t mismatches = 0;
  for (std::uint32_t b = 0; b < 0x10000u; ++b) {
    auto const bits = static_cast<std::uint16_t>(b);
    float const got = ssm::to_float(ssm::f16{bits});
    float const want = oracle_f16_to_float(bits);
    bool const ok = f16_is_nan(bits) ? std::isnan(got) && std::signbit(got) == ((bits & 0x8000u) != 0)
                                     : bits_of(got) == bits_of(want);  // bits: -0.0 stays -0.0
    if (!ok) {
      ++mismatches;
      UNSCOPED_INFO("pattern " << hex(bits) << ": " << got << " want " << want);
    }
  }
  REQUIRE(mismatches == 0);
}

TEST_CASE("f16: all 65536 bit patterns round-trip to_float -> from_float (NaNs stay NaN)", "[dtype][f16]") {
  std::size_t mismatches = 0;
  for (std::uint32_t b = 0; b < 0x10000u; ++b) {
    auto const bits = static_cast<std::uint16_t>(b);
    std::uint16_t const back = ssm::from_float<ssm::f16>(ssm::to_float(ssm::f16{bits})).bits;
    bool const ok = f16_is_nan(bits) ? f16_is_nan(back) && (back & 0x8000u) == (bits & 0x8000u) : back == bits;
    if (!ok) {
      ++mismatches;
      UNSCOPED_INFO("pattern " << hex(bits) << " came back as " << hex(back));
    }
  }
  REQUIRE(mismatches == 0);
}

TEST_CASE("f16: hand-derived conversions", "[dtype][f16]") {
  auto f16_bits = [](float x) { return ssm::from_float<ssm::f16>(x).bits; };
  CHECK(f16_bits(1.0f) == 0x3C00u);
  CHECK(f16_bits(-2.0f) == 0xC000u);
  CHECK(f16_bits(0.0f) == 0x0000u);
  CHECK(f16_bits(-0.0f) == 0x8000u);
  CHECK(f16_bits(65504.0f) == 0x7BFFu);                       // largest finite
  CHECK(f16_bits(65519.99609375f) == 0x7BFFu);                // just below the halfway point 65520
  CHECK(f16_bits(65520.0f) == 0x7C00u);                       // the tie rounds to even: infinity
  CHECK(f16_bits(-65520.0f) == 0xFC00u);
  CHECK(f16_bits(std::numeric_limits<float>::infinity()) == 0x7C00u);
  CHECK(f16_bits(-std::numeric_limits<float>::infinity()) == 0xFC00u);
  CHECK(f16_bits(0x1p-14f) == 0x0400u);                       // smallest normal
  CHECK(f16_bits(0x1p-24f) == 0x0001u);                       // smallest subnormal
  CHECK(f16_bits(0x1p-25f) == 0x0000u);                       // half of it: tie to even (zero)
  CHECK(f16_bits(0x1.000002p-25f) == 0x0001u);                // just above the tie
  CHECK(f16_bits(0x1.8p-24f) == 0x0002u);                     // 1.5 units: tie to even (2)
  CHECK(f16_bits(0x1.002p0f) == 0x3C00u);                     // 1 + 2^-11: tie to even (1)
  CHECK(f16_bits(0x1.006p0f) == 0x3C02u);                     // 1 + 3*2^-11: tie to even (1 + 2^-9)
  CHECK(f16_bits(0x1.ffep-15f) == 0x0400u);                   // rounds up across the subnormal/normal edge
  CHECK(ssm::to_float(ssm::f16{0x3555u}) == 0x1.554p-2f);    // 1/3 rounded
  std::uint16_t const nan = f16_bits(std::numeric_limits<float>::quiet_NaN());
  CHECK(f16_is_nan(nan));
  CHECK(f16_is_nan(f16_bits(float_of(0x7F800001u))));        // a signalling NaN becomes a quiet NaN
  CHECK((f16_bits(float_of(0x7F800001u)) & 0x0200u) != 0);
  CHECK(f16_bits(float_of(0xFF800001u)) >= 0xFC01u);           // the sign survives
  CHECK(ssm::unit_roundoff<ssm::f16>() == 0x1p-11);
}

TEST_CASE("f16: from_float rounds exactly as _Float16 on millions of floats", "[dtype][f16]") {
  f16_checker check;
  // 1. A sweep of the whole float line (both signs, every exponent, NaNs and infinities), with a
  //    prime stride so that the low mantissa bits vary too: about 4.3 million values.
  for (std::uint64_t u = 0; u <= 0xFFFFFFFFull; u += 997) check(static_cast<std::uint32_t>(u));
  // 2. Every halfway point between two neighbouring halves (exactly representable in float, since
  //    a half has 11 significant bits), and the floats just either side of it, for both signs.
  for (std::uint32_t h = 0; h < 0x7C00u; ++h) {
    double const lo = ssm::to_float(ssm::f16{static_cast<std::uint16_t>(h)});
    double const hi = h + 1 == 0x7C00u ? 65536.0 : ssm::to_float(ssm::f16{static_cast<std::uint16_t>(h + 1)});
    std::uint32_t const mid = bits_of(static_cast<float>((lo + hi) / 2));  // exact
    for (std::uint32_t u : {mid - 1, mid, mid + 1}) {
      check(u);
      check(u | 0x80000000u);
    }
  }
  // 3. Every float around the largest finite half and the overflow threshold 65520, and around
  //    the subnormal boundaries 2^-25 (rounds to zero or to the smallest subnormal) and 2^-14.
  for (std::uint32_t u = 0x477FD000u; u <= 0x47801000u; ++u) {  // 65488 ... 65568
    check(u);
    check(u | 0x80000000u);
  }
  for (std::uint32_t centre : {0x33000000u, 0x33800000u, 0x38800000u, 0x387FC000u}) {
    for (std::uint32_t u = centre - 4096; u <= centre + 4096; ++u) {
      check(u);
      check(u | 0x80000000u);
    }
  }
  // 4. Every float with the exponents of the f16 subnormal range, with a small stride.
  for (std::uint32_t u = 0x33000000u; u < 0x38800000u; u += 61) check(u);
  INFO(check.first);
  CHECK(check.checked > 3000000);
  REQUIRE(check.mismatches == 0);
}

TEST_CASE("bf16: hand-derived conversions", "[dtype][bf16]") {
  auto bf16_bits = [](std::uint32_t float_bits) { return ssm::from_float<ssm::bf16>(float_of(float_bits)).bits; };
  CHECK(ssm::from_float<ssm::bf16>(1.0f).bits == 0x3F80u);
  CHECK(ssm::from_float<ssm::bf16>(-2.0f).bits == 0xC000u);
  CHECK(ssm::from_float<ssm::bf16>(0.0f).bits == 0x0000u);
  CHECK(ssm::from_float<ssm::bf16>(-0.0f).bits == 0x8000u);
  // Round to nearest, ties to even: the discarded half 0x8000 is exactly half a bf16 ulp.
  CHECK(bf16_bits(0x3F808000u) == 0x3F80u);  // tie, 0x3F80 even: stays
  CHECK(bf16_bits(0x3F818000u) == 0x3F82u);  // tie, 0x3F81 odd: up to even
  CHECK(bf16_bits(0x3F808001u) == 0x3F81u);  // above the tie: up
  CHECK(bf16_bits(0x3F807FFFu) == 0x3F80u);  // below the tie: down
  CHECK(bf16_bits(0xBF818000u) == 0xBF82u);  // the same for negatives (round to nearest magnitude)
  CHECK(bf16_bits(0x3F7F8000u) == 0x3F80u);  // tie at 0x3F7F (odd): carries into the exponent, to 1.0
  CHECK(bf16_bits(0x00008000u) == 0x0000u);  // subnormal tie to even (zero)
  CHECK(bf16_bits(0x00018000u) == 0x0002u);  // subnormal tie to even (up)
  CHECK(bf16_bits(0x00000001u) == 0x0000u);  // smallest float subnormal: rounds to zero
  // Overflow: the largest float rounds past the largest bf16 0x7F7F to infinity.
  CHECK(bf16_bits(0x7F7F7FFFu) == 0x7F7Fu);
  CHECK(bf16_bits(0x7F7F8000u) == 0x7F80u);  // tie at odd 0x7F7F: up, to infinity
  CHECK(bf16_bits(0x7F7FFFFFu) == 0x7F80u);
  CHECK(bf16_bits(0xFF7FFFFFu) == 0xFF80u);
  CHECK(bf16_bits(0x7F800000u) == 0x7F80u);  // +inf
  CHECK(bf16_bits(0xFF800000u) == 0xFF80u);  // -inf
  // NaN: stays NaN, becomes quiet, keeps its sign; a payload only in the low 16 bits must not
  // turn into infinity.
  CHECK(bf16_bits(0x7FC00000u) == 0x7FC0u);
  CHECK(bf16_bits(0xFFC00000u) == 0xFFC0u);
  CHECK(bf16_bits(0x7F800001u) == 0x7FC0u);
  CHECK(bf16_bits(0x7F810000u) == 0x7FC1u);
  CHECK(bf16_bits(0xFF800001u) == 0xFFC0u);
  CHECK(bf16_bits(0x7FFFFFFFu) == 0x7FFFu);  // no carry out of a NaN
  CHECK(ssm::to_float(ssm::bf16{0x3F80u}) == 1.0f);
  CHECK(ssm::to_float(ssm::bf16{0x4049u}) == 3.140625f);
  CHECK(ssm::unit_roundoff<ssm::bf16>() == 0x1p-8);
  CHECK(ssm::unit_roundoff<float>() == 0x1p-24);
}

TEST_CASE("bf16: to_float is exact for all 65536 bit patterns, and finite ones round-trip", "[dtype][bf16]") {
  std::size_t mismatches = 0;
  for (std::uint32_t b = 0; b < 0x10000u; ++b) {
    auto const bits = static_cast<std::uint16_t>(b);
    float const x = ssm::to_float(ssm::bf16{bits});
    std::uint16_t const back = ssm::from_float<ssm::bf16>(x).bits;
    bool ok = bits_of(x) == (b << 16);  // bf16 is the top half of a binary32
    if (bf16_is_nan(bits))
      ok = ok && std::isnan(x) && bf16_is_nan(back) && (back & 0x0040u) != 0 && (back & 0xFFBFu) == (bits & 0xFFBFu);
    else
      ok = ok && back == bits;
    if (!ok) {
      ++mismatches;
      UNSCOPED_INFO("pattern " << hex(bits) << " -> " << x << " -> " << hex(back));
    }
  }
  REQUIRE(mismatches == 0);
}

TEST_CASE("bf16: from_float is the nearest bf16, ties to even (against the definition)", "[dtype][bf16]") {
  // The oracle: of the two bf16 values around x (truncate, truncate + 1 ulp), take the nearer in
  // exact (double) arithmetic, the even one on a tie; infinity counts as 2^128 (IEEE overflow).
  auto bf16_value = [](std::uint32_t bits16) {
    if ((bits16 & 0x7FFFu) == 0x7F80u) return std::ldexp((bits16 & 0x8000u) ? -1.0 : 1.0, 128);
    return static_cast<double>(float_of(bits16 << 16));
  };
  std::size_t mismatches = 0, checked = 0;
  auto check = [&](std::uint32_t u) {
    float const x = float_of(u);
    if (std::isnan(x) || std::isinf(x)) return;
    std::uint32_t const down = u >> 16, up = down + 1;  // same sign: magnitudes truncated / bumped
    double const err_down = std::abs(static_cast<double>(x) - bf16_value(down));
    double const err_up = std::abs(static_cast<double>(x) - bf16_value(up));
    std::uint32_t const want = err_down < err_up ? down : err_up < err_down ? up : (down & 1u) ? up : down;
    std::uint16_t const got = ssm::from_float<ssm::bf16>(x).bits;
    ++checked;
    if (got != want && ++mismatches <= 8) UNSCOPED_INFO(hex(u) << " -> " << hex(got) << " want " << hex(want));
  };
  for (std::uint64_t u = 0; u <= 0xFFFFFFFFull; u += 4099) check(static_cast<std::uint32_t>(u));
  for (std::uint32_t top = 0; top < 0x10000u; top += 7)  // ties and their neighbours in every binade
    for (std::uint32_t low : {0x7FFFu, 0x8000u, 0x8001u, 0x0000u, 0xFFFFu}) check((top << 16) | low);
  CHECK(checked > 1000000);
  REQUIRE(mismatches == 0);
}

TEST_CASE("dtype_traits name the safetensors dtypes", "[dtype]") {
  CHECK(ssm::dtype_traits<float>::name == "F32");
  CHECK(ssm::dtype_traits<ssm::f16>::name == "F16");
  CHECK(ssm::dtype_traits<ssm::bf16>::name == "BF16");
  STATIC_REQUIRE(sizeof(ssm::f16) == 2);
  STATIC_REQUIRE(sizeof(ssm::bf16) == 2);
}
