"""The worker's warm-up floor: min_warmup_ms for its first timed workload and after a pause, min_warmup_ms_warm
for a workload timed right after another (the GPU busy until a moment ago)."""
from __future__ import annotations

import types

import torch

from fib.harness import worker as worker_mod
from fib.schema.config import RunConfig


def _worker(config: RunConfig):
    w = worker_mod.SolutionWorker.__new__(worker_mod.SolutionWorker)
    w.config, w.device, w.workload_uuid, w._last_timed = config, "cpu", "w0", None
    w.solution = types.SimpleNamespace(label="s")
    return w


class _Call:
    def bound(self, inputs):
        return lambda: None


def test_warm_floor_follows_the_previous_timing(monkeypatch):
    import fib.timing.measure as measure_mod
    floors = []

    def fake_measure(call, **kw):
        floors.append(kw["min_warmup_ms"])
        return "stats"
    monkeypatch.setattr(measure_mod, "measure", fake_measure)
    w = _worker(RunConfig(min_warmup_ms=25.0, min_warmup_ms_warm=5.0))
    inputs = {"x": torch.zeros(4)}
    w.time(_Call(), inputs)
    w.time(_Call(), inputs)
    assert floors == [25.0, 5.0]
    w._last_timed -= worker_mod.WARM_WITHIN_S + 0.5  # a pause: the GPU may have cooled
    w.time(_Call(), inputs)
    assert floors[-1] == 25.0
    same = _worker(RunConfig(min_warmup_ms=25.0, min_warmup_ms_warm=25.0))  # the pre-session-6 policy
    same.time(_Call(), inputs)
    same.time(_Call(), inputs)
    assert floors[-2:] == [25.0, 25.0]
