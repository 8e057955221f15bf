"""Correctness checks: the per-element rule (abs > atol AND rel > rtol fails), matched ratio, specials."""
from __future__ import annotations

import math

import torch

from fib.harness.check import check_outputs, compare, modified_inputs
from fib.schema import Definition, Status, Tolerance
from tinydata import DEFINITION

TOL = Tolerance(atol=0.1, rtol=0.2, required_matched_ratio=0.75)


def test_element_fails_only_when_both_errors_exceed():
    ref = torch.tensor([1.0, 100.0, 0.01, 5.0])
    out = torch.tensor([1.05, 110.0, 0.2, 8.0])  # abs ok | rel ok | both bad | both bad
    stats = compare(out, ref, TOL)
    assert stats["mismatched"] == 2 and stats["matched_ratio"] == 0.5
    assert math.isclose(stats["max_absolute_error"], 10.0)
    assert math.isclose(stats["max_relative_error"], 19.0, rel_tol=1e-5)


def test_nan_where_reference_is_finite_fails_and_matching_inf_passes():
    ref = torch.tensor([1.0, float("inf"), 2.0, 3.0])
    out = torch.tensor([1.0, float("inf"), float("nan"), 3.0])
    stats = compare(out, ref, TOL)
    assert stats["non_finite"] == 1 and stats["mismatched"] == 1 and stats["matched_ratio"] == 0.75
    assert math.isnan(stats["max_absolute_error"])


def test_check_outputs_statuses():
    d = Definition.model_validate(DEFINITION)
    axes = {"n": 2, "m": 4}
    ref = [torch.ones(2, 4)]
    assert check_outputs(d, axes, [torch.ones(2, 4)], ref, TOL).status == Status.PASSED
    assert check_outputs(d, axes, [torch.ones(2, 3)], ref, TOL).status == Status.INCORRECT_SHAPE
    assert check_outputs(d, axes, [torch.ones(2, 4, dtype=torch.float64)], ref, TOL).status == Status.INCORRECT_DTYPE
    off = torch.ones(2, 4)
    off[0, :3] = 9.0  # 3 of 8 wrong: ratio 0.625 < 0.75
    result = check_outputs(d, axes, [off], ref, TOL)
    assert result.status == Status.INCORRECT_NUMERICAL and result.correctness.matched_ratio == 0.625
    off[0, 2] = 1.0  # 2 of 8 wrong: 0.75 is enough
    assert check_outputs(d, axes, [off], ref, TOL).status == Status.PASSED


def test_modified_inputs_compares_bits():
    x = torch.tensor([1.0, float("nan")])
    assert modified_inputs({"x": x.clone(), "a": 2.0}, {"x": x, "a": 2.0}) == []
    y = x.clone()
    y[0] = -1.0
    assert modified_inputs({"x": x}, {"x": y}) == ["x"]
    fp8 = torch.zeros(4, dtype=torch.float8_e4m3fn)
    assert modified_inputs({"q": fp8.clone()}, {"q": fp8}) == []


# ---- scale-free metrics, bounds, vacuous tolerances ------------------------------------------
def _definition(**extra) -> Definition:
    return Definition.model_validate({**DEFINITION, **extra})


def test_relative_l2_and_cosine_values():
    ref = torch.tensor([3.0, 4.0, 0.0, 0.0])
    out = torch.tensor([3.0, 4.0, 0.0, 1.0])  # ||diff|| = 1, ||ref|| = 5
    stats = compare(out, ref, TOL)
    assert math.isclose(stats["relative_l2_error"], 0.2, rel_tol=1e-12)
    assert math.isclose(stats["cosine_similarity"], 25 / (5 * math.sqrt(26)), rel_tol=1e-12)
    scaled = compare(ref * 0.4, ref, TOL)  # a missing factor 2.5: cosine cannot see it, rel-L2 can
    assert math.isclose(scaled["relative_l2_error"], 0.6, rel_tol=1e-6) and math.isclose(scaled["cosine_similarity"], 1.0)
    assert compare(-ref, ref, TOL)["cosine_similarity"] == -1.0


