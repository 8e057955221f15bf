"""Two warm-up policies' medians side by side, per workload: runs of one policy (--new) against runs of the
other (--old), same solution and workloads. For each workload: the median latency of each run, the spread of
each policy's runs, the gap between the policies' mean medians in % and whether it exceeds the larger of the two
policies' own run-to-run spreads; also, per policy, the median of the first 10 timed samples against all 150
(a warm-up that stopped too early shows as slower first samples). Exit code 0 always: it reports, it does not
decide.

    python benchmarks/warmup_policy.py --new RUN [RUN ...] --old RUN [RUN ...] [--markdown OUT.md]
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import pandas as pd


def _traces(run: Path) -> dict:
    out = {}
    for line in (run / "traces.jsonl").read_text().splitlines():
        t = json.loads(line)
        perf = (t.get("evaluation") or {}).get("performance") or {}
        timing = perf.get("timing") or {}
        if timing.get("samples_ms"):
            key = ",".join(f"{k}={v}" for k, v in sorted(t["workload"]["axes"].items()))
            samples = timing["samples_ms"]
            out[key] = {"median": timing["median_ms"], "first10": statistics.median(samples[:10]),
                        "warmup_runs": timing.get("warmup_runs"), "floor": timing.get("warmup_min_ms")}
    return out


def table(new: list[Path], old: list[Path]) -> pd.DataFrame:
    runs = {"new": [_traces(r) for r in new], "old": [_traces(r) for r in old]}
    rows = []
    for key in runs["new"][0]:
        row = {"workload": key}
        spread = {}
        for policy, traces in runs.items():
            meds = [t[key]["median"] for t in traces if key in t]
            row[f"{policy}_median_ms"] = statistics.mean(meds)
            spread[policy] = 100 * (max(meds) - min(meds)) / statistics.mean(meds)
            row[f"{policy}_spread_pct"] = spread[policy]
            row[f"{policy}_first10_vs_all_pct"] = statistics.mean(
                100 * (t[key]["first10"] / t[key]["median"] - 1) for t in traces if key in t)
            row[f"{policy}_warmup_runs"] = statistics.mean(t[key]["warmup_runs"] for t in traces if key in t)
        row["gap_pct"] = 100 * (row["new_median_ms"] / row["old_median_ms"] - 1)
        row["gap_beyond_spread"] = abs(row["gap_pct"]) > max(spread.values())
        rows.append(row)
    return pd.DataFrame(rows).set_index("workload")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new", type=Path, nargs="+", required=True)
    ap.add_argument("--old", type=Path, nargs="+", required=True)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args(argv)
    frame = table(args.new, args.old)
    text = frame.to_markdown(floatfmt=".4g")
    summary = (f"\n\nworkloads: {len(frame)}; gap beyond both policies' run-to-run spread: "
               f"{int(frame['gap_beyond_spread'].sum())}; mean |gap| {frame['gap_pct'].abs().mean():.2f}%, "
               f"max |gap| {frame['gap_pct'].abs().max():.2f}%")
    print(text + summary)
    if args.markdown:
        args.markdown.write_text(text + summary + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
