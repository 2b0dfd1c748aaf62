#!/usr/bin/env python3
"""Time two or more builds of `ssm` (or one build under several environments) on the same
random-weight checkpoint, alternating between them round after round.

A machine's speed drifts from one run to the next (clocks, temperature, the memory's state), by
more than many changes are worth. Alternating the variants within one session, and repeating
the alternation, separates a change from that drift: a difference is real when every round
shows it. docs/benchmarks.md reports its comparisons this way.

    python3 scripts/compare_builds.py [options] VARIANT [VARIANT ...]

A VARIANT is the path of an `ssm` binary, optionally named and given environment settings:
`[NAME=]PATH[,VAR=VALUE...]`, e.g. `old=/tmp/old/ssm new=build/cuda/tools/ssm,SSM_X=1`.
The first variant writes the checkpoint (`ssm make-model`) into a temporary directory that
every variant then loads (`ssm bench -m`). Prints a Markdown table: for each test and batch,
each variant's milliseconds per step in each round (the median of the bench's repetitions; a
step is one token of every sequence when decoding, the whole prompt when prefilling).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile


def parse_variant(text):
    """`[NAME=]PATH[,VAR=VALUE...]` -> (name, path, environment additions)."""
    head, *settings = text.split(",")
    name, sep, path = head.partition("=")
    if not sep:
        name, path = head, head
    env = {}
    for setting in settings:
        var, sep, value = setting.partition("=")
        if not sep or not var:
            raise SystemExit(f"compare_builds: variant '{text}': setting '{setting}' is not VAR=VALUE")
        env[var] = value
    if not os.access(path, os.X_OK):
        raise SystemExit(f"compare_builds: variant '{text}': '{path}' is not an executable file")
    return name, path, env


def bench(path, env, model, args):
    """One `ssm bench` run of a variant: {(test, batch): ms per step}."""
    command = [path, "bench", "-m", model, "--dtype", args.dtype, "-p", str(args.prompt), "-n",
               str(args.generate), "-b", args.batches, "-r", str(args.repetitions), "-o", "json"]
    run = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True,
                         timeout=args.timeout)
    if run.returncode != 0:
        raise SystemExit(f"compare_builds: {' '.join(command)} failed ({run.returncode}):\n{run.stderr}")
    try:
        report = json.loads(run.stdout)
        return {(r["test"], r["batch"]): r["ms_per_step"] for r in report["results"]}
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise SystemExit(f"compare_builds: {path} printed no bench report ({e}):\n{run.stdout[:2000]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="+", help="[NAME=]PATH[,VAR=VALUE...]")
    parser.add_argument("--preset", default="2.8b", help="shape of the random weights (default 2.8b)")
    parser.add_argument("--dtype", default="bf16", help="weight storage (default bf16)")
    parser.add_argument("-p", "--prompt", type=int, default=0, help="prompt tokens (default 0)")
    parser.add_argument("-n", "--generate", type=int, default=128, help="generated tokens (default 128)")
    parser.add_argument("-b", "--batches", default="1", help="batch sizes, e.g. 1,8,64 (default 1)")
    parser.add_argument("-r", "--repetitions", type=int, default=3, help="runs per bench, median kept")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the variants (default 2)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed per bench run")
    args = parser.parse_args()
    variants = [parse_variant(v) for v in args.variants]

    scratch = tempfile.mkdtemp(prefix="compare_builds_")
    try:
        model = os.path.join(scratch, args.preset)
        _, first, env = variants[0]
        made = subprocess.run([first, "make-model", "--preset", args.preset, "--dtype", args.dtype, "-o", model],
                              env={**os.environ, **env}, capture_output=True, text=True)
        if made.returncode != 0:
            raise SystemExit(f"compare_builds: make-model failed ({made.returncode}):\n{made.stderr}")
        rows = []  # (round, name, {(test, batch): ms})
        for round_ in range(1, args.rounds + 1):
            for name, path, env in variants:
                rows.append((round_, name, bench(path, env, model, args)))
                print(f"round {round_}, {name}: done", file=sys.stderr)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    keys = sorted({key for _, _, times in rows for key in times}, key=lambda k: (k[0], k[1]))
    print("| variant | round | " + " | ".join(f"{test}, batch {batch}" for test, batch in keys) + " |")
    print("|---|---:|" + "---:|" * len(keys))
    for round_, name, times in rows:
        cells = [f"{times[key]:.3f}" if key in times else "-" for key in keys]
        print(f"| {name} | {round_} | " + " | ".join(cells) + " |")
    print("\nms per step, the median of each bench's repetitions (decode: a token of every sequence;"
          " prefill: the whole prompt)")


if __name__ == "__main__":
    main()
