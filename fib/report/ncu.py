"""`fib report ncu`: the Nsight Compute table (ncu.md) again, from a profile run or a raw ncu CSV.

A run directory of `fib profile --backend ncu` carries its stages, calls, axes and device in
profile/meta.json; a bare `ncu --csv --page raw` file needs `--definition` (stage regexes and
order) and `--workloads` (axes) from the user, and its calls per workload are inferred (the largest
instance count of one kernel, as for raw nsys captures). The token axis is each pair's family's
TOKEN_AXIS as the profile recorded it, else that of `--definition`'s family, else a guess.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import FibError
from ..analysis.attribution import StageRules
from ..analysis.ncu_csv import facts_notes, load_ncu_csv
from ..analysis.ncu_table import BoundRules, load_floor, write_report
from ..analysis.tables import declared_token_axes, infer_calls
from .sources import definition_rules, definition_token_axis, profile_folder, workload_axes


def _run_meta(source: Path) -> tuple[Path, dict]:
    profile_dir, meta = profile_folder(source)
    csv_path = profile_dir / "ncu_raw.csv"
    if not csv_path.exists():
        raise FibError("no profile/ncu_raw.csv in the run directory", where=source,
                       fix="profile with `fib profile --backend ncu`, or pass the raw ncu CSV itself")
    return csv_path, meta


def report_ncu(source: Path, output: Path | None = None, *, floor: Path | None = None,
               definition: Path | None = None, workloads: list[Path] | None = None,
               busy_pct: float | None = None, low_occupancy_pct: float | None = None,
               sm_count: int | None = None) -> Path:
    """Write ncu.md, ncu_kernels.csv, ncu_workloads.csv; return ncu.md's path."""
    source = Path(source)
    if source.is_dir():
        csv_path, meta = _run_meta(source)
    else:
        csv_path, meta = source, {}
    stages = [s for group in meta.get("stages", {}).values() for s in group]
    rules = definition_rules(definition) if definition else StageRules.from_stages(stages)
    instances, facts = load_ncu_csv(csv_path, rules)
    notes = list(meta.get("ncu_metric_notes", [])) + facts_notes(facts)
    if meta.get("pairs"):
        import pandas as pd
        calls = pd.DataFrame([(p["solution"], p["workload"], p["calls"]) for p in meta["pairs"]],
                             columns=["solution", "workload", "calls"])
        axes = {p["workload"]: p["axes"] for p in meta["pairs"]}
    else:
        calls = infer_calls(instances)
        axes = workload_axes(workloads)
        notes.append("calls per workload inferred as the largest instance count of one kernel")
    if meta.get("pairs") and workloads:
        axes.update(workload_axes(workloads))
    # the token axis: each pair's family's, as the profile recorded it, else the --definition's family's
    declared = declared_token_axes(meta.get("pairs"))
    axis = definition_token_axis(definition)
    if axis:
        declared = {w: declared.get(w, axis) for w in axes}
    sm_count = sm_count or (meta.get("device") or {}).get("sm_count")
    defaults = BoundRules()
    bound = BoundRules(busy_pct=defaults.busy_pct if busy_pct is None else busy_pct,
                       low_occupancy_pct=defaults.low_occupancy_pct if low_occupancy_pct is None else low_occupancy_pct)
    out_dir = Path(output) if output else Path("reports") / f"ncu-{source.stem if source.is_file() else source.name}"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = write_report(out_dir, instances, calls, axes, floor=load_floor(floor) if floor else None,
                         stage_order=rules.order, sm_count=sm_count, notes=notes, rules=bound, declared=declared)
    return paths["ncu_md"]
