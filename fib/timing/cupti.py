"""The cupti timer: kernel time per call from CUPTI, directly or through torch's profiler (Kineto).

Three sessions, tried in this order:

- direct session (the fastest): fib's own kernels-only CUPTI activity session
  (`fib.timing.cupti_direct`), calls bracketed by marker kernels as in the device-only session below. It
  records no runtime or driver API activity, which Kineto always adds (~190 us per triton_fused call).
- device-only session: Kineto records CUDA activity only (no host ops, no
  `record_function`), and every call is bracketed on the stream by marker kernels (`torch.cuda._sleep(0)`,
  aten's `spin_kernel`): marker, L2 flush, marker, call. Call k's device events are those between its
  second marker and the next call's first one. The markers and the flush are outside those windows, so
  they are excluded. Per call this costs two tiny launches instead of the profiler's per-op host records
  (~300 us a call for triton_fused at decode on an H200, benchmarks/call_overhead.py), and the read-back
  touches device events only.
- full session (the fallback, and `FIB_CUPTI_SESSION=full`): host ops and CUDA activity, each timed call
  inside `record_function("fib.timed_call")`; device work is attributed to a call through its launch's
  correlation id (the flush, launched outside the range, is excluded).

A marker session is used only when what it sees is exactly what it expects (2 markers per call,
every call's window holds device work, no device event straddles a boundary); otherwise the calls are
timed again with the next session and `info["session"]` says why. `FIB_CUPTI_SESSION`: "kineto" starts at
the device-only session, "full" goes straight to the full one.
"""
from __future__ import annotations

import os
import time
import warnings

import numpy as np

from ..errors import TimingError
from .flush import FLUSH_RANGE
from .rotation import Rotation

CALL_RANGE = "fib.timed_call"
MARKER_KERNEL = "spin_kernel"  # aten's kernel behind torch.cuda._sleep: launched by no solution we know
SESSION_ENV = "FIB_CUPTI_SESSION"  # "kineto": skip the direct session; "full": Kineto's full session only

_CUPTI_PROBE: dict[str, tuple[bool, str]] = {}


def cupti_available(device) -> tuple[bool, str]:
    """(works, why): whether torch.profiler sees this device's kernels and fib can attribute them
    to a `fib.timed_call` range. Probed once per device per process."""
    import torch
    key = str(torch.device(device))
    if key not in _CUPTI_PROBE:
        try:
            x = torch.ones(1024, device=device)
            rot = Rotation(lambda _i: x.add_(1.0), 1)
            info: dict = {}
            kernel_ms, _ = cupti_times(rot, lambda: None, 2, info)
            _CUPTI_PROBE[key] = (True, f"CUPTI probe ({info.get('session')} session) attributed kernels "
                                       f"to {len(kernel_ms)} calls")
        except Exception as exc:  # any failure means: not usable here
            _CUPTI_PROBE[key] = (False, f"{type(exc).__name__}: {exc}")
    return _CUPTI_PROBE[key]


def cupti_times(rot: Rotation, flush, n: int, info: dict | None = None) -> tuple[list[float], list[float]]:
    """(kernel ms, device span ms) of each of `n` calls of `rot`, each after `flush`. `info`, when
    given, receives the session used ("direct", "device" or "full", with the reasons for a fallback), those
    reasons alone (`fallbacks`: why a session tried was not used) and the seconds of each step
    (session_start, calls, session_stop, read, attribute)."""
    import torch
    info = {} if info is None else info
    info.setdefault("steps_s", {})
    torch.cuda.synchronize()
    mode = os.environ.get(SESSION_ENV, "")
    why: list[str] = []
    with warnings.catch_warnings():  # "Profiler clears events at the end of each cycle": expected
        warnings.simplefilter("ignore", UserWarning)
        tries = [] if mode == "full" else [("device", _profile_device_only, _device_records)]
        if mode not in ("full", "kineto"):
            tries.insert(0, ("direct", _profile_direct, lambda session: session.events))
        for name, profile, read in tries:
            try:
                session = profile(rot, flush, n, info["steps_s"])
                times = _read_and_attribute(session, read, attribute_by_markers, n, info["steps_s"])
                info["session"] = name if not why else f"{name} ({'; '.join(why)})"
                info["fallbacks"] = why
                return times
            except TimingError as exc:
                why.append(f"{name} session unusable: {exc.message}")
            except Exception as exc:  # no libcupti, a torch without _sleep or the accessors: the next one
                why.append(f"{name} session failed: {type(exc).__name__}: {exc}")
        info["fallbacks"] = list(why)
        if mode in ("full", "kineto"):
            why.insert(0, f"{SESSION_ENV}={mode}")
        info["session"] = f"full ({'; '.join(why)})"
        prof = _profile_calls(rot, flush, n, info["steps_s"])
    return _read_and_attribute(prof, _kineto_records, attribute_device_time, n, info["steps_s"])


