"""Which commit a run records: git's own answer, unless the sender names the commit."""
import subprocess

from fib.env import git_info


def test_fib_git_commit_wins_over_a_stale_git(tmp_path, monkeypatch):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "f").write_text("x")
    subprocess.run(["git", "-C", str(tmp_path), "add", "f"], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "m"],
                   check=True)
    own = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    monkeypatch.delenv("FIB_GIT_COMMIT", raising=False)
    assert git_info(tmp_path)["commit"] == own
    monkeypatch.setenv("FIB_GIT_COMMIT", "b" * 40)
    info = git_info(tmp_path)
    assert info["commit"] == "b" * 40 and info["source"] == "FIB_GIT_COMMIT"


def test_no_git_and_nobody_said(tmp_path, monkeypatch):
    monkeypatch.delenv("FIB_GIT_COMMIT", raising=False)
    assert git_info(tmp_path / "nowhere")["commit"] is None


def test_environment_of_a_gpu_machine_is_collected_without_importing_torch():
    """The run's parent collects run.json's environment while its children start: GPUs from the driver,
    torch's version and CUDA from its files, so the parent never pays for torch's import (2.4 s on an
    H200 machine, once the longest step before a run's first job). Here the driver is faked."""
    import subprocess
    import sys
    code = """
import sys, json
import fib.env as env
env.cuda_devices = lambda: ({"name": "NVIDIA H200", "sm": 90, "memory_gb": 139.8, "sm_count": 132,
                              "l2_bytes": 60 * 2**20},) * 2
env._driver_version = lambda: "580.159.04"
e = env.collect_environment()
print(json.dumps({"torch": "torch" in sys.modules, "gpu": e["gpu"], "hardware": e["hardware"], "cuda": e["cuda"]}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    got = __import__("json").loads(out.stdout.strip().splitlines()[-1])
    assert got["torch"] is False
    assert got["hardware"] == "NVIDIA H200"
    assert got["gpu"] == {"name": "NVIDIA H200", "sm": 90, "memory_gb": 139.8, "sm_count": 132, "count": 2,
                          "driver": "580.159.04", "l2_mb": 60.0}
    import torch
    assert got["cuda"] == torch.version.cuda  # read from torch/version.py: the same answer
