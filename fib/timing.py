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

``auto``: CPU -> wall. CUDA -> cupti when a Kineto probe run sees kernel events and every timed
call had device work attributed to it, else cuda_event. The timer that ran is `stats.timer`, why
is `stats.timer_note` (cuda_graph is never chosen automatically: results from different timers
should not be ranked together, and capture can fail in ways that leave the context unusable).

L2 flush: before every call (warm-up and timed), outside the timed region, a read of a buffer of
twice the L2 size. A read and not a fill (`zero_()`): a fill leaves the L2 full of dirty lines,
whose write-back would then be charged to the next timed call; a read leaves clean lines.

Warm-up: at least `warmup_runs` calls and `min_warmup_ms`, then on until the last
`stable_window` warm-up times lie within `stable_rtol` of their median, or `max_warmup_runs` /
`max_warmup_ms` is reached (`stats.warmup_stable` says which).
"""
from __future__ import annotations

import time
import warnings
from typing import Any, Callable

import numpy as np

from .errors import FibError
from .schema.trace import TimingStats

TIMERS = ("auto", "cupti", "cuda_graph", "cuda_event", "wall")
CUDA_TIMERS = ("cupti", "cuda_graph", "cuda_event")
CALL_RANGE = "fib.timed_call"
FLUSH_RANGE = "fib.l2_flush"
_DEFAULT_FLUSH_BYTES = 256 * 1024 * 1024  # when the driver reports no L2 size


class TimingError(FibError):
    """A timer that cannot run here, or a call that the chosen timer cannot measure."""


# ----------------------------------------------------------------------------- statistics

def summarize(samples_ms, *, timer: str, warmup_runs: int = 0, l2_flush: bool = False,
              input_copies: int = 1, confidence: float = 0.95, n_resamples: int = 2000,
              seed: int = 0, **extra: Any) -> TimingStats:
    """Statistics of per-call times (ms): median, IQR (p75 - p25, linear interpolation), min,
    mean, and a percentile-bootstrap CI of the median (scipy, seeded: same samples, same CI).

    n == 1 gives a CI of zero width at the sample; n == 2 the range of the two; identical samples a
    zero-width CI. `extra` is stored on the TimingStats as additional fields.
    """
    x = np.asarray(list(samples_ms), dtype=np.float64)
    if x.size == 0:
        raise ValueError("summarize needs at least one sample")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"samples must be finite, got {x[~np.isfinite(x)][:3].tolist()}")
    median = float(np.median(x))
    low, high = _median_ci(x, confidence, n_resamples, seed)
    return TimingStats(
        timer=timer, samples_ms=x.tolist(), median_ms=median,
        iqr_ms=float(np.percentile(x, 75) - np.percentile(x, 25)),
        min_ms=float(x.min()), mean_ms=float(x.mean()),
        ci95_low_ms=min(low, median), ci95_high_ms=max(high, median),
        warmup_runs=warmup_runs, l2_flush=l2_flush, input_copies=input_copies, **extra)


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


# ----------------------------------------------------------------------------- L2 flush

def l2_flush_bytes(device) -> int:
    """Bytes a flush must touch on `device`: twice its L2 (0 on CPU: fib does not flush CPU caches)."""
    import torch
    dev = torch.device(device)
    if dev.type != "cuda":
        return 0
    l2 = int(getattr(torch.cuda.get_device_properties(dev), "L2_cache_size", 0) or 0)
    return 2 * l2 if l2 > 0 else _DEFAULT_FLUSH_BYTES


def make_flush_buffer(device):
    """The flush buffer (float32, ones, `l2_flush_bytes` long), allocated once; None on CPU."""
    import torch
    n_bytes = l2_flush_bytes(device)
    if n_bytes == 0:
        return None
    return torch.ones(n_bytes // 4, dtype=torch.float32, device=device)


def _flusher(buffer) -> Callable[[], None]:
    import torch
    out = torch.empty((), dtype=buffer.dtype, device=buffer.device)

    def flush() -> None:
        torch.sum(buffer, dim=0, out=out)  # a read of 2x L2: evicts everything, leaves clean lines
    return flush


# ----------------------------------------------------------------------------- measure

def measure(call: Callable[[int], None], *, n_copies: int, device, timer: str = "auto",
            warmup_runs: int = 10, iterations: int = 50, num_trials: int = 3,
            flush_l2: bool = True, min_warmup_ms: float = 25.0, max_warmup_runs: int = 1000,
            max_warmup_ms: float = 2000.0, stable_window: int = 5, stable_rtol: float = 0.1,
            seed: int = 0) -> TimingStats:
    """Warm `call` up, then time `iterations * num_trials` calls with `timer`; see the module doc.

    `call(idx)` runs the solution once on input copy `idx` (0 <= idx < n_copies, rotating).
    Raises TimingError when the timer cannot run on `device` or cannot measure this call.
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
                                            stable_window, stable_rtol), seed)
    note = "auto: wall (device is not CUDA)" if timer == "auto" else "wall (asked for)"
    rot = _Rotation(call, n_copies)
    sync = (lambda: None)
    done, stable = _warm_up(lambda: _wall_once(rot, sync, None), warmup_runs, min_warmup_ms,
                            max_warmup_runs, max_warmup_ms, stable_window, stable_rtol)
    samples = [_wall_once(rot, sync, None) for _ in range(iterations * num_trials)]
    return summarize(samples, timer="wall", warmup_runs=done, l2_flush=False, input_copies=n_copies,
                     seed=seed, timer_note=note, warmup_stable=stable, iterations=iterations,
                     num_trials=num_trials, trial_medians_ms=_trial_medians(samples, iterations))


