"""Attribute GPU kernels to the pipeline stage whose range launched them.

Both backends reduce their profile to the same two lists and hand them to `attribute`:

- ranges: (thread, start, end, name) CPU-side ranges (NVTX push/pop in domain "fib" for nsys,
  `record_function` annotations for torch.profiler);
- launches: one per kernel, the launching runtime call's (thread, start) and the kernel's facts.

A kernel belongs to the ranges open on the launching thread when its runtime call started
(`cudaLaunchKernel` and friends). Of those, `fib.call/<solution>/<workload>` names the call,
`fib.harness.*` marks fib's own work (reference, checks, inputs: kept out of pipelines), and the
innermost other range is the stage. Kernels in a call but outside any stage range take the stage
whose `kernels` regexes match their name (the definition's `stages`), else "other".
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import pandas as pd

from ..stages import CALL_PREFIX, HARNESS_PREFIX, call_range_name  # noqa: F401  (re-exported)
from ..profile.tiles import parse_tile, short_kernel_name

DOMAIN = "fib"
OTHER = "other"
UNKNOWN_SOLUTION = "(unknown)"
ALL_WORKLOADS = "(all)"

# categories of a kernel instance
PIPELINE, HARNESS, OUTSIDE = "pipeline", "harness", "outside"

INSTANCE_COLUMNS = ["solution", "workload", "category", "harness", "stage", "stage_source",
                    "kernel", "kernel_full", "tile", "start_ns", "duration_ns", "device", "stream",
                    "ranges"]
RANGE_SEPARATOR = " > "  # `ranges`: every fib range open at the launch, outer first


def parse_call_range(name: str) -> tuple[str, str] | None:
    """'fib.call/<solution>/<workload>' -> (solution, workload); None for any other name."""
    if not name.startswith(CALL_PREFIX):
        return None
    solution, sep, workload = name[len(CALL_PREFIX):].rpartition("/")
    return (solution, workload) if sep and solution else None


def clean_range_name(name: str) -> str:
    """nsys prints domain ranges as 'fib:<name>'; either spelling means the same range."""
    return name[len(DOMAIN) + 1:] if name.startswith(DOMAIN + ":") else name


@dataclass
class StageRules:
    """A definition's stages: their order and the kernel-name regexes of each."""

    order: list[str] = field(default_factory=list)
    patterns: list[tuple[str, re.Pattern]] = field(default_factory=list)

    @classmethod
    def from_stages(cls, stages) -> "StageRules":
        """From Definition.stages (StageSpec objects) or their JSON dicts."""
        rules = cls()
        for spec in stages or []:
            name = spec["name"] if isinstance(spec, dict) else spec.name
            kernels = spec.get("kernels", []) if isinstance(spec, dict) else spec.kernels
            rules.order.append(name)
            rules.patterns.extend((name, re.compile(rx)) for rx in kernels)
        return rules

    def match(self, kernel_name: str) -> str | None:
        for stage, pattern in self.patterns:
            if pattern.search(kernel_name):
                return stage
        return None


def open_ranges_at_launches(ranges, launches) -> list[tuple[str, ...]]:
    """For each launch (thread, time), the names of the ranges open on its thread, outer first.

    One sweep over the time-sorted events of each thread. At equal times a range that starts
    is open for the launch, and a range that ends is still open (a launch at a range's very
    last nanosecond belongs to it). Ranges need not nest (start/end ranges are allowed).
    """
    by_thread: dict[object, list] = {}
    for rid, (tid, start, end, name) in enumerate(ranges):
        by_thread.setdefault(tid, []).append((start, 0, rid, name))
        by_thread.setdefault(tid, []).append((end, 2, rid, name))
    for lid, (tid, start) in enumerate(launches):
        if tid is None or start is None:  # launching call unknown: no range can claim it
            continue
        by_thread.setdefault(tid, []).append((start, 1, lid, None))
    result: list[tuple[str, ...]] = [()] * len(launches)
    for events in by_thread.values():
        events.sort(key=lambda e: (e[0], e[1]))
        open_: dict[int, tuple[int, str]] = {}  # rid -> (start, name), insertion = start order
        for time, kind, ident, name in events:
            if kind == 0:
                open_[ident] = (time, name)
            elif kind == 2:
                open_.pop(ident, None)
            else:
                ordered = sorted(open_.items(), key=lambda item: (item[1][0], item[0]))
                result[ident] = tuple(n for _, (_, n) in ordered)
    return result


