// The embedding lookup against its reference and by hand, and its refusal of bad ids.
#include <cmath>
#include <cstdint>

#include <ssm/linear/embedding.hpp>

#include "catch.hpp"
#include "support.hpp"

using namespace ssm;
using namespace ssm::test;

TEMPLATE_TEST_CASE("embedding: rows of the table, widened and rounded like the reference", "[embedding]", float, f16, bf16) {
  using Wt = TestType;
  host2<Wt> table("table", 11, 5);
  fill_uniform(table, 3);
  Kokkos::View<std::int32_t*, Kokkos::LayoutRight, Kokkos::HostSpace> ids("ids", 7);
  std::int32_t const chosen[7] = {0, 10, 3, 3, 7, 1, 10};
  for (int m = 0; m < 7; ++m) ids(m) = chosen[m];
  host2<float> out("out", 7, 5), expected("expected", 7, 5);
  embedding(space(), embedding_params<float, Wt, memory>{ids, table, out});
  space().fence();
  reference::embedding(embedding_params<float, Wt, Kokkos::HostSpace>{ids, table, expected});
  require_close(out, expected, {0.0, 0.0}, "embedding");
  for (int m = 0; m < 7; ++m)
    for (int e = 0; e < 5; ++e) REQUIRE(out(m, e) == to_float(table(chosen[m], e)));  // by definition
}

TEST_CASE("embedding: ids outside the vocabulary are refused before anything is read", "[embedding][errors]") {
  host2<float> table("table", 4, 3), out("out", 2, 3);
  Kokkos::View<std::int32_t*, Kokkos::LayoutRight, Kokkos::HostSpace> ids("ids", 2);
  ids(0) = 1;
  ids(1) = 4;
  REQUIRE_THROWS_WITH(embedding(space(), embedding_params<float, float, memory>{ids, table, out}),
                      Catch::Contains("outside the vocabulary [0, 4)"));
  ids(1) = -1;
  REQUIRE_THROWS_WITH(reference::embedding(embedding_params<float, float, Kokkos::HostSpace>{ids, table, out}),
                      Catch::Contains("token id -1"));
  host2<float> wrong("wrong", 2, 4);
  ids(1) = 0;
  REQUIRE_THROWS_WITH(embedding(space(), embedding_params<float, float, memory>{ids, table, wrong}), Catch::Contains("out must be"));
}

TEST_CASE("embedding: unchecked ids outside the vocabulary read nothing and give NaN rows", "[embedding][errors]") {
  host2<float> table("table", 4, 3), out("out", 3, 3);
  fill_uniform(table, 3);
  Kokkos::View<std::int32_t*, Kokkos::LayoutRight, Kokkos::HostSpace> ids("ids", 3);
  ids(0) = 2;
  ids(1) = 4;
  ids(2) = -7;
  embedding_params<float, float, memory> p{ids, table, out, /*check_ids=*/false};
  embedding(space(), p);
  space().fence();
  for (int e = 0; e < 3; ++e) {
    REQUIRE(out(0, e) == table(2, e));
    REQUIRE(std::isnan(out(1, e)));
    REQUIRE(std::isnan(out(2, e)));
  }
}
