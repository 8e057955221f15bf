"""Check fib's kernel attribution against nsys's own `nvtx_kern_sum` report.

`nsys stats --report nvtx_kern_sum` counts a kernel under every NVTX range open when it was
launched (outer ranges include their nested ones). fib keeps, for every kernel, the fib ranges
open at its launch (the `ranges` column of the instances), so the same inclusive totals follow
from fib's join; they must agree within the tolerance (default 1%) for every range of the
domain "fib": stages, `fib.call/...` and `fib.harness.*`. The innermost-stage totals fib reports
equal the inclusive ones for stages with nothing nested inside.

    python -m fib.profile.verify RUN_DIR|capture.sqlite [--nvtx-kern-sum stats.csv] [--tolerance 0.01]

Without --nvtx-kern-sum the report beside the SQLite file is summarised with nsys (if found).
Exit status 0 when every range agrees, 1 otherwise.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from ..errors import FibError
from . import nsys as nsys_mod
from ..analysis.attribution import DOMAIN, RANGE_SEPARATOR
from ..analysis.nsys_sqlite import load_sqlite


def inclusive_totals(instances: pd.DataFrame) -> pd.DataFrame:
    """Per range name: kernel instances and total ns of kernels launched while it was open."""
    rows = []
    for ranges, dur in zip(instances["ranges"], instances["duration_ns"]):
        for name in set(filter(None, str(ranges).split(RANGE_SEPARATOR))):
            rows.append((name, dur))
    frame = pd.DataFrame(rows, columns=["range", "duration_ns"])
    return frame.groupby("range").agg(instances=("duration_ns", "size"),
                                      total_ns=("duration_ns", "sum")).reset_index()


def read_nvtx_kern_sum(path: str | Path) -> pd.DataFrame:
    """nvtx_kern_sum CSV -> per fib range: instances and total ns (all processes and threads)."""
    text = Path(path).read_text()
    start = text.find("NVTX Range")  # nsys may print a banner line before the header
    if start < 0:
        raise FibError("not an nvtx_kern_sum CSV (no 'NVTX Range' column)", where=path)
    from io import StringIO
    frame = pd.read_csv(StringIO(text[start:]))
    prefix = DOMAIN + ":"
    frame = frame[frame["NVTX Range"].astype(str).str.startswith(prefix)].copy()
    frame["range"] = frame["NVTX Range"].str.slice(len(prefix))
    # a leading ':' marks push/pop ranges in some nsys versions
    frame["range"] = frame["range"].str.lstrip(":")
    return frame.groupby("range").agg(instances=("Kern Inst", "sum"),
                                      total_ns=("Total Time (ns)", "sum")).reset_index()


def compare(ours: pd.DataFrame, theirs: pd.DataFrame, tolerance: float = 0.01) -> pd.DataFrame:
    table = ours.merge(theirs, on="range", how="outer", suffixes=("_fib", "_nsys")).fillna(0)
    table["rel_diff"] = (table["total_ns_fib"] - table["total_ns_nsys"]).abs() / \
        table[["total_ns_fib", "total_ns_nsys"]].max(axis=1).where(lambda s: s > 0, 1)
    table["ok"] = table["rel_diff"] <= tolerance
    return table.sort_values("range", ignore_index=True)


def verify(source: Path, nvtx_kern_sum: Path | None = None, tolerance: float = 0.01) -> pd.DataFrame:
    source = Path(source)
    sqlite = source if source.suffix == ".sqlite" else next(iter(sorted((source / "profile").glob("*.sqlite"))), None)
    if sqlite is None:
        raise FibError("no nsys SQLite export found", where=source, fix="profile with --backend nsys")
    if nvtx_kern_sum is None:
        report = sqlite.with_suffix(".nsys-rep")
        if not report.exists():
            raise FibError(f"no {report.name} beside the export to summarise", where=sqlite,
                           fix="pass --nvtx-kern-sum with `nsys stats --report nvtx_kern_sum --format csv` output")
        nvtx_kern_sum = nsys_mod.stats_csv(nsys_mod.require_nsys(), report, "nvtx_kern_sum",
                                           sqlite.with_name(sqlite.stem + "_stats"))
    instances, _calls = load_sqlite(sqlite)
    return compare(inclusive_totals(instances), read_nvtx_kern_sum(nvtx_kern_sum), tolerance)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fib.profile.verify", description=__doc__.split("\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("--nvtx-kern-sum", type=Path)
    parser.add_argument("--tolerance", type=float, default=0.01)
    args = parser.parse_args(argv)
    try:
        table = verify(args.source, args.nvtx_kern_sum, args.tolerance)
    except FibError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    table["fib_ms"] = table["total_ns_fib"] / 1e6
    table["nsys_ms"] = table["total_ns_nsys"] / 1e6
    print(table[["range", "instances_fib", "instances_nsys", "fib_ms", "nsys_ms", "rel_diff", "ok"]]
          .to_string(index=False))
    bad = int((~table["ok"]).sum())
    print(f"\n{len(table) - bad}/{len(table)} ranges agree within {args.tolerance:.1%}")
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
