"""`fib report ...`: the typer sub-app the CLI registers (`app.add_typer(report_app, name="report")`)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import FibError

report_app = typer.Typer(help="Reports built from run directories and profiler captures (no GPU needed).",
                         no_args_is_help=True)


@report_app.command("stages")
def stages_command(
    sources: Annotated[list[Path], typer.Argument(help="run directories, .nsys-rep, .sqlite or torch .json traces")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="report folder (default reports/stages-<name>/)")] = None,
    baseline: Annotated[Optional[str], typer.Option(help="solution the speedups are relative to (default: the best per stage)")] = None,
    definition: Annotated[Optional[Path], typer.Option(help="definition JSON: stage order and kernel regexes for raw captures")] = None,
    workloads: Annotated[Optional[list[Path]], typer.Option(help="JSONL of workloads or traces: axes of raw captures' workloads")] = None,
    title: Annotated[Optional[str], typer.Option(help="report title")] = None,
) -> None:
    """Per-stage kernel tables, pipeline summaries, head-to-head, Amdahl and dispatch tables, plots."""
    from ..report.stages import report_stages
    try:
        report = report_stages(sources, output, baseline=baseline, definition=definition,
                               workloads=workloads, title=title)
    except (FibError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"report written to {report}")


@report_app.command("ncu")
def ncu_command(
    source: Annotated[Path, typer.Argument(help="run directory of `fib profile --backend ncu`, or an `ncu --csv --page raw` file")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="report folder (default reports/ncu-<name>/)")] = None,
    floor: Annotated[Optional[Path], typer.Option(help="floor.csv (fib report floor) or roofline.csv: kernel time against the floor")] = None,
    definition: Annotated[Optional[Path], typer.Option(help="definition JSON: stage order and kernel regexes for a bare CSV")] = None,
    workloads: Annotated[Optional[list[Path]], typer.Option(help="JSONL of workloads or traces: axes of a bare CSV's workloads")] = None,
    busy_pct: Annotated[Optional[float], typer.Option(help="a unit at this % of peak or more is the limiter (default 60)")] = None,
    low_occupancy_pct: Annotated[Optional[float], typer.Option(help="latency verdicts name occupancy below this % (default 25)")] = None,
    sm_count: Annotated[Optional[int], typer.Option(help="SMs of the GPU, for the small-grid verdict (default: from the run)")] = None,
) -> None:
    """Per workload: stage, kernel, time, DRAM %, SM %, occupancy, registers, tensor %, and what bounds it."""
    from ..report.ncu import report_ncu
    try:
        report = report_ncu(source, output, floor=floor, definition=definition, workloads=workloads,
                            busy_pct=busy_pct, low_occupancy_pct=low_occupancy_pct, sm_count=sm_count)
    except (FibError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(report.read_text())
    typer.echo(f"report written to {report}")


@report_app.command("floor")
def floor_command(
    run_dir: Annotated[Path, typer.Argument(help="a `fib run` directory")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="report folder (default reports/floor-<name>/)")] = None,
    ceilings: Annotated[Optional[Path], typer.Option(help="ceilings JSON (measure_ceilings; default: run.json's)")] = None,
    recompute: Annotated[bool, typer.Option(help="count the floor of traces that have none from the dataset and their seeds (kept in RUN/floor.jsonl)")] = False,
    device: Annotated[str, typer.Option(help="where --recompute builds the inputs")] = "cpu",
) -> None:
    """Per definition, solution and workload: latency, floor µs and % of floor, where the definition's family declares a floor."""
    from ..report.floor import report_floor
    try:
        report = report_floor(run_dir, output, ceilings=ceilings, recompute_on=device if recompute else None)
    except (FibError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(report.read_text())
    typer.echo(f"report written to {report}")
