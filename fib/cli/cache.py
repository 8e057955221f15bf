"""`fib cache info` and `fib cache clear`: the FP32 reference cache on disk.

Registered in fib/cli.py as the `cache` group (cache_app). The cache lives in
`$FIB_CACHE_DIR/reference` (default `~/.cache/fib/reference`), one folder per definition; see
fib.harness.inputs.ReferenceCache. Exit codes: 0 fine (also when there was nothing to remove), 1 clearing declined at the prompt.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

cache_app = typer.Typer(help="The FP32 reference cache ($FIB_CACHE_DIR, default ~/.cache/fib).",
                        no_args_is_help=True)


@cache_app.callback()
def _cache_group() -> None:
    """The FP32 reference cache: `fib cache info`, `fib cache clear [--definition D] [--yes]`.
    Its place is $FIB_CACHE_DIR/reference (default ~/.cache/fib/reference)."""


def human_size(size: int) -> str:
    """1234567 -> '1.2 MB' (powers of 1000); below 1 kB in bytes."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


def _folder_size(folder: Path) -> int:
    total = 0
    for f in folder.rglob("*"):
        try:
            if f.is_file() and not f.is_symlink():
                total += f.stat().st_size
        except OSError:
            continue
    return total


@cache_app.command("info")
def cache_info() -> None:
    """Show what the reference cache holds: entries and size per definition, its path, the total."""
    from ..harness.inputs import ReferenceCache, cache_dir
    out = Console(soft_wrap=True)
    cache = ReferenceCache()
    rows = cache.report()
    out.print(f"reference cache: {escape(str(cache.directory))}", highlight=False)
    if rows:
        table = Table(title_justify="left")
        table.add_column("definition")
        table.add_column("entries", justify="right")
        table.add_column("size", justify="right")
        for name, entries, size in rows:
            table.add_row(escape(name), str(entries), human_size(size))
        out.print(table)
    entries, size = sum(r[1] for r in rows), sum(r[2] for r in rows)
    out.print(f"total: {entries} entries, {human_size(size)} in {len(rows)} definition(s)", highlight=False)
    root = cache_dir()
    others = sorted(p for p in root.iterdir() if p.is_dir() and p.resolve() != cache.directory.resolve()) \
        if root.is_dir() else []
    if others:
        listed = ", ".join(f"{p.name}/ {human_size(_folder_size(p))}" for p in others)
        out.print(f"also in {escape(str(root))} (not touched by `fib cache clear`): {escape(listed)}", highlight=False)


@cache_app.command("clear")
def cache_clear(
    definition: Optional[str] = typer.Option(None, "--definition", "-d",
                                             help="Only this definition's references (default: all)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Remove cached references (all, or one definition's) and print what was removed.

    They are recomputed by the next run that needs them."""
    from ..harness.inputs import ReferenceCache
    out = Console(soft_wrap=True)
    cache = ReferenceCache()
    # only names the cache lists are cleared, so a --definition like '../x' matches nothing
    rows = [r for r in cache.report() if definition is None or r[0] == definition]
    where = escape(str(cache.directory))
    if not rows:
        what = f"no cached references for {escape(definition)}" if definition else "the reference cache is empty"
        out.print(f"nothing to remove: {what} ({where})", highlight=False)
        return
    entries, size = sum(r[1] for r in rows), sum(r[2] for r in rows)
    if not yes:
        scope = f"of {definition} " if definition else ""
        if not typer.confirm(f"remove {entries} cached reference(s) {scope}({human_size(size)}) from "
                             f"{cache.directory}?", default=False):
            out.print("nothing removed")
            raise typer.Exit(1)
    total_files = total_bytes = 0
    for name, count, _ in rows:
        files, freed = cache.clear(name)
        total_files, total_bytes = total_files + files, total_bytes + freed
        out.print(f"removed {escape(name)}: {count} entries ({files} files, {human_size(freed)})", highlight=False)
    out.print(f"removed {total_files} files, {human_size(total_bytes)} from {where}", highlight=False)
