"""Where a run's (solution, workload) pairs are evaluated: the one seam between `fib run` and an
execution engine.

An executor takes the validated plan and a run directory and returns the run's RunResult; what it
must keep is the run directory's contract (run.json, traces.jsonl appended one fsynced line per
pair, logs/, `--resume` skipping what is traced) and fib's own worker logic: every engine ends up
running `fib.harness.runner.Runner` with its worker and judge children next to the device, so the
isolation, budgets, fresh check and statuses of a local run hold wherever the device is.

- `LocalExecutor`: today's behaviour, the Runner over this host's devices.
- `fib.harness.ray_executor.RayExecutor` (`--cluster ray[://ADDRESS]`): one Ray actor per GPU runs
  the Runner on its node; imported only when asked for, so a local run never imports Ray.

Another engine (Slurm arrays, Kubernetes jobs) is one more class with this `run` method; neither
the worker, the judge nor the Runner change. `fib profile --cluster` goes through the same choice
(`cluster_choice`) and the same Ray machinery (`RayCluster`), with a profiling actor
(fib.profile.ray_profile).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

from ..errors import ClusterError


class Executor(Protocol):
    name: str

    def run(self, data, plan, run_dir: Path, *, resume: bool = False, command: list[str] | None = None,
            on_trace: Callable | None = None, on_phase: Callable | None = None,
            on_warning: Callable | None = None):
        """Evaluate the plan's pairs not yet in `run_dir` (with `resume`) and return the RunResult."""


class LocalExecutor:
    """The pairs on this host's devices (`plan.devices`), one Runner, as `fib run` always did."""
    name = "local"

    def run(self, data, plan, run_dir: Path, *, resume: bool = False, command: list[str] | None = None,
            on_trace=None, on_phase=None, on_warning=None):
        from .runner import Runner
        runner = Runner(data, plan, run_dir, on_trace=on_trace, on_phase=on_phase, on_warning=on_warning)
        return runner.run(resume=resume, command=command)


def parse_cluster(text: str | None) -> tuple[str, str | None]:
    """('local', None), ('ray', None) for Ray's own address rules (RAY_ADDRESS, else a new local
    instance), or ('ray', ADDRESS) for `ray://ADDRESS` (`ray://auto`: the cluster `ray start` runs
    on this host; `ray://HOST:10001`: a Ray Client server)."""
    value = (text or "local").strip()
    if value == "local":
        return "local", None
    if value == "ray":
        return "ray", None
    if value.startswith("ray://") and len(value) > len("ray://"):
        rest = value[len("ray://"):]
        return "ray", "auto" if rest == "auto" else value
    raise ClusterError(f"unknown cluster {value!r}", field="--cluster",
                       fix="use local, ray, ray://auto or ray://HOST:PORT")


def parse_gpu_kinds(values: list[str] | None) -> list[str]:
    """`--gpus H100,H200` as Ray accelerator types (node resource `accelerator_type:<KIND>`)."""
    kinds = []
    for value in values or []:
        for kind in value.split(","):
            kind = kind.strip()
            if not kind:
                continue
            if not all(c.isalnum() or c in "-_." for c in kind):
                raise ClusterError(f"{kind!r} is not a GPU kind", field="--gpus",
                                   fix="name Ray accelerator types, e.g. --gpus H100,H200")
            if kind not in kinds:
                kinds.append(kind)
    return kinds


def cluster_choice(cluster: str | None, gpus: list[str] | None = None) -> tuple[str, str | None, list[str]]:
    """(engine, address, GPU kinds) for `--cluster` and `--gpus`, checked: kinds only on a cluster,
    and Ray importable when the cluster is Ray's (`fib run` and `fib profile` both ask here)."""
    engine, address = parse_cluster(cluster)
    kinds = parse_gpu_kinds(gpus)
    if engine == "local" and kinds:
        raise ClusterError("--gpus selects GPU kinds of a cluster", field="--gpus",
                           fix="add --cluster ray (or use --devices for this host's GPUs)")
    if engine == "ray":
        try:
            import ray  # noqa: F401  (here, so the error is clear; without --cluster ray nothing imports it)
        except ImportError as exc:
            raise ClusterError(f"--cluster {cluster} needs Ray, which cannot be imported ({exc})",
                               field="--cluster", fix="pip install 'fib[ray]'") from None
    return engine, address, kinds


def executor_for(cluster: str | None, gpus: list[str] | None = None, **options) -> Executor:
    """The executor for `--cluster` (and `--gpus`, which only a cluster understands)."""
    engine, address, kinds = cluster_choice(cluster, gpus)
    if engine == "local":
        return LocalExecutor()
    from .ray_executor import RayExecutor
    return RayExecutor(address=address, gpu_kinds=kinds, **options)


__all__ = ["ClusterError", "Executor", "LocalExecutor", "cluster_choice", "executor_for", "parse_cluster",
           "parse_gpu_kinds"]
