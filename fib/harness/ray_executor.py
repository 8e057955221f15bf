"""`fib run --cluster ray[://ADDRESS]`: the parent stays the driver, the pairs run on Ray actors.

One actor per GPU (`num_gpus=1`; with `--gpus H100,H200`, also Ray's `accelerator_type` of the
node, i.e. the node resource `accelerator_type:H100`). Each actor runs fib's own Runner on its
node (fib.harness.ray_node): the worker child and the judge child of a local run, unchanged.

The driver:
- ships data through Ray's object store: one bundle per definition (its JSON, the selected
  workloads, each safetensors blob as an object of its own) and one per solution (its sources);
  a node fetches a blob only when it lacks it, so once per node;
- hands out chunks: a run of workloads of one (definition, solution) for one actor. The
  reference of (definition, workload, seed) is computed once per device kind: a workload whose
  reference is being computed by another actor of the same kind is not handed out until that
  reference arrives (it then travels with the next chunk that needs it);
- writes every trace into the run directory the moment it arrives (the same fsynced append as a
  local run), so a lost driver leaves what was measured intact and `--resume` goes on with
  whatever the cluster has then;
- holds at most POLL_MAX_EVENTS events per actor: each actor keeps its events until the driver
  polls, and the driver writes each one out before polling again (back-pressure by pull);
- on a dead actor or node: the pair in flight gets RUNTIME_ERROR naming the host, the rest of
  its chunk goes back to the queue, a replacement actor is asked for; a solution that kills
  `max_failures` actors is skipped as a local run skips a solution that crashes its workers.

With `--gpus K1,K2` every pair runs once on each kind (one trace per kind, `evaluation.gpu_kind`);
without it, once on any GPU.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

import ray

from ..dataset import resolve_blob
from ..env import collect_environment, git_info
from ..errors import ClusterError
from ..rundir import append_trace
from ..schema import Status, Trace
from .evaluate import make_trace, now_iso
from .seeds import workload_seed
from .ray_node import POLL_MAX_EVENTS, FibNode, code_digest
from .runner import PACKAGE_ROOT, RunResult, write_run_json

KIND_RESOURCE = "accelerator_type:{}"   # Ray's resource for a node's GPU kind
MAX_CHUNK = 16                          # workloads per chunk at most
SCAN_WINDOW = 512                       # how far into the queue a chunk is looked for
_REMOTE_CLASSES: dict = {}              # node class -> ray.remote(node class), made once each


@dataclass
class Actor:
    handle: object
    label: str | None
    number: int
    state: str = "starting"             # starting, idle, busy, dead
    info: dict = field(default_factory=dict)
    pending: object = None               # the ObjectRef of its outstanding call (hello or poll)
    chunk: list = field(default_factory=list)   # pairs (d, s, w, kind) of the chunk it runs
    traced: set = field(default_factory=set)
    in_flight: tuple | None = None
    claims: set = field(default_factory=set)
    since: float = field(default_factory=time.monotonic)

    @property
    def where(self) -> str:
        host = self.info.get("host", "?")
        node = (self.info.get("node_id") or "?")[:12]
        return f"host {host} (Ray node {node}, actor {self.number})"


class RayCluster:
    """What a driver of fib's Ray actors needs, whatever the actors then do (evaluate chunks for
    `fib run`, capture a profile for `fib profile`): the connection, one actor per GPU of the
    requested kinds (`node_class`, FibNode or a subclass of it), and the data shipped through the
    object store (one bundle per definition, one per solution)."""
    node_class = FibNode

    def __init__(self, address: str | None = None, gpu_kinds: list[str] | None = None, *,
                 max_actors: int | None = None, evaluator: str | None = None, actor_options: dict | None = None,
                 init_options: dict | None = None):
        self.address = address
        self.gpu_kinds = list(gpu_kinds or [])
        self.max_actors = max_actors
        self.evaluator = evaluator          # tests: "module:function" instead of the Runner on the node
        self.actor_options = actor_options or {}
        self.init_options = init_options or {}
        self.started_ray = False
        self._bundles: dict = {}

    # ---- cluster ----------------------------------------------------------------------------
    def _connect(self) -> None:
        if ray.is_initialized():
            return
        options = {"log_to_driver": False, "include_dashboard": False, **self.init_options}
        if self.address:
            options["address"] = self.address
        # Nodes import the fib the driver runs: the same package on PYTHONPATH (a cluster whose nodes
        # have fib installed elsewhere gets its fib checked in _welcome).
        options.setdefault("runtime_env", {"env_vars": {"PYTHONPATH": str(PACKAGE_ROOT)}})
        try:
            ray.init(**options)
        except Exception as exc:
            raise ClusterError(f"cannot connect to the Ray cluster {self.address or '(local)'}: {exc}",
                               field="--cluster", fix="start it with `ray start --head` (docs/cluster.md)") from None
        self.started_ray = True

    def _gpu_counts(self) -> dict[str | None, int]:
        """GPUs per requested kind (None: any kind) among the cluster's alive nodes."""
        counts: Counter = Counter()
        for node in ray.nodes():
            if not node.get("Alive"):
                continue
            resources = node.get("Resources") or {}
            gpus = int(resources.get("GPU", 0))
            if not self.gpu_kinds:
                counts[None] += gpus
            for kind in self.gpu_kinds:
                if resources.get(KIND_RESOURCE.format(kind)):
                    counts[kind] += gpus
        return counts

    def _new_actor(self, label: str | None, number: int) -> Actor:
        options = {"num_gpus": 1, "num_cpus": 0, "max_restarts": 0, **self.actor_options}
        if label:
            options["resources"] = {**options.get("resources", {}), KIND_RESOURCE.format(label): 0.001}
        if self.node_class not in _REMOTE_CLASSES:
            _REMOTE_CLASSES[self.node_class] = ray.remote(self.node_class)
        remote = _REMOTE_CLASSES[self.node_class]
        handle = remote.options(**options).remote(label, self.evaluator,
                                                  omp_num_threads=os.environ.get("OMP_NUM_THREADS"))
        actor = Actor(handle, label, number)
        actor.pending = handle.hello.remote()
        return actor

    def _start_actors(self) -> list[Actor]:
        counts = self._gpu_counts()
        kinds = self.gpu_kinds or [None]
        missing = [k or "any" for k in kinds if counts.get(k, 0) == 0]
        if missing:
            seen = sorted({k.split(":", 1)[1] for n in ray.nodes() if n.get("Alive")
                           for k in (n.get("Resources") or {}) if k.startswith("accelerator_type:")})
            raise ClusterError(f"the Ray cluster has no GPU of kind {', '.join(missing)} (its kinds: "
                               f"{', '.join(seen) or 'none reported'})", field="--gpus",
                               fix="start the nodes with GPUs (`ray start --num-gpus N`) and name kinds they have")
        actors = []
        for kind in kinds:
            n = counts[kind] if self.max_actors is None else min(self.max_actors, counts[kind])
            actors += [self._new_actor(kind, len(actors) + i) for i in range(n)]
        return actors

    def _stop(self) -> None:
        """Kill this driver's actors; disconnect if this driver started Ray."""
        for actor in getattr(self, "actors", []):
            ray.kill(actor.handle, no_restart=True)
        if self.started_ray:
            ray.shutdown()
            self.started_ray = False

    # ---- shipping ---------------------------------------------------------------------------
    def _dataset_bundle(self, data, d: str, workloads: list[str]):
        """The definition `d` and its workloads `workloads` (uuids) in the object store, made once."""
        if d in self._bundles:
            return self._bundles[d]
        definition, root = data.definitions[d], data.root_for(d)
        chosen = set(workloads)
        lines, blobs = [], {}
        for workload in data.workloads[d]:
            if workload.uuid not in chosen:
                continue
            dumped = workload.model_dump(mode="json", exclude_none=True)
            for name, spec in workload.inputs.items():
                if spec.type != "safetensors":
                    continue
                file = resolve_blob(root, spec.path)
                rel = spec.path if not Path(spec.path).is_absolute() else \
                    f"blob/abs/{hashlib.sha256(spec.path.encode()).hexdigest()[:12]}/{file.name}"
                dumped["inputs"][name]["path"] = rel
                if rel not in blobs:
                    if not file.is_file():
                        raise ClusterError(f"workload {workload.uuid}: blob {file} does not exist", where=file,
                                           field=f"inputs.{name}.path", fix="fetch the dataset's blobs first")
                    blobs[rel] = {"ref": ray.put(file.read_bytes()), "size": file.stat().st_size}
            lines.append(json.dumps(dumped))
        text = definition.model_dump_json(exclude_none=True)
        digest = hashlib.sha256((text + "\n".join(lines) + json.dumps(sorted(blobs))).encode()).hexdigest()[:16]
        bundle = {"name": d, "op_type": definition.op_type, "definition": text,
                  "workloads": "\n".join(lines) + "\n", "blobs": blobs, "digest": digest}
        self._bundles[d] = ray.put(bundle)
        return self._bundles[d]

    def _solution_bundle(self, data, d: str, s: str):
        key = (d, s)
        if key in self._bundles:
            return self._bundles[key]
        solution = data.solutions[d][s]
        files = {src.path: src.content or "" for src in solution.sources}
        dumped = solution.model_dump(mode="json", exclude_none=True)
        dumped.pop("source_dir", None)
        dumped["sources"] = [{"path": p} for p in files]
        text = json.dumps(dumped)
        digest = hashlib.sha256((text + json.dumps(files, sort_keys=True)).encode()).hexdigest()[:16]
        self._bundles[key] = ray.put({"definition": d, "name": s, "files": files, "solution_json": text,
                                      "digest": digest})
        return self._bundles[key]

