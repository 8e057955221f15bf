"""Pieces of one evaluation shared by the worker and the parent: traces, error classification,
phase clocks, how many input copies to rotate."""
from __future__ import annotations

import contextlib
import datetime as _dt
import time

from ..schema import Correctness, Definition, Evaluation, Performance, Solution, Status, Trace, Workload

CUDA_FATAL = ("illegal memory access", "device-side assert", "unspecified launch failure",
              "misaligned address", "CUDA error: an illegal instruction", "CUBLAS_STATUS_EXECUTION_FAILED")


class FatalDeviceError(Exception):
    """The CUDA context is unusable after this; the worker must be replaced."""


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def make_trace(definition: Definition, workload: Workload, solution: Solution, status: Status, *,
               environment: dict, reason: str | None = None, correctness: Correctness | None = None,
               performance: Performance | None = None, log: str = "", device: str | None = None,
               seed: int | None = None, **extra) -> Trace:
    evaluation = Evaluation(status=status, environment=environment, timestamp=now_iso(), log=log,
                            correctness=correctness, performance=performance, reason=reason,
                            device=device, seed=seed, **extra)
    return Trace(definition=definition.name, workload=workload, solution=solution.label, evaluation=evaluation)


def classify_exception(exc: BaseException) -> tuple[Status, str, bool]:
    """(status, reason, fatal): fatal means the CUDA context cannot be trusted any more."""
    import torch
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return Status.RUNTIME_ERROR, f"out of memory: {str(exc).splitlines()[0][:300]}", False
    if any(marker in str(exc) for marker in CUDA_FATAL):
        return Status.RUNTIME_ERROR, f"CUDA error (context lost): {text[:500]}", True
    module = type(exc).__module__ or ""
    if module.startswith("triton.compiler") or "CompilationError" in type(exc).__name__:
        return Status.COMPILE_ERROR, text[:1000], False
    return Status.RUNTIME_ERROR, text[:1000], False


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch
        torch.cuda.synchronize(device)


class PhaseClock:
    """Wall seconds per harness phase (device work synchronised), for the harness-overhead split."""

    def __init__(self, device: str):
        self.device = device
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            sync(self.device)
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start


def device_memory_bytes(device: str) -> int | None:
    """Total memory of a CUDA device (None elsewhere)."""
    import torch
    if device.startswith("cuda") and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(torch.device(device)).total_memory)
    return None


def input_copies_for(size: int, device_memory: int | None, most: int = 4) -> int:
    """How many input sets to rotate while timing: up to `most`, within a memory budget of 10% of
    the device's memory (at least 2 GiB; 256 MiB on a CPU). Rotation keeps consecutive calls off
    the same buffers; the DeepSeek inputs (1.4 GB of weights) get 4 sets on an 80-141 GB GPU where a
    fixed 2 GiB budget allowed only one."""
    budget = max(2 * 2**30, device_memory // 10) if device_memory else 256 * 2**20
    return int(max(1, min(most, budget // max(1, size))))
