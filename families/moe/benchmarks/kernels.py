#!/usr/bin/env python3
"""Correctness + timing of the DeepSeek-V3 FP8 MoE solutions (torch_eager, triton_staged,
triton_fused) at the dataset's token counts, on one GPU. Inputs are those `fib run`
builds for each dataset workload (same seed, same routing; --seed-by-t: the generator seeded with
T, as in the v1-v4 tables), the reference is the definition's own FP32 reference.

    source .device/activate.sh && python3 families/moe/benchmarks/kernels.py [--tokens 1 80 ...] [--sweep]

Timing: `ev` = CUDA events around one call after an L2 flush (median of repeats, includes the
Python launch cost); `graph` = the call captured in a CUDA graph together with an L2 flush,
replayed, minus the flush alone (device time without launch gaps). Full results go to
$OUT/moe_kernels.json; a compact table is printed last.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))
DEF = "moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048"
SOLUTIONS = ["torch_eager", "triton_staged", "triton_fused"]


def exec_source(source):
    ns = {}
    exec(compile(source, "<definition>", "exec"), ns)  # noqa: S102 - our own definition
    return ns


def load(name):
    folder = REPO / "solutions" / DEF / name
    spec = importlib.util.spec_from_file_location(f"bench_{name}", folder / "moe.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def workloads():
    rows = []
    for line in (REPO / "datasets" / "moe" / f"{DEF}.jsonl").read_text().splitlines():
        w = json.loads(line)
        rows.append((w["axes"]["seq_len"], w["inputs"]["local_expert_offset"]["value"]))
    return rows


_FLUSH = None


def flush():
    global _FLUSH
    if _FLUSH is None:
        _FLUSH = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")
    _FLUSH.zero_()


def time_events(fn, reps):
    times = []
    for _ in range(reps):
        flush()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def time_graph(fn, reps=10, inner=10):
    """Median per-call device time of fn inside a CUDA graph, L2 flushed before each call."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
        flush()
    torch.cuda.current_stream().wait_stream(s)
    g_fn, g_flush = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
    with torch.cuda.graph(g_fn):
        for _ in range(inner):
            flush()
            fn()
    with torch.cuda.graph(g_flush):
        for _ in range(inner):
            flush()

    def replay(g):
        out = []
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            g.replay()
            b.record()
            b.synchronize()
            out.append(a.elapsed_time(b) / inner)
        return statistics.median(out)
    replay(g_fn)
    return max(replay(g_fn) - replay(g_flush), 0.0)


def ceilings():
    x = torch.empty(2**30, dtype=torch.int8, device="cuda")
    y = torch.empty_like(x)
    y.copy_(x)
    ms = time_events(lambda: y.copy_(x), 10)
    bw = 2 * x.numel() / ms / 1e9  # TB/s (read + write)
    del x, y
    n = 8192
    a = torch.randn(n, n, device="cuda").to(torch.float8_e4m3fn)
    b = torch.randn(n, n, device="cuda").to(torch.float8_e4m3fn).t()
    one = torch.ones((), device="cuda")
    try:
        f = lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
        f()
        tflops = 2 * n**3 / time_events(f, 10) / 1e9
    except Exception as exc:  # noqa: BLE001
        print("scaled_mm unavailable:", exc)
        tflops = float("nan")
    return bw, tflops


