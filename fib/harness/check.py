"""Correctness: shape, dtype, NaN/Inf, then per element (fails when abs error > atol AND relative
error > rtol), then the matched ratio against the required ratio, then the scale-free bounds
(relative L2 error, cosine similarity) where the tolerance sets them.

`check_outputs` is fib's one correctness function: the harness, the tests and the benchmark
scripts judge a solution's outputs with it, under a `fib.schema.Tolerance`. `vacuous_outputs`
says which trivial outputs (all zeros, the reference shifted by its std) a tolerance would let
pass on given references.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from .inputs import to_host, torch_dtype
from ..schema import Correctness, Definition, Status, Tolerance

# Elements per chunk of the float64 norm accumulation (bounds the temporary memory).
_NORM_CHUNK = 1 << 24


@dataclass
class CheckResult:
    status: Status
    correctness: Correctness | None
    reason: str | None = None


def _worse_max(a: float, b: float) -> float:
    return float("nan") if math.isnan(a) or math.isnan(b) else max(a, b)


def _worse_min(a: float, b: float) -> float:
    return float("nan") if math.isnan(a) or math.isnan(b) else min(a, b)


def _bound_failures(name: str, stats: dict, tol: Tolerance) -> list[str]:
    """Why one output fails `tol` (empty: it passes). `stats` is what `compare` returned."""
    failures = []
    label = f" ({tol.name})" if tol.name else ""
    if stats["non_finite"]:
        failures.append(f"output '{name}' has {stats['non_finite']} NaN/Inf elements where the reference is finite")
    if stats["matched_ratio"] < tol.required_matched_ratio:
        failures.append(f"output '{name}': {stats['matched_ratio']:.4f} of elements within tolerance "
                        f"(atol {tol.atol:g}, rtol {tol.rtol:g}), {tol.required_matched_ratio:g} required{label}")
    rel_l2, cosine = stats["relative_l2_error"], stats["cosine_similarity"]
    if tol.max_relative_l2 is not None and not rel_l2 <= tol.max_relative_l2:  # NaN fails too
        failures.append(f"output '{name}': relative L2 error {rel_l2:.4g} above max_relative_l2 "
                        f"{tol.max_relative_l2:g}{label}")
    if tol.min_cosine_similarity is not None and not cosine >= tol.min_cosine_similarity:
        failures.append(f"output '{name}': cosine similarity {cosine:.6g} below min_cosine_similarity "
                        f"{tol.min_cosine_similarity:g}{label}")
    return failures


def check_outputs(definition: Definition, axes: dict[str, int], outputs: list, references: list[torch.Tensor],
                  tol: Tolerance, also: Sequence[Tolerance] = ()) -> CheckResult:
    """The verdict at `tol`; each of `also` (e.g. a stricter setting, or a named preset) is evaluated
    on the same outputs and recorded in `correctness.extra["also_checked"]` without changing the
    verdict. `correctness` carries the worst output's errors, matched ratio, relative L2 error and
    cosine similarity; `extra["outputs"]` each output's."""
    if len(outputs) != len(definition.outputs):
        return CheckResult(Status.INCORRECT_SHAPE, None,
                           f"returned {len(outputs)} outputs, definition declares {len(definition.outputs)}")
    worst = Correctness(max_absolute_error=0.0, max_relative_error=0.0, matched_ratio=1.0,
                        relative_l2_error=0.0, cosine_similarity=1.0,
                        atol=tol.atol, rtol=tol.rtol, required_matched_ratio=tol.required_matched_ratio,
                        max_relative_l2=tol.max_relative_l2, min_cosine_similarity=tol.min_cosine_similarity,
                        tolerance=tol.name, extra={"outputs": {}, "also_checked": []})
    failures = []
    pairs = []
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
        ref = ref.to(out.device)
        pairs.append((name, out, ref))
        stats = compare(out, ref, tol)
        worst.max_absolute_error = _worse_max(worst.max_absolute_error, stats["max_absolute_error"])
        worst.max_relative_error = _worse_max(worst.max_relative_error, stats["max_relative_error"])
        worst.matched_ratio = min(worst.matched_ratio, stats["matched_ratio"])
        worst.relative_l2_error = _worse_max(worst.relative_l2_error, stats["relative_l2_error"])
        worst.cosine_similarity = _worse_min(worst.cosine_similarity, stats["cosine_similarity"])
        worst.extra["outputs"][name] = stats
        failures += _bound_failures(name, stats, tol)
    for other in also:
        reasons, ratio = [], 1.0
        for name, out, ref in pairs:
            stats = {**worst.extra["outputs"][name], **_elementwise(out, ref, other)}
            ratio = min(ratio, stats["matched_ratio"])
            reasons += _bound_failures(name, stats, other)
        worst.extra["also_checked"].append({
            "name": other.name, "atol": other.atol, "rtol": other.rtol,
            "required_matched_ratio": other.required_matched_ratio,
            "max_relative_l2": other.max_relative_l2, "min_cosine_similarity": other.min_cosine_similarity,
            "matched_ratio": ratio, "relative_l2_error": worst.relative_l2_error,
            "cosine_similarity": worst.cosine_similarity, "passed": not reasons,
            "reason": "; ".join(reasons) or None})
    if failures:
        return CheckResult(Status.INCORRECT_NUMERICAL, worst, "; ".join(failures))
    return CheckResult(Status.PASSED, worst)


