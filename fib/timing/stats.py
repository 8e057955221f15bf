"""Statistics of a timed call's samples: median, IQR, min, mean and a seeded bootstrap CI of the median."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..schema.trace import TimingStats


def summarize(samples_ms, *, timer: str, warmup_runs: int = 0, l2_flush: bool = False,
              input_copies: int = 1, confidence: float = 0.95, n_resamples: int = 2000,
              seed: int = 0, ci: bool = True, **extra: Any) -> TimingStats:
    """Statistics of per-call times (ms): median, IQR (p75 - p25, linear interpolation), min,
    mean, and a percentile-bootstrap CI of the median (scipy, seeded: same samples, same CI).

    n == 1 gives a CI of zero width at the sample; n == 2 the range of the two; identical samples a
    zero-width CI. `extra` is stored on the TimingStats as additional fields.
    With ci=False the CI is left for `fill_ci` (marked `ci_pending`, the seed kept): a worker sends
    its samples on and the run's parent, idle meanwhile, pays for scipy (its import took 1.9 s in a
    worker on an H200 machine, inside the first workload's timing).
    """
    x = np.asarray(list(samples_ms), dtype=np.float64)
    if x.size == 0:
        raise ValueError("summarize needs at least one sample")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"samples must be finite, got {x[~np.isfinite(x)][:3].tolist()}")
    median = float(np.median(x))
    if ci:
        low, high = _median_ci(x, confidence, n_resamples, seed)
    else:
        low = high = median
        extra.update(ci_pending=True, ci_seed=seed, ci_confidence=confidence, ci_resamples=n_resamples)
    return TimingStats(
        timer=timer, samples_ms=x.tolist(), median_ms=median,
        iqr_ms=float(np.percentile(x, 75) - np.percentile(x, 25)),
        min_ms=float(x.min()), mean_ms=float(x.mean()),
        ci95_low_ms=min(low, median), ci95_high_ms=max(high, median),
        warmup_runs=warmup_runs, l2_flush=l2_flush, input_copies=input_copies, **extra)


def fill_ci(stats: TimingStats) -> TimingStats:
    """The CI `summarize(..., ci=False)` left out, computed as it would have been (same samples,
    seed, confidence and resamples); a TimingStats with a CI already is returned as it is."""
    extra = dict(stats.model_extra or {})
    if not extra.pop("ci_pending", False):
        return stats
    seed, confidence, resamples = extra.pop("ci_seed"), extra.pop("ci_confidence"), extra.pop("ci_resamples")
    x = np.asarray(stats.samples_ms, dtype=np.float64)
    low, high = _median_ci(x, confidence, resamples, seed)
    data = {k: v for k, v in stats.model_dump().items() if k not in ("ci_pending", "ci_seed", "ci_confidence",
                                                                    "ci_resamples")}
    data.update(ci95_low_ms=min(low, stats.median_ms), ci95_high_ms=max(high, stats.median_ms))
    return TimingStats.model_validate(data)


def warm_scipy_stats() -> None:
    """Import scipy.stats in a daemon thread (the run's parent does, while it waits on its children)."""
    import threading

    def load() -> None:
        try:
            import scipy.stats  # noqa: F401
        except Exception:  # fill_ci's own import reports it
            pass
    threading.Thread(target=load, name="fib-scipy-import", daemon=True).start()


def _median_ci(x: np.ndarray, confidence: float, n_resamples: int, seed: int) -> tuple[float, float]:
    if x.size < 3 or np.all(x == x[0]):
        return float(x.min()), float(x.max())
    from scipy import stats
    kwargs = dict(confidence_level=confidence, n_resamples=n_resamples, method="percentile",
                  vectorized=True, axis=-1)
    rng = np.random.default_rng(seed)
    try:
        res = stats.bootstrap((x,), np.median, rng=rng, **kwargs)
    except TypeError:  # scipy < 1.15 names the generator random_state
        res = stats.bootstrap((x,), np.median, random_state=rng, **kwargs)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)
