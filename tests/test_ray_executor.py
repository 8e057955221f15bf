"""The Ray executor on a local Ray cluster with fake GPUs (CPU only): two worker nodes of two "GPUs"
each, one of kind H100 and one of kind H200 (Ray's `accelerator_type:<kind>` node resource), the
tiny dataset's solutions evaluated by fib's own Runner on each actor's node. Skipped without Ray.

Covered: every pair traced exactly once per GPU kind, with host and kind recorded; data fetched
once per node and references computed once per device kind; an actor killed and a node removed
while a pair is in flight (that pair RUNTIME_ERROR naming the host, the rest completes, nothing
duplicated); resume after the driver is interrupted; two kinds split by compare and history;
driver memory bounded on 10,000 fake pairs; a local run never imports Ray.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from fib.dataset import load_dataset  # noqa: E402
from fib.harness.runner import RunPlan  # noqa: E402
from fib.schema.config import RunConfig  # noqa: E402
from tinydata import make_dataset, write_solution  # noqa: E402

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parent.parent
FAST = dict(warmup_runs=1, iterations=3, num_trials=2, timer="wall", timeout_s=30, jit_timeout_s=30,
            build_timeout_s=30)
SLOW = "import time\nCALLS = [0]\n\ndef run(x, alpha, y):\n    CALLS[0] += 1\n    if CALLS[0] == 1:\n" \
       "        time.sleep(4)\n    y.copy_(x * alpha + 1.0)\n"


@pytest.fixture
def cluster(ray_cluster):
    """The session's local Ray cluster (tests/conftest.py), shared with the other Ray tests."""
    return ray_cluster


def plan_for(root: Path, solutions: list[str], **config) -> tuple:
    data = load_dataset([root])
    d = "scale_add"
    plan = RunPlan(config=RunConfig(**{**FAST, **config}), definitions=[d], solutions={d: solutions},
                   workloads={d: [w.uuid for w in data.workloads[d]]}, devices=[])
    return data, plan


def lines(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "traces.jsonl").read_text().splitlines() if x.strip()]


def keys(records, kind=True) -> Counter:
    return Counter((r["solution"], r["workload"]["uuid"]) + ((r["evaluation"].get("gpu_kind"),) if kind else ())
                   for r in records)


def test_two_kinds_every_pair_once_and_split_by_compare(cluster, tmp_path):
    from fib.harness.ray_executor import RayExecutor
    from fib.results.history import HistoryDB, load_run_dir, load_run_dirs, load_side
    c, nodes, _ = cluster
    root = make_dataset(tmp_path / "ds", solutions=["good", "raises"])
    data, plan = plan_for(root, ["good", "raises"])
    executor = RayExecutor(gpu_kinds=["H100", "H200"], max_actors=1)  # one per kind: 2 shared cores
    result = executor.run(data, plan, tmp_path / "run")
    records = lines(tmp_path / "run")
    assert keys(records) == Counter({(s, w, k): 1 for s in ("good", "raises") for w in ("w-n3", "w-n8")
                                     for k in ("H100", "H200")})
    by = {(r["solution"], r["workload"]["uuid"], r["evaluation"]["gpu_kind"]): r["evaluation"] for r in records}
    assert {e["status"] for (s, _, _), e in by.items() if s == "good"} == {"PASSED"}
    assert {e["status"] for (s, _, _), e in by.items() if s == "raises"} == {"RUNTIME_ERROR"}
    node_of = {kind: n.node_id[:16] for kind, n in nodes.items()}
    for (_, _, kind), evaluation in by.items():
        assert evaluation["node"] == node_of[kind] and evaluation["host"] and evaluation["cluster"] == "ray"
    run_info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run_info["state"] == "finished" and run_info["executor"]["engine"] == "ray"
    assert {a["label"] for a in run_info["executor"]["actors"]} == {"H100", "H200"}
    # the children get the driver's thread settings, not the OMP_NUM_THREADS=1 of Ray's workers
    assert {a["omp_num_threads"] for a in run_info["executor"]["actors"]} == {os.environ.get("OMP_NUM_THREADS")}
    # the dataset once per node, each solution once per node; both fake kinds are the CPU, so each
    # (workload, seed) reference is computed once in all and installed on the other node
    fetched = Counter((f["what"], f["name"], f["node"]) for f in executor.fetched)
    assert {n for (what, _, n) in fetched if what == "dataset"} == set(node_of.values())
    assert {(what, name) for (what, name, _) in fetched if what == "solution"} == {("solution", "good"),
                                                                                   ("solution", "raises")}
    assert all(count == 1 for (what, _, _), count in fetched.items() if what in ("dataset", "solution"))
    assert executor.stats["references_computed"] == 4, executor.stats
    assert len(result.traces) == 8
    # compare and history split the kinds: RUN@KIND is one kind's results
    h100, h200 = load_side(f"{tmp_path / 'run'}@H100", None), load_side(f"{tmp_path / 'run'}@H200", None)
    assert len(h100.results) == len(h200.results) == 4
    assert (h100.environment["hardware"], h200.environment["hardware"]) == ("H100", "H200")
    assert {r.gpu_kind for r in h100.results.values()} == {"H100"}
    with pytest.raises(Exception, match="2 GPU kinds"):
        load_run_dir(tmp_path / "run")
    runs = load_run_dirs(tmp_path / "run")
    with HistoryDB(tmp_path / "history.db") as db:
        assert [db.add_run(r) for r, _ in runs] == [True, True]
        assert sorted(r["run_id"].rsplit("@", 1)[1] for r in db.runs()) == ["H100", "H200"]


