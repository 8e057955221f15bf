"""Where the host time of a timed call goes on a GPU: one solution on a few workloads, each piece of
fib's timing loop timed alone with perf_counter (no cProfile, which inflates Python-heavy code).

    python benchmarks/call_overhead.py [-d DEFINITION] [-s SOLUTION] [-w seq_len=1 ...] [-n 200]

Prints one JSON object per workload:
- ``bare_us``: host µs per call of the bound call, N calls back to back, one sync at the end (wall / N;
  when the GPU is faster than the host this is the host's cost per call), and ``bare_sync_us`` with a
  sync after every call;
- ``gpu_us``: the call's device time alone (CUDA events around N back-to-back calls, / N);
- ``flush_us``: fib's L2 flush plus the marker kernel, per call;
- ``record_function_us``: two empty record_function ranges (what the cupti loop wraps each call in);
- ``full_*`` / ``device_*``: N calls through the cupti timer's full session (host ops, record_function
  ranges) and its device-only session (CUDA activity, marker kernels): wall seconds, the session used,
  its steps (start, the calls, stop, reading the events, attributing them), µs per call inside the
  session, and the median kernel sum (the two must agree);
- ``measure_s``, ``warmup_runs``, ``measure_steps_s``: fib's whole `measure` (warm-up and 3 x 50 calls), its
  warm-up count and its steps;
- ``event_warmup_us`` / ``event_retime_us``: a call's time by CUDA events as `measure` reports it for a mostly
  idle GPU (its warm-up's settled half; None when the GPU was busy) and from 50 calls timed for it alone;
- ``launch_us``, ``empty_us``: one launch of a trivial Triton kernel, one `torch.empty`, as a scale.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-d", default="moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048")
    ap.add_argument("-s", default="triton_fused")
    ap.add_argument("-w", nargs="*", default=["seq_len=1", "seq_len=80", "seq_len=901", "seq_len=14107"])
    ap.add_argument("-n", type=int, default=200)
    args = ap.parse_args()

    import torch
    import triton
    import triton.language as tl
    from fib.dataset import load_dataset
    from fib.harness.call import SolutionCall
    from fib.harness.inputs import make_inputs
    from fib.harness.seeds import workload_seed
    from fib.timing import cupti
    from fib.timing.flush import flusher, make_flush_buffer
    from fib.timing.measure import event_times, measure
    import numpy as np
    from fib.timing.rotation import Rotation
    from torch.autograd.profiler import record_function

    dev = "cuda:0"
    torch.cuda.set_device(dev)
    data = load_dataset([ROOT])
    definition = data.definitions[args.d]
    solution = data.solutions[args.d][args.s]
    n = args.n

    @triton.jit
    def _nop(x_ptr, N: tl.constexpr):
        tl.store(x_ptr + tl.arange(0, N), tl.load(x_ptr + tl.arange(0, N)))

    scratch = torch.zeros(16, device=dev)
    _nop[(1,)](scratch, N=16)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        _nop[(1,)](scratch, N=16)
    launch_us = (time.perf_counter() - t) / n * 1e6
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        torch.empty(1024, device=dev)
    empty_us = (time.perf_counter() - t) / n * 1e6

    buffer = make_flush_buffer(dev)
    flush = flusher(buffer)
    marker = torch.zeros(1, device=dev)
    rows: list[dict] = []

    def session(out: dict, mode: str, rot, flush) -> None:
        """n calls through one of the cupti timer's sessions: "device" (what it tries first) or "full"."""
        os.environ[cupti.SESSION_ENV] = "full" if mode == "full" else ""
        info: dict = {}
        t = time.perf_counter()
        kernel_ms, _ = cupti.cupti_times(rot, flush, n, info=info)
        out[f"{mode}_s"] = time.perf_counter() - t
        out[f"{mode}_session"] = info["session"]
        out[f"{mode}_steps_s"] = info["steps_s"]
        out[f"{mode}_calls_us"] = info["steps_s"]["calls"] / n * 1e6
        out[f"{mode}_kernel_us"] = sorted(kernel_ms)[n // 2] * 1e3
        os.environ.pop(cupti.SESSION_ENV, None)

    for wanted in args.w:
        key, _, value = wanted.partition("=")
        workload = next(w for w in data.workloads[args.d] if str(w.axes.get(key)) == value)
        axes = definition.resolve_axes(workload.axes)
        inputs = make_inputs(definition, workload, seed=workload_seed(0, workload), device=dev, root=ROOT)
        call = SolutionCall.load(solution, definition, axes, dev)
        bound = call.bound(inputs)
        for _ in range(5):
            bound()
        torch.cuda.synchronize()
        out = {"workload": wanted, "launch_us": launch_us, "empty_us": empty_us}

        t = time.perf_counter()
        for _ in range(n):
            bound()
        torch.cuda.synchronize()
        out["bare_us"] = (time.perf_counter() - t) / n * 1e6
        t = time.perf_counter()
        for _ in range(n):
            bound()
            torch.cuda.synchronize()
        out["bare_sync_us"] = (time.perf_counter() - t) / n * 1e6
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            bound()
        end.record()
        torch.cuda.synchronize()
        out["gpu_us"] = start.elapsed_time(end) / n * 1e3
        t = time.perf_counter()
        for _ in range(n):
            flush()
            marker.zero_()
        torch.cuda.synchronize()
        out["flush_us"] = (time.perf_counter() - t) / n * 1e6
        t = time.perf_counter()
        for _ in range(n):
            with record_function(cupti.FLUSH_RANGE):
                pass
            with record_function(cupti.CALL_RANGE):
                pass
        out["record_function_us"] = (time.perf_counter() - t) / n * 1e6

        rot = Rotation(lambda _i: bound(), 1)
        session(out, "device", rot, flush)  # the full (Kineto) session comes last, for every workload:
        # once Kineto has run in a process, fib's direct session records nothing or in another unit
        # (benchmarks/cupti_after_kineto.py), and the timer falls back to Kineto there

        t = time.perf_counter()
        stats = measure(lambda i: bound(), n_copies=1, device=dev, timer="cupti", warmup_runs=10, iterations=50,
                        num_trials=3, flush_l2=True, ci=False)
        out["measure_s"] = time.perf_counter() - t
        out["warmup_runs"] = stats.warmup_runs
        out["measure_median_us"] = stats.median_ms * 1e3
        out["measure_steps_s"] = (stats.model_extra or {}).get("timing_steps_s")
        out["measure_session"] = (stats.model_extra or {}).get("cupti_session")
        # the back-to-back figure of a mostly idle GPU: measure's (its warm-up's settled half) against 50
        # calls timed for it alone, as measure did before 2026-12-02 session 6
        warm = (stats.model_extra or {}).get("event_median_ms")
        out["event_warmup_us"] = None if warm is None else warm * 1e3
        out["event_retime_us"] = float(np.median(event_times(rot, flush, 50))) * 1e3
        rows.append(out)
        inputs = bound = call = rot = None
        torch.cuda.empty_cache()
    for wanted, out in zip(args.w, rows):
        key, _, value = wanted.partition("=")
        workload = next(w for w in data.workloads[args.d] if str(w.axes.get(key)) == value)
        axes = definition.resolve_axes(workload.axes)
        inputs = make_inputs(definition, workload, seed=workload_seed(0, workload), device=dev, root=ROOT)
        bound = SolutionCall.load(solution, definition, axes, dev).bound(inputs)
        session(out, "full", Rotation(lambda _i: bound(), 1), flush)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}), flush=True)
        inputs = bound = None
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
