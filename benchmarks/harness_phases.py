"""Every sum the harness-speed scripts take over a `fib run` directory, computed once, here.

Used by benchmarks/harness_timeline.py (`breakdown`: the timeline's start-up and end, the phase sums),
benchmarks/harness_overhead.py (`split`: wall time into inputs, reference, first calls, checks, timing
loop, timed calls, other) and benchmarks/harness_speed_summary.py (`speed_columns`: that split grouped
beside flashinfer-bench's). Each reads `trace_totals` (one pass over traces.jsonl) and, for the
breakdown, `timeline_totals` (one pass over timeline.jsonl); no script sums a trace field itself.

Why a module of its own, and why it does not import fib: the fields summed here (evaluation.phases_s,
evaluation.workload_prepare_s) are extras that fib's Trace model keeps untyped, and their layout changed
between fib versions, and the committed run directories under reports/ hold both (in the 2026-11-22 runs
of reports/harness_overhead_h200, workload_prepare_s holds inputs, reference and fresh_inputs_and_reference,
once per workload; in the 2026-12-02 runs of reports/harness_speed_h200 the worker records its inputs in
phases_s and the judge its reference in workload_prepare_s.reference_s, beside the worker). Reading the files as plain JSON keeps every committed table regenerating from its
data with any fib checkout, and runs with only pandas (the speed summary runs on the GPU machine after
the timed runs). A library shared by three command lines rather than one script with subcommands, so
the command lines that benchmarks/*.sh and reports/*/README.md quote keep working unchanged.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

# The worker's phases, per trace (evaluation.phases_s).
PHASES = ("build", "inputs", "first_call", "check", "timing", "fresh_check")
# Once per workload, in the first trace of it (evaluation.workload_prepare_s): the 2026-11-22 runs' layout
# (the worker made inputs and reference), then reference_s, the 2026-12-02 layout (the judge's reference
# time, beside the worker: not on the wall's path, so `split` shows it but does not subtract it).
PREPARED = ("inputs", "reference", "fresh_inputs_and_reference", "reference_s")


def read_jsonl(path: Path) -> list[dict]:
    """One JSON object per non-blank line; errors name the file and line."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (a `fib run` output directory holds it)")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not JSON ({error})") from None
    return rows


def timed_calls_s(evaluation: dict) -> float:
    """Seconds of the solution's own timed calls in one trace: the sum of its timing samples.

    math.fsum here and for `other` below: the same last digit under any Python (3.12's sum() of floats
    compensates, 3.11's does not), so a csv written on the GPU machine regenerates byte for byte here.
    """
    timing = (evaluation.get("performance") or {}).get("timing")
    return math.fsum(timing["samples_ms"]) / 1e3 if timing else 0.0


@dataclass
class TraceTotals:
    """Sums over a run's traces.jsonl, in file order."""
    pairs: int  # traces (solution x workload)
    passed: int  # traces whose status is PASSED
    phases: dict[str, float]  # each of PHASES summed over traces (0.0 where no trace has it)
    timed_calls: float  # timed_calls_s summed
    timing_loop: float  # per trace, max(0, phases_s.timing - its timed calls): warm-up, L2 flushes, timer cost
    first_workload_timing: float | None  # phases_s.timing of the first trace that has one
    prepared: dict[str, float]  # each of PREPARED summed over the first trace of each workload that has them
    references_computed: int  # workload_prepare_s.reference_computed summed likewise (True counts 1)


def trace_totals(run_dir: Path) -> TraceTotals:
    path = run_dir / "traces.jsonl"
    phases = dict.fromkeys(PHASES, 0.0)
    prepared = dict.fromkeys(PREPARED, 0.0)
    timed_calls = timing_loop = 0.0
    first_timing = None
    passed = computed = 0
    seen = set()
    traces = read_jsonl(path)
    for number, trace in enumerate(traces, 1):
        try:
            ev, uuid = trace["evaluation"], trace["workload"]["uuid"]
        except (KeyError, TypeError) as error:
            raise ValueError(f"{path}: trace {number} has no {error} (not a fib trace?)") from None
        passed += ev.get("status") == "PASSED"
        ran = ev.get("phases_s") or {}
        for key in PHASES:
            if key in ran:
                phases[key] += ran[key]
        if first_timing is None and ran.get("timing") is not None:
            first_timing = ran["timing"]
        timed = timed_calls_s(ev)
        timed_calls += timed
        timing_loop += max(0.0, ran.get("timing", 0.0) - timed)
        prep = ev.get("workload_prepare_s") or {}
        if uuid not in seen and prep:
            seen.add(uuid)
            computed += prep.get("reference_computed", 0)
            for key in PREPARED:
                prepared[key] += prep.get(key, 0.0)
    return TraceTotals(pairs=len(traces), passed=passed, phases=phases, timed_calls=timed_calls,
                       timing_loop=timing_loop, first_workload_timing=first_timing, prepared=prepared,
                       references_computed=int(computed))


