"""`fib build`: run solutions' `fib_build()` hooks apart from evaluation, under their build budget.

`build_solution(solution, timeout_s=..., log_path=...)` runs the hook in a child process (its own
session, so a hang or a crash stays there and the compiler processes it started die with it when
the budget runs out), and returns a `BuildResult`:

- `built`: the hook returned (or a record says an identical build was done here before);
- `skipped`: the entry module has no `fib_build` hook, nothing to do;
- `unsupported`: `target_hardware`, `dependencies` or the module's `fib_supported` rule it out here;
- `failed`: the import or the hook raised, or the process died (reason and the log's tail);
- `timeout`: the budget (`spec.build_timeout_s` unless given) ran out and the process was killed.

A successful build leaves a small JSON record under `$FIB_CACHE_DIR/builds/` (default
`~/.cache/fib/builds/`), keyed by the solution's name, a hash of its sources and the environment
(torch and flashinfer versions, GPU name and SM), so a later `fib run` can tell with `find_build`
that the build is done. The hook's own artefacts (e.g. FlashInfer's JIT cache) live where the
library puts them; the record only says that the hook succeeded against these sources here.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from ..schema import Solution

BUILT, SKIPPED, UNSUPPORTED, FAILED, TIMEOUT = "built", "skipped", "unsupported", "failed", "timeout"
HOOK = "fib_build"
_KILL_GRACE_S = 2.0
_TAIL_CHARS = 4000


@dataclass
class BuildResult:
    solution: str
    status: str                      # built / skipped / unsupported / failed / timeout
    seconds: float = 0.0
    reason: Optional[str] = None
    log_tail: Optional[str] = None
    log_path: Optional[str] = None
    cached: bool = False             # built earlier: a matching record was found, nothing ran
    record_path: Optional[str] = None

    @property
    def ok(self) -> bool:
        """The solution may be evaluated (nothing left to build)."""
        return self.status in (BUILT, SKIPPED)

    def to_dict(self) -> dict:
        return asdict(self)


# ---- the record of successful builds ----------------------------------------------------------
def builds_dir() -> Path:
    from .inputs import cache_dir
    return cache_dir() / "builds"


def _source_texts(solution: Solution) -> list[tuple[str, str]]:
    texts = []
    for src in solution.sources:
        content = src.content
        if content is None and solution.root is not None and (solution.root / src.path).is_file():
            content = (solution.root / src.path).read_text()
        texts.append((src.path, content or ""))
    return sorted(texts)


def sources_hash(solution: Solution) -> str:
    """What the build depends on in the solution itself: its sources and how they are entered."""
    digest = hashlib.sha256()
    digest.update(f"{solution.spec.entry_point}\0{sorted(solution.spec.dependencies)}\0".encode())
    for path, content in _source_texts(solution):
        digest.update(f"{path}\0{len(content)}\0".encode())
        digest.update(content.encode())
    return digest.hexdigest()[:16]


def build_environment(device: str = "cuda") -> dict[str, Optional[str]]:
    """What else a build depends on: torch, flashinfer, and the GPU (name and SM) it was made for."""
    from ..env import dist_version
    from ..solutions import device_info
    info = device_info(device)
    gpu = f"{info['name']} sm{info['sm']}" if info["type"] == "cuda" else "cpu"
    return {"torch": dist_version("torch"), "flashinfer": dist_version("flashinfer-python", "flashinfer"),
            "gpu": gpu}


def build_key(solution: Solution, environment: dict) -> str:
    text = json.dumps({"solution": solution.label, "definition": solution.definition,
                       "sources": sources_hash(solution), "environment": environment}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _record_path(solution: Solution, environment: dict) -> Path:
    key = build_key(solution, environment)
    return builds_dir() / f"{_safe(solution.definition)}--{_safe(solution.safe_label)}--{key}.json"


def find_build(solution: Solution, *, environment: Optional[dict] = None, device: str = "cuda") -> Optional[dict]:
    """The record of a successful build of exactly these sources in this environment, or None.
    A compiled (C++/CUDA) solution's record is its library's, keyed by sources and toolchain
    (`fib.native.find`), so a wiped build folder is built again."""
    if solution.spec.language.native and environment is None:
        from ..native import find
        from ..solutions import device_info
        return find(solution, device_info(device))
    environment = environment if environment is not None else build_environment(device)
    path = _record_path(solution, environment)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    record["path"] = str(path)
    return record


def _write_record(solution: Solution, environment: dict, seconds: float) -> Path:
    path = _record_path(solution, environment)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"solution": solution.label, "definition": solution.definition,
              "sources_hash": sources_hash(solution), "environment": environment,
              "seconds": round(seconds, 3), "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)
    return path


def forget_build(solution: Solution, *, environment: Optional[dict] = None, device: str = "cuda") -> None:
    """Drop the record (e.g. after the library's own cache was wiped)."""
    environment = environment if environment is not None else build_environment(device)
    _record_path(solution, environment).unlink(missing_ok=True)


# ---- does the entry module define the hook? ---------------------------------------------------
def has_build_hook(solution: Solution) -> Optional[bool]:
    """Whether the entry file defines `fib_build` at top level: True, False, or None when only
    importing it can tell (a star import, unparsable text, sources not at hand). A compiled
    (C++/CUDA) solution always has a build: its compilation."""
    if solution.spec.language.native:
        return True
    entry = solution.entry_source()
    text = entry.content if entry is not None else None
    if text is None and solution.root is not None and (solution.root / solution.spec.entry_file).is_file():
        text = (solution.root / solution.spec.entry_file).read_text()
    if text is None:
        return None
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == HOOK:
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == HOOK for t in targets):
                return True
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    return None
                if (alias.asname or alias.name) == HOOK:
                    return True
        if isinstance(node, (ast.If, ast.Try, ast.With)):  # conditional definitions: ask the import
            if HOOK in ast.unparse(node):
                return None
    return False


