"""The profiled child: `python -m fib.profile.target <spec.json>`.

Runs only the timed calls of each (solution, workload) pair, eagerly: no reference, no checks.
Warm-up calls run before the capture; then `cudaProfilerStart()` (nsys is started with
`--capture-range=cudaProfilerApi`, ncu with `--profile-from-start off`) or a torch.profiler session, `iterations` calls per pair each
inside the range `fib.call/<solution>/<workload uuid>` (NVTX domain "fib", and a
`record_function` under torch.profiler), then the capture stops. Solutions mark their stages
with `fib.stage`. The child writes `spec["result"]`: the pairs it ran (with their axes and call
counts, and the token axis their definition's family declares), the pairs it skipped and why, and
the definitions' stages.

Spec keys: backend ("nsys" | "ncu" | "torch"), roots, definitions, solutions, workloads (uuids or null),
iterations, warmup, seed, device, trace (torch: chrome trace path), result; or demo: true to run
fib.profile.demo's synthetic pipelines instead of a dataset. A solution named `SOLUTION@NAME`
(as `fib run --config/--sweep` name their variants) is SOLUTION called with its configuration
NAME; where NAME is not declared at a workload, that pair is skipped with the reason.
Every call goes through fib's SolutionCall, as in `fib run`.
"""
from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

from ..stages import stage
from ..analysis.attribution import call_range_name
from .job import Job




def _synchronize(device: str) -> None:
    import torch
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()


def run_jobs(jobs: list[Job], *, iterations: int, warmup: int, backend: str, device: str,
             trace: str | None = None) -> dict[tuple[str, str], int]:
    """Warm up every job, then capture `iterations` calls of each. Returns calls per pair."""
    import torch
    for job in jobs:
        for _ in range(warmup):
            job.call()
    _synchronize(device)
    calls: dict[tuple[str, str], int] = {}

    def capture():
        for job in jobs:
            if not job.in_call:
                job.call()
                continue
            name = call_range_name(job.solution, job.workload)
            for _ in range(iterations):
                with stage(name):
                    job.call()
            calls[(job.solution, job.workload)] = iterations
        _synchronize(device)

    if backend == "torch":
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            capture()
        prof.export_chrome_trace(str(trace))
    else:
        # torch.profiler cannot run inside this capture: nsys's CUPTI injection is the only
        # subscriber CUPTI allows (Kineto logs CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED and
        # records no GPU activity; tried on an H200, 2026-11-22).
        torch.cuda.cudart().cudaProfilerStart()
        try:
            capture()
        finally:
            torch.cuda.cudart().cudaProfilerStop()
    return calls


def declared_token_axis(definition, roots, notes: list[str]) -> str | None:
    """The TOKEN_AXIS of the definition's family, or None (no family; a bad family is noted and the
    reports guess the axis, as the judge keeps a run going without its floor)."""
    from ..errors import FibError
    from ..families import family_for
    try:
        family = family_for(definition, roots)
    except FibError as exc:
        notes.append(f"the token axis of '{definition.name}' is guessed: {exc}")
        return None
    return family.token_axis if family else None


def dataset_jobs(spec: dict, notes: list[str] | None = None) -> tuple[list[Job], list[dict], dict[str, list]]:
    """Jobs for the spec's definitions × solutions × workloads, through fib's core APIs."""
    from .. import dataset as fib_dataset
    from ..harness import inputs as fib_inputs
    from .. import solutions as fib_solutions
    from ..harness.call import SolutionCall, choose_config

    ds = fib_dataset.load_dataset([Path(r) for r in spec["roots"]])
    device = spec.get("device", "cuda:0")
    device_info = fib_solutions.device_info(device)
    jobs, skipped, stages = [], [], {}
    wanted = list(spec.get("workloads") or [])
    shared_inputs: dict[tuple[str, str], dict] = {}  # one input set per workload, shared by its solutions
    for def_name in spec["definitions"]:
        definition = ds.definitions[def_name]
        stages[def_name] = [s.model_dump() for s in definition.stages]
        root = ds.root_for(def_name)
        axis = declared_token_axis(definition, ds.roots, notes if notes is not None else [])
        for sol_name in spec["solutions"]:
            base, _, config_name = sol_name.partition("@") if sol_name not in ds.solutions.get(def_name, {}) \
                else (sol_name, "", "")
            solution = ds.solutions.get(def_name, {}).get(base)
            if solution is None:
                continue
            fn = None
            for workload in ds.workloads.get(def_name, []):
                if not fib_dataset.workload_matches(workload, wanted):
                    continue
                axes = definition.resolve_axes(workload.axes)
                reason = fib_solutions.unsupported_reason(solution, definition, axes, device_info)
                fn = fn or (None if reason else fib_solutions.load_entry(solution, definition))
                config = None
                if not reason and config_name:
                    module = None if solution.spec.language.native else sys.modules[fn.__module__]
                    config, reason = choose_config(module, base, config_name, axes)
                if reason:
                    skipped.append({"solution": sol_name, "workload": workload.uuid, "reason": reason})
                    continue
                key = (def_name, workload.uuid)
                if key not in shared_inputs:
                    # The same seed derivation as `fib run`, so both see the same inputs (and routing).
                    seed = fib_inputs.workload_seed(spec.get("seed", 0), workload)
                    shared_inputs[key] = fib_inputs.make_inputs(definition, workload, seed=seed, device=device,
                                                                root=root)
                call = SolutionCall(fn, solution, definition, axes, device, config=config)
                jobs.append(Job(sol_name, workload.uuid, call.bound(shared_inputs[key]), dict(workload.axes),
                                def_name, token_axis=axis))
    return jobs, skipped, stages


def main(argv: list[str]) -> int:
    from ..solutions import device_info
    spec = json.loads(Path(argv[0]).read_text())
    result_path = Path(spec["result"])
    notes: list[str] = []
    try:
        if spec.get("demo"):
            from .demo import demo_jobs
            jobs, skipped, stages = demo_jobs(spec.get("device", "cuda:0"))
        else:
            jobs, skipped, stages = dataset_jobs(spec, notes)
        calls = run_jobs(jobs, iterations=int(spec.get("iterations", 10)),
                         warmup=int(spec.get("warmup", 2)), backend=spec.get("backend", "nsys"),
                         device=spec.get("device", "cuda:0"), trace=spec.get("trace"))
    except Exception as exc:  # the parent reports this: it names what failed
        result_path.write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}",
                                           "traceback": traceback.format_exc()}))
        print(traceback.format_exc(), file=sys.stderr)
        return 1
    result = {
        "pairs": [{"definition": j.definition, "solution": j.solution, "workload": j.workload,
                   "axes": j.axes, "token_axis": j.token_axis, "calls": calls.get((j.solution, j.workload), 0)}
                  for j in jobs if j.in_call],
        "skipped": skipped, "notes": notes, "stages": stages, "device": device_info(spec.get("device", "cuda:0")),
    }
    result_path.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
