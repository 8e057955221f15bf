"""Children started before the run knows what they will be: `fib run` starts them as its first act,
so their Python, torch and fib imports (3-4 s on an H200 machine) overlap the parent's own start-up
(finding the GPUs through the driver, loading the dataset, planning), and the runner then makes one
the judge and another the first solution's worker instead of starting them from scratch.

A standby touches no device and runs no solution code until it is told what to be: `become{role,
args}`, after which it is exactly the child `Child.start(role, args, ...)` would have started (same
entry function, same arguments; its output before that goes into the log of the role it takes). Before
that it only initialises the CUDA driver (cuInit: no context, no device memory); a worker's device gets
its primary context as soon as the role arrives, while the imports finish.
A worker whose solution sets environment variables of its own (`worker_env`, e.g. LD_PRELOAD) is
never taken from a standby: those variables must be there when the process starts.
"""
from __future__ import annotations

import atexit
import importlib
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from .child import ROLES, Channel, Child
from .logs import CappedLog

STANDBYS = 2  # children `fib run` starts before it knows their roles: the judge and the first worker

# What a worker and the judge import before their first message (their constructors' imports).
PRELOAD = ("torch", "fib.timing.measure", "fib.schema", "fib.schema.config", "fib.harness.torch_state",
           "fib.harness.inputs", "fib.harness.check", "fib.harness.call", "fib.harness.worker",
           "fib.harness.judge", "safetensors.torch")


# When this process (a standby) entered, finished its imports, was told its role, had the driver and its
# device's context (wall clock): the role's `ready` message carries them (the run's timeline shows them).
STARTUP: dict = {}


def startup_marks() -> dict:
    """For a role's `ready` message: STARTUP, when this process was a standby (else nothing)."""
    marks = {k: v for k, v in STARTUP.items() if v is not None}
    return {"startup": marks} if marks else {}


def standby_main(channel: Channel, args: dict) -> None:
    """Child side: import, wait to be told the role, then be that role. Beside the imports a thread
    initialises the CUDA driver (ctypes releases the GIL: it runs in parallel) and waits for the role;
    a worker's role names its device, whose primary context (the one torch uses) the thread creates
    while the imports go on: 0.2-0.7 s of a first pair's start on an H200 machine."""
    STARTUP["entered"] = time.time()
    early: dict = {}
    thread = threading.Thread(target=_driver_and_role, args=(channel, early), name="fib-standby-early",
                              daemon=True)
    thread.start()
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:  # the role itself will meet it and say so
            pass
    STARTUP["preloaded"] = time.time()
    thread.join()
    STARTUP["told"] = early.get("told")
    if "error" in early:
        raise early["error"]
    message = early["message"]
    if message.get("kind") != "become":
        return  # stop (or anything else): never used
    role = message["role"]
    module_name, function_name = ROLES[role].split(":")
    entry = getattr(importlib.import_module(module_name), function_name)
    entry(channel, message["args"])


def _driver_and_role(channel: Channel, early: dict) -> None:
    try:
        from ..device import libcuda
        lib = libcuda()
        if lib is not None:
            lib.cuInit(0)
            STARTUP["cuinit_done"] = time.time()
        early["message"] = message = channel.recv()
        early["told"] = time.time()
        device = str((message.get("args") or {}).get("device", ""))
        if lib is not None and message.get("kind") == "become" and message.get("role") == "worker" \
                and device.startswith("cuda"):
            _retain_primary_context(lib, int(device.partition(":")[2] or 0))
            STARTUP["context_done"] = time.time()
    except BaseException as exc:  # EOF from a parent that went away, mostly: the main thread re-raises it
        early["error"] = exc


def _retain_primary_context(lib, index: int) -> None:
    """The device's primary context, created now (torch's first CUDA call then finds it); failures are
    left for torch to meet and report."""
    import ctypes
    dev = ctypes.c_int()
    if lib.cuDeviceGet(ctypes.byref(dev), index) != 0:
        return
    ctx = ctypes.c_void_p()
    lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev)


class StandbyPool:
    """Parent side: the standbys of one `fib run`, taken by the runner or killed at exit."""

    def __init__(self):
        self._free: list[tuple[Child, CappedLog]] = []
        self._lock = threading.Lock()
        self._dir: Path | None = None
        self.started = 0
        self.taken: list[str] = []

    def start(self, count: int) -> None:
        """Have `count` standbys started in all (the CLI calls this first thing; a second call with
        the same count starts none)."""
        count -= self.started
        if count <= 0:
            return
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="fib-standby-"))
            atexit.register(self.close)
        for _ in range(count):
            log = CappedLog(self._dir / f"standby-{self.started}.log")
            child = Child.start("standby", {}, log, start_budget=float("inf"))
            child.spawned = time.time()
            self._free.append((child, log))
            self.started += 1

    def take(self, role: str, args: dict, log: CappedLog, start_budget: float,
             env: dict | None = None) -> Child | None:
        """A standby made into `role` with `args`, writing to `log` from now on (what it printed
        before is copied in first); None when there is none alive, or `env` asks for variables the
        process would have needed at its start."""
        if env and any(os.environ.get(k) != v for k, v in env.items()):
            return None
        with self._lock:
            while self._free:
                child, early = self._free.pop(0)
                if not child.alive():
                    child.kill()
                    continue
                early.flush()
                child.log = log  # the pump thread writes to whatever `log` is
                if early.path.exists() and early.path.stat().st_size:
                    log.write(early.path.read_bytes())
                try:
                    child.channel.send("become", role=role, args=args)
                except OSError:
                    child.kill()
                    continue
                child.role = role
                child.deadline = time.monotonic() + start_budget
                self.taken.append(role)
                return child
        return None

    def close(self) -> None:
        """Kill the standbys nobody took."""
        with self._lock:
            free, self._free = self._free, []
        for child, _ in free:
            child.kill()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


POOL = StandbyPool()
