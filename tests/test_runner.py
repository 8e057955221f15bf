"""End to end on CPU: the tiny dataset's fake solutions, good and bad, through `fib run`'s runner."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fib.dataset import load_dataset
from fib.harness.runner import Runner, RunPlan
from fib.rundir import completed_pairs
from fib.schema.config import RunConfig
from fib.schema import Status, Trace
from tinydata import make_dataset, write_solution

FAST = dict(warmup_runs=1, iterations=3, num_trials=2, timer="wall")


def run_plan(root: Path, run_dir: Path, solutions: list[str], **kw) -> tuple[Runner, list[Trace]]:
    data = load_dataset([root])
    d = "scale_add"
    resume = kw.pop("resume", False)
    config = RunConfig(**{**FAST, "timeout_s": 10, "build_timeout_s": 10, "jit_timeout_s": 10, **kw})
    plan = RunPlan(config=config, definitions=[d], solutions={d: solutions},
                   workloads={d: [w.uuid for w in data.workloads[d]]}, devices=["cpu"])
    runner = Runner(data, plan, run_dir)
    result = runner.run(resume=resume)
    return runner, result.traces


@pytest.fixture(scope="module")
def everything(tmp_path_factory):
    base = tmp_path_factory.mktemp("run")
    os.environ["FIB_CACHE_DIR"] = str(base / "cache")
    root = make_dataset(base / "ds")
    names = sorted(load_dataset([root]).solutions["scale_add"])
    runner, traces = run_plan(root, base / "run", names)
    by = {(t.solution, t.workload.uuid): t for t in traces}
    return base, runner, by


def status(by, solution, workload="w-n3"):
    return by[(solution, workload)].evaluation.status


def reason(by, solution, workload="w-n3"):
    return by[(solution, workload)].evaluation.reason or ""


def test_every_pair_has_one_trace(everything):
    base, runner, by = everything
    lines = (base / "run" / "traces.jsonl").read_text().splitlines()
    assert len(lines) == len(by) == 2 * len(runner.plan.solutions["scale_add"])
    run_info = json.loads((base / "run" / "run.json").read_text())
    assert run_info["state"] == "finished" and run_info["config"]["iterations"] == 3
    assert run_info["environment"]["hardware"].startswith("CPU")


def test_good_solutions_pass_with_timing(everything):
    _, _, by = everything
    for name in ("good", "good_return", "uses_helper"):
        for w in ("w-n3", "w-n8"):
            ev = by[(name, w)].evaluation
            assert ev.status == Status.PASSED, ev.reason
            assert ev.correctness.max_absolute_error <= 1e-5 and ev.correctness.matched_ratio == 1.0
            timing = ev.performance.timing
            assert timing.timer == "wall" and len(timing.samples_ms) == 6
            assert ev.performance.latency_ms == pytest.approx(timing.median_ms)
            assert ev.seed is not None


@pytest.mark.parametrize("solution,expected,words", [
    ("raises", Status.RUNTIME_ERROR, "deliberate failure"),
    ("aborts", Status.RUNTIME_ERROR, "SIGABRT"),
    ("hangs", Status.TIMEOUT, "first call"),
    ("hangs_later", Status.TIMEOUT, "timeout of 10 s"),
    ("wrong_shape", Status.INCORRECT_SHAPE, "shape (3, 2), expected (3, 4)"),
    ("wrong_dtype", Status.INCORRECT_DTYPE, "float64"),
    ("writes_nan", Status.INCORRECT_NUMERICAL, "NaN/Inf"),
    ("skips_rows", Status.INCORRECT_NUMERICAL, "NaN/Inf"),
    ("slightly_off", Status.INCORRECT_NUMERICAL, "within tolerance"),
    ("modifies_input", Status.RUNTIME_ERROR, "modified its input(s) in place: x"),
    ("caches", Status.INCORRECT_NUMERICAL, "fresh one after timing"),
    ("oom", Status.RUNTIME_ERROR, "out of memory"),
    ("no_entry", Status.COMPILE_ERROR, "has no function 'run'"),
    ("syntax_error", Status.COMPILE_ERROR, "SyntaxError"),
    ("gpu_only", Status.UNSUPPORTED, "targets sm90"),
    ("needs_pkg", Status.UNSUPPORTED, "surely-not-installed-package-xyz"),
])
def test_bad_solution_gets_precise_status(everything, solution, expected, words):
    _, _, by = everything
    assert status(by, solution) == expected
    assert words in reason(by, solution)


def test_shape_constraint_gates_per_workload(everything):
    _, _, by = everything
    assert status(by, "small_only", "w-n3") == Status.PASSED
    assert status(by, "small_only", "w-n8") == Status.UNSUPPORTED


def test_numerical_failure_records_errors(everything):
    _, _, by = everything
    c = by[("slightly_off", "w-n8")].evaluation.correctness
    assert c.max_absolute_error == pytest.approx(0.001, rel=0.05)
    assert c.matched_ratio == 0.0 and c.atol == 1e-5


def test_crash_log_is_captured(everything):
    base, _, by = everything
    assert "deliberate failure" in by[("raises", "w-n3")].evaluation.log or \
        "deliberate failure" in (base / "run" / "logs" / "raises.log").read_text()
    assert (base / "run" / "logs" / "aborts.log").read_text().count("== aborts") == 2


def test_resume_skips_measured_pairs(tmp_path):
    os.environ["FIB_CACHE_DIR"] = str(tmp_path / "cache")
    root = make_dataset(tmp_path / "ds", solutions=["good", "raises"])
    run_dir = tmp_path / "run"
    _, first = run_plan(root, run_dir, ["good"])
    assert len(first) == 2
    data = load_dataset([root])
    plan = RunPlan(config=RunConfig(**FAST, timeout_s=4), definitions=["scale_add"],
                   solutions={"scale_add": ["good", "raises"]}, workloads={"scale_add": ["w-n3", "w-n8"]},
                   devices=["cpu"])
    result = Runner(data, plan, run_dir).run(resume=True)
    assert result.skipped_done == 2
    assert sorted(t.solution for t in result.traces) == ["raises", "raises"]
    assert len(completed_pairs(run_dir)) == 4


def test_repeated_crashes_skip_the_solution(tmp_path):
    os.environ["FIB_CACHE_DIR"] = str(tmp_path / "cache")
    workloads = [{"uuid": f"w{i}", "axes": {"n": i + 1},
                  "inputs": {"x": {"type": "random"}, "alpha": {"type": "scalar", "value": 1.0}}} for i in range(4)]
    root = make_dataset(tmp_path / "ds", solutions=["aborts", "good"], workloads=workloads)
    _, traces = run_plan(root, tmp_path / "run", ["aborts", "good"], max_failures=2)
    aborts = [t for t in traces if t.solution == "aborts"]
    assert [t.evaluation.status for t in aborts] == [Status.RUNTIME_ERROR] * 4
    assert sum("skipped" in t.evaluation.reason for t in aborts) == 2
    assert all(t.evaluation.status == Status.PASSED for t in traces if t.solution == "good")


def test_reference_is_cached_across_runs(tmp_path):
    os.environ["FIB_CACHE_DIR"] = str(tmp_path / "cache")
    root = make_dataset(tmp_path / "ds", solutions=["good"])
    run_plan(root, tmp_path / "run1", ["good"])
    files = sorted((tmp_path / "cache" / "reference" / "scale_add").glob("*.safetensors"))
    # two workloads x (first check + fresh check) input sets
    assert len(files) == 4
    stamps = [f.stat().st_mtime_ns for f in files]
    run_plan(root, tmp_path / "run2", ["good"])
    assert [f.stat().st_mtime_ns for f in files] == stamps


def test_jobs_spread_over_several_workers(tmp_path):
    """Two 'devices' (both the CPU) share the pairs; a worker serves one solution only, so no
    solution ever shares a process with another."""
    os.environ["FIB_CACHE_DIR"] = str(tmp_path / "cache")
    workloads = [{"uuid": f"w{i}", "axes": {"n": i + 1},
                  "inputs": {"x": {"type": "random"}, "alpha": {"type": "scalar", "value": 1.0}}} for i in range(8)]
    root = make_dataset(tmp_path / "ds", solutions=["raises"], workloads=workloads)
    # Each evaluation takes a while, so the second device's worker is up before the first is done.
    write_solution(root, "scale_add", "slow", "import time\n\ndef run(x, alpha, y):\n    time.sleep(0.3)\n"
                   "    y.copy_(x * alpha + 1.0)\n")
    data = load_dataset([root])
    plan = RunPlan(config=RunConfig(**FAST, timeout_s=60), definitions=["scale_add"],
                   solutions={"scale_add": ["slow", "raises"]},
                   workloads={"scale_add": [w["uuid"] for w in workloads]}, devices=["cpu", "cpu"])
    traces = Runner(data, plan, tmp_path / "run").run().traces
    assert len(traces) == 16
    by_solution = {}
    for t in traces:
        by_solution.setdefault(t.solution, set()).add(t.evaluation.model_extra["worker"])
    assert len(by_solution["slow"]) == 2                      # both devices served `slow`
    assert not by_solution["slow"] & by_solution["raises"]    # never in one process
    assert all(t.evaluation.status == Status.PASSED for t in traces if t.solution == "slow")
