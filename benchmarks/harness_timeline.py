"""Where a `fib run`'s wall time went, from its run directory's timeline.jsonl and traces.

    python benchmarks/harness_timeline.py RUN_DIR [RUN_DIR ...] [--markdown OUT.md]

Columns (seconds): cli = process start to the runner's start (Python, fib's imports, devices, dataset,
run directory, build hooks); worker_start / judge_start = spawn to ready (imports, their own set-up);
to_first_trace = runner start to the first trace; then the sums over traces of the worker's phases
(build, inputs, first_call, check, timing, fresh_check), the first workload's timing phase, and the
timed calls themselves (their samples summed); end = last trace to the runner's end (children
stopping); wall = process start to the runner's end. The numbers come from harness_phases.breakdown.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness_phases import breakdown  # noqa: E402


def table(run_dirs: list[Path]) -> pd.DataFrame:
    """One breakdown row per run directory, labelled by its name, or by its path below the common part
    where two share a name."""
    rows = [breakdown(r) for r in run_dirs]
    if len({r["run"] for r in rows}) < len(rows):
        common = Path(os.path.commonpath([str(r.resolve()) for r in run_dirs]))
        for row, r in zip(rows, run_dirs):
            row["run"] = str(r.resolve().relative_to(common))
    return pd.DataFrame(rows).set_index("run")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dirs", nargs="+", type=Path)
    p.add_argument("--markdown", type=Path)
    args = p.parse_args(argv)
    text = table(args.run_dirs).to_markdown(floatfmt=".2f")
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
