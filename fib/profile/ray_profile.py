"""`fib profile --cluster ray[://ADDRESS]`: the capture runs on a Ray actor next to a remote GPU.

The driver (the `fib profile` process) starts one actor per requested GPU kind (`--gpus K1,K2`),
or one on any GPU without `--gpus`, through the run's Ray machinery (fib.harness.ray_executor's
RayCluster). Each actor (ProfileNode, a FibNode) says in its hello which profilers its node has;
a node without the one `--backend` asks for stops the profile before anything is shipped, with an
error naming the host, the Ray node and the backend. Then:

- the definitions, the selected workloads (and their blobs) and the solutions travel through Ray's
  object store, as for `fib run` (no shared filesystem);
- the actor runs fib.profile.driver.profile on its node, on its GPU (`cuda:0` of the actor's
  CUDA_VISIBLE_DEVICES; the CPU where the node has no CUDA): the same target child, the same
  nsys / torch.profiler / ncu command lines, the same tables as a local profile;
- every file of the node's `profile/` folder (tables, meta.json, trace.json, capture.nsys-rep,
  capture.sqlite, ncu_raw.csv, ncu.md, child.log) goes back through the object store, in pieces
  of at most PIECE_BYTES, and the driver writes it into its own run directory: `RUN/profile/`
  without `--gpus`, `RUN/<KIND>/profile/` for each kind with it (each one a run directory that
  `fib report stages` reads). Node paths in meta.json and spec.json are rewritten to the driver's,
  and meta.json gains `cluster`: engine, host, Ray node, GPU kind, GPU, NVIDIA driver, fib, Ray.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import ray

from ..errors import ClusterError, FibError
from ..harness.ray_executor import Actor, RayCluster
from ..harness.ray_node import FibNode, code_digest
from . import ncu as ncu_mod
from . import nsys as nsys_mod
from .driver import BACKENDS, profile, read_floor

PIECE_BYTES = 64 * 2**20   # a shipped file travels in objects of at most this size
PROFILERS = {"nsys": ("Nsight Systems", "FIB_NSYS", nsys_mod.SEARCHED),   # backend -> (tool, variable, where looked)
             "ncu": ("Nsight Compute", "FIB_NCU", ncu_mod.SEARCHED)}


def node_profilers() -> dict[str, str | None]:
    """The profiler binaries this node has (None: not found), as the local driver would find them."""
    return {"nsys": nsys_mod.find_nsys(), "ncu": ncu_mod.find_ncu()}


def missing_profiler(backend: str, info: dict, where: str) -> ClusterError | None:
    """The error for a node (its hello `info`) that lacks the binary `backend` needs; None if it has it
    (torch.profiler and auto, which falls back to torch.profiler, need none)."""
    if backend not in PROFILERS or (info.get("profilers") or {}).get(backend):
        return None
    name, variable, searched = PROFILERS[backend]
    return ClusterError(f"{where} has no {backend} ({name}) for --backend {backend} (looked at {searched} "
                        "on that node)", field="--backend",
                        fix=f"install {name} on that node (or export {variable} before its `ray start`), "
                            "choose kinds whose nodes have it with --gpus, or use --backend torch")


def ship_files(folder: Path) -> dict[str, dict]:
    """Every file under `folder` put into the object store: {relative path: {pieces, size}}."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        pieces = []
        with open(path, "rb") as handle:
            while piece := handle.read(PIECE_BYTES):
                pieces.append(ray.put(piece))
        files[path.relative_to(folder).as_posix()] = {"pieces": pieces, "size": path.stat().st_size}
    return files


def receive_files(files: dict[str, dict], folder: Path) -> int:
    """Write the shipped files under `folder`; returns the bytes written."""
    total = 0
    for rel, item in files.items():
        assert not Path(rel).is_absolute() and ".." not in Path(rel).parts, rel
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        with open(part, "wb") as handle:
            for ref in item["pieces"]:
                handle.write(ray.get(ref))
        os.replace(part, target)
        assert target.stat().st_size == item["size"], (rel, target.stat().st_size, item["size"])
        total += item["size"]
    return total


def relocate(value, old: str, new: str):
    """`value` (parsed JSON) with the path prefix `old` replaced by `new` in every string."""
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, list):
        return [relocate(v, old, new) for v in value]
    if isinstance(value, dict):
        return {k: relocate(v, old, new) for k, v in value.items()}
    return value


def ray_error_text(exc: Exception) -> str:
    """One line for a Ray error: the exception raised on the node where there is one (a task
    error's first line is only Ray's `ray::Class.method() (pid=..., ip=...)`)."""
    cause = getattr(exc, "cause", None)
    shown = cause if isinstance(cause, BaseException) else exc
    lines = str(shown).strip().splitlines()
    return f"{type(shown).__name__}: {lines[0][:300] if lines else ''}"