def floor_numbers(ids, offset, T, H, I, n_local, bw, tflops):
    local = ids.long() - offset
    mask = (local >= 0) & (local < n_local)
    hit = int(torch.unique(local[mask]).numel())
    entries = int(mask.sum())
    w_bytes = hit * (2 * I * H + H * I + 4 * (2 * I // 128) * (H // 128) + 4 * (H // 128) * (I // 128))
    act_bytes = T * H + 4 * T * (H // 128) + T * 256 * 4 + T * H * 2
    flops = entries * 2 * (H * 2 * I + I * H)
    mem_ms = (w_bytes + act_bytes) / bw / 1e9
    cmp_ms = flops / tflops / 1e9
    return dict(hit=hit, entries=entries, bytes=w_bytes + act_bytes, flops=flops,
                floor_mem_ms=mem_ms, floor_cmp_ms=cmp_ms, floor_ms=max(mem_ms, cmp_ms))


def errors(out, ref, definition):
    """fib's own verdict on one output (fib.harness.check.check_outputs at the definition's tolerance,
    the contest preset also checked) and its error statistics."""
    from fib.harness.check import check_outputs
    from fib.schema import Status
    axes = definition.resolve_axes({"seq_len": out.shape[0]})
    result = check_outputs(definition, axes, [out], [ref.float()], definition.tolerance,
                           [definition.tolerance_preset("contest")])
    c = result.correctness
    if c is None:  # wrong shape or dtype
        return dict(passed=False, reason=result.reason)
    return dict(max_abs=c.max_absolute_error, rel_l2=c.relative_l2_error, cosine=c.cosine_similarity,
                matched=c.matched_ratio, finite=bool(torch.isfinite(out.float()).all()),
                passed=result.status == Status.PASSED, passed_contest=c.extra["also_checked"][0]["passed"],
                reason=result.reason)


def kernel_times(fn, calls=20):
    """{kernel name: mean device us per call} over `calls` calls (torch.profiler, no flush)."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    out = {}
    for ev in prof.key_averages():
        dev_us = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
        if dev_us and ev.count >= calls:
            out[ev.key[:60]] = round(dev_us / calls, 2)
    return out


def sweep_configs(T):
    """triton_fused tile configurations tried by --sweep (v4: BN1=64 with QB-deep gemm2 steps)."""
    def cfg(bm, bn1, bn2, warps, st1, st2):
        return dict(BM=bm, BN1=bn1, BN2=bn2, warps=warps, stages1=st1, stages2=st2, quant=True)
    if T > 1024:
        return [cfg(128, 128, 128, 8, 4, 5), cfg(128, 128, 128, 8, 3, 4), cfg(64, 128, 128, 4, 4, 5)]
    def rq(c):  # v6: bf16 C from gemm1, 1x128 re-quantization inside gemm2
        return dict(c, quant=False, requant2=True)
    if T <= 8:  # v5: gemm1 and gemm2 split along K when only a few experts are hit
        def sk(split, split2, act="gemm1", bn2=64, st1=4, st2=4):
            # v7: act = where SwiGLU runs ("gemm1": its last program per tile pair, bf16 C
            # re-quantized in gemm2; None: its own kernel, fp8 C)
            return dict(cfg(16, 64, bn2, 4, st1, st2), split=split, split2=split2, act=act)
        # v7 sweep: also sk(2, 2) (BN2 64), stages1 5/6, stages2 5, act in gemm2 (see NOTES)
        one, seven = sk(2, 2, None, st2=3), sk(2, 2, bn2=128)
        off = {"globals": {"ROUTE_ONE_TILE_MAX": 0}}
        return [one, seven, dict(one, **off), dict(seven, **off), sk(2, 2, None)]
    if T > 128:
        return [cfg(32, 64, 128, 4, 4, 4), rq(cfg(32, 64, 128, 4, 4, 4)), rq(cfg(32, 64, 64, 4, 4, 4))]
    if T <= 16:  # v7b: 9..16 tokens: single-program routing (<= SINGLE_ROUTE_MAX) or three kernels
        base = rq(cfg(16, 64, 128, 4, 4, 4))  # (v7b also: stages 3/5, BN1 32: no gain, see NOTES)
        return [base, dict(base, globals={"SINGLE_ROUTE_MAX": 8}),
                dict(base, globals={"SINGLE_ROUTE_MAX": 8, "ROUTE_TILE_SMALL": 2}),
                dict(base, globals={"SINGLE_ROUTE_MAX": 8, "ROUTE_TILE_SMALL": 8})]
    return [cfg(16, 64, 64, 4, 4, 4), rq(cfg(16, 64, 64, 4, 4, 4)), rq(cfg(16, 64, 128, 4, 4, 4)),
            rq(cfg(16, 32, 64, 4, 4, 4))]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, nargs="*")
    parser.add_argument("--sweep", type=int, nargs="*", default=[],
                        help="also time triton_fused tile configs at these T")
    parser.add_argument("--profile", type=int, nargs="*", default=[], help="kernel table at these T")
    parser.add_argument("--seed-by-t", action="store_true",
                        help="seed the generator with T (v1-v4 tables) instead of fib run's workload seed")
    args = parser.parse_args()
    from fib import dataset as fib_dataset
    from fib.harness import inputs as fib_inputs_mod
    from fib.timing import measure as fib_timing
    data = fib_dataset.load_dataset([REPO])
    fib_def = data.definitions[DEF]
    by_t = {w.axes["seq_len"]: w for w in data.workloads[DEF]}

    def fib_inputs(T):
        w = by_t[T]
        return fib_inputs_mod.make_inputs(fib_def, w, seed=fib_inputs_mod.workload_seed(0, w), device="cuda",
                                          root=data.root_for(DEF))

    out_dir = Path(os.environ.get("OUT", "/tmp/moe_bench"))
    out_dir.mkdir(parents=True, exist_ok=True)
    definition = json.loads((REPO / "definitions" / "moe" / f"{DEF}.json").read_text())
    generate = exec_source(definition["generator"])["generate"]
    reference = exec_source(definition["reference"])["run"]
    axes = {n: a["value"] for n, a in definition["axes"].items() if a["type"] == "const"}
    H, I, n_local = axes["hidden_size"], axes["intermediate_size"], axes["num_local_experts"]
    mods = {n: load(n) for n in SOLUTIONS}
    dev_name = torch.cuda.get_device_name()
    bw, tflops = ceilings()
    print(f"device {dev_name}  copy {bw:.2f} TB/s  fp8 mm {tflops:.0f} TFLOP/s  torch {torch.__version__}",
          flush=True)
    results = dict(device=dev_name, copy_tb_s=bw, fp8_tflops=tflops, rows=[], sweep=[])
    for T, offset in workloads():
        if args.tokens and T not in args.tokens:
            continue
        axes["seq_len"] = T
        if args.seed_by_t:  # the v1-v4 tables: generator seeded with T (other routing than fib run)
            made = generate(dict(axes), {}, torch.Generator().manual_seed(T), "cuda")
            inputs = [made[n] if n in made else {"local_expert_offset": offset,
                                                 "routed_scaling_factor": 2.5}[n]
                      for n in definition["inputs"]]
        else:  # exactly the inputs `fib run --seed 0` builds for this workload (same routing)
            inputs = list(fib_inputs(T).values())
        ref = reference(*inputs)
        ref = ref[0] if isinstance(ref, (tuple, list)) else ref
        row = dict(T=T, offset=offset)
        ids = mods["torch_eager"]._route(inputs[0], inputs[1], 2.5)[0]
        row.update(floor_numbers(ids, offset, T, H, I, n_local, bw, tflops))
        for name in SOLUTIONS:
            out = torch.full((T, H), float("nan"), dtype=torch.bfloat16, device="cuda")
            fn = lambda m=mods[name], o=out: m.run(*inputs, o)
            try:
                fn()
                torch.cuda.synchronize()
                row[f"{name}_err"] = errors(out, ref, fib_def)
                reps = 5 if name == "torch_eager" else 30
                row[f"{name}_ev_ms"] = time_events(fn, reps)
                if name != "torch_eager":
                    row[f"{name}_graph_ms"] = time_graph(fn)
            except Exception as exc:  # noqa: BLE001
                row[f"{name}_error"] = f"{type(exc).__name__}: {exc}"[:500]
                print(T, name, row[f"{name}_error"], flush=True)
        if T in args.sweep:
            fused = mods["triton_fused"]
            base = fused._config
            for cfg in sweep_configs(T):
                fused._config = lambda _T, c=cfg: {k: v for k, v in c.items() if k != "globals"}
                saved = {k: getattr(fused, k) for k in cfg.get("globals", {})}
                for k, v in cfg.get("globals", {}).items():  # module switches for this config
                    setattr(fused, k, v)
                out = torch.full((T, H), float("nan"), dtype=torch.bfloat16, device="cuda")
                try:
                    fn = lambda o=out: fused.run(*inputs, o)
                    fn()
                    e = errors(out, ref, fib_def)
                    first = out.clone()
                    graph_ms = time_graph(fn)
                    # fib run's own measure: cupti kernel-time sum per call, L2 flushed
                    st = fib_timing.measure(lambda _i: fn(), n_copies=1, device="cuda", timer="cupti",
                                            iterations=20, num_trials=3)
                    # after the graph replays: poisoned output, 20 more calls, each bit-identical
                    # to the first (the fused finalize/activation count arrivals: a race would move)
                    identical = True
                    for _ in range(20):
                        out.fill_(float("nan"))
                        fn()
                        identical &= bool(torch.equal(out, first))
                    results["sweep"].append(dict(T=T, cfg=cfg, graph_ms=graph_ms, cupti_ms=st.median_ms,
                                                 span_ms=getattr(st, "span_median_ms", None),
                                                 passed=e["passed"],
                                                 rel_l2=e.get("rel_l2"), repeat_identical=identical))
                    if T in args.profile:  # per-kernel device times of this configuration
                        results["sweep"][-1]["kernels_us"] = kernel_times(fn)
                except Exception as exc:  # noqa: BLE001
                    results["sweep"].append(dict(T=T, cfg=cfg, error=str(exc)[:300]))
                print("sweep", results["sweep"][-1], flush=True)
                for k, v in saved.items():
                    setattr(fused, k, v)
            fused._config = base
        if T in args.profile:
            from torch.profiler import ProfilerActivity, profile
            for name in ("triton_staged", "triton_fused"):
                out = torch.empty((T, H), dtype=torch.bfloat16, device="cuda")
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    for _ in range(3):
                        mods[name].run(*inputs, out)
                    torch.cuda.synchronize()
                table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=12)
                (out_dir / f"profile_{name}_T{T}.txt").write_text(table)
                print(f"--- {name} T={T}\n{table}", flush=True)
        results["rows"].append(row)
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                          if not k.endswith("_err")}), flush=True)
        del inputs, ref
        torch.cuda.empty_cache()
    (out_dir / "moe_kernels.json").write_text(json.dumps(results, indent=1))
    print(f"\n{dev_name}; ms; floor = max(bytes/{bw:.2f}TB/s, flops/{tflops:.0f}TFLOP/s); "
          "pct = floor/fused_graph")
    print(f"{'T':>6} {'hit':>3} {'floor':>7} {'eager':>8} {'stg_ev':>7} {'stg_gr':>7} {'fus_ev':>7} "
          f"{'fus_gr':>7} {'pct':>5}  pass(e/s/f) rel_l2(s/f)")
    for r in results["rows"]:
        g = lambda k: r.get(k, float("nan"))
        passed = "".join("y" if r.get(f"{n}_err", {}).get("passed") else "N" for n in SOLUTIONS)
        rel = "/".join(f"{r.get(f'{n}_err', {}).get('rel_l2', float('nan')):.3f}" for n in SOLUTIONS[1:])
        print(f"{r['T']:>6} {r['hit']:>3} {r['floor_ms']:7.3f} {g('torch_eager_ev_ms'):8.2f} "
              f"{g('triton_staged_ev_ms'):7.3f} {g('triton_staged_graph_ms'):7.3f} "
              f"{g('triton_fused_ev_ms'):7.3f} {g('triton_fused_graph_ms'):7.3f} "
              f"{100 * r['floor_ms'] / g('triton_fused_graph_ms'):5.0f}  {passed:>11} {rel}")
    keys = ("BN1", "BN2", "stages1", "stages2", "quant", "requant2", "split", "split2", "act", "globals")
    for sw in results["sweep"]:  # one line per swept configuration (full record in the json)
        short = " ".join(f"{k}={sw['cfg'][k]}" for k in keys if k in sw["cfg"])
        kern = sw.get("kernels_us")
        kern = " | " + " ".join(f"{v:.1f}" for v in kern.values()) + f" = {sum(kern.values()):.1f}us" if kern else ""
        print(f"sweep T={sw['T']:>3} graph {sw.get('graph_ms', float('nan')):.4f} cupti "
              f"{sw.get('cupti_ms') or float('nan'):.4f} span {sw.get('span_ms') or float('nan'):.4f} "
              f"pass={sw.get('passed')} "
              f"same={sw.get('repeat_identical')} {short}{kern}{' ERR ' + sw['error'][:80] if 'error' in sw else ''}")


if __name__ == "__main__":
    main()
