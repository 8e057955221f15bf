"""The seed a workload's inputs are built from (no torch here: the parent of a run needs it before
any child has started, and must not spend seconds importing torch first)."""
from __future__ import annotations

import hashlib

from ..schema import Workload


def workload_seed(run_seed: int, workload: Workload) -> int:
    """The seed a workload's inputs are built from: fixed by the run's seed and the workload uuid."""
    digest = hashlib.sha256(f"{run_seed}:{workload.uuid}".encode()).hexdigest()
    return int(digest[:8], 16)