def _tiny(tmp_path, names):
    root = make_dataset(tmp_path / "ds", solutions=[n for n in names if n != "slow"])
    if "slow" in names:
        write_solution(root, "scale_add", "slow", SLOW)
    return root


def test_killed_actor_costs_only_its_pair(cluster, tmp_path):
    from fib.harness.ray_executor import RayExecutor
    root = _tiny(tmp_path, ["good", "slow", "good_return"])
    data, plan = plan_for(root, ["good", "slow", "good_return"])
    executor = RayExecutor(gpu_kinds=["H100"])
    killed = []

    def on_phase(where, solution, phase):
        if solution == "slow" and phase == "running" and not killed:
            actor = next(a for a in executor.actors if a.in_flight and a.in_flight[1] == "slow")
            killed.append((actor.in_flight, actor.info["host"]))
            ray.kill(actor.handle, no_restart=True)

    executor.run(data, plan, tmp_path / "run", on_phase=on_phase)
    records = lines(tmp_path / "run")
    assert killed and keys(records, kind=False) == Counter({(s, w): 1 for s in ("good", "slow", "good_return")
                                                            for w in ("w-n3", "w-n8")})
    (pair, host), = killed
    by = {(r["solution"], r["workload"]["uuid"]): r["evaluation"] for r in records}
    dead = by[(pair[1], pair[2])]
    assert dead["status"] == "RUNTIME_ERROR" and f"host {host}" in dead["reason"] and "died" in dead["reason"]
    others = [e["status"] for k, e in by.items() if k != (pair[1], pair[2])]
    assert others == ["PASSED"] * 5, by
    assert executor.stats["actors_lost"] == 1


def test_resume_after_driver_interrupted(cluster, tmp_path):
    from fib.harness.ray_executor import RayExecutor
    root = _tiny(tmp_path, ["good", "good_return"])
    data, plan = plan_for(root, ["good", "good_return"])
    seen = []

    def interrupt(trace):
        seen.append(trace)
        if len(seen) == 2:
            raise KeyboardInterrupt()

    first = RayExecutor(max_actors=1).run(data, plan, tmp_path / "run", on_trace=interrupt)
    assert first.interrupted and json.loads((tmp_path / "run" / "run.json").read_text())["state"] == "interrupted"
    assert len(lines(tmp_path / "run")) == 2
    # the resume goes through the command line: `fib run --cluster ray --resume` on the same run
    from typer.testing import CliRunner
    from fib.cli.app import app
    res = CliRunner().invoke(app, ["run", "--local", str(root), "--output", str(tmp_path / "run"), "--resume",
                                   "--cluster", "ray", "--solutions", "good", "--solutions", "good_return",
                                   "--warmup-runs", "1", "--iterations", "3", "--num-trials", "2", "--timer", "wall",
                                   "--timeout", "30", "--jit-timeout", "30", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "run" / "run.json").read_text())["state"] == "finished"
    assert keys(lines(tmp_path / "run"), kind=False) == Counter({(s, w): 1 for s in ("good", "good_return")
                                                                 for w in ("w-n3", "w-n8")})


