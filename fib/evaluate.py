"""Evaluate one solution on one prepared workload: build, check, time, check again.

Runs inside a worker process (fib/worker.py); everything here may crash or hang, which is why the
worker reports its phase before each step: the parent applies the build budget to "build" and the
run timeout to "evaluate", and kills the worker when either runs out.
"""
from __future__ import annotations

import contextlib
import sys
import datetime as _dt
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from . import solutions as sol_mod
from .check import CheckResult, check_outputs, modified_inputs
from .errors import FibError
from .inputs import ReferenceCache, clone_inputs, input_bytes, make_inputs, move_inputs, workload_seed
from .schema import Correctness, Definition, Evaluation, Performance, Solution, Status, Tolerance, Trace, Workload
from .profile.attribution import call_range_name
from .stages import harness_stage, stage

CUDA_FATAL = ("illegal memory access", "device-side assert", "unspecified launch failure",
              "misaligned address", "CUDA error: an illegal instruction", "CUBLAS_STATUS_EXECUTION_FAILED")


@dataclass
class RunSettings:
    atol: float | None = None
    rtol: float | None = None
    required_matched_ratio: float | None = None
    warmup_runs: int = 10
    iterations: int = 50
    num_trials: int = 3
    timer: str = "auto"
    seed: int = 0
    input_copies: int = 0  # 0: choose from the input size
    flush_l2: bool = True
    fresh_check: bool = True
    also_check: list = field(default_factory=list)  # Tolerance or [atol, rtol, required_matched_ratio]

    def tolerances(self, definition: Definition) -> Tolerance:
        """The definition's tolerance with the given atol / rtol / matched ratio overriding its own
        (fib.schema.Tolerance's defaults where the definition has none); the scale-free bounds
        come from the definition."""
        base = definition.tolerance or Tolerance()
        overrides = {k: v for k, v in (("atol", self.atol), ("rtol", self.rtol),
                                       ("required_matched_ratio", self.required_matched_ratio)) if v is not None}
        if not overrides:
            return base
        name = f"{base.name} with command-line overrides" if base.name else None
        return Tolerance.model_validate({**base.model_dump(exclude={"name"}), **overrides, "name": name})

    def also_tolerances(self) -> list[Tolerance]:
        return [t if isinstance(t, Tolerance) else
                Tolerance(atol=t[0], rtol=t[1], required_matched_ratio=t[2]) for t in self.also_check]


class FatalDeviceError(Exception):
    """The CUDA context is unusable after this; the worker must be replaced."""


@dataclass
class Prepared:
    """A workload's inputs and reference, shared by every solution evaluated on it."""
    definition: Definition
    workload: Workload
    axes: dict[str, int]
    seed: int
    inputs: dict[str, Any]
    references: list[torch.Tensor]
    reference_seconds: float
    device: str
    _fresh: tuple | None = None
    timings: dict = field(default_factory=dict)
    _moved: dict[str, dict] = field(default_factory=dict)

    def inputs_on(self, device: str) -> dict[str, Any]:
        if device == self.device:
            return self.inputs
        if device not in self._moved:
            self._moved[device] = move_inputs(self.inputs, device)
        return self._moved[device]


class PhaseClock:
    """Wall seconds per harness phase (device work synchronised), for the harness-overhead split."""

    def __init__(self, device: str):
        self.device = device
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            _sync(self.device)
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start


def prepare(definition: Definition, workload: Workload, *, settings: RunSettings, device: str, root,
            cache: ReferenceCache) -> Prepared:
    seed = workload_seed(settings.seed, workload)
    axes = definition.resolve_axes(workload.axes)
    clock = PhaseClock(device)
    misses = cache.misses
    with clock("inputs"), harness_stage("inputs"):
        inputs = make_inputs(definition, workload, seed=seed, device=device, root=root)
    with clock("reference"), harness_stage("reference"):
        refs, seconds = cache.get(definition, workload, inputs, seed=seed, root=root, device=device)
    prep = Prepared(definition, workload, axes, seed, inputs, refs, seconds, device)
    if settings.fresh_check:
        with clock("fresh_inputs_and_reference"):
            fresh_inputs(prep, settings=settings, root=root, cache=cache)
    prep.timings = {**clock.seconds, "reference_computed": cache.misses - misses}
    return prep