def _elementwise(out: torch.Tensor, ref: torch.Tensor, tol: Tolerance) -> dict:
    """The per-element rule: max errors over elements finite in both, the matched ratio, and how
    many elements are NaN/Inf where the reference is finite."""
    if out.numel() == 0:
        return _elementwise_stats([0.0, 0.0, 0.0, 0.0], 0)
    return _elementwise_stats(_elementwise_on_device(out, ref, tol).tolist(), out.numel())


def _elementwise_on_device(out: torch.Tensor, ref: torch.Tensor, tol: Tolerance) -> torch.Tensor:
    """[mismatched, max abs error, max rel error, non-finite] as float64 on the outputs' device (no sync).
    The maxima are over the elements finite in both (0 where there are none): the errors there are >= 0,
    so a max over the errors with the others set to 0 is the same number without a boolean index."""
    got = out.float()
    want = ref.float()
    ref_finite = torch.isfinite(want)
    # NaN/Inf that the reference does not have is an error; where both are the same Inf it is a match.
    same_special = (got == want) & ~ref_finite
    bad_special = ~torch.isfinite(got) & ref_finite
    abs_err = (got - want).abs()
    rel_err = abs_err / want.abs().clamp_min(torch.finfo(torch.float32).tiny)
    finite = torch.isfinite(abs_err)
    fails = ((abs_err > tol.atol) & (rel_err > tol.rtol)) | ~finite
    fails &= ~same_special
    both_finite = finite & ref_finite
    zero = torch.zeros((), dtype=abs_err.dtype, device=abs_err.device)
    return torch.stack([fails.sum().double(), torch.where(both_finite, abs_err, zero).max().double(),
                        torch.where(both_finite, rel_err, zero).max().double(), bad_special.sum().double()])


def _elementwise_stats(values: list[float], numel: int) -> dict:
    mismatched, max_abs, max_rel, non_finite = int(values[0]), float(values[1]), float(values[2]), int(values[3])
    if non_finite:
        max_abs = max_rel = float("nan")
    return {"max_absolute_error": max_abs, "max_relative_error": max_rel,
            "matched_ratio": 1.0 - mismatched / numel if numel else 1.0, "non_finite": non_finite,
            "mismatched": mismatched, "numel": numel}


def scale_free_errors(out: torch.Tensor, ref: torch.Tensor) -> dict:
    """relative_l2_error = ||out - ref||_2 / ||ref||_2 and cosine_similarity of the flattened
    tensors, accumulated in float64 over the elements where the reference is finite.

    ||ref|| = 0: relative L2 is 0 when out equals ref there, else inf. Cosine is 1 when both are
    zero vectors, 0 when exactly one is. An output with NaN/Inf where the reference is finite
    gives NaN for both (and fails any bound on them)."""
    return _scale_free_stats(_scale_free_on_device(out, ref).tolist())


