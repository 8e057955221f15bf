"""Synthetic pipelines for proving the profiler end to end without a dataset.

Two solutions of a toy MoE-like pipeline on random data. `demo_a` marks its stages with
fib.stage (routing, gemm1, activation, gemm2 nested inside an outer "experts" range, so the
innermost range must win) and launches its final reduction outside any stage (the definition's
regex sends `reduce` kernels to "finalize"). `demo_b` marks nothing but routing, so the rest
falls to the regexes or "other". Used by `fib profile --demo` and the GPU proof.
"""
from __future__ import annotations

from ..stages import harness_stage, stage

DEMO_DEFINITION = "demo_moe"
DEMO_STAGES = [
    {"name": "routing", "kernels": ["topk", "sort"]},
    {"name": "gemm1", "kernels": []},
    {"name": "activation", "kernels": ["silu", "mul"]},
    {"name": "gemm2", "kernels": ["gemm", "gemv", "cutlass", "sm90_xmma", "nvjet"]},
    {"name": "finalize", "kernels": ["reduce"]},
]
DEMO_TOKENS = (16, 256, 2048)


def demo_jobs(device: str):
    import torch

    from .job import Job
    gen = torch.Generator(device=device).manual_seed(0)
    hidden, inter, experts = 1024, 2048, 8
    w1 = torch.randn(hidden, 2 * inter, device=device, generator=gen, dtype=torch.bfloat16)
    w2 = torch.randn(inter, hidden, device=device, generator=gen, dtype=torch.bfloat16)
    gate = torch.randn(hidden, experts, device=device, generator=gen, dtype=torch.bfloat16)

    def demo_a(x):
        with stage("routing"):
            _, idx = torch.topk(x @ gate, 2, dim=-1)
        with stage("gemm1"):
            h = x @ w1
        with stage("activation"):
            a = torch.nn.functional.silu(h[:, :inter]) * h[:, inter:]
        with stage("experts"), stage("gemm2"):
            y = a @ w2
        return y.float().sum(dim=0) + idx.sum()  # outside every stage: regex "reduce" -> finalize

    def demo_b(x):
        with stage("routing"):
            torch.topk(x @ gate, 2, dim=-1)
        h = (x @ w1).float()
        a = torch.nn.functional.silu(h[:, :inter]) * h[:, inter:]
        return (a.to(torch.bfloat16) @ w2).float().sum(dim=0)

    jobs = []
    for tokens in DEMO_TOKENS:
        x = torch.randn(tokens, hidden, device=device, generator=gen, dtype=torch.bfloat16)
        uuid = f"demo-{tokens:05d}"
        for name, fn in (("demo_a", demo_a), ("demo_b", demo_b)):
            jobs.append(Job(name, uuid, (lambda f=fn, t=x: f(t)), {"seq_len": tokens}, DEMO_DEFINITION))
    # fib's own work inside the capture must stay out of the pipelines
    ref_x = torch.randn(64, hidden, device=device, generator=gen)

    def harness_call():
        with harness_stage("reference"):
            (ref_x @ w1.float()).relu_()

    jobs.append(Job("harness", "none", harness_call, {}, DEMO_DEFINITION, in_call=False))
    return jobs, [], {DEMO_DEFINITION: DEMO_STAGES}
