"""`fib selftest`: the adversarial fakes of fib/selftest.py against a dataset's own definitions."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table


def selftest_command(
    local: Optional[List[str]] = typer.Option(None, "--local", help="Dataset root (repeatable)."),
    definitions: Optional[List[str]] = typer.Option(None, "--definitions", "-d", help="Definitions to test."),
    workloads: Optional[List[str]] = typer.Option(None, "--workloads", "-w", help="Workload uuids or axis filters "
                                                  "(default: each definition's smallest workload)."),
    fakes: Optional[List[str]] = typer.Option(None, "--fakes", help="Only these fakes (default: all)."),
    devices: Optional[List[str]] = typer.Option(None, "--devices", "--device", help="Devices (default: all "
                                                "GPUs, else cpu)."),
    timeout: float = typer.Option(30.0, "--timeout", help="Seconds per pair (a later workload's first call too)."),
    jit_timeout: float = typer.Option(15.0, "--jit-timeout", help="Seconds for a fake's first call: what the "
                                      "hanging fake costs."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Run directory (default: a temp folder)."),
):
    """Run fake solutions that must fail (zeros, NaN, cached results, writes into inputs, a patched
    checker, crashes, hangs) and must pass (the definition's own reference, one that changes torch's
    global state) on each definition's workloads, and compare every status with its expectation.
    Exit 1 if any differs: a tolerance that passes zeros shows up here."""
    from .common import _check_devices, _default_devices, _fail, _load, _normalise_devices, _select, console, out, \
        split_list
    from ..dataset import load_dataset
    from ..harness.runner import Runner, RunPlan
    from ..schema.config import RunConfig
    from ..selftest import FAKES, compare, write_fakes

    unknown = [f for f in split_list(fakes) if f not in FAKES]
    if unknown:
        _fail(f"--fakes: unknown {', '.join(unknown)}; known: {', '.join(FAKES)}")
    base = _load(local)
    def_names, _, works = _select(base, definitions, None, workloads)
    if not def_names:
        _fail("nothing to test: no definition with workloads matches the selection")
    if not workloads:  # the two smallest workloads of each definition (one may have an all-zero reference)
        for d in def_names:
            items = sorted((w for w in base.workloads[d] if w.uuid in works[d]), key=lambda w: _size(w.axes))
            works[d] = [w.uuid for w in items[:2]]
    scratch = Path(tempfile.mkdtemp(prefix="fib-selftest-"))
    expectations = []
    for d in def_names:
        expectations += write_fakes(scratch, base.definitions[d], split_list(fakes) or None)
    data = load_dataset(list(base.roots) + [scratch])
    sols = {d: sorted(s for s in data.solutions.get(d, {}) if s.startswith("selftest_")) for d in def_names}
    devs = _check_devices(_normalise_devices(split_list(devices)) or _default_devices())
    config = RunConfig(warmup_runs=1, iterations=5, num_trials=1, timeout_s=timeout, jit_timeout_s=jit_timeout,
                       max_failures=100)
    plan = RunPlan(config=config, definitions=def_names, solutions=sols, workloads=works, devices=devs,
                   cache_dir=os.environ.get("FIB_CACHE_DIR"))
    run_dir = output or scratch / "run"
    console.print(f"selftest: {sum(len(v) for v in sols.values())} fakes x {sum(len(v) for v in works.values())} "
                  f"workload(s) on {', '.join(devs)} (the hanging fake costs --jit-timeout {jit_timeout:.0f} s)")
    result = Runner(data, plan, run_dir).run(command=["fib", "selftest"])
    rows = compare(expectations, result.traces)
    table = Table(title="fib selftest", title_justify="left")
    for col in ("fake", "workload", "expected", "got", "", "what it proves"):
        table.add_column(col)
    for r in sorted(rows, key=lambda r: (r["solution"], r["workload"])):
        mark = "[dim]n/a[/dim]" if r["ok"] is None else ("[green]ok[/green]" if r["ok"] else "[red]WRONG[/red]")
        table.add_row(r["solution"].removeprefix("selftest_"), r["workload"][:12], r["expected"], r["got"], mark,
                      r["proves"])
    out.print(table)
    from ..selftest import degenerate_workloads
    for uuid in sorted(degenerate_workloads(result.traces)):
        console.print(f"[yellow]note:[/yellow] workload {uuid}'s reference is all zeros: zeros is the right answer "
                      "there, so the wrong-output fakes cannot fail on it (n/a)", highlight=False)
    for r in rows:
        if r["ok"] is False:
            console.print(f"[red]{r['solution']}[/red] on {r['workload']}: expected {r['expected']}, got {r['got']}: "
                          f"{r['reason'][:300]}", highlight=False)
    for problem in result.problems:
        console.print(f"[red]definition problem:[/red] {problem}", highlight=False)
    for where, trivial in result.vacuous.items():
        console.print(f"[bold red]vacuous tolerance[/bold red] on {where}: {', '.join(trivial)} would PASS",
                      highlight=False)
    console.print(f"run directory: {run_dir}", highlight=False)
    bad = [r for r in rows if r["ok"] is False]
    if bad or result.problems or not any(r["ok"] for r in rows if r["expected"] != "PASSED"):
        raise typer.Exit(1)


def _size(axes: dict) -> int:
    size = 1
    for value in axes.values():
        size *= max(1, int(value))
    return size
