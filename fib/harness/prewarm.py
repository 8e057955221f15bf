"""JIT pre-warming: once a solution's first pair on a GPU showed that its first calls compile (or from
the first pair, with --jit-workers N), a few extra processes make each remaining workload's inputs and
call the solution once, so the JIT compilations its first calls trigger (Triton: one per
kernel specialization, ~0.5 s each, 55 of them for triton_fused on the 19 DeepSeek workloads) run in
parallel and land in the on-disk caches; the solution's own worker then finds them there.

Nothing here is judged or timed, and nothing it does reaches a trace: a failure is printed to the
solution's prewarm log and the worker meets it again under its normal budgets. The runner holds the
solution's first job on that device until every pre-warm process has finished or was killed, so no
pre-warm call overlaps a timed call there (the judge may compute references meanwhile, as it does
beside a worker's first calls).

Child side: `prewarm_main(channel, args)`, args = a worker's args plus `jobs` [{definition, workload,
root, seed}]; it answers one `prewarmed{done: [uuid], failed: {uuid: reason}, seconds}`.
"""
from __future__ import annotations

import os
import time
import traceback
from pathlib import Path

from .child import Channel

# at most this many pre-warm processes per solution and device, and at least this many workloads each
MAX_WORKERS = 8
MIN_WORKLOADS_EACH = 2
GIB_PER_WORKER = 16  # device memory a pre-warm process may hold (inputs, outputs, compile scratch)
# By default (no --jit-workers) a solution is pre-warmed only when its first pair's first call took
# longer than this: it compiled, so the rest will too. A warm run's first calls load kernels from the
# cache (triton_fused: 0.5 s for the first, ~30 ms later), and pre-warm processes would only cost
# their start-up there.
SLOW_FIRST_CALL_S = 1.5


def worker_count(setting: int | None, n_workloads: int, device: str, *, cpus: int | None = None,
                 device_gib: float | None = None, n_devices: int = 1) -> int:
    """How many pre-warm processes for `n_workloads` on `device`: `setting` when given (0: none),
    else none on a CPU, and on a GPU up to MAX_WORKERS, half the CPUs shared by the devices, one
    per GIB_PER_WORKER of device memory and one per MIN_WORKLOADS_EACH workloads."""
    if setting is not None:
        return max(0, min(setting, n_workloads))
    if not device.startswith("cuda") or n_workloads < 2 * MIN_WORKLOADS_EACH:
        return 0
    cpus = cpus if cpus is not None else (os.cpu_count() or 1)
    limit = min(MAX_WORKERS, cpus // (2 * max(1, n_devices)), n_workloads // MIN_WORKLOADS_EACH)
    if device_gib is not None:
        limit = min(limit, int(device_gib // GIB_PER_WORKER))
    return max(0, limit)


def split(items: list, parts: int) -> list[list]:
    """`items` in `parts` contiguous chunks of near-equal size (neighbours stay together: workloads
    sorted by size share their kernels' specializations within a chunk)."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for k in range(parts):
        end = start + size + (1 if k < extra else 0)
        out.append(items[start:end])
        start = end
    return out


def prewarm_main(channel: Channel, args: dict) -> None:
    """Child side: build the solution once, then per job make the inputs and call once."""
    import torch
    from .. import solutions as sol_mod
    from ..schema import Definition, Workload
    from .call import SolutionCall, choose_config
    from .evaluate import sync
    from .inputs import make_inputs
    from .worker import SolutionWorker
    t0 = time.perf_counter()
    worker = SolutionWorker(channel, args)
    if worker.device.startswith("cuda"):
        torch.cuda.set_device(worker.device)
    done, failed = [], {}
    for job in args["jobs"]:
        definition = Definition.model_validate(job["definition"])
        workload = Workload.model_validate(job["workload"])
        axes = definition.resolve_axes(workload.axes)
        try:
            info = sol_mod.device_info(worker.device)
            reason = sol_mod.unsupported_reason(worker.solution, definition, axes, info,
                                                any_hardware=worker.config.any_hardware)
            verdict = None if reason else worker.build(info, axes)
            if reason or verdict:
                failed[workload.uuid] = reason or f"{verdict[0]}: {verdict[1]}"
                continue
            config = None
            variant = worker.config.variants.get(worker.solution.name)
            if variant is not None:
                config, why = choose_config(worker.module, variant.solution, variant.config, axes)
                if why:
                    failed[workload.uuid] = why
                    continue
            call = SolutionCall(worker.function, worker.solution, definition, axes, worker.device, config=config)
            inputs = make_inputs(definition, workload, seed=job["seed"], device=worker.device,
                                 root=Path(job["root"]))
            call(inputs)
            sync(worker.device)
            del inputs
            done.append(workload.uuid)
        except Exception as exc:  # the worker meets it again, under its budgets, and reports it
            traceback.print_exc()
            failed[workload.uuid] = f"{type(exc).__name__}: {exc}"[:500]
        finally:
            if worker.device.startswith("cuda"):
                torch.cuda.empty_cache()
    channel.send("prewarmed", done=done, failed=failed, seconds=time.perf_counter() - t0)
