"""Read Nsight Compute's `--csv --page raw` output into attributed kernel instances with metrics.

Why the raw page: it has one row per profiled kernel and one column per requested metric, so it
maps onto a DataFrame without pivoting, holds exactly the metrics asked for (the details page adds
sections, rule texts and human-scaled units that change with the value), and `--print-units base`
fixes each column's unit. The format, as ncu writes it:

    ==PROF== ... (ncu's progress lines; the program's own output may come first too)
    "ID","Process ID","Process Name","Host Name","thread Domain:Push/Pop_Range:PL_Type:PL_Value:CLR_Type:Color:Msg_Type:Msg","Id:Domain:Start/Stop_Range:...","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","dram__throughput.avg.pct_of_peak_sustained_elapsed",...
    "","","","","","","","","","","","","","%",...            <- the unit row
    "0","4242","python3","host",'1  "fib:fib.call/sol/uuid:none:..."  "fib:gemm1:none:..."',"","kernel",...

Numbers may carry thousands separators ("1,234,567"), `n/a` (metric not collected for that
kernel) reads as NaN, and an instanced value ("158 (0: 158)") reads as its leading aggregate.
Durations become ns and byte counts bytes whatever unit the unit row names.

NVTX: the push/pop cell is the launching thread's id and one quoted `domain:range:<6 attribute
fields>` entry per open range. Ranges of the domain "fib" count, and `fib.call/` and `fib.harness.`
ranges in any domain (without any "fib"-domain range in the file, every range counts), as for nsys.
The attribution is then attribution.attribute_stacks: the same rule as the other backends.
"""
from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path

import pandas as pd

from ..errors import FibError
from ..stages import CALL_PREFIX, HARNESS_PREFIX
from .attribution import DOMAIN, StageRules, attribute_stacks
from .ncu_metrics import CORE_METRICS, METRIC_ROLES, MULTI_CANDIDATE_ROLES

IDENTITY = {"ID": "id", "Process ID": "pid", "Process Name": "process", "Host Name": "host",
            "Kernel Name": "kernel_full", "Context": "context", "Stream": "stream", "Block Size": "block",
            "Grid Size": "grid", "Device": "device", "CC": "cc"}
PUSH_POP_PREFIX = "thread Domain:Push/Pop_Range"
START_END_PREFIX = "Id:Domain:Start/Stop_Range"
NVTX_ATTRIBUTE_FIELDS = 6  # PL_Type:PL_Value:CLR_Type:Color:Msg_Type:Msg after domain:range

_TO_NS = {"ns": 1.0, "nsecond": 1.0, "us": 1e3, "usecond": 1e3, "ms": 1e6, "msecond": 1e6,
          "s": 1e9, "second": 1e9}
_TO_BYTES = {"byte": 1.0, "kbyte": 1e3, "mbyte": 1e6, "gbyte": 1e9, "tbyte": 1e12}  # ncu's are decimal
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?:[eE][+-]?\d+)?$")
_QUOTED = re.compile(r'"([^"]*)"')
_MISSING = {"", "n/a", "N/A", "nan", "-"}


def _fail(path: Path, message: str, fix: str | None = None) -> FibError:
    return FibError(message, where=path, fix=fix)


def parse_number(text: str) -> float:
    """One cell as a float: thousands separators dropped, `n/a` -> NaN; ValueError otherwise."""
    value = str(text).strip()
    if " (" in value:  # an instanced metric: "158 (0: 158)" -> its aggregate
        value = value.split(" (", 1)[0].strip()
    if value in _MISSING:
        return math.nan
    if _THOUSANDS.match(value):
        value = value.replace(",", "")
    return float(value)


def unit_scale(unit: str) -> tuple[float, str]:
    """(factor to fib's unit, fib's unit) for a unit-row entry: time -> ns, bytes -> byte."""
    key = (unit or "").strip()
    if key in _TO_NS:
        return _TO_NS[key], "ns"
    if key.lower() in _TO_BYTES:
        return _TO_BYTES[key.lower()], "byte"
    return 1.0, key


def parse_push_pop(cell: str) -> list[tuple[str, str]]:
    """(domain, range name) per open push/pop range, in the order ncu lists them."""
    cell = (cell or "").strip()
    entries = _QUOTED.findall(cell)
    if not entries and cell:
        rest = re.sub(r"^\d+\s*", "", cell)  # the thread id leads the cell
        entries = [rest] if rest else []
    out = []
    for entry in entries:
        fields = entry.split(":")
        domain = fields[0].strip().strip("<>")
        if len(fields) >= 2 + NVTX_ATTRIBUTE_FIELDS:
            name, message = ":".join(fields[1:-NVTX_ATTRIBUTE_FIELDS]), fields[-1]
        else:
            name, message = ":".join(fields[1:]), "none"
        if name in ("", "none") and message not in ("", "none"):
            name = message  # a range whose text sits in its message attribute
        if name:
            out.append((domain, name))
    return out


