"""Harness v2's layering facts that a test can check: the run configuration's timer choices are
the timer registry's, and a solution worker never imports pandas (nor the reporting side)."""
from __future__ import annotations

import subprocess
import sys
import typing

from fib.schema.config import TIMER_CHOICES, RunConfig
from fib.timing.measure import TIMERS


def test_timer_choices_are_the_timer_registry():
    assert tuple(TIMER_CHOICES) == tuple(TIMERS)
    assert set(typing.get_args(RunConfig.model_fields["timer"].annotation)) == set(TIMERS)


def test_worker_imports_no_pandas_and_no_reporting():
    code = ("import sys, fib.harness.worker as w, fib.harness.judge, fib.harness.call, fib.timing.measure, fib.harness.check;"
            "print(sorted(m for m in sys.modules if m == 'pandas' or m.startswith(('fib.report', 'fib.results', "
            "'fib.results.dashboard', 'matplotlib'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
