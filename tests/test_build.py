"""fib.harness.build: solutions' fib_build() hooks run in a child process, under a budget, with a record
of successful builds in $FIB_CACHE_DIR/builds."""
from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fib.harness import build  # noqa: E402
from fib.schema import Solution  # noqa: E402

SUCCESS = '''
from pathlib import Path
import fib

def run(x, out):
    out.copy_(x)

def fib_build():
    marker = Path(__file__).with_name("built.txt")
    marker.write_text(str(int(marker.read_text()) + 1) if marker.exists() else "1")
    print("compiling the kernels")
'''
RAISES = '''
def run(x, out):
    pass

def fib_build():
    print("about to fail")
    raise ValueError("boom: nvcc not found")
'''
HANGS = '''
import os, subprocess, time
from pathlib import Path

def run(x, out):
    pass

def fib_build():
    child = subprocess.Popen(["sleep", "600"])           # a compiler the hook started
    Path(__file__).with_name("pids.txt").write_text(f"{os.getpid()} {child.pid}")
    time.sleep(600)
'''
NO_HOOK = '''
def run(x, out):
    out.copy_(x)
'''
UNSUPPORTED = '''
from pathlib import Path

def run(x, out):
    pass

def fib_supported(device_info, axes):
    assert device_info["type"] in ("cpu", "cuda") and axes == {}
    return "needs a unicorn GPU"

def fib_build():
    Path(__file__).with_name("built.txt").write_text("should not run")
'''
BROKEN = '''
import not_a_module_anywhere

def fib_build():
    pass
'''
CRASHES = '''
import os

def run(x, out):
    pass

def fib_build():
    print("segfault-like exit", flush=True)
    os._exit(3)
'''


def make_solution(base: Path, name: str, source: str, *, target=("cpu",), deps=()) -> Solution:
    folder = base / "solutions" / name
    folder.mkdir(parents=True)
    (folder / "main.py").write_text(source)
    data = {"name": name, "definition": "toy_copy", "author": "test",
            "spec": {"language": "python", "target_hardware": list(target), "entry_point": "main.py::run",
                     "dependencies": list(deps)}}
    (folder / "solution.json").write_text(json.dumps(data))
    solution = Solution.model_validate(data).attach_root(folder)
    solution.file = folder / "solution.json"
    return solution


class Interrupted(Exception):
    pass