class _Rotation:
    """`call` with the copy index advancing by one on every run, across warm-up and trials."""

    def __init__(self, call: Callable[[int], None], n_copies: int):
        self.call, self.n_copies, self.count = call, n_copies, 0

    def __call__(self) -> None:
        idx = self.count % self.n_copies
        self.count += 1
        self.call(idx)


def _wall_once(rot: _Rotation, sync: Callable[[], None], flush) -> float:
    if flush is not None:
        flush()
    sync()
    t0 = time.perf_counter_ns()
    rot()
    sync()
    return (time.perf_counter_ns() - t0) / 1e6


def _warm_up(run_once: Callable[[], float], warmup_runs: int, min_warmup_ms: float,
             max_warmup_runs: int, max_warmup_ms: float, window: int, rtol: float) -> tuple[int, bool]:
    """Run until at least `warmup_runs` and `min_warmup_ms`, then until stable or a cap.
    Returns (runs done, whether the last `window` times were within `rtol` of their median)."""
    times: list[float] = []
    t_start = time.perf_counter()
    while True:
        times.append(run_once())
        elapsed_ms = (time.perf_counter() - t_start) * 1e3
        if len(times) < warmup_runs or elapsed_ms < min_warmup_ms:
            if len(times) >= max(warmup_runs, max_warmup_runs):
                return len(times), _stable(times, window, rtol)
            continue
        if _stable(times, window, rtol):
            return len(times), True
        if len(times) >= max_warmup_runs or elapsed_ms >= max_warmup_ms:
            return len(times), False


def _stable(times: list[float], window: int, rtol: float) -> bool:
    if len(times) < window:
        return False
    last = np.asarray(times[-window:])
    med = float(np.median(last))
    return med > 0 and float(last.max() - last.min()) <= rtol * med


def _trial_medians(samples: list[float], iterations: int) -> list[float]:
    return [float(np.median(samples[i:i + iterations])) for i in range(0, len(samples), iterations)]


# ----------------------------------------------------------------------------- CUDA timers

