"""The profiling driver's pure parts: backend choice, nsys command lines, failure messages."""
import json
from pathlib import Path

import pytest

from fib.errors import FibError
from fib.profile import nsys
from fib.profile import driver


def test_profile_command_line():
    cmd = nsys.profile_command("/x/nsys", Path("/r/profile/capture"), ["python", "-m", "fib.profile.target", "s.json"])
    assert cmd[:2] == ["/x/nsys", "profile"]
    assert "--capture-range=cudaProfilerApi" in cmd and "--capture-range-end=stop" in cmd
    assert cmd[cmd.index("--trace") + 1] == "cuda,nvtx" and cmd[cmd.index("-o") + 1] == "/r/profile/capture"
    assert cmd[-4:] == ["python", "-m", "fib.profile.target", "s.json"]


def test_find_nsys_prefers_env(tmp_path, monkeypatch):
    fake = tmp_path / "nsys"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("FIB_NSYS", str(fake))
    assert nsys.find_nsys() == str(fake)
    assert driver.resolve_backend("auto") == "nsys"
    with pytest.raises(FibError):
        driver.resolve_backend("perf")


def test_failure_names_command_exit_code_and_cause():
    err = nsys.failure("nsys export", ["nsys", "export", "a.nsys-rep"], 127,
                       "line 1\nnsys: error while loading shared libraries: libdw.so.1: cannot open shared object")
    text = str(err)
    assert "exit code 127" in text and "nsys export a.nsys-rep" in text and "libdw.so.1" in text
    assert "install libdw1" in text


def test_run_checked_reports_failure(tmp_path):
    script = tmp_path / "fail.sh"
    script.write_text("#!/bin/sh\necho 'No CUDA devices' >&2\nexit 3\n")
    script.chmod(0o755)
    with pytest.raises(nsys.NsysError) as info:
        nsys.run_checked("nsys profile", [str(script)])
    assert "exit code 3" in str(info.value) and "No CUDA devices" in str(info.value)


def test_build_spec(tmp_path):
    spec = driver.build_spec(backend="torch", definitions=["d"], solutions=["a", "b"], workloads=None,
                             iterations=5, warmup=2, roots=[tmp_path], seed=1, device="cuda:0",
                             profile_dir=tmp_path, demo=False)
    assert spec["trace"] == str(tmp_path / "trace.json") and spec["workloads"] is None
    assert json.loads(json.dumps(spec))["solutions"] == ["a", "b"]


def test_backend_both_is_refused_with_the_reason_it_cannot_work():
    with pytest.raises(FibError) as info:
        driver.resolve_backend("both")
    assert "--backend" in str(info.value)