def test_relative_l2_accumulates_in_float64_over_chunks(monkeypatch):
    import fib.harness.check as check
    monkeypatch.setattr(check, "_NORM_CHUNK", 3)  # several chunks, one partial
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(10, generator=g)
    out = ref + 1e-3 * torch.randn(10, generator=g)
    want = float((out.double() - ref.double()).norm() / ref.double().norm())
    assert math.isclose(compare(out, ref, TOL)["relative_l2_error"], want, rel_tol=1e-12)


def test_zero_reference_and_zero_output_conventions():
    zero = torch.zeros(4)
    assert compare(zero, zero, TOL)["relative_l2_error"] == 0.0
    assert compare(zero, zero, TOL)["cosine_similarity"] == 1.0
    one = torch.tensor([0.0, 0.0, 1.0, 0.0])
    assert compare(one, zero, TOL)["relative_l2_error"] == math.inf
    assert compare(one, zero, TOL)["cosine_similarity"] == 0.0
    assert compare(zero, one, TOL)["relative_l2_error"] == 1.0
    assert compare(zero, one, TOL)["cosine_similarity"] == 0.0


def test_nan_output_makes_both_metrics_nan_and_fails():
    d = _definition()
    ref = [torch.ones(2, 4)]
    out = torch.ones(2, 4)
    out[1, 1] = float("nan")
    loose = Tolerance(atol=10, rtol=10, required_matched_ratio=0.5, max_relative_l2=10, min_cosine_similarity=-1)
    result = check_outputs(d, {"n": 2, "m": 4}, [out], ref, loose)
    assert result.status == Status.INCORRECT_NUMERICAL
    c = result.correctness
    assert math.isnan(c.relative_l2_error) and math.isnan(c.cosine_similarity)
    assert "NaN/Inf" in result.reason and "relative L2 error nan" in result.reason
    # NaN must survive the trace's JSON
    from fib.schema import Correctness
    back = Correctness.model_validate_json(c.model_dump_json())
    assert math.isnan(back.relative_l2_error) and math.isnan(back.cosine_similarity)


def test_bounds_on_relative_l2_and_cosine_fail_with_a_reason():
    d = _definition()
    axes = {"n": 2, "m": 4}
    ref = [torch.ones(2, 4)]
    out = torch.full((2, 4), 0.9)  # every element within atol 0.1 / rtol 0.2; rel-L2 0.1
    per_element = Tolerance(atol=0.1, rtol=0.2, required_matched_ratio=1.0)
    passed = check_outputs(d, axes, [out], ref, per_element)
    assert passed.status == Status.PASSED
    assert math.isclose(passed.correctness.relative_l2_error, 0.1, rel_tol=1e-6)
    assert math.isclose(passed.correctness.cosine_similarity, 1.0)
    strict = per_element.model_copy(update={"max_relative_l2": 0.05, "name": "strict"})
    failed = check_outputs(d, axes, [out], ref, strict)
    assert failed.status == Status.INCORRECT_NUMERICAL
    assert "output 'y'" in failed.reason and "max_relative_l2 0.05" in failed.reason and "(strict)" in failed.reason
    assert failed.correctness.max_relative_l2 == 0.05 and failed.correctness.tolerance == "strict"
    tilted = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, -1.0]])  # cosine 0.75
    cos_bound = Tolerance(atol=5, rtol=5, required_matched_ratio=0.0, min_cosine_similarity=0.9)
    failed = check_outputs(d, axes, [tilted], ref, cos_bound)
    assert failed.status == Status.INCORRECT_NUMERICAL and "min_cosine_similarity 0.9" in failed.reason
    assert math.isclose(failed.correctness.cosine_similarity, 0.75)


def test_also_checked_records_name_and_scale_free_verdict():
    d = _definition()
    ref = [torch.ones(2, 4)]
    out = torch.full((2, 4), 0.9)
    main = Tolerance(atol=0.1, rtol=0.2, required_matched_ratio=1.0)
    also = [Tolerance(atol=1, rtol=0.3, required_matched_ratio=0.9, name="contest"),
            Tolerance(atol=0.1, rtol=0.2, required_matched_ratio=1.0, max_relative_l2=0.05, name="tight")]
    result = check_outputs(d, {"n": 2, "m": 4}, [out], ref, main, also)
    assert result.status == Status.PASSED  # the also-checks never change the verdict
    contest, tight = result.correctness.extra["also_checked"]
    assert contest["name"] == "contest" and contest["passed"] and contest["max_relative_l2"] is None
    assert tight["name"] == "tight" and not tight["passed"] and tight["max_relative_l2"] == 0.05
    assert math.isclose(tight["relative_l2_error"], 0.1, rel_tol=1e-6) and "max_relative_l2" in tight["reason"]


