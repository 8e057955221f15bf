"""Solution configurations through the harness: `fib run --config SOLUTION=NAME` and `--sweep`,
on the tiny dataset with a fake tunable solution (CPU, wall timer)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from fib.cli.app import app, expand_list_args
from fib.dataset import load_dataset
from fib.errors import ConfigError
from fib.harness.call import SolutionCall, declared_configs
from fib.rundir import read_traces
from fib.schema.config import RunConfig
from tinydata import make_dataset, write_solution

# Each configuration sleeps a different time per call, so the ranking is known; "big_only" exists
# only where n > 4, "copy_of_default" repeats the default's dict (a sweep runs it once).
TUNABLE = '''
import time

def fib_configs(axes):
    out = {"default": {"sleep_ms": 1}, "slow": {"sleep_ms": 6}}
    if axes["n"] > 4:
        out["big_only"] = {"sleep_ms": 3}
    out["copy_of_default"] = {"sleep_ms": 1}
    return out

def run(x, alpha, y, config=None):
    time.sleep((config or {"sleep_ms": 1})["sleep_ms"] / 1000)
    y.copy_(x * alpha + 1.0)
'''
FAST = ["--warmup-runs", "1", "--iterations", "3", "--num-trials", "2", "--timer", "wall", "--no-fresh-check",
        "--timeout", "30", "--jit-timeout", "30"]


def invoke(args):
    return CliRunner().invoke(app, expand_list_args(args), env={"COLUMNS": "250"})


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    base = tmp_path_factory.mktemp("configs")
    import os
    os.environ["FIB_CACHE_DIR"] = str(base / "cache")
    root = make_dataset(base / "ds", solutions=["good"])
    write_solution(root, "scale_add", "tunable", TUNABLE)
    return root


def traces_of(run_dir: Path):
    return {(t.solution, t.workload.uuid): t for t in read_traces(run_dir, repair=False).traces}


def test_config_for_a_solution_without_configurations_stops_before_the_run(root, tmp_path):
    result = invoke(["run", "--local", str(root), "--config", "good=default", "-o", str(tmp_path / "r"), *FAST])
    assert result.exit_code == 2, result.output
    assert "solution 'good' declares no configurations" in result.output
    assert not (tmp_path / "r" / "traces.jsonl").exists()
    bad = invoke(["run", "--local", str(root), "--config", "tunable", "-o", str(tmp_path / "r2"), *FAST])
    assert bad.exit_code == 2 and "expected SOLUTION=NAME" in bad.output
    swept = invoke(["run", "--local", str(root), "--sweep", "good", "-o", str(tmp_path / "r3"), *FAST])
    assert swept.exit_code == 2 and "solution 'good' declares no configurations" in swept.output


@pytest.fixture(scope="module")
def swept(root, tmp_path_factory):
    """One run for the tests below (worker starts dominate their time): --sweep tunable, and
    --config for a name declared only at n > 4 (its pairs all run, and answer UNSUPPORTED at n=3)."""
    run_dir = tmp_path_factory.mktemp("sweep") / "run"
    result = invoke(["run", "--local", str(root), "--sweep", "tunable", "--config", "tunable=big_only",
                     "-o", str(run_dir), *FAST])
    assert result.exit_code == 0, result.output
    return run_dir, result.output, traces_of(run_dir)


def test_config_undeclared_at_a_workload_is_unsupported_there(swept):
    run_dir, _, by = swept
    small = by[("tunable@big_only", "w-n3")].evaluation
    assert small.status.value == "UNSUPPORTED"
    assert "solution 'tunable'" in small.reason and "'big_only'" in small.reason
    assert "valid here: default, slow, copy_of_default" in small.reason
    assert small.solution_config.model_dump() == {"solution": "tunable", "name": "big_only", "values": None}
    big = by[("tunable@big_only", "w-n8")].evaluation
    assert big.status.value == "PASSED"
    assert big.solution_config.model_dump() == {"solution": "tunable", "name": "big_only",
                                                "values": {"sleep_ms": 3}}
    info = json.loads((run_dir / "run.json").read_text())
    assert info["config"]["variants"]["tunable@big_only"] == {"solution": "tunable", "config": "big_only"}
    assert info["config"]["sweep"] == ["tunable"]
    assert info["selection"]["solutions"]["scale_add"] == ["tunable@big_only", "tunable@default", "tunable@slow",
                                                          "tunable@copy_of_default"]


def test_sweep_runs_each_declared_configuration_and_ranks_them(root, swept):
    run_dir, output, by = swept
    # one trace per declared configuration and workload; the copy of the default is not run
    assert {k for k in by if k[0] != "tunable@big_only"} == {
        ("tunable@default", "w-n3"), ("tunable@default", "w-n8"), ("tunable@slow", "w-n3"), ("tunable@slow", "w-n8")}
    assert by[("tunable@slow", "w-n8")].evaluation.solution_config.values == {"sleep_ms": 6}
    table = pd.read_csv(run_dir / "sweep.csv")
    for workload, order in (("w-n3", ["default", "copy_of_default", "slow", "big_only"]),
                            ("w-n8", ["default", "copy_of_default", "big_only", "slow"])):
        rows = table[table["workload"] == workload]
        assert list(rows["config"]) == order
        assert list(rows["best"]) == [True] + [False] * (len(order) - 1)
        assert rows.iloc[0]["vs_best"] == 1.0 and float(rows[rows["config"] == "slow"]["vs_best"].iloc[0]) > 2
    assert "same configuration as default" in (run_dir / "sweep.md").read_text()
    assert "* tunable@default" in output
    # resume: every pair is measured already
    again = invoke(["run", "--local", str(root), "--sweep", "tunable", "--config", "tunable=big_only",
                    "-o", str(run_dir), "--resume", *FAST])
    assert again.exit_code == 0, again.output
    assert len(read_traces(run_dir, repair=False).traces) == len(by)
    # reports read the variants as solutions of their own
    from fib.progress import summary_rows
    names = {r["solution"] for r in summary_rows(list(by.values()))}
    assert {"tunable@default", "tunable@slow", "tunable@big_only"} <= names


def test_solution_call_passes_config_only_when_chosen(root):
    data = load_dataset([root])
    definition = data.definitions["scale_add"]
    axes = definition.resolve_axes({"n": 8})
    inputs = {"x": torch.ones(8, 4), "alpha": 2.0}
    good = SolutionCall.load(data.solutions["scale_add"]["good"], definition, axes, "cpu")
    assert good.kwargs == {} and torch.equal(good(inputs)[0], torch.full((8, 4), 3.0))
    call = SolutionCall.load(data.solutions["scale_add"]["tunable"], definition, axes, "cpu", config="big_only")
    assert call.config == {"sleep_ms": 3} and torch.equal(call(inputs)[0], torch.full((8, 4), 3.0))
    with pytest.raises(ConfigError, match="declares no configuration 'big_only' at .*valid here: default, slow"):
        SolutionCall.load(data.solutions["scale_add"]["tunable"], definition, definition.resolve_axes({"n": 3}),
                          "cpu", config="big_only")
    with pytest.raises(ConfigError, match="declares no configurations"):
        SolutionCall.load(data.solutions["scale_add"]["good"], definition, axes, "cpu", config="default")


def test_a_hook_that_answers_badly_is_named():
    class Module:
        @staticmethod
        def fib_configs(axes):
            return ["default"]
    with pytest.raises(ConfigError, match="solution 'x'.*not \\{name: dict\\}"):
        declared_configs(Module, "x", {"n": 1})
    Module.fib_configs = staticmethod(lambda axes: {"has space": {}})
    with pytest.raises(ConfigError, match="'has space'"):
        declared_configs(Module, "x", {"n": 1})


def test_run_config_checks_variant_names():
    RunConfig(variants={"a@b": {"solution": "a", "config": "b"}})
    with pytest.raises(ValueError, match="must be named 'a@b'"):
        RunConfig(variants={"a@c": {"solution": "a", "config": "b"}})
    with pytest.raises(ValueError):
        RunConfig(variants={"a@b c": {"solution": "a", "config": "b c"}})