def _read_and_attribute(prof, read, attribute, n: int, steps: dict):
    """attribute(read(prof), n), each step's seconds added to `steps`."""
    t0 = time.perf_counter()
    records = read(prof)
    t1 = time.perf_counter()
    times = attribute(records, n)
    _step(steps, "read", t1 - t0)
    _step(steps, "attribute", time.perf_counter() - t1)
    return times


def _step(steps: dict, name: str, seconds: float) -> None:
    steps[name] = round(steps.get(name, 0.0) + seconds, 6)


def _kineto_session(host_ops: bool = True):
    """A Kineto session recording CUDA activity, and host ops with `host_ops`: torch.autograd.profiler's,
    not torch.profiler.profile's, whose start asks `hasattr(torch, "_inductor")` and so imports
    inductor, dynamo and sympy (3-5.5 s on an H200 machine, the larger part of what was taken for
    CUPTI's start-up; benchmarks/kineto_startup.py --variant autograd_api)."""
    from torch.autograd import profiler
    return profiler.profile(use_cpu=host_ops, use_device="cuda", use_kineto=True)


class _Timed:
    """A context manager adding its block's seconds to steps[name] (the session's start and stop)."""

    def __init__(self, steps: dict, name: str):
        self.steps, self.name = steps, name

    def __enter__(self):
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        _step(self.steps, self.name, time.perf_counter() - self.t0)
        return False


def _session(session, calls, steps: dict):
    """`session` (a Kineto or a direct CUPTI session) around `calls()` and a device sync, its start,
    calls and stop timed into `steps`."""
    import torch
    with _Timed(steps, "session_start"):
        session.__enter__()
    try:
        with _Timed(steps, "calls"):
            calls()
            torch.cuda.synchronize()
    finally:
        with _Timed(steps, "session_stop"):
            session.__exit__(None, None, None)
    return session


def _profile_calls(rot: Rotation, flush, n: int, steps: dict):
    import torch
    from torch.autograd.profiler import record_function
    marker = torch.zeros(1, device="cuda")

    def calls() -> None:
        for _ in range(n):
            with record_function(FLUSH_RANGE):
                flush()
                marker.zero_()  # a kernel of its own, so the device timeline can be split at it
            with record_function(CALL_RANGE):
                rot()
    return _session(_kineto_session(True), calls, steps)


def _marked_calls(rot: Rotation, flush, n: int):
    """The calls of a marker session: marker, flush, marker, call; one marker after the last call."""
    import torch
    mark = torch.cuda._sleep  # spin_kernel(0 cycles): a few microseconds of device time, outside the calls

    def calls() -> None:
        for _ in range(n):
            mark(0)
            flush()
            mark(0)
            rot()
        mark(0)  # closes the last call's window
    return calls


def _profile_device_only(rot: Rotation, flush, n: int, steps: dict):
    return _session(_kineto_session(False), _marked_calls(rot, flush, n), steps)


def _profile_direct(rot: Rotation, flush, n: int, steps: dict):
    """The direct session over `n` calls, after one over a single call that counts its records: a
    session must fit one CUPTI buffer (see cupti_direct.KernelSession)."""
    from .cupti_direct import KernelSession
    one = _session(KernelSession(), _marked_calls(rot, flush, 1), steps)
    need = (len(one.events) + 1) * n + 1  # each call's records and its leading marker, as counted
    if not KernelSession.fits(int(need * 1.25)):
        raise TimingError(f"{n} calls of {len(one.events) - 3} device records each would overflow "
                          "one CUPTI buffer")
    return _session(KernelSession(), _marked_calls(rot, flush, n), steps)


