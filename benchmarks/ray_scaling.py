"""The Ray executor's cost and scaling on a CPU: one definition's pairs through the local executor
(one CPU device) and through `--cluster ray` with 1, 2 and 4 actors on a local Ray instance whose
"GPUs" are fake (`ray.init(num_gpus=N)`; the actors find no CUDA and run on the CPU).

Per configuration: wall time of the whole run (Ray's start-up excluded, reported apart), the
seconds the pairs' own phases took (the sum of each trace's `phases_s`: build, inputs, first
call, check, timing, fresh check), and the per-pair overhead

    (wall - phases / workers) / pairs

i.e. what a pair costs beyond its own work when the work is spread over the workers: process
starts (a worker and a judge per chunk on a node), reference computation, shipping, scheduling.
On a machine with fewer cores than workers the phases themselves slow down (they share the
cores), which the table shows as well.

    python benchmarks/ray_scaling.py --out reports/ray_scaling_cpu [--definition D] [--workers 1 2 4]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DEFAULT_DEFINITION = "moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e8_h512_i256"


def phases(traces) -> float:
    return sum(sum((t.evaluation.model_extra or {}).get("phases_s", {}).values()) for t in traces)


def run_once(executor, data, plan, run_dir: Path) -> dict:
    start = time.perf_counter()
    result = executor.run(data, plan, run_dir)
    wall = time.perf_counter() - start
    statuses: dict[str, int] = {}
    for t in result.traces:
        statuses[t.evaluation.status.value] = statuses.get(t.evaluation.status.value, 0) + 1
    return {"wall_s": round(wall, 3), "pairs": len(result.traces), "phases_s": round(phases(result.traces), 3),
            "statuses": statuses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--definition", default=DEFAULT_DEFINITION)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--iterations", type=int, default=5)
    args = parser.parse_args()
    import ray

    from fib.dataset import load_dataset
    from fib.env import collect_environment
    from fib.harness.executor import LocalExecutor
    from fib.harness.ray_executor import RayExecutor
    from fib.harness.runner import RunPlan
    from fib.schema.config import RunConfig

    out = args.out
    (out / "runs").mkdir(parents=True, exist_ok=True)
    os.environ["FIB_CACHE_DIR"] = str(out / "runs" / "cache")  # a cold reference cache for every configuration
    data = load_dataset([REPO])
    d = args.definition
    config = RunConfig(warmup_runs=1, iterations=args.iterations, num_trials=2, timer="wall")
    plan = RunPlan(config=config, definitions=[d], solutions={d: sorted(data.solutions[d])},
                   workloads={d: [w.uuid for w in data.workloads[d]]}, devices=["cpu"])
    rows = []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    local = run_once(LocalExecutor(), data, plan, out / "runs" / f"{stamp}-local")
    rows.append({"executor": "local", "workers": 1, **local})
    for n in args.workers:
        started = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), num_gpus=n, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(REPO),
                                           "FIB_RAY_NODE_DIR": str(out / "runs" / f"nodes-{n}")}})
        ray_start = time.perf_counter() - started
        os.environ["FIB_CACHE_DIR"] = str(out / "runs" / f"cache-{n}")
        measured = run_once(RayExecutor(), data, plan, out / "runs" / f"{stamp}-ray{n}")
        ray.shutdown()
        rows.append({"executor": "ray", "workers": n, "ray_start_s": round(ray_start, 3), **measured})
    for row in rows:
        row["overhead_per_pair_s"] = round((row["wall_s"] - row["phases_s"] / row["workers"]) / max(1, row["pairs"]), 3)
    env = collect_environment()
    info = {"definition": d, "solutions": plan.solutions[d], "workloads": len(plan.workloads[d]),
            "config": config.model_dump(mode="json"), "ray": ray.__version__, "cpu": env["cpu"],
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": env["libs"].get("torch"),
            "host": env["host"], "rows": rows}
    (out / "data.json").write_text(json.dumps(info, indent=2))
    lines = [f"| executor | workers | pairs | wall s | pair phases s | overhead / pair s | Ray start s | statuses |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['executor']} | {r['workers']} | {r['pairs']} | {r['wall_s']:.1f} | {r['phases_s']:.1f} | "
                     f"{r['overhead_per_pair_s']:.2f} | {r.get('ray_start_s', '-')} | "
                     f"{', '.join(f'{k} {v}' for k, v in sorted(r['statuses'].items()))} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