def fresh_inputs(prep: Prepared, *, settings: RunSettings, root, cache: ReferenceCache):
    """A second input set (another seed) and its reference, for the after-timing check."""
    if prep._fresh is None:
        seed = workload_seed(settings.seed + 1, prep.workload)
        with harness_stage("inputs"):
            inputs = make_inputs(prep.definition, prep.workload, seed=seed, device=prep.device, root=root)
        with harness_stage("reference"):
            refs, _ = cache.get(prep.definition, prep.workload, inputs, seed=seed, root=root, device=prep.device)
        prep._fresh = (inputs, refs)
    return prep._fresh


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def make_trace(definition: Definition, workload: Workload, solution: Solution, status: Status, *,
               environment: dict, reason: str | None = None, correctness: Correctness | None = None,
               performance: Performance | None = None, log: str = "", device: str | None = None,
               seed: int | None = None) -> Trace:
    evaluation = Evaluation(status=status, environment=environment, timestamp=_now(), log=log,
                            correctness=correctness, performance=performance, reason=reason,
                            device=device, seed=seed)
    return Trace(definition=definition.name, workload=workload, solution=solution.name, evaluation=evaluation)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def classify_exception(exc: BaseException) -> tuple[Status, str, bool]:
    """(status, reason, fatal): fatal means the CUDA context cannot be trusted any more."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return Status.RUNTIME_ERROR, f"out of memory: {str(exc).splitlines()[0][:300]}", False
    if any(marker in str(exc) for marker in CUDA_FATAL):
        return Status.RUNTIME_ERROR, f"CUDA error (context lost): {text[:500]}", True
    module = type(exc).__module__ or ""
    if module.startswith("triton.compiler") or "CompilationError" in type(exc).__name__:
        return Status.COMPILE_ERROR, text[:1000], False
    return Status.RUNTIME_ERROR, text[:1000], False


class Evaluator:
    """Evaluates solutions on prepared workloads; keeps imported modules between workloads."""

    def __init__(self, settings: RunSettings, environment: dict, report_phase: Callable[[str, str], None]):
        self.settings = settings
        self.environment = environment
        self.report_phase = report_phase
        self._entries: dict[str, tuple[Any, Callable]] = {}

    def _entry(self, solution: Solution):
        key = f"{solution.definition}/{solution.name}"
        if key not in self._entries:
            function = sol_mod.load_entry(solution)
            module = sys.modules[function.__module__]
            build = getattr(module, "fib_build", None)
            if build is not None:
                build()
            self._entries[key] = (module, function)
        return self._entries[key]

    def evaluate(self, solution: Solution, prep: Prepared, devices: list[str], *, root, cache) -> Trace:
        """The trace of one solution on one prepared workload, with the harness's wall time per phase
        (`evaluation.phases_s`) and what preparing the workload cost (`evaluation.workload_prepare_s`,
        shared by every solution evaluated on that workload)."""
        self.clock = PhaseClock(sol_mod.solution_device(solution, devices))
        trace = self._evaluate(solution, prep, devices, root=root, cache=cache)
        trace.evaluation.phases_s = {k: round(v, 6) for k, v in self.clock.seconds.items()}
        trace.evaluation.workload_prepare_s = prep.timings
        return trace

    def _evaluate(self, solution: Solution, prep: Prepared, devices: list[str], *, root, cache) -> Trace:
        device = sol_mod.solution_device(solution, devices)
        common = dict(environment=self.environment, device=device, seed=prep.seed)
        definition, workload = prep.definition, prep.workload
        info = sol_mod.device_info(device)
        reason = sol_mod.unsupported_reason(solution, definition, prep.axes, info)
        if reason:
            return make_trace(definition, workload, solution, Status.UNSUPPORTED, reason=reason, **common)

        self.report_phase(solution.name, "build")
        try:
            with self.clock("build"):
                module, function = self._entry(solution)
                reason = sol_mod.hook_reason(module, info, prep.axes)
        except FibError as err:
            return make_trace(definition, workload, solution, Status.COMPILE_ERROR, reason=err.render(), **common)
        except Exception as exc:
            return make_trace(definition, workload, solution, Status.COMPILE_ERROR,
                              reason=f"build failed: {type(exc).__name__}: {exc}"[:1000], **common)
        if reason:
            return make_trace(definition, workload, solution, Status.UNSUPPORTED, reason=reason, **common)

        inputs = prep.inputs_on(device)
        try:
            # First call: JIT compilation happens here, under the build budget.
            self.report_phase(solution.name, "first_call")
            with self.clock("first_call"):
                self._call(function, solution, prep, clone_inputs(inputs), device)
            self.report_phase(solution.name, "evaluate")
            return self._check_and_time(function, solution, prep, inputs, device, common, root, cache)
        except Exception as exc:
            traceback.print_exc()  # into the solution's log
            status, reason, fatal = classify_exception(exc)
            if fatal:
                raise FatalDeviceError(reason) from exc
            if status == Status.RUNTIME_ERROR and device.startswith("cuda"):
                torch.cuda.empty_cache()
            return make_trace(definition, workload, solution, status, reason=reason, **common)

    def _call(self, function, solution, prep, inputs, device) -> list:
        outputs = sol_mod.allocate_outputs(prep.definition, prep.axes, device)
        result = sol_mod.call_solution(function, solution, inputs, outputs)
        _sync(device)
        return result

    def _check_once(self, function, solution, prep, inputs, references, device) -> CheckResult:
        snapshot = clone_inputs(inputs)
        outputs = sol_mod.allocate_outputs(prep.definition, prep.axes, device)
        result = sol_mod.call_solution(function, solution, inputs, outputs)
        _sync(device)
        with harness_stage("check"):
            changed = modified_inputs(snapshot, inputs)
            if changed:
                # Put the inputs back, so later solutions see what they should.
                for name in changed:
                    inputs[name].copy_(snapshot[name])
                return CheckResult(Status.RUNTIME_ERROR, None,
                                   f"solution modified its input(s) in place: {', '.join(changed)}")
            also = self.settings.also_tolerances()
            return check_outputs(prep.definition, prep.axes, result, references,
                                 self.settings.tolerances(prep.definition), also)

    def _check_and_time(self, function, solution, prep, inputs, device, common, root, cache) -> Trace:
        definition, workload = prep.definition, prep.workload
        refs = [r.to(device) for r in prep.references]
        with self.clock("check"):
            first = self._check_once(function, solution, prep, inputs, refs, device)
        if first.status != Status.PASSED:
            return make_trace(definition, workload, solution, first.status, reason=first.reason,
                              correctness=first.correctness if first.status == Status.INCORRECT_NUMERICAL else None,
                              **common)
        with self.clock("timing"):
            timing = self._time(function, solution, prep, inputs, device)
        if self.settings.fresh_check:
            with self.clock("fresh_check"):
                fresh, fresh_refs = fresh_inputs(prep, settings=self.settings, root=root, cache=cache)
                fresh = move_inputs(fresh, device)
                second = self._check_once(function, solution, prep, fresh, [r.to(device) for r in fresh_refs],
                                          device)
            if second.status != Status.PASSED:
                return make_trace(definition, workload, solution, second.status,
                                  reason="passed on the first input set but failed on a fresh one after timing "
                                         f"(stale or cached results?): {second.reason}",
                                  correctness=second.correctness if second.status == Status.INCORRECT_NUMERICAL
                                  else None, **common)
        latency = timing.median_ms
        ref_ms = prep.reference_seconds * 1000.0
        performance = Performance(latency_ms=latency, reference_latency_ms=ref_ms,
                                  speedup_factor=ref_ms / latency if latency > 0 else 0.0, timing=timing)
        return make_trace(definition, workload, solution, Status.PASSED, correctness=first.correctness,
                          performance=performance, **common)

    def _time(self, function, solution, prep, inputs, device):
        from .timing import measure
        copies = self._copies(inputs, device)
        sets = [inputs] + [clone_inputs(inputs) for _ in range(copies - 1)]
        outs = [sol_mod.allocate_outputs(prep.definition, prep.axes, device) for _ in sets]
        dps = solution.spec.destination_passing_style
        args = [tuple(s.values()) + (tuple(o) if dps else ()) for s, o in zip(sets, outs)]

        # Each timed call is an NVTX range of its own, so a whole-run capture (`nsys profile fib run`)
        # can tell solutions and workloads apart.
        range_name = call_range_name(solution.name, prep.workload.uuid)

        def call(i: int) -> None:
            with stage(range_name):
                function(*args[i % len(args)])

        s = self.settings
        return measure(call, n_copies=len(args), device=device, timer=s.timer, warmup_runs=s.warmup_runs,
                       iterations=s.iterations, num_trials=s.num_trials, flush_l2=s.flush_l2)

    def _copies(self, inputs, device) -> int:
        if self.settings.input_copies > 0:
            return self.settings.input_copies
        return input_copies_for(input_bytes(inputs), device_memory_bytes(device))


def device_memory_bytes(device: str) -> int | None:
    """Total memory of a CUDA device (None elsewhere)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(torch.device(device)).total_memory)
    return None


def input_copies_for(size: int, device_memory: int | None, most: int = 4) -> int:
    """How many input sets to rotate while timing: up to `most`, within a memory budget of 10% of
    the device's memory (at least 2 GiB; 256 MiB on a CPU). Rotation keeps consecutive calls off
    the same buffers; the DeepSeek inputs (1.4 GB of weights) get 4 sets on an 80-141 GB GPU where a
    fixed 2 GiB budget allowed only one."""
    budget = max(2 * 2**30, device_memory // 10) if device_memory else 256 * 2**20
    return int(max(1, min(most, budget // max(1, size))))