def classify(stack: tuple[str, ...]) -> tuple[tuple[str, str] | None, str | None, str | None]:
    """(call (solution, workload) or None, harness range or None, innermost stage or None)."""
    call = harness = stage = None
    for raw in stack:
        name = clean_range_name(raw)
        parsed = parse_call_range(name)
        if parsed:
            call = parsed
        elif name.startswith(HARNESS_PREFIX):
            harness = harness or name[len(HARNESS_PREFIX):]
        else:
            stage = name
    return call, harness, stage


def attribute(ranges, launches, kernels: pd.DataFrame, rules: StageRules | None = None) -> pd.DataFrame:
    """One row per kernel instance with its solution, workload, category and stage.

    `kernels` has one row per entry of `launches` with columns kernel_full, start_ns,
    duration_ns and optionally device, stream. Returns INSTANCE_COLUMNS.
    """
    have_calls = any(parse_call_range(clean_range_name(r[3])) for r in ranges)
    return attribute_stacks(open_ranges_at_launches(ranges, launches), kernels, rules, have_calls=have_calls)


def attribute_stacks(stacks: list[tuple[str, ...]], kernels: pd.DataFrame, rules: StageRules | None = None,
                     *, have_calls: bool | None = None) -> pd.DataFrame:
    """`attribute` for a profiler that reports each kernel's open ranges itself (ncu: the NVTX
    push/pop stack of the launching thread, outer first). `have_calls`: whether the capture holds
    any `fib.call/` range (default: whether any of these stacks does)."""
    rules = rules or StageRules()
    if have_calls is None:
        have_calls = any(parse_call_range(clean_range_name(n)) for stack in stacks for n in stack)
    rows = []
    for stack in stacks:
        call, harness, stage = classify(stack)
        rows.append((call, harness, stage))
    out = kernels.reset_index(drop=True).copy()
    names = out["kernel_full"].astype(str)
    solutions, workloads, categories, harnesses, stages, sources = [], [], [], [], [], []
    for (call, harness, stage), kname in zip(rows, names):
        source = "nvtx" if stage else None
        if harness is not None:
            category = HARNESS
        elif call is not None:
            category = PIPELINE
        elif not have_calls and stage is not None:
            category = PIPELINE  # a capture without call ranges: stage ranges still count
        else:
            category = OUTSIDE
        if category != HARNESS and stage is None:
            matched = rules.match(kname)
            if matched:
                stage, source = matched, "regex"
                if not have_calls:
                    category = PIPELINE
        if category == PIPELINE and stage is None:
            stage, source = OTHER, "other"
        solutions.append(call[0] if call else (UNKNOWN_SOLUTION if category == PIPELINE else None))
        workloads.append(call[1] if call else (ALL_WORKLOADS if category == PIPELINE else None))
        categories.append(category)
        harnesses.append(harness)
        stages.append(stage if category == PIPELINE else None)
        sources.append(source if category == PIPELINE else None)
    out["solution"], out["workload"], out["category"] = solutions, workloads, categories
    out["harness"], out["stage"], out["stage_source"] = harnesses, stages, sources
    out["ranges"] = [RANGE_SEPARATOR.join(clean_range_name(n) for n in stack) for stack in stacks]
    out["kernel"] = [short_kernel_name(n) for n in names]
    out["tile"] = [parse_tile(n) for n in names]
    for col in ("device", "stream"):
        if col not in out:
            out[col] = None
    return out[INSTANCE_COLUMNS]


def count_calls(ranges) -> pd.DataFrame:
    """Calls per (solution, workload): how many `fib.call/...` ranges the capture holds."""
    counts: dict[tuple[str, str], int] = {}
    for _tid, _start, _end, name in ranges:
        parsed = parse_call_range(clean_range_name(name))
        if parsed:
            counts[parsed] = counts.get(parsed, 0) + 1
    return pd.DataFrame([(s, w, n) for (s, w), n in counts.items()],
                        columns=["solution", "workload", "calls"])
