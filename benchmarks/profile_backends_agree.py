"""Do the torch.profiler and nsys backends of `fib profile` agree per stage?

    python benchmarks/profile_backends_agree.py BOTH_RUN_DIR [--output FILE.csv]
    python benchmarks/profile_backends_agree.py NSYS_RUN_DIR TORCH_RUN_DIR [--output FILE.csv]

One run of `fib profile --backend both` (torch.profiler inside the nsys capture: the same kernel
launches seen by both tools; tables in profile/ and profile/torch/), or two separate runs of the
same solutions and workloads (same seed, separate executions). Per (solution, workload, stage):
the per-call kernel time of each, their difference in %, and whether it is within 5%.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("nsys_run", type=Path)
    p.add_argument("torch_run", type=Path, nargs="?", default=None)
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args()
    nsys = pd.read_csv(args.nsys_run / "profile" / "stages.csv")
    torch_dir = args.torch_run / "profile" if args.torch_run else args.nsys_run / "profile" / "torch"
    torch = pd.read_csv(torch_dir / "stages.csv")
    table = nsys.merge(torch, on=["solution", "workload", "stage"], suffixes=("_nsys", "_torch"), how="outer")
    table = table.rename(columns={"tokens_nsys": "tokens"})
    table["diff_pct"] = 100 * (table["per_call_us_torch"] / table["per_call_us_nsys"] - 1)
    table["within_5pct"] = table["diff_pct"].abs() <= 5
    table = table[["solution", "tokens", "stage", "per_call_us_nsys", "per_call_us_torch", "diff_pct", "within_5pct"]]
    table = table.sort_values(["solution", "tokens", "stage"])
    if args.output:
        table.to_csv(args.output, index=False)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"{int(table['within_5pct'].sum())}/{len(table)} stages within 5%")


if __name__ == "__main__":
    main()
