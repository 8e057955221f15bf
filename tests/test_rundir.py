"""fib/rundir.py: the run directory's lock, crash-tolerant traces.jsonl, and resume's config check."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fib.errors import FibError
from fib.rundir import (IGNORED_ON_RESUME, ResumeMismatch, RunDirBusy, RunDirLock, TraceFile, append_trace,
                        check_resume, completed_pairs, config_differences, create_run_dir,
                        environment_differences, holds_lock, read_traces)
from fib.schema import Trace

REPO = Path(__file__).resolve().parent.parent


def record(solution: str | None = "good", workload: str = "w1", status: str = "RUNTIME_ERROR", **extra) -> dict:
    obj = {"definition": "scale_add", "workload": {"uuid": workload, "axes": {"n": 3}}, **extra}
    if solution is not None:
        obj["solution"] = solution
        obj["evaluation"] = {"status": status, "environment": {"hardware": "CPU: test"},
                             "timestamp": "2025-01-01T00:00:00", "reason": "deliberate"}
    return obj


def line(obj: dict) -> bytes:
    return (json.dumps(obj) + "\n").encode()


# ---- the lock ---------------------------------------------------------------------------------
def _hold(run_dir: str, ready, release) -> None:
    with RunDirLock(run_dir):
        ready.set()
        release.wait(30)


def test_lock_records_holder_and_releases(tmp_path):
    run_dir = tmp_path / "run"  # created by the lock
    with RunDirLock(run_dir) as lock:
        assert lock.held and holds_lock(run_dir)
        info = json.loads((run_dir / ".lock").read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        assert info["started"].endswith("+00:00") and info == lock.holder
    assert not lock.held and not holds_lock(run_dir)
    assert (run_dir / ".lock").read_text() == ""   # emptied, not deleted
    with RunDirLock(run_dir):                      # free again
        pass


def test_second_process_cannot_take_a_held_lock(tmp_path):
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(tmp_path), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(RunDirBusy) as err:
            RunDirLock(tmp_path).acquire()
        assert isinstance(err.value, FibError)
        assert err.value.holder["pid"] == holder.pid
        text = err.value.render()
        assert f"another fib run (pid {holder.pid}, started {err.value.holder['started']})" in text
        assert "is writing to this run directory" in text and str(tmp_path) in text
        assert "wait for it to finish, or choose another --output" in text
    finally:
        release.set()
        holder.join(30)
    assert holder.exitcode == 0
    with RunDirLock(tmp_path):  # released when the holder left its `with`
        pass


def test_lock_is_released_when_the_holder_is_killed(tmp_path):
    code = textwrap.dedent(f"""
        import sys, time
        from fib.rundir import RunDirLock
        lock = RunDirLock({str(tmp_path)!r}).acquire()
        print("locked", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirBusy, match=f"pid {proc.pid}"):
            RunDirLock(tmp_path).acquire()
    finally:
        proc.kill()
        proc.wait(30)
    # SIGKILL: no cleanup ran, the lock file still names the dead holder, but flock is gone with it
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == proc.pid
    with RunDirLock(tmp_path) as lock:
        assert lock.holder["pid"] == os.getpid()


def test_same_process_cannot_lock_twice(tmp_path):
    with RunDirLock(tmp_path):
        with pytest.raises(RunDirBusy, match=f"pid {os.getpid()}"):
            RunDirLock(tmp_path).acquire()


def test_create_run_dir_never_shares_a_directory(tmp_path):
    made = [create_run_dir(tmp_path / "runs") for _ in range(3)]
    assert len(set(made)) == 3 and all(p.is_dir() for p in made)
    assert made[1].name == made[0].name + "-2" or made[1].name[:15] != made[0].name[:15]


# ---- append_trace -----------------------------------------------------------------------------
def test_append_trace_writes_one_line_each(tmp_path):
    append_trace(tmp_path, Trace.model_validate(record("a")))
    append_trace(tmp_path, record("b", extra_value=float("nan")))
    lines = (tmp_path / "traces.jsonl").read_text().splitlines()
    assert [json.loads(s)["solution"] for s in lines] == ["a", "b"]
    assert json.loads(lines[1])["extra_value"] == "NaN"
    assert "reason" in lines[0] and "log" in lines[0]  # dump_json of the model


def test_append_after_an_unrepaired_cut_line_does_not_merge(tmp_path):
    file = tmp_path / "traces.jsonl"
    file.write_bytes(line(record("a")) + b'{"definition": "scale_')
    append_trace(tmp_path, record("b"))
    traces = read_traces(tmp_path, repair=False)
    assert [t.solution for t in traces.traces] == ["a", "b"]
    assert traces.bad_lines == [2]
    lines = file.read_bytes().split(b"\n")
    assert lines[1] == b'{"definition": "scale_' and json.loads(lines[2]) == record("b") and lines[3] == b""