class ProfileNode(FibNode):
    """One GPU of the cluster that captures a profile there."""

    def _describe(self) -> dict:
        return {**super()._describe(), "profilers": node_profilers()}

    def profile(self, job: dict) -> dict:
        """Profile `job` (RayProfiler._job) on this node: {files, node_run_dir, fetched} or {error}."""
        self.chunks += 1
        folder = self.base / "profiles" / f"{job['run_id']}-{os.getpid()}-{self.chunks}"
        shutil.rmtree(folder, ignore_errors=True)
        try:
            return self._profile(job, folder)
        except FibError as exc:  # the user's problem (a missing tool, a failed capture): named, no traceback
            return {"error": exc.render()}
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _profile(self, job: dict, folder: Path) -> dict:
        info = self.hello()
        missing = missing_profiler(job["backend"], info, f"host {self.host} (Ray node {self.node_id[:12]})")
        if missing is not None:
            raise missing
        roots = [self._materialise_dataset(ref) for ref in job["datasets"]]
        roots += [self._materialise_solution(ref) for ref in job["solution_bundles"]]
        floor = None
        if job.get("floor") is not None:
            folder.mkdir(parents=True, exist_ok=True)
            floor = folder / "floor.csv"
            floor.write_text(job["floor"])
        run_dir = profile(definitions=job["definitions"], solutions=job["solutions"], workloads=job["workloads"],
                          backend=job["backend"], iterations=job["iterations"], warmup=job["warmup"],
                          output=folder / "run", roots=roots, seed=job["seed"], device=self.device,
                          demo=job["demo"], timeout=job["timeout"], floor=floor, ncu_kernels=job["ncu_kernels"],
                          ncu_launch_count=job["ncu_launch_count"])
        fetched = [payload for kind, payload in self.poll(0.0, max_events=10**6) if kind == "fetched"]
        return {"files": ship_files(run_dir / "profile"), "node_run_dir": str(run_dir.resolve()), "fetched": fetched}


