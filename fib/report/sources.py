"""What `fib report stages` reads: a run directory, an nsys capture, or a torch.profiler trace.

- run directory (or its `profile/` folder): the tables `fib profile` wrote and its meta.json;
- `.nsys-rep` (exported with `nsys export --type sqlite` when nsys is found) or `.sqlite`: a
  capture of `fib profile` or of a whole `nsys profile ... fib run ...`, attributed here;
- `.json` / `.json.gz`: a torch.profiler chrome trace.
Raw captures know workloads by uuid only: `--workloads FILE.jsonl` (traces.jsonl of a run, or a
dataset's workload file) supplies their axes, and `--definition DEF.json` its stages' regexes.

The token axis (what the breakdown and dispatch tables sort by) is the TOKEN_AXIS of the family
the definition's op_type matches (fib/families.py): a profile records it per pair, a raw capture
takes it from `--definition`; without a family it is guessed from the axis names.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..errors import FibError
from ..profile import nsys as nsys_mod
from ..analysis.attribution import StageRules
from ..analysis.nsys_sqlite import load_sqlite
from ..analysis.tables import declared_token_axes, infer_calls, kernel_table, leftout_table
from ..families import family_for_op_type
from ..analysis.torch_trace import load_torch_trace


@dataclass
class Source:
    path: Path
    kind: str
    kernels: pd.DataFrame
    leftout: pd.DataFrame
    meta: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    calls: pd.DataFrame | None = None  # (solution, workload, calls): the timed calls the capture holds
    token_axes: dict[str, str] = field(default_factory=dict)  # workload -> its family's TOKEN_AXIS


def workload_axes(paths) -> dict[str, dict]:
    """uuid -> axes from JSONL files of workloads, workload traces or traces."""
    axes: dict[str, dict] = {}
    for path in paths or []:
        for line in Path(path).read_text().splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            workload = record.get("workload", record) if isinstance(record, dict) else {}
            if isinstance(workload, dict) and "uuid" in workload:
                axes[workload["uuid"]] = workload.get("axes", {})
    return axes


def _read_definition(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise FibError(f"cannot read the definition: {exc}", where=path) from None
    if not isinstance(data, dict):
        raise FibError(f"the definition is a JSON {type(data).__name__}, not an object", where=path)
    return data


def definition_rules(path: Path | None) -> StageRules:
    if path is None:
        return StageRules()
    return StageRules.from_stages(_read_definition(path).get("stages", []))


def definition_token_axis(path: Path | None) -> str | None:
    """The TOKEN_AXIS of the family that covers the definition JSON's op_type (families under its
    dataset root, ROOT/definitions/<op_type>/<name>.json, and fib's own), or None: no definition,
    no op_type in it (a stages-only JSON), or no family for it. A family whose TOKEN_AXIS is not
    one of the definition's var axes is a FibError naming the family file."""
    if path is None:
        return None
    path = Path(path).resolve()
    data = _read_definition(path)
    op_type = data.get("op_type", data.get("type"))
    if not isinstance(op_type, str) or not op_type:
        return None
    axes = data.get("axes") if isinstance(data.get("axes"), dict) else {}
    var_axes = [name for name, axis in axes.items() if isinstance(axis, dict) and axis.get("type") == "var"]
    roots = [path.parents[2]] if len(path.parents) > 2 and path.parents[1].name == "definitions" else []
    family = family_for_op_type(op_type, var_axes, str(data.get("name") or path.stem), roots)
    return family.token_axis if family else None


def _from_capture(path: Path, kind: str, instances, calls, axes, notes, token_axis: str | None) -> Source:
    if calls.empty:
        calls = infer_calls(instances)
        notes.append("the capture has no fib.call ranges: calls per workload are inferred as the largest "
                     "instance count of one pipeline kernel (the kernel launched once per call)")
    declared = {w: token_axis for w in axes} if token_axis else {}
    kernels = kernel_table(instances, calls, axes, declared)
    missing = sorted(set(kernels["workload"]) - set(axes))
    if missing and axes:
        notes.append(f"no axes known for workloads {missing[:5]}")
    return Source(path, kind, kernels, leftout_table(instances), {"kernels_total": int(len(instances))}, notes,
                  calls=calls, token_axes=declared)


