"""Schedule (solution, workload) jobs over one worker per device and write the run directory.

Jobs are grouped by workload so a workload's inputs and reference are prepared once for all the
solutions evaluated on it. Every trace is appended to traces.jsonl as soon as it arrives; a worker
that crashes or overruns its budget is killed and replaced, the pair gets RUNTIME_ERROR, TIMEOUT or
COMPILE_ERROR with the reason and the captured log, and the rest of the job goes to a new worker.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import sys
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Callable

from .dataset import Dataset
from .env import collect_environment, git_info
from .evaluate import RunSettings, make_trace
from .schema import Status, Trace, write_jsonl_line
from .schema.io import load_jsonl
from .worker import WorkerHandle, log_tail


@dataclass
class RunPlan:
    settings: RunSettings
    definitions: list[str]
    solutions: dict[str, list[str]]          # definition -> solution names
    workloads: dict[str, list[str]]          # definition -> workload uuids
    devices: list[str]
    timeout_s: float = 300.0
    build_timeout_s: float | None = None     # None: each solution's spec.build_timeout_s
    prepare_timeout_s: float = 1800.0
    max_failures: int = 3
    cache_dir: str | None = None
    build_failures: dict[str, tuple[str, str]] = field(default_factory=dict)  # solution -> (status, reason)

    def pairs(self) -> list[tuple[str, str, str]]:
        return [(d, s, w) for d in self.definitions for w in self.workloads[d] for s in self.solutions[d]]


@dataclass
class RunResult:
    run_dir: Path
    traces: list[Trace] = field(default_factory=list)
    interrupted: bool = False
    skipped_done: int = 0


def new_run_dir(base: Path) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = base / stamp
    suffix = 1
    while path.exists():
        suffix += 1
        path = base / f"{stamp}-{suffix}"
    return path


def completed_pairs(run_dir: Path) -> set[tuple[str, str, str]]:
    """(definition, solution, workload uuid) already measured in this run directory."""
    done = set()
    file = run_dir / "traces.jsonl"
    if file.is_file():
        for _, obj in load_jsonl(file):
            if obj.get("solution") and obj.get("evaluation"):
                done.add((obj["definition"], obj["solution"], obj["workload"]["uuid"]))
    return done


def write_run_json(run_dir: Path, *, command: list[str], plan: RunPlan, environment: dict, started: str,
                   finished: str | None, state: str, roots: list[Path]) -> None:
    config = {**asdict(plan.settings), "timeout_s": plan.timeout_s, "build_timeout_s": plan.build_timeout_s,
              "devices": plan.devices, "definitions": plan.definitions, "solutions": plan.solutions,
              "workloads": plan.workloads, "max_failures": plan.max_failures}
    info = {"command": command, "config": config, "git": git_info(Path(__file__).resolve().parent.parent),
            "environment": environment, "dataset_roots": [str(r) for r in roots], "started": started,
            "finished": finished, "state": state}
    tmp = run_dir / "run.json.tmp"
    tmp.write_text(json.dumps(info, indent=2, default=str))
    os.replace(tmp, run_dir / "run.json")


class Runner:
    def __init__(self, data: Dataset, plan: RunPlan, run_dir: Path,
                 on_trace: Callable[[Trace], None] | None = None,
                 on_phase: Callable[[str, str | None, str], None] | None = None):
        self.data = data
        self.plan = plan
        self.run_dir = run_dir
        self.on_trace = on_trace or (lambda trace: None)
        self.on_phase = on_phase or (lambda device, solution, phase: None)
        self.failures: Counter = Counter()
        self.result = RunResult(run_dir)
        self.environment = collect_environment()
        self._env_model = {"hardware": self.environment["hardware"], "libs": self.environment["libs"]}

    # ---- jobs -------------------------------------------------------------------------------
    def _jobs(self, done: set) -> deque:
        jobs = deque()
        for d in self.plan.definitions:
            for w in self.plan.workloads[d]:
                names = [s for s in self.plan.solutions[d] if (d, s, w) not in done]
                if names:
                    jobs.append({"definition": d, "workload": w, "solutions": names})
        return jobs

    def _budget(self, handle: WorkerHandle, phase: str, solution: str | None) -> float:
        if phase in ("build", "first_call"):
            if self.plan.build_timeout_s is not None:
                return self.plan.build_timeout_s
            sol = self.data.solutions[handle.job["definition"]][solution]
            return sol.spec.build_timeout_s
        if phase == "evaluate":
            return self.plan.timeout_s
        return self.plan.prepare_timeout_s

    # ---- results ----------------------------------------------------------------------------
    def _emit(self, trace: Trace) -> None:
        write_jsonl_line(self.run_dir / "traces.jsonl", trace)
        self.result.traces.append(trace)
        self.on_trace(trace)

    def _emit_failure(self, job: dict, solution_name: str, status: Status, reason: str, log: str = "",
                      device: str | None = None) -> None:
        definition = self.data.definitions[job["definition"]]
        workload = next(w for w in self.data.workloads[job["definition"]] if w.uuid == job["workload"])
        solution = self.data.solutions[job["definition"]][solution_name]
        self._emit(make_trace(definition, workload, solution, status, reason=reason, log=log,
                              environment=self._env_model, device=device))

    def _skip_failed(self, job: dict) -> dict | None:
        """Answer at once for solutions that already crashed or hung too often; the rest still run."""
        keep = []
        for name in job["solutions"]:
            if name in self.plan.build_failures:
                status, reason = self.plan.build_failures[name]
                self._emit_failure(job, name, Status(status), reason)
            elif self.failures[(job["definition"], name)] >= self.plan.max_failures:
                self._emit_failure(job, name, Status.RUNTIME_ERROR,
                                   f"skipped: crashed or timed out {self.plan.max_failures} times in this run")
            else:
                keep.append(name)
        return {**job, "solutions": keep} if keep else None

    # ---- main loop --------------------------------------------------------------------------
    def run(self, *, resume: bool = False, command: list[str] | None = None) -> RunResult:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "logs").mkdir(exist_ok=True)
        done = completed_pairs(self.run_dir) if resume else set()
        self.result.skipped_done = len(done)
        started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        run_info = dict(command=command or sys.argv, plan=self.plan, environment=self.environment,
                        started=started, roots=self.data.roots)
        write_run_json(self.run_dir, finished=None, state="running", **run_info)
        jobs = self._jobs(done)
        workers: list[WorkerHandle] = []
        state = "finished"
        try:
            workers = [self._start_worker(d) for d in self.plan.devices] if jobs else []
            self._loop(jobs, workers)
        except KeyboardInterrupt:
            state = "interrupted"
            self.result.interrupted = True
        finally:
            for handle in workers:
                if state == "interrupted":
                    handle.kill()
                else:
                    handle.stop()
            finished = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            write_run_json(self.run_dir, finished=finished, state=state, **run_info)
        return self.result

    def _start_worker(self, device: str) -> WorkerHandle:
        settings = asdict(self.plan.settings)
        return WorkerHandle.start(device, [str(r) for r in self.data.roots], settings, self.run_dir / "logs",
                                  self.plan.cache_dir, start_budget=self.plan.prepare_timeout_s)

    def _loop(self, jobs: deque, workers: list[WorkerHandle]) -> None:
        while jobs or any(h.job for h in workers):
            for handle in workers:
                if handle.ready and handle.job is None and jobs:
                    job = self._skip_failed(jobs.popleft())
                    if job:
                        handle.job, handle.remaining = job, list(job["solutions"])
                        handle.conn.send(job)
                        self._set_phase(handle, None, "prepare")
            ready = wait([h.conn for h in workers], timeout=0.5)
            for handle in list(workers):
                if handle.conn in ready:
                    self._receive(handle, workers, jobs)
                elif time.monotonic() > handle.deadline and (handle.job or not handle.ready):
                    self._overrun(handle, workers, jobs)

    def _set_phase(self, handle: WorkerHandle, solution: str | None, phase: str) -> None:
        handle.phase, handle.phase_solution = phase, solution
        handle.deadline = time.monotonic() + self._budget(handle, phase, solution)
        self.on_phase(handle.device, solution, phase)

    def _receive(self, handle: WorkerHandle, workers: list, jobs: deque) -> None:
        try:
            message = handle.conn.recv()
        except (EOFError, OSError):
            self._worker_died(handle, workers, jobs, handle.exit_description())
            return
        kind = message[0]
        if kind == "ready":
            handle.ready = True
        elif kind == "phase":
            self._set_phase(handle, message[1], message[2])
        elif kind == "trace":
            self._emit(Trace.model_validate_json(message[2]))
            if message[1] in handle.remaining:
                handle.remaining.remove(message[1])
        elif kind == "fatal":
            handle.process.join(timeout=30)
            self._worker_died(handle, workers, jobs, message[2], status=Status.RUNTIME_ERROR)
        elif kind == "done":
            handle.job, handle.remaining = None, []

    def _replace(self, handle: WorkerHandle, workers: list, jobs: deque) -> None:
        handle.kill()
        job, remaining = handle.job, list(handle.remaining)
        workers[workers.index(handle)] = self._start_worker(handle.device)
        if job and remaining:
            jobs.appendleft({**job, "solutions": remaining})

    def _blame(self, handle: WorkerHandle, status: Status, reason: str) -> None:
        """Give the solution in hand its failing trace (or every solution, if the harness phase failed)."""
        job = handle.job
        if job is None:
            return
        log_file = self.run_dir / "logs" / f"{handle.phase_solution or 'harness'}.log"
        log = log_tail(log_file)
        names = [handle.phase_solution] if handle.phase_solution else list(handle.remaining)
        for name in names:
            if name in handle.remaining:
                self.failures[(job["definition"], name)] += 1
                self._emit_failure(job, name, status, reason, log=log, device=handle.device)
                handle.remaining.remove(name)

    def _worker_died(self, handle, workers, jobs, how: str, status: Status = Status.RUNTIME_ERROR) -> None:
        if handle.job is None and handle.ready:
            reason = f"worker on {handle.device} {how} between jobs"
        else:
            where = f"while {handle.phase_solution} was in phase '{handle.phase}'" if handle.phase_solution \
                else f"while preparing the workload (phase '{handle.phase}')"
            reason = f"worker process {how} {where}"
        if not handle.ready:
            raise RuntimeError(f"the worker for {handle.device} failed to start: {how}; see "
                               f"{self.run_dir / 'logs'}")
        self._blame(handle, status, reason)
        self._replace(handle, workers, jobs)

    def _overrun(self, handle, workers, jobs) -> None:
        budget = self._budget(handle, handle.phase, handle.phase_solution) if handle.job else 0
        if not handle.ready:
            handle.kill()
            raise RuntimeError(f"the worker for {handle.device} did not start within its budget")
        if handle.phase == "build":
            status, reason = Status.COMPILE_ERROR, f"import/build exceeded its budget of {budget:.0f} s"
        elif handle.phase == "first_call":
            status, reason = Status.TIMEOUT, (f"first call (JIT compilation included) exceeded the build budget "
                                              f"of {budget:.0f} s")
        elif handle.phase == "evaluate":
            status, reason = Status.TIMEOUT, f"evaluation exceeded the timeout of {budget:.0f} s"
        else:
            status, reason = Status.TIMEOUT, f"preparing the workload exceeded {budget:.0f} s"
        self._blame(handle, status, reason)
        self._replace(handle, workers, jobs)

