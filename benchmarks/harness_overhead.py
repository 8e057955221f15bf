"""Where the wall time of a `fib run` goes: reference, inputs, checking, timing, and the rest.

    python benchmarks/harness_overhead.py --output DIR [--definition D] [--solutions S ...] [fib run flags]
    python benchmarks/harness_overhead.py --output DIR --from-runs   # the tables again, from DIR's data

Runs the same `fib run` twice: cold (an empty reference cache) and warm (the cache the cold run
filled), and splits each run's wall time with what the worker records per trace
(harness_phases.split): `evaluation.workload_prepare_s` (inputs, reference, fresh-check inputs; once
per workload) and `evaluation.phases_s` (build, first call, check, timing, fresh check; per solution).
"Timed calls" is the solutions' own measured time (their timing samples summed); "timing loop" is the
rest of the timing phase (warm-up, L2 flushes, the timer's own cost); "other" is what no phase covers
(process start, dataset loading, worker start, scheduling). Writes harness_overhead.csv / .md and both
run directories under --output. --from-runs writes the two tables again from DIR/run_cold, DIR/run_warm
and the walls in DIR/harness_overhead.csv (measured around the runs, so only there).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness_phases import split, trace_totals  # noqa: E402

DS = "moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048"
LABELS = ("cold", "warm")


def command_line(definition: str, solutions: list[str], passthrough: list[str]) -> str:
    return " ".join(["fib run --definitions", definition, "--solutions", *solutions, *passthrough])


def recorded_command_line(run_json: Path) -> str:
    """command_line() of the `fib run` that run.json records (`--output` dropped, repeated --solutions merged)."""
    command = json.loads(run_json.read_text()).get("command") if run_json.is_file() else None
    if not command:
        raise SystemExit(f"{run_json}: no `command` recorded (a `fib run` output directory's run.json has it)")
    definitions, solutions, rest = [], [], []
    args = iter(command[2:])
    for arg in args:
        if arg in ("--definitions", "--solutions"):
            (definitions if arg == "--definitions" else solutions).append(next(args))
        elif arg == "--output":
            next(args)
        else:
            rest.append(arg)
    if len(definitions) != 1:
        raise SystemExit(f"{run_json}: expected one --definitions in its command, found {definitions}")
    return command_line(definitions[0], solutions, rest)


def write_tables(output: Path, walls: dict[str, float], command: str) -> str:
    rows = [{"run": label, **split(trace_totals(output / f"run_{label}"), walls[label])} for label in LABELS]
    table = pd.DataFrame(rows).set_index("run")
    if not table["reference_beside_s"].any():  # runs whose worker made the reference: all on the wall's path
        table = table.drop(columns=["reference_beside_s"])
    # the judge's reference (reference_beside_s) ran beside the worker: not a share of the wall
    shares = table.drop(columns=["wall_s", "references_computed", "reference_beside_s"], errors="ignore") \
        .div(table["wall_s"], axis=0) * 100
    table.to_csv(output / "harness_overhead.csv")
    md = ["# Harness overhead: where `fib run`'s wall time goes", "", f"`{command}`", "",
          "## seconds", "", table.to_markdown(floatfmt=".2f"), "", "## % of wall time", "",
          shares.to_markdown(floatfmt=".1f"), ""]
    text = "\n".join(md)
    (output / "harness_overhead.md").write_text(text)
    return text


def run_both(args, passthrough: list[str]) -> dict[str, float]:
    args.output.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, FIB_CACHE_DIR=str(args.output / "cache"))
    walls = {}
    for label in LABELS:
        run_dir = args.output / f"run_{label}"
        cmd = [sys.executable, "-m", "fib", "run", "--definitions", args.definition, "--solutions", *args.solutions,
               "--output", str(run_dir), *passthrough]
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, text=True, capture_output=True)
        walls[label] = time.perf_counter() - start
        (args.output / f"run_{label}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise SystemExit(f"{label} run failed ({proc.returncode}); see {args.output}/run_{label}.log")
    return walls


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--definition", default=DS)
    p.add_argument("--solutions", nargs="+", default=["torch_eager", "triton_staged", "triton_fused"])
    p.add_argument("--from-runs", action="store_true",
                   help="run nothing: the tables again from --output's run directories and harness_overhead.csv")
    args, passthrough = p.parse_known_args(argv)
    if args.from_runs:
        if passthrough:
            p.error(f"--from-runs runs nothing, so it takes no fib run flags: {' '.join(passthrough)}")
        csv = args.output / "harness_overhead.csv"
        if not csv.is_file():
            raise SystemExit(f"{csv}: no such file (its wall_s column holds the runs' walls)")
        recorded = pd.read_csv(csv, index_col="run")["wall_s"]
        missing = [label for label in LABELS if label not in recorded.index]
        if missing:
            raise SystemExit(f"{csv}: no wall_s for run(s) {', '.join(missing)}")
        walls = {label: float(recorded[label]) for label in LABELS}
        command = recorded_command_line(args.output / "run_cold" / "run.json")
    else:
        walls = run_both(args, passthrough)
        command = command_line(args.definition, args.solutions, passthrough)
    print(write_tables(args.output, walls, command))


if __name__ == "__main__":
    main()
