"""History store: run directories ingested into SQLite, and the loaded form both sides of a compare use.

A run is keyed by `run_id`: run.json's `run_id` when it has one, else a hash of its identity (git
commit, start time, host) and the bytes of traces.jsonl, so adding the same run directory twice
changes nothing. Each evaluated (definition, solution, workload) of a run is one `results` row with
its status, correctness figures and the raw timing samples (JSON text, milliseconds).

The database lives at `--db`, else `$FIB_HISTORY_DB`, else `~/.local/share/fib/history.db`. Its
schema is versioned (`schema_version` table); `MIGRATIONS` upgrades an older file in place, and a
file written by a newer fib is refused rather than guessed at.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import sqlite3
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from pydantic import ValidationError

from ..errors import FibError
from ..schema.trace import Trace

PASSED = "PASSED"


class HistoryError(FibError):
    """A run directory, database or selector that cannot be used."""


# ---------------------------------------------------------------- loaded runs (DB-independent)

@dataclass
class Result:
    """One evaluated (definition, solution, workload) of a run."""
    definition: str
    solution: str
    workload_uuid: str
    workload_axes: dict
    status: str
    samples_ms: list[float] = field(default_factory=list)
    latency_ms: Optional[float] = None
    reason: Optional[str] = None
    max_absolute_error: Optional[float] = None
    max_relative_error: Optional[float] = None
    matched_ratio: Optional[float] = None
    device: Optional[str] = None
    timestamp: Optional[str] = None
    timer: Optional[str] = None  # which fib timer produced the samples (cupti, cuda_event, ...)
    gpu_kind: Optional[str] = None  # a cluster run's GPU kind (evaluation.gpu_kind); None on one host
    trace_environment: Optional[dict] = None  # the node's environment, for a cluster run's kinds
    # the GPU idled most of the call: its back-to-back time by CUDA events (fib.timing.measure); not stored
    event_median_ms: Optional[float] = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.definition, self.solution, self.workload_uuid)

    @property
    def median_ms(self) -> Optional[float]:
        if self.samples_ms:
            return float(statistics.median(self.samples_ms))
        return self.latency_ms if self.status == PASSED else None

    def workload_label(self) -> str:
        axes = ",".join(f"{k}={v}" for k, v in self.workload_axes.items())
        return f"{axes} [{self.workload_uuid[:8]}]" if axes else self.workload_uuid[:8]


@dataclass
class StageRow:
    """One line of a run's profile/stages.csv."""
    solution: str
    workload: str
    stage: str
    kernel: str
    instances: int
    total_ms: float


@dataclass
class Run:
    """A run's metadata and results, from a run directory or from the history database."""
    run_id: str
    path: Optional[str]
    commit: Optional[str]
    branch: Optional[str]
    dirty: bool
    started: Optional[str]
    finished: Optional[str]
    host: Optional[str]
    environment: dict
    config: dict
    results: dict[tuple[str, str, str], Result] = field(default_factory=dict)
    stages: list[StageRow] = field(default_factory=list)

    @property
    def hardware(self) -> Optional[str]:
        gpu = self.environment.get("gpu") or {}
        return gpu.get("name") or self.environment.get("hardware")

    def label(self) -> str:
        commit = (self.commit or "no-commit")[:10]
        dirty = "+dirty" if self.dirty else ""
        branch = f" ({self.branch})" if self.branch else ""
        return f"{commit}{dirty}{branch} run:{self.run_id[:10]}"


