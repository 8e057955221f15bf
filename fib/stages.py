"""`fib.stage(name)`: mark a pipeline stage for nsys (NVTX, domain "fib") and torch.profiler.

Use as `with fib.stage("gemm1"): ...` or as a decorator `@fib.stage("routing")`. Without a profiler
attached it costs one NVTX push/pop (a no-op function call when no tool is injected) and a flag
check; the torch.profiler range is opened only while that profiler is recording.
"""
from __future__ import annotations

import contextlib
import functools

try:
    import nvtx as _nvtx
    _DOMAIN = _nvtx.get_domain("fib")
except Exception:  # nvtx missing or broken: stages still work, just without NVTX ranges
    _nvtx = None
    _DOMAIN = None

HARNESS_PREFIX = "fib.harness."
CALL_PREFIX = "fib.call/"  # the NVTX range of one timed call: fib.call/<solution>/<workload>


def _torch_profiler_on() -> bool:
    try:
        import torch
        return bool(torch.autograd.profiler._is_profiler_enabled)
    except Exception:
        return False


class stage(contextlib.ContextDecorator):
    """A named pipeline stage. Nesting is allowed; the innermost range owns a kernel."""

    def __init__(self, name: str, color: str | None = None):
        self.name = name
        self.color = color
        self._record = None

    def __enter__(self):
        if _DOMAIN is not None:
            _DOMAIN.push_range(_DOMAIN.get_event_attributes(message=self.name, color=self.color))
        if _torch_profiler_on():
            import torch
            self._record = torch.profiler.record_function(self.name)
            self._record.__enter__()
        return self

    def __exit__(self, *exc):
        if self._record is not None:
            self._record.__exit__(*exc)
            self._record = None
        if _DOMAIN is not None:
            _DOMAIN.pop_range()
        return False

    def __call__(self, func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            with stage(self.name, self.color):
                return func(*args, **kwargs)
        return wrapper


def harness_stage(name: str) -> stage:
    """A range for fib's own work (reference, checks, input preparation), kept out of pipelines."""
    return stage(HARNESS_PREFIX + name)


def call_range_name(solution: str, workload: str) -> str:
    """The NVTX range name of one timed call (profile.attribution parses it back)."""
    return f"{CALL_PREFIX}{solution}/{workload}"
