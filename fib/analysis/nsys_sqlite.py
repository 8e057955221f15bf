"""Read an `nsys export --type sqlite` file into attributed kernel instances.

Tables used (columns are checked with PRAGMA table_info, so exports of other nsys versions work
as long as these are there): StringIds(id, value); CUPTI_ACTIVITY_KIND_KERNEL(start, end,
correlationId, globalPid, demangledName | shortName | mangledName, deviceId, streamId, gridX..,
blockX.., registersPerThread); CUPTI_ACTIVITY_KIND_RUNTIME(start, globalTid, correlationId);
NVTX_EVENTS(start, end, eventType, text, textId, globalTid, domainId).

Join: a kernel's correlationId names the runtime call that launched it within the same process
(globalTid and globalPid share their upper bits: pid << 24). NVTX push/pop (eventType 59) and
start/end (60) ranges of the domain "fib" (domain-create events, eventType 75, name it) are the
ranges; `fib.call/` and `fib.harness.` ranges count in any domain.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pandas as pd

from ..errors import FibError
from .attribution import DOMAIN, StageRules, attribute, count_calls

NVTX_PUSH_POP, NVTX_START_END, NVTX_DOMAIN_CREATE = 59, 60, 75
PID_SHIFT = 24  # globalTid = ... | pid << 24 | tid; globalPid has the tid bits zero


def columns(con: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in con.execute(f"PRAGMA table_info('{table}')")}


def _strings(con) -> dict[int, str]:
    if not columns(con, "StringIds"):
        return {}
    return dict(con.execute("SELECT id, value FROM StringIds"))


def _require(con, table: str, needed: set[str], path) -> set[str]:
    have = columns(con, table)
    if not have:
        raise FibError(f"the export has no table {table}", where=path,
                       fix="profile with `--trace cuda,nvtx` and export with `nsys export --type sqlite`")
    missing = needed - have
    if missing:
        raise FibError(f"table {table} lacks columns {sorted(missing)}", where=path,
                       fix="re-export with a current nsys (`nsys export --type sqlite --force-overwrite true`)")
    return have


def _kernel_name_column(have: set[str]) -> str:
    for col in ("demangledName", "shortName", "mangledName", "name"):
        if col in have:
            return col
    raise FibError("CUPTI_ACTIVITY_KIND_KERNEL has no kernel-name column")


def read_kernels(con, strings, path) -> pd.DataFrame:
    have = _require(con, "CUPTI_ACTIVITY_KIND_KERNEL", {"start", "end", "correlationId"}, path)
    name_col = _kernel_name_column(have)
    extra = [c for c in ("globalPid", "deviceId", "streamId", "gridX", "gridY", "gridZ",
                         "blockX", "blockY", "blockZ", "registersPerThread") if c in have]
    query = f"SELECT start, end, correlationId, {name_col} AS name_ref, {', '.join(extra) or 'NULL AS none'} " \
            "FROM CUPTI_ACTIVITY_KIND_KERNEL ORDER BY start"
    df = pd.read_sql_query(query, con)
    df["kernel_full"] = [strings.get(v, str(v)) if isinstance(v, int) else str(v) for v in df["name_ref"]]
    df["start_ns"] = df["start"].astype("int64")
    df["duration_ns"] = (df["end"] - df["start"]).astype("int64")
    df = df.rename(columns={"deviceId": "device", "streamId": "stream"})
    if {"gridX", "gridY", "gridZ"} <= set(df.columns):
        df["grid"] = df["gridX"].astype(str) + "x" + df["gridY"].astype(str) + "x" + df["gridZ"].astype(str)
    if {"blockX", "blockY", "blockZ"} <= set(df.columns):
        df["block"] = df["blockX"].astype(str) + "x" + df["blockY"].astype(str) + "x" + df["blockZ"].astype(str)
    return df


def read_launches(con, kernels: pd.DataFrame, path) -> list[tuple[object, int | None]]:
    """(launching thread, runtime-call start) per kernel row; (None, None) when unmatched."""
    have = columns(con, "CUPTI_ACTIVITY_KIND_RUNTIME")
    if not have:
        return [(None, None)] * len(kernels)
    _require(con, "CUPTI_ACTIVITY_KIND_RUNTIME", {"start", "globalTid", "correlationId"}, path)
    rt = pd.read_sql_query("SELECT correlationId, globalTid, start AS rt_start FROM CUPTI_ACTIVITY_KIND_RUNTIME", con)
    left = kernels[["correlationId"]].copy()
    left["row"] = range(len(left))
    if "globalPid" in kernels:
        left["pid"] = kernels["globalPid"].astype("int64") // (1 << PID_SHIFT)
        rt["pid"] = rt["globalTid"].astype("int64") // (1 << PID_SHIFT)
        merged = left.merge(rt, on=["correlationId", "pid"], how="left")
    else:
        merged = left.merge(rt, on="correlationId", how="left")
    merged = merged.drop_duplicates("row").sort_values("row")
    return [(None, None) if pd.isna(t) else (int(t), int(s))
            for t, s in zip(merged["globalTid"], merged["rt_start"])]


def read_ranges(con, strings, path) -> list[tuple[int, int, int, str]]:
    """(thread, start, end, name) of the fib ranges; names resolved from StringIds if needed."""
    have = columns(con, "NVTX_EVENTS")
    if not have:
        return []
    _require(con, "NVTX_EVENTS", {"start", "end", "eventType", "globalTid"}, path)
    text = "text" if "text" in have else "NULL"
    text_id = "textId" if "textId" in have else "NULL"
    domain = "domainId" if "domainId" in have else "0"
    df = pd.read_sql_query(
        f"SELECT start, end, eventType, {text} AS text, {text_id} AS textId, globalTid, {domain} AS domainId "
        f"FROM NVTX_EVENTS WHERE eventType IN ({NVTX_PUSH_POP}, {NVTX_START_END}, {NVTX_DOMAIN_CREATE})", con)

    def name_of(t, tid):
        if isinstance(t, str) and t:
            return t
        return strings.get(int(tid), "") if tid is not None and not pd.isna(tid) else ""

    df["name"] = [name_of(t, i) for t, i in zip(df["text"], df["textId"])]
    creates = df[df["eventType"] == NVTX_DOMAIN_CREATE]
    fib_domains = set(creates.loc[creates["name"] == DOMAIN, "domainId"].tolist())
    spans = df[df["eventType"].isin([NVTX_PUSH_POP, NVTX_START_END]) & df["end"].notna()]
    if fib_domains:
        keep = spans["domainId"].isin(fib_domains) | spans["name"].str.startswith(("fib.call/", "fib.harness."))
        spans = spans[keep]
    # Without a "fib" domain (ranges made with the default domain) every range is a candidate.
    return [(int(t), int(s), int(e), n) for t, s, e, n in
            zip(spans["globalTid"], spans["start"], spans["end"], spans["name"])]


def load_sqlite(path: str | Path, rules: StageRules | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(instances, calls) from an nsys SQLite export: see attribution.attribute for the columns."""
    path = Path(path)
    if not path.exists():
        raise FibError("no such file", where=path)
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        strings = _strings(con)
        kernels = read_kernels(con, strings, path)
        launches = read_launches(con, kernels, path)
        ranges = read_ranges(con, strings, path)
    finally:
        con.close()
    launch_points = [(tid, start) for tid, start in launches]
    instances = attribute(ranges, launch_points, kernels, rules)
    for col in ("grid", "block", "registersPerThread"):
        if col in kernels:
            instances[col if col != "registersPerThread" else "registers"] = kernels[col].values
    return instances, count_calls(ranges)
