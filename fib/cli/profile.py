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
    backend: Annotated[str, typer.Option(help="auto (nsys if found, else torch), nsys, torch or ncu (Nsight Compute: "
                                               "per-kernel DRAM/SM throughput, occupancy, registers, tensor pipe)")] = "auto",
    iterations: Annotated[Optional[int], typer.Option(min=1, help="captured calls per (solution, workload); "
                                                      "default 20, ncu 1")] = None,
    warmup: Annotated[int, typer.Option(min=0, help="calls before the capture starts")] = 3,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="run directory (default runs/profile-<time>)")] = None,
    local: Annotated[Optional[list[Path]], typer.Option("--local", help="dataset root(s)")] = None,
    seed: Annotated[int, typer.Option(help="input seed")] = 0,
    device: Annotated[Optional[str], typer.Option(help="device the inputs live on (default cuda:0; "
                                                  "with --cluster, each actor's GPU)")] = None,
    demo: Annotated[bool, typer.Option("--demo", help="profile fib's synthetic demo pipelines instead of a dataset")] = False,
    floor: Annotated[Optional[Path], typer.Option(help="ncu: floor.csv (fib report floor) or roofline.csv to set kernel time against the floor")] = None,
    ncu_kernels: Annotated[Optional[str], typer.Option(help="ncu: profile only kernels whose name matches this regex")] = None,
    ncu_launch_count: Annotated[Optional[int], typer.Option(min=1, help="ncu: profile at most this many kernels")] = None,
    cluster: Annotated[str, typer.Option(help="where the capture runs: local, or ray / ray://auto / ray://HOST:PORT "
                                               "(on a Ray actor next to a remote GPU; docs/cluster.md)")] = "local",
    gpus: Annotated[Optional[list[str]], typer.Option("--gpus", help="with --cluster: GPU kinds (Ray accelerator "
                                                      "types, e.g. H100,H200), one profile on each")] = None,
) -> None:
    """Run only the timed calls under a profiler and attribute every kernel to its pipeline stage
    (here, or with --cluster on a Ray actor next to a remote GPU, the files shipped back)."""
    from ..profile.cluster import run_profile
    if not demo and (not definitions or not solutions):
        raise typer.BadParameter("give --definitions and --solutions (or --demo)")
    try:
        run_dirs = run_profile(cluster=cluster, gpus=gpus, device=device, output=output,
                               definitions=definitions, solutions=solutions, workloads=workloads, backend=backend,
                               iterations=iterations, warmup=warmup, roots=local or [Path(".")], seed=seed,
                               demo=demo, floor=floor, ncu_kernels=ncu_kernels, ncu_launch_count=ncu_launch_count)
    except FibError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    for run_dir in run_dirs:
        ncu_md = run_dir / "profile" / "ncu.md"
        if ncu_md.exists():
            typer.echo(ncu_md.read_text())
            typer.echo(f"ncu table written to {ncu_md} (ncu_kernels.csv, ncu_workloads.csv, ncu_raw.csv)")
        typer.echo(f"profile written to {run_dir / 'profile'} (kernels.csv, stages.csv, leftout.csv, meta.json)")
        typer.echo(f"report: fib report stages {run_dir}")
