"""Change points: steps are found and tied to their commit; noise and single outliers raise nothing."""
from __future__ import annotations

import numpy as np
import pytest

from fib.results.changepoint import detect_changepoints, history_changepoints
from fib.results.history import HistoryDB, load_run_dir
from test_history import commit_sha, make_run_dir, make_trace, samples


def _noisy(rng, level: float, n: int, noise: float = 0.01) -> list[float]:
    return list(level * (1 + noise * rng.standard_normal(n)))


def test_a_step_is_found_where_it_happens():
    rng = np.random.default_rng(0)
    values = _noisy(rng, 1.0, 8) + _noisy(rng, 1.2, 5)
    (cp,) = detect_changepoints(values)
    assert cp.index == 8
    assert cp.rel_change == pytest.approx(0.2, abs=0.02)
    assert cp.before == pytest.approx(1.0, abs=0.01) and cp.p_value < 1e-6


def test_noise_and_single_outliers_raise_no_alarm():
    rng = np.random.default_rng(1)
    assert detect_changepoints(_noisy(rng, 1.0, 30)) == []
    spiky = _noisy(rng, 1.0, 12)
    spiky[5] = 1.6  # one noisy run
    spiky[9] = 0.5
    assert detect_changepoints(spiky) == []
    # a 3% step is below the 5% threshold
    assert detect_changepoints(_noisy(rng, 1.0, 8, 0.002) + _noisy(rng, 1.03, 8, 0.002)) == []
    assert detect_changepoints(_noisy(rng, 1.0, 8, 0.002) + _noisy(rng, 1.03, 8, 0.002), threshold=0.02) != []


def test_min_size_and_short_series():
    assert detect_changepoints([1.0, 1.0, 2.0, 2.0, 2.0]) == []  # fewer than 2 * min_size
    assert [c.index for c in detect_changepoints([1.0, 1.0, 1.0, 2.0, 2.0, 2.0])] == [3]
    # a step in the last two runs is not a step yet (min_size 3)
    assert detect_changepoints([1.0] * 6 + [2.0, 2.0]) == []
    assert [c.index for c in detect_changepoints([1.0] * 6 + [2.0, 2.0], min_size=2)] == [6]


def test_two_steps():
    rng = np.random.default_rng(2)
    values = _noisy(rng, 1.0, 6) + _noisy(rng, 1.3, 6) + _noisy(rng, 0.9, 6)
    cps = detect_changepoints(values)
    assert [c.index for c in cps] == [6, 12]
    assert cps[0].rel_change == pytest.approx(0.3, abs=0.03)
    assert cps[1].rel_change == pytest.approx(0.9 / 1.3 - 1, abs=0.03)


def test_history_changepoints_tie_the_step_to_its_commit(tmp_path):
    rng = np.random.default_rng(3)
    with HistoryDB(tmp_path / "h.db") as db:
        for i in range(10):
            level = 1.0 if i < 6 else 1.25
            traces = [make_trace("moe", "triton", "w1", samples_ms=samples(rng, level, n=20)),
                      make_trace("moe", "triton", "w2", samples_ms=samples(rng, 2.0, n=20))]
            if i == 3:  # a failed run inside the series is skipped, not a step
                traces[0] = make_trace("moe", "triton", "w1", status="RUNTIME_ERROR")
            d = make_run_dir(tmp_path / f"r{i}", commit_sha(i), traces, started=f"2025-01-{i + 1:02d}T00:00:00Z")
            db.add_run(load_run_dir(d)[0])
        (cp,) = history_changepoints(db)
    assert (cp.solution, cp.workload_uuid) == ("triton", "w1")
    assert cp.commit == commit_sha(6) and cp.started == "2025-01-07T00:00:00Z"
    assert cp.rel_change == pytest.approx(0.25, abs=0.02)
