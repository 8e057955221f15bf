"""The parent of a run: schedules (solution, workload) pairs over the devices, one solution worker
per (solution, device) at a time, one reference/judge process, and writes the run directory.

Per pair: the worker makes its own inputs, calls the solution, and sends its outputs; the judge
(a process that never runs solution code) compares them with the FP32 reference and the parent
writes the trace. The parent applies every budget: a worker that overruns its phase or dies is
killed with its whole session, the pair gets TIMEOUT / RUNTIME_ERROR / COMPILE_ERROR with the
reason and its log, and a new worker takes the solution's remaining workloads. While a worker
times, the judge sends no work to that worker's device, so a reference never overlaps a timed call.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Callable

from ..dataset import Dataset
from ..env import collect_environment, git_info
from .seeds import workload_seed
from ..rundir import append_trace
from ..schema import Correctness, Performance, Status, TimingStats, Trace
from ..schema.config import RunConfig
from .child import Child
from .evaluate import make_trace, now_iso
from .logs import CappedLog

PACKAGE_ROOT = Path(__file__).resolve().parent.parent.parent


@dataclass
class RunPlan:
    config: RunConfig
    definitions: list[str]
    solutions: dict[str, list[str]]          # definition -> solution names
    workloads: dict[str, list[str]]          # definition -> workload uuids
    devices: list[str]
    cache_dir: str | None = None
    build_failures: dict[str, tuple[str, str]] = field(default_factory=dict)  # solution -> (status, reason)
    marks: dict[str, float] = field(default_factory=dict)  # the CLI's own moments (time.time()): timeline.jsonl
    excluded: set[tuple[str, str, str]] = field(default_factory=set)  # pairs not to run (a sweep's undeclared)

    def pairs(self) -> list[tuple[str, str, str]]:
        """(definition, solution, workload), solution-major: a solution's worker serves its workloads in a row."""
        return [(d, s, w) for d in self.definitions for s in self.solutions[d] for w in self.workloads[d]
                if (d, s, w) not in self.excluded]


@dataclass
class RunResult:
    run_dir: Path
    traces: list[Trace] = field(default_factory=list)
    interrupted: bool = False
    skipped_done: int = 0
    previous: list[Trace] = field(default_factory=list)  # traces already in the directory (--resume)
    problems: list[str] = field(default_factory=list)   # a definition's fault (its reference), not a solution's
    vacuous: dict[str, list[str]] = field(default_factory=dict)  # "definition/workload" -> trivial outputs that pass


def write_run_json(run_dir: Path, info: dict) -> None:
    tmp = run_dir / "run.json.tmp"
    tmp.write_text(json.dumps(info, indent=2, default=str))
    os.replace(tmp, run_dir / "run.json")


def _earlier_ceilings(run_dir: Path) -> dict:
    """The ceilings an earlier session of a resumed run measured (kept unless measured again)."""
    try:
        earlier = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return {}
    return {k: earlier[k] for k in ("ceilings", "ceilings_error") if k in earlier}


@dataclass
class Pair:
    definition: str
    solution: str
    workload: str
    seed: int
    fresh_seed: int
    log_mark: int = 0
    check: dict | None = None          # the judge's verdict on the first input set
    fresh: dict | None = None
    waiting: str | None = None         # "check"/"fresh": outputs are with the judge
    wants_go: bool | None = None       # verdict known, `go` not yet sent
    resend: bool = False               # the judge could not map the outputs: ask the worker for a file
    remaining_s: float = 0.0           # the pair's budget left when it began to wait for the judge
    pair_deadline: float = float("inf")
    digests: dict = field(default_factory=dict)   # which -> digest of the inputs the worker made

    def ref_key(self, which: str = "check") -> str:
        """The reference of the first ("check") or the fresh input set."""
        return ref_key(self.definition, self.workload, self.seed if which == "check" else self.fresh_seed)


def ref_key(definition: str, workload: str, seed: int) -> str:
    return f"{definition}/{workload}/{seed}"


@dataclass
class Slot:
    """One device: at most one solution worker (and one pair) at a time."""
    device: str
    worker: Child | None = None
    key: tuple[str, str] | None = None   # (definition, solution) the worker serves
    pair: Pair | None = None
    spare: Child | None = None           # the next solution's worker, started early (imports only)
    spare_key: tuple[str, str] | None = None
    held: dict | None = None             # a first job kept back while the JIT pre-warm runs (prewarm.py)
    held_done: threading.Event | None = None
    phase_since: float = 0.0             # when the worker entered its current phase (monotonic)


