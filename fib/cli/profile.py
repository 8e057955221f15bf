"""`fib profile`: the typer command the CLI registers (`app.command("profile")(profile_command)`)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import FibError


def profile_command(
    definitions: Annotated[list[str], typer.Option("--definitions", "-d", help="definition names")] = [],  # noqa: B006
    solutions: Annotated[list[str], typer.Option("--solutions", "-s", help="solution names")] = [],  # noqa: B006
    workloads: Annotated[Optional[list[str]], typer.Option("--workloads", "-w", help="workload uuids (or 8-char prefixes)")] = None,
    backend: Annotated[str, typer.Option(help="auto (nsys if found, else torch), nsys or torch")] = "auto",
    iterations: Annotated[int, typer.Option(min=1, help="captured calls per (solution, workload)")] = 20,
    warmup: Annotated[int, typer.Option(min=0, help="calls before the capture starts")] = 3,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="run directory (default runs/profile-<time>)")] = None,
    local: Annotated[Optional[list[Path]], typer.Option("--local", help="dataset root(s)")] = None,
    seed: Annotated[int, typer.Option(help="input seed")] = 0,
    device: Annotated[str, typer.Option(help="device the inputs live on")] = "cuda:0",
    demo: Annotated[bool, typer.Option("--demo", help="profile fib's synthetic demo pipelines instead of a dataset")] = False,
) -> None:
    """Run only the timed calls under a profiler and attribute every kernel to its pipeline stage."""
    from ..profile.driver import profile
    if not demo and (not definitions or not solutions):
        raise typer.BadParameter("give --definitions and --solutions (or --demo)")
    try:
        run_dir = profile(definitions=definitions, solutions=solutions, workloads=workloads, backend=backend,
                          iterations=iterations, warmup=warmup, output=output, roots=local or [Path(".")],
                          seed=seed, device=device, demo=demo)
    except FibError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"profile written to {run_dir / 'profile'} (kernels.csv, stages.csv, leftout.csv, meta.json)")
    typer.echo(f"report: fib report stages {run_dir}")
