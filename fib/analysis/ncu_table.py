"""Why is this kernel slow: ncu's numbers per (workload, stage, kernel), a "bound by" verdict, the floor.

`kernel_table` aggregates the attributed instances (ncu_csv.load_ncu_csv) per (solution, workload,
stage, kernel): time per call, and the duration-weighted mean of every percentage (a percentage of
peak over a kernel's run weighted by how long it ran is the percentage over all of them).
`workload_table` sums each (solution, workload) and, given the floor (the floor.csv of `fib report
floor`, or a roofline.csv: workload, floor_ms, bound, bytes_mb), puts the kernels' time against it: of_floor = floor / kernel time, the same definition as the roofline report, and the
DRAM bytes ncu measured against the bytes the floor says are needed.

`bound_by` reads the verdict off the numbers (BoundRules holds the thresholds):
- a unit at or above `busy_pct` of its peak limits the kernel: DRAM (dram %), "L2/L1" (the memory
  throughput, the max over DRAM, L2 and L1, is busy but DRAM is not), "tensor" (SM busy and the
  tensor pipe busy), "SM" (SM busy, tensor pipe not: issue, ALU/FMA or load/store pipes), or both;
- when neither compute nor memory reaches it, the kernel waits on latency: "latency: grid N < M SMs"
  when it launches fewer blocks than the GPU has SMs, "latency: occupancy X%" when fewer than
  `low_occupancy_pct` of the warp slots are active, else "latency".
The 60% default is Nsight Compute's own Speed-Of-Light guidance (compute and memory both below 60%
of peak typically indicate latency issues); the 25% occupancy default is a quarter of the warp
slots (16 of 64 warps per SM on sm90): under it each scheduler has fewer than 4 warps to switch to
when one stalls.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import FibError
from .attribution import PIPELINE
from .tables import add_axes

PCT_ROLES = ["dram_pct", "mem_pct", "l2_pct", "sm_pct", "tensor_pct", "occupancy_pct", "occupancy_theoretical_pct"]
KEYS = ["solution", "workload", "stage", "kernel"]


@dataclass(frozen=True)
class BoundRules:
    busy_pct: float = 60.0
    low_occupancy_pct: float = 25.0


def _num(value) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def bound_by(row, rules: BoundRules = BoundRules(), sm_count: int | None = None) -> str:
    """The verdict for one kernel row (a dict or Series with the *_pct roles, grid_blocks)."""
    get = (lambda k: _num(row.get(k))) if hasattr(row, "get") else (lambda k: math.nan)
    dram, mem, l2, sm, tensor = get("dram_pct"), get("mem_pct"), get("l2_pct"), get("sm_pct"), get("tensor_pct")
    occupancy, grid = get("occupancy_pct"), get("grid_blocks")
    memory = max((v for v in (dram, mem, l2) if not math.isnan(v)), default=math.nan)
    if math.isnan(memory) and math.isnan(sm):
        return "unknown"
    mem_busy = not math.isnan(memory) and memory >= rules.busy_pct
    sm_busy = not math.isnan(sm) and sm >= rules.busy_pct
    parts = []
    if mem_busy:
        parts.append("DRAM" if not math.isnan(dram) and dram >= rules.busy_pct else "L2/L1")
    if sm_busy:
        parts.append("tensor" if not math.isnan(tensor) and tensor >= rules.busy_pct else "SM")
    if parts:
        return "+".join(parts)
    if sm_count and not math.isnan(grid) and grid < sm_count:
        return f"latency: grid {int(grid)} < {sm_count} SMs"
    if not math.isnan(occupancy) and occupancy < rules.low_occupancy_pct:
        return f"latency: occupancy {occupancy:.0f}%"
    return "latency"


def _weighted(group: pd.DataFrame, column: str) -> float:
    values, weights = group[column], group["duration_ns"]
    mask = values.notna()
    if not mask.any() or weights[mask].sum() <= 0:
        return math.nan
    return float((values[mask] * weights[mask]).sum() / weights[mask].sum())


def _one_or_varies(series: pd.Series):
    values = series.dropna().unique()
    if len(values) == 0:
        return None
    return values[0] if len(values) == 1 else "varies"


def kernel_table(instances: pd.DataFrame, calls: pd.DataFrame, axes_by_workload: dict[str, dict] | None = None,
                 *, rules: BoundRules = BoundRules(), sm_count: int | None = None,
                 declared: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per (solution, workload, stage, kernel) of the pipeline kernels ncu profiled;
    `declared`: workload -> its family's TOKEN_AXIS (else the token axis is guessed)."""
    pipe = instances[instances["category"] == PIPELINE]
    rows = []
    for key, group in pipe.groupby(KEYS, dropna=False, sort=False):
        row = dict(zip(KEYS, key))
        row.update(instances=len(group), total_ns=int(group["duration_ns"].sum()),
                   kernel_full=group["kernel_full"].iloc[0])
        for role in PCT_ROLES:
            if role in group:
                row[role] = _weighted(group, role)
        for role in ("registers", "grid_blocks", "block_threads"):
            if role in group:
                row[role] = group[role].max()
        for col in ("block", "grid"):
            if col in group:
                row[col] = _one_or_varies(group[col])
        if "dram_bytes" in group:
            row["dram_bytes"] = float(group["dram_bytes"].sum())
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table = table.merge(calls[["solution", "workload", "calls"]], on=["solution", "workload"], how="left")
    per_call = table["calls"].where(table["calls"] > 0)
    table["per_call_us"] = table["total_ns"] / 1e3 / per_call
    table["avg_us"] = table["total_ns"] / 1e3 / table["instances"]
    if "dram_bytes" in table:
        table["dram_gbps"] = table["dram_bytes"] / table["total_ns"]  # bytes/ns = GB/s
        table["dram_mb_per_call"] = table["dram_bytes"] / 1e6 / per_call
    table["bound_by"] = [bound_by(r, rules, sm_count) for r in table.to_dict("records")]
    table = add_axes(table, axes_by_workload or {}, declared)
    axis = table.attrs.get("token_axis")
    table = table.sort_values(["solution", "tokens", "workload", "total_ns"], ascending=[True, True, True, False],
                              na_position="last", ignore_index=True)
    table.attrs["token_axis"] = axis
    return table