def profile_folder(path: Path) -> tuple[Path, dict]:
    """What `fib profile --output RUN` wrote: RUN/profile (or RUN itself when given that folder) and its
    meta.json ({} where there is none)."""
    profile_dir = path / "profile" if (path / "profile").is_dir() else path
    meta_path = profile_dir / "meta.json"
    return profile_dir, (json.loads(meta_path.read_text()) if meta_path.exists() else {})


def load_source(path: Path, *, rules: StageRules | None = None, axes: dict | None = None,
                token_axis: str | None = None) -> Source:
    """One source; `token_axis` (the --definition's family's, definition_token_axis) is for raw
    captures: a run directory's profile recorded each pair's own."""
    path = Path(path)
    axes = dict(axes or {})
    if path.is_dir():
        profile_dir, meta = profile_folder(path)
        kernels_csv = profile_dir / "kernels.csv"
        if not kernels_csv.exists():
            raise FibError("no profile/kernels.csv in the run directory", where=path,
                           fix="run `fib profile ... --output RUN_DIR` first, or pass an .nsys-rep/.sqlite")
        run_json = profile_dir.parent / "run.json"
        if run_json.exists():
            meta["run"] = json.loads(run_json.read_text())
        leftout_csv = profile_dir / "leftout.csv"
        leftout = pd.read_csv(leftout_csv) if leftout_csv.exists() else pd.DataFrame(
            columns=["range", "kernel", "instances", "total_ms", "avg_us"])
        kernels = pd.read_csv(kernels_csv, dtype={"workload": str, "tile": str})
        calls_csv = profile_dir / "calls.csv"
        calls = pd.read_csv(calls_csv, dtype={"workload": str}) if calls_csv.exists() else None
        return Source(path, "run", kernels, leftout, meta, list(meta.get("notes", [])), calls=calls,
                      token_axes=declared_token_axes(meta.get("pairs")))
    notes: list[str] = []
    suffixes = "".join(path.suffixes[-2:])
    if path.suffix == ".nsys-rep":
        if not path.exists():
            raise FibError("no such file", where=path)
        nsys = nsys_mod.find_nsys()
        if not nsys:
            raise FibError("reading an .nsys-rep needs nsys to export it, and nsys was not found", where=path,
                           fix="set FIB_NSYS, or pass the .sqlite from `nsys export --type sqlite`")
        sqlite = path.with_suffix(".sqlite")
        if not sqlite.exists() or sqlite.stat().st_mtime < path.stat().st_mtime:
            nsys_mod.export_sqlite(nsys, path)
        instances, calls = load_sqlite(sqlite, rules)
        return _from_capture(path, "nsys", instances, calls, axes, notes, token_axis)
    if path.suffix == ".sqlite":
        instances, calls = load_sqlite(path, rules)
        return _from_capture(path, "nsys", instances, calls, axes, notes, token_axis)
    if suffixes.endswith((".json", ".json.gz")):
        instances, calls = load_torch_trace(path, rules)
        return _from_capture(path, "torch", instances, calls, axes, notes, token_axis)
    raise FibError("not a run directory, .nsys-rep, .sqlite or torch.profiler .json trace", where=path)


def combine(sources: list[Source]) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """All sources' kernel rows (a (solution, workload) pair is taken from its first source)."""
    seen: set[tuple[str, str]] = set()
    frames, leftouts, notes = [], [], []
    for src in sources:
        pairs = set(zip(src.kernels["solution"], src.kernels["workload"]))
        dupes = pairs & seen
        if dupes:
            notes.append(f"{src.path}: {len(dupes)} (solution, workload) pairs already read from an earlier "
                         "source were skipped")
        # a boolean Series, not a list: an empty list would select no *columns* (a profile without kernels)
        keep = pd.Series([(s, w) not in dupes for s, w in zip(src.kernels["solution"], src.kernels["workload"])],
                         index=src.kernels.index, dtype=bool)
        frames.append(src.kernels[keep].assign(source=str(src.path)))
        leftouts.append(src.leftout.assign(source=str(src.path)))
        seen |= pairs
        notes.extend(f"{src.path}: {n}" for n in src.notes)
    kernels = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    leftout = pd.concat(leftouts, ignore_index=True) if leftouts else pd.DataFrame()
    kernels["tile"] = kernels["tile"].fillna("").astype(str)
    return kernels, leftout, notes
