"""fib.timing.measure: statistics, warm-up, rotation and timer choice on CPU; the CUDA timers on a GPU."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from fib.errors import TimingError
from fib.timing.cupti import CALL_RANGE, attribute_by_markers, attribute_device_time
from fib.timing.flush import l2_flush_bytes
from fib.timing.measure import _warm_up, measure
from fib.timing.stats import summarize

HAS_CUDA = torch.cuda.is_available()


# ----------------------------------------------------------------------------- summarize

def test_summarize_exact_statistics():
    stats = summarize([4.0, 1.0, 3.0, 2.0, 5.0], timer="wall", warmup_runs=7, input_copies=3)
    assert stats.median_ms == 3.0
    assert stats.iqr_ms == 2.0  # p75 = 4, p25 = 2 (linear interpolation)
    assert stats.min_ms == 1.0
    assert stats.mean_ms == 3.0
    assert stats.samples_ms == [4.0, 1.0, 3.0, 2.0, 5.0]  # raw order kept
    assert (stats.timer, stats.warmup_runs, stats.input_copies) == ("wall", 7, 3)
    assert stats.ci95_low_ms <= 3.0 <= stats.ci95_high_ms


def test_summarize_ci_contains_median_and_narrows():
    rng = np.random.default_rng(1)
    small = summarize(rng.normal(10.0, 1.0, 20), timer="wall")
    large = summarize(rng.normal(10.0, 1.0, 2000), timer="wall")
    for s in (small, large):
        assert s.ci95_low_ms <= s.median_ms <= s.ci95_high_ms
    assert (large.ci95_high_ms - large.ci95_low_ms) < 0.5 * (small.ci95_high_ms - small.ci95_low_ms)
    assert 9.8 < large.median_ms < 10.2


def test_summarize_deterministic_with_seed():
    x = np.random.default_rng(2).exponential(1.0, 50)
    a, b = summarize(x, timer="wall", seed=3), summarize(x, timer="wall", seed=3)
    assert (a.ci95_low_ms, a.ci95_high_ms) == (b.ci95_low_ms, b.ci95_high_ms)


def test_summarize_small_and_constant_samples():
    one = summarize([2.5], timer="wall")
    assert (one.median_ms, one.iqr_ms, one.ci95_low_ms, one.ci95_high_ms) == (2.5, 0.0, 2.5, 2.5)
    two = summarize([1.0, 3.0], timer="wall")
    assert (two.median_ms, two.ci95_low_ms, two.ci95_high_ms) == (2.0, 1.0, 3.0)
    flat = summarize([0.7] * 40, timer="wall")
    assert (flat.median_ms, flat.iqr_ms, flat.ci95_low_ms, flat.ci95_high_ms) == (0.7, 0.0, 0.7, 0.7)
    with pytest.raises(ValueError):
        summarize([], timer="wall")


def test_summarize_extra_fields_round_trip():
    stats = summarize([1.0, 2.0, 3.0], timer="cupti", timer_note="probe ok", span_median_ms=2.5)
    dumped = stats.model_dump()
    assert dumped["timer_note"] == "probe ok" and dumped["span_median_ms"] == 2.5


# ----------------------------------------------------------------------------- measure (wall, CPU)

class FakeCall:
    """Records the copy index of every call; sleeps `sleep_ms(n)` on the n-th call."""

    def __init__(self, sleep_ms):
        self.sleep_ms, self.indices = sleep_ms, []

    def __call__(self, idx: int) -> None:
        self.indices.append(idx)
        time.sleep(self.sleep_ms(len(self.indices) - 1) / 1e3)


def test_measure_rotates_copies_and_counts_samples():
    call = FakeCall(lambda n: 0.2)
    stats = measure(call, n_copies=3, device="cpu", timer="wall", warmup_runs=4, iterations=5,
                    num_trials=2, min_warmup_ms=0, stable_rtol=float("inf"))
    assert stats.timer == "wall" and stats.l2_flush is False and stats.input_copies == 3
    assert len(stats.samples_ms) == 10
    assert stats.warmup_runs == 5  # 4 asked for, then the stability window of 5
    assert call.indices == [i % 3 for i in range(stats.warmup_runs + 10)]
    assert len(stats.trial_medians_ms) == 2


def test_measure_times_what_the_call_takes():
    stats = measure(FakeCall(lambda n: 2.0), n_copies=1, device="cpu", timer="wall", warmup_runs=2,
                    iterations=10, num_trials=1, min_warmup_ms=0, stable_rtol=float("inf"))
    assert 2.0 <= stats.median_ms < 4.0
    assert stats.min_ms >= 2.0


def _warm(times, **kw):
    """`_warm_up` fed a scripted sequence of per-call times (ms): deterministic, no sleeping; (runs, stable),
    after checking that the times it returns are the ones it ran."""
    it = iter(times)
    args = dict(warmup_runs=5, min_warmup_ms=0.0, max_warmup_runs=1000, max_warmup_ms=1e9,
                window=5, rtol=0.1) | kw
    done, stable, ran = _warm_up(lambda: next(it), **args)
    assert ran == list(times[:done])
    return done, stable


def test_warmup_stops_at_the_minimum_when_stable():
    assert _warm([1.0] * 100, warmup_runs=7) == (7, True)


def test_warmup_continues_until_stable():
    # the first 20 calls are slow and erratic (cold caches, a JIT): warm-up must run past them
    times = [3.0 + 2.0 * (n % 2) for n in range(20)] + [1.0] * 100
    assert _warm(times, warmup_runs=5, window=4) == (24, True)


def test_warmup_tolerates_one_outlier_per_window():
    # a host-bound call's event times: level, with a hiccup every fifth call; two per window are no level
    hiccups = [3.0 if n % 5 == 2 else 1.0 for n in range(100)]
    assert _warm(hiccups, warmup_runs=5) == (5, True)
    assert _warm(hiccups, warmup_runs=5, window=4) == (7, True)  # under 5 nothing is left out: a clean run of 4
    bimodal = [3.0 if n % 2 else 1.0 for n in range(100)]
    assert _warm(bimodal, warmup_runs=5, max_warmup_runs=40) == (40, False)


def test_warmup_cap_is_honoured():
    never_stable = [0.1 if n % 2 else 1.5 for n in range(100)]
    assert _warm(never_stable, warmup_runs=3, max_warmup_runs=12) == (12, False)
    assert _warm(never_stable, warmup_runs=30, max_warmup_runs=12) == (30, False)  # minimum first


def test_measure_reports_warmup_runs():
    stats = measure(FakeCall(lambda n: 0.1), n_copies=2, device="cpu", timer="wall",
                    warmup_runs=6, iterations=3, num_trials=1, min_warmup_ms=0,
                    stable_rtol=float("inf"))
    assert stats.warmup_runs == 6 and stats.warmup_stable is True


def test_auto_on_cpu_picks_wall():
    stats = measure(lambda i: None, n_copies=1, device="cpu", iterations=3, num_trials=1,
                    warmup_runs=1, min_warmup_ms=0)
    assert stats.timer == "wall" and "auto" in stats.timer_note


@pytest.mark.parametrize("timer", ["cupti", "cuda_graph", "cuda_event"])
def test_cuda_timer_on_cpu_is_a_clear_error(timer):
    with pytest.raises(TimingError, match="needs a CUDA device"):
        measure(lambda i: None, n_copies=1, device="cpu", timer=timer)


def test_unknown_timer_is_an_error():
    with pytest.raises(TimingError, match="unknown timer"):
        measure(lambda i: None, n_copies=1, device="cpu", timer="stopwatch")


def test_cpu_flushes_nothing():
    assert l2_flush_bytes("cpu") == 0


# ----------------------------------------------------------------------------- CUPTI attribution

def _host(name, start, end, corr, thread=1):
    return dict(name=name, gpu=False, start_ns=start, end_ns=end, correlation_id=corr,
                linked_id=0, thread=thread, annotation=name == CALL_RANGE)


def _dev(name, start, end, linked, annotation=False):
    return dict(name=name, gpu=True, start_ns=start, end_ns=end, correlation_id=0,
                linked_id=linked, thread=0, annotation=annotation)


def test_attribution_excludes_flush_and_annotations():
    records = [
        _host("aten::sum", 0, 10, corr=1),              # flush, outside any call
        _host(CALL_RANGE, 20, 100, corr=2),
        _host("aten::mm", 30, 60, corr=3),
        _host(CALL_RANGE, 120, 200, corr=4),             # a Triton launch: linked to the range
        dict(_host("cudaLaunchKernel", 40, 50, corr=1), activity="cuda_runtime"),  # CUPTI's ids
        _dev("reduce_kernel", 1000, 1400, linked=1),
        _dev("gemm", 1500, 1800, linked=3),
        _dev("epilogue", 1850, 1900, linked=3),
        _dev(CALL_RANGE, 1500, 1900, linked=2, annotation=True),
        _dev("triton_k", 2000, 2100, linked=4),
    ]
    kernel_ms, span_ms = attribute_device_time(records, 2)
    assert kernel_ms == [350 / 1e6, 100 / 1e6]
    assert span_ms == [400 / 1e6, 100 / 1e6]


def test_attribution_rejects_calls_without_device_work():
    records = [_host(CALL_RANGE, 0, 10, corr=1), _host(CALL_RANGE, 20, 30, corr=2),
               _dev("k", 100, 200, linked=1)]
    with pytest.raises(TimingError, match="no device work"):
        attribute_device_time(records, 2)
    with pytest.raises(TimingError, match="ranges for 3 calls"):
        attribute_device_time(records, 3)


# ----------------------------------------------------------------------------- GPU

def _matmul_call(n: int, copies: int):
    mats = [(torch.randn(n, n, device="cuda", dtype=torch.bfloat16),
             torch.randn(n, n, device="cuda", dtype=torch.bfloat16)) for _ in range(copies)]
    out = torch.empty(n, n, device="cuda", dtype=torch.bfloat16)
    return lambda i: torch.matmul(*mats[i], out=out)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("timer", ["cupti", "cuda_graph", "cuda_event", "wall"])
def test_cuda_timers_agree_on_a_large_matmul(timer):
    call = _matmul_call(4096, 2)
    stats = measure(call, n_copies=2, device="cuda", timer=timer, iterations=20, num_trials=2)
    assert stats.timer == timer and stats.l2_flush and len(stats.samples_ms) == 40
    ref = measure(call, n_copies=2, device="cuda", timer="cuda_event", iterations=20, num_trials=2)
    # a ~0.2 ms matmul: launch overhead is small against it, so every timer lands within 15%
    assert abs(stats.median_ms - ref.median_ms) < 0.15 * ref.median_ms


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_auto_on_cuda_picks_cupti_or_says_why():
    stats = measure(_matmul_call(1024, 2), n_copies=2, device="cuda", iterations=10, num_trials=1)
    assert stats.timer in ("cupti", "cuda_event") and stats.timer_note.startswith("auto")
    assert l2_flush_bytes("cuda") >= 2 * 1024 * 1024


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_cupti_excludes_launch_gaps():
    # 20 tiny kernels per call: events see the launch gaps, CUPTI only the kernels
    x = torch.ones(1024, device="cuda")

    def call(i):
        for _ in range(20):
            x.add_(1.0)
    cupti = measure(call, n_copies=1, device="cuda", timer="cupti", iterations=20, num_trials=1)
    event = measure(call, n_copies=1, device="cuda", timer="cuda_event", iterations=20, num_trials=1)
    assert cupti.median_ms < event.median_ms
    assert cupti.span_median_ms >= cupti.median_ms


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_cuda_graph_rejects_a_syncing_call():
    x = torch.ones(16, device="cuda")
    with pytest.raises(TimingError, match="CUDA graph"):
        measure(lambda i: x.sum().item(), n_copies=1, device="cuda", timer="cuda_graph",
                iterations=2, num_trials=1)


def test_attribution_through_the_driver_launch_correlation():
    """Triton launches through cuLaunchKernel outside any aten op: the kernel shares the CUPTI
    correlation id of its driver call, which lies inside the call's range."""
    launch = lambda start, corr: dict(_host("cuLaunchKernel", start, start + 5, corr=corr),  # noqa: E731
                                      activity="cuda_driver")
    kernel = lambda start, end, corr: dict(_dev("_gemm1_kernel", start, end, linked=0),  # noqa: E731
                                           correlation_id=corr)
    records = [_host(CALL_RANGE, 0, 100, corr=900), launch(10, 51), launch(20, 52),
               _host(CALL_RANGE, 200, 300, corr=901), launch(210, 53),
               launch(400, 54),  # after the calls: the L2 flush, not counted
               kernel(1000, 1300, 51), kernel(1300, 1350, 52), kernel(2000, 2200, 53), kernel(3000, 3900, 54)]
    kernel_ms, span_ms = attribute_device_time(records, 2)
    assert kernel_ms == [350 / 1e6, 200 / 1e6]
    assert span_ms == [350 / 1e6, 200 / 1e6]


