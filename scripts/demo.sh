#!/usr/bin/env bash
# Build the ssm command and run the main job: the small Mamba trained on fortunes
# (models/fortunes-mamba, docs/trained-model.md) continues a prompt, streaming its text.
# Extra arguments go to `ssm generate` (e.g. -p "<|endoftext|>Q: Why" -n 80 --temp 0.7 --seed 3).
set -euo pipefail
cd "$(dirname "$0")/.."

cmake --preset release >/dev/null
cmake --build --preset release --target ssm_cli
./build/release/tools/ssm generate -m models/fortunes-mamba -p "<|endoftext|>The best way to" -n 64 --seed 7 "$@"
