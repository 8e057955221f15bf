"""Where each MoE solution stands against the GPU's floor, per workload, with ceilings measured now.

    python families/moe/benchmarks/roofline.py RUN_DIR [--output reports/moe_roofline] [--device cuda:0]

`fib report floor` with the ceilings measured on this GPU, written in the columns the MoE reports
read (peers_table.py, report_tables.py, `fib report ncu --floor`). The floor's work is the MoE
family's count (families/moe/family.py: the weights of the local experts the routing hits, read
once; activations, scales and logits read once; the output written once; 2 x (gemm1_out x hidden +
hidden x intermediate) FLOPs per routed pair). Traces of a run made before fib recorded floors get
theirs here, from each trace's seed on --device (fib.report.floor.recompute; kept in
RUN_DIR/floor.jsonl). Ceilings: `fib.timing.ceilings.measure_ceilings` (a 1 GiB device-to-device
copy counting read + write bytes, 8192^3 FP8 and bf16 matmuls). floor = max(bytes / copy
bandwidth, FLOPs / matmul rate); "of floor" is floor / measured latency (1.0 = at the floor).
Writes roofline.csv, roofline.md and ceilings.json into --output.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from fib.report.floor import floor_table, kept_floors, passed_traces, recompute  # noqa: E402
from fib.timing.ceilings import measure_ceilings  # noqa: E402

COLUMNS = ["solution", "seq_len", "workload", "experts_hit", "routed_pairs", "bytes_mb", "gflop", "bound", "floor_ms",
           "latency_ms", "achieved_gbps", "achieved_tflops", "of_floor", "definition"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--output", type=Path, default=Path("reports/moe_roofline"))
    parser.add_argument("--device", default="cuda:0")
    args = parser.parse_args()
    recompute(args.run_dir, device=args.device)
    ceilings = measure_ceilings(args.device)
    run_info = json.loads((args.run_dir / "run.json").read_text())
    table, notes = floor_table(passed_traces(args.run_dir), run_info, ceilings=ceilings, kept=kept_floors(args.run_dir))
    table = table.rename(columns={"tokens": "seq_len"})[COLUMNS].sort_values(["definition", "seq_len", "solution"])
    args.output.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.output / "roofline.csv", index=False)
    (args.output / "ceilings.json").write_text(json.dumps(ceilings, indent=2))
    env = run_info.get("environment", {})
    rates = ", ".join(f"{dtype} matmul {rate:.0f} TFLOP/s" for dtype, rate in ceilings["matmul_tflops_by_dtype"].items())
    header = (f"# MoE against the floor\n\nrun: `{args.run_dir}` (commit {run_info.get('git', {}).get('commit')}),"
              f" GPU {env.get('gpu', {}) and env['gpu'].get('name')}, driver {env.get('gpu', {}) and env['gpu'].get('driver')},"
              f" torch {env.get('libs', {}).get('torch')}, triton {env.get('libs', {}).get('triton')}\n\n"
              f"ceilings measured here: copy {ceilings['copy_gbps']:.0f} GB/s (read+write), {rates}\n\n")
    footer = "".join(f"\n- {note}" for note in notes)
    (args.output / "roofline.md").write_text(header + table.to_markdown(index=False, floatfmt=".3f") + "\n" + footer)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