def _device_records(prof) -> list[tuple[str, int, int]]:
    """(name, start ns, end ns) of the session's device events (kernels, memcpy, memset), GPU-side
    annotations left out; host events cost one accessor call each."""
    from torch.autograd import DeviceType
    cpu = DeviceType.CPU
    out = []
    for ev in prof.kineto_results.events():
        if ev.device_type() == cpu:
            continue
        if "annotation" in str(_get(ev, "activity_type", "")):
            continue
        start = int(ev.start_ns())
        out.append((ev.name(), start, start + int(ev.duration_ns())))
    return out


def attribute_by_markers(records: list[tuple[str, int, int]], n_calls: int) -> tuple[list[float], list[float]]:
    """Per call, in order: (sum of device-event durations, first-start to last-end span), both in ms,
    from a device-only session's (name, start_ns, end_ns) events: 2 markers around each flush and one
    after the last call, so call k owns what lies between markers 2k+1 and 2k+2. Raises TimingError
    when the events are not laid out that way (the caller falls back to the full session). Pure
    function, tested without a GPU."""
    if not records:
        raise TimingError("the device-only session recorded no device events")
    ev = sorted(records, key=lambda r: (r[1], r[2]))
    start = np.array([r[1] for r in ev], dtype=np.int64)
    end = np.array([r[2] for r in ev], dtype=np.int64)
    is_marker = np.array([MARKER_KERNEL in r[0] for r in ev], dtype=bool)
    m = np.flatnonzero(is_marker)
    if len(m) != 2 * n_calls + 1:
        raise TimingError(f"expected {2 * n_calls + 1} marker kernels for {n_calls} calls, saw {len(m)}"
                          " (a solution may launch the marker kernel itself)")
    # window k: after marker 2k+1 ends, before marker 2k+2 starts; flush k: between markers 2k and 2k+1
    lo, hi = end[m[1::2]], start[m[2::2]]
    others = np.flatnonzero(~is_marker)
    slot = np.searchsorted(m, others)  # how many markers precede each event: 2k+1 in flush k, 2k+2 in call k
    if (slot == 0).any() or (slot == len(m)).any():
        raise TimingError("device events outside the markers (before the first or after the last)")
    in_call = slot % 2 == 0
    call_ev, kc = others[in_call], slot[in_call] // 2 - 1
    flush_ev, fk = others[~in_call], (slot[~in_call] - 1) // 2
    if ((start[call_ev] < lo[kc]) | (end[call_ev] > hi[kc])).any() or \
            ((start[flush_ev] < end[m[2 * fk]]) | (end[flush_ev] > start[m[2 * fk + 1]])).any():
        raise TimingError("device events overlap the markers around a call or a flush "
                          "(work on another stream outlived its call)")
    kernel = np.zeros(n_calls, dtype=np.int64)
    np.add.at(kernel, kc, end[call_ev] - start[call_ev])
    counts = np.bincount(kc, minlength=n_calls)
    if (counts == 0).any():
        empty = np.flatnonzero(counts == 0)
        raise TimingError(f"no device work between the markers of {len(empty)} of {n_calls} calls "
                          f"(first: call {int(empty[0])})")
    first = np.full(n_calls, np.iinfo(np.int64).max, dtype=np.int64)
    last = np.zeros(n_calls, dtype=np.int64)
    np.minimum.at(first, kc, start[call_ev])
    np.maximum.at(last, kc, end[call_ev])
    return (kernel / 1e6).tolist(), ((last - first) / 1e6).tolist()


def _kineto_records(prof) -> list[dict]:
    """Kineto's raw events as plain dicts (private API of torch.profiler; tolerant of versions)."""
    from torch.autograd import DeviceType
    out = []
    for ev in prof.kineto_results.events():
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


def _contained(ranges: list[dict], records: list[dict]) -> np.ndarray:
    """For each record, the index of the range (sorted by start) that contains it on the same
    thread, or -1; vectorised (a run attributes thousands of host events)."""
    if not records or not ranges:
        return np.full(len(records), -1, dtype=np.int64)
    r_start = np.array([r["start_ns"] for r in ranges], dtype=np.int64)
    r_end = np.array([r["end_ns"] for r in ranges], dtype=np.int64)
    r_thread = np.array([r["thread"] for r in ranges], dtype=np.int64)
    start = np.array([r["start_ns"] for r in records], dtype=np.int64)
    end = np.array([r["end_ns"] for r in records], dtype=np.int64)
    thread = np.array([r["thread"] for r in records], dtype=np.int64)
    k = np.searchsorted(r_start, start, side="right") - 1
    kc = k.clip(0)
    inside = (k >= 0) & (end <= r_end[kc]) & (thread == r_thread[kc])
    return np.where(inside, k, -1)


