"""The environment a run happened in: GPU, driver, CUDA, library versions, CPU, host, git commit."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

from .device import _torch_might_see_a_gpu, cuda_devices

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
    """The NVIDIA driver's version string (e.g. 580.159.04): NVML through ctypes, else nvidia-smi."""
    import ctypes
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
        if nvml.nvmlInit_v2() == 0:
            try:
                buf = ctypes.create_string_buffer(96)
                if nvml.nvmlSystemGetDriverVersion(buf, 96) == 0 and buf.value:
                    return buf.value.decode(errors="replace")
            finally:
                nvml.nvmlShutdown()
    except (OSError, AttributeError):
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def collect_environment() -> dict:
    """What run.json records about this machine. Without importing torch where the CUDA driver answers
    (torch's import, 2.4 s on an H200 machine, was on the path to a run's first job): torch's version
    and CUDA from its files, the GPUs from libcuda (fib.device), the driver from NVML."""
    from . import __version__
    libs = {name.replace("-python", ""): v for name in LIBS if (v := dist_version(name))}
    libs["python"] = platform.python_version()
    libs["fib"] = __version__
    env = {"cpu": _cpu_model(), "host": platform.node(), "platform": platform.platform(),
           "python_executable": sys.executable, "libs": libs, "cuda": _torch_cuda_version(), "gpu": None}
    gpu = _first_gpu()
    if gpu is None:
        env["hardware"] = f"CPU: {env['cpu']}"
        return env
    info, count, l2_bytes = gpu
    env["gpu"] = {k: info[k] for k in ("name", "sm", "memory_gb", "sm_count")}
    env["gpu"].update(count=count, driver=_driver_version(), l2_mb=round((l2_bytes or 0) / 2**20, 1))
    env["hardware"] = info["name"]
    return env


def _first_gpu() -> tuple[dict, int, int | None] | None:
    """(device_info of the first GPU, how many there are, its L2 bytes), or None without a GPU: from the
    driver (fib.device), or from torch where no libcuda answers but a ROCm driver is there."""
    devices = cuda_devices()
    if devices:
        return devices[0], len(devices), devices[0].get("l2_bytes")
    if devices is not None or not _torch_might_see_a_gpu():
        return None
    import torch
    if not torch.cuda.is_available():
        return None
    from .device import device_info
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0)
    return device_info("cuda:0"), torch.cuda.device_count(), l2


def _torch_cuda_version() -> str | None:
    """torch.version.cuda, read from torch/version.py without importing torch (imported: asked)."""
    if "torch" in sys.modules:
        return sys.modules["torch"].version.cuda
    import importlib.util
    import re
    try:
        spec = importlib.util.find_spec("torch")
        roots = list(spec.submodule_search_locations or []) if spec else []
        text = (Path(roots[0]) / "version.py").read_text() if roots else ""
    except (ImportError, OSError, ValueError):
        text = ""
    match = re.search(r"^cuda\s*(?::[^=]*)?=\s*(['\"])([^'\"]*)\1", text, re.M)
    if match:
        return match.group(2)
    if re.search(r"^cuda\s*(?::[^=]*)?=\s*None", text, re.M):
        return None
    import torch  # an unusual version.py: ask torch itself
    return torch.version.cuda


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