# ---- running the hook -------------------------------------------------------------------------
def _json_reason(solution: Solution, info: dict, any_hardware: bool = False) -> Optional[str]:
    """Why the solution's JSON (target_hardware, dependencies) rules it out here, or None. A build
    is not for one shape: shape_constraints are left to each workload."""
    from ..solutions import unsupported_reason
    spec = solution.spec.model_copy(update={"shape_constraints": []})
    return unsupported_reason(solution.model_copy(update={"spec": spec}), None, {}, info, any_hardware=any_hardware)


def _tail(path: Optional[Path], start: int = 0) -> str:
    if path is None or not path.is_file():
        return ""
    with open(path, "rb") as handle:
        handle.seek(start)
        data = handle.read()
    return data.decode(errors="replace")[-_TAIL_CHARS:]


def _kill_group(proc: subprocess.Popen) -> None:
    """End the build process and everything it started (it leads its own process group)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=_KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    try:  # the leader if it ignored SIGTERM, and any compiler processes left in its group
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def build_solution(solution: Solution, *, timeout_s: Optional[float] = None, log_path: Optional[Path] = None,
                   progress: Optional[Callable[[float], None]] = None, progress_interval_s: float = 0.5,
                   force: bool = False, device: str = "cuda", any_hardware: bool = False) -> BuildResult:
    """Run the solution's `fib_build()` hook in a child process under `timeout_s` (default
    `spec.build_timeout_s`).

    In order, without starting a process: no hook in the entry file -> `skipped`; the JSON's
    `target_hardware`/`dependencies` rule out `device` -> `unsupported`; a record of an earlier
    success with these sources in this environment -> `built` with `cached=True` (unless `force`).
    Otherwise the child imports the entry module (failure -> `failed`), asks its `fib_supported`
    (a reason -> `unsupported`) and runs the hook. `progress(elapsed_s)` is called every
    `progress_interval_s` while it runs; if it raises (e.g. KeyboardInterrupt), the child and
    everything it started are killed before the exception propagates. The child's output is
    appended to `log_path`, default `$FIB_CACHE_DIR/builds/logs/<solution>.log`."""
    from ..solutions import device_info
    name = solution.label
    if has_build_hook(solution) is False:
        return BuildResult(name, SKIPPED, reason=f"{solution.spec.entry_file} defines no {HOOK}()")
    reason = _json_reason(solution, device_info(device), any_hardware)
    if reason:
        return BuildResult(name, UNSUPPORTED, reason=reason)
    environment = build_environment(device)
    if not force:
        record = find_build(solution, device=device) if solution.spec.language.native else \
            find_build(solution, environment=environment)
        if record is not None:
            return BuildResult(name, BUILT, cached=True, record_path=record["path"],
                               reason=f"built before ({record.get('built_at', '?')}, {record.get('seconds', '?')} s)")

    budget = float(timeout_s if timeout_s is not None else solution.spec.build_timeout_s)
    log_path = Path(log_path) if log_path is not None else builds_dir() / "logs" / f"{_safe(name)}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fib-build-") as scratch:
        request = Path(scratch) / "request.json"
        result_file = Path(scratch) / "result.json"
        request.write_text(json.dumps({
            "solution": json.loads(solution.model_dump_json()),
            "root": str(solution.root) if solution.root is not None else None,
            "file": str(solution.file) if solution.file is not None else None,
            "namespaced": solution.namespaced, "force": force, "any_hardware": any_hardware,
            "device": device, "result": str(result_file)}))
        env = dict(os.environ)
        env.update(solution.spec.worker_environment(env))  # what its worker would start with
        package_parent = str(Path(__file__).resolve().parents[2])  # the folder holding the fib package
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        with open(log_path, "ab") as log:
            log.write(f"\n==== fib build {solution.definition}/{name} "
                      f"{datetime.now().isoformat(timespec='seconds')} budget {budget:g} s ====\n".encode())
            log.flush()
            log_start = log.tell()
            started = time.monotonic()
            proc = subprocess.Popen([sys.executable, "-c", "import sys; from fib.harness.build import _child_main; "
                                     "sys.exit(_child_main(sys.argv[1]))", str(request)],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True)
            timed_out = False
            try:
                while True:
                    elapsed = time.monotonic() - started
                    remaining = budget - elapsed
                    if remaining <= 0:
                        timed_out = True
                        break
                    try:
                        proc.wait(timeout=min(progress_interval_s, remaining))
                        break
                    except subprocess.TimeoutExpired:
                        if progress is not None:
                            progress(time.monotonic() - started)
            finally:
                if timed_out or proc.poll() is None:
                    _kill_group(proc)
            seconds = time.monotonic() - started
        tail = _tail(log_path, log_start)
        common = dict(seconds=seconds, log_path=str(log_path))
        if timed_out:
            return BuildResult(name, TIMEOUT, reason=f"{HOOK}() ran past its budget of {budget:g} s and was killed",
                               log_tail=tail, **common)
        try:
            outcome = json.loads(result_file.read_text())
        except (OSError, ValueError):
            code = proc.returncode
            how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
            return BuildResult(name, FAILED, reason=f"the build process {how} before reporting", log_tail=tail, **common)
    status, reason = outcome["status"], outcome.get("reason")
    if status == BUILT:
        record = _write_record(solution, environment, seconds)
        return BuildResult(name, BUILT, record_path=str(record), **common)
    return BuildResult(name, status, reason=reason, log_tail=tail if status == FAILED else None, **common)


# ---- the child process ------------------------------------------------------------------------
def _child_build(request: dict) -> dict:
    from ..solutions import device_info, hook_reason, import_entry_module
    solution = Solution.model_validate(request["solution"])
    if request.get("root"):
        solution.attach_root(Path(request["root"]))
    if request.get("file"):
        solution.file = Path(request["file"])
    solution.namespaced = bool(request.get("namespaced"))
    info = device_info(request.get("device") or "cuda")
    reason = _json_reason(solution, info, bool(request.get("any_hardware")))  # the child's view decides
    if reason:
        return {"status": UNSUPPORTED, "reason": reason}
    if solution.spec.language.native:
        return _child_compile(solution, info, force=bool(request.get("force")))
    try:
        module = import_entry_module(solution)
    except Exception as exc:
        traceback.print_exc()
        return {"status": FAILED, "reason": f"import failed: {exc}"}
    try:
        reason = hook_reason(module, info, {})
    except Exception as exc:
        traceback.print_exc()
        return {"status": FAILED, "reason": f"fib_supported raised {type(exc).__name__}: {exc}"}
    if reason:
        return {"status": UNSUPPORTED, "reason": reason}
    hook = getattr(module, HOOK, None)
    if not callable(hook):
        return {"status": SKIPPED, "reason": f"{solution.spec.entry_file} defines no {HOOK}()"}
    print(f"[fib build] running {solution.name}.{HOOK}() on {info.get('name')}", flush=True)
    try:
        hook()
    except BaseException as exc:  # SystemExit and KeyboardInterrupt from a hook are failures too
        traceback.print_exc()
        return {"status": FAILED, "reason": f"{HOOK}() raised {type(exc).__name__}: {exc}"}
    print(f"[fib build] {solution.name}.{HOOK}() done", flush=True)
    return {"status": BUILT}


def _child_compile(solution: Solution, info: dict, *, force: bool) -> dict:
    """A C++/CUDA solution's build: the compiler, run here so the budget's kill takes it along."""
    import shutil
    from .. import native
    from ..errors import FibError
    if force:
        shutil.rmtree(native.build_dir(solution, info), ignore_errors=True)
    try:
        built = native.load_entry(solution, info)
    except FibError as err:
        return {"status": FAILED, "reason": err.message + (f" (fix: {err.fix})" if err.fix else "")}
    print(f"[fib build] {solution.label}: {built.library} ({'cached' if built.cached else 'compiled'})", flush=True)
    return {"status": BUILT}


def _child_main(request_path: str) -> int:
    request = json.loads(Path(request_path).read_text())
    try:
        outcome = _child_build(request)
    except BaseException as exc:
        traceback.print_exc()
        outcome = {"status": FAILED, "reason": f"{type(exc).__name__}: {exc}"}
    result = Path(request["result"])
    tmp = result.with_suffix(".tmp")
    tmp.write_text(json.dumps(outcome))
    os.replace(tmp, result)
    sys.stdout.flush()
    sys.stderr.flush()
    return 0
