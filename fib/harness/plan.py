"""What a run should contain before it starts: sizes that decide whether a definition suits the
device at all (a bare `fib run` on a CPU machine must not start hours of full-size work)."""
from __future__ import annotations

import math

from ..schema import DTYPES, Definition

CPU_INPUT_LIMIT_BYTES = 512 * 2**20  # above this per workload, a bare `fib run` on CPU leaves the definition out


def dtype_size(name: str) -> float:
    import torch
    if name == "float4_e2m1":
        return 0.5
    return torch.empty((), dtype=getattr(torch, DTYPES[name])).element_size()


def input_bytes(definition: Definition, axes: dict[str, int]) -> int:
    """Bytes of a workload's tensor inputs, from the declared shapes (nothing is allocated)."""
    total = 0.0
    for spec in definition.inputs.values():
        shape = definition.shape_of(spec, axes)
        if shape:
            total += math.prod(shape) * dtype_size(spec.dtype)
    return int(total)


def too_large_for_cpu(definition: Definition, workloads, limit: int = CPU_INPUT_LIMIT_BYTES) -> int | None:
    """The largest workload's input bytes when it is over `limit`, else None."""
    largest = max((input_bytes(definition, definition.resolve_axes(w.axes)) for w in workloads), default=0)
    return largest if largest > limit else None