class RayExecutor(RayCluster):
    name = "ray"

    def __init__(self, address: str | None = None, gpu_kinds: list[str] | None = None, *,
                 max_actors: int | None = None, evaluator: str | None = None, keep_traces: bool = True,
                 poll_timeout_s: float = 0.5, max_chunk: int = MAX_CHUNK, actor_options: dict | None = None,
                 init_options: dict | None = None):
        super().__init__(address, gpu_kinds, max_actors=max_actors, evaluator=evaluator,
                         actor_options=actor_options, init_options=init_options)
        self.keep_traces = keep_traces
        self.poll_timeout_s = poll_timeout_s
        self.max_chunk = max_chunk
        self.stats = Counter()              # what happened: chunks, fetched blobs, references, ...
        self.fetched: list[dict] = []
        self.max_pending_events = 0

    # ---- run --------------------------------------------------------------------------------
    def run(self, data, plan, run_dir: Path, *, resume: bool = False, command: list[str] | None = None,
            on_trace=None, on_phase=None, on_warning=None) -> RunResult:
        from ..rundir import RunDirLock, holds_lock
        self.data, self.plan, self.config, self.run_dir = data, plan, plan.config, Path(run_dir)
        self.on_trace = on_trace or (lambda trace: None)
        self.on_phase = on_phase or (lambda device, solution, phase: None)
        self.on_warning = on_warning or (lambda text: None)
        if holds_lock(self.run_dir):
            return self._run(resume, command)
        with RunDirLock(self.run_dir):
            return self._run(resume, command)

    def _done(self, resume: bool) -> tuple[set, set]:
        """(d, s, w, kind) and (d, s, w) already traced in the run directory."""
        from ..rundir import read_traces
        if not resume:
            return set(), set()
        found = read_traces(self.run_dir)
        for note in found.notes:
            self.on_warning(note)
        self.result.previous = found.traces if self.keep_traces else []
        by_kind, any_kind = set(), set()
        for trace in found.traces:
            if trace.solution and trace.evaluation:
                key = (trace.definition, trace.solution, trace.workload.uuid)
                any_kind.add(key)
                by_kind.add(key + ((trace.evaluation.model_extra or {}).get("gpu_kind"),))
        return by_kind, any_kind

    def _run(self, resume: bool, command) -> RunResult:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "logs").mkdir(exist_ok=True)
        self.result = RunResult(self.run_dir)
        self._connect()
        by_kind, any_kind = self._done(resume)
        kinds = self.gpu_kinds or [None]
        pairs = ((d, s, w, k) for d, s, w in self.plan.pairs() for k in kinds)
        self.queue = deque(p for p in pairs if (p if p[3] else p[:3]) not in (by_kind if p[3] else any_kind))
        self.result.skipped_done = len(by_kind) if self.gpu_kinds else len(any_kind)
        self.failures: Counter = Counter()
        self.refs: dict = {}              # (device kind, d, w, seed) -> reference item | "failed"
        self.claims: dict = {}            # (device kind, d, w) -> the actor computing its references
        self._bundles: dict = {}
        self.environment = collect_environment()
        self._env_model = {"hardware": self.environment["hardware"], "libs": self.environment["libs"]}
        self.actors: list[Actor] = []
        info = {"command": command, "config": self.config.model_dump(mode="json"),
                "selection": {"devices": [], "definitions": self.plan.definitions,
                              "solutions": self.plan.solutions, "workloads": self.plan.workloads},
                "git": git_info(PACKAGE_ROOT), "environment": self.environment,
                "dataset_roots": [str(r) for r in self.data.roots], "started": now_iso(), "finished": None,
                "state": "running", "executor": {"engine": "ray", "address": self.address, "ray": ray.__version__,
                                                 "gpu_kinds": self.gpu_kinds, "actors": []}}
        write_run_json(self.run_dir, info)
        state = "finished"
        try:
            if self.queue:
                self.actors = self._start_actors()
                self._loop()
            if self.queue:
                state = "incomplete"
        except KeyboardInterrupt:
            state = "interrupted"
            self.result.interrupted = True
        finally:
            self._stop()
            info["executor"]["actors"] = [{**a.info, "state": a.state, "label": a.label} for a in self.actors
                                          if a.info]
            info["executor"]["stats"] = dict(self.stats)
            info.update(finished=now_iso(), state=state, problems=self.result.problems,
                        vacuous_tolerance=self.result.vacuous)
            write_run_json(self.run_dir, info)
        return self.result

    # ---- the loop ---------------------------------------------------------------------------
    def _loop(self) -> None:
        stalled_since = None
        while self.queue or any(a.state == "busy" for a in self.actors):
            for actor in self.actors:
                if actor.state == "idle" and self.queue:
                    self._hand_out(actor)
            waiting = [a.pending for a in self.actors if a.pending is not None]
            if not any(a.state in ("idle", "busy") for a in self.actors):
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > self.config.prepare_timeout_s:
                    text = (f"no Ray actor could be started for {self.config.prepare_timeout_s:.0f} s "
                            f"(--prepare-timeout); {len(self.queue)} pair(s) left for `fib run --resume`")
                    self.result.problems.append(text)
                    self.on_warning(text)
                    return
            else:
                stalled_since = None
            if not waiting:
                time.sleep(0.05)
                continue
            ready, _ = ray.wait(waiting, num_returns=len(waiting), timeout=self.poll_timeout_s)
            for ref in ready:
                actor = next(a for a in self.actors if a.pending is not None and a.pending == ref)
                actor.pending = None
                try:
                    value = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    self._actor_died(actor, exc)
                    continue
                if actor.state == "starting":
                    self._welcome(actor, value)
                else:
                    self._handle_events(actor, value)
                    if actor.state == "busy":
                        actor.pending = actor.handle.poll.remote(self.poll_timeout_s)

    def _welcome(self, actor: Actor, info: dict) -> None:
        actor.info = info
        if info.get("fib_code") != self._code:
            ray.kill(actor.handle, no_restart=True)
            actor.state = "dead"
            text = (f"{actor.where} runs another fib (fib {info.get('fib')}, code {info.get('fib_code')}; this driver: "
                    f"{self._code}): it is not used; install this commit on every node")
            self.result.problems.append(text)
            self.on_warning(text)
            return
        actor.state = "idle"

    @property
    def _code(self) -> str:
        if not hasattr(self, "_code_digest"):
            self._code_digest = code_digest()
        return self._code_digest

    def _chunk_size(self, actor: Actor) -> int:
        live = sum(1 for a in self.actors if a.state in ("idle", "busy") and a.label == actor.label) or 1
        return max(1, min(self.max_chunk, math.ceil(len(self.queue) / live / max(1, len(self.gpu_kinds)))))

    def _hand_out(self, actor: Actor) -> None:
        """Take a chunk for `actor` from the front of the queue and start it."""
        kind = actor.info.get("device_kind")
        size = self._chunk_size(actor)
        window = [self.queue.popleft() for _ in range(min(SCAN_WINDOW, len(self.queue)))]
        chunk, keep = [], []
        for pair in window:
            d, s, w, label = pair
            if label != actor.label or (chunk and (d, s) != chunk[0][:2]) or len(chunk) >= size:
                keep.append(pair)
                continue
            if self.failures[(d, s)] >= self.config.max_failures:
                self._emit_skip(pair, Status.RUNTIME_ERROR,
                                f"skipped: crashed or timed out {self.config.max_failures} times in this run "
                                "(Ray actors lost while running it)")
                continue
            seeds = self._seeds(d, w)
            if any(self.refs.get((kind, d, w, seed)) == "failed" for seed in seeds[:1]):
                continue  # the definition's problem: reported once, no trace (as a local run)
            claim = self.claims.get((kind, d, w))
            if claim is not None and claim is not actor:
                keep.append(pair)  # its reference is being computed on another node of this kind
                continue
            if not all((kind, d, w, seed) in self.refs for seed in seeds):
                self.claims[(kind, d, w)] = actor
                actor.claims.add((kind, d, w))
            chunk.append(pair)
        self.queue.extendleft(reversed(keep))
        if not chunk:
            return
        d, s = chunk[0][:2]
        references = [{"workload": w, "seed": seed, "data": item["data"], "meta": item["meta"]}
                      for _, _, w, _ in chunk for seed in self._seeds(d, w)
                      if isinstance(item := self.refs.get((kind, d, w, seed)), dict)]
        spec = {"run_id": self.run_dir.name, "definition": d, "solution": s, "workloads": [p[2] for p in chunk],
                "config": self.config.model_dump(mode="json"), "dataset": self._dataset_bundle(self.data, d, self.plan.workloads[d]),
                "solution_bundle": self._solution_bundle(self.data, d, s), "references": references}
        actor.chunk, actor.traced, actor.in_flight, actor.state = chunk, set(), None, "busy"
        actor.handle.start.remote(spec)
        actor.pending = actor.handle.poll.remote(self.poll_timeout_s)
        self.stats["chunks"] += 1
        self.on_phase(actor.where, s, "queued")

    def _seeds(self, d: str, w: str) -> list[int]:
        workload = self._workload(d, w)
        seeds = [workload_seed(self.config.seed, workload)]
        if self.config.fresh_check:
            seeds.append(workload_seed(self.config.seed + 1, workload))
        return seeds

    def _workload(self, d: str, w: str):
        if not hasattr(self, "_workloads"):
            self._workloads = {(dd, x.uuid): x for dd, items in self.data.workloads.items() for x in items}
        return self._workloads[(d, w)]

    # ---- events -----------------------------------------------------------------------------
    def _handle_events(self, actor: Actor, events: list) -> None:
        self.max_pending_events = max(self.max_pending_events, len(events))
        for kind, payload in events:
            if kind == "start":
                actor.in_flight = next((p for p in actor.chunk if p[2] == payload), None)
                if actor.in_flight:
                    self.on_phase(actor.where, actor.in_flight[1], "running")
            elif kind == "trace":
                self._trace(actor, payload)
            elif kind == "reference":
                self._reference(actor, payload)
            elif kind == "fetched":
                self.stats[f"fetched_{payload['what']}"] += 1
                self.fetched.append(payload)
            elif kind == "warning":
                self.on_warning(f"{actor.where}: {payload}")
            elif kind == "log":
                self._log(actor, payload)
            elif kind == "done":
                self._chunk_done(actor, payload)

    def _trace(self, actor: Actor, record: dict) -> None:
        trace = Trace.model_validate(record)
        pair = next((p for p in actor.chunk if p[2] == trace.workload.uuid), None)
        if pair is not None:
            actor.traced.add(pair)
        if actor.in_flight == pair:
            actor.in_flight = None
        self._emit(trace)

    def _emit(self, trace: Trace) -> None:
        append_trace(self.run_dir, trace)
        self.stats["traces"] += 1
        if self.keep_traces:
            self.result.traces.append(trace)
        self.on_trace(trace)

    def _reference(self, actor: Actor, item: dict) -> None:
        kind, d, w, seed = item["device_kind"], item["definition"], item["workload"], item["seed"]
        if item["ok"]:
            # owned by the driver from now on: a reference outlives the actor that computed it
            self.refs[(kind, d, w, seed)] = {"data": ray.put(ray.get(item["data"])), "meta": item["meta"]}
            self.stats["references_computed" if item.get("computed") else "references_reused"] += 1
        else:
            self.refs[(kind, d, w, seed)] = "failed"
        if all((kind, d, w, s) in self.refs for s in self._seeds(d, w)):
            self._release((kind, d, w))

    def _release(self, key) -> None:
        actor = self.claims.pop(key, None)
        if actor is not None:
            actor.claims.discard(key)

    def _log(self, actor: Actor, payload: dict) -> None:
        folder = self.run_dir / "logs" / f"{actor.info.get('host', 'node')}-actor{actor.number}"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / payload["name"], "a") as handle:
            handle.write(payload["text"])

    def _chunk_done(self, actor: Actor, payload: dict) -> None:
        for text in payload.get("problems") or []:
            if text not in self.result.problems:
                self.result.problems.append(text)
        for where, trivial in (payload.get("vacuous") or {}).items():
            self.result.vacuous.setdefault(where, trivial)
        if payload.get("error"):
            for pair in actor.chunk:
                if pair not in actor.traced:
                    self._emit_skip(pair, Status.RUNTIME_ERROR,
                                    f"harness error on {actor.where}: {payload['error']}", actor=actor)
        for key in list(actor.claims):
            self._release(key)
        actor.chunk, actor.traced, actor.in_flight, actor.state = [], set(), None, "idle"

    # ---- faults -----------------------------------------------------------------------------
    def _actor_died(self, actor: Actor, exc: Exception) -> None:
        was = actor.state
        actor.state = "dead"
        first_line = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        if was == "starting":
            self.on_warning(f"a Ray actor for {actor.label or 'a GPU'} could not start: {first_line}")
        if actor.in_flight is not None:
            pair = actor.in_flight
            self.failures[pair[:2]] += 1
            self._emit_skip(pair, Status.RUNTIME_ERROR,
                            f"the Ray actor on {actor.where} died while evaluating this pair "
                            f"({type(exc).__name__}: {first_line})", actor=actor)
        back = [p for p in actor.chunk if p not in actor.traced and p != actor.in_flight]
        if actor.in_flight is None and back:
            self.failures[back[0][:2]] += 1  # its start was not seen: still counted, so retries are bounded
        self.queue.extendleft(reversed(back))
        for key in list(actor.claims):
            self._release(key)
        self.stats["actors_lost"] += 1
        actor.chunk, actor.in_flight = [], None
        if was != "starting":
            self.on_warning(f"lost the Ray actor on {actor.where} ({type(exc).__name__}); "
                            f"{len(back)} pair(s) rescheduled; asking for a replacement")
            self.actors.append(self._new_actor(actor.label, len(self.actors)))

    def _emit_skip(self, pair: tuple, status: Status, reason: str, actor: Actor | None = None) -> None:
        d, s, w, label = pair
        extra = {}
        if actor is not None and actor.info:
            extra = {"cluster": "ray", "host": actor.info.get("host"), "node": (actor.info.get("node_id") or "")[:16],
                     "gpu_kind": label or actor.info.get("device_kind"), "gpu": actor.info.get("device_kind"),
                     "driver": actor.info.get("driver")}
        elif label:
            extra = {"cluster": "ray", "gpu_kind": label}
        workload = self._workload(d, w)
        trace = make_trace(self.data.definitions[d], workload, self.data.solutions[d][s], status, reason=reason,
                           environment=self._env_model, seed=workload_seed(self.config.seed, workload), **extra)
        self._emit(trace)


__all__ = ["RayCluster", "RayExecutor", "KIND_RESOURCE"]
