#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: run the GPU test programs of a CUDA build under NVIDIA's
# compute-sanitizer, every program at once, and print each run's error summary.
#
# Usage: scripts/cuda_sanitize.sh [BUILD_DIR] [TOOL ...]
#   BUILD_DIR  a CUDA build (default build/cuda), or a folder holding tests/cuda/test_cuda_*
#   TOOL       memcheck, racecheck, synccheck or initcheck (default: memcheck racecheck synccheck)
# Environment: SANITIZER (the compute-sanitizer program; found in the CUDA toolkit otherwise),
# SANITIZE_TIMEOUT (seconds per run, default 1800), SANITIZE_LOGS (a folder to keep the logs in),
# SANITIZE_TESTS (test names to run, e.g. "step stack_step"; default all).
#
# A run that times out is reported as such with what it found until then. Exit status 1 if any
# run reported an error or did not finish.
set -uo pipefail
build="${1:-build/cuda}"
shift || true
tools=("$@")
[ ${#tools[@]} -gt 0 ] || tools=(memcheck racecheck synccheck)

sanitizer="${SANITIZER:-}"
if [ -z "$sanitizer" ]; then
  for candidate in "$(command -v compute-sanitizer 2>/dev/null)" /usr/local/cuda/bin/compute-sanitizer \
                   /usr/local/cuda/compute-sanitizer/compute-sanitizer /usr/local/cuda-*/bin/compute-sanitizer; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then sanitizer="$candidate"; break; fi
  done
fi
if [ -z "$sanitizer" ]; then
  echo "cuda_sanitize.sh: compute-sanitizer not found; set SANITIZER" >&2
  exit 2
fi
logs="${SANITIZE_LOGS:-$(mktemp -d)}"
mkdir -p "$logs"
timeout_s="${SANITIZE_TIMEOUT:-1800}"

programs=()
if [ -n "${SANITIZE_TESTS:-}" ]; then
  for name in $SANITIZE_TESTS; do programs+=("$build/tests/cuda/test_cuda_$name"); done
else
  for program in "$build"/tests/cuda/test_cuda_*; do [ -x "$program" ] && programs+=("$program"); done
fi
[ ${#programs[@]} -gt 0 ] || { echo "cuda_sanitize.sh: no GPU test programs in $build" >&2; exit 2; }

"$sanitizer" --version | tail -n 1
runs=()
for tool in "${tools[@]}"; do
  extra=()
  [ "$tool" = racecheck ] && extra=(--racecheck-report analysis)
  for program in "${programs[@]}"; do
    log="$logs/$tool.$(basename "$program").log"
    runs+=("$log")
    (timeout "$timeout_s" "$sanitizer" --tool "$tool" "${extra[@]}" --error-exitcode 99 --print-limit 20 "$program" \
       > "$log" 2>&1
     echo "exit status $?" >> "$log") &
  done
done
wait

status=0
for log in "${runs[@]}"; do
  result="$(tail -n 1 "$log")"
  summary="$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$log" | tail -n 1)"
  case "$result" in
    "exit status 0") ;;
    "exit status 124") summary="timed out after ${timeout_s} s; ${summary:-no summary}"; status=1 ;;
    *) status=1 ;;
  esac
  printf '%-45s %s (%s)\n' "$(basename "$log" .log)" "${summary:-no summary}" "$result"
done
echo "logs: $logs"
exit $status