def _is_fib_name(name: str) -> bool:
    return name.startswith((CALL_PREFIX, HARNESS_PREFIX))


def fib_stacks(cells: list[str]) -> tuple[list[tuple[str, ...]], str]:
    """The fib ranges open at each kernel, outer first, and how ncu ordered them.

    ncu's order is read from the data, not assumed: the call range `fib.call/...` is opened by the
    target around every call, so it is the outermost of any stack that holds it. If the stacks
    list it last, ncu lists innermost first and every stack is reversed.
    """
    parsed = [parse_push_pop(c) for c in cells]
    any_fib_domain = any(domain == DOMAIN for stack in parsed for domain, _ in stack)
    stacks = [tuple(name for domain, name in stack
                    if not any_fib_domain or domain == DOMAIN or _is_fib_name(name)) for stack in parsed]
    first = last = 0
    for stack in stacks:
        if len(stack) > 1 and any(n.startswith(CALL_PREFIX) for n in stack):
            first += stack[0].startswith(CALL_PREFIX)
            last += stack[-1].startswith(CALL_PREFIX)
    if last > first:
        return [tuple(reversed(s)) for s in stacks], "innermost first (reversed to outer first)"
    return stacks, "outer first" if first else "unknown (no nested fib.call stack)"


def _header_index(rows: list[list[str]]) -> int | None:
    for i, row in enumerate(rows):
        if row and row[0].strip() == "ID" and "Kernel Name" in row:
            return i
    return None


def read_raw_csv(path: str | Path) -> pd.DataFrame:
    """One row per profiled kernel: identity columns (IDENTITY's names), `nvtx` (the push/pop cell)
    and each metric column as a float in fib's units (attrs["units"]: metric -> unit)."""
    path = Path(path)
    if not path.exists():
        raise _fail(path, "no such file")
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise _fail(path, f"cannot read the ncu CSV: {exc.strerror}") from None
    lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if not line.startswith("==")]
    try:
        rows = [(n, row) for n, line in lines for row in csv.reader(io.StringIO(line)) if row]
    except csv.Error as exc:
        raise _fail(path, f"not CSV: {exc}") from None
    if any("Metric Name" in row and "Metric Value" in row for _, row in rows[:50]):
        raise _fail(path, "this is ncu's details page (Section/Metric Name/Metric Value rows), not the raw page",
                    fix="profile with `--csv --page raw` (fib's ncu backend does), or re-export: "
                        "`ncu --import REPORT.ncu-rep --csv --page raw --print-units base`")
    start = _header_index([row for _, row in rows])
    if start is None:
        raise _fail(path, "no ncu raw-page header row (\"ID\",...,\"Kernel Name\",...) in the file",
                    fix="pass the --log-file output of `ncu --csv --page raw`; an empty capture means "
                        "no kernel was profiled")
    header = [h.strip() for h in rows[start][1]]
    body = rows[start + 1:]
    units: dict[str, str] = {}
    if body and body[0][1][0].strip() == "":
        units = dict(zip(header, (u.strip() for u in body[0][1])))
        body = body[1:]
    nvtx_col = next((h for h in header if h.startswith(PUSH_POP_PREFIX)), None)
    skip = set(IDENTITY) | {h for h in header if h.startswith((PUSH_POP_PREFIX, START_END_PREFIX))}
    metrics = [h for h in header if h not in skip]
    records, bad = [], {}  # bad: metric -> (line, cell) of its first cell that is not a number
    for line_no, row in body:
        if len(row) != len(header):
            raise _fail(path, f"line {line_no}: {len(row)} fields where the header has {len(header)}",
                        fix="the file was cut or mixed with other output; profile again")
        cells = dict(zip(header, row))
        record = {new: cells.get(old, "") for old, new in IDENTITY.items()}
        record["nvtx"] = cells.get(nvtx_col, "") if nvtx_col else ""
        for metric in metrics:
            try:
                record[metric] = parse_number(cells[metric]) * unit_scale(units.get(metric, ""))[0]
            except ValueError:
                bad.setdefault(metric, (line_no, cells[metric]))
                record[metric] = cells[metric]
        records.append(record)
    for metric, (line_no, cell) in bad.items():
        if units.get(metric):  # a unit says the column holds numbers
            raise _fail(path, f"line {line_no}, column {metric!r}: cannot read {cell!r} as a number",
                        fix="profile with `--print-units base` and an English locale")
    frame = pd.DataFrame(records, columns=[*IDENTITY.values(), "nvtx", *metrics])
    for metric in bad:  # a unitless column of text (a device attribute, a name): kept as text
        frame[metric] = frame[metric].astype(str)
    frame.attrs["units"] = {m: unit_scale(units.get(m, ""))[1] for m in metrics}
    frame.attrs["text_columns"] = {m: f"line {line_no}: {cell!r}" for m, (line_no, cell) in bad.items()}
    frame.attrs["nvtx"] = nvtx_col is not None
    frame.attrs["path"] = str(path)
    return frame


