#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: run the GPU tests and the GPU benchmarks of a CUDA build, and
# print what docs/benchmarks.md records. Usage: scripts/cuda_report.sh [BUILD_DIR] (build/cuda).
# Works from a build directory or from a folder holding the programs (tests/cuda/test_cuda_*,
# tools/ssm, bench/bench_cuda_scan) in the same relative places. The random-weight 2.8b model is
# written once (5.5 GB, in a temporary folder removed at the end) and every benchmark loads it,
# instead of each making its own weights on the host.
set -uo pipefail
build="${1:-build/cuda}"
status=0
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
git rev-parse --short HEAD 2>/dev/null || true

echo "== GPU tests (all at once; each one's last lines and exit status)"
for test in "$build"/tests/cuda/test_cuda_*; do
  [ -x "$test" ] || continue
  ("$test" > "$scratch/$(basename "$test").log" 2>&1; echo "exit status $?" >> "$scratch/$(basename "$test").log") &
done
wait
for log in "$scratch"/test_cuda_*.log; do
  [ -e "$log" ] || continue
  echo "-- $(basename "$log" .log)"
  tail -n 4 "$log"
  grep -q "^exit status 0$" "$log" || status=1
done

echo "== selective scan kernel"
[ -x "$build/bench/bench_cuda_scan" ] && "$build/bench/bench_cuda_scan"
echo "== dense layers of a decoding step"
[ -x "$build/bench/bench_cuda_linear" ] && "$build/bench/bench_cuda_linear"

"$build/tools/ssm" make-model --preset 2.8b --dtype bf16 -o "$scratch/2.8b" > /dev/null || status=1
echo "== 2.8b bf16: prefill 2048 tokens and decode at batch 1; decode at batch 8 to 64"
"$build/tools/ssm" bench -m "$scratch/2.8b" --dtype bf16 -p 2048 -n 128 -b 1 -r 5 || status=1
"$build/tools/ssm" bench -m "$scratch/2.8b" --dtype bf16 -p 0 -n 128 -b 8,16,64 -r 5 || status=1
echo "== 2.8b bf16: prefill of 8 sequences of 2048 tokens"
"$build/tools/ssm" bench -m "$scratch/2.8b" --dtype bf16 -p 2048 -n 0 -b 8 -r 3 || status=1
exit $status
