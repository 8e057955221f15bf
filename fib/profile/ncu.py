"""Nsight Compute: find `ncu`, choose the metrics, build the profiling command line.

`fib profile --backend ncu` starts the profile target under

    ncu --clock-control none --profile-from-start off --nvtx --csv --page raw --print-units base
        --metrics <list> --log-file <profile>/ncu_raw.csv  python -m fib.profile.target spec.json

- `--clock-control none`, always: ncu's default locks the clocks to base, which makes every kernel
  look slower than it runs under fib's timers; fib never sets any other clock mode.
- `--profile-from-start off`: only kernels between the target's cudaProfilerStart/Stop (the timed
  calls, after warm-up) are profiled, so warm-up, input generation and JIT compilation cost no
  replay; `--iterations` (default 1 for ncu) bounds how many calls per pair are profiled.
- `--nvtx`: ncu records the NVTX push/pop stack of the launching thread for every kernel; the
  reader (ncu_csv.py) turns it into the same (solution, workload, stage) attribution as nsys.
- `--page raw --csv`: one row per profiled kernel, one column per metric, a unit row under the
  header; `--log-file` keeps ncu's output apart from the program's stdout.

Metrics: a core set known to exist on sm90 (tried on an H200) and optional ones taken only when
`ncu --query-metrics` lists them for the device (an unknown metric name makes ncu refuse the
whole run). Every failure raises NcuError naming the command and the tail of ncu's output.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from ..errors import FibError
from ..analysis.ncu_metrics import CORE_METRICS, MULTI_CANDIDATE_ROLES, OPTIONAL_METRICS
from .nsys import failure as _failure, find_tool, installed

CLOCK_CONTROL = "none"
FIXED_FLAGS = ["--clock-control", CLOCK_CONTROL, "--profile-from-start", "off", "--nvtx",
               "--csv", "--page", "raw", "--print-units", "base"]


_HINTS = {
    "ERR_NVGPUCTRPERM": "the GPU's performance counters need permission: run as root or load the driver "
                        "with NVreg_RestrictProfilingToAdminUsers=0",
    "Failed to find metric": "a metric is unknown to this ncu or GPU: check `ncu --query-metrics`",
    "No kernels were profiled": "nothing was profiled: did the target reach cudaProfilerStart(), and does "
                                "--ncu-kernels match any kernel?",
    "No CUDA": "no CUDA device or driver is visible to the profiled process",
    "cuInit": "no CUDA device or driver is visible to the profiled process",
}
_METRIC_NAME = re.compile(r"^([a-z][a-z0-9]*__[a-z0-9_]+)\b")


class NcuError(FibError):
    """An ncu step that failed: the message carries the command, exit code and output tail."""


def _search_paths() -> list[str]:
    """Install folders, newest version first within each pattern."""
    return installed(["/usr/local/cuda/bin/ncu", "/usr/local/cuda-*/bin/ncu", "/opt/nvidia/nsight-compute/*/ncu",
                      "/usr/local/cuda*/nsight-compute*/ncu", "/usr/local/NVIDIA-Nsight-Compute*/ncu",
                      "/opt/nvidia/nsight-compute*/ncu"])


SEARCHED = "$FIB_NCU, PATH, /usr/local/cuda*/bin/ncu, /opt/nvidia/nsight-compute/*/ncu, " \
           "/usr/local/cuda*/nsight-compute*/ncu, /usr/local/NVIDIA-Nsight-Compute*/ncu"


def find_ncu() -> str | None:
    """$FIB_NCU, then PATH, then the usual install folders."""
    return find_tool("FIB_NCU", "ncu", _search_paths)


def require_ncu() -> str:
    env = os.environ.get("FIB_NCU")
    if env and not Path(env).is_file():
        raise NcuError(f"FIB_NCU is set to {env!r}, which is not a file", field="FIB_NCU",
                       fix="point FIB_NCU at the ncu binary, or unset it to search the usual places")
    ncu = find_ncu()
    if not ncu:
        raise NcuError(f"ncu (Nsight Compute) not found (looked at {SEARCHED})",
                       fix="install Nsight Compute or set FIB_NCU to the ncu binary, or use --backend nsys|torch")
    return ncu


def version(ncu: str) -> str | None:
    try:
        out = subprocess.run([ncu, "--version"], capture_output=True, text=True, timeout=60)
        lines = [line for line in out.stdout.strip().splitlines() if line.strip()]
        return lines[-1].strip() if lines else None
    except Exception:
        return None


def parse_query_metrics(text: str) -> set[str]:
    """Base metric names (`dram__throughput`) from `ncu --query-metrics` output."""
    names = set()
    for line in text.splitlines():
        match = _METRIC_NAME.match(line.strip())
        if match:
            names.add(match.group(1))
    return names


def query_metrics(ncu: str, *, timeout: float = 120) -> tuple[set[str] | None, str | None]:
    """(base names the device supports, None) or (None, why the query failed)."""
    cmd = [ncu, "--query-metrics"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"`{' '.join(cmd)}` did not run: {exc}"
    names = parse_query_metrics(proc.stdout)
    if proc.returncode != 0 or not names:
        tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        return None, f"`{' '.join(cmd)}` exit code {proc.returncode}, {len(names)} metrics listed: {tail}"
    return names, None


def base_name(metric: str) -> str:
    return metric.split(".", 1)[0]


def select_metrics(available: set[str] | None) -> tuple[list[str], list[str]]:
    """(metrics to request, notes). Core metrics always; optional ones only where `available`
    (base names from --query-metrics) lists them; without a list, only the core set."""
    metrics = [names[0] for names in CORE_METRICS.values()]
    notes = []
    if available is None:
        notes.append("the device's metric list was not available: only the core metrics were requested "
                     f"({', '.join(OPTIONAL_METRICS)} left out)")
        return metrics, notes
    for role, candidates in OPTIONAL_METRICS.items():
        present = [m for m in candidates if base_name(m) in available]
        if not present:
            notes.append(f"{role}: none of {', '.join(candidates)} is listed for this device")
            continue
        metrics.extend(present if role in MULTI_CANDIDATE_ROLES else present[:1])
    return metrics, notes


def profile_command(ncu: str, metrics: list[str], log_file: Path, target: list[str], *,
                    kernel_regex: str | None = None, launch_count: int | None = None) -> list[str]:
    """The ncu command line that profiles the target's timed calls (see the module docstring)."""
    cmd = [ncu, *FIXED_FLAGS, "--metrics", ",".join(metrics), "--log-file", str(log_file)]
    if kernel_regex:
        cmd += ["--kernel-name", f"regex:{kernel_regex}"]
    if launch_count:
        cmd += ["--launch-count", str(int(launch_count))]
    return cmd + list(target)


def failure(what: str, cmd: list[str], returncode: int, stderr: str, stdout: str = "",
            log_text: str = "") -> NcuError:
    """ncu writes its own errors to the log file: its tail goes in the message with stderr's."""
    errors = "\n".join(line for line in log_text.splitlines() if line.startswith("==ERROR==") or
                       line.startswith("==WARNING=="))
    return _failure(what, cmd, returncode, (stderr or "") + ("\n" + errors if errors else ""), stdout,
                    hints=_HINTS, error=NcuError)
