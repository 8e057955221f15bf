"""Fill DeepGEMM's JIT cache for the deepgemm solution before a `fib run`, compiling in parallel.

DeepGEMM compiles one kernel per tile configuration at first use (nvcc, tens of seconds each), and
the configuration it picks depends only on the static shapes the solution passes: the static M
bound per token count (contiguous) or expected_m (masked), never on the routing. So one call per
token count of the dataset, on synthetic inputs of the definition's sizes, compiles every kernel the
run will use. The token counts are split over --procs processes (each its own CUDA context);
kernels land in $DG_JIT_CACHE_DIR, where the fib workers find them. This measures nothing.

    python3 benchmarks/deepgemm_jit_warm.py --definition DS [--procs 8]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIG = "moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048"


def token_counts(definition: str) -> list[int]:
    path = ROOT / "datasets" / "moe" / f"{definition}.jsonl"
    return sorted({json.loads(line)["axes"]["seq_len"] for line in path.read_text().splitlines() if line.strip()})


def load_solution():
    sys.path.insert(0, str(ROOT / "solutions" / BIG))
    spec = importlib.util.spec_from_file_location("deepgemm_peer", ROOT / "solutions" / BIG / "deepgemm" / "moe_deepgemm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def definition_axes(definition: str) -> dict:
    return json.loads((ROOT / "definitions" / "moe" / f"{definition}.json").read_text())["axes"]


def kernel_groups(definition: str, counts: list[int]) -> list[list[int]]:
    """Token counts that use the same kernels together (masked: one expected_m; contiguous: one M)."""
    module = load_solution()
    experts = definition_axes(definition)["num_experts"]["value"]
    groups: dict = {}
    for T in counts:
        key = ("masked", module.expected_m(T, experts)) if T <= module.MASKED_MAX else ("contiguous", T)
        groups.setdefault(key, []).append(T)
    return list(groups.values())


def warm(definition: str, counts: list[int]) -> None:
    import torch
    module = load_solution()
    axes = definition_axes(definition)
    E, L, H, I = (axes[k]["value"] for k in ("num_experts", "num_local_experts", "hidden_size", "intermediate_size"))
    dev, fp8 = "cuda", torch.float8_e4m3fn
    w13 = torch.randn(L, 2 * I, H, device=dev).to(fp8)
    w2 = torch.randn(L, H, I, device=dev).to(fp8)
    s13 = torch.full((L, 2 * I // 128, H // 128), 1e-3, device=dev)
    s2 = torch.full((L, H // 128, I // 128), 1e-3, device=dev)
    for T in counts:
        t0 = time.time()
        out = torch.empty(T, H, dtype=torch.bfloat16, device=dev)
        module.run(torch.randn(T, E, device=dev), torch.zeros(E, dtype=torch.bfloat16, device=dev),
                   torch.randn(T, H, device=dev).to(fp8), torch.full((H // 128, T), 1e-2, device=dev),
                   w13, s13, w2, s2, 0, 2.5, out)
        torch.cuda.synchronize()
        print(f"T={T}: {time.time() - t0:.1f}s", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--definition", default=BIG)
    parser.add_argument("--procs", type=int, default=8)
    parser.add_argument("--counts", default="", help="internal: the token counts of one process")
    args = parser.parse_args()
    if args.counts:
        warm(args.definition, [int(x) for x in args.counts.split(",")])
        return 0
    counts = token_counts(args.definition)
    by_kernel = kernel_groups(args.definition, counts)
    groups = [sum(by_kernel[i::args.procs], []) for i in range(min(args.procs, len(by_kernel)))]
    t0 = time.time()
    procs = [subprocess.Popen([sys.executable, __file__, "--definition", args.definition,
                               "--counts", ",".join(map(str, g))]) for g in groups]
    codes = [p.wait() for p in procs]
    print(f"deepgemm JIT warm-up: {len(counts)} token counts in {len(groups)} processes, {time.time() - t0:.0f}s, "
          f"exit codes {codes}", flush=True)
    return max(codes)


if __name__ == "__main__":
    sys.exit(main())