class RayProfiler(RayCluster):
    """The driver of a cluster profile: one ProfileNode per GPU kind (or one on any GPU)."""
    node_class = ProfileNode

    def __init__(self, address: str | None = None, gpu_kinds: list[str] | None = None, *,
                 start_timeout_s: float = 600.0, **options):
        super().__init__(address, gpu_kinds, max_actors=1, **options)
        self.start_timeout_s = start_timeout_s
        self.fetched: list[dict] = []

    def profile(self, output: Path, *, definitions, solutions, workloads=None, backend: str = "auto",
                iterations: int | None = None, warmup: int = 3, roots=None, seed: int = 0, demo: bool = False,
                floor: Path | None = None, ncu_kernels: str | None = None, ncu_launch_count: int | None = None,
                timeout: float | None = 3600) -> list[Path]:
        """Profile on the cluster and write each kind's profile under `output`; returns their run
        directories (`output` itself without GPU kinds, `output/<KIND>` with them)."""
        if backend not in BACKENDS:
            raise FibError(f"unknown backend {backend!r}", field="--backend", fix="use auto, nsys, torch or ncu")
        read_floor(backend, floor)  # a bad floor file fails here, before any actor starts
        output = Path(output)
        selection = [] if demo else self._select(roots, definitions, solutions, workloads)
        self._connect()
        try:
            self.actors = self._start_actors()
            self._welcome_all(backend)
            job = self._job(output.name, selection, definitions=list(definitions or []),
                            solutions=list(solutions or []), workloads=workloads, backend=backend,
                            iterations=iterations, warmup=warmup, seed=seed, demo=demo,
                            floor=Path(floor).read_text() if floor is not None else None,
                            ncu_kernels=ncu_kernels, ncu_launch_count=ncu_launch_count, timeout=timeout)
            pending = [(actor, actor.handle.profile.remote(job)) for actor in self.actors]
            written, failures = [], []
            for actor, ref in pending:
                try:
                    answer = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    failures.append(f"the profile on {actor.where} failed: {ray_error_text(exc)}")
                    continue
                if "error" in answer:
                    failures.append(f"the profile on {actor.where} failed: {answer['error']}")
                    continue
                run_dir = output / actor.label if actor.label else output
                self._write(actor, answer, run_dir)
                written.append(run_dir)
        finally:
            self._stop()
        if failures:
            kept = f" (kept: {', '.join(map(str, written))})" if written else ""
            raise ClusterError("; ".join(failures) + kept, field="--cluster")
        return written

    # ---- before the capture -----------------------------------------------------------------
    def _select(self, roots, definitions, solutions, workloads) -> list[tuple[object, str, list[str], list[str]]]:
        """(dataset, definition, workload uuids, solution names to ship) per definition; an unknown
        definition or solution is named here, on the driver."""
        from ..dataset import load_dataset, workload_matches
        data = load_dataset([Path(r) for r in roots or ["."]])
        wanted = list(workloads or [])
        selection, found = [], set()
        for d in definitions or []:
            if d not in data.definitions:
                raise FibError(f"no definition {d!r} in {', '.join(map(str, data.roots))}", field="--definitions",
                               fix="`fib list` names the definitions")
            known = data.solutions.get(d, {})
            names = [s if s in known else s.partition("@")[0] for s in solutions or []]
            ship = list(dict.fromkeys(n for n in names if n in known))
            found.update(s for s, n in zip(solutions or [], names) if n in known)
            uuids = [w.uuid for w in data.workloads.get(d, []) if workload_matches(w, wanted)]
            selection.append((data, d, uuids, ship))
        unknown = [s for s in solutions or [] if s not in found]
        if unknown:
            raise FibError(f"no solution {', '.join(unknown)} of {', '.join(definitions)}", field="--solutions",
                           fix="`fib list -d D` names a definition's solutions")
        return selection

    def _welcome_all(self, backend: str) -> None:
        """Wait for every actor's hello; refuse an actor that runs another fib or lacks the profiler."""
        refs = [actor.pending for actor in self.actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=self.start_timeout_s)
        code = code_digest()
        for actor in self.actors:
            what = actor.label or "any GPU"
            if actor.pending not in ready:
                raise ClusterError(f"no Ray actor for {what} started within {self.start_timeout_s:.0f} s",
                                   field="--gpus", fix="free a GPU of that kind (`ray status` shows what is used)")
            try:
                actor.info = ray.get(actor.pending)
            except ray.exceptions.RayError as exc:
                raise ClusterError(f"the Ray actor for {what} could not start: {ray_error_text(exc)}",
                                   field="--cluster") from None
            actor.pending, actor.state = None, "idle"
            if actor.info.get("fib_code") != code:
                raise ClusterError(f"{actor.where} runs another fib (code {actor.info.get('fib_code')}; this "
                                   f"driver: {code})", field="--cluster", fix="install this commit on every node")
            missing = missing_profiler(backend, actor.info, actor.where)
            if missing is not None:
                raise missing

    def _job(self, run_id: str, selection, *, workloads, demo: bool, **settings) -> dict:
        datasets = [self._dataset_bundle(data, d, uuids) for data, d, uuids, _ in selection]
        bundles = [self._solution_bundle(data, d, s) for data, d, _, ship in selection for s in ship]
        chosen = [u for _, _, uuids, _ in selection for u in uuids] if workloads else None
        return {"run_id": run_id, "datasets": datasets, "solution_bundles": bundles, "workloads": chosen,
                "demo": demo, **settings}

    # ---- after the capture ------------------------------------------------------------------
    def _write(self, actor: Actor, answer: dict, run_dir: Path) -> None:
        profile_dir = run_dir / "profile"
        shipped = receive_files(answer["files"], profile_dir)
        self.fetched += answer.get("fetched") or []
        node_run_dir, here = answer["node_run_dir"], str(run_dir.resolve())
        spec_path = profile_dir / "spec.json"
        if spec_path.exists():
            spec_path.write_text(json.dumps(relocate(json.loads(spec_path.read_text()), node_run_dir, here), indent=1))
        meta_path = profile_dir / "meta.json"
        meta = relocate(json.loads(meta_path.read_text()), node_run_dir, here)
        info = actor.info
        meta["argv"] = sys.argv
        meta["cluster"] = {"engine": "ray", "address": self.address, "ray": ray.__version__,
                           "host": info.get("host"), "ip": info.get("ip"), "node": (info.get("node_id") or "")[:16],
                           "gpu_kind": actor.label or info.get("device_kind"), "gpu": info.get("device_kind"),
                           "device": info.get("device"), "driver": info.get("driver"),
                           "gpu_ids": info.get("gpu_ids"), "fib": info.get("fib"), "fib_code": info.get("fib_code"),
                           "profilers": info.get("profilers"), "node_run_dir": node_run_dir,
                           "shipped_files": len(answer["files"]), "shipped_bytes": shipped}
        meta_path.write_text(json.dumps(meta, indent=1, default=str))


__all__ = ["ProfileNode", "RayProfiler", "missing_profiler", "node_profilers"]
