"""`fib report floor`: each PASSED (solution, workload) against the floor of its workload.

The floor of a workload is its family's least work (fib/families.py: bytes and FLOPs, recorded in
each trace's `evaluation.floor` by the judge) at the device's ceilings (fib.timing.ceilings:
copy bandwidth counting bytes read plus written, the matmul rate of the FLOPs' dtype):

    floor = max(bytes / copy bandwidth, FLOPs / matmul rate);   of floor = floor / latency

so 100% is a solution at the floor. The ceilings come from `--ceilings FILE` (what
measure_ceilings writes), else from run.json's `ceilings` (measured by the run's judge after the
last pair) when they were measured on the traces' GPU. Definitions whose traces carry no floor
(their family declares none) are left out and named. A run that predates floor records gets them
with `--recompute`: the inputs are rebuilt from the dataset and each trace's seed, the family
counts them, and the records are kept in the run directory's floor.jsonl (the report reads the
trace's own record first, then floor.jsonl).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from ..errors import FibError
from ..rundir import read_traces
from ..schema import FloorWork, Status, Trace
from ..schema.io import append_jsonl_text, load_jsonl, validate

FLOOR_FILE = "floor.jsonl"


def matmul_rate(ceilings: dict, compute: str | None) -> float | None:
    """TFLOP/s of the matmul ceiling for FLOPs of this dtype, or None when it was not measured."""
    by_dtype = ceilings.get("matmul_tflops_by_dtype") or {}
    if compute in by_dtype:
        return float(by_dtype[compute])
    if compute is not None and ceilings.get("matmul_dtype") == compute and ceilings.get("matmul_tflops"):
        return float(ceilings["matmul_tflops"])
    return None


def floor_time(work: FloorWork, ceilings: dict) -> tuple[float, str] | str:
    """(floor seconds, "memory" or "compute"), or why there is none at these ceilings."""
    memory_s = work.bytes / (float(ceilings["copy_gbps"]) * 1e9)
    compute_s = 0.0
    if work.flops:
        rate = matmul_rate(ceilings, work.compute)
        if rate is None:
            measured = sorted(ceilings.get("matmul_tflops_by_dtype") or [ceilings.get("matmul_dtype")])
            return f"no {work.compute} matmul ceiling (measured: {', '.join(map(str, measured))})"
        compute_s = work.flops / (rate * 1e12)
    return max(memory_s, compute_s), "memory" if memory_s >= compute_s else "compute"


def load_ceilings(path: Path) -> dict:
    path = Path(path)
    try:
        ceilings = json.loads(path.read_text())
    except FileNotFoundError:
        raise FibError("no such file", where=path, field="--ceilings") from None
    except (OSError, ValueError) as exc:
        raise FibError(f"cannot read the ceilings JSON: {exc}", where=path, field="--ceilings") from None
    if not isinstance(ceilings, dict) or not (isinstance(ceilings.get("copy_gbps"), (int, float))
                                              and ceilings["copy_gbps"] > 0):
        raise FibError("copy_gbps is not a positive number", where=path, field="copy_gbps",
                       fix="pass what fib.timing.ceilings.measure_ceilings writes (run.json's `ceilings`)")
    return ceilings


def _key(definition: str, workload: str, seed) -> str:
    return f"{definition}/{workload}/{seed}"


def kept_floors(run_dir: Path) -> dict[str, FloorWork]:
    """The records of floor.jsonl (`--recompute`), by definition/workload/seed; the last one wins."""
    path = Path(run_dir) / FLOOR_FILE
    found: dict[str, FloorWork] = {}
    if path.exists():
        for number, obj in load_jsonl(path):
            where = f"{path}:{number}"
            found[_key(obj.get("definition"), obj.get("workload"), obj.get("seed"))] = \
                validate(FloorWork, obj.get("floor"), where)
    return found


def passed_traces(run_dir: Path) -> list[Trace]:
    """The PASSED traces, the latest of each (definition, solution, workload)."""
    latest: dict[tuple, Trace] = {}
    for trace in read_traces(run_dir, repair=False).traces:
        if trace.evaluation is not None and trace.solution is not None:
            latest[(trace.definition, trace.solution, trace.workload.uuid)] = trace
    return [t for t in latest.values() if t.evaluation.status == Status.PASSED]


def recompute(run_dir: Path, *, device: str = "cpu", roots: list[Path] | None = None) -> int:
    """Count the floor of every PASSED trace that has none, from the dataset and the trace's seed;
    append the records to floor.jsonl. Returns how many workloads were counted."""
    from ..dataset import load_dataset
    from ..families import family_for
    from ..harness.inputs import make_inputs
    import torch
    run_dir = Path(run_dir)
    if roots is None:
        recorded = json.loads((run_dir / "run.json").read_text()).get("dataset_roots") or []
        roots = [Path(r) for r in recorded if Path(r).is_dir()] or None
    data = load_dataset(roots)
    have = kept_floors(run_dir)
    counted = 0
    for trace in passed_traces(run_dir):
        key = _key(trace.definition, trace.workload.uuid, trace.evaluation.seed)
        if trace.evaluation.floor is not None or key in have:
            continue
        definition = data.definitions.get(trace.definition)
        if definition is None:
            raise FibError(f"definition '{trace.definition}' is not in the dataset ({', '.join(map(str, data.roots))})",
                           where=run_dir, fix="pass the dataset root with --local")
        family = family_for(definition, data.roots)
        if family is None or family.work is None:
            have[key] = None
            continue
        inputs = make_inputs(definition, trace.workload, seed=trace.evaluation.seed, device=device,
                             root=data.root_for(trace.definition))
        with torch.no_grad():
            record = family.floor(definition, trace.workload, inputs)
        del inputs
        have[key] = record
        if record is None:
            continue
        record["family_hash"] = family.source_hash
        append_jsonl_text(run_dir / FLOOR_FILE, json.dumps(
            {"definition": trace.definition, "workload": trace.workload.uuid, "seed": trace.evaluation.seed,
             "recomputed_on": device, "floor": record}))
        counted += 1
    return counted


def floor_table(traces: list[Trace], run_info: dict, *, ceilings: dict | None = None,
                kept: dict[str, FloorWork] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """One row per PASSED trace whose workload has a floor; the notes say what was left out."""
    rows, notes, without, no_ceilings = [], [], set(), set()
    recorded = run_info.get("ceilings")
    for trace in traces:
        ev = trace.evaluation
        work = ev.floor or (kept or {}).get(_key(trace.definition, trace.workload.uuid, ev.seed))
        if work is None:
            without.add(trace.definition)
            continue
        hardware = ev.environment.hardware
        roofs = ceilings or (recorded if recorded and recorded.get("device") == hardware else None)
        latency_ms = ev.performance.latency_ms
        event_ms = ev.performance.timing.event_median_ms if ev.performance.timing is not None else None
        row = {"definition": trace.definition, "solution": trace.solution, "workload": trace.workload.uuid,
               "token_axis": work.token_axis, "tokens": work.tokens, "latency_ms": latency_ms,
               "latency_us": latency_ms * 1e3, "floor_ms": math.nan, "floor_us": math.nan, "of_floor": math.nan,
               "bound": None, "bytes_mb": work.bytes / 1e6, "gflop": work.flops / 1e9, "compute": work.compute,
               "achieved_gbps": work.bytes / latency_ms / 1e6 if latency_ms else math.nan,
               "achieved_tflops": work.flops / latency_ms / 1e9 if latency_ms else math.nan,
               # the GPU idled most of the call: its back-to-back time by CUDA events (fib.timing.measure)
               "back_to_back_us": event_ms * 1e3 if event_ms is not None else math.nan, **work.detail}
        if roofs is None:
            no_ceilings.add(hardware)
        else:
            floor = floor_time(work, roofs)
            if isinstance(floor, str):
                notes.append(f"{trace.definition}: {floor}")
            else:
                seconds, bound = floor
                row.update(floor_ms=seconds * 1e3, floor_us=seconds * 1e6, bound=bound,
                           of_floor=seconds * 1e3 / latency_ms if latency_ms else math.nan)
        rows.append(row)
    for definition in sorted(without - {r["definition"] for r in rows}):
        notes.append(f"{definition}: no floor (its family declares none, or the run predates floor records: "
                     "`fib report floor RUN --recompute`)")
    for hardware in sorted(no_ceilings):
        why = (f"run.json's were measured on {recorded.get('device')}" if recorded else
               run_info.get("ceilings_error") or "run.json has none (measured only on a GPU)")
        notes.append(f"no ceilings for {hardware} ({why}): bytes and FLOPs only; pass --ceilings FILE")
    table = pd.DataFrame(rows)
    if not table.empty:
        table = table.sort_values(["definition", "tokens", "workload", "solution"], ignore_index=True)
    return table, list(dict.fromkeys(notes))


def _ceilings_line(ceilings: dict, source: str) -> str:
    rates = ceilings.get("matmul_tflops_by_dtype") or {ceilings.get("matmul_dtype"): ceilings.get("matmul_tflops")}
    matmul = ", ".join(f"{dtype} matmul {rate:.4g} TFLOP/s" for dtype, rate in rates.items() if rate)
    return f"ceilings ({source}, {ceilings.get('device', 'device not named')}): copy {ceilings['copy_gbps']:.4g} " \
           f"GB/s (read + write), {matmul}"


def markdown(table: pd.DataFrame, notes: list[str], run_dir: Path, run_info: dict, ceilings_line: str | None) -> str:
    from .stages import md_table
    env = run_info.get("environment") or {}
    out = ["# Against the floor\n",
           f"run `{run_dir}` (commit {(run_info.get('git') or {}).get('commit')}), hardware {env.get('hardware')}\n"]
    if ceilings_line:
        out.append(ceilings_line + "\n")
    out.append("floor = max(bytes / copy bandwidth, FLOPs / matmul rate) of the workload's least work (its "
               "family's count); % of floor = floor / latency (100% = at the floor).\n")
    if not table.empty and table["back_to_back_us"].notna().any():
        out.append("latency is the call's kernel time; *back to back µs*, where given, is the call's time by CUDA "
                   "events when its kernels cover under half of its device span (host syncs or launch-bound "
                   "host code: the GPU waits for most of the call).\n")
    for definition, group in table.groupby("definition", sort=True) if not table.empty else []:
        axis = group["token_axis"].iloc[0]
        details = [c for c in group.columns if c not in _BASE_COLUMNS and group[c].notna().any()]
        shown = group.assign(workload=group["workload"].str[:8])
        columns = ["tokens", "solution", "workload", "latency_us"]
        formats = {"tokens": "int", "latency_us": ".2f", "bytes_mb": ".3f", "gflop": ".3f", "back_to_back_us": ".2f"}
        if shown["back_to_back_us"].notna().any():
            columns.append("back_to_back_us")
        if shown["floor_us"].notna().any():
            columns += ["floor_us", "of_floor", "bound"]
            formats.update(floor_us=".2f", of_floor="pct")
        columns += ["bytes_mb", "gflop", *details]
        for column in details:
            values = pd.to_numeric(group[column], errors="coerce")
            if values.notna().all():
                formats[column] = "int" if (values == values.round()).all() else ".4g"
        titles = {"tokens": axis, "latency_us": "latency µs", "floor_us": "floor µs", "of_floor": "% of floor",
                  "bytes_mb": "MB", "gflop": "GFLOP", "back_to_back_us": "back to back µs"}
        frame = shown[columns].rename(columns=titles)
        out += [f"## {definition}\n", md_table(frame, {titles.get(k, k): v for k, v in formats.items()}) + "\n"]
    if notes:
        out += ["Notes:\n", *[f"- {n}" for n in notes], ""]
    return "\n".join(out)


_BASE_COLUMNS = {"definition", "solution", "workload", "token_axis", "tokens", "latency_ms", "latency_us", "floor_ms",
                 "floor_us", "of_floor", "bound", "bytes_mb", "gflop", "compute", "achieved_gbps", "achieved_tflops",
                 "back_to_back_us"}


def report_floor(run_dir: Path, output: Path | None = None, *, ceilings: Path | None = None,
                 recompute_on: str | None = None) -> Path:
    """Write floor.md and floor.csv (with the columns `fib report ncu --floor` reads) into `output`
    (default reports/floor-<run directory's name>/); return floor.md's path. `recompute_on`: a
    device to rebuild the inputs on for traces without a floor record (`recompute`)."""
    run_dir = Path(run_dir)
    if not (run_dir / "traces.jsonl").is_file():
        raise FibError("no traces.jsonl here", where=run_dir, fix="pass the directory of a `fib run`")
    run_info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    if recompute_on:
        recompute(run_dir, device=recompute_on)
    given = load_ceilings(ceilings) if ceilings else None
    table, notes = floor_table(passed_traces(run_dir), run_info, ceilings=given, kept=kept_floors(run_dir))
    used = given or run_info.get("ceilings")
    line = _ceilings_line(used, str(ceilings) if given else "run.json") if used else None
    if given and run_info.get("environment", {}).get("hardware") not in (None, given.get("device")):
        notes.append(f"the ceilings were measured on {given.get('device')}, the run ran on "
                     f"{run_info['environment']['hardware']}")
    out_dir = Path(output) if output else Path("reports") / f"floor-{run_dir.resolve().name}"
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "floor.csv", index=False)
    path = out_dir / "floor.md"
    path.write_text(markdown(table, notes, run_dir, run_info, line))
    return path
