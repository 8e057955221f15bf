"""spec.worker_env: variables set when a solution's worker starts (e.g. LD_PRELOAD for deep_gemm)."""
from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from fib.schema import Status
from fib.schema.solution import BuildSpec
from test_runner import run_plan
from tinydata import GOOD, make_dataset, write_solution

# Passes only if the worker was started with the variable: it checks os.environ at import time,
# as a library needing LD_PRELOAD would have to.
READS_ENV = ("import os\nif os.environ.get('PEER_PROBE') != 'on:/lib/x.so':\n"
             "    raise ImportError(f\"PEER_PROBE is {os.environ.get('PEER_PROBE')!r}\")\n" + GOOD)


def spec(**env):
    return BuildSpec(language="python", entry_point="main.py::run", worker_env=env)


def test_values_name_the_parents_variables():
    s = spec(LD_PRELOAD="${LIBSTDCXX}", MODE="fast", BOTH="${A}:${B}")
    assert s.worker_environment({"LIBSTDCXX": "/usr/lib/libstdc++.so.6", "A": "1"}) == \
        {"LD_PRELOAD": "/usr/lib/libstdc++.so.6", "MODE": "fast", "BOTH": "1:"}
    # every referenced variable unset or empty: the entry is left out (no LD_PRELOAD="")
    assert s.worker_environment({"LIBSTDCXX": ""}) == {"MODE": "fast"}


@pytest.mark.parametrize("name", ["1BAD", "A-B", "FIB_CACHE_DIR", ""])
def test_bad_names_are_refused(name):
    with pytest.raises(ValidationError, match="worker_env"):
        spec(**{name: "x"})


def test_worker_starts_with_the_solutions_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("FIB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PEER_PROBE_PATH", "/lib/x.so")
    monkeypatch.delenv("PEER_PROBE", raising=False)
    root = make_dataset(tmp_path / "ds", solutions=["good"])
    write_solution(root, "scale_add", "with_env", READS_ENV,
                   {"worker_env": {"PEER_PROBE": "on:${PEER_PROBE_PATH}"}})
    write_solution(root, "scale_add", "without_env", READS_ENV)
    _, traces = run_plan(root, tmp_path / "run", ["with_env", "without_env", "good"])
    by = {(t.solution, t.workload.uuid): t.evaluation for t in traces}
    assert by[("with_env", "w-n3")].status == Status.PASSED
    assert by[("without_env", "w-n3")].status == Status.COMPILE_ERROR
    assert "PEER_PROBE is None" in by[("without_env", "w-n3")].reason
    assert "PEER_PROBE" not in os.environ  # the parent's own environment is untouched