# ---- read_traces ------------------------------------------------------------------------------
def test_clean_file(tmp_path):
    (tmp_path / "traces.jsonl").write_bytes(line(record("a")) + b"\n" + line(record("b", "w2"))
                                            + line(record(None)))
    result = read_traces(tmp_path)
    assert isinstance(result, TraceFile)
    assert [r.get("solution") for r in result.records] == ["a", "b", None]
    assert result.lines == [1, 3, 4]
    assert result.completed == {("scale_add", "a", "w1"), ("scale_add", "b", "w2")}
    assert result.notes == [] and result.set_aside == [] and not result.newline_added


def test_missing_file_is_empty(tmp_path):
    result = read_traces(tmp_path)
    assert result.records == [] and result.completed == set() and result.notes == []
    assert not (tmp_path / "traces.jsonl").exists()


def test_complete_last_line_without_newline_is_kept_and_terminated(tmp_path):
    file = tmp_path / "traces.jsonl"
    body = line(record("a")) + line(record("b"))[:-1]
    file.write_bytes(body)
    result = read_traces(tmp_path)
    assert result.completed == {("scale_add", "a", "w1"), ("scale_add", "b", "w1")}
    assert result.newline_added and file.read_bytes() == body + b"\n"
    assert result.notes == [f"{file}:2: the last line had no newline; it is a complete trace, "
                            f"so it is kept and the newline added"]
    append_trace(tmp_path, record("c"))
    assert len(read_traces(tmp_path).completed) == 3


def test_cut_last_line_is_moved_aside_and_truncated(tmp_path):
    file = tmp_path / "traces.jsonl"
    good = line(record("a")) + line(record("b"))
    cut = line(record("c"))[:37]
    file.write_bytes(good + cut)
    result = read_traces(tmp_path)
    assert result.completed == {("scale_add", "a", "w1"), ("scale_add", "b", "w1")}
    assert file.read_bytes() == good
    assert result.set_aside == [tmp_path / "traces.jsonl.partial-1"]
    assert (tmp_path / "traces.jsonl.partial-1").read_bytes() == cut
    assert len(result.notes) == 1 and result.notes[0].startswith(f"{file}:3: the last line was cut short (37 bytes")
    assert "moved to traces.jsonl.partial-1" in result.notes[0]
    # a second crash later: the next fragment goes to partial-2, the first is untouched
    file.write_bytes(good + b'{"defin')
    again = read_traces(tmp_path)
    assert again.set_aside == [tmp_path / "traces.jsonl.partial-2"]
    assert (tmp_path / "traces.jsonl.partial-1").read_bytes() == cut
    assert (tmp_path / "traces.jsonl.partial-2").read_bytes() == b'{"defin'
    assert file.read_bytes() == good


def test_bad_middle_line_is_reported_skipped_and_kept(tmp_path):
    file = tmp_path / "traces.jsonl"
    body = line(record("a")) + b'{"broken\n' + b"[1, 2]\n" + line({"definition": "x"}) + line(record("b"))
    file.write_bytes(body)
    result = read_traces(tmp_path)
    assert result.completed == {("scale_add", "a", "w1"), ("scale_add", "b", "w1")}
    assert result.bad_lines == [2, 3, 4] and result.lines == [1, 5]
    assert result.notes[0].startswith(f"{file}:2: malformed JSON: ")
    assert result.notes[0].endswith("(skipped; left in the file)")
    assert result.notes[1] == f"{file}:3: a JSON list, not an object (skipped; left in the file)"
    assert result.notes[2].startswith(f"{file}:4: not a trace: field 'workload'")
    assert file.read_bytes() == body and result.set_aside == []


def test_read_only_mode_changes_nothing(tmp_path):
    file = tmp_path / "traces.jsonl"
    body = line(record("a")) + b'{"defin'
    file.write_bytes(body)
    result = read_traces(tmp_path, repair=False)
    assert result.completed == {("scale_add", "a", "w1")} and result.set_aside == []
    assert "the last line is incomplete (7 bytes" in result.notes[0]
    assert file.read_bytes() == body and not (tmp_path / ".lock").exists()


def test_repair_refuses_while_another_run_writes(tmp_path):
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(tmp_path), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        file = tmp_path / "traces.jsonl"
        body = line(record("a")) + b'{"being written'
        file.write_bytes(body)
        with pytest.raises(RunDirBusy):
            read_traces(tmp_path)
        assert file.read_bytes() == body
        assert completed_pairs(tmp_path, repair=False) == {("scale_add", "a", "w1")}
        (tmp_path / "traces.jsonl").write_bytes(line(record("a")))
        assert completed_pairs(tmp_path) == {("scale_add", "a", "w1")}  # nothing to repair: no lock needed
    finally:
        release.set()
        holder.join(30)


