"""What every fib command shares: the consoles, list options, loading and selecting from a dataset,
devices, and the one way to fail with exit code 2 and a reason."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 200)


def split_list(values: Optional[List[str]]) -> list[str]:
    return [v for value in values or [] for v in value.split(",") if v]


def _load(local: Optional[List[str]]):
    from ..dataset import load_dataset
    roots = [Path(p) for p in split_list(local)] or None
    return load_dataset(roots)


def _print_problems(data, *, limit: int | None = None) -> None:
    problems = data.problems if limit is None else data.problems[:limit]
    for problem in problems:  # one line each (soft_wrap), so a log of them greps by file
        console.print(f"[red]problem[/red] {problem.render()}", highlight=False, markup=True, soft_wrap=True)
    if limit is not None and len(data.problems) > limit:
        console.print(f"... and {len(data.problems) - limit} more (run `fib validate`)")


def _fail(message: str, code: int = 2):
    console.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def _select(data, definitions, solutions, workloads):
    """Resolve the user's selections; unknown names are errors that list what exists."""
    from ..dataset import workload_matches
    def_names = split_list(definitions) or sorted(data.definitions)
    unknown = [d for d in def_names if d not in data.definitions]
    if unknown:
        _fail(f"unknown definition(s) {', '.join(unknown)}; known: {', '.join(sorted(data.definitions)) or 'none'}")
    sol_names = split_list(solutions)
    chosen_sols, chosen_work = {}, {}
    for d in def_names:
        available = data.solutions.get(d, {})
        chosen_sols[d] = [s for s in sol_names if s in available] if sol_names else sorted(available)
        chosen_work[d] = [w.uuid for w in data.workloads.get(d, []) if workload_matches(w, split_list(workloads))]
    missing = [s for s in sol_names if not any(s in data.solutions.get(d, {}) for d in def_names)]
    if missing:
        known = sorted({s for d in def_names for s in data.solutions.get(d, {})})
        _fail(f"unknown solution(s) {', '.join(missing)} for {', '.join(def_names)}; known: {', '.join(known)}")
    def_names = [d for d in def_names if chosen_sols[d] and chosen_work[d]]
    return def_names, chosen_sols, chosen_work


def _default_devices() -> list[str]:
    from ..device import cuda_device_count
    count = cuda_device_count()
    return [f"cuda:{i}" for i in range(count)] if count else ["cpu"]


def _normalise_devices(devices: list[str]) -> list[str]:
    result = []
    for d in devices:
        d = d.strip().lower()
        result.append(f"cuda:{d}" if d.isdigit() else ("cuda:0" if d == "cuda" else d))
    return result


def _check_devices(devices: list[str]) -> list[str]:
    """Every device named exists here (exit 2 otherwise)."""
    import re
    from ..device import cuda_device_count
    count = cuda_device_count()
    for d in devices:
        if d == "cpu":
            continue
        match = re.fullmatch(r"cuda:(\d+)", d)
        if not match:
            _fail(f"--devices: {d!r} is not a device (use cpu, cuda, cuda:N or N)")
        if int(match.group(1)) >= count:
            _fail(f"--devices: {d} does not exist here ({count} CUDA device(s) visible)")
    if len(set(devices)) != len(devices) and any(d != "cpu" for d in devices):
        _fail(f"--devices: {', '.join(devices)} names a GPU twice; two workers would time on one GPU at once")
    return devices
