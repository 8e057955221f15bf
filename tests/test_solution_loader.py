"""fib.solutions' import of a solution's entry file: solutions whose folders hold files of the same
name never share them within one process (a worker serves one solution, but a test, a benchmark or
a profiler target may load several)."""
from __future__ import annotations

import sys

from fib import solutions as sol_mod
from fib.dataset import load_dataset
from tinydata import make_dataset, write_solution

ENTRY = "from helpers import shared\n\ndef run(x, alpha, y):\n    y.copy_(x * alpha + shared.VALUE)\n"


def test_same_named_sibling_packages_are_not_shared(tmp_path):
    """Two solutions each import `helpers/shared.py` (a folder without __init__.py: a namespace
    package) from their own folder; loading one after the other gives each its own file, both
    ways round, and the other's modules are dropped from sys.modules."""
    root = make_dataset(tmp_path, solutions=["good"])
    for name, value in (("one", 1.0), ("two", 2.0)):
        folder = write_solution(root, "scale_add", name, ENTRY)
        (folder / "helpers").mkdir()
        (folder / "helpers" / "shared.py").write_text(f"VALUE = {value}\n")
    data = load_dataset([root])
    seen = []
    for name in ("one", "two", "one"):
        function = sol_mod.load_entry(data.solutions["scale_add"][name])
        seen.append(function.__globals__["shared"].VALUE)
        assert sys.modules["helpers.shared"].VALUE == seen[-1]
    assert seen == [1.0, 2.0, 1.0]
