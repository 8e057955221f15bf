"""Where `fib profile` runs: here (fib.profile.driver) or on a cluster's GPUs (fib.profile.ray_profile),
chosen by `--cluster` and `--gpus` as for `fib run` (fib.harness.executor.cluster_choice)."""
from __future__ import annotations

from pathlib import Path

from ..errors import FibError
from .driver import default_run_dir, profile


def run_profile(*, cluster: str | None = None, gpus: list[str] | None = None, device: str | None = None,
                output: Path | None = None, **options) -> list[Path]:
    """`fib profile` here (`cluster` local) or on a cluster's GPUs (`ray[://ADDRESS]`, one profile per
    `gpus` kind, or one on any GPU: fib.profile.ray_profile). Returns the run directories written;
    `options` are profile()'s. Ray is imported only for a Ray cluster."""
    from ..harness.executor import cluster_choice
    engine, address, kinds = cluster_choice(cluster, gpus)
    if engine == "local":
        return [profile(output=output, device=device or "cuda:0", **options)]
    if device is not None:
        raise FibError("--device names a device of this host; on a cluster each profile runs on the GPU "
                       "Ray gives its actor", field="--device", fix="leave --device out; choose GPU kinds with --gpus")
    from .ray_profile import RayProfiler  # imports Ray
    return RayProfiler(address=address, gpu_kinds=kinds).profile(output=output or default_run_dir(), **options)
