"""Does `fib run`'s median agree with the kernel time nsys records per call?

    python benchmarks/timing_vs_nsys.py RUN_DIR PROFILE_RUN_DIR [--output DIR]

RUN_DIR is a `fib run` directory (its traces' medians and timer); PROFILE_RUN_DIR a `fib profile
--backend nsys` directory of the same solutions and workloads (same seed, so the same routing): its
profile/stages.csv holds nsys's kernel time per call, summed over stages. Writes
timing_vs_nsys.csv / .md: per (solution, workload), fib's median, nsys's per-call kernel sum and
their difference, flagged where it exceeds 3% for calls of 50 us or more.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("profile_dir", type=Path)
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args()
    out = args.output or args.profile_dir
    rows = []
    for line in (args.run_dir / "traces.jsonl").read_text().splitlines():
        t = json.loads(line)
        perf = t["evaluation"].get("performance")
        if perf:
            timing = perf.get("timing") or {}
            rows.append({"solution": t["solution"], "workload": t["workload"]["uuid"],
                         "seq_len": t["workload"]["axes"].get("seq_len"), "timer": timing.get("timer"),
                         "fib_median_us": perf["latency_ms"] * 1e3,
                         "fib_span_us": (timing.get("span_median_ms") or float("nan")) * 1e3})
    fib = pd.DataFrame(rows)
    stages = pd.read_csv(args.profile_dir / "profile" / "stages.csv")
    nsys = stages.groupby(["solution", "workload"])["per_call_us"].sum().reset_index(name="nsys_kernel_us")
    table = fib.merge(nsys, on=["solution", "workload"], how="inner")
    table["diff_pct"] = 100 * (table["fib_median_us"] / table["nsys_kernel_us"] - 1)
    table["within_3pct"] = (table["diff_pct"].abs() <= 3) | (table["nsys_kernel_us"] < 50)
    table = table.sort_values(["solution", "seq_len"])
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "timing_vs_nsys.csv", index=False)
    (out / "timing_vs_nsys.md").write_text(table.to_markdown(index=False, floatfmt=".2f") + "\n")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main()
