"""A node evaluator for the Ray executor's tests that runs nothing: one cheap trace per pair, so
the driver's scheduling and memory can be measured on thousands of pairs (fib.harness.ray_node's
FibNode calls it in place of the Runner when RayExecutor(evaluator="ray_fakes:instant") is used)."""
from __future__ import annotations

import json

import ray


def instant(node, chunk: dict) -> None:
    bundle = ray.get(chunk["dataset"])
    workloads = getattr(node, "_fake_workloads", None)
    if workloads is None or node._fake_digest != bundle["digest"]:
        workloads = {w["uuid"]: w for w in map(json.loads, bundle["workloads"].splitlines()) if w}
        node._fake_workloads, node._fake_digest = workloads, bundle["digest"]
    for uuid in chunk["workloads"]:
        node.emit("start", uuid)
        record = {"definition": chunk["definition"], "solution": chunk["solution"], "workload": workloads[uuid],
                  "evaluation": {"status": "UNSUPPORTED", "reason": "fake evaluator", "timestamp": "2026-01-01T00:00:00",
                                 "environment": {"hardware": "fake", "libs": {}}, "log": ""}}
        node.emit("trace", node.annotate(record))
