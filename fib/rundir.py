"""Keeping a run directory safe: one writer at a time, crash-tolerant traces, consistent resumes.

The runner calls these; none of them starts workers or evaluates anything.

- `RunDirLock(run_dir)`: an exclusive, non-blocking `flock` on `<run_dir>/.lock`, held for the
  whole `fib run`. A second `fib run` on the same directory fails at once with `RunDirBusy`
  (who holds it, since when, and what to do). The kernel drops the lock when the holder exits or
  dies, so a crashed run never leaves a stale lock behind.
- `append_trace(run_dir, trace)`: one line per trace, one write, fsynced: a crash (power cut,
  SIGKILL) leaves at most the last line cut short.
- `read_traces(run_dir)`: reads traces.jsonl for `--resume` (and anyone else), tolerating that cut
  line: a complete record missing only its newline is kept (the newline is added back); a fragment
  is moved to `traces.jsonl.partial-<n>` (never merged, never lost) and the file truncated after
  the last good line; a bad line in the middle is reported and skipped but left in the file.
- `config_differences(old, new)` / `environment_differences(old, new)`: what changed between the
  run.json of the run being resumed and the new invocation, so `--resume` can refuse to mix
  results measured under different settings (unless `--force`).
- `create_run_dir(base)`: a fresh `runs/<time>` directory, created atomically (two runs started
  in the same second get two directories, not one).
"""
from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from .errors import FibError
from .schema import Trace
from .schema.io import append_jsonl_text, dump_json

TRACES = "traces.jsonl"
LOCK = ".lock"
RUN_JSON = "run.json"


# ---- the lock ---------------------------------------------------------------------------------
class RunDirLockError(FibError):
    """The run directory cannot be locked (the filesystem does not support it, or no permission)."""


class RunDirBusy(RunDirLockError):
    """Another fib run holds the run directory's lock."""

    def __init__(self, message: str, *, holder: dict | None = None, **kw):
        self.holder = holder
        super().__init__(message, **kw)


# Locks this process holds, by resolved run directory; read_traces(repair=True) checks it.
_HELD: dict[str, "RunDirLock"] = {}


def _key(run_dir: Path) -> str:
    return str(Path(run_dir).resolve())


def _parse_holder(raw: bytes) -> dict | None:
    try:
        holder = json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return holder if isinstance(holder, dict) else None


def _describe_holder(holder: dict | None) -> str:
    if not holder:
        return "another fib run"  # it has the lock but has not written its name yet
    host = holder.get("host")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return f"another fib run (pid {holder.get('pid', '?')}{where}, started {holder.get('started', '?')})"


class RunDirLock:
    """Exclusive lock on a run directory, for as long as one `fib run` writes to it.

    Usage: ``with RunDirLock(run_dir) as lock: ...``. Entering creates the directory if needed,
    takes `flock(LOCK_EX | LOCK_NB)` on `<run_dir>/.lock` and writes the holder's pid, host, start
    time (UTC, ISO 8601) and command line into it as JSON. If another process holds it, entering
    raises `RunDirBusy` at once (it never waits). Leaving releases the lock and empties the file;
    the file itself stays, because deleting it would let a third process lock a new file while a
    second one still holds the old one. A holder that dies loses the lock with its file
    descriptor (flock semantics), so there are no stale locks; the descriptor is not inherited by
    spawned workers (Python's descriptors are non-inheritable), so an orphaned worker cannot keep
    the lock either. flock also excludes a second lock of the same directory within one process.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self.holder: dict | None = None
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "RunDirLock":
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this RunDirLock")
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RunDirLockError(f"cannot create the lock file: {exc.strerror}", where=self.path,
                                  fix="choose a writable --output") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raw = os.pread(fd, 4096, 0)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                holder = _parse_holder(raw)
                raise RunDirBusy(f"{_describe_holder(holder)} is writing to this run directory",
                                 where=self.run_dir, holder=holder,
                                 fix="wait for it to finish, or choose another --output") from None
            raise RunDirLockError(f"cannot lock {self.path}: {exc.strerror}", where=self.run_dir,
                                  fix="put the run directory on a local filesystem (one with flock)") from None
        self.holder = {"pid": os.getpid(), "host": socket.gethostname(),
                       "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                       "command": list(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(self.holder) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        _HELD[_key(self.run_dir)] = self
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        _HELD.pop(_key(self.run_dir), None)
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> "RunDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def holds_lock(run_dir: str | Path) -> bool:
    """Whether this process holds `run_dir`'s lock through a RunDirLock."""
    return _key(Path(run_dir)) in _HELD