def _moe_like_reference(rows=64, cols=32, seed=0) -> torch.Tensor:
    """O(0.1-1) values as an MoE output: mean |x| ~0.3, a few larger."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g) * 0.35


def test_vacuous_outputs_flags_zeros_under_the_contest_tolerance():
    from fib.harness.check import vacuous_outputs
    d = _definition(outputs={"y": {"shape": ["n", "c"], "dtype": "bfloat16"}},
                    axes={**DEFINITION["axes"], "c": {"type": "const", "value": 32}})
    axes = {"n": 64, "m": 4, "c": 32}
    ref = [_moe_like_reference()]
    contest = Tolerance(atol=1, rtol=0.3, required_matched_ratio=0.9)
    assert vacuous_outputs(d, axes, ref, contest) == ["all zeros", "reference shifted by its std"]
    proper = Tolerance(atol=0.1, rtol=0.2, required_matched_ratio=0.99, max_relative_l2=0.08)
    assert vacuous_outputs(d, axes, ref, proper) == []
    # the per-element rule alone, tightened, is no longer vacuous either
    assert vacuous_outputs(d, axes, ref, Tolerance(atol=0.1, rtol=0.2, required_matched_ratio=0.99)) == []
    # a correct bf16 output passes the proper tolerance: the check is not just failing everything
    good = [ref[0].to(torch.bfloat16)]
    assert check_outputs(d, axes, good, ref, proper).status == Status.PASSED


def test_vacuous_outputs_ignores_a_candidate_equal_to_the_reference():
    from fib.harness.check import vacuous_outputs
    d = _definition()
    axes = {"n": 2, "m": 4}
    contest = Tolerance(atol=1, rtol=0.3, required_matched_ratio=0.9)
    assert vacuous_outputs(d, axes, [torch.zeros(2, 4)], contest) == []  # zeros is the right answer


def test_tolerance_presets_and_lookup():
    import pytest
    d = _definition(tolerance_presets={"contest": {"atol": 1, "rtol": 0.3, "required_matched_ratio": 0.9}})
    contest = d.tolerance_preset("contest")
    assert (contest.atol, contest.rtol, contest.required_matched_ratio, contest.name) == (1, 0.3, 0.9, "contest")
    with pytest.raises(ValueError, match="no tolerance preset 'strict'.*known: contest"):
        d.tolerance_preset("strict")
    with pytest.raises(ValueError, match="known: none"):
        _definition().tolerance_preset("contest")
    with pytest.raises(ValueError):
        Tolerance(min_cosine_similarity=1.5)
    with pytest.raises(ValueError):
        Tolerance(max_relative_l2=-0.1)
    assert Tolerance(required_matched_ratio=0.0).required_matched_ratio == 0.0


def test_run_config_overrides_keep_the_definitions_scale_free_bounds():
    from fib.schema.config import RunConfig
    d = _definition(tolerance={"atol": 0.1, "rtol": 0.2, "required_matched_ratio": 0.99,
                               "max_relative_l2": 0.08, "name": "fib"})
    assert RunConfig().tolerance(d) == d.tolerance
    over = RunConfig(atol=1.0, required_matched_ratio=0.9).tolerance(d)
    assert isinstance(over, Tolerance)
    assert (over.atol, over.rtol, over.required_matched_ratio, over.max_relative_l2) == (1.0, 0.2, 0.9, 0.08)
    assert over.name == "fib with command-line overrides"
    bare = RunConfig(rtol=0.5).tolerance(Definition.model_validate({**DEFINITION, "tolerance": None}))
    assert (bare.atol, bare.rtol, bare.required_matched_ratio, bare.max_relative_l2) == (1e-2, 0.5, 1.0, None)
    assert RunConfig(also_check=["0.1,0.2,0.85"]).also_tolerances(d) == [
        Tolerance(atol=0.1, rtol=0.2, required_matched_ratio=0.85, name="0.1,0.2,0.85")]