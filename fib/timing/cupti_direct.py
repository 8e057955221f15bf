"""A kernels-only CUPTI activity session, through ctypes against the libcupti torch loaded.

Why: any Kineto session (torch's profiler) turns on CUPTI's runtime and driver API activity as well as
the device activity, and a Triton launch makes a dozen driver calls (pointer attribute queries, the
launch itself): on an H200 that tracing cost ~190 us per triton_fused call at decode
(reports/harness_speed_h200/README.md, session 4). This session enables only the device kinds
(concurrent kernel, memcpy, memset), so a launch pays CUPTI's kernel timestamping and nothing else.

The records come back as (name, start ns, end ns), the shape `fib.timing.cupti.attribute_by_markers`
reads; the session is only used through it, so a layout this module misreads (a CUPTI whose records
moved) shows up as missing markers and the caller falls back to Kineto. Fields read, from
cupti_activity.h (CUDA 12/13; CUpti_ActivityKernel4 through 10 keep them where they were):
every record's `kind` (uint32 at 0); kernel records' `start`/`end` (uint64 at 16/24) and `name`
(const char * at 104); memcpy and memset records' `start`/`end` (uint64 at 16/24).
"""
from __future__ import annotations

import ctypes
import glob
import os
import sys
import threading
import time

from ..errors import TimingError

LIB_ENV = "FIB_LIBCUPTI"  # path of the libcupti to use (default: the one torch loaded, else torch's wheel's)

KIND_MEMCPY, KIND_MEMSET, KIND_KERNEL, KIND_CONCURRENT_KERNEL = 1, 2, 3, 10
ENABLED_KINDS = (KIND_CONCURRENT_KERNEL, KIND_MEMCPY, KIND_MEMSET)
KERNEL_START, KERNEL_END, KERNEL_NAME = 16, 24, 104
COPY_START, COPY_END = 16, 24
_SUCCESS, _MAX_LIMIT_REACHED = 0, 12
_FLUSH_FORCED = 1
_BUFFER_BYTES = 32 << 20  # one buffer per session: see KernelSession on why it must not fill
_ALIGN = 8  # ACTIVITY_RECORD_ALIGNMENT
RECORD_BYTES = 512  # a bound on one record's size (a CUDA 13 kernel record is ~200 bytes)

_REQUEST = ctypes.CFUNCTYPE(None, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_size_t),
                            ctypes.POINTER(ctypes.c_size_t))
_COMPLETE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t,
                             ctypes.c_size_t)


def find_libcupti() -> str | None:
    """The libcupti to load: $FIB_LIBCUPTI, else the one already mapped into this process (torch's CUDA
    library links it: loading a second copy would give the process two CUPTIs), else one from the
    NVIDIA wheels on sys.path, else the CUDA toolkit's. None when there is none."""
    if os.environ.get(LIB_ENV):
        return os.environ[LIB_ENV]
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                path = line.rstrip("\n").split(" ")[-1]
                if "/libcupti.so" in path:
                    return path
    except OSError:
        pass
    for root in sys.path:
        hits = sorted(glob.glob(os.path.join(root or ".", "nvidia", "*", "lib", "libcupti.so*")))
        if hits:
            return hits[-1]
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    hits = sorted(glob.glob(os.path.join(home, "extras", "CUPTI", "lib64", "libcupti.so*")))
    return hits[-1] if hits else None


def read_record(address: int, names: dict[int, str] | None = None) -> tuple[str, int, int] | None:
    """(name, start ns, end ns) of the activity record at `address`, None for a kind fib does not time.
    `names` caches kernel names by their string's address (CUPTI keeps one string per function)."""
    kind = ctypes.c_uint32.from_address(address).value
    if kind in (KIND_KERNEL, KIND_CONCURRENT_KERNEL):
        start = ctypes.c_uint64.from_address(address + KERNEL_START).value
        end = ctypes.c_uint64.from_address(address + KERNEL_END).value
        ptr = ctypes.c_void_p.from_address(address + KERNEL_NAME).value
        if not ptr:
            return "", start, end
        cache = {} if names is None else names
        name = cache.get(ptr)
        if name is None:
            name = cache[ptr] = ctypes.string_at(ptr).decode("utf-8", "replace")
        return name, start, end
    if kind in (KIND_MEMCPY, KIND_MEMSET):
        start = ctypes.c_uint64.from_address(address + COPY_START).value
        end = ctypes.c_uint64.from_address(address + COPY_END).value
        return ("memcpy" if kind == KIND_MEMCPY else "memset"), start, end
    return None


