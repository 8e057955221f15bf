"""Kernel time against the time a caller waits, per (solution, workload), from run directories timed
with the cupti timer (kernel sum; and, where the GPU idles most of the call, the back-to-back time by
CUDA events it then adds) and with `--timer cuda_event` (the call from its start event to its end
event, calls issued back to back, no profiler).

    python benchmarks/latency_vs_kernels.py CUPTI_RUN EVENT_RUN [CUPTI_RUN EVENT_RUN ...] [--markdown FILE]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd


def rows(run_dir: Path, timer: str) -> list[dict]:
    out = []
    for line in (run_dir / "traces.jsonl").read_text().splitlines():
        t = json.loads(line)
        ev = t["evaluation"]
        perf = ev.get("performance") or {}
        timing = perf.get("timing") or {}
        out.append({"definition": t["definition"], "solution": t["solution"],
                    "tokens": next(iter(t["workload"]["axes"].values())), "status": ev["status"],
                    f"{timer}_ms": perf.get("latency_ms"), f"{timer}_timer": timing.get("timer"),
                    "span_ms": timing.get("span_median_ms") if timer == "kernel" else None,
                    "back_to_back_ms": timing.get("event_median_ms") if timer == "kernel" else None})
    return out


def table(pairs: list[tuple[Path, Path]]) -> pd.DataFrame:
    frames = []
    for cupti_dir, event_dir in pairs:
        a = pd.DataFrame(rows(cupti_dir, "kernel"))
        b = pd.DataFrame(rows(event_dir, "event"))[["definition", "solution", "tokens", "event_ms", "event_timer"]]
        frames.append(a.merge(b, on=["definition", "solution", "tokens"], how="outer"))
    df = pd.concat(frames, ignore_index=True)
    df["event_over_kernel"] = df["event_ms"] / df["kernel_ms"]
    return df.sort_values(["definition", "tokens", "solution"], ignore_index=True)


def markdown(df: pd.DataFrame) -> str:
    out = []
    for definition, group in df.groupby("definition", sort=True):
        out.append(f"## {definition}\n")
        out.append("| tokens | solution | kernel sum ms (cupti) | device span ms (cupti) | back to back ms (cupti run) "
                   "| cuda_event ms | cuda_event / kernel sum |")
        out.append("|---:|---|---:|---:|---:|---:|---:|")
        for r in group.itertuples():
            def f(v, spec=".4f"):
                return "-" if v is None or pd.isna(v) else format(v, spec)
            out.append(f"| {r.tokens} | {r.solution} | {f(r.kernel_ms)} | {f(r.span_ms)} | {f(r.back_to_back_ms)} "
                       f"| {f(r.event_ms)} | {f(r.event_over_kernel, '.2f')}x |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args(argv)
    if len(args.runs) % 2:
        ap.error("give run directories in pairs: CUPTI_RUN EVENT_RUN")
    text = markdown(table(list(zip(args.runs[::2], args.runs[1::2]))))
    if args.markdown:
        args.markdown.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
