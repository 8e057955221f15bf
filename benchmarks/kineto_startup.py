"""What the cupti timer's start-up costs on a GPU: torch.profiler (Kineto/CUPTI) sessions timed one by one.

    python benchmarks/kineto_startup.py [--background]

Prints one JSON object: seconds for `import torch`, CUDA initialisation, and for each of several
profiler sessions the time to enter, to exit and to read the events back. With --background a
first, empty session runs in a thread while the main thread does CUDA work (what a worker could
do while it builds inputs), and the sessions after it are timed the same way.
"""
from __future__ import annotations

import json
import sys
import threading
import time

t0 = time.perf_counter()
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

out = {"import_torch_s": time.perf_counter() - t0}
t = time.perf_counter()
x = torch.ones(1 << 20, device="cuda")
torch.cuda.synchronize()
out["cuda_init_s"] = time.perf_counter() - t


def session(n_calls: int) -> dict:
    times = {}
    t = time.perf_counter()
    prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
    prof.__enter__()
    times["enter_s"] = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(n_calls):
        with record_function("fib.timed_call"):
            x.add_(1.0)
    torch.cuda.synchronize()
    times["calls_s"] = time.perf_counter() - t
    t = time.perf_counter()
    prof.__exit__(None, None, None)
    times["exit_s"] = time.perf_counter() - t
    t = time.perf_counter()
    events = list(prof.profiler.kineto_results.events())
    times["read_s"] = time.perf_counter() - t
    times["events"] = len(events)
    return times


if "--background" in sys.argv:
    t = time.perf_counter()
    warm = threading.Thread(target=lambda: session(0))
    warm.start()
    a = torch.randn(4096, 4096, device="cuda")
    for _ in range(50):
        a = a @ a / 64
    torch.cuda.synchronize()
    warm.join()
    out["background_warm_s"] = time.perf_counter() - t
out["sessions"] = [session(n) for n in (2, 2, 180, 180)]
print(json.dumps(out, indent=1))
