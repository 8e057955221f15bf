"""A solution's worker: one process per (solution, device), reused across that solution's workloads.

It builds the solution once, and per workload makes its own pristine inputs from the workload's
seed, calls the solution and sends the outputs back as a file: the verdict is decided elsewhere
(judge.py), so a solution that patches fib inside its process cannot make itself pass. Timing does
run here, beside the solution; a solution that wants to fake its own latency can, and fib's
isolation protects against faults, not adversaries (see README, "What fib trusts").

Messages to the parent: ready{pid}; phase{phase} before each step (the parent applies the budgets);
outputs{which: "check"|"fresh", path | ipc} then waits for verdict{go} (verdict{resend} asks for the
same outputs again as a file: the judge could not open the CUDA IPC handles); result{status?, reason?, timing?,
phases_s, workload_prepare_s, solution_config?}; after a lost CUDA context the result carries fatal=true and the
worker exits. From the parent: job{...}, verdict{go}, stop.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from .child import Channel


class Stop(Exception):
    """The parent asked the worker to stop while it waited for a verdict."""


class SolutionWorker:
    def __init__(self, channel: Channel, args: dict):
        import torch  # noqa: F401  (imported while the worker may still be a spare)
        from ..timing import measure as _timing  # noqa: F401  (numpy and the timers: imported before the first job)
        from ..schema import Solution
        from ..schema.config import RunConfig
        from .torch_state import TorchState
        self.channel = channel
        self.device = args["device"]
        self.config = RunConfig.model_validate(args["config"])
        self.out_dir = Path(args["out_dir"])
        solution = Solution.model_validate(args["solution"])
        if args.get("solution_root"):
            solution.attach_root(Path(args["solution_root"]))
        solution.file = Path(args["solution_file"]) if args.get("solution_file") else None
        solution.namespaced = bool(args.get("solution_namespaced"))
        self.solution = solution
        self.state = TorchState.capture()
        self.module = None
        self.function = None
        self.build_error: tuple[str, str] | None = None
        self.pair = 0
        # CUDA outputs go to the judge as CUDA IPC handles (no host copy, no file) unless the parent
        # says no or the judge once could not open them
        self.ipc = bool(args.get("outputs_ipc")) and str(self.device).startswith("cuda")
        self._shared: list = []  # the outputs the judge maps, alive until its verdict
        self._head_start = None  # a thread doing the compiler's first-use work during the first inputs
        self._last_timed: float | None = None  # time.monotonic() when this worker's last timed calls ended

    # ---- protocol ---------------------------------------------------------------------------
    def phase(self, name: str) -> None:
        self.channel.send("phase", phase=name)

    def wait_verdict(self) -> dict:
        while True:
            message = self.channel.recv()
            if message["kind"] == "verdict":
                return message
            if message["kind"] == "stop":
                raise Stop()

    # ---- steps ------------------------------------------------------------------------------
    def build(self, info: dict, axes: dict) -> tuple[str, str] | None:
        """Import and build once; (status, reason) when that fails or the module says no."""
        from .. import solutions as sol_mod
        from ..errors import FibError
        if self.function is None and self.build_error is None:
            self.phase("build")
            try:
                self.function = sol_mod.load_entry(self.solution, device=self.device)
                # a compiled solution has no Python module, hence no fib_build/fib_supported hooks
                self.module = None if self.solution.spec.language.native else sys.modules[self.function.__module__]
                hook = getattr(self.module, "fib_build", None)
                if hook is not None:
                    hook()
                self._head_start = _compiler_head_start()
            except FibError as err:
                self.build_error = ("COMPILE_ERROR", err.render())
            except Exception as exc:
                traceback.print_exc()
                self.build_error = ("COMPILE_ERROR", f"build failed: {type(exc).__name__}: {exc}"[:1000])
        if self.build_error:
            return self.build_error
        reason = sol_mod.hook_reason(self.module, info, axes)
        return ("UNSUPPORTED", reason) if reason else None

    def save_outputs(self, outputs: list, which: str) -> dict:
        """Hand the outputs to the judge: CUDA IPC handles where allowed (`ipc`: the judge maps this
        process's memory, which stays alive until the verdict), else a safetensors file; structural
        faults (not a tensor, wrong device) are answered here, since neither can carry them."""
        import torch
        expected = torch.device(self.device)
        tensors = {}
        for i, (name, out) in enumerate(zip(self.definition.outputs, outputs)):
            if not isinstance(out, torch.Tensor):
                return {"status": "INCORRECT_SHAPE", "reason": f"output '{name}' is a {type(out).__name__}, "
                                                               "not a tensor"}
            if out.device.type != expected.type or (expected.index is not None and out.device != expected):
                return {"status": "RUNTIME_ERROR",
                        "reason": f"output '{name}' is on {out.device}, expected {self.device}"}
            tensors[f"out{i}"] = out.detach().contiguous()
        if self.ipc:
            try:
                from .ipc import share_cuda_tensor
                handles = [share_cuda_tensor(tensors[f"out{i}"]) for i in range(len(tensors))]
                self._shared = list(tensors.values())
                return {"ipc": handles}
            except Exception as exc:  # this process cannot export them: files from now on
                print(f"fib: CUDA IPC export failed ({type(exc).__name__}: {exc}); outputs go through files",
                      flush=True)
                self.ipc = False
        from safetensors.torch import save_file
        path = self.out_dir / f"{os.getpid()}-{self.pair}-{which}.safetensors"
        save_file({k: v.cpu() for k, v in tensors.items()}, str(path))
        return {"path": str(path)}

    def checked_call(self, call, inputs: dict, snapshot: dict, which: str) -> dict | None:
        """Call once, make sure the inputs still equal `snapshot` (their copy from before), hand the
        outputs over; the verdict's `go` comes back. Returns a failure dict, or None on go."""
        from .check import modified_inputs
        from .inputs import inputs_digest
        from .evaluate import sync
        outputs = call(inputs)
        sync(self.device)
        changed = modified_inputs(snapshot, inputs)
        if changed:
            return {"status": "RUNTIME_ERROR", "reason": f"solution modified its input(s) in place: "
                                                         f"{', '.join(changed)}"}
        saved = self.save_outputs(outputs, which)
        if "status" in saved:
            return saved
        digest = inputs_digest(snapshot)
        try:
            while True:
                self.channel.send("outputs", which=which, inputs_digest=digest, **saved)
                verdict = self.wait_verdict()
                if not verdict.get("resend"):
                    return None if verdict.get("go") else {"status": "JUDGED"}
                self.ipc = False  # the judge could not map them: the same outputs again, as a file
                saved = self.save_outputs(outputs, which)
        finally:
            self._shared = []

    def run_job(self, job: dict) -> dict:
        import torch
        from .. import solutions as sol_mod
        from .check import modified_inputs
        from .inputs import clone_inputs, make_inputs
        from ..schema import Definition, Workload
        from .call import SolutionCall
        from .evaluate import PhaseClock, sync
        self.pair += 1
        if self.pair == 1 and self.device.startswith("cuda"):
            torch.cuda.set_device(self.device)  # not earlier: a spare worker must not touch the GPU
        definition = self.definition = Definition.model_validate(job["definition"])
        workload = Workload.model_validate(job["workload"])
        root = Path(job["root"])
        axes = definition.resolve_axes(workload.axes)
        self.state.restore(job["seed"])
        info = sol_mod.device_info(self.device)
        reason = sol_mod.unsupported_reason(self.solution, definition, axes, info,
                                            any_hardware=self.config.any_hardware)
        if reason:
            return {"status": "UNSUPPORTED", "reason": reason}
        clock = PhaseClock(self.device)
        with clock("build"):
            verdict = self.build(info, axes)
        if verdict:
            return {"status": verdict[0], "reason": verdict[1], "phases_s": clock.seconds}
        config = None
        variant = self.config.variants.get(self.solution.name)
        if variant is not None:  # one named configuration of the solution (--config, --sweep)
            from .call import choose_config
            self.chosen = {"solution": variant.solution, "name": variant.config}
            config, reason = choose_config(self.module, variant.solution, variant.config, axes)
            if reason:
                return {"status": "UNSUPPORTED", "reason": reason, "phases_s": clock.seconds}
            self.chosen["values"] = config
        call = SolutionCall(self.function, self.solution, definition, axes, self.device, config=config)
        self.phase("prepare")
        with clock("inputs"):
            try:
                inputs = make_inputs(definition, workload, seed=job["seed"], device=self.device, root=root)
            except Exception as exc:
                traceback.print_exc()
                return {"status": "RUNTIME_ERROR", "harness": True,
                        "reason": f"harness could not prepare the workload: {type(exc).__name__}: {exc}"[:2000]}
        self.phase("first_call")
        with clock("first_call"):
            if self._head_start is not None:
                self._head_start.join()
                self._head_start = None
            call(clone_inputs(inputs))
            sync(self.device)
        self.phase("check")
        with clock("check"):
            snapshot = clone_inputs(inputs)  # one copy serves the check and the timed calls
            failed = self.checked_call(call, inputs, snapshot, "check")
        if failed:
            return {**failed, "phases_s": clock.seconds}
        self.phase("timing")
        with clock("timing"):
            timing, sets = self.time(call, inputs)
            changed = sorted({n for s in sets for n in modified_inputs(snapshot, s)})
            del sets
        if changed:
            return {"status": "RUNTIME_ERROR", "phases_s": clock.seconds,
                    "reason": f"solution modified its input(s) in place during the timed calls: {', '.join(changed)}"}
        del inputs, snapshot
        if self.config.fresh_check:
            self.phase("fresh_check")
            with clock("fresh_check"):
                fresh = make_inputs(definition, workload, seed=job["fresh_seed"], device=self.device, root=root)
                failed = self.checked_call(call, fresh, clone_inputs(fresh), "fresh")
                del fresh
            if failed:
                return {**failed, "fresh": True, "phases_s": clock.seconds}
        if self.device.startswith("cuda"):
            _release_cache(self.device)
        return {"status": "MEASURED", "timing": timing.model_dump(mode="json"), "phases_s": clock.seconds}

    def time(self, call, inputs: dict):
        from .inputs import clone_inputs, input_bytes
        from ..stages import call_range_name, stage
        from ..timing.measure import measure
        from .evaluate import device_memory_bytes, input_copies_for
        s = self.config
        copies = s.input_copies or input_copies_for(input_bytes(inputs), device_memory_bytes(self.device))
        sets = [inputs] + [clone_inputs(inputs) for _ in range(copies - 1)]
        bound = [call.bound(x) for x in sets]
        # Each timed call is an NVTX range of its own, so a whole-run capture (`nsys profile fib run`)
        # can tell solutions and workloads apart.
        range_name = call_range_name(self.solution.label, self.workload_uuid)

        def timed(i: int) -> None:
            with stage(range_name):
                bound[i % len(bound)]()

        floor = s.min_warmup_ms
        if self._last_timed is not None and time.monotonic() - self._last_timed < WARM_WITHIN_S:
            floor = min(floor, s.min_warmup_ms_warm)  # the GPU ran this worker's timed calls a moment ago
        try:
            stats = measure(timed, n_copies=len(bound), device=self.device, timer=s.timer,
                            warmup_runs=s.warmup_runs, min_warmup_ms=floor, iterations=s.iterations,
                            num_trials=s.num_trials, flush_l2=s.flush_l2, cpu_budget_s=s.cpu_timing_budget_s,
                            ci=False)  # the parent computes the CI
        finally:
            self._last_timed = time.monotonic()
        return stats, sets

    def serve(self) -> None:
        from .evaluate import classify_exception
        from .standby import startup_marks
        self.channel.send("ready", pid=os.getpid(), **startup_marks())
        while True:
            message = self.channel.recv()
            if message["kind"] == "stop":
                return
            assert message["kind"] == "job", message
            self.workload_uuid = message["workload"]["uuid"]
            print(f"== {self.solution.label} on {self.workload_uuid} ({self.device})", flush=True)
            fatal = False
            self.chosen = None  # the configuration this pair runs, once known (recorded in its trace)
            try:
                result = self.run_job(message)
            except Stop:
                return
            except Exception as exc:
                traceback.print_exc()
                status, reason, fatal = classify_exception(exc)
                result = {"status": status.value, "reason": reason, "fatal": fatal}
                if not fatal and self.device.startswith("cuda"):
                    import torch
                    torch.cuda.empty_cache()
            if self.chosen is not None:
                result["solution_config"] = self.chosen
            sys.stdout.flush()
            sys.stderr.flush()
            self.channel.send("result", **result)
            if fatal:
                return


WARM_WITHIN_S = 1.0  # timed calls this recently: the next workload's warm-up floor is min_warmup_ms_warm
CACHE_KEEP_SHARE = 0.2  # a worker keeps up to this share of its GPU's memory cached between its pairs


def _release_cache(device: str) -> None:
    """Between pairs: hand the caching allocator's free blocks back to the driver only when they hold more
    than CACHE_KEEP_SHARE of the device's memory (other processes on the GPU, the judge and JIT pre-warms,
    may need it). Emptying it after every pair made the next pair allocate its input sets from the driver
    again (the DeepSeek workloads: six sets of 1.4 GB per pair)."""
    import torch
    dev = torch.device(device)
    idle = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
    if idle > CACHE_KEEP_SHARE * torch.cuda.get_device_properties(dev).total_memory:
        torch.cuda.empty_cache()


def _compiler_head_start():
    """A started thread that does the JIT compiler's first-use work that needs no inputs and no GPU, so it
    overlaps the first workload's inputs (the worker joins it before the first call), or None. Triton
    hashes its own sources and libtriton (its cache key, `triton.runtime.cache.triton_key`, computed once
    per process) before it can look up even a cached kernel: 0.34 s of the first call on an H200 machine;
    hashlib and the file reads release the GIL, so it runs beside the inputs' generation."""
    import threading
    if "triton" not in sys.modules:  # not a Triton solution (its import brought no Triton)
        return None
    try:
        from triton.runtime.cache import triton_key
    except ImportError:  # another Triton layout: it computes its key at the first call, as before
        return None

    def run() -> None:
        try:
            triton_key()
        except Exception:  # the first call computes it again and meets the error there
            pass
    thread = threading.Thread(target=run, name="fib-compiler-head-start", daemon=True)
    thread.start()
    return thread


def worker_main(channel: Channel, args: dict) -> None:
    if args.get("cache_dir"):
        os.environ["FIB_CACHE_DIR"] = args["cache_dir"]
    SolutionWorker(channel, args).serve()


__all__ = ["worker_main", "SolutionWorker", "Any"]