def _scale_free_on_device(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """[bad, sum ref^2, sum out^2, sum diff^2, sum out*ref] as float64 on the outputs' device (no sync)."""
    got = out.detach().reshape(-1)
    want = ref.detach().to(got.device).reshape(-1)
    sums = torch.zeros(5, dtype=torch.float64, device=got.device)  # bad, ref^2, out^2, diff^2, out*ref
    for start in range(0, got.numel(), _NORM_CHUNK):
        g = got[start:start + _NORM_CHUNK].double()
        w = want[start:start + _NORM_CHUNK].double()
        keep = torch.isfinite(w)
        bad = (~torch.isfinite(g) & keep).sum().double()
        g = torch.where(keep, g, 0.0)
        w = torch.where(keep, w, 0.0)
        sums += torch.stack([bad, (w * w).sum(), (g * g).sum(), ((g - w) ** 2).sum(), (g * w).sum()])
    return sums


def _scale_free_stats(values: list[float]) -> dict:
    bad, ref_sq, out_sq, diff_sq, dot = values
    if bad:
        return {"relative_l2_error": float("nan"), "cosine_similarity": float("nan")}
    if ref_sq == 0.0:
        rel_l2 = 0.0 if diff_sq == 0.0 else float("inf")
    else:
        rel_l2 = math.sqrt(diff_sq / ref_sq)
    if ref_sq == 0.0 and out_sq == 0.0:
        cosine = 1.0
    elif ref_sq == 0.0 or out_sq == 0.0:
        cosine = 0.0
    else:
        cosine = max(-1.0, min(1.0, dot / math.sqrt(ref_sq * out_sq)))
    return {"relative_l2_error": rel_l2, "cosine_similarity": cosine}


def compare(out: torch.Tensor, ref: torch.Tensor, tol: Tolerance) -> dict:
    """Error statistics of one output against its FP32 reference: the per-element rule's
    (max_absolute_error, max_relative_error, matched_ratio, non_finite, mismatched, numel) and
    the scale-free relative_l2_error and cosine_similarity. One copy to the host for all of them (the
    verdict's ~9 synchronisations were most of a small output's comparison)."""
    if out.numel() == 0:
        return {**_elementwise(out, ref, tol), **scale_free_errors(out, ref)}
    values = torch.cat([_elementwise_on_device(out, ref, tol), _scale_free_on_device(out, ref)]).tolist()
    return {**_elementwise_stats(values[:4], out.numel()), **_scale_free_stats(values[4:])}


def vacuous_outputs(definition: Definition, axes: dict[str, int], references: list[torch.Tensor],
                    tol: Tolerance) -> list[str]:
    """The human-readable names of trivial outputs that would PASS `check_outputs` under `tol`:
    "all zeros" (zeros of each output's dtype) and "reference shifted by its std" (ref + ref.std(),
    cast to the output's dtype). A non-empty answer means the tolerance cannot tell these from a
    solution on these references. A candidate equal to the reference after the cast (zeros where
    the reference is all zeros, a constant reference's zero shift) is not counted: it is the right
    answer, and no tolerance could fail it."""
    specs = list(definition.outputs.values())
    candidates = {
        "all zeros": lambda ref, dtype: torch.zeros(ref.shape, dtype=dtype, device=ref.device),
        "reference shifted by its std": lambda ref, dtype: (
            ref.float() + (ref.float().std() if ref.numel() > 1 else 0.0)).to(dtype),
    }
    flagged = []
    for label, make in candidates.items():
        outputs = [make(ref, torch_dtype(spec.dtype)) for spec, ref in zip(specs, references)]
        if all(torch.equal(out.float(), ref.float()) for out, ref in zip(outputs, references)):
            continue
        if check_outputs(definition, axes, outputs, references, tol).status == Status.PASSED:
            flagged.append(label)
    return flagged


_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bit pattern, so NaN equals NaN and -0.0 differs from 0.0."""
    if tensor.is_floating_point() or tensor.is_complex():
        return tensor.contiguous().view(_INT_OF_SIZE[tensor.element_size()])
    return tensor


def modified_inputs(before: dict, after: dict) -> list[str]:
    """Names of tensor inputs whose contents differ bit for bit (a solution wrote into its inputs).
    One copy to the host per device for all of them (torch.equal would synchronise once per tensor)."""
    changed: set[str] = set()
    flags: dict[str, torch.Tensor] = {}
    for name, old in before.items():
        if not isinstance(old, torch.Tensor):
            continue
        new = after[name]
        if not isinstance(new, torch.Tensor) or new.shape != old.shape or new.dtype != old.dtype \
                or new.device != old.device:
            changed.add(name)
        elif old.numel():
            flags[name] = (_bits(old) != _bits(new)).any()
    changed.update(n for n, differs in to_host(flags).items() if differs)
    return [name for name in before if name in changed]