def interrupt_when(path: Path):
    def progress(elapsed):
        if path.exists():
            raise Interrupted(elapsed)
    return progress


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Build the toy solutions once, concurrently (each build starts a Python that imports torch,
    which takes seconds), under a private FIB_CACHE_DIR; the tests below inspect the results."""
    base = tmp_path_factory.mktemp("build")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FIB_CACHE_DIR", str(base / "cache"))
        sols = {name: make_solution(base, name, source) for name, source in
                (("good", SUCCESS), ("bad", RAISES), ("hang", HANGS), ("hang2", HANGS), ("hang3", HANGS),
                 ("picky", UNSUPPORTED), ("crash", CRASHES), ("broken", BROKEN))}
        sols["hang2"].spec.build_timeout_s = 1.5
        ticks: list[float] = []
        jobs = {
            "good": dict(timeout_s=120, log_path=base / "logs" / "good.log"),
            "bad": dict(timeout_s=120, log_path=base / "logs" / "bad.log"),
            "hang": dict(timeout_s=2, log_path=base / "logs" / "hang.log", progress=ticks.append,
                         progress_interval_s=0.2),
            "hang2": dict(),  # the budget comes from spec.build_timeout_s
            # interrupted (the CLI's Ctrl-C) once the hook has started its "compiler"
            "hang3": dict(timeout_s=120, progress=interrupt_when(sols["hang3"].root / "pids.txt")),
            "picky": dict(timeout_s=120),
            "crash": dict(timeout_s=120),
            "broken": dict(timeout_s=120),
        }

        def one(name):
            started = time.monotonic()
            try:
                result = build.build_solution(sols[name], **jobs[name])
            except Interrupted as exc:
                result = exc
            return name, result, time.monotonic() - started

        with ThreadPoolExecutor(len(jobs)) as pool:
            done = {name: (result, took) for name, result, took in pool.map(one, jobs)}
        yield SimpleNamespace(base=base, cache=base / "cache", sols=sols, ticks=ticks,
                              results={n: r for n, (r, _) in done.items()},
                              took={n: t for n, (_, t) in done.items()})


def test_success_writes_a_record_and_is_cached(lab):
    sol, result = lab.sols["good"], lab.results["good"]
    log = lab.base / "logs" / "good.log"
    assert result.status == build.BUILT and result.ok and not result.cached, result
    assert (sol.root / "built.txt").read_text() == "1"
    assert "compiling the kernels" in log.read_text()
    assert result.seconds > 0 and result.log_path == str(log)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FIB_CACHE_DIR", str(lab.cache))
        record = build.find_build(sol)
        assert record is not None and record["solution"] == "good"
        assert record["sources_hash"] == build.sources_hash(sol)
        assert set(record["environment"]) == {"torch", "flashinfer", "gpu"}
        assert Path(record["path"]).parent == lab.cache / "builds"

        again = build.build_solution(sol, timeout_s=120, log_path=log)
        assert again.status == build.BUILT and again.cached and again.seconds == 0
        assert (sol.root / "built.txt").read_text() == "1"  # the hook did not run again

        forced = build.build_solution(sol, timeout_s=120, log_path=log, force=True)
        assert forced.status == build.BUILT and not forced.cached
        assert (sol.root / "built.txt").read_text() == "2"


def test_changed_sources_or_environment_need_a_new_build(tmp_path, monkeypatch):
    monkeypatch.setenv("FIB_CACHE_DIR", str(tmp_path / "cache"))
    sol = make_solution(tmp_path, "good", SUCCESS)
    env = build.build_environment()
    build._write_record(sol, env, 1.0)  # what a successful build leaves
    assert build.find_build(sol) is not None
    edited = Solution.model_validate(json.loads((sol.root / "solution.json").read_text()))
    (sol.root / "main.py").write_text(SUCCESS + "\n# tuned\n")
    edited.attach_root(sol.root)
    assert build.sources_hash(edited) != build.sources_hash(sol)
    assert build.find_build(edited) is None
    assert build.find_build(sol, environment=env) is not None
    assert build.find_build(sol, environment={**env, "flashinfer": "9.9.9"}) is None
    assert build.find_build(sol, environment={**env, "gpu": "NVIDIA H200 sm90"}) is None
    build.forget_build(sol)
    assert build.find_build(sol) is None


def test_a_raising_hook_fails_with_reason_and_log_tail(lab):
    result = lab.results["bad"]
    assert result.status == build.FAILED and not result.ok
    assert "ValueError" in result.reason and "boom: nvcc not found" in result.reason
    assert "about to fail" in result.log_tail and "Traceback" in result.log_tail
    assert not list((lab.cache / "builds").glob("toy_copy--bad--*.json"))


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"  # killed, waiting to be reaped by its new parent


def test_a_hanging_hook_is_killed_at_the_budget(lab):
    result, sol = lab.results["hang"], lab.sols["hang"]
    assert result.status == build.TIMEOUT and not result.ok, result
    assert "2 s" in result.reason
    assert 2 <= result.seconds < 10 and lab.took["hang"] < 15
    assert lab.ticks and lab.ticks == sorted(lab.ticks) and lab.ticks[-1] < 2.5
    pids = sol.root / "pids.txt"
    if pids.exists():  # the hook got far enough to start its "compiler": both must be gone
        hook_pid, compiler_pid = map(int, pids.read_text().split())
        deadline = time.monotonic() + 5
        while not (_gone(hook_pid) and _gone(compiler_pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _gone(hook_pid) and _gone(compiler_pid)
    assert not list((lab.cache / "builds").glob("toy_copy--hang--*.json"))


def test_an_interrupted_build_takes_its_processes_along(lab):
    assert isinstance(lab.results["hang3"], Interrupted)
    hook_pid, compiler_pid = map(int, (lab.sols["hang3"].root / "pids.txt").read_text().split())
    deadline = time.monotonic() + 5
    while not (_gone(hook_pid) and _gone(compiler_pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(hook_pid) and _gone(compiler_pid)


def test_budget_defaults_to_the_spec(lab):
    result = lab.results["hang2"]
    assert result.status == build.TIMEOUT and "1.5 s" in result.reason
    assert result.seconds < 8


def test_no_hook_is_skipped_without_a_process(tmp_path):
    sol = make_solution(tmp_path, "plain", NO_HOOK)
    log = tmp_path / "plain.log"
    result = build.build_solution(sol, timeout_s=120, log_path=log)
    assert result.status == build.SKIPPED and result.ok and result.seconds == 0
    assert "fib_build" in result.reason
    assert not log.exists()


def test_fib_supported_reason_makes_it_unsupported(lab):
    result = lab.results["picky"]
    assert result.status == build.UNSUPPORTED and result.reason == "needs a unicorn GPU"
    assert not (lab.sols["picky"].root / "built.txt").exists()


def test_target_hardware_and_dependencies_make_it_unsupported(tmp_path, monkeypatch):
    monkeypatch.setenv("FIB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("fib.solutions.device_info",
                        lambda device: {"type": "cpu", "device": "cpu", "name": "cpu", "sm": None})
    hopper = make_solution(tmp_path, "hopper", SUCCESS, target=("sm90",))
    result = build.build_solution(hopper, timeout_s=120)
    assert result.status == build.UNSUPPORTED and "sm90" in result.reason
    assert not (hopper.root / "built.txt").exists()
    deps = make_solution(tmp_path, "deps", SUCCESS, deps=("surely-not-installed-pkg",))
    result = build.build_solution(deps, timeout_s=120)
    assert result.status == build.UNSUPPORTED and "surely-not-installed-pkg" in result.reason


def test_a_dying_process_is_a_failure(lab):
    result = lab.results["crash"]
    assert result.status == build.FAILED
    assert "exited with code 3" in result.reason and "segfault-like exit" in result.log_tail


def test_import_errors_are_failures(lab):
    result = lab.results["broken"]
    assert result.status == build.FAILED and "import" in result.reason
    assert "not_a_module_anywhere" in result.log_tail


@pytest.mark.parametrize("source, expected", [
    ("def fib_build():\n    pass\n", True),
    ("async def fib_build():\n    pass\n", True),
    ("from somewhere import fib_build\n", True),
    ("from somewhere import compile as fib_build\n", True),
    ("fib_build = lambda: None\n", True),
    ("def run():\n    def fib_build():\n        pass\n", False),
    ("from somewhere import *\n", None),
    ("try:\n    from x import fib_build\nexcept ImportError:\n    pass\n", None),
    ("def run(:\n", None),
    ("def run():\n    pass\n", False),
])
def test_has_build_hook(tmp_path, source, expected):
    sol = make_solution(tmp_path, "probe", source)
    assert build.has_build_hook(sol) is expected


def test_flashinfer_solutions_build_as_unsupported_on_cpu():
    """The real FlashInfer solutions: on a machine without their GPU, `fib build` says why."""
    import torch
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    folder = ROOT / "solutions" / "moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048"
    for name, arch in (("flashinfer_cutlass", "sm90"), ("flashinfer_trtllm", "sm100")):
        sol = Solution.model_validate_json((folder / name / "solution.json").read_text()).attach_root(folder / name)
        result = build.build_solution(sol, timeout_s=120)
        assert result.status == build.UNSUPPORTED and arch in result.reason, result
        assert result.to_dict()["status"] == "unsupported"
