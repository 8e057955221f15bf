"""Where the wall time of a `fib run` goes: reference, inputs, checking, timing, and the rest.

    python benchmarks/harness_overhead.py --output DIR [--definition D] [--solutions S ...] [fib run flags]

Runs the same `fib run` twice: cold (an empty reference cache) and warm (the cache the cold run
filled), and splits each run's wall time with what the worker records per trace:
`evaluation.workload_prepare_s` (inputs, reference, fresh-check inputs; once per workload) and
`evaluation.phases_s` (build, first call, check, timing, fresh check; per solution). "Timed calls"
is the solutions' own measured time (median x samples); "timing loop" is the rest of the timing
phase (warm-up, L2 flushes, the timer's own cost); "other" is what no phase covers (process start,
dataset loading, worker start, scheduling). Writes harness_overhead.csv / .md and both run
directories under --output.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

DS = "moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048"


def split(run_dir: Path, wall_s: float) -> dict:
    parts = {"inputs": 0.0, "reference": 0.0, "fresh_inputs_and_reference": 0.0, "build": 0.0, "first_call": 0.0,
             "check": 0.0, "timing_loop": 0.0, "timed_calls": 0.0, "fresh_check": 0.0}
    seen = set()
    computed = 0
    for line in (run_dir / "traces.jsonl").read_text().splitlines():
        ev = json.loads(line)["evaluation"]
        uuid = json.loads(line)["workload"]["uuid"]
        prep = ev.get("workload_prepare_s") or {}
        if uuid not in seen and prep:
            seen.add(uuid)
            computed += prep.get("reference_computed", 0)
            for k in ("inputs", "reference", "fresh_inputs_and_reference"):
                parts[k] += prep.get(k, 0.0)
        phases = ev.get("phases_s") or {}
        for k in ("build", "first_call", "check", "fresh_check"):
            parts[k] += phases.get(k, 0.0)
        timing = (ev.get("performance") or {}).get("timing")
        timed = sum(timing["samples_ms"]) / 1e3 if timing else 0.0
        parts["timed_calls"] += timed
        parts["timing_loop"] += max(0.0, phases.get("timing", 0.0) - timed)
    parts["other"] = max(0.0, wall_s - sum(parts.values()))
    return {"wall_s": wall_s, "references_computed": computed, **parts}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--definition", default=DS)
    p.add_argument("--solutions", nargs="+", default=["torch_eager", "triton_staged", "triton_fused"])
    args, passthrough = p.parse_known_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, FIB_CACHE_DIR=str(args.output / "cache"))
    rows = []
    for label in ("cold", "warm"):
        run_dir = args.output / f"run_{label}"
        cmd = [sys.executable, "-m", "fib", "run", "--definitions", args.definition, "--solutions", *args.solutions,
               "--output", str(run_dir), *passthrough]
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, text=True, capture_output=True)
        wall = time.perf_counter() - start
        (args.output / f"run_{label}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise SystemExit(f"{label} run failed ({proc.returncode}); see {args.output}/run_{label}.log")
        rows.append({"run": label, **split(run_dir, wall)})
    table = pd.DataFrame(rows).set_index("run")
    shares = table.drop(columns=["wall_s", "references_computed"]).div(table["wall_s"], axis=0) * 100
    table.to_csv(args.output / "harness_overhead.csv")
    md = ["# Harness overhead: where `fib run`'s wall time goes", "",
          f"`{' '.join(['fib run --definitions', args.definition, '--solutions', *args.solutions, *passthrough])}`", "",
          "## seconds", "", table.to_markdown(floatfmt=".2f"), "", "## % of wall time", "",
          shares.to_markdown(floatfmt=".1f"), ""]
    (args.output / "harness_overhead.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