def load_floor(path: str | Path) -> pd.DataFrame:
    """Per workload: floor_ms and, where given, bound, bytes_mb, gflop (`fib report floor`'s floor.csv,
    families/moe/benchmarks/roofline.py's roofline.csv)."""
    path = Path(path)
    try:
        floor = pd.read_csv(path, dtype={"workload": str})
    except FileNotFoundError:
        raise FibError("no such file", where=path, field="--floor") from None
    except (OSError, ValueError) as exc:
        raise FibError(f"cannot read the floor CSV: {exc}", where=path, field="--floor") from None
    missing = {"workload", "floor_ms"} - set(floor.columns)
    if missing:
        raise FibError(f"the floor CSV lacks columns {sorted(missing)}", where=path, field="--floor",
                       fix="pass the floor.csv of `fib report floor` (or a roofline.csv of families/moe/benchmarks/roofline.py)")
    floor["floor_ms"] = pd.to_numeric(floor["floor_ms"], errors="coerce")
    bad = floor[~(floor["floor_ms"] > 0)]
    if not bad.empty:
        raise FibError(f"floor_ms is not a positive number for workload {bad['workload'].iloc[0]!r}",
                       where=path, field="floor_ms")
    keep = [c for c in ("workload", "floor_ms", "bound", "bytes_mb", "gflop", "experts_hit") if c in floor]
    return floor[keep].drop_duplicates("workload").reset_index(drop=True)  # a workload's floor, whoever ran it


