#!/usr/bin/env bash
# Build and run the whole test suite: the release build (tests, examples, benchmarks, the docs
# with doxygen, header and packaging checks), then the AddressSanitizer + UBSan build.
# Set SSM_SKIP_ASAN=1 to run the release build alone.
set -euo pipefail
cd "$(dirname "$0")/.."

cmake --preset release
cmake --build --preset release
ctest --preset release

if [ "${SSM_SKIP_ASAN:-0}" != 1 ]; then
  cmake --preset asan
  cmake --build --preset asan
  ctest --preset asan
fi
