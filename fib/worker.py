"""The per-device worker process and the parent's handle on it.

A worker loads the dataset once, then takes jobs (one workload, several solutions), prepares the
workload's inputs and reference once, and evaluates each solution, sending back a message before
each phase and a trace after each solution. Its stdout/stderr (fd level, so C++ and CUDA messages
too) go to the solution's log file. The parent kills a worker that overruns its phase budget or
dies, and starts another; see runner.py.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

# Messages worker -> parent: ("ready",), ("phase", solution|None, phase), ("trace", solution, json),
# ("fatal", solution, reason), ("done",). Parent -> worker: a job dict, or None to stop.


class _FdRedirect:
    """Send this process's fd 1 and 2 to a file until the next redirect."""

    def to(self, path: Path) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)


def log_tail(path: Path | None, start: int = 0, limit: int = 4000) -> str:
    if path is None or not path.is_file():
        return ""
    with open(path, "rb") as handle:
        handle.seek(start)
        data = handle.read()
    text = data.decode(errors="replace")
    return text[-limit:]


def worker_main(conn, device: str, roots: list[str], settings: dict, log_dir: str, cache_dir: str | None) -> None:
    """Entry point of the worker process."""
    import signal
    # Ctrl-C reaches the whole process group; the parent alone decides, and kills the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    redirect = _FdRedirect()
    log_root = Path(log_dir)
    redirect.to(log_root / f"worker-{device.replace(':', '')}.log")
    if cache_dir:
        os.environ["FIB_CACHE_DIR"] = cache_dir
    from .dataset import load_dataset
    from .env import collect_environment
    from .evaluate import Evaluator, FatalDeviceError, RunSettings, make_trace, prepare
    from .inputs import ReferenceCache
    from .schema import Status
    from . import timing  # noqa: F401  (its scipy import is seconds; keep it out of the first timeout)
    import scipy.stats  # noqa: F401
    if device.startswith("cuda"):
        import torch
        torch.cuda.set_device(device)
    data = load_dataset([Path(r) for r in roots])
    environment = collect_environment()
    env_model = {"hardware": environment["hardware"], "libs": environment["libs"]}
    run_settings = RunSettings(**settings)
    cache = ReferenceCache()
    evaluator = Evaluator(run_settings, env_model, lambda sol, phase: conn.send(("phase", sol, phase)))
    conn.send(("ready",))
    while True:
        job = conn.recv()
        if job is None:
            break
        definition = data.definitions[job["definition"]]
        workload = next(w for w in data.workloads[job["definition"]] if w.uuid == job["workload"])
        solutions = [data.solutions[job["definition"]][name] for name in job["solutions"]]
        root = data.root_for(definition.name)
        conn.send(("phase", None, "prepare"))
        redirect.to(log_root / "harness.log")
        try:
            prep = prepare(definition, workload, settings=run_settings, device=device, root=root, cache=cache)
        except Exception as exc:
            reason = f"harness could not prepare the workload: {type(exc).__name__}: {exc}"
            sys.stderr.write(traceback.format_exc())
            for solution in solutions:
                trace = make_trace(definition, workload, solution, Status.RUNTIME_ERROR, reason=reason[:2000],
                                   environment=env_model, device=device)
                conn.send(("trace", solution.name, trace.model_dump_json(exclude_none=True)))
            conn.send(("done",))
            continue
        for solution in solutions:
            log_path = log_root / f"{solution.name}.log"
            start = log_path.stat().st_size if log_path.exists() else 0
            redirect.to(log_path)
            print(f"== {solution.name} on {workload.label()} ({device})", flush=True)
            try:
                trace = evaluator.evaluate(solution, prep, [device], root=root, cache=cache)
            except FatalDeviceError as exc:
                sys.stderr.write(traceback.format_exc())
                sys.stderr.flush()
                conn.send(("fatal", solution.name, str(exc)))
                return
            except Exception as exc:  # a harness bug must not lose the rest of the run
                sys.stderr.write(traceback.format_exc())
                sys.stderr.flush()
                trace = make_trace(definition, workload, solution, Status.RUNTIME_ERROR,
                                   reason=f"harness error: {type(exc).__name__}: {exc}"[:2000],
                                   environment=env_model, device=device)
            sys.stdout.flush()
            sys.stderr.flush()
            trace.evaluation.log = log_tail(log_path, start)
            trace.evaluation.worker = f"{device}/pid{os.getpid()}"
            conn.send(("trace", solution.name, trace.model_dump_json(exclude_none=True)))
        del prep
        conn.send(("done",))


@dataclass
class WorkerHandle:
    """The parent's view of one worker: process, pipe, the job in hand and the phase deadline."""
    device: str
    process: mp.Process
    conn: object
    job: dict | None = None
    remaining: list[str] = field(default_factory=list)
    phase: str = "start"
    phase_solution: str | None = None
    deadline: float = 0.0
    ready: bool = False

    @classmethod
    def start(cls, device: str, roots: list[str], settings: dict, log_dir: Path, cache_dir: str | None,
              start_budget: float) -> "WorkerHandle":
        ctx = mp.get_context("spawn")
        parent_conn, child_conn = ctx.Pipe()
        process = ctx.Process(target=worker_main, name=f"fib-worker-{device}",
                              args=(child_conn, device, roots, settings, str(log_dir), cache_dir), daemon=True)
        process.start()
        child_conn.close()
        return cls(device=device, process=process, conn=parent_conn, deadline=time.monotonic() + start_budget)

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=10)
        try:
            self.conn.close()
        except OSError:
            pass

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, BrokenPipeError):
            pass
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.kill()

    def exit_description(self) -> str:
        self.process.join(timeout=5)
        code = self.process.exitcode
        if code is None:
            return "still running"
        if code < 0:
            import signal
            try:
                return f"killed by signal {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exited with code {code}"