class Runner:
    def __init__(self, data: Dataset, plan: RunPlan, run_dir: Path,
                 on_trace: Callable[[Trace], None] | None = None,
                 on_phase: Callable[[str, str | None, str], None] | None = None,
                 on_warning: Callable[[str], None] | None = None):
        self.data = data
        self.plan = plan
        self.config = plan.config
        self.run_dir = run_dir
        self.on_trace = on_trace or (lambda trace: None)
        self.on_phase = on_phase or (lambda device, solution, phase: None)
        self.on_warning = on_warning or (lambda text: None)
        self.failures: Counter = Counter()
        self.first_call_done: set[tuple[str, str]] = set()
        self.result = RunResult(run_dir)
        self.environment: dict = {}   # collected once the first children are starting (see _run)
        self._env_model: dict = {}
        self.logs: dict[str, CappedLog] = {}
        self.refs: dict[str, dict | None] = {}        # key -> the judge's answer (None: asked, not answered)
        self.judge: Child | None = None
        self.judge_queue: deque = deque()             # requests not yet sent
        self.judge_outstanding = 0
        self.verdict_waiters: dict[int, Slot] = {}
        self._device_infos: dict[str, dict] = {}
        self.timeline: list[dict] = []   # where the run's wall time went (timeline.jsonl; see _mark)
        self._t0 = time.monotonic()
        self._wall0 = time.time()
        self._static_reasons: dict[tuple, str | None] = {}
        self._ids = 0
        self.floor_errors: set[str] = set()          # definitions whose family could not count a floor
        self.ceilings: dict | None = None            # the judge's answer to `ceilings`
        # outputs reach the judge as CUDA IPC handles (fib/harness/ipc.py) until it once cannot map them
        self.outputs_ipc = os.environ.get("FIB_OUTPUTS_VIA_FILES", "") in ("", "0")
        self.prewarmed: set[tuple[str, str, str]] = set()  # (definition, solution, device) pre-warmed (prewarm.py)
        self.first_calls: dict[tuple[str, str, str], float] = {}  # ... -> seconds of the first pair's first call
        self._deferred: list[Callable[[], None]] = []  # measured traces to write once the slot's next job is out

    # ---- small helpers ----------------------------------------------------------------------
    def _mark(self, event: str, **fields) -> None:
        """One entry of the run's timeline: seconds since the runner began, the event, its subject."""
        self.timeline.append({"t": round(time.monotonic() - self._t0, 4), "event": event,
                              **{k: v for k, v in fields.items() if v is not None}})

    def _spawned(self, child) -> float | None:
        """When a standby child was started, in seconds on this timeline (negative: before the runner)."""
        spawned = getattr(child, "spawned", None)
        return None if spawned is None else round(spawned - self._wall0, 4)

    def _startup(self, message: dict) -> dict:
        """A ready message's standby marks (wall clock) as seconds on this timeline (negative: before the
        runner began)."""
        marks = message.get("startup") or {}
        return {"startup": {k: round(float(v) - self._wall0, 4) for k, v in marks.items()}} if marks else {}

    def _write_timeline(self) -> None:
        import json
        head = {"t": 0.0, "event": "runner_start", "wall": self._wall0,
                **{k: round(v - self._wall0, 4) for k, v in self.plan.marks.items()}}
        lines = [json.dumps(head)] + [json.dumps(e) for e in self.timeline]
        (self.run_dir / "timeline.jsonl").write_text("\n".join(lines) + "\n")

    def _log(self, name: str) -> CappedLog:
        if name not in self.logs:
            file_name = name.replace("/", "--")  # 'author/name' of a namespaced solution
            self.logs[name] = CappedLog(self.run_dir / "logs" / f"{file_name}.log", self.config.log_cap_bytes)
        return self.logs[name]

    def _objects(self, pair: Pair):
        return (self.data.definitions[pair.definition], self._workload(pair.definition, pair.workload),
                self.data.solutions[pair.definition][pair.solution])

    def _emit(self, trace: Trace) -> None:
        self._mark("trace", solution=trace.solution, workload=trace.workload.uuid,
                   status=trace.evaluation.status.value)
        append_trace(self.run_dir, trace)
        self.result.traces.append(trace)
        self.on_trace(trace)

    def _emit_pair(self, pair: Pair, status: Status, reason: str | None = None, *, log: str = "",
                   device: str | None = None, **fields) -> None:
        definition, workload, solution = self._objects(pair)
        vacuous = self.result.vacuous.get(f"{pair.definition}/{pair.workload}")
        if vacuous:
            fields["vacuous_tolerance"] = vacuous
        floor = (self.refs.get(pair.ref_key()) or {}).get("floor")
        if floor:
            fields["floor"] = floor
        variant = self.config.variants.get(pair.solution)
        if variant is not None and "solution_config" not in fields:  # ended before the worker chose it
            fields["solution_config"] = {"solution": variant.solution, "name": variant.config}
        self._emit(make_trace(definition, workload, solution, status, reason=reason, log=log,
                              environment=self._env_model, device=device, seed=pair.seed, **fields))

    # ---- run --------------------------------------------------------------------------------
    def run(self, *, resume: bool = False, command: list[str] | None = None) -> RunResult:
        from ..rundir import RunDirLock, holds_lock
        if holds_lock(self.run_dir):  # the CLI took it already (before building)
            return self._run(resume=resume, command=command)
        with RunDirLock(self.run_dir):
            return self._run(resume=resume, command=command)

    def _run(self, *, resume: bool, command: list[str] | None) -> RunResult:
        from ..rundir import read_traces
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "logs").mkdir(exist_ok=True)
        done: set = set()
        if resume:
            found = read_traces(self.run_dir)
            done = found.completed
            self.result.previous = found.traces
            for note in found.notes:
                self.on_warning(note)
        self.result.skipped_done = len(done)
        queue = deque(p for p in self.plan.pairs() if p not in done)
        slots = [Slot(d) for d in self.plan.devices]
        out_dir = Path(tempfile.mkdtemp(prefix="fib-outputs-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK)
                                        else None))
        if queue:  # the children's imports (seconds) overlap the parent's own environment probe (torch)
            self._start_judge()
            from ..timing.stats import warm_scipy_stats
            warm_scipy_stats()  # for the CIs the workers leave to the parent (fill_ci)
            self._prestart(slots[0], queue, out_dir)  # no worker yet: the first solution's, started now
        self.environment = collect_environment()
        self._env_model = {"hardware": self.environment["hardware"], "libs": self.environment["libs"]}
        info = {"command": command, "config": self.config.model_dump(mode="json"),
                "selection": {"devices": self.plan.devices, "definitions": self.plan.definitions,
                              "solutions": self.plan.solutions, "workloads": self.plan.workloads},
                "git": git_info(PACKAGE_ROOT), "environment": self.environment,
                "dataset_roots": [str(r) for r in self.data.roots],
                "started": now_iso(),
                "finished": None, "state": "running"}
        if resume:
            info.update(_earlier_ceilings(self.run_dir))
        write_run_json(self.run_dir, info)
        state = "finished"
        restore = self._catch_sigterm()
        try:
            if queue:
                self._loop(queue, slots, out_dir)
        except KeyboardInterrupt:
            state = "interrupted"
            self.result.interrupted = True
        finally:
            self._emit_deferred()  # nothing measured is lost, whatever ended the loop
            # The workers are asked to stop at once and waited for together (the ceilings want the GPU to
            # themselves); the judge, once done, is asked to stop and not waited for.
            for slot in slots:
                if slot.worker:
                    slot.worker.kill() if state == "interrupted" else slot.worker.ask_stop()
                if slot.spare:
                    slot.spare.kill()
            for slot in slots:
                if slot.worker:
                    slot.worker.stop()
            if self.judge:
                if state == "finished" and self.MEASURES_CEILINGS:
                    self._record_ceilings(info)
                self.judge.kill() if state == "interrupted" else self.judge.ask_stop()
            shutil.rmtree(out_dir, ignore_errors=True)
            restore()
            self._mark("run_end", state=state)
            self._write_timeline()
            info.update(finished=now_iso(), state=state,
                        problems=self.result.problems, vacuous_tolerance=self.result.vacuous)
            write_run_json(self.run_dir, info)
            if self.judge and (state == "interrupted" or os.environ.get("FIB_PROFILE_CHILDREN")):
                self.judge.stop()  # profiling the children: its statistics are written as it exits
            # a finished run's judge was asked to stop above and exits on its own (its CUDA context's
            # teardown, ~0.3 s on an H200, is no part of the run); it kills itself if this process is gone
            for log in self.logs.values():
                log.flush()
        return self.result

    def _catch_sigterm(self) -> Callable[[], None]:
        """SIGTERM ends the run as Ctrl-C does (workers killed, run.json 'interrupted')."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def interrupt(signum, frame):
            raise KeyboardInterrupt()
        previous = signal.signal(signal.SIGTERM, interrupt)
        return lambda: signal.signal(signal.SIGTERM, previous)

    # ---- the judge --------------------------------------------------------------------------
    MEASURES_CEILINGS = True  # a Ray node's Runner runs one chunk and leaves run.json to the driver

    def _record_ceilings(self, info: dict) -> None:
        """run.json's `ceilings`: the judge's device's measured roofs (copy bandwidth, matmul rates),
        which `fib report floor` turns the traces' floor records into time with. Measured after
        the last pair, the workers stopped, when a trace of this run carries a floor and the judge
        is on a GPU; a failure is recorded, never fatal."""
        if not self._ceilings_wanted():
            return
        try:
            answer = self._ask_ceilings()
        except Exception as exc:  # never the run's end: the traces are written
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        if answer.get("ok"):
            info["ceilings"] = answer["ceilings"]
        else:
            info["ceilings_error"] = answer.get("error")
            self.on_warning(f"the device's ceilings were not measured: {answer.get('error')}")

    def _ceilings_wanted(self) -> bool:
        return self._judge_device().startswith("cuda") and \
            any(t.evaluation and t.evaluation.floor for t in self.result.traces)

    def _ask_ceilings(self) -> dict:
        self._mark("ceilings_start")
        self._ask_judge("ceilings")
        deadline = time.monotonic() + self.config.prepare_timeout_s
        while self.ceilings is None and time.monotonic() < deadline and self.judge.alive():
            self._pump_judge([])
            if self.judge.channel.conn.poll(0.2):
                try:
                    self._on_judge(self.judge.channel.recv(), [])
                except (EOFError, OSError):
                    break
        answer = self.ceilings or {"ok": False, "error": "the judge did not answer"}
        self._mark("ceilings_end", ok=answer.get("ok"))
        return answer

    def _judge_device(self) -> str:
        return self.plan.devices[0]

    def _start_judge(self) -> None:
        args = {"device": self._judge_device(), "cache_dir": self.plan.cache_dir}
        # the first children start here: whether the parent has paid for `import torch` by now (it should not)
        from .standby import POOL
        self.judge = POOL.take("judge", args, self._log("judge"), self.config.prepare_timeout_s)
        self._mark("judge_start", torch_in_parent="torch" in sys.modules, standby=self.judge is not None,
                   spawned=self._spawned(self.judge))
        if self.judge is None:
            self.judge = Child.start("judge", args, self._log("judge"), self.config.prepare_timeout_s)
        self.judge_outstanding = 0

    def _ask_judge(self, kind: str, **fields) -> None:
        self.judge_queue.append((kind, fields))

    def _judge_quiet_needed(self, slots: list[Slot]) -> bool:
        """A worker on the judge's device is timing: send the judge nothing now."""
        return any(s.pair and s.worker and s.worker.phase == "timing" and s.device == self._judge_device()
                   for s in slots)

    def _pump_judge(self, slots: list[Slot]) -> None:
        if self.judge is None:
            self._start_judge()
        while self.judge_queue and self.judge.ready and not self._judge_quiet_needed(slots):
            kind, fields = self.judge_queue.popleft()
            self._mark(f"judge_ask_{kind}", key=fields.get("key") or fields.get("id"))
            self.judge.channel.send(kind, **fields)
            self.judge_outstanding += 1
            self.judge.deadline = time.monotonic() + self.config.prepare_timeout_s

    def _request_reference(self, definition: str, workload_uuid: str, seed: int, *, main: bool = True) -> bool:
        """Ask the judge for this reference unless it was asked already; True when asked now. Only
        the main input set's request carries the tolerance, so vacuity is checked once per workload."""
        key = ref_key(definition, workload_uuid, seed)
        if key in self.refs:
            return False
        self.refs[key] = None
        d = self.data.definitions[definition]
        self._ask_judge("reference", key=key, definition=d.model_dump(mode="json"),
                        workload=self._workload(definition, workload_uuid).model_dump(mode="json"),
                        root=str(self.data.root_for(definition)), seed=seed,
                        tolerance=self.config.tolerance(d).model_dump(mode="json") if main else None, floor=main)
        return True

    def _on_judge(self, message: dict, slots: list[Slot]) -> None:
        kind = message["kind"]
        if kind == "ready":
            self._mark("judge_ready", **self._startup(message))
            self.judge.ready = True
            self.judge.deadline = float("inf")
            return
        self._mark(f"judge_{kind}", key=message.get("key") or message.get("id"), computed=message.get("computed"),
                   seconds=message.get("seconds"))
        self.judge_outstanding -= 1
        self.judge.deadline = float("inf") if self.judge_outstanding <= 0 else \
            time.monotonic() + self.config.prepare_timeout_s
        if kind == "reference":
            self.refs[message["key"]] = message
            definition, workload, _ = message["key"].rsplit("/", 2)
            if not message.get("ok"):
                text = (f"definition '{definition}', workload {workload}: its reference cannot be used, so no "
                        f"solution is judged on this workload: {message.get('error')}")
                if text not in self.result.problems:
                    self.result.problems.append(text)
                    self.on_warning(text)
            elif message.get("vacuous"):  # only main input sets are checked for it
                where = f"{definition}/{workload}"
                if where not in self.result.vacuous:
                    self.result.vacuous[where] = message["vacuous"]
                    self.on_warning(f"VACUOUS TOLERANCE on {where}: {', '.join(message['vacuous'])} would PASS "
                                    f"under {self.config.tolerance(self.data.definitions[definition]).describe()}; "
                                    "its traces carry vacuous_tolerance")
            if message.get("floor_error") and definition not in self.floor_errors:
                self.floor_errors.add(definition)
                self.on_warning(f"no floor for definition '{definition}': {message['floor_error']}")
        elif kind == "ceilings":
            self.ceilings = message
        elif kind == "verdict":
            slot = self.verdict_waiters.pop(message["id"], None)
            if slot is None or slot.pair is None:
                return
            pair = slot.pair
            which = message["which"]
            ref = self.refs.get(pair.ref_key(which)) or {}
            if ref.get("inputs_digest") and pair.digests.get(which) != ref["inputs_digest"]:
                message = {**message, "status": Status.RUNTIME_ERROR.value, "correctness": None,
                           "reason": "the inputs built in the solution's process differ from the reference "
                                     "process's (same seed): the solution changed how its process makes tensors "
                                     "(patched torch's generators or factories?)"}
            if message.get("retry_file"):  # CUDA IPC does not work between these processes: files from now on
                if self.outputs_ipc:
                    self.outputs_ipc = False
                    self.on_warning(f"outputs go to the judge as files, not over CUDA IPC: {message.get('reason')}")
                pair.resend = True
                return
            setattr(pair, which, message)
            pair.wants_go = message.get("status") == Status.PASSED.value

    def _workload(self, definition: str, uuid: str):
        return next(w for w in self.data.workloads[definition] if w.uuid == uuid)

    # ---- the main loop ----------------------------------------------------------------------
    def _loop(self, queue: deque, slots: list[Slot], out_dir: Path) -> None:
        if self.judge is None:
            self._start_judge()
        while queue or any(s.pair for s in slots):
            for slot in slots:
                if slot.held is not None and slot.held_done is not None and slot.held_done.is_set():
                    self._release_held(slot)
                if slot.pair is None and queue:
                    self._dispatch(slot, queue, out_dir)
                self._prewarm_during_first_call(slot, queue, out_dir)
                self._maybe_go(slot)
            self._emit_deferred()
            self._pump_judge(slots)
            conns = [s.worker.channel.conn for s in slots if s.worker] + [self.judge.channel.conn]
            ready = wait(conns, timeout=0.2)
            if self.judge.channel.conn in ready:
                self._receive_judge(slots)
            for slot in slots:
                if slot.worker and slot.worker.channel.conn in ready:
                    self._receive(slot, queue)
                elif slot.worker and time.monotonic() > slot.worker.deadline:
                    self._overrun(slot)
            if time.monotonic() > self.judge.deadline:
                self._judge_failed(slots, f"exceeded its budget of {self.config.prepare_timeout_s:.0f} s "
                                          "(--prepare-timeout)")
        self._emit_deferred()

    def _emit_deferred(self) -> None:
        """Write the measured traces held back by `_finish` (their CI and trace cost the parent ~15 ms
        each, which the slot's next pair no longer waits for)."""
        while self._deferred:
            self._deferred.pop(0)()

    def _receive_judge(self, slots: list[Slot]) -> None:
        try:
            message = self.judge.channel.recv()
        except (EOFError, OSError):
            self._judge_failed(slots, self.judge.exit_description())
            return
        self._on_judge(message, slots)

    def _judge_failed(self, slots: list[Slot], how: str) -> None:
        """The reference process died (a definition's reference that crashes, or a harness bug):
        what it was computing is the definition's problem; start another for the rest."""
        self.judge.kill()
        pending = [k for k, v in self.refs.items() if v is None]
        for key in pending:
            self.refs[key] = {"key": key, "ok": False, "error": f"the reference process {how} while computing it"}
            self._on_judge({"kind": "reference", **self.refs[key]}, slots)
        for slot in list(self.verdict_waiters.values()):
            if slot.pair:
                setattr(slot.pair, slot.pair.waiting or "check", {"status": None,
                                                                  "reason": f"the judge process {how}"})
                slot.pair.wants_go = False
        self.verdict_waiters.clear()
        self.judge_queue = deque(r for r in self.judge_queue if r[0] == "reference"
                                 and self.refs.get(r[1]["key"]) is None)
        self._start_judge()

    def _skip_reason(self, d: str, s: str) -> tuple[Status, str] | None:
        if s in self.plan.build_failures:
            status, reason = self.plan.build_failures[s]
            return Status(status), reason
        if self.failures[(d, s)] >= self.config.max_failures:
            return Status.RUNTIME_ERROR, f"skipped: crashed or timed out {self.config.max_failures} times in this run"
        return None

    def _dispatch(self, slot: Slot, queue: deque, out_dir: Path) -> None:
        while queue:
            d, s, w = queue.popleft()
            workload = self._workload(d, w)
            pair = Pair(d, s, w, workload_seed(self.config.seed, workload),
                        workload_seed(self.config.seed + 1, workload))
            skip = self._skip_reason(d, s)
            if skip:
                self._emit_pair(pair, skip[0], skip[1])
                continue
            known = self.refs.get(pair.ref_key())
            if known and not known.get("ok"):
                continue  # the reference failed: the definition's problem, reported once
            reason = self._unsupported_here(d, s, workload, slot.device)
            if reason:  # what the JSON says rules it out: no worker (imports, CUDA context) is started for it
                self._emit_pair(pair, Status.UNSUPPORTED, reason, device=slot.device)
                continue
            self._request_reference(d, w, pair.seed)
            if self.config.fresh_check:
                self._request_reference(d, w, pair.fresh_seed, main=False)  # no vacuity check: one per workload
            self._look_ahead(queue)
            if slot.worker and slot.key != (d, s):
                slot.worker.stop()
                slot.worker = None
            if slot.worker is None and slot.spare is not None and slot.spare_key == (d, s):
                slot.worker, slot.key, slot.spare, slot.spare_key = slot.spare, slot.spare_key, None, None
            if slot.worker is None:
                slot.worker, slot.key = self._start_worker(slot.device, d, s, out_dir), (d, s)
            self._prestart(slot, queue, out_dir)
            slot.pair = pair
            pair.log_mark = slot.worker.log.mark()
            definition = self.data.definitions[d]
            job = dict(definition=definition.model_dump(mode="json"), workload=workload.model_dump(mode="json"),
                       root=str(self.data.root_for(d)), seed=pair.seed, fresh_seed=pair.fresh_seed)
            if self._start_prewarm(slot, pair, queue, out_dir):
                slot.held = job  # sent once the pre-warm processes are done (_release_held)
                slot.worker.deadline = float("inf")
                return
            self._send_job(slot, job)
            return

    def _send_job(self, slot: Slot, job: dict) -> None:
        pair = slot.pair
        self._mark("job", device=slot.device, solution=pair.solution, workload=pair.workload)
        slot.worker.channel.send("job", **job)
        self._set_phase(slot, "queued")

    def _release_held(self, slot: Slot) -> None:
        """The pre-warm of the held job's solution is over: send the job (unless its worker is gone)."""
        job, slot.held, slot.held_done = slot.held, None, None
        if slot.pair is None or slot.worker is None or not slot.worker.alive():
            return  # the worker died meanwhile: _worker_died has answered the pair
        self._send_job(slot, job)

    def _prewarm_during_first_call(self, slot: Slot, queue: deque, out_dir: Path) -> None:
        """A solution's first pair on this device still in its first call after SLOW_FIRST_CALL_S: it is
        compiling, so the rest will too; pre-warm the remaining workloads now, beside it (their processes'
        start-up and compilations overlap this first call), and hold this pair's timing until they are
        done (`_maybe_go`)."""
        from .prewarm import SLOW_FIRST_CALL_S
        pair, worker = slot.pair, slot.worker
        if pair is None or worker is None or worker.phase != "first_call" or slot.held_done is not None \
                or self.config.jit_workers is not None:
            return
        key = (pair.definition, pair.solution, slot.device)
        if key in self.prewarmed or key in self.first_calls or \
                time.monotonic() - slot.phase_since <= SLOW_FIRST_CALL_S:
            return
        self._start_prewarm(slot, pair, queue, out_dir, include_pair=False)

    def _start_prewarm(self, slot: Slot, pair: Pair, queue: deque, out_dir: Path, include_pair: bool = True) -> bool:
        """The JIT pre-warm of `pair`'s solution on this device (fib/harness/prewarm.py): with --jit-workers
        at its first pair, by default at the pair after a first call over SLOW_FIRST_CALL_S; the remaining
        workloads' first calls in a few extra processes at once, watched from a thread. True when the job
        must wait for them."""
        from .prewarm import SLOW_FIRST_CALL_S, split, worker_count
        d, s = pair.definition, pair.solution
        key = (d, s, slot.device)
        if key in self.prewarmed:
            return False
        if self.config.jit_workers is None and include_pair:  # auto: after a first call that compiled
            if key not in self.first_calls:
                return False  # the solution's first pair here runs first: its first call tells
            if self.first_calls[key] <= SLOW_FIRST_CALL_S:
                self.prewarmed.add(key)  # warm caches: nothing to gain
                return False
        self.prewarmed.add(key)
        todo = ([pair.workload] if include_pair else []) + [w for dd, ss, w in queue if dd == d and ss == s]
        if not todo:
            return False
        info = self._device_infos.get(slot.device) or {}
        count = worker_count(self.config.jit_workers, len(todo), slot.device, device_gib=info.get("memory_gb"),
                             n_devices=len(self.plan.devices))
        if count <= 0:
            return False
        workloads = sorted((self._workload(d, w) for w in todo), key=lambda x: tuple(x.axes.values()))
        args, env = self._worker_args(slot.device, d, s, out_dir)
        definition = self.data.definitions[d].model_dump(mode="json")
        root = str(self.data.root_for(d))
        chunks = [[{"definition": definition, "workload": w.model_dump(mode="json"), "root": root,
                    "seed": workload_seed(self.config.seed, w)} for w in chunk] for chunk in split(workloads, count)]
        budget = self.config.jit_timeout_s + self.config.timeout_s / 10 * max(len(c) for c in chunks)
        self._mark("prewarm_start", device=slot.device, solution=s, processes=len(chunks), workloads=len(todo))
        self.on_phase(slot.device, s, "jit_prewarm")
        done = threading.Event()
        slot.held_done = done
        log = self._log(f"{s}.prewarm")

        def pool() -> None:
            started, answers = time.monotonic(), []
            children = [Child.start("prewarm", {**args, "jobs": chunk}, log, budget, env=env) for chunk in chunks]
            deadline = started + budget
            try:
                for child in children:
                    while time.monotonic() < deadline:
                        alive = child.alive()  # before the poll: a child that answered and exited is read too
                        if child.channel.conn.poll(0.2 if alive else 0):
                            try:
                                message = child.channel.recv()
                            except (EOFError, OSError):
                                break
                            if message.get("kind") == "prewarmed":
                                answers.append(message)
                                break
                        elif not alive:
                            break
            finally:
                for child in children:
                    child.kill()
                failed = {k: v for a in answers for k, v in (a.get("failed") or {}).items()}
                self._mark("prewarm_end", device=slot.device, solution=s, seconds=round(time.monotonic() - started, 3),
                           answered=len(answers), processes=len(children),
                           workloads=sum(len(a.get("done") or []) for a in answers), failed=len(failed) or None)
                done.set()
        threading.Thread(target=pool, name=f"fib-prewarm-{s}", daemon=True).start()
        return True

    def _unsupported_here(self, d: str, s: str, workload, device: str) -> str | None:
        """The solution's declared needs (target hardware, packages, shape constraints) against this
        device, decided in the parent; the worker asks the module's own hook after import."""
        from .. import solutions as sol_mod
        if device not in self._device_infos:
            self._device_infos[device] = sol_mod.device_info(device)
        key = (d, s, tuple(sorted(workload.axes.items())), device)
        if key not in self._static_reasons:
            definition = self.data.definitions[d]
            self._static_reasons[key] = sol_mod.unsupported_reason(
                self.data.solutions[d][s], definition, definition.resolve_axes(workload.axes),
                self._device_infos[device], any_hardware=self.config.any_hardware)
        return self._static_reasons[key]

    def _runnable(self, d: str, s: str, w: str, device: str) -> bool:
        """Not skipped (build failure, too many crashes) and not ruled out by its JSON on `device`."""
        return self._skip_reason(d, s) is None and not self._unsupported_here(d, s, self._workload(d, w), device)

    def _look_ahead(self, queue: deque, depth: int = 2) -> None:
        """Ask for the references of the next workloads now, so the judge works while workers do."""
        asked = 0
        for d, s, w in list(queue)[:8]:
            if asked >= depth:
                return
            if self._runnable(d, s, w, self.plan.devices[0]):
                asked += self._request_reference(d, w, workload_seed(self.config.seed, self._workload(d, w)))

    def _prestart(self, slot: Slot, queue: deque, out_dir: Path) -> None:
        """Start the worker of the next solution in the queue now: its Python and torch imports then
        overlap this solution's work (it touches no device until its first job)."""
        upcoming = next(((d, s) for d, s, w in queue if (d, s) != slot.key and self._runnable(d, s, w, slot.device)),
                        None)
        if upcoming is None or upcoming == slot.spare_key:
            return
        if slot.spare is not None:
            slot.spare.kill()
        slot.spare, slot.spare_key = self._start_worker(slot.device, *upcoming, out_dir), upcoming

    def _worker_args(self, device: str, d: str, s: str, out_dir: Path) -> tuple[dict, dict]:
        """A worker's (or pre-warm process's) arguments and its solution's own environment variables."""
        solution = self.data.solutions[d][s]
        dumped = solution.model_dump(mode="json")
        if solution.root is not None:  # the worker reads the files itself (and meets their errors itself)
            dumped["sources"] = [{"path": src["path"]} for src in dumped["sources"]]
        args = {"device": device, "config": self.config.model_dump(mode="json"),
                "solution": dumped, "out_dir": str(out_dir),
                "outputs_ipc": self.outputs_ipc and device.startswith("cuda") and self._judge_device().startswith("cuda"),
                "solution_root": str(solution.root) if solution.root else None,
                "solution_file": str(solution.file) if solution.file else None,
                "solution_namespaced": solution.namespaced, "cache_dir": self.plan.cache_dir}
        return args, solution.spec.worker_environment(dict(os.environ))

    def _start_worker(self, device: str, d: str, s: str, out_dir: Path) -> Child:
        from .standby import POOL
        args, env = self._worker_args(device, d, s, out_dir)
        child = POOL.take("worker", args, self._log(s), self.config.prepare_timeout_s, env=env)
        self._mark("worker_start", device=device, solution=s, standby=child is not None, spawned=self._spawned(child))
        return child or Child.start("worker", args, self._log(s), self.config.prepare_timeout_s, env=env)

    def _budget(self, slot: Slot, phase: str) -> float:
        pair = slot.pair
        solution = self.data.solutions[pair.definition][pair.solution]
        if phase == "build":
            return self.config.build_budget(solution.spec.build_timeout_s)
        if phase == "first_call":
            first = (pair.definition, pair.solution) not in self.first_call_done
            return self.config.jit_timeout_s if first else self.config.timeout_s
        return self.config.prepare_timeout_s

    def _set_phase(self, slot: Slot, phase: str) -> None:
        worker, pair = slot.worker, slot.pair
        worker.phase = phase
        now = time.monotonic()
        slot.phase_since = now
        if phase == "check":
            self.first_call_done.add((pair.definition, pair.solution))
            pair.pair_deadline = now + self.config.timeout_s
            worker.deadline = pair.pair_deadline
        elif phase in ("timing", "fresh_check"):
            worker.deadline = pair.pair_deadline
        elif phase == "queued":
            worker.deadline = now + self.config.prepare_timeout_s
        else:
            worker.deadline = now + self._budget(slot, phase)
        self.on_phase(slot.device, pair.solution, phase)

    def _maybe_go(self, slot: Slot) -> None:
        pair = slot.pair
        if pair is not None and pair.resend:
            pair.resend = False
            self._mark("resend", device=slot.device, workload=pair.workload, which=pair.waiting)
            try:
                slot.worker.channel.send("verdict", go=False, resend=True)
            except OSError:
                pass
            return
        if pair is None or pair.wants_go is None:
            return
        if slot.held_done is not None and slot.held is None and pair.wants_go:
            if not slot.held_done.is_set():
                return  # a pre-warm started during this pair's first call: no timing beside it
            slot.held_done = None
        if pair.wants_go and slot.device == self._judge_device() and self.judge_outstanding > 0:
            return  # the judge is still busy on this device: time only once it is quiet
        go, which = pair.wants_go, pair.waiting
        pair.wants_go, pair.waiting = None, None
        self._mark("go" if go else "stop_pair", device=slot.device, workload=pair.workload, which=which)
        try:
            slot.worker.channel.send("verdict", go=go)
        except OSError:
            return
        if go and which == "check":
            slot.worker.phase = "timing"  # from now on the judge keeps off this device
        pair.pair_deadline = time.monotonic() + pair.remaining_s
        slot.worker.deadline = pair.pair_deadline

    def _receive(self, slot: Slot, queue: deque) -> None:
        worker = slot.worker
        try:
            message = worker.channel.recv()
        except (EOFError, OSError):
            self._worker_died(slot, worker.exit_description())
            return
        kind = message["kind"]
        self._mark(f"worker_{kind}", device=slot.device, solution=slot.key[1] if slot.key else None,
                   workload=slot.pair.workload if slot.pair else None, phase=message.get("phase"),
                   which=message.get("which"), **self._startup(message))
        if kind == "ready":
            worker.ready = True
        elif kind == "phase":
            self._set_phase(slot, message["phase"])
        elif kind == "outputs":
            self._judge_outputs(slot, message)
        elif kind == "result":
            self._finish(slot, message)

    def _judge_outputs(self, slot: Slot, message: dict) -> None:
        pair = slot.pair
        which = message["which"]
        key = pair.ref_key(which)
        definition, workload, _ = self._objects(pair)
        pair.waiting = which
        pair.remaining_s = max(0.0, pair.pair_deadline - time.monotonic())
        slot.worker.deadline = float("inf")  # judging is not the solution's time
        ref = self.refs.get(key)
        if ref is not None and not ref.get("ok"):
            setattr(pair, which, {"status": None, "reason": "no reference", "no_reference": True})
            pair.wants_go = False
            return
        pair.digests[which] = message.get("inputs_digest")
        self._ids += 1
        self.verdict_waiters[self._ids] = slot
        self._ask_judge("judge", id=self._ids, which=which, ref_key=key, path=message.get("path"),
                        ipc=message.get("ipc"),
                        definition=definition.model_dump(mode="json"), workload=workload.model_dump(mode="json"),
                        tolerance=self.config.tolerance(definition).model_dump(mode="json"),
                        also=[t.model_dump(mode="json") for t in self.config.also_tolerances(definition)])

    def _pair_log(self, slot: Slot) -> str:
        return slot.worker.log.since(slot.pair.log_mark) if slot.worker else ""

    def _finish(self, slot: Slot, message: dict) -> None:
        pair = slot.pair
        device = slot.device
        first_call = (message.get("phases_s") or {}).get("first_call")
        if first_call is not None:
            self.first_calls.setdefault((pair.definition, pair.solution, device), float(first_call))
        extra = {"worker": f"{device}/pid{slot.worker.pid}", "phases_s": {k: round(v, 6) for k, v in
                                                                          (message.get("phases_s") or {}).items()}}
        ref = self.refs.get(pair.ref_key()) or {}
        if message.get("solution_config"):
            extra["solution_config"] = message["solution_config"]
        if ref.get("ok"):
            extra["workload_prepare_s"] = {"reference_s": ref.get("seconds"), "reference_computed": ref.get("computed")}
        status = message.get("status")
        log = self._pair_log(slot)
        slot.pair = None
        if message.get("fatal"):
            slot.worker.kill()
            slot.worker = None
            self.failures[(pair.definition, pair.solution)] += 1
        if (pair.check or {}).get("no_reference") or (pair.fresh or {}).get("no_reference") or \
                (status == "JUDGED" and not ref.get("ok", True)):
            return  # the definition's fault: reported in problems, no trace
        if status == "MEASURED":
            self._deferred.append(lambda: self._emit_measured(pair, message, log, device, ref, extra))
        elif status == "JUDGED":
            verdict = pair.fresh if message.get("fresh") else pair.check
            self._emit_verdict(pair, verdict, bool(message.get("fresh")), log, device, extra)
        else:
            self._emit_pair(pair, Status(status), message.get("reason"), log=log, device=device, **extra)

    def _emit_verdict(self, pair: Pair, verdict: dict, fresh: bool, log: str, device: str, extra: dict) -> None:
        if verdict.get("status") is None:
            self._emit_pair(pair, Status.RUNTIME_ERROR, f"not judged: {verdict.get('reason')}", log=log, device=device,
                            **extra)
            return
        status = Status(verdict["status"])
        reason = verdict.get("reason")
        if fresh:
            reason = f"passed on the first input set but failed on a fresh one after timing (stale or cached " \
                     f"results?): {reason}"
        correctness = Correctness.model_validate(verdict["correctness"]) \
            if status == Status.INCORRECT_NUMERICAL and verdict.get("correctness") else None
        if status == Status.INCORRECT_NUMERICAL and correctness is None:
            status = Status.RUNTIME_ERROR
        self._emit_pair(pair, status, reason, log=log, device=device, correctness=correctness, **extra)

    def _emit_measured(self, pair: Pair, message: dict, log: str, device: str, ref: dict, extra: dict) -> None:
        from ..timing.stats import fill_ci
        timing = fill_ci(TimingStats.model_validate(message["timing"]))
        latency = timing.median_ms
        ref_ms = float(ref.get("seconds") or 0.0) * 1000.0
        performance = Performance(latency_ms=latency, reference_latency_ms=ref_ms,
                                  speedup_factor=ref_ms / latency if latency > 0 else 0.0, timing=timing)
        correctness = Correctness.model_validate(pair.check["correctness"])
        self._emit_pair(pair, Status.PASSED, None, log=log, device=device, correctness=correctness,
                        performance=performance, **extra)

    # ---- faults -----------------------------------------------------------------------------
    def _blame(self, slot: Slot, status: Status, reason: str) -> None:
        pair = slot.pair
        worker = slot.worker
        worker.kill()  # drains its output first: the log below is complete
        slot.worker = None
        if pair is None:
            return
        slot.pair = None
        self.failures[(pair.definition, pair.solution)] += 1
        self.verdict_waiters = {k: v for k, v in self.verdict_waiters.items() if v is not slot}
        log = worker.log.since(pair.log_mark)
        self._emit_pair(pair, status, reason, log=log, device=slot.device, worker=f"{slot.device}/pid{worker.pid}")

    def _worker_died(self, slot: Slot, how: str) -> None:
        phase = slot.worker.phase
        if slot.pair is None:
            slot.worker.kill()
            slot.worker = None
            return
        self._blame(slot, Status.RUNTIME_ERROR, f"worker process {how} while {slot.pair.solution} was in "
                                                f"phase '{phase}'")

    def _overrun(self, slot: Slot) -> None:
        phase = slot.worker.phase
        if slot.pair is None:  # idle worker that never became ready: drop it
            slot.worker.kill()
            slot.worker = None
            return
        pair = slot.pair
        if phase == "build":
            budget = self._budget(slot, "build")
            status, reason = Status.COMPILE_ERROR, f"import/build exceeded its budget of {budget:.0f} s"
        elif phase == "first_call":
            first = (pair.definition, pair.solution) not in self.first_call_done
            budget = self._budget(slot, "first_call")
            which = "the JIT budget (--jit-timeout)" if first else "the timeout (--timeout)"
            status, reason = Status.TIMEOUT, f"first call exceeded {which} of {budget:.0f} s"
            self.first_call_done.add((pair.definition, pair.solution))  # the JIT budget is spent once
        elif phase in ("check", "timing", "fresh_check"):
            status, reason = Status.TIMEOUT, (f"evaluation exceeded the timeout of {self.config.timeout_s:.0f} s "
                                              f"(in phase '{phase}')")
        else:
            status, reason = Status.TIMEOUT, (f"the worker's phase '{phase}' exceeded "
                                              f"{self.config.prepare_timeout_s:.0f} s")
        self._blame(slot, status, reason)