def test_attribution_splits_the_timeline_at_flushes_when_launches_are_unseen():
    """No host record for the solution's launches: the flush kernels (seen through their aten op)
    mark where each call's device work begins and ends."""
    from fib.timing.flush import FLUSH_RANGE
    records = [
        _host(FLUSH_RANGE, 0, 10, corr=1), _host("aten::sum", 1, 5, corr=2), _host("aten::zero_", 6, 9, corr=3),
        _host(CALL_RANGE, 10, 50, corr=4),
        _host(FLUSH_RANGE, 60, 70, corr=5), _host("aten::sum", 61, 65, corr=6), _host("aten::zero_", 66, 69, corr=7),
        _host(CALL_RANGE, 70, 90, corr=8),
        _dev("reduce", 100, 200, linked=2), _dev("fill", 200, 210, linked=3),
        dict(_dev("_gemm1_kernel", 220, 320, linked=0), correlation_id=77),
        dict(_dev("_gemm2_kernel", 330, 380, linked=0), correlation_id=78),
        _dev("reduce", 400, 500, linked=6), _dev("fill", 500, 505, linked=7),
        dict(_dev("_gemm1_kernel", 510, 600, linked=0), correlation_id=79),
    ]
    kernel_ms, span_ms = attribute_device_time(records, 2)
    assert kernel_ms == [150 / 1e6, 90 / 1e6]
    assert span_ms == [160 / 1e6, 90 / 1e6]