def _result_from_trace(trace: Trace) -> Result:
    ev = trace.evaluation
    assert ev is not None and trace.solution is not None
    result = Result(definition=trace.definition, solution=trace.solution,
                    workload_uuid=trace.workload.uuid, workload_axes=dict(trace.workload.axes),
                    status=ev.status.value, reason=ev.reason, device=ev.device,
                    timestamp=ev.timestamp)
    extra = ev.model_extra or {}
    if extra.get("gpu_kind"):
        result.gpu_kind = str(extra["gpu_kind"])
        result.trace_environment = {**ev.environment.model_dump(mode="json"), "host": extra.get("host"),
                                    "gpu": {"name": extra.get("gpu"), "driver": extra.get("driver")}}
    if ev.correctness is not None:
        result.max_absolute_error = ev.correctness.max_absolute_error
        result.max_relative_error = ev.correctness.max_relative_error
        result.matched_ratio = ev.correctness.matched_ratio
    if ev.performance is not None:
        result.latency_ms = ev.performance.latency_ms
        if ev.performance.timing is not None:
            result.samples_ms = [float(x) for x in ev.performance.timing.samples_ms]
            result.timer = ev.performance.timing.timer
            result.event_median_ms = ev.performance.timing.event_median_ms
    return result


def read_traces(path: Path) -> tuple[list[Result], list[str]]:
    """Evaluated traces of a traces.jsonl, and one 'file:line: problem' per line that was skipped.

    Workload-only lines are skipped silently; a later trace of the same key replaces an earlier
    one (a retried evaluation supersedes the first).
    """
    results: dict[tuple, Result] = {}
    problems: list[str] = []
    with path.open() as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                trace = Trace.model_validate(json.loads(line))
            except json.JSONDecodeError as exc:
                problems.append(f"{where}: malformed JSON: {exc.msg} (skipped)")
                continue
            except ValidationError as exc:
                first = exc.errors()[0]
                loc = ".".join(str(p) for p in first.get("loc", ()))
                problems.append(f"{where}: field '{loc}': {first.get('msg')} (skipped)")
                continue
            if trace.is_workload_trace() or trace.evaluation is None or trace.solution is None:
                continue
            result = _result_from_trace(trace)
            results[result.key + (result.gpu_kind,)] = result
    return list(results.values()), problems


def read_stages(path: Path) -> list[StageRow]:
    """profile/stages.csv rows; an absent file gives none."""
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="") as handle:
        for number, row in enumerate(csv.DictReader(handle), 2):
            try:
                rows.append(StageRow(solution=row["solution"], workload=row["workload"],
                                     stage=row["stage"], kernel=row.get("kernel") or "",
                                     instances=int(float(row.get("instances") or 0)),
                                     total_ms=float(row["total_ms"])))
            except (KeyError, TypeError, ValueError) as exc:
                raise HistoryError(f"bad row: {exc}", where=f"{path}:{number}",
                                   fix="columns are solution,workload,stage,kernel,instances,total_ms")
    return rows


def _run_id(meta: dict, traces_bytes: bytes) -> str:
    if meta.get("run_id"):
        return str(meta["run_id"])
    git = meta.get("git") or {}
    env = meta.get("environment") or {}
    digest = hashlib.sha256()
    identity = [git.get("commit"), meta.get("started"), env.get("host")]
    digest.update(json.dumps(identity).encode())
    digest.update(traces_bytes)
    return digest.hexdigest()[:16]