def _measure_cuda(call, dev, timer, n_copies, warmup_runs, iterations, num_trials, flush_l2,
                  warm_args, seed) -> TimingStats:
    import torch
    buffer = make_flush_buffer(dev) if flush_l2 else None
    flush = _flusher(buffer) if buffer is not None else (lambda: None)
    rot = _Rotation(call, n_copies)
    note = f"{timer} (asked for)"
    if timer == "auto":
        ok, why = cupti_available(dev)
        timer = "cupti" if ok else "cuda_event"
        note = f"auto: cupti ({why})" if ok else f"auto: cuda_event (cupti unavailable: {why})"

    if timer == "wall":
        once = lambda: _wall_once(rot, torch.cuda.synchronize, flush)  # noqa: E731
    else:
        once = lambda: _event_times(rot, flush, 1)[0]  # noqa: E731
    done, stable = _warm_up(once, warmup_runs, *warm_args)

    extra: dict[str, Any] = {}
    if timer == "cupti":
        try:
            samples, spans = [], []
            for _ in range(num_trials):
                kernel_ms, span_ms = _cupti_times(rot, flush, iterations)
                samples += kernel_ms
                spans += span_ms
            extra["span_median_ms"] = float(np.median(spans))
        except TimingError as exc:
            if not note.startswith("auto"):
                raise
            timer, note = "cuda_event", f"auto: cuda_event (cupti failed: {exc.message})"
    if timer == "cuda_graph":
        replay = _capture_graphs(call, n_copies)
        for _ in range(3):  # the first replays upload the graph
            flush(); replay()
        samples = [t for _ in range(num_trials) for t in _event_times(replay, flush, iterations)]
    elif timer == "cuda_event":
        samples = [t for _ in range(num_trials) for t in _event_times(rot, flush, iterations)]
    elif timer == "wall":
        samples = [_wall_once(rot, torch.cuda.synchronize, flush)
                   for _ in range(iterations * num_trials)]
    return summarize(samples, timer=timer, warmup_runs=done, l2_flush=buffer is not None,
                     input_copies=n_copies, seed=seed, timer_note=note, warmup_stable=stable,
                     iterations=iterations, num_trials=num_trials,
                     flush_bytes=0 if buffer is None else buffer.numel() * buffer.element_size(),
                     trial_medians_ms=_trial_medians(samples, iterations), **extra)


def _event_times(run: Callable[[], None], flush, n: int) -> list[float]:
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


# ----------------------------------------------------------------------------- CUPTI (Kineto)

_CUPTI_PROBE: dict[str, tuple[bool, str]] = {}


def cupti_available(device) -> tuple[bool, str]:
    """(works, why): whether torch.profiler sees this device's kernels and fib can attribute them
    to a `fib.timed_call` range. Probed once per device per process."""
    import torch
    key = str(torch.device(device))
    if key not in _CUPTI_PROBE:
        try:
            x = torch.ones(1024, device=device)
            rot = _Rotation(lambda _i: x.add_(1.0), 1)
            kernel_ms, _ = _cupti_times(rot, lambda: None, 2)
            _CUPTI_PROBE[key] = (True, f"Kineto probe attributed kernels to {len(kernel_ms)} calls")
        except Exception as exc:  # any failure means: not usable here
            _CUPTI_PROBE[key] = (False, f"{type(exc).__name__}: {exc}")
    return _CUPTI_PROBE[key]


def _cupti_times(rot: _Rotation, flush, n: int) -> tuple[list[float], list[float]]:
    import torch
    torch.cuda.synchronize()
    with warnings.catch_warnings():  # "Profiler clears events at the end of each cycle": expected
        warnings.simplefilter("ignore", UserWarning)
        prof = _profile_calls(rot, flush, n)
    return attribute_device_time(_kineto_records(prof), n)


def _profile_calls(rot: _Rotation, flush, n: int):
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function
    marker = torch.zeros(1, device="cuda")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            with record_function(FLUSH_RANGE):
                flush()
                marker.zero_()  # a kernel of its own, so the device timeline can be split at it
            with record_function(CALL_RANGE):
                rot()
        torch.cuda.synchronize()
    return prof