def workload_table(kernels: pd.DataFrame, floor: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per (solution, workload): kernel time and DRAM traffic per call, against the floor if given."""
    if kernels.empty:
        return pd.DataFrame()
    agg = {"tokens": ("tokens", "first"), "calls": ("calls", "first"), "kernels": ("kernel", "nunique"),
           "kernel_us": ("per_call_us", "sum")}
    if "dram_mb_per_call" in kernels:
        agg["dram_mb"] = ("dram_mb_per_call", "sum")
    table = kernels.groupby(["solution", "workload"], dropna=False).agg(**agg).reset_index()
    if floor is not None:
        table = table.merge(floor, on="workload", how="left")
        table["of_floor"] = table["floor_ms"] * 1e3 / table["kernel_us"]
        if "dram_mb" in table and "bytes_mb" in table:
            table["traffic_x"] = table["dram_mb"] / table["bytes_mb"]
    return table.sort_values(["solution", "tokens", "workload"], na_position="last", ignore_index=True)


def _cell(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if fmt and isinstance(value, (int, float)):
        return format(value, fmt)
    return str(value)


TABLE_COLUMNS = [("stage", "stage", ""), ("kernel", "kernel", ""), ("µs/call", "per_call_us", ".1f"),
                 ("DRAM %", "dram_pct", ".0f"), ("SM %", "sm_pct", ".0f"), ("occupancy %", "occupancy_pct", ".0f"),
                 ("regs", "registers", ".0f"), ("tensor %", "tensor_pct", ".0f"), ("block", "block", ""),
                 ("grid", "grid", ""), ("bound by", "bound_by", "")]


def _workload_line(w: pd.Series, token_axis: str | None) -> str:
    size = f"{token_axis}={int(w['tokens'])}" if token_axis and not pd.isna(w.get("tokens")) else "workload"
    parts = [f"kernel time {w['kernel_us']:.1f} µs per call ({int(w['calls'])} call(s) profiled)"]
    if not pd.isna(w.get("floor_ms", math.nan)):
        bound = f" ({w['bound']})" if isinstance(w.get("bound"), str) else ""
        parts.append(f"floor {w['floor_ms'] * 1e3:.1f} µs{bound}: {100 * w['of_floor']:.0f}% of floor")
    if not pd.isna(w.get("dram_mb", math.nan)):
        text = f"DRAM traffic {w['dram_mb']:.1f} MB per call"
        if not pd.isna(w.get("traffic_x", math.nan)):
            text += f" against {w['bytes_mb']:.1f} MB needed ({w['traffic_x']:.2f}x)"
        parts.append(text)
    return f"### {w['solution']} · {size} (`{w['workload']}`)\n\n" + "; ".join(parts) + ".\n"


def markdown(kernels: pd.DataFrame, workloads: pd.DataFrame, *, stage_order: list[str] | None = None,
             rules: BoundRules = BoundRules(), sm_count: int | None = None, notes: list[str] | None = None) -> str:
    """A table per (solution, workload), stages in the definition's order, then the method."""
    token_axis = kernels.attrs.get("token_axis")
    order = {s: i for i, s in enumerate(stage_order or [])}
    out = ["# Nsight Compute: why each kernel takes its time\n"]
    for _, w in workloads.iterrows():
        out.append(_workload_line(w, token_axis))
        rows = kernels[(kernels["solution"] == w["solution"]) & (kernels["workload"] == w["workload"])].copy()
        rows["_order"] = [order.get(s, len(order)) for s in rows["stage"]]
        rows = rows.sort_values(["_order", "per_call_us"], ascending=[True, False])
        cols = [(title, col, fmt) for title, col, fmt in TABLE_COLUMNS if col in rows]
        out.append("| " + " | ".join(t for t, _, _ in cols) + " |")
        out.append("|" + "|".join("---:" if fmt else "---" for _, _, fmt in cols) + "|")
        for _, r in rows.iterrows():
            out.append("| " + " | ".join(_cell(r[c], f).replace("|", "\\|") for _, c, f in cols) + " |")
        out.append("")
    out.append("Method: kernels replayed by Nsight Compute with `--clock-control none` (clocks as the GPU "
               "sets them) and its default cache control (caches flushed before each replay pass), one "
               "kernel at a time; µs/call is ncu's gpu__time_duration per call. Percentages are of the unit's "
               "peak, duration-weighted over a kernel's instances; occupancy is achieved (warps active). "
               f"bound by: a unit at ≥ {rules.busy_pct:.0f}% of its peak limits the kernel (DRAM, L2/L1, "
               "tensor pipe, SM); below that on both compute and memory it is latency, qualified by a grid "
               f"smaller than the SM count{f' ({sm_count})' if sm_count else ''} or an achieved occupancy under "
               f"{rules.low_occupancy_pct:.0f}%. of floor = floor / kernel time per call.\n")
    if notes:
        out += ["Notes:\n", *[f"- {n}" for n in notes], ""]
    return "\n".join(out)


def write_report(out_dir: Path, instances: pd.DataFrame, calls: pd.DataFrame, axes_by_workload: dict,
                 *, floor: pd.DataFrame | None = None, stage_order: list[str] | None = None,
                 sm_count: int | None = None, notes: list[str] | None = None,
                 rules: BoundRules = BoundRules(), declared: dict[str, str] | None = None) -> dict[str, Path]:
    """ncu_kernels.csv, ncu_workloads.csv, ncu.md under out_dir; `declared` as for kernel_table."""
    kernels = kernel_table(instances, calls, axes_by_workload, rules=rules, sm_count=sm_count, declared=declared)
    workloads = workload_table(kernels, floor)
    paths = {"ncu_kernels": out_dir / "ncu_kernels.csv", "ncu_workloads": out_dir / "ncu_workloads.csv",
             "ncu_md": out_dir / "ncu.md"}
    kernels.to_csv(paths["ncu_kernels"], index=False)
    workloads.to_csv(paths["ncu_workloads"], index=False)
    text = markdown(kernels, workloads, stage_order=stage_order, rules=rules, sm_count=sm_count, notes=notes) \
        if not kernels.empty else "# Nsight Compute\n\nNo pipeline kernel was profiled.\n"
    paths["ncu_md"].write_text(text)
    return paths
