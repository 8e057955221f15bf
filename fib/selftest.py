"""`fib selftest`: adversarial fake solutions run against a definition's own workloads, each with
the status it must get. It checks the harness (isolation, budgets, fresh check) and the dataset
(a tolerance under which wrong outputs pass is caught here) at once: any fake whose status differs
from its expectation is a failure of the selftest.

The fakes are written for any definition in destination-passing style: the last N arguments are
the outputs. `reference` runs the definition's own reference code and must PASS (else the
tolerance rejects the reference itself, e.g. through the output dtype); the rest must not.
"""
from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path

from .schema import Definition

PRELUDE = textwrap.dedent('''
    import os, sys, time
    import torch
    N_OUT = {n_out}
    _REF = {{}}
    exec(compile({reference!r}, "<reference>", "exec"), _REF)

    def reference(*inputs):
        with torch.no_grad():
            result = _REF["run"](*inputs)
        return list(result) if isinstance(result, (tuple, list)) else [result]

    def write(outputs, values):
        for out, value in zip(outputs, values):
            out.copy_(value.to(out.dtype))

    def split(args):
        return args[:-N_OUT], args[-N_OUT:]
''')

FAKES: dict[str, tuple[str, str, str]] = {
    # name: (body of run(*args), expected status, what it proves)
    "reference": ("inputs, outs = split(args)\nwrite(outs, reference(*inputs))",
                  "PASSED", "the definition's own reference passes its tolerance"),
    "zeros": ("inputs, outs = split(args)\nfor o in outs:\n    o.zero_()",
              "INCORRECT_NUMERICAL", "an all-zeros output fails (the tolerance is not vacuous)"),
    "shifted": ("inputs, outs = split(args)\nref = reference(*inputs)\n"
                "write(outs, [r + r.float().std() for r in ref])",
                "INCORRECT_NUMERICAL", "the reference shifted by its std fails"),
    "nan": ("inputs, outs = split(args)\nwrite(outs, reference(*inputs))\nfor o in outs:\n"
            "    if o.is_floating_point():\n        o.view(-1)[0] = float('nan')",
            "INCORRECT_NUMERICAL", "one NaN fails"),
    "patches_check": ("import fib.harness.check, fib.schema\n"
                      "fib.harness.check.check_outputs = lambda *a, **k: fib.harness.check.CheckResult(fib.schema.Status.PASSED, None)\n"
                      "inputs, outs = split(args)\nfor o in outs:\n    o.zero_()",
                      "INCORRECT_NUMERICAL", "patching fib's check inside the solution changes nothing"),
    "caches": ("inputs, outs = split(args)\nif 'v' not in _REF:\n    _REF['v'] = reference(*inputs)\n"
               "write(outs, _REF['v'])",
               "INCORRECT_NUMERICAL", "returning a cached result fails the fresh check"),
    "modifies_input": ("inputs, outs = split(args)\nwrite(outs, reference(*inputs))\n"
                       "t = [x for x in inputs if isinstance(x, torch.Tensor)]\n"
                       "if t:\n    t[0].view(torch.uint8).view(-1)[0] ^= 1",
                       "RUNTIME_ERROR", "writing into an input fails"),
    "modifies_input_when_timed": ("inputs, outs = split(args)\nwrite(outs, reference(*inputs))\n"
                                  "_REF['calls'] = _REF.get('calls', 0) + 1\n"
                                  "t = [x for x in inputs if isinstance(x, torch.Tensor)]\n"
                                  "if t and _REF['calls'] > 3:\n    t[0].view(torch.uint8).view(-1)[0] ^= 1",
                                  "RUNTIME_ERROR", "writing into an input during the timed calls fails"),
    "poisons_torch": ("torch.set_default_dtype(torch.float64)\ntorch.set_flush_denormal(True)\n"
                      "torch.manual_seed(1234)\ntorch.set_grad_enabled(True)\n"
                      "inputs, outs = split(args)\nwrite(outs, reference(*inputs))",
                      "PASSED", "a solution that changes torch's global state passes itself and leaks nowhere"),
    "aborts": ("os.abort()", "RUNTIME_ERROR", "a crash costs only its own pair"),
    "hangs": ("while True:\n    time.sleep(0.05)", "TIMEOUT", "a hang in the first call costs the JIT budget"),
}


@dataclass
class Expectation:
    solution: str
    expected: str
    proves: str


def fake_source(definition: Definition, body: str) -> str:
    prelude = PRELUDE.format(n_out=len(definition.outputs), reference=definition.reference)
    return prelude + "\n\ndef run(*args):\n" + textwrap.indent(body, "    ") + "\n"


def write_fakes(root: Path, definition: Definition, names: list[str] | None = None) -> list[Expectation]:
    """Write the fake solutions for `definition` under `root/solutions/<definition>/selftest_<fake>/`."""
    expectations = []
    has_tensor_input = any(not spec.is_scalar for spec in definition.inputs.values())
    for name, (body, expected, proves) in FAKES.items():
        if names and name not in names:
            continue
        if name.startswith("modifies_input") and not has_tensor_input:
            continue
        sol_name = f"selftest_{name}"
        folder = root / "solutions" / definition.name / sol_name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "fake.py").write_text(fake_source(definition, body))
        spec = {"language": "python", "target_hardware": ["cpu", "cuda"], "entry_point": "fake.py::run",
                "destination_passing_style": True}
        (folder / "solution.json").write_text(json.dumps({
            "name": sol_name, "definition": definition.name, "author": "fib selftest", "spec": spec,
            "description": f"fib selftest fake: {proves}"}))
        expectations.append(Expectation(sol_name, expected, proves))
    return expectations


def degenerate_workloads(traces) -> set[str]:
    """Workloads whose reference is exactly zero (the zeros fake PASSED with no error at all): there
    zeros is the right answer, so the wrong-output fakes cannot fail and prove nothing."""
    return {t.workload.uuid for t in traces if t.solution == "selftest_zeros" and t.evaluation.status.value == "PASSED"
            and t.evaluation.correctness is not None and t.evaluation.correctness.max_absolute_error == 0.0}


def compare(expectations: list[Expectation], traces) -> list[dict]:
    """One row per (fake, workload): expected and actual status, and whether they agree ("n/a" on a
    workload whose reference is all zeros, for the fakes whose output is then correct)."""
    by_name = {e.solution: e for e in expectations}
    degenerate = degenerate_workloads(traces)
    rows = []
    for t in traces:
        e = by_name.get(t.solution)
        if e is None:
            continue
        status = t.evaluation.status.value
        ok: bool | None = status == e.expected
        if not ok and t.workload.uuid in degenerate and status == "PASSED":
            ok = None  # zeros, shifted-by-zero, cached zeros: right answers on an all-zero reference
        rows.append({"solution": t.solution, "workload": t.workload.uuid, "expected": e.expected, "got": status,
                     "ok": ok, "proves": e.proves, "reason": t.evaluation.reason or ""})
    return rows
