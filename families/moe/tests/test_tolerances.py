"""The MoE tolerances on real data: the small DeepSeek sibling's five workloads, with the inputs
`fib run --seed 0` builds (fib.harness.inputs.make_inputs, workload_seed(0, workload)).

Under the definition's tolerance (fib_fp8: atol 0.1, rtol 0.2, ratio 0.98, relative L2 <= 0.08)
torch_eager and the interpreted Triton solutions PASS, while three wrong outputs FAIL on every
workload whose reference is not all zeros: all zeros, torch_eager with local_expert_offset + 1
(each local expert computed with its neighbour's weights, and other tokens picked), and
torch_eager with routed_scaling_factor 1 (the factor 2.5 left out). Under the old tolerance, kept
as the "contest" preset (atol 1, rtol 0.3, ratio 0.9), each of those wrong outputs passes on some
workload: the assertions below would fail with it, and vacuous_outputs flags it.

The T=1 workload's single token picks no local expert: its reference is all zeros and zeros is
the right answer there, which no tolerance could (or should) fail.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # this checkout's fib, also when run as a script (the subprocess)

from fib import solutions as sol_mod  # noqa: E402
from fib.harness.check import check_outputs, vacuous_outputs  # noqa: E402
from fib.harness.inputs import compute_reference, make_inputs, workload_seed  # noqa: E402
from fib.schema import Definition, Solution, Status, Workload, load_jsonl, load_model  # noqa: E402

NAME = "moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e8_h512_i256"
WRONG = ["zeros", "offset+1", "no_scaling"]


def definition() -> Definition:
    return load_model(ROOT / "definitions" / "moe" / f"{NAME}.json", Definition)


def workloads() -> list[Workload]:
    return [Workload.model_validate(line) for _, line in load_jsonl(ROOT / "datasets" / "moe" / f"{NAME}.jsonl")]


def load_solution(name: str):
    path = ROOT / "solutions" / NAME / name / "solution.json"
    solution = load_model(path, Solution)
    solution.attach_root((path.parent / solution.model_extra["source_dir"]).resolve())
    return solution, sol_mod.load_entry(solution)


def run_solution(defn, axes, solution, function, inputs) -> torch.Tensor:
    return sol_mod.call_solution(function, solution, inputs, sol_mod.allocate_outputs(defn, axes, "cpu"))[0]


@pytest.fixture(scope="module")
def cases():
    """Per workload (by seq_len): axes, reference, and the outputs of every case."""
    defn = definition()
    eager = load_solution("torch_eager")
    made = {}
    for work in workloads():
        axes = defn.resolve_axes(work.axes)
        inputs = make_inputs(defn, work, seed=workload_seed(0, work), device="cpu", root=ROOT)
        ref = compute_reference(defn, inputs)[0][0]
        offset = int(inputs["local_expert_offset"])
        outputs = {
            "torch_eager": run_solution(defn, axes, *eager, inputs),
            "zeros": torch.zeros(ref.shape, dtype=torch.bfloat16),
            "offset+1": run_solution(defn, axes, *eager, {**inputs, "local_expert_offset": offset + 1}),
            "no_scaling": run_solution(defn, axes, *eager, {**inputs, "routed_scaling_factor": 1.0}),
        }
        made[work.axes["seq_len"]] = {"axes": axes, "ref": ref, "outputs": outputs}
    return made


def verdict(defn, case, output, tol):
    return check_outputs(defn, case["axes"], [output], [case["ref"]], tol)


def nontrivial(cases) -> list[int]:
    return [t for t, c in cases.items() if bool(c["ref"].abs().max() > 0)]


def test_the_workloads_and_which_references_are_all_zeros(cases):
    assert sorted(cases) == [1, 3, 8, 16, 40]
    assert nontrivial(cases) == [3, 16, 40, 8]  # T=1: no local expert chosen, zeros is correct
    for t in nontrivial(cases):
        mean = float(cases[t]["ref"].abs().mean())
        assert 0.05 < mean < 1.5, (t, mean)  # O(0.1-1) outputs: why atol 1 is vacuous


def test_torch_eager_passes_the_definition_tolerance(cases):
    defn = definition()
    for t, case in cases.items():
        result = verdict(defn, case, case["outputs"]["torch_eager"], defn.tolerance)
        assert result.status == Status.PASSED, (t, result.reason)
        c = result.correctness
        assert c.relative_l2_error < 0.005 and c.cosine_similarity > 0.99999, (t, c)  # bf16 rounding only
        assert c.matched_ratio == 1.0 and c.tolerance == "fib_fp8"


@pytest.mark.parametrize("wrong", WRONG)
def test_wrong_outputs_fail_the_definition_tolerance(cases, wrong):
    defn = definition()
    for t in nontrivial(cases):
        result = verdict(defn, cases[t], cases[t]["outputs"][wrong], defn.tolerance)
        assert result.status == Status.INCORRECT_NUMERICAL, (t, wrong)
        c = result.correctness
        # measured: zeros 1.0, offset+1 0.74-1.43, missing factor 0.6 (= 1 - 1/2.5); the bound is 0.08
        assert c.relative_l2_error > 0.5, (t, wrong, c.relative_l2_error)
        assert "relative L2 error" in result.reason and "max_relative_l2 0.08" in result.reason
        # the per-element rule fails them too (matched <= 0.94 against 0.98 required)
        assert c.matched_ratio < 0.95 and "of elements within tolerance" in result.reason, (t, wrong, c.matched_ratio)


@pytest.mark.parametrize("wrong,passes_on", [
    ("zeros", {3, 16, 40}), ("offset+1", {3, 40}), ("no_scaling", {3, 16, 40})])
def test_the_old_contest_tolerance_lets_them_pass(cases, wrong, passes_on):
    """The assertions above are meaningful: with the old tolerance they would fail."""
    defn = definition()
    contest = defn.tolerance_preset("contest")
    assert (contest.atol, contest.rtol, contest.required_matched_ratio) == (1.0, 0.3, 0.9)
    passed = {t for t in nontrivial(cases)
              if verdict(defn, cases[t], cases[t]["outputs"][wrong], contest).status == Status.PASSED}
    assert passed == passes_on


def test_vacuous_outputs_flags_the_contest_preset_and_not_the_definition_tolerance(cases):
    defn = definition()
    contest = defn.tolerance_preset("contest")
    flagged = {t: vacuous_outputs(defn, cases[t]["axes"], [cases[t]["ref"]], contest) for t in nontrivial(cases)}
    assert flagged == {3: ["all zeros", "reference shifted by its std"],
                       16: ["all zeros", "reference shifted by its std"],
                       40: ["all zeros", "reference shifted by its std"],
                       8: []}
    for t, case in cases.items():  # T=1 included: zeros equals its reference, not counted
        assert vacuous_outputs(defn, case["axes"], [case["ref"]], defn.tolerance) == [], t


def test_the_contest_preset_is_recorded_as_an_also_check(cases):
    defn = definition()
    case = cases[16]
    result = check_outputs(defn, case["axes"], [case["outputs"]["zeros"]], [case["ref"]], defn.tolerance,
                           [defn.tolerance_preset("contest")])
    assert result.status == Status.INCORRECT_NUMERICAL
    [contest] = result.correctness.extra["also_checked"]
    assert contest["name"] == "contest" and contest["passed"] and contest["relative_l2_error"] == 1.0


# ---- the Triton solutions, interpreted -------------------------------------------------------
def _interpreted_verdicts(solution: str) -> dict:
    """{seq_len: [status, relative L2, matched ratio, reason]} of one Triton solution on the five
    workloads, in a subprocess with TRITON_INTERPRET=1 set before triton is imported."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, __file__, solution], capture_output=True, text=True, env=env,
                          timeout=280, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {int(k): v for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


@pytest.mark.slow
@pytest.mark.parametrize("solution", ["triton_staged", "triton_fused"])
def test_interpreted_triton_solutions_pass_the_definition_tolerance(solution):
    verdicts = _interpreted_verdicts(solution)
    assert sorted(verdicts) == [1, 3, 8, 16, 40]
    for t, (status, rel_l2, matched, reason) in verdicts.items():
        assert status == "PASSED", (t, reason)
        # measured 0.016-0.023 at seed 0 (fp8 re-quantised intermediate): well inside 0.08
        assert rel_l2 < 0.04 and matched >= 0.99, (t, rel_l2, matched)


if __name__ == "__main__":
    defn = definition()
    solution, function = load_solution(sys.argv[1])
    out = {}
    for work in workloads():
        axes = defn.resolve_axes(work.axes)
        inputs = make_inputs(defn, work, seed=workload_seed(0, work), device="cpu", root=ROOT)
        ref = compute_reference(defn, inputs)[0][0]
        result = check_outputs(defn, axes, [run_solution(defn, axes, solution, function, inputs)], [ref],
                               defn.tolerance)
        c = result.correctness
        out[work.axes["seq_len"]] = [result.status.value, c.relative_l2_error if c else None,
                                     c.matched_ratio if c else None, result.reason]
    print(json.dumps(out))
