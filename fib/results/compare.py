"""Baseline vs candidate: per (definition, solution, workload) ratio of medians, its bootstrap CI,
a Mann-Whitney U p-value, and a verdict.

Verdicts (decided in this order):

- `new` / `missing`: the key is only in the candidate / only in the baseline.
- status change: PASSED -> anything else is `regressed`; anything else -> PASSED is `improved`
  (a fix). Two non-PASSED statuses are `unchanged` (the note says which). These hold under an
  environment mismatch too: a candidate that fails its correctness check fails it there.
- both PASSED: `ratio = median(candidate) / median(baseline)` of the raw samples.
  `regressed` when ratio - 1 > threshold AND p < alpha AND the CI's low end > 1 + threshold/2;
  `improved` when 1 - ratio > threshold AND p < alpha AND the CI's high end < 1 - threshold/2;
  else `unchanged`. The CI condition keeps a large but poorly-determined shift from failing CI:
  the whole interval must sit clearly past half the threshold. Without raw samples on both sides
  no test is possible and the row is `unchanged` with a note.
- environment mismatch (GPU, driver, CUDA, torch/triton/flashinfer versions differ) and no
  `--allow-env-mismatch`: the timing verdicts become `env-mismatch` (never counted as regressions);
  the same for a row whose two sides were timed by different timers (e.g. cupti vs cuda_event);
  the figures are still shown.

The bootstrap resamples each side independently (the samples are not paired), `percentile`
method, seeded (`seed`, default 0) so the same inputs give the same CI.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
from scipy import stats

from .history import PASSED, Result, Run

REGRESSED, IMPROVED, UNCHANGED, NEW, MISSING, ENV_MISMATCH = (
    "regressed", "improved", "unchanged", "new", "missing", "env-mismatch")
VERDICT_ORDER = [REGRESSED, IMPROVED, ENV_MISMATCH, NEW, MISSING, UNCHANGED]

# environment fields whose difference makes timings incomparable: (label, path in run.json)
ENV_FIELDS = [("gpu", ("gpu", "name")), ("hardware", ("hardware",)), ("sm", ("gpu", "sm")),
              ("driver", ("gpu", "driver")), ("cuda", ("cuda",)), ("torch", ("libs", "torch")),
              ("triton", ("libs", "triton")), ("flashinfer", ("libs", "flashinfer"))]
# shown in the header, but not a mismatch
ENV_INFO_FIELDS = [("host", ("host",)), ("python", ("libs", "python"))]


@dataclass
class CompareSettings:
    threshold: float = 0.05
    alpha: float = 0.01
    allow_env_mismatch: bool = False
    n_resamples: int = 2000
    seed: int = 0


@dataclass
class Row:
    definition: str
    solution: str
    workload_uuid: str
    workload: str
    verdict: str
    baseline_status: Optional[str] = None
    candidate_status: Optional[str] = None
    baseline_median_ms: Optional[float] = None
    candidate_median_ms: Optional[float] = None
    ratio: Optional[float] = None
    ci_low: Optional[float] = None
    ci_high: Optional[float] = None
    p_value: Optional[float] = None
    baseline_n: int = 0
    candidate_n: int = 0
    timing_verdict: Optional[str] = None  # the verdict the timings alone would give
    note: str = ""


@dataclass
class Comparison:
    baseline: Run
    candidate: Run
    settings: CompareSettings
    rows: list[Row]
    env_differences: list[tuple[str, object, object]] = field(default_factory=list)
    env_info: list[tuple[str, object, object]] = field(default_factory=list)

    @property
    def env_mismatch(self) -> bool:
        return bool(self.env_differences)

    def counts(self) -> dict[str, int]:
        out = {v: 0 for v in VERDICT_ORDER}
        for row in self.rows:
            out[row.verdict] += 1
        return out

    @property
    def regressed(self) -> bool:
        return any(r.verdict == REGRESSED for r in self.rows)


def _env_get(env: dict, path: tuple[str, ...]):
    value = env
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def env_differences(base: Run, cand: Run, fields=ENV_FIELDS) -> list[tuple[str, object, object]]:
    """(field, baseline value, candidate value) for each field that differs (absent on both: equal)."""
    out = []
    for label, path in fields:
        b, c = _env_get(base.environment, path), _env_get(cand.environment, path)
        if b != c:
            out.append((label, b, c))
    return out


def ratio_of_medians_ci(base: np.ndarray, cand: np.ndarray, settings: CompareSettings) -> tuple[float, float]:
    """Bootstrap 95% CI of median(cand)/median(base), each side resampled independently."""
    def statistic(b, c, axis):
        return np.median(c, axis=axis) / np.median(b, axis=axis)

    if np.all(base == base[0]) and np.all(cand == cand[0]):
        value = float(cand[0] / base[0])
        return value, value
    res = stats.bootstrap((base, cand), statistic, n_resamples=settings.n_resamples,
                          vectorized=True, paired=False, method="percentile",
                          confidence_level=0.95, rng=np.random.default_rng(settings.seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _timing_verdict(row: Row, base: Result, cand: Result, s: CompareSettings) -> str:
    b = np.asarray(base.samples_ms, dtype=float)
    c = np.asarray(cand.samples_ms, dtype=float)
    row.baseline_n, row.candidate_n = len(b), len(c)
    bm, cm = base.median_ms, cand.median_ms
    row.baseline_median_ms, row.candidate_median_ms = bm, cm
    if bm and cm:
        row.ratio = cm / bm
    if len(b) < 2 or len(c) < 2:
        row.note = "too few raw samples to test: significance unknown"
        return UNCHANGED
    row.ci_low, row.ci_high = ratio_of_medians_ci(b, c, s)
    row.p_value = float(stats.mannwhitneyu(c, b, alternative="two-sided").pvalue)
    significant = row.p_value < s.alpha
    assert row.ratio is not None
    if row.ratio - 1 > s.threshold and significant and row.ci_low > 1 + s.threshold / 2:
        return REGRESSED
    if 1 - row.ratio > s.threshold and significant and row.ci_high < 1 - s.threshold / 2:
        return IMPROVED
    if abs(row.ratio - 1) > s.threshold:
        row.note = "past the threshold but not significant"
    return UNCHANGED


def compare_results(base: Optional[Result], cand: Optional[Result], s: CompareSettings,
                    env_mismatch: bool) -> Row:
    any_side = cand or base
    assert any_side is not None
    row = Row(definition=any_side.definition, solution=any_side.solution,
              workload_uuid=any_side.workload_uuid, workload=any_side.workload_label(),
              verdict=UNCHANGED,
              baseline_status=base.status if base else None,
              candidate_status=cand.status if cand else None)
    if base is None:
        row.verdict, row.candidate_median_ms = NEW, cand.median_ms  # type: ignore[union-attr]
        return row
    if cand is None:
        row.verdict, row.baseline_median_ms = MISSING, base.median_ms
        return row
    if base.status == PASSED and cand.status != PASSED:
        row.verdict = REGRESSED
        row.baseline_median_ms = base.median_ms
        row.note = f"status {base.status} -> {cand.status}" + (f": {cand.reason}" if cand.reason else "")
        return row
    if base.status != PASSED and cand.status == PASSED:
        row.verdict = IMPROVED
        row.candidate_median_ms = cand.median_ms
        row.note = f"fixed: status {base.status} -> {cand.status}"
        return row
    if base.status != PASSED:
        row.note = (f"still failing: {cand.status}" if base.status == cand.status
                    else f"still failing: {base.status} -> {cand.status}")
        return row
    row.timing_verdict = _timing_verdict(row, base, cand, s)
    row.verdict = ENV_MISMATCH if env_mismatch else row.timing_verdict
    if base.event_median_ms is not None or cand.event_median_ms is not None:
        # the samples are kernel sums; where the GPU idles most of the call a caller waits for more
        idle = (f"GPU idle most of the call: back to back {_fmt(base.event_median_ms)} -> "
                f"{_fmt(cand.event_median_ms)} ms by CUDA events")
        row.note = f"{row.note}; {idle}" if row.note else idle
    if base.timer and cand.timer and base.timer != cand.timer:
        # Different timers measure different things (kernel time vs launch-inclusive time).
        row.note = f"timer differs: {base.timer} -> {cand.timer}" + (f"; {row.note}" if row.note else "")
        if not s.allow_env_mismatch:
            row.verdict = ENV_MISMATCH
    return row


def compare_runs(baseline: Run, candidate: Run, settings: CompareSettings | None = None) -> Comparison:
    settings = settings or CompareSettings()
    diffs = env_differences(baseline, candidate)
    info = env_differences(baseline, candidate, ENV_INFO_FIELDS)
    mismatch = bool(diffs) and not settings.allow_env_mismatch
    keys = sorted(set(baseline.results) | set(candidate.results))
    rows = [compare_results(baseline.results.get(k), candidate.results.get(k), settings, mismatch)
            for k in keys]
    rows.sort(key=lambda r: (VERDICT_ORDER.index(r.verdict), r.definition, r.solution, r.workload))
    return Comparison(baseline, candidate, settings, rows, diffs, info)


# ---------------------------------------------------------------- rendering

def _fmt(value: Optional[float], spec: str = ".4g") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _fmt_ratio(row: Row) -> str:
    if row.ratio is None:
        return "-"
    text = f"{row.ratio:.3f}x"
    if row.ci_low is not None:
        text += f" [{row.ci_low:.3f}, {row.ci_high:.3f}]"
    return text


def _fmt_status(row: Row) -> str:
    b, c = row.baseline_status or "-", row.candidate_status or "-"
    return b if b == c else f"{b} -> {c}"


def summary_line(cmp: Comparison) -> str:
    counts = cmp.counts()
    parts = [f"{counts[v]} {v}" for v in VERDICT_ORDER if counts[v] or v in (REGRESSED, IMPROVED, UNCHANGED)]
    head = "REGRESSION" if cmp.regressed else "no regression"
    return (f"{head}: {', '.join(parts)} — baseline {cmp.baseline.label()} vs candidate "
            f"{cmp.candidate.label()} (threshold {cmp.settings.threshold:.0%}, alpha {cmp.settings.alpha})")


def env_warning(cmp: Comparison) -> Optional[str]:
    if not cmp.env_differences:
        return None
    what = "; ".join(f"{k}: {b} vs {c}" for k, b, c in cmp.env_differences)
    tail = ("compared anyway (--allow-env-mismatch)" if cmp.settings.allow_env_mismatch
            else "timing verdicts marked env-mismatch; pass --allow-env-mismatch to compare anyway")
    return f"environments differ ({what}): {tail}"


def to_markdown(cmp: Comparison) -> str:
    icon = {REGRESSED: ":red_circle:", IMPROVED: ":green_circle:", ENV_MISMATCH: ":warning:",
            NEW: ":new:", MISSING: ":grey_question:", UNCHANGED: ""}
    lines = [f"### fib compare: {summary_line(cmp)}", ""]
    warning = env_warning(cmp)
    if warning:
        lines += [f"> :warning: {warning}", ""]
    header = ["| verdict | definition | solution | workload | status | baseline ms | candidate ms | ratio [95% CI] | p | note |",
              "|---|---|---|---|---|---|---|---|---|---|"]

    def table(rows: list[Row]) -> list[str]:
        return header + [
            f"| {icon[r.verdict]} {r.verdict} | {r.definition} | {r.solution} | {r.workload} | "
            f"{_fmt_status(r)} | {_fmt(r.baseline_median_ms)} | {_fmt(r.candidate_median_ms)} | "
            f"{_fmt_ratio(r)} | {_fmt(r.p_value, '.2g')} | {r.note.replace('|', '/')} |" for r in rows]

    changed = [r for r in cmp.rows if r.verdict != UNCHANGED]
    unchanged = [r for r in cmp.rows if r.verdict == UNCHANGED]
    if changed:
        lines += table(changed) + [""]
    else:
        lines += ["No changed rows.", ""]
    if unchanged:
        lines += [f"<details><summary>{len(unchanged)} unchanged</summary>", ""] + table(unchanged) + ["", "</details>", ""]
    return "\n".join(lines)


def to_json(cmp: Comparison) -> dict:
    def side(run: Run) -> dict:
        return {"run_id": run.run_id, "commit": run.commit, "branch": run.branch, "dirty": run.dirty,
                "started": run.started, "path": run.path, "environment": run.environment}
    return {"summary": summary_line(cmp), "regressed": cmp.regressed, "counts": cmp.counts(),
            "settings": asdict(cmp.settings), "baseline": side(cmp.baseline),
            "candidate": side(cmp.candidate), "env_mismatch": cmp.env_mismatch,
            "env_differences": [{"field": k, "baseline": b, "candidate": c} for k, b, c in cmp.env_differences],
            "rows": [asdict(r) for r in cmp.rows]}


def write_json(cmp: Comparison, path) -> None:
    with open(path, "w") as handle:
        json.dump(to_json(cmp), handle, indent=2, default=str)
        handle.write("\n")


def print_table(cmp: Comparison, console=None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    style = {REGRESSED: "bold red", IMPROVED: "green", ENV_MISMATCH: "yellow", NEW: "cyan",
             MISSING: "magenta", UNCHANGED: "dim"}
    warning = env_warning(cmp)
    if warning:
        console.print(f"[bold yellow]warning:[/] {escape(warning)}")
    for key, b, c in cmp.env_info:
        console.print(f"[dim]note: {escape(f'{key} differs: {b} vs {c}')}[/]")
    table = Table(title=escape(summary_line(cmp)), title_justify="left")
    for col in ("verdict", "definition", "solution", "workload", "status", "base ms", "cand ms",
                "ratio [95% CI]", "p", "note"):
        table.add_column(col, overflow="fold")
    for r in cmp.rows:
        cells = [r.definition, r.solution, r.workload, _fmt_status(r), _fmt(r.baseline_median_ms),
                 _fmt(r.candidate_median_ms), _fmt_ratio(r), _fmt(r.p_value, ".2g"), r.note]
        table.add_row(f"[{style[r.verdict]}]{r.verdict}[/]", *map(escape, cells))
    console.print(table)
