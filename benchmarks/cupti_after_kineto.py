"""What fib's direct CUPTI session records in a process where torch's profiler (Kineto) has run a session
too: before it, after it, and first made after it. Each session times N calls of a fixed spin kernel
(torch.cuda._sleep) between fib's markers and prints their median kernel duration, the records' span and
the host clock's span of the session, so a change of unit or lost records shows up.

    python benchmarks/cupti_after_kineto.py [--order direct,kineto,direct | kineto,direct] [-n 50]

Run one order per process (a process's CUPTI state is the point). Prints one JSON line per session.
"""
from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--order", default="direct,kineto,direct")
    ap.add_argument("-n", type=int, default=50)
    args = ap.parse_args()
    import torch
    from fib.timing.cupti import MARKER_KERNEL
    from fib.timing.cupti_direct import KernelSession
    from fib.errors import TimingError

    def call():
        torch.cuda._sleep(100_000)  # ~50-60 us at H200 clocks

    torch.cuda.synchronize()
    for step, kind in enumerate(args.order.split(",")):
        row: dict = {"step": step, "session": kind}
        t0 = time.perf_counter_ns()
        try:
            if kind == "direct":
                session = KernelSession()
                session.start()
                for _ in range(args.n):
                    call()
                torch.cuda.synchronize()
                try:
                    events = session.stop()
                except TimingError as exc:
                    row["refused"] = exc.message
                    events = session.events
                durations = sorted((e - s) / 1e3 for name, s, e in events if MARKER_KERNEL in name)
                row["records"] = len(events)
                row["span_us"] = (max(e[2] for e in events) - min(e[1] for e in events)) / 1e3 if events else None
            else:
                from torch.autograd import profiler
                with profiler.profile(use_cpu=False, use_device="cuda", use_kineto=True) as prof:
                    for _ in range(args.n):
                        call()
                    torch.cuda.synchronize()
                kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
                durations = sorted(e.device_time for e in kernels)
                row["records"] = len(kernels)
            row["host_us"] = (time.perf_counter_ns() - t0) / 1e3
            row["median_kernel_us"] = durations[len(durations) // 2] if durations else None
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