def load_run_dir(path: str | Path, gpu_kind: Optional[str] = None) -> tuple[Run, list[str]]:
    """Read a run directory (run.json + traces.jsonl [+ profile/stages.csv]).

    Returns the run and the problems found in traces.jsonl (malformed lines are skipped). A cluster
    run can hold several GPU kinds (`fib run --cluster ray --gpus H100,H200`): `gpu_kind` selects
    one (its run id gets `@KIND`, its environment is that kind's nodes'); without it such a run
    is an error, since one key would stand for two measurements.
    """
    path = Path(path)
    run_json, traces_path = path / "run.json", path / "traces.jsonl"
    if not path.is_dir():
        raise HistoryError("not a directory", where=path, fix="pass a run directory written by `fib run`")
    if not traces_path.is_file():
        raise HistoryError("no traces.jsonl", where=path, fix="pass a run directory written by `fib run`")
    meta: dict = {}
    if run_json.is_file():
        try:
            meta = json.loads(run_json.read_text())
        except json.JSONDecodeError as exc:
            raise HistoryError(f"malformed JSON: {exc.msg} at line {exc.lineno}", where=run_json) from None
    results, problems = read_traces(traces_path)
    kinds = sorted({r.gpu_kind for r in results if r.gpu_kind})
    if gpu_kind is not None:
        results = [r for r in results if r.gpu_kind == gpu_kind]
        if not results:
            raise HistoryError(f"no results of GPU kind {gpu_kind!r} (its kinds: {', '.join(kinds) or 'none'})",
                               where=path, fix=f"use {path}@KIND with one of the kinds listed")
    elif len(kinds) > 1:
        raise HistoryError(f"the run holds {len(kinds)} GPU kinds ({', '.join(kinds)})", where=path,
                           fix=f"name one as {path}@{kinds[0]} (fib history add stores one run per kind)")
    if meta.get("state") == "running":
        problems.append(f"{run_json}: the run is still in progress (state 'running'); adding it now "
                        "stores what is there, and the finished run will be a separate entry")
    git = meta.get("git") or {}
    env = dict(meta.get("environment") or {})
    if not env.get("hardware") and results:
        env["hardware"] = _first_trace_hardware(traces_path)
    run_id = _run_id(meta, traces_path.read_bytes())
    node_env = next((r.trace_environment for r in results if r.trace_environment), None)
    if node_env is not None:  # a cluster run: the nodes' GPU, driver and libraries, not the driver host's
        env = {**env, **node_env, "hardware": results[0].gpu_kind, "driver_host": env.get("host")}
        run_id = f"{run_id}@{results[0].gpu_kind}" if (gpu_kind or kinds) else run_id
    run = Run(run_id=run_id, path=str(path.resolve()),
              commit=git.get("commit"), branch=git.get("branch"), dirty=bool(git.get("dirty")),
              started=meta.get("started") or meta.get("start_time") or _earliest(results),
              finished=meta.get("finished") or meta.get("end_time"),
              host=env.get("host"), environment=env, config=meta.get("config") or {},
              results={r.key: r for r in results},
              stages=read_stages(path / "profile" / "stages.csv"))
    return run, problems


def load_run_dirs(path: str | Path) -> list[tuple[Run, list[str]]]:
    """A run directory as one Run per GPU kind it holds (one Run when it holds one kind or none)."""
    results, _ = read_traces(Path(path) / "traces.jsonl") if (Path(path) / "traces.jsonl").is_file() else ([], [])
    kinds = sorted({r.gpu_kind for r in results if r.gpu_kind})
    if len(kinds) <= 1:
        return [load_run_dir(path)]
    return [load_run_dir(path, kind) for kind in kinds]


def _earliest(results: list[Result]) -> Optional[str]:
    stamps = sorted(r.timestamp for r in results if r.timestamp)
    return stamps[0] if stamps else None


def _first_trace_hardware(traces_path: Path) -> Optional[str]:
    with traces_path.open() as handle:
        for line in handle:
            try:
                hw = json.loads(line)["evaluation"]["environment"]["hardware"]
                if hw:
                    return hw
            except (ValueError, KeyError, TypeError):
                continue
    return None


# ---------------------------------------------------------------- the SQLite store

