"""The CLI as a new user meets it: help texts, list, validate, and `fib run` end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fib.cli.app import app, expand_list_args
from tinydata import GOOD, make_dataset, write_solution

REPO = Path(__file__).resolve().parent.parent
SMALL = "moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e8_h512_i256"


def test_list_options_accept_spaces_commas_and_repeats():
    argv = ["run", "--solutions", "a", "b,c", "--timeout", "5", "--solutions=d", "-o", "x", "--local", "p"]
    assert expand_list_args(argv) == ["run", "--solutions", "a", "--solutions", "b", "--solutions", "c",
                                      "--timeout", "5", "--solutions", "d", "-o", "x", "--local", "p"]


def test_short_list_options_take_lists_like_the_long_ones():
    argv = ["run", "-d", "a", "b", "-s", "x,y", "-w", "seq_len=7", "seq_len=14", "-o", "out"]
    assert expand_list_args(argv) == ["run", "-d", "a", "-d", "b", "-s", "x", "-s", "y", "-w", "seq_len=7",
                                      "-w", "seq_len=14", "-o", "out"]
    assert expand_list_args(["profile", "-s=x,y", "z"]) == ["profile", "-s", "x", "-s", "y", "-s", "z"]
    assert expand_list_args(["run", "-s", "a", "--", "-s", "b"]) == ["run", "-s", "a", "--", "-s", "b"]


def test_bare_workloads_option_survives_expansion():
    """`fib list --workloads` (no values) used to vanish in expand_list_args: no workload table was shown."""
    assert expand_list_args(["list", "--workloads"]) == ["list", "--workloads="]
    assert expand_list_args(["list", "-w", "--local", "p"]) == ["list", "--workloads=", "--local", "p"]
    assert expand_list_args(["list", "--workloads", "n=3"]) == ["list", "--workloads", "n=3"]
    assert expand_list_args(["run", "--solutions", "--local", "p"]) == ["run", "--local", "p"]  # as before


def invoke(args):
    """What `fib ARGS` does: main() expands list options, then runs the app."""
    return CliRunner().invoke(app, expand_list_args(args), env={"COLUMNS": "250"})


def test_list_workloads_shows_uuid_axes_and_input_kinds(tmp_path):
    root = make_dataset(tmp_path, solutions=["good"])
    plain = invoke(["list", "--local", str(root)])
    assert plain.exit_code == 0, plain.output
    assert "scale_add" in plain.output and "runs on cpu" in plain.output and "workloads of" not in plain.output
    result = invoke(["list", "--local", str(root), "--workloads"])
    assert result.exit_code == 0, result.output
    assert "workloads of scale_add (2)" in result.output
    for text in ("w-n3", "n=3", "random: x; scalar: alpha=2.0", "w-n8", "n=8", "scalar: alpha=-0.5"):
        assert text in result.output


def test_list_takes_short_list_options(tmp_path):
    root = make_dataset(tmp_path, solutions=["good", "good_return", "raises"])
    result = invoke(["list", "--local", str(root), "-d", "scale_add", "scale_add", "-s", "good,raises",
                     "-w", "n=8", "n=99"])
    assert result.exit_code == 0, result.output
    assert "workloads of scale_add (1)" in result.output and "w-n8" in result.output and "w-n3" not in result.output
    assert "raises" in result.output and "good_return" not in result.output
    assert result.output.count("elementwise") == 1  # a definition named twice is listed once
    wrong = invoke(["list", "--local", str(root), "-s", "nope"])
    assert wrong.exit_code == 2 and "unknown solution(s) nope" in wrong.output


def test_validate_warns_when_a_later_root_overrides_a_solution(tmp_path):
    first = make_dataset(tmp_path / "a", solutions=["good"])
    second = tmp_path / "b"
    write_solution(second, "scale_add", "good", GOOD)
    result = invoke(["validate", "--local", str(first), str(second)])
    assert result.exit_code == 0, result.output
    assert (f"warning solution 'good' of definition 'scale_add': {second}/solutions/scale_add/good/solution.json "
            f"overrides {first}/solutions/scale_add/good/solution.json (a later dataset root wins)") in result.output


def test_validate_names_file_field_and_fix_on_one_line(tmp_path):
    root = make_dataset(tmp_path, solutions=["good"])
    data_file = root / "datasets" / "elementwise" / "scale_add.jsonl"
    data_file.write_text(data_file.read_text() + json.dumps({"uuid": "w-n3", "axes": {"n": 4}}) + "\n")
    folder = write_solution(root, "scale_add", "sneaky", GOOD)
    meta = json.loads((folder / "solution.json").read_text())
    (folder / "solution.json").write_text(json.dumps(dict(meta, name="../sneaky")))
    result = invoke(["validate", "--local", str(root)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert any(line.startswith(f"problem {data_file}:3: field 'uuid': workload uuid 'w-n3'")
               and line.endswith("(fix: give each workload its own uuid, or delete the copy)") for line in lines), \
        result.output
    assert any(line.startswith(f"problem {folder}/solution.json: field 'name': solution name '../sneaky' has")
               and "(fix: rename the solution" in line for line in lines), result.output
    assert "2 problem(s)" in result.output


@pytest.mark.parametrize("command,words", [
    (["run", "--help"], ["--definitions", "--solutions", "--timeout", "--rtol", "--atol", "--required-matched-ratio",
                         "--warmup-runs", "--iterations", "--num-trials", "--resume", "--workloads", "--device",
                         "--output", "--json", "FP32 reference"]),
    (["list", "--help"], ["whether each solution can run here"]),
    (["validate", "--help"], ["every problem"]),
    (["build", "--help"], ["time budget"]),
])
def test_help_says_what_each_command_does(command, words):
    result = CliRunner().invoke(app, command, env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for word in words:
        assert word in result.output


def test_list_shows_definitions_and_support_here():
    result = CliRunner().invoke(app, ["list"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert SMALL in result.output
    assert "runs on cpu" in result.output  # torch_eager
    assert "unsupported: targets sm100" in result.output  # flashinfer_trtllm, on any machine but SM100


def test_validate_repository_dataset_is_clean():
    result = CliRunner().invoke(app, ["validate"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "ok" in result.output


def test_validate_reports_problems_with_exit_1(tmp_path):
    root = make_dataset(tmp_path, solutions=["good"])
    (root / "definitions" / "elementwise" / "broken.json").write_text("{")
    result = CliRunner().invoke(app, ["validate", "--local", str(root)], env={"COLUMNS": "250"})
    assert result.exit_code == 1
    assert "broken.json: malformed JSON" in result.output


@pytest.mark.parametrize("family, words", [
    ("OP_TYPES = ('elementwise',)\nTOKEN_AXIS = 'n'\nimport surely_not_a_module_xyz\n",
     ": the family module fails to import: ModuleNotFoundError"),
    ("OP_TYPES = ('elementwise',)\nTOKEN_AXIS = 'm'\n",
     ": field 'TOKEN_AXIS': TOKEN_AXIS 'm' is not a var axis of definition 'scale_add' (its var axes: n)"),
])
def test_validate_reports_a_bad_family_module_naming_its_file(tmp_path, family, words):
    root = make_dataset(tmp_path, solutions=["good"])
    path = root / "families" / "fake" / "family.py"
    path.parent.mkdir(parents=True)
    path.write_text(family)
    result = CliRunner().invoke(app, ["validate", "--local", str(root)], env={"COLUMNS": "250"})
    assert result.exit_code == 1, result.output
    assert f"problem {path.resolve()}{words}" in result.output and "1 problem(s)" in result.output
    path.write_text("OP_TYPES = ('elementwise',)\nTOKEN_AXIS = 'n'\n")  # fixed: validate is clean again
    result = CliRunner().invoke(app, ["validate", "--local", str(root)], env={"COLUMNS": "250"})
    assert result.exit_code == 0 and "ok" in result.output, result.output


def test_unknown_solution_is_a_usage_error(tmp_path):
    root = make_dataset(tmp_path, solutions=["good"])
    result = CliRunner().invoke(app, ["run", "--local", str(root), "--solutions", "nope"], env={"COLUMNS": "250"})
    assert result.exit_code == 2
    assert "unknown solution(s) nope" in result.output and "known: good" in result.output


@pytest.mark.slow
def test_fib_run_on_cpu_demo(tmp_path):
    """What the README's main command does on a CPU machine: torch_eager runs, Triton is UNSUPPORTED."""
    env = dict(os.environ, FIB_CACHE_DIR=str(tmp_path / "cache"), COLUMNS="200")
    cmd = [sys.executable, "-m", "fib", "run", "--definitions", SMALL, "--solutions", "torch_eager", "triton_fused",
           "--workloads", "seq_len=1,seq_len=16", "--iterations", "3", "--num-trials", "1", "--warmup-runs", "1",
           "--output", str(tmp_path / "run"), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads(proc.stdout)
    statuses = {(r["solution"], r["axes"]["seq_len"]): r["status"] for r in payload["results"]}
    assert statuses == {("torch_eager", 1): "PASSED", ("torch_eager", 16): "PASSED",
                        ("triton_fused", 1): "UNSUPPORTED", ("triton_fused", 16): "UNSUPPORTED"}
    assert "run directory" in proc.stderr
    assert (tmp_path / "run" / "run.json").is_file()
    # the parent leaves `import torch` (seconds on a GPU machine) until its children are starting
    events = [json.loads(line) for line in (tmp_path / "run" / "timeline.jsonl").read_text().splitlines()]
    assert [e["torch_in_parent"] for e in events if e["event"] == "judge_start"] == [False]
    # the judge and the first worker were standbys started before the dataset was loaded
    assert [e.get("standby") for e in events if e["event"] in ("judge_start", "worker_start")][:2] == [True, True]
    assert (tmp_path / "run" / "logs" / "torch_eager.log").read_text().count("== torch_eager on ") == 2


def test_ctrl_c_keeps_measured_traces_and_resume_continues(tmp_path):
    import signal
    import time
    root = make_dataset(tmp_path / "ds", solutions=["good", "hangs_later"])
    env = dict(os.environ, FIB_CACHE_DIR=str(tmp_path / "cache"), COLUMNS="200")
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "fib", "run", "--local", str(root), "--output", str(run_dir), "--timeout", "300",
           "--iterations", "2", "--num-trials", "1", "--warmup-runs", "1", "--timer", "wall"]
    # Output goes to files, not pipes: a pipe nobody drains until the signal could block the run
    # on a write, and a pipe's EOF would also wait for every process that inherited it.
    out_path, err_path = tmp_path / "run.out", tmp_path / "run.err"
    with open(out_path, "w") as out_file, open(err_path, "w") as err_file:
        # A terminal's Ctrl-C: SIGINT at its default disposition even when pytest itself runs in the
        # background (where the shell ignores SIGINT and children would inherit that).
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out_file, stderr=err_file, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    traces = run_dir / "traces.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (traces.exists() and traces.read_text().count("\n") >= 1):
        time.sleep(0.2)
    time.sleep(1.0)  # hangs_later is now stuck in its timed calls
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("fib run did not stop within 120 s of Ctrl-C:\n" + err_path.read_text()[-3000:])
    err = err_path.read_text()
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "--resume" in err
    kept = [json.loads(line) for line in traces.read_text().splitlines()]
    assert kept and all(t["evaluation"]["status"] == "PASSED" for t in kept)
    assert json.loads((run_dir / "run.json").read_text())["state"] == "interrupted"
    # --resume picks up where it stopped and does not repeat what was measured
    done = {(t["solution"], t["workload"]["uuid"]) for t in kept}
    same = ["--iterations", "2", "--num-trials", "1", "--warmup-runs", "1", "--timer", "wall"]
    refused = subprocess.run(cmd[:-10] + ["--solutions", "good", "--resume"] + same[:-4] + ["--iterations", "3"],
                             env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "iterations: 2 -> 3" in refused.stderr, refused.stderr[-2000:]
    resumed = subprocess.run(cmd[:-10] + ["--solutions", "good", "--resume"] + same,
                             env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = [json.loads(line) for line in traces.read_text().splitlines()]
    pairs = [(t["solution"], t["workload"]["uuid"]) for t in after]
    assert len(pairs) == len(set(pairs)) and done <= set(pairs)
    assert {p for p in pairs if p[0] == "good"} == {("good", "w-n3"), ("good", "w-n8")}


@pytest.mark.parametrize("code, status", [(None, 0), (0, 0), (2, 2), ("fatal: no such thing", 1)])
def test_entry_exits_with_the_commands_status(monkeypatch, capsys, code, status):
    """fib's entry point ends the process with os._exit after the atexit handlers and a flush of
    stdout/stderr; the command's exit status, or 1 with the message for SystemExit("...")."""
    import atexit
    from fib.cli import entry
    ran, exited = [], []
    monkeypatch.setattr(atexit, "_run_exitfuncs", lambda: ran.append(True))
    monkeypatch.setattr(entry.os, "_exit", lambda s: exited.append(s))
    entry._exit(code)
    assert ran == [True] and exited == [status]
    if isinstance(code, str):
        assert code in capsys.readouterr().err