def create_run_dir(base: str | Path) -> Path:
    """Create and return a new `<base>/<YYYYmmdd-HHMMSS>` (or `...-2`, `-3`, ... if taken).

    The directory is made with an exclusive mkdir, so two runs started in the same second never
    share one (unlike checking `exists()` first, then creating later)."""
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    suffix = 1
    while True:
        path = base / (stamp if suffix == 1 else f"{stamp}-{suffix}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            suffix += 1


# ---- traces.jsonl -----------------------------------------------------------------------------
def append_trace(run_dir: str | Path, trace: Trace | BaseModel | dict) -> None:
    """Append one trace to `<run_dir>/traces.jsonl` as a single line, flushed and fsynced.

    A model is written as `fib.schema.dump_json` writes it (None fields left out), a dict with
    `json.dumps` (NaN/Inf as the strings the models use). A crash leaves at most this line cut
    short; if the file's last line was cut short earlier and not repaired, a newline is written
    first so the two never merge (see `fib.schema.io.append_jsonl_text`)."""
    if isinstance(trace, BaseModel):
        text = dump_json(trace)
    else:
        text = json.dumps(_nan_as_strings(trace), allow_nan=False, separators=(",", ":"))
    append_jsonl_text(Path(run_dir) / TRACES, text)


def _nan_as_strings(value):
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _nan_as_strings(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_as_strings(v) for v in value]
    return value


@dataclass
class TraceFile:
    """What `read_traces` found in a run directory's traces.jsonl.

    `records[i]` (the parsed JSON object), `traces[i]` (the same record as a Trace) and `lines[i]`
    (its 1-based line number) describe the i-th good line, in file order; duplicates of a pair are
    all kept (the last one is the latest). `completed` holds the (definition, solution, workload
    uuid) of every record with a solution and an evaluation: what `--resume` skips. `notes` are
    human-readable sentences, one per line skipped or set aside, for the CLI to print; `bad_lines`
    the numbers of lines skipped but left in the file; `set_aside` the partial-line files written.
    """

    path: Path
    records: list[dict] = field(default_factory=list)
    traces: list[Trace] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    completed: set[tuple[str, str, str]] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    bad_lines: list[int] = field(default_factory=list)
    set_aside: list[Path] = field(default_factory=list)
    newline_added: bool = False


def _parse_record(raw: bytes) -> tuple[dict | None, Trace | None, str | None]:
    """(record, trace, None) for a good line, (None, None, problem) for a bad one."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, None, "not UTF-8 text"
    except json.JSONDecodeError as exc:
        return None, None, f"malformed JSON: {exc.msg} at column {exc.colno}"
    if not isinstance(obj, dict):
        return None, None, f"a JSON {type(obj).__name__}, not an object"
    try:
        trace = Trace.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ())) or "?"
        return None, None, f"not a trace: field '{loc}': {first.get('msg', 'invalid')}"
    return obj, trace, None


def _next_partial(path: Path) -> Path:
    n = 1
    while (path.parent / f"{path.name}.partial-{n}").exists():
        n += 1
    return path.parent / f"{path.name}.partial-{n}"


def _write_new_file(target: Path, data: bytes) -> Path:
    """Write `data` to a file that does not exist yet (partial-<n>, the next free n), fsynced."""
    while True:
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            target = _next_partial(target.parent / target.name.rsplit(".partial-", 1)[0])
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return target


def read_traces(run_dir: str | Path, *, repair: bool = True) -> TraceFile:
    """Read `<run_dir>/traces.jsonl`, tolerating the damage a crash can leave.

    Only the text after the last newline can be a line cut short by a crash (each trace is one
    fsynced write, see `append_trace`). With `repair=True` (for the run that is about to append:
    `--resume`):

    - a last line without its newline that parses as a trace is kept, and the newline is written,
      so the next append starts a line of its own;
    - a last line that does not parse is written to `traces.jsonl.partial-<n>` (the next free n;
      the bytes as they were), and only then is traces.jsonl truncated after the last newline.
      Its pair is not completed, so a resume measures it again.

    Repairing needs the run directory's lock: if this process holds it (a RunDirLock), it is
    used; otherwise it is taken for the repair, and `RunDirBusy` is raised if another run holds it
    (an unterminated last line may then simply be a line being written). With `repair=False`
    nothing is changed: the unterminated tail is parsed if it can be, else ignored, and noted.

    A bad line before the last newline (malformed JSON, not an object, not a valid Trace) is
    noted as 'file:line: problem', skipped, and left in the file. Blank lines are ignored. A
    missing file gives an empty TraceFile.
    """
    path = Path(run_dir) / TRACES
    result = TraceFile(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return result
    head_end = data.rfind(b"\n") + 1          # bytes [0, head_end) are complete lines
    head, tail = data[:head_end], data[head_end:]
    number = 0
    for number, raw in enumerate(head.split(b"\n")[:-1], 1):
        if not raw.strip():
            continue
        record, trace, problem = _parse_record(raw)
        if problem:
            result.bad_lines.append(number)
            result.notes.append(f"{path}:{number}: {problem} (skipped; left in the file)")
        else:
            _keep(result, number, record, trace)
    if not tail.strip():
        if tail and repair:  # only blanks after the last newline: harmless, but cut them
            _repair(run_dir, lambda: _truncate(path, head_end))
        return result
    number += 1
    record, trace, problem = _parse_record(tail)
    if not repair:
        if problem:
            result.notes.append(f"{path}:{number}: the last line is incomplete ({len(tail)} bytes, {problem}): "
                                f"being written, or cut short by a crash; ignored")
        else:
            _keep(result, number, record, trace)
            result.notes.append(f"{path}:{number}: the last line has no newline; read as it is")
        return result
    if not problem:
        _keep(result, number, record, trace)
        _repair(run_dir, lambda: _append_newline(path, len(data)))
        result.newline_added = True
        result.notes.append(f"{path}:{number}: the last line had no newline; it is a complete trace, "
                            f"so it is kept and the newline added")
        return result
    moved: list[Path] = []

    def set_aside() -> None:
        moved.append(_write_new_file(_next_partial(path), tail))
        _truncate(path, head_end)
    _repair(run_dir, set_aside)
    result.set_aside += moved
    result.notes.append(f"{path}:{number}: the last line was cut short ({len(tail)} bytes, {problem}); "
                        f"moved to {moved[0].name} and removed from {TRACES}; its pair is measured again")
    return result


def _keep(result: TraceFile, number: int, record: dict, trace: Trace) -> None:
    result.records.append(record)
    result.traces.append(trace)
    result.lines.append(number)
    if trace.solution and trace.evaluation is not None:
        result.completed.add((trace.definition, trace.solution, trace.workload.uuid))


def _repair(run_dir, action) -> None:
    if holds_lock(run_dir):
        action()
    else:
        with RunDirLock(run_dir):
            action()


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(size)
        handle.flush()
        os.fsync(handle.fileno())


def _append_newline(path: Path, expected_size: int) -> None:
    with open(path, "ab") as handle:
        if handle.tell() == expected_size:  # nothing appended since it was read
            handle.write(b"\n")
            handle.flush()
            os.fsync(handle.fileno())


def completed_pairs(run_dir: str | Path, *, repair: bool = True) -> set[tuple[str, str, str]]:
    """(definition, solution, workload uuid) already measured in this run directory
    (`read_traces(run_dir, repair=repair).completed`)."""
    return read_traces(run_dir, repair=repair).completed


# ---- what changed since the run being resumed -------------------------------------------------
# run.json["config"] keys that may differ on --resume without making old and new results unlike:
# - definitions, solutions, workloads: the selection; a resume measures what is selected and not
#   yet in traces.jsonl, so the selection may grow (or shrink: nothing already measured is removed);
# - devices: which GPUs (cuda:0 vs cuda:1, one or two); the kind of hardware is compared by
#   environment_differences instead;
# - timeout_s, build_timeout_s, prepare_timeout_s, max_failures, cache_dir: budgets and places,
#   which decide whether a pair ends as TIMEOUT or is skipped, never what a measurement is (a resume
#   with a longer --timeout for pairs that timed out is a legitimate use);
# - variants, sweep: solution configurations, part of the selection (each runs under its own
#   solution name `solution@config`, so old and new traces never mix).
# Every other key is compared, including keys added to RunSettings later, so a new setting is
# checked without editing this list.
IGNORED_ON_RESUME = frozenset({"definitions", "solutions", "workloads", "devices", "timeout_s",
                               "build_timeout_s", "prepare_timeout_s", "jit_timeout_s", "max_failures", "cache_dir",
                               "log_cap_bytes", "variants", "sweep", "jit_workers"})
_TOLERANCE_KEYS = {"atol", "rtol", "required_matched_ratio"}
_MISSING = object()


def _show(key: str, value) -> str:
    if value is _MISSING:
        return "(not recorded)"
    if value is None and key in _TOLERANCE_KEYS:
        return "the definition's"
    if key == "input_copies" and value == 0:
        return "0 (auto)"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return float(a) == float(b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def config_differences(old: dict, new: dict, *, ignore: frozenset[str] | set[str] = IGNORED_ON_RESUME
                       ) -> list[str]:
    """'field: old -> new' for each run setting that differs between the config recorded in the
    resumed run's run.json (`old`) and the new run's (`new`), keys in `old`'s order then `new`'s.

    Keys in `ignore` (default IGNORED_ON_RESUME: the selection, the devices, the budgets) are not
    compared. Numbers compare by value (1 == 1.0); None tolerances read "the definition's"; a key
    only one side has reads "(not recorded)". An empty list means the resume is consistent."""
    differences = []
    for key in list(old) + [k for k in new if k not in old]:
        if key in ignore:
            continue
        a, b = old.get(key, _MISSING), new.get(key, _MISSING)
        if a is _MISSING or b is _MISSING or not _same(a, b):
            differences.append(f"{key}: {_show(key, a)} -> {_show(key, b)}")
    return differences


# What in run.json["environment"] makes measurements incomparable: the hardware kind and the
# libraries that compute (the driver, Python, host and fib's version are left out).
ENVIRONMENT_KEYS = (("hardware",), ("cuda",), ("libs", "torch"), ("libs", "triton"), ("libs", "flashinfer"))


def environment_differences(old: dict, new: dict) -> list[str]:
    """'hardware: NVIDIA H100 -> NVIDIA H200' etc. for each of ENVIRONMENT_KEYS that differs
    between two run.json environments (collect_environment()'s dict). A key neither records is
    skipped; one only one side records reads "(not recorded)"."""
    differences = []
    for path in ENVIRONMENT_KEYS:
        a, b = _dig(old, path), _dig(new, path)
        if a is _MISSING and b is _MISSING:
            continue
        if a is _MISSING or b is _MISSING or a != b:
            differences.append(f"{'.'.join(path)}: {_show('', a)} -> {_show('', b)}")
    return differences


def _dig(obj: Any, path: tuple[str, ...]):
    for part in path:
        if not isinstance(obj, dict) or obj.get(part) is None:
            return _MISSING
        obj = obj[part]
    return obj


class ResumeMismatch(FibError):
    """`--resume` with settings that differ from the run being resumed."""


def recorded_run(run_dir: str | Path) -> dict | None:
    """The resumed run's run.json as a dict, or None if it is missing or unreadable."""
    try:
        info = json.loads((Path(run_dir) / RUN_JSON).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return info if isinstance(info, dict) else None


def check_resume(run_dir: str | Path, config: dict, environment: dict | None = None, *,
                 force: bool = False) -> list[str]:
    """Compare the new run's config (and environment, if given) with `run_dir`'s run.json.

    Returns the differences (empty when consistent, or when there is no readable run.json to
    compare with). Raises ResumeMismatch listing them unless `force`; with `force` the caller
    should print them as a warning."""
    info = recorded_run(run_dir)
    if info is None:
        return []
    differences = config_differences(info.get("config") or {}, config)
    if environment is not None:
        differences += environment_differences(info.get("environment") or {}, environment)
    if differences and not force:
        raise ResumeMismatch("--resume with settings that differ from the run being resumed: "
                             + "; ".join(differences), where=Path(run_dir) / RUN_JSON,
                             fix="rerun with the recorded settings, pass --force to mix them anyway, "
                                 "or choose another --output")
    return differences
