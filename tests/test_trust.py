"""Trustworthy verdicts: each defect of the trust issue has a fake solution or file here that fails
without its fix (solution isolation, the judge, budgets, process cleanup, logs, bad CLI values)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fib.cli.app import app
from fib.schema import Status
from tinydata import DEFINITION, make_dataset, run_scale_add, write_solution

REPO = Path(__file__).resolve().parent.parent


run = run_scale_add


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FIB_CACHE_DIR", str(tmp_path / "cache"))


def test_patched_checker_and_poisoned_state_change_no_other_verdict(tmp_path):
    root = make_dataset(tmp_path / "ds", solutions=["good"])
    # Zeros plus a patched fib.harness.check: judged in another process, so still wrong.
    write_solution(root, "scale_add", "a_patcher", "import fib.harness.check, fib.schema\n"
                   "fib.harness.check.check_outputs = lambda *a, **k: fib.harness.check.CheckResult(fib.schema.Status.PASSED, None)\n"
                   "import fib.harness.worker as w\n"
                   "def run(x, alpha, y):\n    y.zero_()\n")
    # Changes global torch state and monkeypatches torch for whoever comes next in its process.
    write_solution(root, "scale_add", "b_poisoner", "import torch\n"
                   "def run(x, alpha, y):\n    torch.set_default_dtype(torch.float64)\n"
                   "    torch.set_grad_enabled(False)\n    torch.randn = lambda *a, **k: torch.zeros(*a[:1])\n"
                   "    y.copy_(x * alpha + 1.0)\n")
    result = run(root, tmp_path / "run", ["a_patcher", "b_poisoner", "good"])
    by = {(t.solution, t.workload.uuid): t.evaluation for t in result.traces}
    assert by[("a_patcher", "w-n3")].status == Status.INCORRECT_NUMERICAL
    # after its first call its own process makes zeros for inputs (the fresh set, the next
    # workload): the digest against the reference process's inputs catches that
    for w in ("w-n3", "w-n8"):
        assert by[("b_poisoner", w)].status == Status.RUNTIME_ERROR
        assert "inputs built in the solution's process differ" in by[("b_poisoner", w)].reason
    assert all(by[("good", w)].status == Status.PASSED for w in ("w-n3", "w-n8"))
    workers = {s: {ev.model_extra["worker"] for (n, _), ev in by.items() if n == s} for s in ("a_patcher", "good")}
    assert not workers["a_patcher"] & workers["good"]
    # The cached reference is the true one: alpha * x + 1 of the seeded inputs.
    from safetensors.torch import load_file
    files = sorted((tmp_path / "cache" / "reference" / "scale_add").glob("*.safetensors"))
    assert files and all(float(load_file(str(f))["out0"].abs().sum()) > 0 for f in files)


def test_inputs_written_during_timing_fail(tmp_path):
    root = make_dataset(tmp_path / "ds", solutions=[])
    write_solution(root, "scale_add", "late_writer", "CALLS = [0]\n\ndef run(x, alpha, y):\n"
                   "    CALLS[0] += 1\n    y.copy_(x * alpha + 1.0)\n    if CALLS[0] > 4:\n        x.add_(1)\n")
    result = run(root, tmp_path / "run", ["late_writer"], iterations=5)
    ev = result.traces[0].evaluation
    assert ev.status == Status.RUNTIME_ERROR and "during the timed calls: x" in ev.reason


def test_hanging_first_call_costs_the_jit_budget_not_more(tmp_path):
    root = make_dataset(tmp_path / "ds", solutions=["hangs", "good"])
    start = time.monotonic()
    result = run(root, tmp_path / "run", ["hangs"], jit_timeout_s=3, timeout_s=4, build_timeout_s=30)
    elapsed = time.monotonic() - start
    reasons = [t.evaluation.reason for t in result.traces]
    assert [t.evaluation.status for t in result.traces] == [Status.TIMEOUT, Status.TIMEOUT]
    assert "JIT budget (--jit-timeout) of 3 s" in reasons[0]
    # the second workload's first call (a new worker) has --timeout, not the JIT budget
    assert "the timeout (--timeout) of 4 s" in reasons[1]
    assert elapsed < 3 + 4 + 30  # worker starts included; was 30 minutes whatever --timeout said


def test_reference_faults_are_the_definitions_not_the_solutions(tmp_path):
    for bad, words in (("return x.float() * float('nan')", "NaN/Inf"),
                       ("return (x.float() * alpha)[:1]", "has shape (1, 4)"),
                       ("return 3", "is a int, not a tensor")):
        ds = tmp_path / bad[:10].replace(" ", "_").replace("(", "")
        root = make_dataset(ds, solutions=["good"])
        definition = dict(DEFINITION, reference=f"import torch\n\ndef run(x, alpha):\n    {bad}\n")
        (root / "definitions" / "elementwise" / "scale_add.json").write_text(json.dumps(definition))
        result = run(root, ds / "run", ["good"])
        assert not any(t.evaluation.status == Status.INCORRECT_NUMERICAL for t in result.traces), bad
        assert result.traces == []
        assert result.problems and "definition 'scale_add'" in result.problems[0] and words in result.problems[0]


def test_outputs_on_another_device_are_an_error(tmp_path):
    root = make_dataset(tmp_path / "ds", solutions=[])
    write_solution(root, "scale_add", "meta_out", "import torch\n\ndef run(x, alpha):\n"
                   "    return torch.empty(x.shape, device='meta')\n", {"destination_passing_style": False})
    ev = run(root, tmp_path / "run", ["meta_out"]).traces[0].evaluation
    assert ev.status == Status.RUNTIME_ERROR and "is on meta, expected cpu" in ev.reason


def test_log_is_capped_keeping_head_and_tail(tmp_path):
    root = make_dataset(tmp_path / "ds", solutions=[])
    write_solution(root, "scale_add", "chatty", "import sys\n\ndef run(x, alpha, y):\n"
                   "    sys.stdout.write('FIRST\\n' + 'x' * 200000 + '\\nLAST\\n')\n    y.copy_(x * alpha + 1.0)\n")
    result = run(root, tmp_path / "run", ["chatty"], log_cap_bytes=65536)
    assert all(t.evaluation.status == Status.PASSED for t in result.traces)
    text = (tmp_path / "run" / "logs" / "chatty.log").read_text()
    assert len(text) < 65536 + 200 and "FIRST" in text and text.rstrip().endswith("LAST")
    assert "bytes of output cut here" in text


def _spawn_run(tmp_path: Path, solution_src: str, extra: list[str] = ()) -> tuple[subprocess.Popen, Path]:
    root = make_dataset(tmp_path / "ds", solutions=[])
    write_solution(root, "scale_add", "spawner", solution_src)
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "fib", "run", "--local", str(root), "-s", "spawner", "--timer",
                             "wall", "--output", str(run_dir), "--timeout", "600", "--jit-timeout", "600", *extra],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return proc, run_dir


def _wait_for(path: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert path.exists(), f"{path} never appeared"


def _gone(pid: int, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # a zombie that nobody reaps counts as gone
            if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.2)
    return False


HANGS_WITH_CHILD = ("import os, subprocess, sys, time\n\ndef run(x, alpha, y):\n"
                    "    child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
                    "    open(os.environ['FIB_TEST_PIDS'], 'w').write(f'{os.getpid()} {child.pid}')\n"
                    "    while True:\n        time.sleep(0.1)\n")


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_workers_and_their_children_die_with_the_parent(tmp_path, monkeypatch, how):
    pids_file = tmp_path / "pids"
    monkeypatch.setenv("FIB_TEST_PIDS", str(pids_file))
    proc, run_dir = _spawn_run(tmp_path, HANGS_WITH_CHILD)
    _wait_for(pids_file, 120)
    time.sleep(0.3)
    worker, grandchild = (int(p) for p in pids_file.read_text().split())
    os.kill(proc.pid, getattr(signal, how))
    proc.wait(timeout=60)
    assert _gone(worker) and _gone(grandchild)
    if how == "SIGTERM":  # like Ctrl-C: the run directory says so, and --resume can continue
        assert json.loads((run_dir / "run.json").read_text())["state"] == "interrupted"
        assert proc.returncode == 130


@pytest.mark.parametrize("args,words", [
    (["--iterations", "0"], "--iterations"),
    (["--num-trials", "0"], "--num-trials"),
    (["--atol", "-1"], "--atol"),
    (["--timer", "cupit"], "--timer"),
    (["--devices", "cuda:7"], "does not exist here"),
    (["--also-check", "0.1,0.2"], "--also-check"),
    (["--timeout", "0"], "--timeout"),
])
def test_bad_cli_values_exit_2_before_any_work(tmp_path, args, words):
    root = make_dataset(tmp_path / "ds", solutions=["good"])
    result = CliRunner().invoke(app, ["run", "--local", str(root), "--output", str(tmp_path / "run"), *args])
    assert result.exit_code == 2, result.output
    assert words in result.output
    assert not (tmp_path / "run").exists()


def test_run_exits_nonzero_when_no_pair_passed(tmp_path):
    root = make_dataset(tmp_path / "ds", solutions=["raises"])
    result = CliRunner().invoke(app, ["run", "--local", str(root), "--output", str(tmp_path / "run"), "--timer",
                                      "wall", "--iterations", "2", "--num-trials", "1"])
    assert result.exit_code == 1, result.output


def test_vacuous_tolerance_is_flagged(tmp_path):
    root = make_dataset(tmp_path / "ds", solutions=["good"])
    definition = dict(DEFINITION, tolerance={"atol": 100.0, "rtol": 100.0, "required_matched_ratio": 0.5})
    (root / "definitions" / "elementwise" / "scale_add.json").write_text(json.dumps(definition))
    result = run(root, tmp_path / "run", ["good"])
    assert result.vacuous and all("all zeros" in v for v in result.vacuous.values())
    assert all(t.evaluation.model_extra.get("vacuous_tolerance") for t in result.traces)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["vacuous_tolerance"]


def test_nan_outputs_show_as_nan_in_the_error_columns(tmp_path):
    from fib.progress import summary_rows
    root = make_dataset(tmp_path / "ds", solutions=["writes_nan"])
    result = run(root, tmp_path / "run", ["writes_nan"])
    rows = summary_rows(result.traces)
    assert all(r["status"] == "INCORRECT_NUMERICAL" for r in rows)
    assert all(r["max_abs_error"] != r["max_abs_error"] for r in rows)  # NaN, never 0.0
    line = json.loads((tmp_path / "run" / "traces.jsonl").read_text().splitlines()[0])
    assert line["evaluation"]["correctness"]["max_absolute_error"] == "NaN"


def test_a_second_run_on_a_locked_run_directory_is_refused(tmp_path):
    from fib.rundir import RunDirLock
    root = make_dataset(tmp_path / "ds", solutions=["good"])
    run_dir = tmp_path / "run"
    with RunDirLock(run_dir):
        result = CliRunner().invoke(app, ["run", "--local", str(root), "--output", str(run_dir), "--timer", "wall"])
    assert result.exit_code == 2 and "another fib run" in " ".join(result.output.split()), result.output
    assert not (run_dir / "traces.jsonl").exists()
