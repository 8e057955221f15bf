"""Time one solution call, honestly: warm up, flush L2, rotate inputs, report median and its CI.

`measure(call, n_copies=..., device=...)` runs `call(idx)` (idx cycles 0, 1, ..., n_copies-1, so
consecutive calls never see the same input buffers) until warm, then `iterations * num_trials`
timed times, and returns `summarize(samples)`: a `TimingStats` with the raw samples, median, IQR,
min, mean and a seeded bootstrap 95% CI of the median.

What each timer measures (the fidelity report explains gaps between them with this):

- ``cupti``: the sum of the device durations of the kernels (and memcpy/memset) the call launched,
  from CUPTI through torch.profiler/Kineto. Each timed call runs inside
  ``record_function("fib.timed_call")``; device work is attributed to a call through its launch's
  correlation id, so the L2 flush (launched outside the range) is excluded. Pure kernel time: no
  launch overhead, no gaps between the call's kernels, no host work. Overlapping kernels (several
  streams) are counted twice. Extra `span_median_ms`: median first-kernel-start to
  last-kernel-end per call (kernel time plus the gaps between the call's kernels).
- ``cuda_graph``: each input copy's call captured once into a CUDA graph, replays timed with CUDA
  events. Includes the graph launch (a few µs) and device-side gaps, but not Python/launch gaps
  between the call's kernels. Fails for calls that synchronise, allocate outside the graph pool,
  or branch on device data on the host; then `measure` raises `TimingError`.
- ``cuda_event``: CUDA events recorded right before and after the call (after the flush). Includes
  any time the GPU waits for the host to launch the call's kernels, so for calls of a few
  microseconds it measures launch overhead (Python, dispatcher, driver) as much as the kernels.
- ``wall``: `time.perf_counter_ns` around the call, with device synchronisation before and after.
  Everything: host work, launches, kernels, the synchronisation itself. The only timer on CPU.

``auto``: CPU -> wall. CUDA -> cupti when a Kineto probe run sees kernel events, every timed
call had device work attributed to it and the kernels it saw cover at least SPARSE_SPAN_WARNING
of the call's device span (else launches are missing from the profile), else cuda_event. The timer that ran is `stats.timer`, why
is `stats.timer_note` (cuda_graph is never chosen automatically: results from different timers
should not be ranked together, and capture can fail in ways that leave the context unusable).

L2 flush: before every call (warm-up and timed), outside the timed region, a read of a buffer of
twice the L2 size. A read and not a fill (`zero_()`): a fill leaves the L2 full of dirty lines,
whose write-back would then be charged to the next timed call; a read leaves clean lines.

Warm-up: at least `warmup_runs` calls and `min_warmup_ms`, then on until the last
`stable_window` warm-up times (less their highest and lowest, for a window of 5 or more) lie within
`stable_rtol` of their median, or `max_warmup_runs` /
`max_warmup_ms` is reached (`stats.warmup_stable` says which).
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from ..errors import TimingError
from .cupti import cupti_available, cupti_times
from .flush import flusher, make_flush_buffer
from .rotation import Rotation
from ..schema.trace import TimingStats
from .stats import summarize

# The timer registry: `RunConfig.timer` takes its choices from here (tests/test_harness_layers.py checks).
TIMERS = ("auto", "cupti", "cuda_graph", "cuda_event", "wall")
CUDA_TIMERS = ("cupti", "cuda_graph", "cuda_event")
SPARSE_SPAN_WARNING = 0.02  # kernel sum / device span below this: say that kernels may be missing
IDLE_SPAN_SHARE = 0.5  # kernel sum / device span below this: the GPU mostly waits; time the call with events too


def measure(call: Callable[[int], None], *, n_copies: int, device, timer: str = "auto",
            warmup_runs: int = 10, iterations: int = 50, num_trials: int = 3,
            flush_l2: bool = True, min_warmup_ms: float = 25.0, max_warmup_runs: int = 1000,
            max_warmup_ms: float = 2000.0, stable_window: int = 5, stable_rtol: float = 0.1,
            seed: int = 0, cpu_budget_s: float | None = None, ci: bool = True) -> TimingStats:
    """Warm `call` up, then time `iterations * num_trials` calls with `timer`; see the module doc.

    `call(idx)` runs the solution once on input copy `idx` (0 <= idx < n_copies, rotating).
    Raises TimingError when the timer cannot run on `device` or cannot measure this call.
    On a CPU device, `cpu_budget_s` caps the timed calls: fewer iterations per trial (at least one),
    said in `timer_note`; a CUDA device is never cut short. ci=False leaves the bootstrap CI to
    `stats.fill_ci` (the worker does: its parent computes it).
    """
    import torch
    if timer not in TIMERS:
        raise TimingError(f"unknown timer {timer!r}", field="timer", fix=f"use one of {TIMERS}")
    if n_copies < 1 or iterations < 1 or num_trials < 1 or warmup_runs < 0:
        raise ValueError("n_copies, iterations and num_trials must be >= 1, warmup_runs >= 0")
    dev = torch.device(device)
    on_cuda = dev.type == "cuda"
    if timer in CUDA_TIMERS and not (on_cuda and torch.cuda.is_available()):
        raise TimingError(f"timer {timer!r} needs a CUDA device, but device is {str(dev)!r}"
                          f" (CUDA available: {torch.cuda.is_available()})", field="timer",
                          fix="use timer='wall' or 'auto' on this device")
    if on_cuda:
        with torch.cuda.device(dev):
            return _measure_cuda(call, dev, timer, n_copies, warmup_runs, iterations, num_trials,
                                 flush_l2, (min_warmup_ms, max_warmup_runs, max_warmup_ms,
                                            stable_window, stable_rtol), seed, ci)
    note = "auto: wall (device is not CUDA)" if timer == "auto" else "wall (asked for)"
    rot = Rotation(call, n_copies)
    sync = (lambda: None)
    if cpu_budget_s is not None:  # the warm-up gets a third of the budget at most
        max_warmup_ms = min(max_warmup_ms, cpu_budget_s * 1e3 / 3)
    done, stable, _ = _warm_up(lambda: _wall_once(rot, sync, None), warmup_runs, min_warmup_ms,
                               max_warmup_runs, max_warmup_ms, stable_window, stable_rtol)
    samples: list[float] = []
    deadline = None if cpu_budget_s is None else time.perf_counter() + cpu_budget_s
    while len(samples) < iterations * num_trials:
        samples.append(_wall_once(rot, sync, None))
        if deadline is not None and time.perf_counter() > deadline and len(samples) >= num_trials:
            kept = len(samples) // num_trials  # whole trials of equal length
            if kept < iterations:
                note = (f"{note}; CPU time budget {cpu_budget_s:g} s: {kept} of {iterations} iterations "
                        "per trial")
                iterations, samples = kept, samples[:kept * num_trials]
            break
    return summarize(samples, timer="wall", warmup_runs=done, l2_flush=False, input_copies=n_copies,
                     seed=seed, timer_note=note, warmup_stable=stable, iterations=iterations,
                     num_trials=num_trials, trial_medians_ms=_trial_medians(samples, iterations), ci=ci)


def kernel_share(kernel_ms: float, span_ms: float | None) -> float | None:
    """The share of a call's device span (first kernel start to last kernel end) its kernels cover, or
    None without a span. Under SPARSE_SPAN_WARNING launches are missing from the profile; under
    IDLE_SPAN_SHARE the GPU waits on the host for most of the call (host syncs, launch-bound code), so
    the kernel sum says what the kernels cost, not what a caller waits for."""
    return kernel_ms / span_ms if span_ms else None


def kernels_may_be_missing(kernel_ms: float, span_ms: float | None) -> bool:
    """The cupti kernel sum covers under SPARSE_SPAN_WARNING of the call's device span: launches may be
    missing from the profile (said in timer_note; the peers report replaces such rows by nsys)."""
    share = kernel_share(kernel_ms, span_ms)
    return share is not None and share < SPARSE_SPAN_WARNING


def _wall_once(rot: Rotation, sync: Callable[[], None], flush) -> float:
    if flush is not None:
        flush()
    sync()
    t0 = time.perf_counter_ns()
    rot()
    sync()
    return (time.perf_counter_ns() - t0) / 1e6


def _warm_up(run_once: Callable[[], float], warmup_runs: int, min_warmup_ms: float,
             max_warmup_runs: int, max_warmup_ms: float, window: int,
             rtol: float) -> tuple[int, bool, list[float]]:
    """Run until at least `warmup_runs` and `min_warmup_ms`, then until stable or a cap.
    Returns (runs done, whether the last `window` times were within `rtol` of their median, the times)."""
    times: list[float] = []
    t_start = time.perf_counter()
    while True:
        times.append(run_once())
        elapsed_ms = (time.perf_counter() - t_start) * 1e3
        if len(times) < warmup_runs or elapsed_ms < min_warmup_ms:
            if len(times) >= max(warmup_runs, max_warmup_runs):
                return len(times), _stable(times, window, rtol), times
            continue
        if _stable(times, window, rtol):
            return len(times), True, times
        if len(times) >= max_warmup_runs or elapsed_ms >= max_warmup_ms:
            return len(times), False, times


def _stable(times: list[float], window: int, rtol: float) -> bool:
    """The last `window` times lie within `rtol` of their median, their single highest and lowest left out
    when the window holds 5 or more (one outlier, a host hiccup in a host-bound call's event time, no longer
    restarts the wait: on an H200 a 15-token triton_fused call's warm-up once ran 861 calls, 0.4 s, before
    five in a row fell within 10%)."""
    if len(times) < window:
        return False
    last = np.sort(np.asarray(times[-window:]))
    med = float(np.median(last))
    kept = last[1:-1] if window >= 5 else last
    return med > 0 and float(kept[-1] - kept[0]) <= rtol * med


def _trial_medians(samples: list[float], iterations: int) -> list[float]:
    return [float(np.median(samples[i:i + iterations])) for i in range(0, len(samples), iterations)]


# ----------------------------------------------------------------------------- CUDA timers

def _measure_cuda(call, dev, timer, n_copies, warmup_runs, iterations, num_trials, flush_l2,
                  warm_args, seed, ci=True) -> TimingStats:
    import torch
    buffer = make_flush_buffer(dev) if flush_l2 else None
    flush = flusher(buffer) if buffer is not None else (lambda: None)
    rot = Rotation(call, n_copies)
    note = f"{timer} (asked for)"
    if timer == "auto":
        ok, why = cupti_available(dev)
        timer = "cupti" if ok else "cuda_event"
        note = f"auto: cupti ({why})" if ok else f"auto: cuda_event (cupti unavailable: {why})"

    if timer == "wall":
        once = lambda: _wall_once(rot, torch.cuda.synchronize, flush)  # noqa: E731
    else:
        once = lambda: event_times(rot, flush, 1)[0]  # noqa: E731
    t_warm = time.perf_counter()
    done, stable, warm_times = _warm_up(once, warmup_runs, *warm_args)
    steps: dict[str, float] = {"warmup": round(time.perf_counter() - t_warm, 6)}

    base = {"timing_steps_s": steps, "warmup_min_ms": warm_args[0]}  # what every timer's stats carry
    extra: dict[str, Any] = dict(base)
    if timer == "cupti":
        try:
            # one profiler session for every trial: each session costs a Kineto start and stop
            session: dict[str, Any] = {"steps_s": steps}
            samples, spans = cupti_times(rot, flush, iterations * num_trials, info=session)
            extra["cupti_session"] = session.get("session")
            if session.get("fallbacks"):
                note = f"{note}; {extra['cupti_session']}"
            kernel_ms, extra["span_median_ms"] = float(np.median(samples)), float(np.median(spans))
            covered = kernel_share(kernel_ms, extra["span_median_ms"])
            if covered is not None and covered < SPARSE_SPAN_WARNING:
                # Seen on an H200 (2026-12-02): in DeepGEMM's worker CUPTI recorded none of the decode
                # GEMMs or Triton kernels, so the sum read 1.5 us for a call that nsys shows at 79 us.
                missing = (f"the kernels cupti saw cover only {100 * covered:.1f}% of the call's device span, "
                           "so launches are missing from the profile")
                if note.startswith("auto"):  # a number known to be wrong is not reported: re-time with events
                    timer, note = "cuda_event", f"auto: cuda_event (cupti unusable here: {missing})"
                    extra = dict(base)
                else:
                    note = f"{note}; WARNING: {missing} (check with fib profile, or use --timer cuda_event)"
            elif covered is not None and covered < IDLE_SPAN_SHARE:
                # The kernel sum stays the latency (what the kernels cost, flashinfer-bench's measure too),
                # but a caller waits for the whole device span: say that too, timed without the profiler
                # (whose host overhead would stretch the gaps), so reports can say both. The warm-up already
                # timed the call so, by CUDA events after each flush, one call after another: its settled
                # second half is that figure (timing 50 more calls for it cost ~23 ms per decode workload on
                # an H200, and the two, host-bound, came out 10-25% apart either way: benchmarks/call_overhead.py,
                # event_warmup_us against event_retime_us).
                window = warm_args[3]  # (min ms, max runs, max ms, stable window, rtol)
                tail = warm_times[-max(window, len(warm_times) // 2):]
                extra["event_median_ms"] = float(np.median(tail))
                extra["event_calls"] = len(tail)
                extra["gpu_idle_share"] = 1.0 - covered
                note = (f"{note}; the GPU idles {100 * extra['gpu_idle_share']:.0f}% of the call's device span "
                        f"(host syncs or launch-bound host code): kernel sum {kernel_ms:.4g} ms, "
                        f"a call back to back {extra['event_median_ms']:.4g} ms by CUDA events "
                        f"(the last {len(tail)} warm-up calls)")
        except TimingError as exc:
            if not note.startswith("auto"):
                raise
            timer, note = "cuda_event", f"auto: cuda_event (cupti failed: {exc.message})"
            extra = dict(base)
    t_other = time.perf_counter()
    if timer == "cuda_graph":
        replay = _capture_graphs(call, n_copies)
        for _ in range(3):  # the first replays upload the graph
            flush(); replay()
        samples = [t for _ in range(num_trials) for t in event_times(replay, flush, iterations)]
    elif timer == "cuda_event":
        samples = [t for _ in range(num_trials) for t in event_times(rot, flush, iterations)]
    elif timer == "wall":
        samples = [_wall_once(rot, torch.cuda.synchronize, flush)
                   for _ in range(iterations * num_trials)]
    if timer != "cupti":
        steps["calls"] = round(time.perf_counter() - t_other, 6)
    return summarize(samples, timer=timer, warmup_runs=done, l2_flush=buffer is not None,
                     input_copies=n_copies, seed=seed, timer_note=note, warmup_stable=stable,
                     iterations=iterations, num_trials=num_trials,
                     flush_bytes=0 if buffer is None else buffer.numel() * buffer.element_size(),
                     trial_medians_ms=_trial_medians(samples, iterations), ci=ci, **extra)


def event_times(run: Callable[[], None], flush, n: int) -> list[float]:
    import torch
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for start, end in zip(starts, ends):
        flush()
        start.record()
        run()
        end.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def _capture_graphs(call, n_copies: int) -> Callable[[], None]:
    import torch
    pool = torch.cuda.graph_pool_handle()
    graphs = []
    try:
        torch.cuda.synchronize()
        for idx in range(n_copies):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                call(idx)
            graphs.append(graph)
        torch.cuda.synchronize()
    except Exception as exc:  # capture errors come from the solution: report, don't crash
        raise TimingError(f"the call cannot be captured in a CUDA graph: {type(exc).__name__}: "
                          f"{exc}", field="timer",
                          fix="use timer='cupti' or 'cuda_event' for this solution") from exc
    counter = [0]

    def replay() -> None:
        graphs[counter[0] % n_copies].replay()
        counter[0] += 1
    return replay
