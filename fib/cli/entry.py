"""`fib` / `python -m fib`: for `fib run` on this host, the standby children start before anything else
is imported (typer, rich, pydantic, the dataset: about a second on an H200 machine), so their torch
imports overlap all of it; then the CLI proper (fib/cli/app.py)."""
from __future__ import annotations

import atexit
import os
import sys


def _wants_standbys(argv: list[str]) -> bool:
    """`run` on the local cluster, not asking for help."""
    if not argv or argv[0] != "run" or "--help" in argv or "-h" in argv:
        return False
    for i, token in enumerate(argv):
        if token == "--cluster" and i + 1 < len(argv):
            return argv[i + 1] == "local"
        if token.startswith("--cluster="):
            return token.split("=", 1)[1] == "local"
    return True


def main() -> None:
    if _wants_standbys(sys.argv[1:]):
        from ..harness.standby import POOL, STANDBYS
        POOL.start(STANDBYS)
    from .app import main as app_main
    profile_dir = os.environ.get("FIB_PROFILE_CHILDREN")
    profiler = None
    if profile_dir:  # harness-overhead work: the parent's own statistics beside its children's
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    try:
        app_main()
    except SystemExit as exc:
        code = exc.code
    else:
        code = 0
    if profiler is not None:
        from pathlib import Path
        profiler.disable()
        Path(profile_dir).mkdir(parents=True, exist_ok=True)
        profiler.dump_stats(str(Path(profile_dir) / f"parent-{os.getpid()}.prof"))
    _exit(code)


def _exit(code) -> None:
    """End the process once the command is done: the atexit handlers (the standby pool's, logging's),
    stdout and stderr flushed, then os._exit, skipping the interpreter's teardown of every module and
    object (0.3-0.5 s after a `fib run`, against ~5 ms: it frees nothing the OS would not). Every file
    fib writes is closed by then: run directories are written whole, and logs by handlers atexit closes."""
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # SystemExit("message"): Python prints it to stderr and exits with 1
        print(code, file=sys.stderr)
        status = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)
