"""`fib profile`: run the timed calls in a child process under a profiler and attribute kernels.

The parent writes a spec, starts `python -m fib.profile.target <spec>` (under `nsys profile ...
--capture-range=cudaProfilerApi` for nsys, under `ncu --clock-control none --profile-from-start off
...` for ncu (see ncu.py), directly for torch.profiler), then reads the capture back (nsys: `nsys
export --type sqlite`; ncu: its raw-page CSV; torch: the chrome trace) and writes the run
directory's `profile/` tables (see tables.py; ncu also ncu_table.py's ncu.md) and `profile/meta.json`.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
from pathlib import Path

from ..errors import FibError
from . import ncu as ncu_mod
from . import nsys as nsys_mod
from ..analysis.attribution import StageRules
from ..analysis.nsys_sqlite import load_sqlite
from ..analysis.tables import declared_token_axes, write_tables
from ..analysis.torch_trace import load_torch_trace


BACKENDS = ("auto", "nsys", "torch", "ncu")
DEFAULT_ITERATIONS = {"nsys": 20, "torch": 20, "ncu": 1}  # ncu replays every kernel: one call is enough


def resolve_backend(backend: str) -> str:
    """auto: nsys when found, else torch.profiler (ncu is never chosen for you: it replays kernels)."""
    if backend not in BACKENDS:
        raise FibError(f"unknown backend {backend!r}", field="--backend", fix="use auto, nsys, torch or ncu")
    if backend == "auto":
        return "nsys" if nsys_mod.find_nsys() else "torch"
    return backend


def default_run_dir() -> Path:
    return Path("runs") / ("profile-" + _dt.datetime.now().strftime("%Y%m%d-%H%M%S"))


def environment() -> dict:
    env = {"host": socket.gethostname(), "platform": platform.platform(), "python": platform.python_version()}
    try:
        import torch
        env["torch"] = torch.__version__
        env["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            from ..env import _driver_version
            env["driver"] = _driver_version()
    except Exception:
        pass
    return env


def build_spec(*, backend: str, definitions, solutions, workloads, iterations: int, warmup: int,
               roots, seed: int, device: str, profile_dir: Path, demo: bool) -> dict:
    return {"backend": backend, "definitions": list(definitions or []), "solutions": list(solutions or []),
            "workloads": list(workloads) if workloads else None, "iterations": iterations,
            "warmup": warmup, "roots": [str(r) for r in roots or ["."]], "seed": seed, "device": device,
            "trace": str(profile_dir / "trace.json"), "result": str(profile_dir / "target_result.json"),
            "demo": demo}


def _child_env() -> dict:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the project, so `-m fib.profile.target` imports
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _read_result(path: Path, cmd: list[str], proc: subprocess.CompletedProcess) -> dict:
    if path.exists():
        result = json.loads(path.read_text())
        if "error" in result:
            raise FibError(f"the profiled child failed: {result['error']}\n  command: {shlex.join(cmd)}\n"
                           + result.get("traceback", "")[-3000:])
        if proc.returncode == 0:
            return result
    raise nsys_mod.failure("profiling", cmd, proc.returncode, proc.stderr, proc.stdout)


def _calls_from_result(result: dict):
    import pandas as pd
    return pd.DataFrame([(p["solution"], p["workload"], p["calls"]) for p in result["pairs"]],
                        columns=["solution", "workload", "calls"])


def _ncu_table_from_stdout(log_path: Path, stdout: str, meta: dict) -> None:
    """ncu writes its tables to --log-file; should a version print them to stdout instead, the
    table is taken from there (the reader skips the program's own lines before the header)."""
    header = '"Kernel Name"'
    if header in log_path.read_text(errors="replace") or header not in (stdout or ""):
        return
    log_path.rename(log_path.with_name("ncu_log.txt"))
    log_path.write_text(stdout)
    meta.setdefault("ncu_metric_notes", []).append("ncu printed its table to stdout, not to --log-file: read from there")


def read_floor(backend: str, floor: Path | None):
    """The ncu floor table of `--floor` (None without one), read before any profiling so that a
    bad floor file fails before minutes of capture."""
    if floor is None:
        return None
    if backend != "ncu":
        raise FibError("--floor is joined to the ncu table only", field="--floor", fix="add --backend ncu")
    from ..analysis.ncu_table import load_floor
    return load_floor(floor)


def profile(*, definitions, solutions, workloads=None, backend="auto", iterations: int | None = None, warmup=3,
            output: Path | None = None, roots=None, seed=0, device="cuda:0", demo=False,
            timeout: float | None = 3600, floor: Path | None = None, ncu_kernels: str | None = None,
            ncu_launch_count: int | None = None) -> Path:
    """Profile and attribute; returns the run directory. `iterations` None: the backend's default
    (DEFAULT_ITERATIONS). ncu only: `floor` (roofline.csv) joins the floor into ncu.md,
    `ncu_kernels` (a regex) and `ncu_launch_count` limit which kernels are profiled."""
    backend = resolve_backend(backend)
    iterations = DEFAULT_ITERATIONS[backend] if iterations is None else int(iterations)
    floor_table = read_floor(backend, floor)
    run_dir = Path(output) if output else default_run_dir()
    profile_dir = run_dir / "profile"
    profile_dir.mkdir(parents=True, exist_ok=True)
    spec = build_spec(backend=backend, definitions=definitions, solutions=solutions, workloads=workloads,
                      iterations=iterations, warmup=warmup, roots=roots, seed=seed, device=device,
                      profile_dir=profile_dir.resolve(), demo=demo)
    spec_path = profile_dir / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    target = [sys.executable, "-m", "fib.profile.target", str(spec_path.resolve())]
    meta = {"backend": backend, "iterations": iterations, "warmup": warmup, "spec": spec,
            "started": _dt.datetime.now().isoformat(timespec="seconds"), "environment": environment(),
            "argv": sys.argv}
    nsys_version = None
    if backend == "nsys":
        nsys = nsys_mod.require_nsys()
        nsys_version = nsys_mod.version(nsys)
        out = profile_dir / "capture"
        cmd = nsys_mod.profile_command(nsys, out, target)
    elif backend == "ncu":
        ncu = ncu_mod.require_ncu()
        available, why = ncu_mod.query_metrics(ncu)
        metrics, metric_notes = ncu_mod.select_metrics(available)
        if why:
            metric_notes.insert(0, why)
        ncu_csv_path = profile_dir / "ncu_raw.csv"
        ncu_csv_path.unlink(missing_ok=True)
        cmd = ncu_mod.profile_command(ncu, metrics, ncu_csv_path, target, kernel_regex=ncu_kernels,
                                      launch_count=ncu_launch_count)
        meta.update(ncu=ncu, ncu_version=ncu_mod.version(ncu), clock_control=ncu_mod.CLOCK_CONTROL,
                    ncu_metrics=metrics, ncu_metric_notes=metric_notes, ncu_csv=str(ncu_csv_path),
                    ncu_kernels=ncu_kernels, ncu_launch_count=ncu_launch_count)
    else:
        cmd = target
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_child_env())
    (profile_dir / "child.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if backend == "ncu" and (proc.returncode != 0 or not ncu_csv_path.exists()):
        log_text = ncu_csv_path.read_text(errors="replace") if ncu_csv_path.exists() else ""
        result_path = Path(spec["result"])
        if result_path.exists() and "error" in json.loads(result_path.read_text()):
            _read_result(result_path, cmd, proc)  # the child's own failure names what failed
        raise ncu_mod.failure("ncu profiling", cmd, proc.returncode, proc.stderr, proc.stdout, log_text)
    if backend == "ncu":
        _ncu_table_from_stdout(ncu_csv_path, proc.stdout, meta)
    result = _read_result(Path(spec["result"]), cmd, proc)
    rules = StageRules.from_stages([s for stages in result.get("stages", {}).values() for s in stages])
    if backend == "ncu":
        from ..analysis.ncu_csv import facts_notes, load_ncu_csv
        from ..analysis.ncu_table import write_report
        instances, facts = load_ncu_csv(ncu_csv_path, rules)
        calls = _calls_from_result(result)
        order = [s["name"] for stages in result.get("stages", {}).values() for s in stages]
        sm_count = (result.get("device") or {}).get("sm_count")
        axes = {p["workload"]: p["axes"] for p in result["pairs"]}
        notes = list(meta["ncu_metric_notes"]) + facts_notes(facts) + list(result.get("notes", []))
        ncu_paths = write_report(profile_dir, instances, calls, axes, floor=floor_table, stage_order=order,
                                 sm_count=sm_count, notes=notes, declared=declared_token_axes(result["pairs"]))
        meta.update(ncu_facts=facts, floor=str(floor) if floor else None,
                    ncu_report={k: str(v) for k, v in ncu_paths.items()})
    elif backend == "nsys":
        report = nsys_mod.find_report(out)
        sqlite = nsys_mod.export_sqlite(nsys, report)
        instances, calls = load_sqlite(sqlite, rules)
        meta.update(nsys=nsys, nsys_version=nsys_version, report=str(report), sqlite=str(sqlite))
    else:
        instances, calls = load_torch_trace(spec["trace"], rules)
        meta.update(trace=spec["trace"])
    axes = {p["workload"]: p["axes"] for p in result["pairs"]}
    tables = write_tables(profile_dir, instances, calls, axes, declared_token_axes(result["pairs"]))
    meta.update(command=shlex.join(cmd), calls_per_pair={f"{p['solution']}/{p['workload']}": p["calls"]
                                                          for p in result["pairs"]},
                pairs=result["pairs"], skipped=result.get("skipped", []), stages=result.get("stages", {}),
                notes=list(result.get("notes", [])),
                device=result.get("device"), finished=_dt.datetime.now().isoformat(timespec="seconds"),
                kernels_total=int(len(instances)),
                kernels_unlaunched=int(instances["category"].eq("outside").sum()),
                tables=sorted(f"{k}.csv" for k in tables))
    (profile_dir / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
    return run_dir