def _kineto_records(prof) -> list[dict]:
    """Kineto's raw events as plain dicts (private API of torch.profiler; tolerant of versions)."""
    from torch.autograd import DeviceType
    out = []
    for ev in prof.profiler.kineto_results.events():
        activity = str(_get(ev, "activity_type", ""))
        out.append(dict(
            name=ev.name(), gpu=ev.device_type() != DeviceType.CPU,
            start_ns=int(ev.start_ns()), end_ns=int(ev.start_ns()) + int(ev.duration_ns()),
            correlation_id=int(ev.correlation_id()), linked_id=int(ev.linked_correlation_id()),
            thread=int(_get(ev, "start_thread_id", 0)), activity=activity,
            annotation=bool(_get(ev, "is_user_annotation", False)) or "annotation" in activity))
    return out


def _get(ev, method: str, default):
    fn = getattr(ev, method, None)
    try:
        return fn() if fn is not None else default
    except Exception:
        return default


def attribute_device_time(records: list[dict], n_calls: int) -> tuple[list[float], list[float]]:
    """Per `fib.timed_call` range, in order: (sum of device-event durations, first-start to
    last-end span), both in ms. Device events are tied to host events by the launch's linked
    correlation id; a host event belongs to the call whose range contains it on the same thread.
    Pure function of plain records (see `_kineto_records`), so it is tested without a GPU."""
    calls = sorted((r for r in records if not r["gpu"] and r["name"] == CALL_RANGE),
                   key=lambda r: r["start_ns"])
    if len(calls) != n_calls:
        raise TimingError(f"profiler saw {len(calls)} '{CALL_RANGE}' ranges for {n_calls} calls")
    starts = np.array([c["start_ns"] for c in calls])

    def call_of(r) -> int | None:
        k = int(np.searchsorted(starts, r["start_ns"], side="right")) - 1
        if k >= 0 and r["end_ns"] <= calls[k]["end_ns"] and r["thread"] == calls[k]["thread"]:
            return k
        return None

    # Two ways from a device event to its call: (1) the runtime/driver launch call (cudaLaunchKernel,
    # cuLaunchKernel: Triton and other direct launches) shares the kernel's CUPTI correlation id;
    # (2) the host op that launched it (an aten op) is its linked correlation id.
    by_launch: dict[int, int] = {}
    by_op: dict[int, int] = {}
    for r in records:
        if r["gpu"]:
            continue
        k = call_of(r)
        if k is None:
            continue
        if any(w in r.get("activity", "") for w in ("runtime", "driver")):
            by_launch[r["correlation_id"]] = k
        else:
            by_op[r["correlation_id"]] = k
    per_call: list[list[tuple[int, int]]] = [[] for _ in calls]
    for r in records:
        if not r["gpu"] or r["annotation"]:
            continue
        k = by_launch.get(r["correlation_id"])
        if k is None:
            k = by_op.get(r["linked_id"])
        if k is not None:
            per_call[k].append((r["start_ns"], r["end_ns"]))
    if any(not evs for evs in per_call):
        # Launches the profiler did not record on the host (Triton's cuLaunchKernel is not always
        # among Kineto's events): split the device timeline at the L2-flush kernels instead.
        per_call = _split_at_flushes(records, calls) or per_call
    empty = [k for k, evs in enumerate(per_call) if not evs]
    if empty:
        raise TimingError(f"no device work attributed to {len(empty)} of {n_calls} calls "
                          f"(first: call {empty[0]})")
    kernel_ms = [sum(e - s for s, e in evs) / 1e6 for evs in per_call]
    span_ms = [(max(e for _, e in evs) - min(s for s, _ in evs)) / 1e6 for evs in per_call]
    return kernel_ms, span_ms


