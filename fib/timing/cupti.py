"""The cupti timer: kernel time per call from CUPTI through torch.profiler (Kineto), attributed to
each `fib.timed_call` range by correlation id (the L2 flush, launched outside the range, is excluded)."""
from __future__ import annotations

import warnings

import numpy as np

from ..errors import TimingError
from .flush import FLUSH_RANGE
from .rotation import Rotation

CALL_RANGE = "fib.timed_call"

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
            kernel_ms, _ = cupti_times(rot, lambda: None, 2)
            _CUPTI_PROBE[key] = (True, f"Kineto probe attributed kernels to {len(kernel_ms)} calls")
        except Exception as exc:  # any failure means: not usable here
            _CUPTI_PROBE[key] = (False, f"{type(exc).__name__}: {exc}")
    return _CUPTI_PROBE[key]


def cupti_times(rot: Rotation, flush, n: int) -> tuple[list[float], list[float]]:
    import torch
    torch.cuda.synchronize()
    with warnings.catch_warnings():  # "Profiler clears events at the end of each cycle": expected
        warnings.simplefilter("ignore", UserWarning)
        prof = _profile_calls(rot, flush, n)
    return attribute_device_time(_kineto_records(prof), n)


def _profile_calls(rot: Rotation, flush, n: int):
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
    host_ids = {r["correlation_id"] for r in records if not r["gpu"]}
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
