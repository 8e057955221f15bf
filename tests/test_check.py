"""Correctness checks: the per-element rule (abs > atol AND rel > rtol fails), matched ratio, specials."""
from __future__ import annotations

import math

import torch

from fib.check import check_outputs, compare, modified_inputs
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
