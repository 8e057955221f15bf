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


def test_the_parent_imports_no_torch_before_its_children_start():
    """`import torch` took 3.3 s on the H200 machine; the run's parent finds its GPUs through libcuda
    and starts the judge and the first worker before it probes its own environment (which imports
    torch), so nothing on the way there may import torch at module level."""
    import subprocess
    import sys
    code = ("import sys, fib.cli.app, fib.cli.common, fib.harness.runner, fib.harness.executor, fib.solutions, "
            "fib.dataset, fib.harness.seeds, fib.device; print(sorted(m for m in sys.modules if m == 'torch'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout



def family_imports(source: str) -> list[str]:
    """The modules of `families` a Python source imports by name (absolute imports)."""
    import ast
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.append(node.module or "")
    return [n for n in names if n.split(".")[0] == "families"]


def test_nothing_in_fib_imports_a_family():
    """Families (families/<name>/) are found at run time by fib.families, never imported by name."""
    from pathlib import Path
    assert family_imports("import os\nimport families.moe.family\ndef f():\n    from families.moe import x\n") == \
        ["families.moe.family", "families.moe"]
    package = Path(__file__).resolve().parent.parent / "fib"
    found = {str(f.relative_to(package)): family_imports(f.read_text()) for f in package.rglob("*.py")}
    assert {f: names for f, names in found.items() if names} == {}
