"""What the cupti timer's start-up costs on a GPU: torch.profiler (Kineto/CUPTI) sessions timed one by one.

    python benchmarks/kineto_startup.py [--variant NAME]

Prints one JSON object: seconds for `import torch`, CUDA initialisation, and for each of several
profiler sessions the time to enter, to exit and to read the events back. Variants (one per
process, since the first session of a process is the expensive one):

- ``after_cuda`` (default): CUDA initialised, then the sessions (what a worker does today);
- ``before_cuda``: a first, empty session before anything touches CUDA, then CUDA, then the sessions
  (does CUPTI start faster with no context yet?);
- ``cuda_only``: the sessions record only CUDA activity (no CPU ops), entered after CUDA;
- ``background``: a first, empty session in a thread while the main thread does CUDA work (what a
  worker could do while it builds inputs; shows whether the start-up releases the GIL);
- ``import_thread``: a first, empty session in a thread started right after `import torch`, while
  the main thread imports triton and initialises CUDA;
- ``autograd_api``: the sessions through `torch.autograd.profiler.profile(use_kineto=True)` (what
  fib's cupti timer uses) instead of `torch.profiler.profile`, whose start imports inductor.
"""
from __future__ import annotations

import json
import sys
import threading
import time

VARIANTS = ("after_cuda", "before_cuda", "cuda_only", "background", "import_thread", "autograd_api")
variant = sys.argv[sys.argv.index("--variant") + 1] if "--variant" in sys.argv else "after_cuda"
if "--background" in sys.argv:
    variant = "background"
if variant not in VARIANTS:
    sys.exit(f"unknown variant {variant!r}; one of {VARIANTS}")

t0 = time.perf_counter()
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

out = {"variant": variant, "import_torch_s": time.perf_counter() - t0}
x = None


def session(n_calls: int, cpu: bool = True) -> dict:
    times = {}
    t = time.perf_counter()
    acts = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if cpu else [ProfilerActivity.CUDA]
    if variant == "autograd_api":
        from torch.autograd import profiler
        prof = profiler.profile(use_cpu=True, use_device="cuda", use_kineto=True)
    else:
        prof = profile(activities=acts)
    prof.__enter__()
    times["enter_s"] = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(n_calls):
        with record_function("fib.timed_call"):
            x.add_(1.0)
    if n_calls:
        torch.cuda.synchronize()
    times["calls_s"] = time.perf_counter() - t
    t = time.perf_counter()
    prof.__exit__(None, None, None)
    times["exit_s"] = time.perf_counter() - t
    t = time.perf_counter()
    events = list((prof if variant == "autograd_api" else prof.profiler).kineto_results.events())
    times["inductor_imported"] = "torch._inductor" in sys.modules
    times["read_s"] = time.perf_counter() - t
    times["events"] = len(events)
    times["gpu_events"] = sum(1 for e in events if str(e.device_type()) != "DeviceType.CPU")
    return times


def cuda_init() -> None:
    global x
    t = time.perf_counter()
    x = torch.ones(1 << 20, device="cuda")
    torch.cuda.synchronize()
    out["cuda_init_s"] = time.perf_counter() - t


t_all = time.perf_counter()
if variant == "before_cuda":
    out["first_empty_session"] = session(0)
    cuda_init()
elif variant == "import_thread":
    warm = threading.Thread(target=lambda: out.__setitem__("first_empty_session", session(0)))
    warm.start()
    t = time.perf_counter()
    import triton  # noqa: E402,F401
    out["import_triton_s"] = time.perf_counter() - t
    cuda_init()
    warm.join()
elif variant == "background":
    cuda_init()
    t = time.perf_counter()
    warm = threading.Thread(target=lambda: out.__setitem__("first_empty_session", session(0)))
    warm.start()
    a = torch.randn(4096, 4096, device="cuda")
    for _ in range(50):
        a = a @ a / 64
    torch.cuda.synchronize()
    out["main_thread_work_s"] = time.perf_counter() - t
    warm.join()
    out["background_warm_s"] = time.perf_counter() - t
else:
    cuda_init()
out["to_first_session_ready_s"] = time.perf_counter() - t_all
cpu = variant != "cuda_only"
out["sessions"] = [session(n, cpu) for n in (2, 2, 180, 180)]
out["total_s"] = time.perf_counter() - t0
print(json.dumps(out, indent=1))
