"""Correctness: shape, dtype, NaN/Inf, then per element (fails when abs error > atol AND relative
error > rtol), then the matched ratio against the required ratio."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .inputs import torch_dtype
from .schema import Correctness, Definition, Status


@dataclass
class Tolerances:
    atol: float
    rtol: float
    required_matched_ratio: float


@dataclass
class CheckResult:
    status: Status
    correctness: Correctness | None
    reason: str | None = None


def check_outputs(definition: Definition, axes: dict[str, int], outputs: list, references: list[torch.Tensor],
                  tol: Tolerances, also: list[Tolerances] = ()) -> CheckResult:
    """The verdict at `tol`; each of `also` (e.g. a stricter setting) is evaluated on the same
    outputs and recorded in `correctness.extra["also_checked"]` without changing the verdict."""
    if len(outputs) != len(definition.outputs):
        return CheckResult(Status.INCORRECT_SHAPE, None,
                           f"returned {len(outputs)} outputs, definition declares {len(definition.outputs)}")
    worst = Correctness(max_absolute_error=0.0, max_relative_error=0.0, matched_ratio=1.0,
                        atol=tol.atol, rtol=tol.rtol, required_matched_ratio=tol.required_matched_ratio)
    failures = []
    for (name, spec), out, ref in zip(definition.outputs.items(), outputs, references):
        if not isinstance(out, torch.Tensor):
            return CheckResult(Status.INCORRECT_SHAPE, None, f"output '{name}' is a {type(out).__name__}, not a tensor")
        expected_shape = definition.shape_of(spec, axes) or ()
        if tuple(out.shape) != tuple(expected_shape):
            return CheckResult(Status.INCORRECT_SHAPE, None,
                               f"output '{name}' has shape {tuple(out.shape)}, expected {tuple(expected_shape)}")
        if out.dtype != torch_dtype(spec.dtype):
            return CheckResult(Status.INCORRECT_DTYPE, None,
                               f"output '{name}' has dtype {out.dtype}, expected {spec.dtype}")
        stats = compare(out, ref.to(out.device), tol)
        worst.max_absolute_error = max(worst.max_absolute_error, stats["max_absolute_error"])
        worst.max_relative_error = max(worst.max_relative_error, stats["max_relative_error"])
        worst.matched_ratio = min(worst.matched_ratio, stats["matched_ratio"])
        worst.extra = worst.extra or {"outputs": {}, "also_checked": []}
        worst.extra["outputs"][name] = stats
        if stats["non_finite"]:
            failures.append(f"output '{name}' has {stats['non_finite']} NaN/Inf elements where the reference is finite")
        if stats["matched_ratio"] < tol.required_matched_ratio:
            failures.append(f"output '{name}': {stats['matched_ratio']:.4f} of elements within tolerance "
                            f"(atol {tol.atol}, rtol {tol.rtol}), {tol.required_matched_ratio} required")
    for other in also:
        ratio = min(compare(o, r.to(o.device), other)["matched_ratio"] for o, r in zip(outputs, references))
        worst.extra["also_checked"].append({"atol": other.atol, "rtol": other.rtol,
                                            "required_matched_ratio": other.required_matched_ratio,
                                            "matched_ratio": ratio, "passed": ratio >= other.required_matched_ratio
                                            and not any(st["non_finite"] for st in worst.extra["outputs"].values())})
    if failures:
        return CheckResult(Status.INCORRECT_NUMERICAL, worst, "; ".join(failures))
    return CheckResult(Status.PASSED, worst)


def compare(out: torch.Tensor, ref: torch.Tensor, tol: Tolerances) -> dict:
    """Error statistics of one output against its FP32 reference."""
    got = out.float()
    want = ref.float()
    numel = got.numel()
    if numel == 0:
        return {"max_absolute_error": 0.0, "max_relative_error": 0.0, "matched_ratio": 1.0,
                "non_finite": 0, "mismatched": 0, "numel": 0}
    ref_finite = torch.isfinite(want)
    # NaN/Inf that the reference does not have is an error; where both are the same Inf it is a match.
    same_special = (got == want) & ~ref_finite
    bad_special = ~torch.isfinite(got) & ref_finite
    abs_err = (got - want).abs()
    rel_err = abs_err / want.abs().clamp_min(torch.finfo(torch.float32).tiny)
    finite = torch.isfinite(abs_err)
    fails = ((abs_err > tol.atol) & (rel_err > tol.rtol)) | ~finite
    fails &= ~same_special
    mismatched = int(fails.sum())
    both_finite = finite & ref_finite
    max_abs = float(abs_err[both_finite].max()) if bool(both_finite.any()) else 0.0
    max_rel = float(rel_err[both_finite].max()) if bool(both_finite.any()) else 0.0
    if int(bad_special.sum()):
        max_abs = max_rel = float("nan")
    return {"max_absolute_error": max_abs, "max_relative_error": max_rel,
            "matched_ratio": 1.0 - mismatched / numel, "non_finite": int(bad_special.sum()),
            "mismatched": mismatched, "numel": numel}


_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bit pattern, so NaN equals NaN and -0.0 differs from 0.0."""
    if tensor.is_floating_point() or tensor.is_complex():
        return tensor.contiguous().view(_INT_OF_SIZE[tensor.element_size()])
    return tensor


def modified_inputs(before: dict, after: dict) -> list[str]:
    """Names of tensor inputs whose contents differ bit for bit (a solution wrote into its inputs)."""
    return [name for name, old in before.items()
            if isinstance(old, torch.Tensor) and not torch.equal(_bits(old), _bits(after[name]))]
