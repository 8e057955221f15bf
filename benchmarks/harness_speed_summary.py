"""Summary of benchmarks/gpu_harness_speed.sh: wall seconds per run, fib's and flashinfer-bench's side by side.

    python benchmarks/harness_speed_summary.py RESULTS_DIR --iterations N --num-trials N

Reads RESULTS_DIR/walls.txt (one line per command: `name rc=.. wall_s=.. triton_cache_before=..
triton_cache_after=..`). For fib's runs (fib_*: run directories of the same name) it adds
harness_phases.speed_columns (the split of benchmarks/harness_overhead.py grouped: reference, first
calls, checks, timing, other) and the number of PASSED pairs; for flashinfer-bench's (fi_*: trace sets
of the same name, checked by `fibench_package.py verify` into NAME_verify.csv) the number of timed
workloads and what its timed calls took, estimated as mean latency x iterations x trials per workload,
for the solution and for the reference (which flashinfer-bench times too unless profile_baseline is off).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness_phases import speed_columns  # noqa: E402


def read_walls(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
        name, *fields = line.split()
        values = dict(f.split("=", 1) for f in fields if "=" in f)
        if "wall_s" in values:
            rows.append({"run": name, "rc": int(values["rc"]), "wall_s": float(values["wall_s"]),
                         "triton_cache_added": int(values["triton_cache_after"]) - int(values["triton_cache_before"])})
    return rows


def fi_row(results: Path, name: str, calls_per_workload: int) -> dict:
    csv = results / f"{name}_verify.csv"
    if not csv.is_file():
        return {}
    table = pd.read_csv(csv)
    per_call = calls_per_workload / 1e3
    return {"pairs": len(table), "timed": int(table["timed"].sum()),
            "timed_calls_s": table["latency_ms"].fillna(0).sum() * per_call,
            "reference_timed_calls_s": table["reference_latency_ms"].fillna(0).sum() * per_call}


def summary(results: Path, calls_per_workload: int) -> pd.DataFrame:
    rows = []
    for row in read_walls(results / "walls.txt"):
        folder = results / row["run"]
        if row["run"].startswith("fib") and (folder / "traces.jsonl").is_file():
            row.update(speed_columns(folder, row["wall_s"]))
        elif row["run"].startswith("fi_"):
            row.update(fi_row(results, row["run"], calls_per_workload))
        rows.append(row)
    return pd.DataFrame(rows).set_index("run")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path)
    p.add_argument("--iterations", type=int, required=True, help="the runs' timed calls per trial")
    p.add_argument("--num-trials", type=int, required=True)
    args = p.parse_args(argv)
    calls = args.iterations * args.num_trials
    table = summary(args.results, calls)
    print("# Harness wall time: fib and flashinfer-bench 0.1.2 on the same workloads\n")
    print(table.to_markdown(floatfmt=".1f"))
    print(f"\ntimed: pairs with a PASSED trace. fib's *_s columns come from its traces' phases_s;"
          f" flashinfer-bench's timed_calls_s are estimated as mean latency x {calls} calls per workload."
          " fib's reference_s: since 2026-12-02 computed by its judge beside the worker, so not part of"
          " its wall time's path (other_s is the wall less the worker's phases).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
