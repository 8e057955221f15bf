"""The node side of a Ray run: what one actor (one GPU) does with a chunk of pairs.

A chunk is a run of workloads of one (definition, solution). The actor makes the chunk's data
local to its node (from Ray's object store; no shared filesystem is assumed), installs the
references the driver already has for this device kind, runs the solution's build hook once per
node, then runs fib's own `Runner` over the chunk on its one device: the same worker child and
judge child as a local run, so budgets, isolation, the fresh check and statuses are unchanged.
Everything it learns goes to an event queue the driver polls (`FibNode.poll`):

  ("start", workload)            the Runner handed this workload to the worker (it is in flight)
  ("trace", record)              a trace, annotated with host, node, GPU kind, GPU name and driver
  ("reference", {...})           a reference the judge computed (or could not), for other nodes
  ("fetched", {...})             data this node fetched (a dataset, a blob, a reference, a build)
  ("warning", text)              the Runner's warnings (definition problems, vacuous tolerances)
  ("log", {name, text})          the chunk's worker/judge logs (capped)
  ("done", {problems, vacuous, error?})  the chunk is over

Node-local files live under `$FIB_RAY_NODE_DIR` (default `<tmp>/fib-ray`) / <Ray node id>: one
folder per Ray node even when several share a host, so "once per node" means what it says.
Concurrent actors of a node take a file lock before fetching, so each blob and each build hook
happens once per node.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import queue
import shutil
import socket
import tempfile
import threading
import time
import traceback
from pathlib import Path

import ray

from .runner import Runner, RunPlan

POLL_MAX_EVENTS = 64          # events per poll: what the driver holds per actor at most
LOG_SHIP_BYTES = 256 * 1024   # tail of each chunk log shipped back to the driver


def node_base(node_id: str) -> Path:
    base = Path(os.environ.get("FIB_RAY_NODE_DIR") or Path(tempfile.gettempdir()) / "fib-ray")
    return base / node_id[:16]


@contextlib.contextmanager
def node_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def code_digest() -> str:
    """A digest of fib's Python sources: driver and nodes must run the same fib."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class NodeRunner(Runner):
    """The Runner, telling which workload it hands to the worker (the pair in flight)."""
    MEASURES_CEILINGS = False  # one chunk's run.json stays on the node: the driver's run.json has none

    def __init__(self, *args, on_start=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.on_start = on_start or (lambda workload: None)

    def _set_phase(self, slot, phase: str) -> None:
        if phase == "queued" and slot.pair is not None:
            self.on_start(slot.pair.workload)
        super()._set_phase(slot, phase)


class FibNode:
    """One GPU of the cluster (Ray gives the actor its GPU through CUDA_VISIBLE_DEVICES)."""

    def __init__(self, label: str | None = None, evaluator: str | None = None, device: str | None = None,
                 omp_num_threads: str | None = None):
        # Ray sets OMP_NUM_THREADS=1 in its workers (for an actor without CPUs); the worker and judge
        # children would inherit it and run their CPU work single-threaded, unlike a local run (a CPU
        # definition's latency changed 10x). Keep what the driver had instead.
        if omp_num_threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = omp_num_threads
        self.node_id = ray.get_runtime_context().get_node_id()
        self.host = socket.gethostname()
        self.label = label
        self.base = node_base(self.node_id)
        self.base.mkdir(parents=True, exist_ok=True)
        os.environ["FIB_CACHE_DIR"] = str(self.base / "cache")  # references and build records of this node
        import torch
        self.device = device or ("cuda:0" if torch.cuda.is_available() else "cpu")
        from .inputs import device_kind_of
        self.device_kind = device_kind_of(self.device)
        self.evaluator = evaluator
        self.events: queue.Queue = queue.Queue()
        self.thread: threading.Thread | None = None
        self.chunks = 0

    # ---- called by the driver ---------------------------------------------------------------
    def hello(self) -> dict:
        if getattr(self, "_hello", None) is None:
            self._hello = self._describe()
        return self._hello

    def _describe(self) -> dict:
        from .. import __version__
        from ..env import _driver_version
        from ..device import device_info
        info = device_info(self.device)
        return {"host": self.host, "node_id": self.node_id, "ip": ray.util.get_node_ip_address(),
                "pid": os.getpid(), "device": self.device, "device_kind": self.device_kind,
                "gpu": info.get("name"), "driver": _driver_version() if self.device.startswith("cuda") else None,
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "label": self.label,
                "fib": __version__, "fib_code": code_digest(), "ray": ray.__version__,
                "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}

    def start(self, chunk: dict) -> None:
        assert self.thread is None or not self.thread.is_alive(), "one chunk at a time"
        self.chunks += 1
        self.thread = threading.Thread(target=self._chunk, args=(chunk,), name="fib-chunk", daemon=True)
        self.thread.start()

    def poll(self, timeout_s: float = 1.0, max_events: int = POLL_MAX_EVENTS) -> list:
        """Up to `max_events` events, waiting at most `timeout_s` for the first."""
        events = []
        try:
            events.append(self.events.get(timeout=timeout_s))
            while len(events) < max_events:
                events.append(self.events.get_nowait())
        except queue.Empty:
            pass
        return events

    # ---- one chunk --------------------------------------------------------------------------
    def emit(self, kind: str, payload) -> None:
        self.events.put((kind, payload))

    def _chunk(self, chunk: dict) -> None:
        done = {"problems": [], "vacuous": {}}
        try:
            if self.evaluator:
                module, function = self.evaluator.split(":")
                import importlib
                getattr(importlib.import_module(module), function)(self, chunk)
            else:
                done.update(self._evaluate(chunk))
        except BaseException as exc:  # a harness fault on this node: the driver answers the chunk's pairs
            traceback.print_exc()
            done["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        self.emit("done", done)

    def annotate(self, record: dict) -> dict:
        evaluation = record.get("evaluation") or {}
        evaluation.update(cluster="ray", host=self.host, node=self.node_id[:16],
                          gpu_kind=self.label or self.device_kind, gpu=self.device_kind,
                          driver=self.hello()["driver"])
        return record

    def _evaluate(self, chunk: dict) -> dict:
        from ..dataset import load_dataset
        from ..schema.config import RunConfig
        from ..schema.io import dump_json
        data_root = self._materialise_dataset(chunk["dataset"])
        solution_root = self._materialise_solution(chunk["solution_bundle"])
        data = load_dataset([data_root, solution_root])
        d, s = chunk["definition"], chunk["solution"]
        if s not in data.solutions.get(d, {}):
            problems = "; ".join(p.render() for p in data.problems) or "not found"
            raise RuntimeError(f"solution {s} of {d} did not load on {self.host}: {problems}")
        config = RunConfig.model_validate(chunk["config"])
        self._install_references(data, d, chunk.get("references") or [])
        failures = self._build(data.solutions[d][s], config)
        run_dir = self.base / "runs" / chunk["run_id"] / f"{os.getpid()}-{self.chunks}"
        shutil.rmtree(run_dir, ignore_errors=True)
        plan = RunPlan(config=config, definitions=[d], solutions={d: [s]}, workloads={d: list(chunk["workloads"])},
                       devices=[self.device], cache_dir=os.environ["FIB_CACHE_DIR"], build_failures=failures)
        shipped: set[str] = set()
        runner = NodeRunner(data, plan, run_dir, on_start=lambda w: self.emit("start", w),
                            on_trace=lambda t: self._on_trace(t, runner, shipped, dump_json),
                            on_phase=lambda *_: self._ship_references(runner, shipped),
                            on_warning=lambda text: self.emit("warning", text))
        result = runner.run()
        self._ship_references(runner, shipped)
        for log in sorted((run_dir / "logs").glob("*.log")):
            raw = log.read_bytes()
            self.emit("log", {"name": log.name, "text": raw[-LOG_SHIP_BYTES:].decode(errors="replace")})
        shutil.rmtree(run_dir, ignore_errors=True)
        return {"problems": result.problems, "vacuous": result.vacuous}

    def _on_trace(self, trace, runner, shipped, dump_json) -> None:
        self._ship_references(runner, shipped)  # before the trace: the next chunk of this kind can use them
        self.emit("trace", self.annotate(json.loads(dump_json(trace))))

    # ---- data from the object store ---------------------------------------------------------
    def _materialise_dataset(self, ref) -> Path:
        """The definition, its selected workloads and their blobs under this node's folder, once
        per node (the bundle is small; each blob is fetched only if this node lacks it)."""
        bundle = ray.get(ref)
        root = self.base / "data" / bundle["digest"]
        with node_lock(self.base / "locks" / f"data-{bundle['digest']}"):
            if (root / ".complete").is_file():
                return root
            (root / "definitions" / bundle["op_type"]).mkdir(parents=True, exist_ok=True)
            (root / "datasets" / bundle["op_type"]).mkdir(parents=True, exist_ok=True)
            (root / "definitions" / bundle["op_type"] / f"{bundle['name']}.json").write_text(bundle["definition"])
            (root / "datasets" / bundle["op_type"] / f"{bundle['name']}.jsonl").write_text(bundle["workloads"])
            for rel, blob in sorted(bundle["blobs"].items()):
                target = root / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(target.name + ".part")
                tmp.write_bytes(ray.get(blob["ref"]))
                os.replace(tmp, target)
                self.emit("fetched", {"what": "blob", "name": rel, "bytes": blob["size"], "node": self.node_id[:16]})
            (root / ".complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
            self.emit("fetched", {"what": "dataset", "name": bundle["name"], "node": self.node_id[:16]})
        return root

    def _materialise_solution(self, ref) -> Path:
        bundle = ray.get(ref)
        root = self.base / "solutions" / bundle["digest"]
        with node_lock(self.base / "locks" / f"solution-{bundle['digest']}"):
            if (root / ".complete").is_file():
                return root
            folder = root / "solutions" / bundle["definition"] / bundle["name"]
            folder.mkdir(parents=True, exist_ok=True)
            for rel, text in bundle["files"].items():
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                (folder / rel).write_text(text)
            (folder / "solution.json").write_text(bundle["solution_json"])
            (root / ".complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
            self.emit("fetched", {"what": "solution", "name": bundle["name"], "node": self.node_id[:16]})
        return root

    def _install_references(self, data, d: str, references: list[dict]) -> None:
        """Put the references other nodes of this device kind computed into this node's cache,
        under the key this node computes for them (its own paths), so its judge finds them."""
        from .inputs import ReferenceCache, reference_key
        cache = ReferenceCache()
        definition, root = data.definitions[d], data.root_for(d)
        by_uuid = {w.uuid: w for w in data.workloads[d]}
        for item in references:
            workload = by_uuid.get(item["workload"])
            if workload is None:
                continue
            file = cache.path(definition, reference_key(definition, workload, item["seed"], root, device=self.device))
            with node_lock(self.base / "locks" / f"ref-{file.stem}"):
                if file.is_file() and file.with_suffix(".json").is_file():
                    continue
                try:
                    payload = ray.get(item["data"])
                except ray.exceptions.RayError as exc:  # its owner is gone: the judge computes it again
                    self.emit("warning", f"reference of {d}/{item['workload']} could not be fetched ({exc}); "
                                         "computing it on this node")
                    continue
                file.parent.mkdir(parents=True, exist_ok=True)
                tmp = file.with_name(file.name + ".part")
                tmp.write_bytes(payload)
                os.replace(tmp, file)
                file.with_suffix(".json").write_text(json.dumps(item["meta"]))
                self.emit("fetched", {"what": "reference", "name": f"{d}/{item['workload']}/{item['seed']}",
                                      "node": self.node_id[:16]})

    def _ship_references(self, runner, shipped: set[str]) -> None:
        for key, message in list(runner.refs.items()):
            if message is None or key in shipped:
                continue
            shipped.add(key)
            d, w, seed = key.rsplit("/", 2)
            item = {"definition": d, "workload": w, "seed": int(seed), "device_kind": self.device_kind,
                    "ok": bool(message.get("ok")), "error": message.get("error"), "computed": message.get("computed")}
            if item["ok"] and message.get("file"):
                file = Path(message["file"])
                item["data"] = ray.put(file.read_bytes())
                item["meta"] = json.loads(file.with_suffix(".json").read_text())
            self.emit("reference", item)

    # ---- build hooks, once per node ---------------------------------------------------------
    def _build(self, solution, config) -> dict:
        from .build import build_solution, find_build, has_build_hook
        if not has_build_hook(solution):
            return {}
        with node_lock(self.base / "locks" / f"build-{solution.name}"):
            if find_build(solution, device=self.device) is not None:
                return {}
            log_path = self.base / "builds" / f"{solution.name}.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            budget = config.build_budget(solution.spec.build_timeout_s)
            result = build_solution(solution, timeout_s=budget, log_path=log_path, device=self.device)
            self.emit("fetched", {"what": "build", "name": solution.name, "status": result.status,
                                  "node": self.node_id[:16]})
        if result.status in ("failed", "timeout"):
            return {solution.name: ("COMPILE_ERROR", f"build {result.status} on {self.host}: {result.reason or ''}")}
        if result.status == "unsupported":
            return {solution.name: ("UNSUPPORTED", result.reason or "unsupported")}
        return {}