def attribute_device_time(records: list[dict], n_calls: int) -> tuple[list[float], list[float]]:
    """Per `fib.timed_call` range, in order: (sum of device-event durations, first-start to
    last-end span), both in ms. Device events are tied to host events by the launch's linked
    correlation id; a host event belongs to the call whose range contains it on the same thread.
    Pure function of plain records (see `_kineto_records`), so it is tested without a GPU."""
    calls = sorted((r for r in records if not r["gpu"] and r["name"] == CALL_RANGE),
                   key=lambda r: r["start_ns"])
    if len(calls) != n_calls:
        raise TimingError(f"profiler saw {len(calls)} '{CALL_RANGE}' ranges for {n_calls} calls")

    # Two ways from a device event to its call: (1) the runtime/driver launch call (cudaLaunchKernel,
    # cuLaunchKernel: Triton and other direct launches) shares the kernel's CUPTI correlation id;
    # (2) the host op that launched it (an aten op) is its linked correlation id.
    host = [r for r in records if not r["gpu"]]
    by_launch: dict[int, int] = {}
    by_op: dict[int, int] = {}
    for r, k in zip(host, _contained(calls, host).tolist()):
        if k < 0:
            continue
        if any(w in r.get("activity", "") for w in ("runtime", "driver")):
            by_launch[r["correlation_id"]] = k
        else:
            by_op[r["correlation_id"]] = k
    host_ids = {r["correlation_id"] for r in host}
    per_call: list[list[tuple[int, int]]] = [[] for _ in calls]
    unattributed = 0
    for r in records:
        if not r["gpu"] or r["annotation"]:
            continue
        k = by_launch.get(r["correlation_id"])
        if k is None:
            k = by_op.get(r["linked_id"])
        if k is not None:
            per_call[k].append((r["start_ns"], r["end_ns"]))
        elif r["correlation_id"] not in host_ids and r["linked_id"] not in host_ids:
            unattributed += 1  # its launch is not among the host events at all
    if unattributed or any(not evs for evs in per_call):
        # Launches the profiler did not record on the host (Triton's cuLaunchKernel is not always
        # among Kineto's events; DeepGEMM's cuLaunchKernelEx was not, on an H200): a kernel sum
        # without them would be too small, so split the device timeline at the L2-flush kernels.
        split = _split_at_flushes(records, calls)
        if split is None and unattributed:
            raise TimingError(f"{unattributed} device event(s) launched during the timed calls could not be "
                              "attributed to a call (their launches are not among the profiler's host events)")
        per_call = split or per_call
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
    host = [r for r in records if not r["gpu"] and r["name"] != FLUSH_RANGE]
    flush_of = {r["correlation_id"]: k for r, k in zip(host, _contained(flushes, host).tolist()) if k >= 0}
    device = [r for r in records if r["gpu"] and not r["annotation"]]
    spans: dict[int, list[int]] = {}
    is_flush = np.zeros(len(device), dtype=bool)
    for i, r in enumerate(device):
        k = flush_of.get(r["linked_id"])
        if k is not None:
            is_flush[i] = True
            lo, hi = spans.get(k, [r["start_ns"], r["end_ns"]])
            spans[k] = [min(lo, r["start_ns"]), max(hi, r["end_ns"])]
    if len(spans) != len(calls):
        return None
    per_call: list[list[tuple[int, int]]] = [[] for _ in calls]
    if not device:
        return per_call
    # call k: starts at or after flush k's end and ends by flush k+1's start (the last call: no bound)
    f_start = np.array([spans[k][0] for k in range(len(calls))], dtype=np.int64)
    f_end = np.array([spans[k][1] for k in range(len(calls))], dtype=np.int64)
    start = np.array([r["start_ns"] for r in device], dtype=np.int64)
    end = np.array([r["end_ns"] for r in device], dtype=np.int64)
    k = np.searchsorted(f_end, start, side="right") - 1
    nxt = np.append(f_start[1:], np.iinfo(np.int64).max)
    keep = ~is_flush & (k >= 0) & (end <= nxt[k.clip(0)])
    for i in np.flatnonzero(keep).tolist():
        per_call[int(k[i])].append((int(start[i]), int(end[i])))
    return per_call
