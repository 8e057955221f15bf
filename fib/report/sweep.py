"""The ranking a sweep prints (`fib run --sweep SOLUTION`): per workload, the swept solution's
configurations by latency, the best marked; written into the run directory as sweep.csv and sweep.md."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

COLUMNS = ["definition", "solution", "workload", "axes", "rank", "config", "best", "latency_ms", "vs_best",
           "status", "note"]


def _axes(workload) -> str:
    return ", ".join(f"{k}={v}" for k, v in workload.axes.items())


def sweep_table(traces, variants: dict, swept: list[str], same: dict | None = None) -> pd.DataFrame:
    """One row per (workload, configuration) of each swept solution: rank 1 is the fastest PASSED
    one (`best` True); `vs_best` is its latency over the best's. `same` holds, per (definition,
    solution), {workload: {name: the name whose configuration it repeats}}: those were not run and
    are listed with the other's numbers and a note."""
    rows, order = [], {}
    for trace in traces:
        variant = variants.get(trace.solution)
        if variant is None or variant.solution not in swept or trace.evaluation is None:
            continue
        ev = trace.evaluation
        passed = ev.status.value == "PASSED" and ev.performance is not None
        order.setdefault((trace.definition, variant.solution, trace.workload.uuid), len(order))
        rows.append(dict(definition=trace.definition, solution=variant.solution, workload=trace.workload.uuid,
                         axes=_axes(trace.workload), config=variant.config,
                         latency_ms=ev.performance.latency_ms if passed else None, status=ev.status.value,
                         note="" if passed else (ev.reason or "")[:160]))
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    df = pd.DataFrame(rows)
    df["order"] = [order[(d, s, w)] for d, s, w in zip(df["definition"], df["solution"], df["workload"])]
    df["rank"] = df.groupby("order")["latency_ms"].rank(method="min")
    df["vs_best"] = df["latency_ms"] / df.groupby("order")["latency_ms"].transform("min")
    df["best"] = df["rank"] == 1
    twins = {(r.definition, r.solution, r.workload, r.config): r._asdict() for r in df.itertuples(index=False)}
    aliases = []
    for (definition, solution), per_workload in (same or {}).items():
        for workload, names in per_workload.items():
            for name, other in names.items():
                twin = twins.get((definition, solution, workload, other))
                if twin is not None:
                    aliases.append({**twin, "config": name, "best": False,
                                    "note": f"same configuration as {other} (not run again)"})
    if aliases:
        df = pd.concat([df, pd.DataFrame(aliases)], ignore_index=True)
    df = df.sort_values(["order", "rank", "best", "config"], ascending=[True, True, False, True],
                        na_position="last", kind="stable")
    df["rank"] = df["rank"].astype("Int64")
    return df[COLUMNS].reset_index(drop=True)


def markdown(df: pd.DataFrame) -> str:
    """The table as GitHub markdown, one block of rows per workload, the best in bold."""
    lines = ["| workload | axes | rank | config | latency ms | x best | status |", "|---|---|---:|---|---:|---:|---|"]
    for _, r in df.iterrows():
        name = f"**{r['config']}** (best)" if r["best"] else r["config"]
        latency = f"{r['latency_ms']:.4f}" if pd.notna(r["latency_ms"]) else "-"
        ratio = f"{r['vs_best']:.3f}" if pd.notna(r["vs_best"]) else "-"
        status = r["status"] + (f": {r['note']}" if r["note"] else "")
        rank = "" if pd.isna(r["rank"]) else str(r["rank"])
        lines.append(f"| {r['workload']} | {r['axes']} | {rank} | {name} | {latency} | {ratio} | {status} |")
    return "\n".join(lines) + "\n"


def write_sweep(run_dir: Path, df: pd.DataFrame) -> list[Path]:
    csv, md = Path(run_dir) / "sweep.csv", Path(run_dir) / "sweep.md"
    df.to_csv(csv, index=False)
    md.write_text("# Sweep: configurations ranked by latency per workload\n\n" + markdown(df))
    return [csv, md]
