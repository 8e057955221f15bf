"""JIT pre-warming (fib/harness/prewarm.py): how many processes, which workloads each, and a run with
pre-warm processes gives the same verdicts, holds the first job until they are done, and survives a
solution that fails in them."""
from __future__ import annotations

import json

import pytest

from fib.harness.prewarm import split, worker_count
from tinydata import make_dataset, run_scale_add


def test_worker_count():
    assert worker_count(None, 19, "cpu", cpus=16) == 0            # never by default on a CPU
    assert worker_count(None, 19, "cuda:0", cpus=16, device_gib=139.8) == 8
    assert worker_count(None, 19, "cuda:0", cpus=4, device_gib=139.8) == 2   # half the CPUs
    assert worker_count(None, 19, "cuda:0", cpus=16, device_gib=40) == 2     # 16 GiB each
    assert worker_count(None, 3, "cuda:0", cpus=16) == 0                      # too few workloads to share
    assert worker_count(None, 19, "cuda:0", cpus=16, device_gib=139.8, n_devices=4) == 2
    assert worker_count(0, 19, "cuda:0", cpus=16) == 0 and worker_count(3, 19, "cpu") == 3
    assert worker_count(5, 2, "cuda:0") == 2


def test_split_keeps_neighbours_together():
    assert split(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split([1, 2], 5) == [[1], [2]]
    assert sum(split(list(range(19)), 8), []) == list(range(19))


_run = run_scale_add


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FIB_CACHE_DIR", str(tmp_path / "cache"))


def test_a_prewarmed_run_gives_the_same_verdicts_and_holds_the_first_job(tmp_path):
    root = make_dataset(tmp_path / "ds", solutions=["good", "raises"])
    result = _run(root, tmp_path / "run", ["good", "raises"], jit_workers=2)
    statuses = {(t.solution, t.workload.uuid): t.evaluation.status.value for t in result.traces}
    assert statuses == {("good", "w-n3"): "PASSED", ("good", "w-n8"): "PASSED",
                        ("raises", "w-n3"): "RUNTIME_ERROR", ("raises", "w-n8"): "RUNTIME_ERROR"}
    events = [json.loads(line) for line in (tmp_path / "run" / "timeline.jsonl").read_text().splitlines()]
    ends = {e["solution"]: e for e in events if e["event"] == "prewarm_end"}
    assert ends["good"]["answered"] == 2 and ends["good"]["workloads"] == 2 and "failed" not in ends["good"]
    assert ends["raises"]["answered"] == 2 and ends["raises"]["failed"] == 2 and ends["raises"]["workloads"] == 0
    for solution in ("good", "raises"):  # each solution's first job went out only after its pre-warm ended
        end = ends[solution]["t"]
        first_job = min(e["t"] for e in events if e["event"] == "job" and e["solution"] == solution)
        assert first_job >= end
    assert "deliberate failure in solution" in (tmp_path / "run" / "logs" / "raises.prewarm.log").read_text()
    plain = _run(root, tmp_path / "plain", ["good"])
    assert not [e for e in (json.loads(x) for x in (tmp_path / "plain" / "timeline.jsonl").read_text().splitlines())
                if e["event"].startswith("prewarm")]  # none by default on a CPU
    assert {t.evaluation.status.value for t in plain.traces} == {"PASSED"}


def test_by_default_a_solution_is_prewarmed_only_after_a_first_call_that_compiled(tmp_path, monkeypatch):
    """Auto mode: the first pair's first call runs alone; once it has lasted SLOW_FIRST_CALL_S (here a
    solution that sleeps in its process's first call, as a JIT compile would) the rest of the
    solution's workloads are pre-warmed beside it, and its timing waits until they are done; a fast
    first call starts nothing."""
    import fib.harness.prewarm as prewarm
    from tinydata import write_solution, WORKLOADS
    monkeypatch.setattr(prewarm, "worker_count", lambda setting, n, device, **kw: min(2, n))  # as on a GPU
    monkeypatch.setattr(prewarm, "SLOW_FIRST_CALL_S", 0.5)
    root = make_dataset(tmp_path / "ds", solutions=["good"],
                        workloads=WORKLOADS + [{"uuid": f"w-x{n}", "axes": {"n": n},
                                                "inputs": {"x": {"type": "random"},
                                                           "alpha": {"type": "scalar", "value": 1.5}}}
                                               for n in (2, 5)])
    write_solution(root, "scale_add", "compiles", "import time\nFIRST = [True]\n\ndef run(x, alpha, y):\n"
                   "    if FIRST[0]:\n        FIRST[0] = False\n        time.sleep(1.0)\n    y.copy_(x * alpha + 1.0)\n")
    result = run_scale_add(root, tmp_path / "run", ["good", "compiles"])
    assert {t.evaluation.status.value for t in result.traces} == {"PASSED"} and len(result.traces) == 8
    events = [json.loads(line) for line in (tmp_path / "run" / "timeline.jsonl").read_text().splitlines()]
    starts = [e for e in events if e["event"] == "prewarm_start"]
    assert [e["solution"] for e in starts] == ["compiles"] and starts[0]["workloads"] == 3  # not the first's
    jobs = [e for e in events if e["event"] == "job" and e["solution"] == "compiles"]
    mine = [e for e in events if e["t"] >= jobs[0]["t"] and e.get("workload") == jobs[0]["workload"]]
    first_call = next(e["t"] for e in mine if e["event"] == "worker_phase" and e.get("phase") == "first_call")
    check = next(e["t"] for e in mine if e["event"] == "worker_phase" and e.get("phase") == "check")
    go = next(e["t"] for e in mine if e["event"] == "go" and e.get("which") == "check")
    end = next(e["t"] for e in events if e["event"] == "prewarm_end")
    assert first_call + 0.5 <= starts[0]["t"] < check  # during the slow first call
    assert end <= go  # the first pair's timing waited for the pre-warm
