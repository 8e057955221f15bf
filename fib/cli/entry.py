"""`fib` / `python -m fib`: for `fib run` on this host, the standby children start before anything else
is imported (typer, rich, pydantic, the dataset: about a second on an H200 machine), so their torch
imports overlap all of it; then the CLI proper (fib/cli/app.py)."""
from __future__ import annotations

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
    app_main()
