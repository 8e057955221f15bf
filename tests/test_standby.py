"""Standby children (fib/harness/standby.py): started before their role is known, then made a judge
or a worker; never taken for a solution that needs environment variables at process start."""
from __future__ import annotations

import os
import time

from fib.harness.child import Child
from fib.harness.logs import CappedLog
from fib.harness.standby import StandbyPool


def _wait_message(child: Child, timeout: float = 120.0) -> dict:
    assert child.channel.conn.poll(timeout), "the child sent nothing"
    return child.channel.recv()


def test_a_standby_becomes_the_judge_and_answers(tmp_path):
    pool = StandbyPool()
    try:
        pool.start(1)
        log = CappedLog(tmp_path / "judge.log")
        child = pool.take("judge", {"device": "cpu", "cache_dir": str(tmp_path / "cache")}, log, 120.0)
        assert child is not None and child.role == "judge" and pool.taken == ["judge"]
        assert child.log is log and child.deadline < float("inf")
        ready = _wait_message(child)
        assert ready["kind"] == "ready"
        marks = ready["startup"]  # when it entered, had its imports, was told (the run's timeline shows them)
        assert child.spawned <= marks["entered"] <= marks["preloaded"] and marks["entered"] <= marks["told"]
        child.channel.send("ceilings")  # a real request: the judge answers it (no CUDA here: an error)
        answer = _wait_message(child)
        assert answer["kind"] == "ceilings" and answer["ok"] is False and "CUDA" in answer["error"]
        child.stop()
        assert not child.alive()
        assert pool.take("worker", {}, log, 1.0) is None  # the only one was taken
    finally:
        pool.close()


def test_no_standby_for_a_solution_with_its_own_environment(tmp_path):
    pool = StandbyPool()
    try:
        pool.start(1)
        log = CappedLog(tmp_path / "w.log")
        key = "FIB_TEST_STANDBY_PRELOAD"
        assert os.environ.get(key) is None
        assert pool.take("worker", {}, log, 1.0, env={key: "/lib/x.so"}) is None
        # an environment the parent already has is no obstacle
        same = {"PATH": os.environ["PATH"]}
        child = pool.take("judge", {"device": "cpu", "cache_dir": str(tmp_path / "c")}, log, 60.0, env=same)
        assert child is not None
        child.kill()
    finally:
        pool.close()


def test_close_kills_the_standbys_nobody_took():
    pool = StandbyPool()
    pool.start(2)
    children = [c for c, _ in pool._free]
    assert len(children) == 2 and all(c.alive() for c in children)
    pool.close()
    deadline = time.monotonic() + 20
    while any(c.alive() for c in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(c.alive() for c in children)
    assert pool._free == []
