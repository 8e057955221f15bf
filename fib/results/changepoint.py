"""Change points (steps) in a latency series ordered by run time.

Method: binary segmentation over the per-run medians. Within a segment, every split that leaves at
least `min_size` runs on each side is a candidate; a candidate counts only if the medians of the two
sides differ by at least `threshold` (relative) AND a Welch t-test on the log values of the two
sides gives p < `alpha`. The candidate with the smallest p (ties: the larger change) is kept, and
both halves are searched again. Medians make a single noisy run unable to move either side past the
threshold; the t-test keeps slow drifts and noise from being called steps. The price: a step is
reported only once `min_size` runs exist after it (compare catches it earlier, on the PR).

Each point is one run's median latency (of its raw samples), so run-to-run variation, not the
within-run spread, decides significance. A series is (definition, solution, workload, GPU): mixing
GPUs would make every hardware switch a step.
"""
from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import stats


@dataclass
class ChangePoint:
    index: int          # first index of the new level
    before: float       # median of the segment that ends at index
    after: float        # median of the segment that starts at index
    rel_change: float   # after / before - 1
    p_value: float


def _split_p(left: np.ndarray, right: np.ndarray) -> float:
    if np.ptp(left) == 0 and np.ptp(right) == 0:
        return 0.0 if left[0] != right[0] else 1.0
    with warnings.catch_warnings():  # a constant side makes scipy warn about precision; p stays usable
        warnings.simplefilter("ignore", RuntimeWarning)
        p = stats.ttest_ind(left, right, equal_var=False).pvalue
    return 1.0 if math.isnan(p) else float(p)


def _best_split(logs: np.ndarray, values: np.ndarray, lo: int, hi: int, min_size: int,
                threshold: float, alpha: float) -> Optional[tuple[int, float, float]]:
    best = None
    for k in range(lo + min_size, hi - min_size + 1):
        before, after = np.median(values[lo:k]), np.median(values[k:hi])
        rel = after / before - 1
        if abs(rel) < threshold:
            continue
        p = _split_p(logs[lo:k], logs[k:hi])
        if p < alpha and (best is None or (p, -abs(rel)) < (best[1], -abs(best[2]))):
            best = (k, p, rel)
    return best


def detect_changepoints(values: Sequence[float], min_size: int = 3, threshold: float = 0.05,
                        alpha: float = 0.01) -> list[ChangePoint]:
    """Steps in `values` (positive, e.g. per-run median latencies, oldest first)."""
    assert min_size >= 1
    x = np.asarray(values, dtype=float)
    if len(x) < 2 * min_size or np.any(x <= 0) or not np.all(np.isfinite(x)):
        return []
    logs = np.log(x)
    found: dict[int, float] = {}
    stack = [(0, len(x))]
    while stack:
        lo, hi = stack.pop()
        if hi - lo < 2 * min_size:
            continue
        best = _best_split(logs, x, lo, hi, min_size, threshold, alpha)
        if best is None:
            continue
        k, p, _ = best
        found[k] = p
        stack += [(lo, k), (k, hi)]
    bounds = [0] + sorted(found) + [len(x)]
    points = []
    for i, k in enumerate(bounds[1:-1], 1):
        before = float(statistics.median(x[bounds[i - 1]:k]))
        after = float(statistics.median(x[k:bounds[i + 1]]))
        points.append(ChangePoint(k, before, after, after / before - 1, found[k]))
    return points


@dataclass
class SeriesChangePoint:
    """A change point tied to the run (and commit) where the new level starts."""
    definition: str
    solution: str
    workload_uuid: str
    hardware: Optional[str]
    run_id: str
    commit: Optional[str]
    started: Optional[str]
    before_ms: float
    after_ms: float
    rel_change: float
    p_value: float


def series_changepoints(points: list, min_size: int = 3, threshold: float = 0.05,
                        alpha: float = 0.01) -> list[ChangePoint]:
    """Change points of one history series (SeriesPoint list); failed runs are left out."""
    passed = [p for p in points if p.median_ms is not None]
    found = detect_changepoints([p.median_ms for p in passed], min_size, threshold, alpha)
    # re-index onto the full series so callers can mark the right point
    return [ChangePoint(points.index(passed[c.index]), c.before, c.after, c.rel_change, c.p_value)
            for c in found]


def history_changepoints(db, branch: Optional[str] = None, min_size: int = 3,
                         threshold: float = 0.05, alpha: float = 0.01) -> list[SeriesChangePoint]:
    """Change points of every series in a HistoryDB (optionally one branch), oldest first."""
    from .history import load_series

    out = []
    for key, points in load_series(db, branch).items():
        definition, solution, workload_uuid, hardware = key
        for cp in series_changepoints(points, min_size, threshold, alpha):
            at = points[cp.index]
            out.append(SeriesChangePoint(definition, solution, workload_uuid, hardware, at.run_id,
                                         at.commit, at.started, cp.before, cp.after,
                                         cp.rel_change, cp.p_value))
    out.sort(key=lambda c: (c.started or "", c.definition, c.solution, c.workload_uuid))
    return out