def _dims(text: str) -> str | None:
    """'(256, 1, 1)' -> '256x1x1' (the nsys reader's spelling); '(1,024, 1, 1)' -> '1024x1x1'."""
    parts = [p.strip().replace(",", "") for p in str(text or "").strip().strip("()").split(", ")]
    return "x".join(parts) if parts and all(p.isdigit() for p in parts) else None


def metric_roles(raw: pd.DataFrame) -> dict[str, pd.Series]:
    """fib's metric columns (duration_ns, dram_pct, ...) from whichever candidates the CSV holds."""
    out = {}
    text = raw.attrs.get("text_columns", {})
    for role, candidates in METRIC_ROLES.items():
        present = [c for c in candidates if c in raw.columns]
        for column in present:
            if column in text:
                raise FibError(f"column {column!r} holds text ({text[column]}) where ncu writes numbers",
                               where=raw.attrs.get("path"))
        if not present:
            continue
        if role in MULTI_CANDIDATE_ROLES:
            out[role] = raw[present].max(axis=1, skipna=True)
        else:
            out[role] = raw[present[0]]
    if "duration" in out:
        out["duration_ns"] = out.pop("duration")
    return out


ROLE_COLUMNS = [r if r != "duration" else "duration_ns" for r in METRIC_ROLES]


def load_ncu_csv(path: str | Path, rules: StageRules | None = None) -> tuple[pd.DataFrame, dict]:
    """(instances, facts): attribution.INSTANCE_COLUMNS plus the metric roles, block, grid,
    registers; facts say how ncu ordered the NVTX stacks and which metric fed which role."""
    path = Path(path)
    raw = read_raw_csv(path)
    roles = metric_roles(raw)
    if "duration_ns" not in roles:
        raise _fail(path, "the CSV has no gpu__time_duration column, so no kernel times",
                    fix="profile with fib's ncu backend, or add `--metrics gpu__time_duration.sum`")
    kernels = pd.DataFrame({"kernel_full": raw["kernel_full"].astype(str),
                            "start_ns": pd.to_numeric(raw["id"], errors="coerce").fillna(-1).astype("int64"),
                            "duration_ns": roles["duration_ns"].round().astype("Int64"),
                            "device": raw["device"], "stream": raw["stream"]})
    if kernels["duration_ns"].isna().any():
        bad = raw.loc[kernels["duration_ns"].isna(), "id"].tolist()[:5]
        raise _fail(path, f"kernels with ID {bad} have no duration (n/a)")
    kernels["duration_ns"] = kernels["duration_ns"].astype("int64")
    stacks, order = fib_stacks(raw["nvtx"].tolist())
    instances = attribute_stacks(stacks, kernels, rules)
    instances["ncu_id"] = raw["id"].values
    instances["block"] = [_dims(b) for b in raw["block"]]
    instances["grid"] = [_dims(g) for g in raw["grid"]]
    for role, series in roles.items():
        if role != "duration_ns":
            instances[role] = series.values
    if "registers" in instances:
        instances["registers"] = pd.to_numeric(instances["registers"], errors="coerce")
    sources = {role: [c for c in METRIC_ROLES[role if role != "duration_ns" else "duration"] if c in raw.columns]
               for role in roles}
    facts = {"nvtx_column": bool(raw.attrs.get("nvtx")), "stack_order": order, "metric_sources": sources,
             "units": raw.attrs.get("units", {}), "kernels": int(len(raw))}
    return instances, facts


def facts_notes(facts: dict) -> list[str]:
    """What a reader of the ncu table should know about how the CSV was read."""
    notes = [f"NVTX stacks as ncu lists them: {facts['stack_order']}"]
    if not facts.get("nvtx_column"):
        notes.append("the CSV has no NVTX push/pop column, so no kernel could be attributed to a call or stage "
                     "(profile with `ncu --nvtx`; fib's ncu backend does)")
    core = ["duration_ns" if role == "duration" else role for role in CORE_METRICS]
    missing = [role for role in core if role not in facts.get("metric_sources", {})]
    if missing:
        notes.append(f"core metrics not in the CSV: {', '.join(missing)}")
    return notes
