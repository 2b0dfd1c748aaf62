// The main of every test program: Kokkos lives for the whole Catch2 session.
#define CATCH_CONFIG_RUNNER  // Catch2 2.x: this file provides main
#include <Kokkos_Core.hpp>

#include "catch.hpp"

int main(int argc, char* argv[]) {
  Kokkos::ScopeGuard kokkos(argc, argv);
  return Catch::Session().run(argc, argv);
}
