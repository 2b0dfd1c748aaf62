#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: run the GPU tests and the GPU benchmarks of a CUDA build, and
# print what docs/benchmarks.md records. Usage: scripts/cuda_report.sh [BUILD_DIR] (build/cuda).
# Works from a build directory or from a folder holding the programs (tests/cuda/test_cuda_*,
# tools/ssm, bench/bench_cuda_scan) in the same relative places.
set -uo pipefail
build="${1:-build/cuda}"
status=0

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
git rev-parse --short HEAD 2>/dev/null || true

echo "== GPU tests"
for test in "$build"/tests/cuda/test_cuda_*; do
  [ -x "$test" ] || continue
  echo "-- $(basename "$test")"
  "$test" 2>&1 | tail -n 4 || status=1
done

echo "== selective scan kernel"
[ -x "$build/bench/bench_cuda_scan" ] && "$build/bench/bench_cuda_scan"
echo "== dense layers of a decoding step"
[ -x "$build/bench/bench_cuda_linear" ] && "$build/bench/bench_cuda_linear"

echo "== 2.8b bf16: prefill 2048 tokens and decode at batch 1; decode at batch 8 and 64"
"$build/tools/ssm" bench --preset 2.8b --dtype bf16 -p 2048 -n 128 -b 1 || status=1
"$build/tools/ssm" bench --preset 2.8b --dtype bf16 -p 0 -n 128 -b 8,64 || status=1
echo "== 2.8b bf16: prefill of 8 sequences of 2048 tokens"
"$build/tools/ssm" bench --preset 2.8b --dtype bf16 -p 2048 -n 0 -b 8 || status=1
exit $status