def _marked(calls, flush=("reduce", 30), gap=5, marker="at::cuda::(anonymous namespace)::spin_kernel(long)"):
    """A device-only session's events: marker, flush, marker, the call's kernels, ..., a last marker.
    `calls` lists each call's kernels as (name, duration ns)."""
    out, t = [], 0
    for kernels in calls:
        for name, dur in ((marker, 2), flush, (marker, 2), *kernels):
            out.append((name, t, t + dur))
            t += dur + gap
    out.append((marker, t, t + 2))
    return out


def test_marker_attribution_sums_each_calls_kernels_and_excludes_flush_and_markers():
    records = _marked([[("gemm1", 100), ("gemm2", 50)], [("gemm1", 90)], [("memcpy HtoD", 7), ("k", 3)]])
    kernel_ms, span_ms = attribute_by_markers(list(reversed(records)), 3)  # order does not matter
    assert kernel_ms == [150 / 1e6, 90 / 1e6, 10 / 1e6]
    assert span_ms == [155 / 1e6, 90 / 1e6, 15 / 1e6]  # the gap between a call's kernels counts in its span


def test_marker_attribution_refuses_what_it_cannot_trust():
    good = _marked([[("gemm", 100)], [("gemm", 100)]])
    with pytest.raises(TimingError, match="marker kernels"):  # the solution launched the marker too
        attribute_by_markers(_marked([[("gemm", 100), ("spin_kernel", 2)], [("gemm", 100)]]), 2)
    with pytest.raises(TimingError, match="marker kernels"):
        attribute_by_markers(good, 3)
    with pytest.raises(TimingError, match="no device work"):
        attribute_by_markers(_marked([[("gemm", 100)], []]), 2)
    late = good + [("side_stream", good[-1][1] - 1, good[-1][1] + 50)]  # outlives the last call's window
    with pytest.raises(TimingError, match="overlap"):
        attribute_by_markers(late, 2)
    with pytest.raises(TimingError, match="outside the markers"):
        attribute_by_markers([("early", -100, -90)] + good, 2)
    with pytest.raises(TimingError, match="no device events"):
        attribute_by_markers([], 2)


