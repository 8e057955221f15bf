"""What `fib run` shows: a live progress bar while it runs and a result table at the end."""
from __future__ import annotations

from collections import Counter

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from .schema import Status, Trace

STATUS_STYLE = {Status.PASSED: "green", Status.UNSUPPORTED: "dim", Status.INCORRECT_NUMERICAL: "red",
                Status.INCORRECT_SHAPE: "red", Status.INCORRECT_DTYPE: "red", Status.RUNTIME_ERROR: "red",
                Status.COMPILE_ERROR: "red", Status.TIMEOUT: "yellow"}


class RunProgress:
    def __init__(self, console: Console, total: int):
        self.counts: Counter = Counter()
        self._progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                                  MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[status]}"),
                                  console=console, transient=False)
        self._task = self._progress.add_task("fib run", total=total, status="")

    def __enter__(self):
        self._progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self._progress.__exit__(*exc)

    def trace(self, trace: Trace) -> None:
        self.counts[trace.status.value] += 1
        tally = " ".join(f"{k}:{v}" for k, v in sorted(self.counts.items()))
        self._progress.update(self._task, advance=1, status=tally)

    def phase(self, device: str, solution: str | None, phase: str) -> None:
        what = f"{solution} {phase}" if solution else phase
        self._progress.update(self._task, description=f"{device}: {what}")


def summary_rows(traces: list[Trace]) -> list[dict]:
    rows = []
    for t in traces:
        ev = t.evaluation
        c, p = ev.correctness, ev.performance
        rows.append({"definition": t.definition, "solution": t.solution, "workload": t.workload.uuid,
                     "axes": t.workload.axes, "status": ev.status.value, "reason": ev.reason,
                     "latency_ms": p.latency_ms if p else None,
                     "ci95_ms": [p.timing.ci95_low_ms, p.timing.ci95_high_ms] if p and p.timing else None,
                     "speedup_vs_reference": p.speedup_factor if p else None,
                     "max_abs_error": c.max_absolute_error if c else None,
                     "max_rel_error": c.max_relative_error if c else None,
                     "matched_ratio": c.matched_ratio if c else None,
                     "relative_l2": getattr(c, "relative_l2_error", None) if c else None,
                     # the GPU idled most of the call: its back-to-back time by CUDA events (fib.timing.measure)
                     "event_ms": p.timing.event_median_ms if p and p.timing else None,
                     "gpu_idle_share": p.timing.gpu_idle_share if p and p.timing else None,
                     "vacuous_tolerance": (ev.model_extra or {}).get("vacuous_tolerance"), "device": ev.device,
                     "gpu_kind": (ev.model_extra or {}).get("gpu_kind"), "host": (ev.model_extra or {}).get("host")})
    return rows


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_summary(console: Console, rows: list[dict]) -> None:
    """One table per definition, then the reasons for everything that did not pass (each once)."""
    by_def: dict[str, list[dict]] = {}
    for row in rows:  # a cluster run's GPU kinds get a table each
        title = row["definition"] + (f" on {row['gpu_kind']}" if row.get("gpu_kind") else "")
        by_def.setdefault(title, []).append(row)
    for definition, items in by_def.items():
        table = Table(title=definition, title_justify="left")
        for col, justify in (("solution", "left"), ("workload", "left"), ("status", "left"),
                             ("latency ms", "right"), ("95% CI ms", "right"), ("vs ref", "right"),
                             ("max abs err", "right"), ("rel L2", "right"), ("matched", "right")):
            table.add_column(col, justify=justify)
        for r in sorted(items, key=lambda r: (r["solution"], tuple(r["axes"].values()))):
            style = STATUS_STYLE.get(Status(r["status"]), "")
            axes = ",".join(f"{k}={v}" for k, v in r["axes"].items())
            ci = f"{r['ci95_ms'][0]:.4f}-{r['ci95_ms'][1]:.4f}" if r["ci95_ms"] else "-"
            status = r["status"] + (" (vacuous tol)" if r.get("vacuous_tolerance") else "")
            table.add_row(r["solution"], axes, f"[{style}]{status}[/{style}]", _fmt(r["latency_ms"], ".4f"), ci,
                          _fmt(r["speedup_vs_reference"], ".2f"), _fmt(r["max_abs_error"], ".3g"),
                          _fmt(r.get("relative_l2"), ".3g"), _fmt(r["matched_ratio"], ".4f"))
        console.print(table)
        reasons: dict[tuple[str, str, str], list[str]] = {}
        for r in items:
            if r["status"] != Status.PASSED.value:
                reasons.setdefault((r["solution"], r["status"], r["reason"] or ""), []).append(
                    ",".join(f"{k}={v}" for k, v in r["axes"].items()))
        for (solution, status, reason), where in sorted(reasons.items()):
            console.print(f"  [bold]{solution}[/bold] {status} on {len(where)} workload(s): {reason}",
                          highlight=False)
        idle = [r for r in items if r.get("event_ms") is not None]
        if idle:
            console.print("  [yellow]the GPU idles most of these calls[/yellow] (host syncs or launch-bound host "
                          "code): latency is their kernel sum; a call back to back takes longer by CUDA events:",
                          highlight=False)
            for r in sorted(idle, key=lambda r: (r["solution"], tuple(r["axes"].values()))):
                axes = ",".join(f"{k}={v}" for k, v in r["axes"].items())
                console.print(f"    {r['solution']} {axes}: kernels {r['latency_ms']:.4f} ms, back to back "
                              f"{r['event_ms']:.4f} ms (GPU idle {100 * r['gpu_idle_share']:.0f}% of the span)",
                              highlight=False)
    tally = Counter(r["status"] for r in rows)
    console.print("  ".join(f"{k}: {v}" for k, v in sorted(tally.items())) or "no results")