MIGRATIONS: list[tuple[int, str]] = [
    (1, """
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY, path TEXT, git_commit TEXT, branch TEXT, dirty INTEGER NOT NULL,
        started TEXT, finished TEXT, host TEXT, hardware TEXT, gpu_name TEXT, gpu_sm TEXT,
        gpu_driver TEXT, cuda TEXT, libs_json TEXT NOT NULL, environment_json TEXT NOT NULL,
        config_json TEXT NOT NULL, added_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ','now')));
    CREATE INDEX runs_commit ON runs(git_commit);
    CREATE INDEX runs_branch_started ON runs(branch, started);
    CREATE TABLE results (
        run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
        definition TEXT NOT NULL, solution TEXT NOT NULL, workload_uuid TEXT NOT NULL,
        workload_axes_json TEXT NOT NULL, status TEXT NOT NULL, reason TEXT,
        max_absolute_error REAL, max_relative_error REAL, matched_ratio REAL,
        latency_ms REAL, median_ms REAL, samples_json TEXT NOT NULL, device TEXT, timestamp TEXT,
        PRIMARY KEY (run_id, definition, solution, workload_uuid));
    CREATE INDEX results_series ON results(definition, solution, workload_uuid);
    """),
    (2, """
    CREATE TABLE stages (
        run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
        solution TEXT NOT NULL, workload TEXT NOT NULL, stage TEXT NOT NULL, kernel TEXT NOT NULL,
        instances INTEGER NOT NULL, total_ms REAL NOT NULL);
    CREATE INDEX stages_run ON stages(run_id);
    """),
    (3, """
    ALTER TABLE results ADD COLUMN timer TEXT;
    """),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def default_db_path() -> Path:
    env = os.environ.get("FIB_HISTORY_DB")
    if env:
        return Path(env).expanduser()
    return Path("~/.local/share/fib/history.db").expanduser()


def schema_version(conn: sqlite3.Connection) -> int:
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def migrate(conn: sqlite3.Connection, where: str = "history database") -> int:
    """Apply the migrations newer than the file's version, each in its own transaction."""
    current = schema_version(conn)
    if current > SCHEMA_VERSION:
        raise HistoryError(f"schema version {current} is newer than this fib's {SCHEMA_VERSION}",
                           where=where, fix="upgrade fib, or point --db at another file")
    for version, script in MIGRATIONS:
        if version <= current:
            continue
        conn.executescript(f"BEGIN;\n{script}\nINSERT INTO schema_version(version) VALUES ({version});\nCOMMIT;")
    return SCHEMA_VERSION


class HistoryDB:
    """The history store. Use as a context manager or call close()."""

    def __init__(self, path: str | Path | None = None, *, create: bool = True):
        self.path = Path(path).expanduser() if path else default_db_path()
        if not self.path.exists() and not create:
            raise HistoryError("no history database", where=self.path,
                               fix="run `fib history add RUN_DIR` first, or pass --db")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(str(self.path))
            self.conn.row_factory = sqlite3.Row
            self.conn.execute("PRAGMA foreign_keys = ON")
            migrate(self.conn, str(self.path))
        except sqlite3.DatabaseError as exc:
            raise HistoryError(f"not a usable SQLite database: {exc}", where=self.path) from None

    def __enter__(self) -> "HistoryDB":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    # -- writing
    def add_run(self, run: Run) -> bool:
        """Store a run; False (and nothing changed) when its run_id is already there."""
        if self.conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run.run_id,)).fetchone():
            return False
        env = run.environment
        gpu = env.get("gpu") or {}
        with self.conn:
            self.conn.execute(
                "INSERT INTO runs (run_id, path, git_commit, branch, dirty, started, finished, host,"
                " hardware, gpu_name, gpu_sm, gpu_driver, cuda, libs_json, environment_json, config_json)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (run.run_id, run.path, run.commit, run.branch, int(run.dirty), run.started,
                 run.finished, run.host, run.hardware, gpu.get("name"),
                 None if gpu.get("sm") is None else str(gpu.get("sm")), gpu.get("driver"),
                 env.get("cuda"), json.dumps(env.get("libs") or {}, sort_keys=True),
                 json.dumps(env, sort_keys=True), json.dumps(run.config, sort_keys=True)))
            self.conn.executemany(
                "INSERT INTO results (run_id, definition, solution, workload_uuid, workload_axes_json, status,"
                " reason, max_absolute_error, max_relative_error, matched_ratio, latency_ms, median_ms,"
                " samples_json, device, timestamp, timer) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [(run.run_id, r.definition, r.solution, r.workload_uuid,
                  json.dumps(r.workload_axes, sort_keys=True), r.status, r.reason,
                  r.max_absolute_error, r.max_relative_error, r.matched_ratio, r.latency_ms,
                  r.median_ms, json.dumps(r.samples_ms), r.device, r.timestamp, r.timer)
                 for r in run.results.values()])
            self.conn.executemany(
                "INSERT INTO stages VALUES (?,?,?,?,?,?,?)",
                [(run.run_id, s.solution, s.workload, s.stage, s.kernel, s.instances, s.total_ms)
                 for s in run.stages])
        return True

    # -- reading
    def runs(self, branch: Optional[str] = None) -> list[sqlite3.Row]:
        """Run rows ordered by start time (oldest first)."""
        sql = "SELECT * FROM runs"
        args: tuple = ()
        if branch:
            sql, args = sql + " WHERE branch = ?", (branch,)
        return list(self.conn.execute(sql + " ORDER BY started, added_at, run_id", args))

    def load_run(self, run_id: str) -> Run:
        row = self.conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise HistoryError(f"no run with id {run_id}", where=self.path)
        run = Run(run_id=row["run_id"], path=row["path"], commit=row["git_commit"],
                  branch=row["branch"], dirty=bool(row["dirty"]), started=row["started"],
                  finished=row["finished"], host=row["host"],
                  environment=json.loads(row["environment_json"]),
                  config=json.loads(row["config_json"]))
        for r in self.conn.execute("SELECT * FROM results WHERE run_id = ?", (run_id,)):
            result = _result_from_row(r)
            run.results[result.key] = result
        run.stages = [StageRow(s["solution"], s["workload"], s["stage"], s["kernel"],
                               s["instances"], s["total_ms"])
                      for s in self.conn.execute("SELECT * FROM stages WHERE run_id = ?", (run_id,))]
        return run

    def series_rows(self, branch: Optional[str] = None) -> list[sqlite3.Row]:
        """Every result joined with its run, ordered by run start time (for trends)."""
        sql = ("SELECT r.*, runs.git_commit, runs.branch, runs.started, runs.hardware, runs.path,"
               " runs.dirty FROM results r JOIN runs USING (run_id)")
        args: tuple = ()
        if branch:
            sql, args = sql + " WHERE runs.branch = ?", (branch,)
        return list(self.conn.execute(sql + " ORDER BY runs.started, runs.added_at, runs.run_id", args))

    def resolve(self, selector: str) -> str:
        """run_id for `commit:<sha-prefix>`, `branch:<name>`, `run:<id-prefix>` or `latest`.

        commit and branch pick the latest run (by start time) that matches.
        """
        kind, _, value = selector.partition(":")
        if selector == "latest":
            rows = self.conn.execute("SELECT run_id FROM runs ORDER BY started DESC, added_at DESC LIMIT 1").fetchall()
        elif kind == "commit" and value:
            commits = {r[0] for r in self.conn.execute(
                "SELECT DISTINCT git_commit FROM runs WHERE git_commit LIKE ?", (value + "%",))}
            if len(commits) > 1:
                raise HistoryError(f"commit prefix '{value}' matches {len(commits)} commits",
                                   where=self.path, fix="give more characters of the sha")
            rows = self.conn.execute("SELECT run_id FROM runs WHERE git_commit LIKE ? ORDER BY started DESC,"
                                     " added_at DESC LIMIT 1", (value + "%",)).fetchall()
        elif kind == "branch" and value:
            rows = self.conn.execute("SELECT run_id FROM runs WHERE branch = ? ORDER BY started DESC,"
                                     " added_at DESC LIMIT 1", (value,)).fetchall()
        elif kind == "run" and value:
            rows = self.conn.execute("SELECT run_id FROM runs WHERE run_id LIKE ?", (value + "%",)).fetchall()
            if len(rows) > 1:
                raise HistoryError(f"run id prefix '{value}' is ambiguous ({len(rows)} runs)",
                                   where=self.path, fix="give more characters of the id")
        else:
            raise HistoryError(f"bad selector '{selector}'",
                               fix="use a run directory, commit:<sha>, branch:<name>, run:<id> or latest")
        if not rows:
            raise HistoryError(f"no run matches '{selector}'", where=self.path,
                               fix="`fib history add` the run first")
        return rows[0][0]