def test_marker_attribution_agrees_with_correlation_on_the_same_timeline():
    """The two sessions' attributions of one laid-out timeline give the same kernel sums."""
    calls = [[("gemm1", 120), ("act", 8), ("gemm2", 60)], [("gemm1", 110), ("act", 9), ("gemm2", 61)]]
    marked = _marked(calls)
    records, corr = [], 10
    host_t = 0
    k = 0
    for name, start, end in marked:
        if "spin_kernel" in name or name == "reduce":
            continue
        call = 0 if k < len(calls[0]) else 1
        k += 1
        records.append(_host(f"launch_{name}", 10 + 1000 * call + k, 11 + 1000 * call + k, corr=corr))
        records.append(_dev(name, start, end, linked=corr))
        corr += 1
    records += [_host(CALL_RANGE, 0, 900, corr=1), _host(CALL_RANGE, 1000, 1900, corr=2)]
    del host_t
    assert attribute_device_time(records, 2)[0] == attribute_by_markers(marked, 2)[0]


def test_input_copies_scale_with_device_memory():
    from fib.harness.evaluate import input_copies_for
    ds = 1_430_000_000  # the DeepSeek inputs: 1.4 GB, mostly expert weights
    assert input_copies_for(ds, 141 * 2**30) == 4    # H200: 14 GB budget
    assert input_copies_for(ds, 80 * 2**30) == 4     # H100: 8 GB
    assert input_copies_for(ds, 16 * 2**30) == 1     # small GPU: the 2 GiB floor, one set
    assert input_copies_for(10 * 2**20, None) == 4   # CPU, small inputs
    assert input_copies_for(200 * 2**20, None) == 1  # CPU, 256 MiB budget


