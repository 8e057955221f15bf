"""Where a `fib run`'s wall time went, from its run directory's timeline.jsonl and traces.

    python benchmarks/harness_timeline.py RUN_DIR [RUN_DIR ...] [--markdown OUT.md]

Columns (seconds): cli = process start to the runner's start (Python, fib's imports, devices, dataset,
run directory, build hooks); worker_start / judge_start = spawn to ready (imports, their own set-up);
to_first_trace = runner start to the first trace; then the sums over traces of the worker's phases
(build, inputs, first_call, check, timing, fresh_check) and of the timed calls themselves
(median x samples); end = last trace to the runner's end (children stopping); wall = process start
to the runner's end.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd


def breakdown(run_dir: Path) -> dict:
    events = [json.loads(line) for line in (run_dir / "timeline.jsonl").read_text().splitlines() if line.strip()]
    head, rest = events[0], events[1:]

    def first(name, **match):
        return next((e["t"] for e in rest if e["event"] == name and all(e.get(k) == v for k, v in match.items())), None)
    traces = [e["t"] for e in rest if e["event"] == "trace"]
    end = first("run_end")
    out = {"run": run_dir.name, "cli": -head.get("process_start", head.get("cli_imported", 0.0)),
           "worker_start": (first("worker_ready") or 0) - (first("worker_start") or 0),
           "judge_start": (first("judge_ready") or 0) - (first("judge_start") or 0),
           "to_first_trace": traces[0] if traces else None}
    phases = {k: 0.0 for k in ("build", "inputs", "first_call", "check", "timing", "fresh_check")}
    timed = 0.0
    first_timing = None
    for line in (run_dir / "traces.jsonl").read_text().splitlines():
        ev = json.loads(line)["evaluation"]
        for k, v in (ev.get("phases_s") or {}).items():
            if k in phases:
                phases[k] += v
        if first_timing is None and (ev.get("phases_s") or {}).get("timing") is not None:
            first_timing = ev["phases_s"]["timing"]
        timing = (ev.get("performance") or {}).get("timing")
        if timing:
            timed += sum(timing["samples_ms"]) / 1e3
    out.update(phases)
    out["first_workload_timing"] = first_timing
    out["timed_calls"] = timed
    out["end"] = (end - traces[-1]) if traces and end is not None else None
    out["wall"] = out["cli"] + (end or 0.0)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dirs", nargs="+", type=Path)
    p.add_argument("--markdown", type=Path)
    args = p.parse_args()
    rows = [breakdown(r) for r in args.run_dirs]
    if len({r["run"] for r in rows}) < len(rows):  # same folder names: label by the path below the common part
        import os
        common = Path(os.path.commonpath([str(r.resolve()) for r in args.run_dirs]))
        for row, r in zip(rows, args.run_dirs):
            row["run"] = str(r.resolve().relative_to(common))
    table = pd.DataFrame(rows).set_index("run")
    text = table.to_markdown(floatfmt=".2f")
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
