"""The environment a run happened in: GPU, driver, CUDA, library versions, CPU, host, git commit."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

LIBS = ("torch", "triton", "flashinfer-python", "numpy", "pydantic", "nvtx")


def dist_version(*names: str) -> str | None:
    """The installed version of the first of these distributions that is installed, else None."""
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def collect_environment() -> dict:
    import torch
    from . import __version__
    libs = {name.replace("-python", ""): v for name in LIBS if (v := dist_version(name))}
    libs["python"] = platform.python_version()
    libs["fib"] = __version__
    env = {"cpu": _cpu_model(), "host": platform.node(), "platform": platform.platform(),
           "python_executable": sys.executable, "libs": libs, "cuda": torch.version.cuda, "gpu": None}
    if torch.cuda.is_available():
        from .device import device_info
        info = device_info("cuda:0")
        env["gpu"] = {k: info[k] for k in ("name", "sm", "memory_gb", "sm_count")}
        env["gpu"].update(count=torch.cuda.device_count(), driver=_driver_version(),
                          l2_mb=round(getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0) / 2**20, 1))
        env["hardware"] = info["name"]
    else:
        env["hardware"] = f"CPU: {env['cpu']}"
    return env


def git_info(path: Path) -> dict:
    def git(*args):
        try:
            out = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=10)
            return out.stdout.strip() if out.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            return None
    if os.environ.get("FIB_GIT_COMMIT"):
        # The sender says which commit this tree is (a working tree shipped to a GPU machine may
        # carry a stale .git of its own: a run there once recorded the session's first commit).
        return {"commit": os.environ["FIB_GIT_COMMIT"], "branch": os.environ.get("FIB_GIT_BRANCH"),
                "dirty": None, "source": "FIB_GIT_COMMIT"}
    commit = git("rev-parse", "HEAD")
    if commit is None:  # a copy without .git, and nobody said
        return {"commit": None, "branch": None, "dirty": None, "source": None}
    return {"commit": commit, "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def cache_dir() -> Path:
    return Path(os.environ.get("FIB_CACHE_DIR", Path.home() / ".cache" / "fib"))
