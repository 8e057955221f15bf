"""The tidy tables every profile backend writes and every report reads.

`profile/kernels.csv`: one row per (solution, workload, stage, kernel) with instances, per-call
counts and times; `profile/stages.csv`: one row per (solution, workload, stage); `profile/
leftout.csv`: kernels kept out of the pipelines (fib.harness ranges, or launched outside any
call) with their GPU time. Times are GPU kernel durations; per-call values divide by the number
of `fib.call/...` ranges of that (solution, workload).
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .attribution import HARNESS, OUTSIDE, PIPELINE

KERNEL_KEYS = ["solution", "workload", "stage", "kernel", "tile", "kernel_full"]
TOKEN_AXIS_PREFERENCE = ("seq_len", "num_tokens", "tokens", "batch_size", "num_seqs", "m", "M", "T")


def guess_token_axis(axes_by_workload: dict[str, dict]) -> str | None:
    """The axis that counts tokens where no family declares one: a known token-count name, else the
    first axis."""
    names: list[str] = []
    for axes in axes_by_workload.values():
        names.extend(a for a in axes if a not in names)
    for preferred in TOKEN_AXIS_PREFERENCE:
        if preferred in names:
            return preferred
    return names[0] if names else None


def workload_token_axes(axes_by_workload: dict[str, dict],
                        declared: dict[str, str] | None = None) -> dict[str, str | None]:
    """workload -> the axis that counts its tokens: the TOKEN_AXIS its definition's family declares
    (`declared`, workload -> axis; fib.families), else the guess over all the workloads."""
    declared = declared or {}
    guess = guess_token_axis(axes_by_workload) if set(axes_by_workload) - set(declared) else None
    return {w: declared.get(w) or guess for w in axes_by_workload}


def declared_token_axes(pairs) -> dict[str, str]:
    """workload -> its family's token axis, from the pairs a profile recorded (meta.json `pairs`;
    older profiles recorded none)."""
    return {p["workload"]: p["token_axis"] for p in pairs or [] if p.get("token_axis")}


def token_axis(axes_by_workload: dict[str, dict], declared: dict[str, str] | None = None) -> str | None:
    """The var axis that reports plot against (and name): the workloads' token axis where they all
    have the same one; None where they differ (workloads of families with different axes) or have none."""
    names = set(workload_token_axes(axes_by_workload, declared).values()) - {None}
    return names.pop() if len(names) == 1 else None


def infer_calls(instances: pd.DataFrame) -> pd.DataFrame:
    """Calls per (solution, workload) when the capture has no call ranges.

    The seed report's rule: the kernel launched once per call has the most instances, so the
    largest instance count among pipeline kernels is the number of calls.
    """
    pipe = instances[instances["category"] == PIPELINE]
    counts = pipe.groupby(["solution", "workload", "kernel_full"]).size().reset_index(name="n")
    return counts.groupby(["solution", "workload"])["n"].max().reset_index(name="calls")


def kernel_table(instances: pd.DataFrame, calls: pd.DataFrame, axes_by_workload: dict[str, dict] | None = None,
                 declared: dict[str, str] | None = None) -> pd.DataFrame:
    """Pipeline kernels per (solution, workload, stage, kernel); `tokens` is each workload's value
    of its token axis (`declared`: workload -> its family's TOKEN_AXIS; else the guess)."""
    pipe = instances[instances["category"] == PIPELINE].copy()
    pipe["tile"] = pipe["tile"].fillna("")
    agg = {"instances": ("duration_ns", "size"), "total_ns": ("duration_ns", "sum"),
           "min_ns": ("duration_ns", "min"), "max_ns": ("duration_ns", "max"),
           "stage_source": ("stage_source", "first")}
    for extra in ("block", "registers"):
        if extra in pipe:
            agg[extra] = (extra, "first")
    table = pipe.groupby(KERNEL_KEYS, dropna=False).agg(**agg).reset_index()
    table = table.merge(calls, on=["solution", "workload"], how="left")
    table["calls"] = table["calls"].fillna(0).astype(int)
    per_call = table["calls"].where(table["calls"] > 0)
    table["per_call"] = table["instances"] / per_call
    table["total_ms"] = table["total_ns"] / 1e6
    table["per_call_us"] = table["total_ns"] / 1e3 / per_call
    table["avg_us"] = table["total_ns"] / 1e3 / table["instances"]
    table["min_us"] = table["min_ns"] / 1e3
    table["max_us"] = table["max_ns"] / 1e3
    table = add_axes(table, axes_by_workload or {}, declared)
    cols = ["solution", "workload", "axes", "tokens", "stage", "stage_source", "kernel", "tile",
            "instances", "calls", "per_call", "total_ms", "per_call_us", "avg_us", "min_us", "max_us"]
    cols += [c for c in ("block", "registers") if c in table] + ["kernel_full"]
    return table[cols].sort_values(["solution", "tokens", "workload", "stage", "total_ms"],
                                   ascending=[True, True, True, True, False], na_position="last",
                                   ignore_index=True)


def add_axes(table: pd.DataFrame, axes_by_workload: dict[str, dict],
             declared: dict[str, str] | None = None) -> pd.DataFrame:
    """`axes` (JSON) and `tokens` columns per workload; attrs["token_axis"] names the token axis."""
    per_workload = workload_token_axes(axes_by_workload, declared)
    table = table.copy()
    table["axes"] = [json.dumps(axes_by_workload.get(w, {}), sort_keys=True) for w in table["workload"]]
    table["tokens"] = [axes_by_workload.get(w, {}).get(per_workload[w]) if per_workload.get(w) else None
                       for w in table["workload"]]
    table["tokens"] = pd.to_numeric(table["tokens"], errors="coerce")
    table.attrs["token_axis"] = token_axis(axes_by_workload, declared)
    return table


def stage_table(kernels: pd.DataFrame) -> pd.DataFrame:
    """Per (solution, workload, stage): total_ms, per_call_us, instances, kernels, calls."""
    grouped = kernels.groupby(["solution", "workload", "stage"], dropna=False)
    table = grouped.agg(axes=("axes", "first"), tokens=("tokens", "first"), calls=("calls", "first"),
                        instances=("instances", "sum"), kernels=("kernel_full", "nunique"),
                        total_ms=("total_ms", "sum")).reset_index()
    table["per_call_us"] = table["total_ms"] * 1e3 / table["calls"].where(table["calls"] > 0)
    return table[["solution", "workload", "axes", "tokens", "stage", "calls", "instances", "kernels",
                  "total_ms", "per_call_us"]]


def leftout_table(instances: pd.DataFrame) -> pd.DataFrame:
    """Kernels kept out of the pipelines: under a fib.harness range, or outside every call."""
    rest = instances[instances["category"].isin([HARNESS, OUTSIDE])].copy()
    rest["range"] = rest["harness"].where(rest["category"] == HARNESS, "(outside calls)")
    table = rest.groupby(["range", "kernel"], dropna=False).agg(
        instances=("duration_ns", "size"), total_ns=("duration_ns", "sum")).reset_index()
    table["total_ms"] = table["total_ns"] / 1e6
    table["avg_us"] = table["total_ns"] / 1e3 / table["instances"]
    return table[["range", "kernel", "instances", "total_ms", "avg_us"]].sort_values(
        "total_ms", ascending=False, ignore_index=True)


def write_tables(out_dir: Path, instances: pd.DataFrame, calls: pd.DataFrame,
                 axes_by_workload: dict[str, dict], declared: dict[str, str] | None = None) -> dict[str, pd.DataFrame]:
    """Write kernels.csv, stages.csv, leftout.csv, calls.csv under out_dir; return them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    kernels = kernel_table(instances, calls, axes_by_workload, declared)
    tables = {"kernels": kernels, "stages": stage_table(kernels), "leftout": leftout_table(instances),
              "calls": calls}
    for name, table in tables.items():
        table.to_csv(out_dir / f"{name}.csv", index=False)
    return tables