def _result_from_row(r: sqlite3.Row) -> Result:
    return Result(definition=r["definition"], solution=r["solution"],
                  workload_uuid=r["workload_uuid"], workload_axes=json.loads(r["workload_axes_json"]),
                  status=r["status"], samples_ms=json.loads(r["samples_json"]),
                  latency_ms=r["latency_ms"], reason=r["reason"],
                  max_absolute_error=r["max_absolute_error"], max_relative_error=r["max_relative_error"],
                  matched_ratio=r["matched_ratio"], device=r["device"], timestamp=r["timestamp"],
                  timer=r["timer"])


def load_side(spec: str, db_path: str | Path | None) -> Run:
    """A compare side: an existing run directory, else a selector into the history database."""
    path = Path(spec)
    if path.is_dir():
        return load_run_dir(path)[0]
    head, at, kind = spec.rpartition("@")
    if at and head and Path(head).is_dir():  # RUN_DIR@KIND: one GPU kind of a cluster run
        return load_run_dir(Path(head), kind)[0]
    if ":" not in spec and spec != "latest":
        raise HistoryError("no such run directory", where=spec,
                           fix="pass a run directory or a selector (commit:<sha>, branch:<name>, run:<id>, latest)")
    with HistoryDB(db_path, create=False) as db:
        return db.load_run(db.resolve(spec))


