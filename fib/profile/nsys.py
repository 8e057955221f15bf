"""Nsight Systems: find the binary, profile a command, export SQLite, run stats reports.

Every failure raises NsysError naming the command, its exit code and the tail of its stderr,
with the usual causes spelled out (libdw missing, no CUDA, nothing captured).
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable

from ..errors import FibError

PROFILE_FLAGS = ["--trace", "cuda,nvtx", "--capture-range=cudaProfilerApi",
                 "--capture-range-end=stop", "--force-overwrite", "true"]
_HINTS = {
    "libdw": "nsys needs libdw: install libdw1 (on the GPU machine: `source .device/activate.sh`)",
    "No CUDA": "no CUDA device or driver is visible to the profiled process",
    "cuInit": "no CUDA device or driver is visible to the profiled process",
    "No reports were generated": "nothing was captured: did the target call cudaProfilerStart()?",
    "does not contain": "nothing was captured: did the target call cudaProfilerStart()?",
}


class NsysError(FibError):
    """An nsys step that failed: the message carries the command, exit code and stderr tail."""


NSYS_PATTERNS = ("/opt/nvidia/nsight-systems*/**/nsys", "/opt/nvidia/nsight-compute/*/host/target-linux-x64/nsys",
                 "/usr/local/cuda*/bin/nsys")
SEARCHED = ", ".join(("$FIB_NSYS", "PATH") + NSYS_PATTERNS)


def installed(patterns) -> list[str]:
    """The files matching each glob pattern (`**` recurses), newest version first within a pattern,
    without repeats."""
    found: list[str] = []
    for pattern in patterns:
        for path in sorted(glob.glob(pattern, recursive=True), reverse=True):
            if path not in found:
                found.append(path)
    return found


def find_tool(variable: str, name: str, candidates: Callable[[], list[str]]) -> str | None:
    """A profiler's binary: $variable (a file), then `name` on PATH, then the first executable of
    `candidates()` (install folders, listed only when needed); None when none is there."""
    env = os.environ.get(variable)
    if env and Path(env).is_file():
        return env
    on_path = shutil.which(name)
    if on_path:
        return on_path
    for path in candidates():
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def find_nsys() -> str | None:
    """$FIB_NSYS, then PATH, then the usual install folders (the newest version first)."""
    return find_tool("FIB_NSYS", "nsys", lambda: installed(NSYS_PATTERNS))



def require_nsys() -> str:
    nsys = find_nsys()
    if not nsys:
        raise NsysError(f"nsys not found (looked at {SEARCHED})",
                        fix="set FIB_NSYS to the nsys binary, or use --backend torch")
    return nsys


def failure(what: str, cmd: list[str], returncode: int, stderr: str, stdout: str = "", *,
            hints: dict[str, str] | None = None, error: type[FibError] = NsysError) -> FibError:
    """The error of a failed profiler step; `hints` maps text seen in its output to a likely cause."""
    tail = "\n".join((stderr or stdout or "").strip().splitlines()[-15:])
    found = sorted({hint for key, hint in (_HINTS if hints is None else hints).items()
                    if key in (stderr or "") + (stdout or "")})
    text = f"{what} failed (exit code {returncode})\n  command: {' '.join(cmd)}\n  stderr tail:\n    " + \
        tail.replace("\n", "\n    ")
    return error(text, fix="; ".join(found) or None)


def run_checked(what: str, cmd: list[str], *, timeout: float | None = None, env=None) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except FileNotFoundError as exc:
        raise NsysError(f"{what}: cannot execute {cmd[0]}: {exc.strerror}") from None
    except subprocess.TimeoutExpired as exc:
        raise NsysError(f"{what} timed out after {timeout} s\n  command: {' '.join(cmd)}") from None
    if proc.returncode != 0:
        raise failure(what, cmd, proc.returncode, proc.stderr, proc.stdout)
    return proc


def version(nsys: str) -> str | None:
    try:
        out = subprocess.run([nsys, "--version"], capture_output=True, text=True, timeout=60)
        return out.stdout.strip() or None
    except Exception:
        return None


def profile_command(nsys: str, output: Path, target: list[str]) -> list[str]:
    """The `nsys profile` command line that captures between cudaProfilerStart/Stop."""
    return [nsys, "profile", *PROFILE_FLAGS, "-o", str(output), *target]


def find_report(output: Path) -> Path:
    rep = output.with_suffix(".nsys-rep") if output.suffix != ".nsys-rep" else output
    if rep.exists():
        return rep
    found = sorted(output.parent.glob(output.name + "*.nsys-rep"))  # capture ranges may number them
    if found:
        return found[0]
    raise NsysError(f"nsys wrote no report at {rep}",
                    fix="nothing was captured: did the target reach cudaProfilerStart()?")


def export_sqlite(nsys: str, report: Path, *, timeout: float | None = 1800) -> Path:
    sqlite = report.with_suffix(".sqlite")
    run_checked("nsys export", [nsys, "export", "--type", "sqlite", "--force-overwrite", "true",
                                "-o", str(sqlite), str(report)], timeout=timeout)
    if not sqlite.exists():
        raise NsysError(f"nsys export reported success but wrote no {sqlite}")
    return sqlite


def stats_csv(nsys: str, report: Path, name: str, out_prefix: Path, *, timeout: float | None = 1800) -> Path:
    """`nsys stats --report name --format csv` into `<out_prefix>_<name>.csv`."""
    run_checked(f"nsys stats --report {name}",
                [nsys, "stats", "--report", name, "--format", "csv", "--force-export", "true",
                 "--force-overwrite", "true", "-o", str(out_prefix), str(report)], timeout=timeout)
    found = sorted(out_prefix.parent.glob(f"{out_prefix.name}*{name}*.csv"))
    if not found:
        raise NsysError(f"nsys stats wrote no CSV for {name} next to {out_prefix}")
    return found[0]
