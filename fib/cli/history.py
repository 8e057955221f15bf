"""CLI commands for history, compare and dashboard; the lead registers them in fib/cli.py as
`fib history add` (history_app), `fib compare` (compare_command), `fib dashboard` (dashboard_command).

Exit codes: 0 fine, 1 a regression (compare), 2 a usage error (bad selector, missing directory,
unusable database).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import FibError

history_app = typer.Typer(help="The history store of runs (SQLite).", no_args_is_help=True)



@history_app.callback()
def _history_group() -> None:
    """The history store of runs (SQLite): `fib history add RUN_DIR...`."""


DB_HELP = "history database (default: $FIB_HISTORY_DB, else ~/.local/share/fib/history.db)"


def _usage_error(exc: FibError) -> typer.Exit:
    Console(stderr=True).print(f"[bold red]error:[/] {escape(exc.render())}", highlight=False)
    return typer.Exit(2)


@history_app.command("add")
def history_add(
    run_dirs: List[Path] = typer.Argument(..., help="run directories written by `fib run`"),
    db: Optional[Path] = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Ingest run directories into the history database (adding a run twice changes nothing)."""
    from ..results.history import HistoryDB, load_run_dirs

    console, errors = Console(soft_wrap=True), Console(stderr=True, soft_wrap=True)
    failed = False
    try:
        store = HistoryDB(db)
    except FibError as exc:
        raise _usage_error(exc)
    with store:
        for run_dir in run_dirs:  # one bad directory does not stop the others
            try:  # a cluster run with several GPU kinds is stored as one run per kind
                loaded = [(run, problems, store.add_run(run)) for run, problems in load_run_dirs(run_dir)]
            except FibError as exc:
                errors.print(f"[bold red]error:[/] {escape(exc.render())}", highlight=False)
                failed = True
                continue
            for run, problems, added in loaded:
                for problem in problems:
                    console.print(f"[yellow]warning:[/] {escape(problem)}", highlight=False)
                what = "added" if added else "already present"
                console.print(escape(f"{run_dir}: {what} as run:{run.run_id} ({len(run.results)} results, "
                                     f"commit {(run.commit or '?')[:10]}, {run.hardware or '?'})"), highlight=False)
        console.print(escape(f"history: {store.path}"), highlight=False)
    if failed:
        raise typer.Exit(2)


def compare_command(
    baseline: str = typer.Argument(..., help="run directory (RUN_DIR@KIND: one GPU kind of a cluster run), or "
                                   "commit:<sha>, branch:<name>, run:<id>, latest"),
    candidate: str = typer.Argument(..., help="run directory (RUN_DIR@KIND: one GPU kind of a cluster run), or "
                                    "commit:<sha>, branch:<name>, run:<id>, latest"),
    db: Optional[Path] = typer.Option(None, "--db", help=DB_HELP),
    threshold: float = typer.Option(0.05, "--threshold", help="relative slowdown that counts (0.05 = 5%)"),
    alpha: float = typer.Option(0.01, "--alpha", help="significance level of the Mann-Whitney U test"),
    allow_env_mismatch: bool = typer.Option(False, "--allow-env-mismatch",
                                            help="give verdicts even when GPU/driver/CUDA/libs differ"),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="write a PR-comment markdown file"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the comparison as JSON"),
    fail_on_missing: bool = typer.Option(False, "--fail-on-missing",
                                         help="exit 1 also when a baseline result is missing"),
    seed: int = typer.Option(0, "--seed", help="bootstrap seed"),
) -> None:
    """Compare a candidate run with a baseline; exit 1 on any regression."""
    from ..results.compare import MISSING, CompareSettings, compare_runs, print_table, to_markdown, write_json
    from ..results.history import load_side

    if threshold < 0 or not 0 < alpha < 1:
        Console(stderr=True).print("[bold red]error:[/] --threshold must be >= 0 and --alpha in (0, 1)")
        raise typer.Exit(2)
    try:
        base, cand = load_side(baseline, db), load_side(candidate, db)
    except FibError as exc:
        raise _usage_error(exc)
    cmp = compare_runs(base, cand, CompareSettings(threshold=threshold, alpha=alpha,
                                                   allow_env_mismatch=allow_env_mismatch, seed=seed))
    print_table(cmp, Console(width=None if sys.stdout.isatty() else 200))  # CI logs: no wrapping
    if markdown:
        markdown.write_text(to_markdown(cmp))
    if json_out:
        write_json(cmp, json_out)
    if cmp.regressed or (fail_on_missing and any(r.verdict == MISSING for r in cmp.rows)):
        raise typer.Exit(1)


def dashboard_command(
    output: Path = typer.Option(Path("site"), "--output", "-o", help="folder for the static site"),
    db: Optional[Path] = typer.Option(None, "--db", help=DB_HELP),
    branch: Optional[str] = typer.Option(None, "--branch", help="only runs of this branch"),
    baseline_solution: Optional[str] = typer.Option(None, "--baseline-solution",
                                                    help="solution the overview compares the others with"),
    threshold: float = typer.Option(0.05, "--threshold", help="minimum relative step for a change point"),
) -> None:
    """Write a static HTML dashboard of the history (opens from disk, no network)."""
    from ..results.dashboard import SiteOptions, build_dashboard
    from ..results.history import HistoryDB

    try:
        with HistoryDB(db, create=False) as store:
            pages = build_dashboard(store, output, SiteOptions(baseline_solution=baseline_solution,
                                                               branch=branch, threshold=threshold))
    except FibError as exc:
        raise _usage_error(exc)
    Console(soft_wrap=True).print(escape(f"dashboard: {pages[0]} ({len(pages)} pages)"), highlight=False)
