"""Do the torch.profiler and nsys backends of `fib profile` agree per stage?

    python benchmarks/profile_backends_agree.py RUN_A RUN_B [--labels nsys torch] [--output FILE.csv]

Two `fib profile` runs of the same solutions and workloads (same seed, separate executions: nsys
and torch.profiler cannot share one, CUPTI takes a single subscriber). Per (solution, workload,
stage): the per-call kernel time of each, their difference in % (B against A), and whether it is
within 5%. Comparing a backend with itself (nsys1 vs nsys2) measures the run-to-run part.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_a", type=Path)
    p.add_argument("run_b", type=Path)
    p.add_argument("--labels", nargs=2, default=["nsys", "torch"], help="names of A and B in the columns")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args()
    a, b = args.labels
    first = pd.read_csv(args.run_a / "profile" / "stages.csv")
    second = pd.read_csv(args.run_b / "profile" / "stages.csv")
    table = first.merge(second, on=["solution", "workload", "stage"], suffixes=(f"_{a}", f"_{b}"), how="outer")
    table = table.rename(columns={f"tokens_{a}": "tokens"})
    table["diff_pct"] = 100 * (table[f"per_call_us_{b}"] / table[f"per_call_us_{a}"] - 1)
    table["diff_us"] = table[f"per_call_us_{b}"] - table[f"per_call_us_{a}"]
    table["within_5pct"] = table["diff_pct"].abs() <= 5
    table = table[["solution", "tokens", "stage", f"per_call_us_{a}", f"per_call_us_{b}", "diff_pct", "diff_us",
                   "within_5pct"]]
    table = table.sort_values(["solution", "tokens", "stage"])
    if args.output:
        table.to_csv(args.output, index=False)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"{int(table['within_5pct'].sum())}/{len(table)} stages within 5%; "
          f"largest |diff| {table['diff_pct'].abs().max():.2f}% / {table['diff_us'].abs().max():.2f} us")


if __name__ == "__main__":
    main()
