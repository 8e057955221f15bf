"""`fib profile`: run the timed calls in a child process under a profiler and attribute kernels.

The parent writes a spec, starts `python -m fib.profile.target <spec>` (under `nsys profile ...
--capture-range=cudaProfilerApi` for nsys, directly for torch.profiler), then reads the capture
back (nsys: `nsys export --type sqlite`; torch: the chrome trace) and writes the run directory's
`profile/` tables (see tables.py) and `profile/meta.json`.
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
from ..analysis import nsys as nsys_mod
from ..analysis.attribution import StageRules
from ..analysis.nsys_sqlite import load_sqlite
from ..analysis.tables import write_tables
from ..analysis.torch_trace import load_torch_trace


def resolve_backend(backend: str) -> str:
    if backend not in ("auto", "nsys", "torch"):
        raise FibError(f"unknown backend {backend!r}", field="--backend", fix="use auto, nsys or torch")
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


def profile(*, definitions, solutions, workloads=None, backend="auto", iterations=20, warmup=3,
            output: Path | None = None, roots=None, seed=0, device="cuda:0", demo=False,
            timeout: float | None = 3600) -> Path:
    """Profile and attribute; returns the run directory."""
    backend = resolve_backend(backend)
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
    else:
        cmd = target
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_child_env())
    (profile_dir / "child.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    result = _read_result(Path(spec["result"]), cmd, proc)
    rules = StageRules.from_stages([s for stages in result.get("stages", {}).values() for s in stages])
    if backend == "nsys":
        report = nsys_mod.find_report(out)
        sqlite = nsys_mod.export_sqlite(nsys, report)
        instances, calls = load_sqlite(sqlite, rules)
        meta.update(nsys=nsys, nsys_version=nsys_version, report=str(report), sqlite=str(sqlite))
    else:
        instances, calls = load_torch_trace(spec["trace"], rules)
        meta.update(trace=spec["trace"])
    axes = {p["workload"]: p["axes"] for p in result["pairs"]}
    tables = write_tables(profile_dir, instances, calls, axes)
    meta.update(command=shlex.join(cmd), calls_per_pair={f"{p['solution']}/{p['workload']}": p["calls"]
                                                          for p in result["pairs"]},
                pairs=result["pairs"], skipped=result.get("skipped", []), stages=result.get("stages", {}),
                device=result.get("device"), finished=_dt.datetime.now().isoformat(timespec="seconds"),
                kernels_total=int(len(instances)),
                kernels_unlaunched=int(instances["category"].eq("outside").sum()),
                tables=sorted(f"{k}.csv" for k in tables))
    (profile_dir / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
    return run_dir