def test_attribution_counts_kernels_whose_launch_the_profiler_never_saw():
    """DeepGEMM's masked GEMMs on an H200 (2026-12-02): Kineto recorded the kernels but not their
    launches, so correlation found only the routing kernels (1.5 us of a ~80 us call). Such kernels
    must not vanish from the sum: the timeline is split at the flushes, or the timer refuses."""
    from fib.timing.flush import FLUSH_RANGE
    records = [
        _host(FLUSH_RANGE, 0, 10, corr=1), _host("aten::sum", 1, 5, corr=2),
        _host(CALL_RANGE, 10, 50, corr=4), _host("aten::index", 12, 14, corr=5),
        _host(FLUSH_RANGE, 60, 70, corr=6), _host("aten::sum", 61, 65, corr=7),
        _host(CALL_RANGE, 70, 90, corr=8), _host("aten::index", 72, 74, corr=9),
        _dev("reduce", 100, 200, linked=2),
        _dev("routing", 210, 212, linked=5),
        dict(_dev("sm90_fp8_gemm_masked", 215, 300, linked=0), correlation_id=1001),   # launch unseen
        _dev("reduce", 400, 500, linked=7),
        _dev("routing", 510, 512, linked=9),
        dict(_dev("sm90_fp8_gemm_masked", 515, 600, linked=0), correlation_id=1002),
    ]
    kernel_ms, _ = attribute_device_time(records, 2)
    assert kernel_ms == [87 / 1e6, 87 / 1e6]  # not 2 ns each: the GEMMs are counted
    no_flushes = [r for r in records if r["name"] not in (FLUSH_RANGE, "aten::sum", "reduce")]
    with pytest.raises(TimingError, match="could not be attributed"):
        attribute_device_time(no_flushes, 2)


def test_cpu_time_budget_cuts_iterations_and_says_so():
    import time as _time

    def slow(_i):
        _time.sleep(0.01)
    stats = measure(slow, n_copies=1, device="cpu", warmup_runs=1, iterations=50, num_trials=3,
                    min_warmup_ms=0, cpu_budget_s=0.3)
    assert len(stats.samples_ms) < 150 and len(stats.samples_ms) % 3 == 0 and len(stats.samples_ms) >= 3
    assert "CPU time budget" in stats.timer_note
    full = measure(lambda _i: None, n_copies=1, device="cpu", warmup_runs=1, iterations=5, num_trials=2,
                   cpu_budget_s=10)
    assert len(full.samples_ms) == 10 and "budget" not in full.timer_note


def _fake_cuda_measure(monkeypatch, kernel_ms: float, span_ms: float, timer: str):
    """Run measure's CUDA path on the CPU with the device timers faked: cupti reports `kernel_ms` per
    call over a device span of `span_ms`, CUDA events 0.5 ms."""
    from fib.timing import measure as m
    monkeypatch.setattr(m, "cupti_available", lambda dev: (True, "fake probe"))
    monkeypatch.setattr(m, "cupti_times", lambda rot, flush, n, info=None: ([kernel_ms] * n, [span_ms] * n))
    monkeypatch.setattr(m, "event_times", lambda run, flush, n: [0.5] * n)
    return m._measure_cuda(lambda idx: None, torch.device("cpu"), timer, 1, 2, 5, 2, False,
                           (0.0, 10, 1000.0, 3, 0.5), 0)


