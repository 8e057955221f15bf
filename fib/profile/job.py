"""One profiled call: what the profile target runs (kept apart so the demo pipelines and the
target both use it without importing each other)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass
class Job:
    solution: str
    workload: str
    call: Callable[[], object]
    axes: dict
    definition: str = ""
    in_call: bool = True  # False: harness work captured beside the calls, in no call range
    token_axis: str | None = None  # the TOKEN_AXIS of the definition's family (fib/families.py), if any
