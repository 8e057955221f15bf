"""Every Python/Triton solution's entry function takes exactly the definition's arguments (inputs,
then outputs under destination passing style), as flashinfer-bench requires: it counts the
parameters and rejects the solution otherwise (seen on an H200, 2026-12-02: a `config=None` added
to triton_fused's `run` made flashinfer-bench report COMPILE_ERROR on all 19 workloads). fib's own
additions (configurations) go through module hooks instead (fib.harness.call)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from fib.dataset import load_dataset

REPO = Path(__file__).resolve().parent.parent
DATA = load_dataset([REPO])
CASES = [(d, s) for d, sols in DATA.solutions.items() for s, sol in sols.items()
         if sol.spec.entry_file.endswith(".py") and sol.root is not None]


@pytest.mark.parametrize("definition,solution", CASES, ids=[f"{d[:24]}/{s}" for d, s in CASES])
def test_entry_takes_exactly_the_definition_arguments(definition, solution):
    sol = DATA.solutions[definition][solution]
    defn = DATA.definitions[definition]
    tree = ast.parse((sol.root / sol.spec.entry_file).read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == sol.spec.entry_function)
    params = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
    want = len(defn.inputs) + (len(defn.outputs) if sol.spec.destination_passing_style else 0)
    assert len(params) == want and fn.args.vararg is None and fn.args.kwarg is None, \
        f"{solution}.{fn.name} takes {[a.arg for a in params]}; the definition passes {want} arguments"
