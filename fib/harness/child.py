"""Child processes of a run (solution workers, the reference/judge process) and their one protocol.

Parent side: `Child.start(role, args, log)` runs `python -m fib.harness.child` in a session of its
own (so a kill takes the processes a solution started with it), with a socket for JSON messages and
its stdout/stderr (fd level: C++ and CUDA messages too) piped into a capped log. Child side: the
same module's `main` ignores SIGINT (the parent decides), starts a watchdog that kills the child's
whole process group when the parent disappears (SIGKILL of the parent included), and hands the
connection to the role's entry function.

Messages are JSON objects with a "kind" field, both ways; the kinds each role sends are listed in
its module (worker.py, judge.py).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from .logs import CappedLog

ROLES = {"worker": "fib.harness.worker:worker_main", "judge": "fib.harness.judge:judge_main",
         "standby": "fib.harness.standby:standby_main", "prewarm": "fib.harness.prewarm:prewarm_main"}  # standby: imports first, its role later (standby.py)


class Channel:
    """JSON messages over a connection (either side)."""

    def __init__(self, conn: Connection):
        self.conn = conn

    def send(self, kind: str, **fields: Any) -> None:
        self.conn.send_bytes(json.dumps({"kind": kind, **fields}, default=str).encode())

    def recv(self) -> dict:
        return json.loads(self.conn.recv_bytes().decode())

    def fileno(self) -> int:
        return self.conn.fileno()

    def close(self) -> None:
        try:
            self.conn.close()
        except OSError:
            pass


class Child:
    """The parent's handle on one child: process, channel, log, and the deadline of its phase."""

    def __init__(self, role: str, process: subprocess.Popen, channel: Channel, log: CappedLog):
        self.role = role
        self.process = process
        self.channel = channel
        self.log = log
        self.deadline = float("inf")
        self.phase = "start"
        self.ready = False
        self._reader = threading.Thread(target=self._pump, name=f"fib-log-{process.pid}", daemon=True)
        self._reader.start()

    @classmethod
    def start(cls, role: str, args: dict, log: CappedLog, start_budget: float,
              env: dict | None = None) -> "Child":
        parent_sock, child_sock = socket.socketpair()
        # The child imports the very fib package the parent runs (an installed copy elsewhere must not win).
        package_parent = str(Path(__file__).resolve().parent.parent.parent)
        path = os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH", "")) if p)
        child_env = {**os.environ, **(env or {}), "FIB_PARENT_PID": str(os.getpid()), "PYTHONUNBUFFERED": "1",
                     "PYTHONPATH": path}
        process = subprocess.Popen(
            [sys.executable, "-m", "fib.harness.child", role, str(child_sock.fileno()), json.dumps(args)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            pass_fds=(child_sock.fileno(),), start_new_session=True, env=child_env,
            cwd=os.getcwd())
        child_sock.close()
        channel = Channel(Connection(parent_sock.detach()))
        child = cls(role, process, channel, log)
        child.deadline = time.monotonic() + start_budget
        return child

    def _pump(self) -> None:
        stream = self.process.stdout
        while True:
            chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
            if not chunk:
                break
            self.log.write(chunk)
        self.log.flush()

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the child's whole session (what the solution started goes with it)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._finish()

    def ask_stop(self) -> None:
        """Ask the child to stop and go on (`stop` waits for it); asked once."""
        if getattr(self, "_stop_asked", False):
            return
        self._stop_asked = True
        try:
            self.channel.send("stop")
        except (OSError, BrokenPipeError):
            pass

    def stop(self, grace_s: float = 10.0) -> None:
        """Ask the child to stop (unless asked already), then kill what is left of its session."""
        self.ask_stop()
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        self.kill()

    def _finish(self) -> None:
        self.channel.close()
        self._reader.join(timeout=5)
        self.log.flush()

    def exit_description(self) -> str:
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "stopped answering"
        if code < 0:
            try:
                return f"killed by signal {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exited with code {code}"


# ---- child side -------------------------------------------------------------------------------
def _watch_parent(parent_pid: int) -> None:
    """Kill this child's process group once the parent is gone (reparented: ppid changes)."""
    while True:
        if os.getppid() != parent_pid:
            try:
                os.killpg(os.getpgid(0), signal.SIGKILL)
            finally:
                os._exit(137)
        time.sleep(0.2)


def main(argv: list[str]) -> None:
    role, fd, args = argv[0], int(argv[1]), json.loads(argv[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    parent = int(os.environ.get("FIB_PARENT_PID", os.getppid()))
    if os.getppid() != parent:  # the parent died before we got here
        os._exit(137)
    threading.Thread(target=_watch_parent, args=(parent,), name="fib-parent-watch", daemon=True).start()
    module_name, function_name = ROLES[role].split(":")
    import importlib
    entry = getattr(importlib.import_module(module_name), function_name)
    channel = Channel(Connection(fd))
    profile_dir = os.environ.get("FIB_PROFILE_CHILDREN")
    if profile_dir:  # harness-overhead work: where each child's own Python time goes (cProfile stats)
        import cProfile
        profiler = cProfile.Profile()
        try:
            profiler.runcall(entry, channel, args)
        finally:
            Path(profile_dir).mkdir(parents=True, exist_ok=True)
            profiler.dump_stats(str(Path(profile_dir) / f"{role}-{os.getpid()}.prof"))
    else:
        entry(channel, args)
    sys.stdout.flush()
    sys.stderr.flush()
    # Done and asked to stop: skip the interpreter's teardown (torch, CUDA and Triton take a second or
    # two to unload), which only delays the parent waiting for this process to exit.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