# ---------------------------------------------------------------- series (trends, change points)

@dataclass
class SeriesPoint:
    """One run's result in a (definition, solution, workload, GPU) series."""
    run_id: str
    commit: Optional[str]
    branch: Optional[str]
    started: Optional[str]
    status: str
    median_ms: Optional[float]  # None unless PASSED
    ci_low_ms: Optional[float]
    ci_high_ms: Optional[float]
    n_samples: int
    workload_axes: dict
    run_path: Optional[str]
    reason: Optional[str] = None


def median_ci(samples: list[float]) -> tuple[Optional[float], Optional[float]]:
    """Distribution-free 95% CI of the median from order statistics (binomial, normal approximation)."""
    n = len(samples)
    if n < 3:
        return None, None
    ordered = sorted(samples)
    half = 1.959963984540054 * (n ** 0.5) / 2
    lo = max(0, int(n / 2 - half))
    hi = min(n - 1, int(n / 2 + half + 0.999999))
    return ordered[lo], ordered[hi]


SeriesKey = tuple[str, str, str, Optional[str]]


def load_series(db: HistoryDB, branch: Optional[str] = None) -> dict[SeriesKey, list[SeriesPoint]]:
    """Every (definition, solution, workload uuid, GPU) series, each ordered by run start time."""
    series: dict[SeriesKey, list[SeriesPoint]] = {}
    for row in db.series_rows(branch):
        result = _result_from_row(row)
        median = result.median_ms if result.status == PASSED else None
        low, high = median_ci(result.samples_ms) if median is not None else (None, None)
        key = (result.definition, result.solution, result.workload_uuid, row["hardware"])
        series.setdefault(key, []).append(SeriesPoint(
            run_id=row["run_id"], commit=row["git_commit"], branch=row["branch"],
            started=row["started"], status=result.status, median_ms=median, ci_low_ms=low,
            ci_high_ms=high, n_samples=len(result.samples_ms), workload_axes=result.workload_axes,
            run_path=row["path"], reason=result.reason))
    return series
