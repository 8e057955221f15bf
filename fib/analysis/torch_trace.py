"""Read a torch.profiler chrome trace (`prof.export_chrome_trace`) into attributed kernels.

Method: each GPU kernel event (cat "kernel") carries `args.correlation`, the id of the CUDA
runtime or driver call that launched it (cat "cuda_runtime" / "cuda_driver", e.g.
cudaLaunchKernel, cuLaunchKernel for Triton). That call ran on a CPU thread at a known time; the
`record_function` ranges open on that thread at that time (cat "user_annotation": fib.stage
opens one per stage while the profiler records, and the target one per call) are the kernel's
ranges, and the innermost stage range wins: the same rule as the nsys backend (see
attribution.py). Time containment is used instead of kineto's parent links because the launch
call's parent is the innermost *operator* (aten::mm), not the annotation.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd

from ..errors import FibError
from .attribution import StageRules, attribute, count_calls

LAUNCH_CATEGORIES = {"cuda_runtime", "cuda_driver"}
RANGE_CATEGORY = "user_annotation"
KERNEL_CATEGORY = "kernel"


def _ns(us) -> int:
    return int(round(float(us) * 1000))


def load_events(path: str | Path) -> list[dict]:
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as handle:
            data = json.load(handle)
    except (OSError, json.JSONDecodeError) as exc:
        raise FibError(f"cannot read the torch.profiler trace: {exc}", where=path) from None
    return data["traceEvents"] if isinstance(data, dict) else data


def attribute_events(events: list[dict], rules: StageRules | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(instances, calls) from chrome-trace events; see attribution.attribute."""
    ranges, launch_at, kernels = [], {}, []
    for ev in events:
        if ev.get("ph") != "X":
            continue
        cat = ev.get("cat")
        thread = (ev.get("pid"), ev.get("tid"))
        if cat == RANGE_CATEGORY:
            start = _ns(ev["ts"])
            ranges.append((thread, start, start + _ns(ev.get("dur", 0)), ev["name"]))
        elif cat in LAUNCH_CATEGORIES:
            corr = (ev.get("args") or {}).get("correlation")
            if corr is not None:
                launch_at[corr] = (thread, _ns(ev["ts"]))
        elif cat == KERNEL_CATEGORY:
            args = ev.get("args") or {}
            kernels.append({"kernel_full": ev["name"], "start_ns": _ns(ev["ts"]),
                            "duration_ns": _ns(ev.get("dur", 0)), "device": args.get("device"),
                            "stream": args.get("stream"), "correlation": args.get("correlation"),
                            "block": "x".join(map(str, args["block"])) if "block" in args else None,
                            "registers": args.get("registers per thread")})
    frame = pd.DataFrame(kernels, columns=["kernel_full", "start_ns", "duration_ns", "device", "stream",
                                           "correlation", "block", "registers"])
    launches = [launch_at.get(c, (None, None)) for c in frame["correlation"]]
    instances = attribute(ranges, launches, frame, rules)
    instances["block"] = frame["block"].values
    instances["registers"] = frame["registers"].values
    return instances, count_calls(ranges)


def load_torch_trace(path: str | Path, rules: StageRules | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    return attribute_events(load_events(path), rules)