def test_repair_uses_the_lock_this_process_holds(tmp_path):
    (tmp_path / "traces.jsonl").write_bytes(line(record("a")) + b"{")
    with RunDirLock(tmp_path):
        result = read_traces(tmp_path)
    assert result.set_aside == [tmp_path / "traces.jsonl.partial-1"]


def test_nan_errors_round_trip(tmp_path):
    obj = record("a", status="INCORRECT_NUMERICAL")
    obj["evaluation"]["correctness"] = {"max_absolute_error": float("nan"), "max_relative_error": 1.0}
    trace = Trace.model_validate(obj)
    append_trace(tmp_path, trace)
    result = read_traces(tmp_path)
    assert result.completed == {("scale_add", "a", "w1")}
    assert result.traces[0].evaluation.correctness.max_absolute_error != \
        result.traces[0].evaluation.correctness.max_absolute_error  # NaN


# ---- resume consistency -----------------------------------------------------------------------
CONFIG = {"atol": None, "rtol": None, "required_matched_ratio": None, "warmup_runs": 10, "iterations": 50,
          "num_trials": 3, "timer": "auto", "seed": 0, "input_copies": 0, "flush_l2": True, "fresh_check": True,
          "also_check": [[0.1, 0.2, 0.85]], "timeout_s": 300.0, "build_timeout_s": None, "devices": ["cuda:0"],
          "definitions": ["d"], "solutions": {"d": ["a"]}, "workloads": {"d": ["w1"]}, "max_failures": 3}


def test_no_differences_for_the_same_settings_or_a_grown_selection():
    new = {**CONFIG, "devices": ["cuda:0", "cuda:1"], "definitions": ["d", "e"], "solutions": {"d": ["a", "b"]},
           "workloads": {"d": ["w1", "w2"]}, "timeout_s": 900, "build_timeout_s": 60, "max_failures": 5,
           "iterations": 50.0, "also_check": [(0.1, 0.2, 0.85)]}
    assert config_differences(CONFIG, new) == []
    assert {"definitions", "solutions", "workloads", "devices", "timeout_s"} <= IGNORED_ON_RESUME


def test_measurement_settings_are_reported_old_to_new():
    new = {**CONFIG, "timer": "cupti", "atol": 0.5, "iterations": 20, "warmup_runs": 5, "num_trials": 1,
           "seed": 7, "input_copies": 4, "flush_l2": False, "fresh_check": False, "also_check": [],
           "rtol": None}
    assert config_differences(CONFIG, new) == [
        "atol: the definition's -> 0.5", "warmup_runs: 10 -> 5", "iterations: 50 -> 20", "num_trials: 3 -> 1",
        "timer: auto -> cupti", "seed: 0 -> 7", "input_copies: 0 (auto) -> 4", "flush_l2: True -> False",
        "fresh_check: True -> False", "also_check: [[0.1, 0.2, 0.85]] -> []"]


def test_keys_only_one_side_records():
    old = {k: v for k, v in CONFIG.items() if k != "also_check"}
    assert config_differences(old, {**CONFIG, "new_knob": 1}) == [
        "also_check: (not recorded) -> [[0.1, 0.2, 0.85]]", "new_knob: (not recorded) -> 1"]


def test_environment_differences():
    old = {"hardware": "NVIDIA H100 80GB HBM3", "cuda": "12.8", "libs": {"torch": "2.9.0", "triton": "3.5.0",
                                                                        "python": "3.12.1"}, "host": "a"}
    same = {**old, "host": "b", "libs": {**old["libs"], "python": "3.12.9"}}
    assert environment_differences(old, same) == []
    new = {"hardware": "NVIDIA H200", "cuda": "12.8", "libs": {"torch": "2.9.0", "flashinfer": "0.5"}}
    assert environment_differences(old, new) == ["hardware: NVIDIA H100 80GB HBM3 -> NVIDIA H200",
                                                 "libs.triton: 3.5.0 -> (not recorded)",
                                                 "libs.flashinfer: (not recorded) -> 0.5"]


def test_check_resume_refuses_unless_forced(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"config": CONFIG, "environment": {"hardware": "NVIDIA H200"}}))
    assert check_resume(tmp_path, dict(CONFIG), {"hardware": "NVIDIA H200"}) == []
    changed = {**CONFIG, "iterations": 10}
    with pytest.raises(ResumeMismatch) as err:
        check_resume(tmp_path, changed, {"hardware": "NVIDIA H100"})
    text = err.value.render()
    assert "iterations: 50 -> 10; hardware: NVIDIA H200 -> NVIDIA H100" in text and "--force" in text
    assert check_resume(tmp_path, changed, force=True) == ["iterations: 50 -> 10"]
    assert check_resume(tmp_path / "nothing-here", changed) == []
