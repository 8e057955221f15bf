"""The head-to-head table of reports/moe_peers_h200 from its run data, so no figure in it is typed by hand.

    python families/moe/benchmarks/peers_table.py reports/moe_peers_h200

Reads RUN/run/traces.jsonl (a `fib run` of the peers), the floor per workload from
reports/moe_deepseek_h200/roofline.csv (same dataset, same seed, same GPU kind), and the nsys stage
table RUN/profile_deepgemm/stages.csv (`fib profile -s deepgemm`). Writes table.md and table.csv.
Token buckets: decode 1-16, 17-128, 129-1024, prefill > 1024; the hybrid row takes the best
solution per bucket (by total latency over the bucket's workloads), as a per-bucket dispatch would.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # this checkout's fib

BUCKETS = [(1, 16, "1-16"), (17, 128, "17-128"), (129, 1024, "129-1024"), (1025, 10**9, ">1024")]


def _suspect(timing: dict) -> bool:
    """fib's own rule for a cupti sum that may be missing kernels (fib.timing.measure)."""
    from fib.timing.measure import kernels_may_be_missing
    return timing.get("timer") == "cupti" and kernels_may_be_missing(timing["median_ms"], timing.get("span_median_ms"))


def bucket(t: int) -> str:
    return next(name for lo, hi, name in BUCKETS if lo <= t <= hi)


def main(report: Path) -> None:
    repo = Path(__file__).resolve().parents[3]
    rows = []
    for line in (report / "run" / "traces.jsonl").read_text().splitlines():
        t = json.loads(line)
        ev = t["evaluation"]
        perf = ev.get("performance") or {}
        timing = perf.get("timing") or {}
        rows.append({"seq_len": t["workload"]["axes"]["seq_len"], "workload": t["workload"]["uuid"],
                     "solution": t["solution"], "status": ev["status"], "latency_ms": perf.get("latency_ms"),
                     "suspect": _suspect(timing), "reason": ev.get("reason")})
    df = pd.DataFrame(rows)
    floor = pd.read_csv(repo / "reports" / "moe_deepseek_h200" / "roofline.csv")
    floor = floor.drop_duplicates("workload").set_index("workload")["floor_ms"]
    df["floor_ms"] = df["workload"].map(floor)
    # deepgemm at decode: fib's cupti sum missed its kernels (flagged in timer_note); nsys saw them
    prof = report / "profile_deepgemm" / "stages.csv"
    if prof.exists():
        stages = pd.read_csv(prof)
        per_call = stages.groupby("workload")["per_call_us"].sum() / 1e3
        gemm = stages[stages["stage"].isin(["gemm1", "gemm2"])].groupby("workload")["per_call_us"].sum() / 1e3
        sel = (df["solution"] == "deepgemm")
        df.loc[sel, "nsys_kernels_ms"] = df.loc[sel, "workload"].map(per_call)
        df.loc[sel, "nsys_gemm_ms"] = df.loc[sel, "workload"].map(gemm)
    use = df["latency_ms"].where(~df["suspect"], df.get("nsys_kernels_ms"))
    df["used_ms"] = use
    df["of_floor"] = df["floor_ms"] / df["used_ms"]
    df["bucket"] = df["seq_len"].map(bucket)
    df.to_csv(report / "table.csv", index=False)
    wide = df.pivot(index="seq_len", columns="solution", values="used_ms")
    ran = [c for c in wide.columns if wide[c].notna().any()]
    md = ["| seq_len | floor ms | " + " | ".join(f"{c} ms (of floor)" for c in ran) + " | winner |",
          "|---:|---:|" + "---:|" * len(ran) + "---|"]
    for t, row in wide[ran].iterrows():
        f = df[df.seq_len == t]["floor_ms"].iloc[0]
        cells = []
        for c in ran:
            v = row[c]
            star = "*" if c == "deepgemm" and bool(df[(df.seq_len == t) & (df.solution == c)]["suspect"].iloc[0]) else ""
            cells.append("-" if pd.isna(v) else f"{v:.4f}{star} ({f / v:.0%})")
        md.append(f"| {t} | {f:.4f} | " + " | ".join(cells) + f" | {row.idxmin()} |")
    totals = df.groupby(["bucket", "solution"])["used_ms"].sum().unstack()[ran]
    md += ["", "Per token bucket, sum of latencies (ms) over the bucket's workloads; hybrid = the best per bucket:", "",
           "| bucket | " + " | ".join(ran) + " | hybrid picks | hybrid ms |", "|---|" + "---:|" * len(ran) + "---|---:|"]
    hybrid = 0.0
    for name in [b[2] for b in BUCKETS]:
        if name not in totals.index:
            continue
        r = totals.loc[name]
        hybrid += r.min()
        md.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in r) + f" | {r.idxmin()} | {r.min():.3f} |")
    md.append("| all | " + " | ".join(f"{v:.3f}" for v in totals.sum()) + f" | hybrid | {hybrid:.3f} |")
    unsupported = df[df.status == "UNSUPPORTED"].drop_duplicates("solution")
    md += [""] + [f"- {r.solution}: UNSUPPORTED here: {r.reason}" for r in unsupported.itertuples()]
    (report / "table.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