def _split_at_flushes(records: list[dict], calls: list[dict]) -> list[list[tuple[int, int]]] | None:
    """Device events between the end of flush k's kernels and the start of flush k+1's belong to
    call k (each call is preceded by its flush; one stream). None when the flushes are not seen."""
    flushes = sorted((r for r in records if not r["gpu"] and r["name"] == FLUSH_RANGE), key=lambda r: r["start_ns"])
    if len(flushes) != len(calls):
        return None
    starts = np.array([f["start_ns"] for f in flushes])
    flush_of: dict[int, int] = {}
    for r in records:
        if r["gpu"] or r["name"] == FLUSH_RANGE:
            continue
        k = int(np.searchsorted(starts, r["start_ns"], side="right")) - 1
        if k >= 0 and r["end_ns"] <= flushes[k]["end_ns"] and r["thread"] == flushes[k]["thread"]:
            flush_of[r["correlation_id"]] = k
    device = [r for r in records if r["gpu"] and not r["annotation"]]
    spans: dict[int, list[int]] = {}
    flush_events = set()
    for i, r in enumerate(device):
        k = flush_of.get(r["linked_id"])
        if k is not None:
            flush_events.add(i)
            lo, hi = spans.get(k, [r["start_ns"], r["end_ns"]])
            spans[k] = [min(lo, r["start_ns"]), max(hi, r["end_ns"])]
    if len(spans) != len(calls):
        return None
    per_call: list[list[tuple[int, int]]] = [[] for _ in calls]
    for i, r in enumerate(device):
        if i in flush_events:
            continue
        for k in range(len(calls)):
            after = r["start_ns"] >= spans[k][1]
            before_next = k + 1 == len(calls) or r["end_ns"] <= spans[k + 1][0]
            if after and before_next:
                per_call[k].append((r["start_ns"], r["end_ns"]))
                break
    return per_call


# ----------------------------------------------------------------------------- ceilings

def measure_ceilings(device, *, copy_bytes: int = 1 << 30, matmul_size: int = 8192,
                     repeats: int = 10) -> dict[str, Any]:
    """Measured roofs for floor computations: device-to-device copy bandwidth (GB/s, bytes read
    plus bytes written) and a large matmul's rate (TFLOP/s, FP8 e4m3 through torch._scaled_mm,
    bf16 where that fails). Random data (zeros run faster). Median of `repeats` event-timed runs."""
    import torch
    dev = torch.device(device)
    if dev.type != "cuda":
        raise TimingError("measure_ceilings needs a CUDA device", fix="pass device='cuda:N'")
    with torch.cuda.device(dev):
        src = torch.randint(0, 255, (copy_bytes,), dtype=torch.uint8, device=dev)
        dst = torch.empty_like(src)
        copy_ms = _median_event_ms(lambda: dst.copy_(src), repeats)
        del src, dst
        n = matmul_size
        a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
        try:
            a8, b8 = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn)
            one = torch.ones((), device=dev, dtype=torch.float32)
            mm = lambda: torch._scaled_mm(a8, b8.t(), scale_a=one, scale_b=one,  # noqa: E731
                                          out_dtype=torch.bfloat16)
            mm()
            dtype, note = "fp8_e4m3", ""
        except Exception as exc:
            mm, dtype, note = (lambda: a @ b), "bf16", f"fp8 failed: {type(exc).__name__}: {exc}"
        mm_ms = _median_event_ms(mm, repeats)
    return {"device": torch.cuda.get_device_name(dev),
            "copy_bytes": copy_bytes, "copy_ms": copy_ms, "copy_gbps": 2 * copy_bytes / copy_ms / 1e6,
            "matmul_size": n, "matmul_dtype": dtype, "matmul_ms": mm_ms,
            "matmul_tflops": 2 * n ** 3 / mm_ms / 1e9, "matmul_note": note}


def _median_event_ms(fn: Callable[[], Any], repeats: int) -> float:
    import torch
    for _ in range(3):
        fn()
    return float(np.median(_event_times(fn, lambda: None, repeats)))
