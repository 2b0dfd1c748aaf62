#!/usr/bin/env bash
# Build the examples and run the main one: a Mamba block with seeded weights over a sequence.
set -euo pipefail
cd "$(dirname "$0")/.."

cmake --preset release >/dev/null
cmake --build --preset release --target 04_mamba_block
./build/release/examples/04_mamba_block "$@"