def test_driver_memory_bounded_on_10000_fake_pairs(cluster, tmp_path, monkeypatch):
    import fib.harness.ray_executor as ray_executor
    from fib.harness.ray_executor import RayExecutor

    def append_unsynced(run_dir, trace):  # the fsync per trace is the run directory's, not memory's
        with open(Path(run_dir) / "traces.jsonl", "a") as handle:
            handle.write(trace.model_dump_json(exclude_none=True) + "\n")
    monkeypatch.setattr(ray_executor, "append_trace", append_unsynced)
    from fib.harness.ray_node import POLL_MAX_EVENTS
    root = make_dataset(tmp_path / "ds", solutions=["good"],
                        workloads=[{"uuid": f"w{i:04d}", "axes": {"n": 1 + i % 7},
                                    "inputs": {"x": {"type": "random"}, "alpha": {"type": "scalar", "value": 1.0}}}
                                   for i in range(1000)])
    for i in range(9):
        write_solution(root, "scale_add", f"fake{i}", "def run(x, alpha, y):\n    pass\n")
    names = ["good"] + [f"fake{i}" for i in range(9)]
    peaks = {}
    for n_solutions in (1, 10):
        data, plan = plan_for(root, names[:n_solutions])
        executor = RayExecutor(evaluator="ray_fakes:instant", keep_traces=False, max_chunk=250)
        tracemalloc.start()
        executor.run(data, plan, tmp_path / f"run{n_solutions}")
        peaks[n_solutions] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert len(lines(tmp_path / f"run{n_solutions}")) == 1000 * n_solutions
        assert executor.max_pending_events <= POLL_MAX_EVENTS
    # ten times the pairs: the peak grows by the queue of pair tuples (~100 bytes a pair), far
    # from the ~1 KB a pair that holding the results would cost
    assert peaks[10] - peaks[1] < 9000 * 300, peaks


def test_killed_node_costs_only_its_pair(cluster, tmp_path):
    """Last: it adds two nodes of kind B200 and removes one of them mid-run."""
    from fib.harness.ray_executor import RayExecutor
    c, _, _ = cluster
    extra = [c.add_node(num_cpus=1, num_gpus=1, resources={"accelerator_type:B200": 1}) for _ in range(2)]
    root = _tiny(tmp_path, ["good", "slow"])
    data, plan = plan_for(root, ["slow", "good"])
    executor = RayExecutor(gpu_kinds=["B200"])
    removed = []

    def on_phase(where, solution, phase):
        if solution == "slow" and phase == "running" and not removed:
            actor = next(a for a in executor.actors if a.in_flight and a.in_flight[1] == "slow")
            node = next(n for n in extra if n.node_id == actor.info["node_id"])
            removed.append((actor.in_flight, actor.info["host"], node.node_id))
            c.remove_node(node, allow_graceful=False)

    started = time.monotonic()
    executor.run(data, plan, tmp_path / "run", on_phase=on_phase)
    records = lines(tmp_path / "run")
    assert removed and keys(records, kind=False) == Counter({(s, w): 1 for s in ("good", "slow")
                                                             for w in ("w-n3", "w-n8")})
    (pair, host, node_id), = removed
    by = {(r["solution"], r["workload"]["uuid"]): r["evaluation"] for r in records}
    dead = by[(pair[1], pair[2])]
    assert dead["status"] == "RUNTIME_ERROR" and f"host {host}" in dead["reason"] and node_id[:12] in dead["reason"]
    assert [e["status"] for k, e in by.items() if k != (pair[1], pair[2])] == ["PASSED"] * 3
    survivors = {e["node"] for k, e in by.items() if k != (pair[1], pair[2]) and e.get("node")}
    assert time.monotonic() - started < 180 and survivors


def test_local_run_never_imports_ray(tmp_path):
    """`fib run` without --cluster: the CLI, the executor seam and a whole local run, and no Ray."""
    root = make_dataset(tmp_path / "ds", solutions=["good"])
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom fib.cli.app import app\n"
            f"r = CliRunner().invoke(app, ['run', '--local', {str(root)!r}, '--output', {str(tmp_path / 'run')!r},"
            " '--iterations', '2', '--num-trials', '1', '--warmup-runs', '0', '--timer', 'wall'])\n"
            "assert r.exit_code == 0, r.output\n"
            "from fib.harness.executor import executor_for\nassert executor_for(None).name == 'local'\n"
            "print('ray' in sys.modules)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "FIB_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "False"
    assert len(lines(tmp_path / "run")) == 2


def test_cluster_options_are_checked():
    from fib.harness.executor import ClusterError, executor_for, parse_cluster, parse_gpu_kinds
    assert parse_cluster("ray") == ("ray", None) and parse_cluster("ray://auto") == ("ray", "auto")
    assert parse_cluster("ray://10.0.0.1:10001") == ("ray", "ray://10.0.0.1:10001")
    assert parse_gpu_kinds(["H100,H200", "H100"]) == ["H100", "H200"]
    for bad in ("slurm", "ray://"):
        with pytest.raises(ClusterError, match="--cluster"):
            parse_cluster(bad)
    with pytest.raises(ClusterError, match="--gpus"):
        executor_for("local", ["H100"])
    with pytest.raises(ClusterError, match="--gpus"):
        parse_gpu_kinds(["H100;rm"])