class _Cupti:
    """The loaded library, its buffer callbacks (registered once per process) and the completed buffers."""

    def __init__(self, path: str):
        self.path = path
        self.lib = ctypes.CDLL(path)
        for name in ("cuptiActivityRegisterCallbacks", "cuptiActivityEnable", "cuptiActivityDisable",
                     "cuptiActivityFlushAll", "cuptiActivityGetNextRecord", "cuptiGetResultString",
                     "cuptiActivityGetNumDroppedRecords"):
            getattr(self.lib, name).restype = ctypes.c_int
        self.lock = threading.Lock()
        self.live: dict[int, ctypes.Array] = {}  # aligned address -> the ctypes buffer holding it
        self.free: list[tuple[int, ctypes.Array]] = []  # buffers read back, handed out again
        self.done: list[tuple[int, int]] = []  # (address, valid bytes) handed back by CUPTI
        self.dropped = 0
        self.completed = 0  # buffers CUPTI handed back (a session that fills one sees 2 or more)
        self._request = _REQUEST(self._on_request)  # kept alive: CUPTI calls them from its threads
        self._complete = _COMPLETE(self._on_complete)
        self.check(self.lib.cuptiActivityRegisterCallbacks(self._request, self._complete),
                   "cuptiActivityRegisterCallbacks")

    def _on_request(self, buffer, size, max_records) -> None:
        with self.lock:
            if self.free:
                address, raw = self.free.pop()
            else:
                raw = ctypes.create_string_buffer(_BUFFER_BYTES + _ALIGN)
                address = (ctypes.addressof(raw) + _ALIGN - 1) & ~(_ALIGN - 1)
            self.live[address] = raw
        buffer[0] = address
        size[0] = _BUFFER_BYTES
        max_records[0] = 0

    def _on_complete(self, context, stream_id, buffer, size, valid) -> None:
        dropped = ctypes.c_size_t(0)
        if self.lib.cuptiActivityGetNumDroppedRecords(context, stream_id, ctypes.byref(dropped)) == _SUCCESS:
            self.dropped += int(dropped.value)
        with self.lock:
            self.done.append((int(buffer or 0), int(valid)))
            self.completed += 1

    def check(self, result: int, what: str) -> None:
        if result != _SUCCESS:
            text = ctypes.c_char_p()
            self.lib.cuptiGetResultString(result, ctypes.byref(text))
            message = text.value.decode() if text.value else f"CUPTI error {result}"
            raise TimingError(f"{what} failed: {message} ({self.path})")

    def records(self) -> list[tuple[str, int, int]]:
        """Every timed record in the completed buffers, which are then freed."""
        with self.lock:
            done, self.done = self.done, []
        out: list[tuple[str, int, int]] = []
        names: dict[int, str] = {}
        record = ctypes.c_void_p()
        for address, valid in done:
            try:
                while valid:
                    result = self.lib.cuptiActivityGetNextRecord(ctypes.c_void_p(address), ctypes.c_size_t(valid),
                                                                 ctypes.byref(record))
                    if result == _MAX_LIMIT_REACHED:
                        break
                    self.check(result, "cuptiActivityGetNextRecord")
                    row = read_record(int(record.value), names)
                    if row is not None:
                        out.append(row)
            finally:
                with self.lock:
                    raw = self.live.pop(address, None)
                    if raw is not None:
                        self.free.append((address, raw))
        return out