@dataclass
class TimelineTotals:
    """Times from a run's timeline.jsonl, seconds; None where the run has no such event."""
    cli: float  # process start (or, in older runs, fib's imports done) to the runner's start
    worker_start: float  # first worker_start to first worker_ready (0 if either is missing)
    judge_start: float  # judge_start to judge_ready, likewise
    first_trace: float | None  # runner start to the first trace
    last_trace: float | None  # runner start to the last trace
    run_end: float | None  # runner start to its end


def timeline_totals(run_dir: Path) -> TimelineTotals:
    path = run_dir / "timeline.jsonl"
    events = read_jsonl(path)
    if not events:
        raise ValueError(f"{path}: no events")
    head, rest = events[0], events[1:]

    def first(name):
        return next((e["t"] for e in rest if e["event"] == name), None)
    traces = [e["t"] for e in rest if e["event"] == "trace"]
    return TimelineTotals(cli=-head.get("process_start", head.get("cli_imported", 0.0)),
                          worker_start=(first("worker_ready") or 0) - (first("worker_start") or 0),
                          judge_start=(first("judge_ready") or 0) - (first("judge_start") or 0),
                          first_trace=traces[0] if traces else None, last_trace=traces[-1] if traces else None,
                          run_end=first("run_end"))


def breakdown(run_dir: Path) -> dict:
    """harness_timeline.py's row: start-ups, phase sums, timed calls, end, wall (process start to runner end)."""
    line, sums = timeline_totals(run_dir), trace_totals(run_dir)
    end = line.run_end
    return {"run": run_dir.name, "cli": line.cli, "worker_start": line.worker_start, "judge_start": line.judge_start,
            "to_first_trace": line.first_trace, **sums.phases, "first_workload_timing": sums.first_workload_timing,
            "timed_calls": sums.timed_calls,
            "end": (end - line.last_trace) if line.last_trace is not None and end is not None else None,
            "wall": line.cli + (end or 0.0)}


def split(totals: TraceTotals, wall_s: float) -> dict:
    """harness_overhead.py's row: wall_s (measured outside the run) into what the traces cover, and other.

    inputs: workload_prepare_s's (the 2026-11-22 layout) plus the worker's phases_s.inputs (2026-12-02);
    reference / fresh_inputs_and_reference: the 2026-11-22 layout's, on the wall's path. In the 2026-12-02
    runs the judge computes the reference beside the worker: `reference_beside_s` reports it, outside the sum.
    """
    prepared = dict(totals.prepared)
    beside = prepared.pop("reference_s", 0.0)
    parts = {**prepared}
    parts["inputs"] = prepared["inputs"] + totals.phases["inputs"]
    for key in ("build", "first_call", "check"):
        parts[key] = totals.phases[key]
    parts["timing_loop"] = totals.timing_loop
    parts["timed_calls"] = totals.timed_calls
    parts["fresh_check"] = totals.phases["fresh_check"]
    parts["other"] = max(0.0, wall_s - math.fsum(parts.values()))
    return {"wall_s": wall_s, "references_computed": totals.references_computed, **parts,
            "reference_beside_s": beside}


def speed_columns(run_dir: Path, wall_s: float) -> dict:
    """harness_speed_summary.py's fib columns: the split, grouped as flashinfer-bench's run can be, and the timer."""
    totals = trace_totals(run_dir)
    parts = split(totals, wall_s)
    run_json = run_dir / "run.json"
    config = json.loads(run_json.read_text()).get("config", {}) if run_json.is_file() else {}
    return {"pairs": totals.pairs, "timed": totals.passed,
            "reference_s": parts["reference"] + parts["fresh_inputs_and_reference"] + parts["reference_beside_s"],
            "first_calls_s": parts["first_call"], "checks_s": parts["check"] + parts["fresh_check"],
            "timing_s": parts["timing_loop"] + parts["timed_calls"], "timed_calls_s": parts["timed_calls"],
            "other_s": parts["other"], "timer": config.get("timer")}
