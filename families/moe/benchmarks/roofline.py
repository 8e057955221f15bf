"""Where each DeepSeek MoE solution stands against the GPU's floor, per workload.

    python families/moe/benchmarks/roofline.py RUN_DIR [--output reports/moe_roofline] [--device cuda:0]

Reads a `fib run` directory of the DeepSeek FP8 MoE definition, rebuilds each workload's inputs from
the seed recorded in its traces (on the GPU), routes them with the definition's own reference
routing, and counts what the layer must do at least:

- bytes: the weights (FP8 + block scales) of the local experts that at least one token chose,
  read once; the activations, their scales and the routing logits read once; the output written once;
- FLOPs: 2 x (7168 x 4096 + 2048 x 7168) per routed (token, local expert) pair.

Ceilings are measured on the same GPU (`fib.timing.measure_ceilings`: a 1 GiB device-to-device copy
counting read + write bytes, and an 8192^3 FP8 matmul). The floor is max(bytes / copy bandwidth,
FLOPs / matmul rate); "of floor" is floor / measured latency (1.0 = at the floor). Writes
roofline.csv, roofline.md and ceilings.json into --output.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from fib.dataset import load_dataset  # noqa: E402
from fib.harness.inputs import definition_function, make_inputs  # noqa: E402
from fib.schema import Trace  # noqa: E402
from fib.schema.io import load_jsonl  # noqa: E402
from fib.timing.ceilings import measure_ceilings  # noqa: E402


def work_of(inputs: dict, definition) -> dict:
    """Bytes and FLOPs the workload needs at least, from its actual routing."""
    route = definition_function(definition, "run").__globals__["route_deepseek"]
    ids, _ = route(inputs["routing_logits"], inputs["routing_bias"], inputs["routed_scaling_factor"])
    w1, w2 = inputs["gemm1_weights"], inputs["gemm2_weights"]
    local, n_out, hidden = w1.shape
    inter = w2.shape[2]
    offset = int(inputs["local_expert_offset"])
    local_ids = ids[(ids >= offset) & (ids < offset + local)] - offset
    hit = torch.unique(local_ids).numel()
    pairs = local_ids.numel()
    per_expert = (w1[0].numel() + w2[0].numel()
                  + 4 * (inputs["gemm1_weights_scale"][0].numel() + inputs["gemm2_weights_scale"][0].numel()))
    tokens = inputs["hidden_states"].shape[0]
    activations = (inputs["hidden_states"].numel() + 4 * inputs["hidden_states_scale"].numel()
                   + 4 * inputs["routing_logits"].numel() + 2 * inputs["routing_bias"].numel())
    output = tokens * hidden * 2
    return {"tokens": tokens, "experts_hit": hit, "routed_pairs": pairs,
            "bytes": hit * per_expert + activations + output,
            "flops": 2 * pairs * (n_out * hidden + hidden * inter)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--output", type=Path, default=Path("reports/moe_roofline"))
    parser.add_argument("--device", default="cuda:0")
    args = parser.parse_args()
    traces = [Trace.model_validate(obj) for _, obj in load_jsonl(args.run_dir / "traces.jsonl")]
    passed = [t for t in traces if t.evaluation and t.evaluation.status.value == "PASSED"]
    data = load_dataset()
    ceilings = measure_ceilings(args.device)
    rows, work_cache = [], {}
    for t in passed:
        definition = data.definitions[t.definition]
        key = (t.workload.uuid, t.evaluation.seed)
        if key not in work_cache:
            inputs = make_inputs(definition, t.workload, seed=t.evaluation.seed, device=args.device,
                                 root=data.root_for(t.definition))
            work_cache[key] = work_of(inputs, definition)
            del inputs
        work = work_cache[key]
        memory_s = work["bytes"] / (ceilings["copy_gbps"] * 1e9)
        compute_s = work["flops"] / (ceilings["matmul_tflops"] * 1e12)
        floor_ms = 1e3 * max(memory_s, compute_s)
        latency = t.evaluation.performance.latency_ms
        rows.append({"solution": t.solution, "seq_len": work["tokens"], "workload": t.workload.uuid,
                     "experts_hit": work["experts_hit"], "routed_pairs": work["routed_pairs"],
                     "bytes_mb": work["bytes"] / 1e6, "gflop": work["flops"] / 1e9,
                     "bound": "memory" if memory_s >= compute_s else "compute", "floor_ms": floor_ms,
                     "latency_ms": latency, "achieved_gbps": work["bytes"] / latency / 1e6,
                     "achieved_tflops": work["flops"] / latency / 1e9, "of_floor": floor_ms / latency})
    table = pd.DataFrame(rows).sort_values(["seq_len", "solution"])
    args.output.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.output / "roofline.csv", index=False)
    (args.output / "ceilings.json").write_text(json.dumps(ceilings, indent=2))
    run_info = json.loads((args.run_dir / "run.json").read_text())
    env = run_info.get("environment", {})
    header = (f"# DeepSeek MoE against the floor\n\nrun: `{args.run_dir}` (commit {run_info.get('git', {}).get('commit')}),"
              f" GPU {env.get('gpu', {}) and env['gpu'].get('name')}, driver {env.get('gpu', {}) and env['gpu'].get('driver')},"
              f" torch {env.get('libs', {}).get('torch')}, triton {env.get('libs', {}).get('triton')}\n\n"
              f"ceilings measured here: copy {ceilings['copy_gbps']:.0f} GB/s (read+write), "
              f"{ceilings['matmul_dtype']} matmul {ceilings['matmul_tflops']:.0f} TFLOP/s\n\n")
    (args.output / "roofline.md").write_text(header + table.to_markdown(index=False, floatfmt=".3f") + "\n")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