_LOADED: dict[str, _Cupti] = {}


def _cupti() -> _Cupti:
    path = find_libcupti()
    if path is None:
        raise TimingError("no libcupti found (set FIB_LIBCUPTI to its path)")
    if path not in _LOADED:
        try:
            _LOADED[path] = _Cupti(path)
        except OSError as exc:
            raise TimingError(f"cannot load {path}: {exc}") from exc
    return _LOADED[path]


def check_timestamps(events: list[tuple[str, int, int]], host_ns: int) -> None:
    """Refuse records whose timestamps cannot be nanoseconds: their span (first start to last end) longer
    than the session lasted on the host clock, or an end before its start. Seen on an H200 (2026-12-02): in
    a process where torch's profiler (Kineto) had run a session before this one was first made, the kernel
    records came back in another unit (a 40 us call read 84 us), and once Kineto's own buffer callbacks had
    replaced these, with no records at all; both now fall back to Kineto's session, which converts its own
    clock."""
    if not events:
        return
    first = min(e[1] for e in events)
    last = max(e[2] for e in events)
    if any(e[2] < e[1] for e in events):
        raise TimingError("CUPTI returned a record that ends before it starts")
    if last - first > host_ns * 1.02 + 200_000:
        raise TimingError(f"CUPTI's records span {last - first} ns in a session of {host_ns} ns on the host "
                          "clock: their timestamps are not nanoseconds here (another profiler in this process "
                          "may have set its own clock)")


class KernelSession:
    """Device activity (kernels, memcpy, memset) recorded between `start()` and `stop()` (or over a
    `with` block); `stop()` returns it as (name, start ns, end ns), and keeps it in `events`. The caller
    synchronizes the device before `stop()`.

    The buffer callbacks are Python (ctypes), so they take the GIL. CUPTI hands a buffer back either
    when it is flushed (`stop()`: this thread waits in the flush with the GIL released) or when it
    fills, from CUPTI's own thread, possibly while this thread holds the GIL inside a launch: so a
    session must stay within one buffer. `fits(records)` says whether a session of that many records
    does (`fib.timing.cupti` counts one call's records first), and a session that filled one anyway
    is refused at `stop()`."""

    def __init__(self):
        self.cupti = _cupti()
        self.enabled: list[int] = []
        self.events: list[tuple[str, int, int]] = []
        self._host_start = 0  # perf_counter_ns() at start(): stop() checks the records' span against it

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def start(self) -> None:
        c = self.cupti
        c.records()  # drop anything left over from an earlier session
        c.dropped = c.completed = 0
        self._host_start = time.perf_counter_ns()
        try:
            for kind in ENABLED_KINDS:
                c.check(c.lib.cuptiActivityEnable(kind), f"cuptiActivityEnable({kind})")
                self.enabled.append(kind)
        except TimingError:
            self._disable()
            raise

    def _disable(self) -> None:
        for kind in self.enabled:
            self.cupti.lib.cuptiActivityDisable(kind)
        self.enabled = []

    def stop(self) -> list[tuple[str, int, int]]:
        c = self.cupti
        host_ns = time.perf_counter_ns() - self._host_start
        try:
            c.check(c.lib.cuptiActivityFlushAll(0), "cuptiActivityFlushAll")
        finally:
            self._disable()
            c.lib.cuptiActivityFlushAll(_FLUSH_FORCED)
        completed = c.completed
        self.events = c.records()
        if c.dropped:
            raise TimingError(f"CUPTI dropped {c.dropped} activity record(s)")
        if completed > 1:
            raise TimingError(f"{len(self.events)} records filled {completed - 1} CUPTI buffer(s) of "
                              f"{_BUFFER_BYTES >> 20} MiB")
        check_timestamps(self.events, host_ns)
        return self.events

    @staticmethod
    def fits(records: int) -> bool:
        """Whether `records` activity records fit one buffer (at most RECORD_BYTES each)."""
        return records * RECORD_BYTES <= _BUFFER_BYTES
