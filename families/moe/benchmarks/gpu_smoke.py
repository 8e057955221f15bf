#!/usr/bin/env python3
"""Full-size smoke run of the MoE definitions on a GPU: generator and reference time, output
magnitude, expert load, and fib's check of the torch_eager solutions against the reference.

    .venv/bin/python families/moe/benchmarks/gpu_smoke.py [--tokens N ...]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

from fib.harness.check import check_outputs  # noqa: E402
from fib.schema import Definition  # noqa: E402

SCALARS = {"local_expert_offset": 96, "routed_scaling_factor": 2.5}


def exec_source(source: str) -> dict:
    namespace: dict = {}
    exec(compile(source, "<definition source>", "exec"), namespace)  # noqa: S102 - our own source
    return namespace


def timed(fn):
    torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    torch.cuda.synchronize()
    return result, time.perf_counter() - start


def smoke(path: Path, tokens: int) -> dict:
    definition = json.loads(path.read_text())
    axes = {n: a["value"] for n, a in definition["axes"].items() if a["type"] == "const"}
    axes["seq_len"] = tokens
    generate = exec_source(definition["generator"])["generate"]
    made, gen_s = timed(lambda: generate(axes, {}, torch.Generator().manual_seed(0), "cuda"))
    scalars = dict(SCALARS, local_expert_offset=min(SCALARS["local_expert_offset"],
                                                     axes.get("num_experts", 0) - axes.get("num_local_experts", 0)))
    args = [made[n] if n in made else scalars[n] for n in definition["inputs"]]
    reference = exec_source(definition["reference"])
    out, ref_s = timed(lambda: reference["run"](*args))
    row = {"definition": definition["name"], "tokens": tokens, "generate_s": round(gen_s, 3),
           "reference_s": round(ref_s, 3), "out_abs_mean": round(float(out.abs().mean()), 4),
           "out_abs_max": round(float(out.abs().max()), 3),
           "zero_rows": int((out.abs().sum(1) == 0).sum())}
    if "routing_bias" in made:
        ids, _ = reference["route_deepseek"](made["routing_logits"], made["routing_bias"], 2.5)
    else:
        ids, _ = reference["route_softmax"](made["routing_logits"])
    load = torch.bincount(ids.flatten(), minlength=axes["num_experts"]).double()
    row["top_expert_share_x_uniform"] = round(float(load.max() / load.mean()), 2)
    solution = REPO / "solutions" / definition["name"] / "torch_eager" / "moe.py"
    if solution.is_file():
        spec = importlib.util.spec_from_file_location("_eager", solution)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        output = torch.full(out.shape, float("nan"), dtype=torch.bfloat16, device="cuda")
        module.run(*args, output)  # warm-up
        _, sol_s = timed(lambda: module.run(*args, output))
        # fib's own check at the definition's tolerance
        defn = Definition.model_validate(definition)
        result = check_outputs(defn, defn.resolve_axes({"seq_len": tokens}), [output], [out], defn.tolerance)
        c = result.correctness
        row.update(eager_s=round(sol_s, 4), eager_status=result.status.value,
                   eager_matched=round(c.matched_ratio, 5), eager_rel_l2=round(c.relative_l2_error, 5),
                   eager_max_abs_err=round(c.max_absolute_error, 4))
    del made, args, out
    torch.cuda.empty_cache()
    return row


def same_on_cpu_and_cuda(path: Path, tokens: int = 33) -> bool:
    """The generator gives bit-identical tensors on both devices (scaled-down sizes)."""
    definition = json.loads(path.read_text())
    axes = {n: a["value"] for n, a in definition["axes"].items() if a["type"] == "const"}
    axes.update(seq_len=tokens, hidden_size=256, intermediate_size=128, gemm1_out_size=256)
    axes["num_experts"] = min(axes["num_experts"], 16)
    axes["num_local_experts"] = min(axes.get("num_local_experts", 8), 8)
    generate = exec_source(definition["generator"])["generate"]
    made = [generate(axes, {}, torch.Generator().manual_seed(1), device) for device in ("cpu", "cuda")]
    bits = [{k: (v.view(torch.uint8) if v.dtype == torch.float8_e4m3fn else v).cpu() for k, v in m.items()}
            for m in made]
    return all(torch.equal(bits[0][k], bits[1][k]) for k in bits[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="*", default=[1, 901, 14107])
    args = parser.parse_args()
    for path in sorted((REPO / "definitions" / "moe").glob("*.json")):
        print(json.dumps({"definition": path.stem, "cpu_cuda_bit_identical": same_on_cpu_and_cuda(path)}))
        for tokens in args.tokens:
            print(json.dumps(smoke(path, tokens)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