def test_auto_does_not_report_a_cupti_sum_that_misses_kernels(monkeypatch):
    # DeepGEMM's worker on an H200: CUPTI saw 1.5 us of kernels in a call whose device span was 79 us
    stats = _fake_cuda_measure(monkeypatch, 0.0015, 0.079, "auto")
    assert stats.timer == "cuda_event" and stats.median_ms == pytest.approx(0.5)
    assert "launches are missing" in stats.timer_note
    plausible = _fake_cuda_measure(monkeypatch, 0.07, 0.079, "auto")
    assert plausible.timer == "cupti" and plausible.median_ms == pytest.approx(0.07)


def test_a_mostly_idle_gpu_gets_its_back_to_back_time_too(monkeypatch):
    # the DeepSeek hybrid's cuBLASLt path on an H200: 1.66 ms of kernels in a 9.67 ms device span
    # (one host sync and a host loop over the experts between them)
    stats = _fake_cuda_measure(monkeypatch, 0.3, 0.9, "auto")
    assert stats.timer == "cupti" and stats.median_ms == pytest.approx(0.3)  # the latency stays the kernel sum
    extra = stats.model_extra
    assert extra["event_median_ms"] == pytest.approx(0.5) and extra["gpu_idle_share"] == pytest.approx(2 / 3)
    assert "GPU idles 67%" in stats.timer_note and "back to back 0.5 ms" in stats.timer_note
    # the figure is the warm-up's own (its settled half, at least the stable window), not 50 calls more
    assert extra["event_calls"] >= 3 and f"last {extra['event_calls']} warm-up calls" in stats.timer_note
    busy = _fake_cuda_measure(monkeypatch, 0.6, 0.9, "auto")  # kernels cover two thirds: nothing more to say
    assert "event_median_ms" not in busy.model_extra and "idles" not in busy.timer_note


def test_the_summary_lists_the_calls_whose_gpu_mostly_idles():
    from rich.console import Console
    from fib.progress import print_summary
    rows = [{"definition": "d", "solution": s, "workload": "w", "axes": {"n": 3}, "status": "PASSED", "reason": None,
             "latency_ms": 0.3, "ci95_ms": [0.29, 0.31], "speedup_vs_reference": 2.0, "max_abs_error": 0.0,
             "max_rel_error": 0.0, "matched_ratio": 1.0, "relative_l2": 0.0, "event_ms": ev, "gpu_idle_share": idle}
            for s, ev, idle in (("syncs", 1.25, 0.7), ("busy", None, None))]
    console = Console(record=True, width=200)
    print_summary(console, rows)
    text = console.export_text()
    assert "GPU idles most of these calls" in text
    assert "syncs n=3: kernels 0.3000 ms, back to back 1.2500 ms (GPU idle 70% of the span)" in text
    assert "busy n=3: kernels" not in text


def test_explicit_cupti_keeps_its_number_but_warns(monkeypatch):
    stats = _fake_cuda_measure(monkeypatch, 0.0015, 0.079, "cupti")
    assert stats.timer == "cupti" and stats.median_ms == pytest.approx(0.0015)
    assert "WARNING" in stats.timer_note and "cuda_event" in stats.timer_note


def test_ci_left_to_the_parent_is_the_ci_summarize_computes():
    from fib.timing.stats import fill_ci
    x = np.random.default_rng(3).lognormal(0.0, 0.2, 150)
    full = summarize(x, timer="wall", seed=7, span_median_ms=1.0)
    pending = summarize(x, timer="wall", seed=7, span_median_ms=1.0, ci=False)
    assert pending.model_extra["ci_pending"] and pending.ci95_low_ms == pending.ci95_high_ms == pending.median_ms
    filled = fill_ci(pending)
    assert filled.model_dump() == full.model_dump()  # no marker left behind, the same CI
    assert filled.ci95_low_ms < filled.median_ms < filled.ci95_high_ms
    assert fill_ci(full) is full


def test_direct_cupti_reads_the_fields_it_times():
    """The direct session's record reader on records laid out as cupti_activity.h lays them out."""
    import ctypes
    from fib.timing import cupti_direct as cd
    name = ctypes.create_string_buffer(b"_gemm1_swiglu_tma_kernel")
    buf = (ctypes.c_uint8 * 256)()
    base = ctypes.addressof(buf)

    def put(offset, ctype, value):
        ctype.from_address(base + offset).value = value
    put(0, ctypes.c_uint32, cd.KIND_CONCURRENT_KERNEL)
    put(cd.KERNEL_START, ctypes.c_uint64, 1_000_000_123)
    put(cd.KERNEL_END, ctypes.c_uint64, 1_000_050_456)
    put(cd.KERNEL_NAME, ctypes.c_void_p, ctypes.addressof(name))
    names: dict = {}
    assert cd.read_record(base, names) == ("_gemm1_swiglu_tma_kernel", 1_000_000_123, 1_000_050_456)
    assert list(names.values()) == ["_gemm1_swiglu_tma_kernel"]  # cached by the string's address
    put(0, ctypes.c_uint32, cd.KIND_MEMSET)
    assert cd.read_record(base) == ("memset", 1_000_000_123, 1_000_050_456)
    put(0, ctypes.c_uint32, 5)  # a runtime API record: not timed
    assert cd.read_record(base) is None


def test_direct_cupti_refuses_timestamps_that_cannot_be_nanoseconds():
    """Records spanning longer than their session lasted on the host clock (another unit: seen after a
    Kineto session in the same process, a 40 us call reading 84 us) or ending before they start are refused,
    so the timer falls back to Kineto's session instead of reporting them."""
    from fib.timing import cupti_direct as cd
    calls = [("k", 1_000 + 300_000 * i, 41_000 + 300_000 * i) for i in range(100)]  # 100 calls, 30 ms
    cd.check_timestamps(calls, host_ns=31_000_000)  # fits the host's 31 ms
    cd.check_timestamps([], host_ns=0)
    stretched = [(n, 2.1 * s, 2.1 * e) for n, s, e in calls]
    with pytest.raises(TimingError, match="not nanoseconds"):
        cd.check_timestamps(stretched, host_ns=31_000_000)
    with pytest.raises(TimingError, match="ends before it starts"):
        cd.check_timestamps([("k", 10, 5)], host_ns=1_000_000)


def test_direct_cupti_without_a_library_is_a_clear_error(monkeypatch, tmp_path):
    from fib.timing import cupti_direct as cd
    missing = tmp_path / "libcupti.so.13"
    monkeypatch.setenv(cd.LIB_ENV, str(missing))
    assert cd.find_libcupti() == str(missing)
    with pytest.raises(TimingError, match="cannot load .*libcupti.so.13"):
        cd.KernelSession()


@pytest.mark.parametrize("mode, tried, session", [
    ("", ["direct", "device"], "device (direct session unusable: layout)"),
    ("kineto", ["device"], "device"),
    ("full", [], "full (FIB_CUPTI_SESSION=full)"),
])
def test_cupti_sessions_are_tried_in_order(monkeypatch, mode, tried, session):
    """direct, then Kineto's device-only session, then the full one; FIB_CUPTI_SESSION skips the first
    one (kineto) or two (full); the session used and why the others were not are in `info`."""
    import torch
    from fib.timing import cupti as c
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setenv(c.SESSION_ENV, mode)
    seen = []

    def direct(rot, flush, n, steps):
        seen.append("direct")
        raise TimingError("layout")

    def device(rot, flush, n, steps):
        seen.append("device")
        return "prof"
    monkeypatch.setattr(c, "_profile_direct", direct)
    monkeypatch.setattr(c, "_profile_device_only", device)
    monkeypatch.setattr(c, "_device_records", lambda prof: _marked([[("gemm", 100)], [("gemm", 80)]]))
    monkeypatch.setattr(c, "_profile_calls", lambda rot, flush, n, steps: "full")
    monkeypatch.setattr(c, "_kineto_records", lambda prof: [])
    monkeypatch.setattr(c, "attribute_device_time", lambda records, n: ([0.5] * n, [0.5] * n))
    info: dict = {}
    kernel_ms, _ = c.cupti_times(lambda: None, lambda: None, 2, info)
    assert seen == tried and info["session"] == session
    assert info["fallbacks"] == (["direct session unusable: layout"] if mode == "" else [])
    assert kernel_ms == ([100 / 1e6, 80 / 1e6] if tried else [0.5, 0.5])
