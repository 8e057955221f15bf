"""The static dashboard: plain HTML + inline SVG + a few lines of inline JS, opened from disk.

Pages: index.html (overview grid definition x solution per GPU, recent change points, runs with
links to their directories and reports) and one page per definition (trend chart per workload and
GPU with change points marked, latest stage breakdown). A Content-Security-Policy forbids every
network load, so a page that tried one would fail loudly instead of silently needing a network.
"""
from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Optional

from ..changepoint import series_changepoints
from ..history import HistoryDB, SeriesKey, SeriesPoint, load_series
from .svg import PALETTE, TrendPoint, TrendSeries, stacked_bars, trend_chart

CSP = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
       "img-src data:")

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}
.PASSED{color:#2a7d2a}.FAIL{color:#c62828;font-weight:bold}
.up{color:#c62828}.down{color:#2a7d2a}
svg text{font:11px system-ui,sans-serif;fill:#333}
svg .chart-title{font-weight:bold}
svg .ytick{text-anchor:end}
svg .xtick{text-anchor:middle}
svg .plot-bg{fill:#fafafa;stroke:#ddd}
svg .grid{stroke:#e6e6e6}
svg .ci{stroke-width:1;opacity:.6}
#tip{position:fixed;display:none;background:#222;color:#fff;padding:4px 7px;border-radius:4px;
 font-size:12px;white-space:pre;pointer-events:none;z-index:9}
.charts{display:flex;flex-wrap:wrap;gap:12px}
"""

TOOLTIP_JS = """
(function(){
  var tip=document.getElementById('tip');
  document.querySelectorAll('[data-tip]').forEach(function(el){
    el.addEventListener('mousemove',function(ev){
      tip.textContent=el.getAttribute('data-tip');tip.style.display='block';
      tip.style.left=(ev.clientX+12)+'px';tip.style.top=(ev.clientY+12)+'px';});
    el.addEventListener('mouseleave',function(){tip.style.display='none';});
  });
  document.body.setAttribute('data-charts',String(document.querySelectorAll('svg').length));
})();
"""


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<title>{escape(title)}</title><style>{STYLE}</style></head>\n<body>\n'
            f'<p><a href="index.html">fib dashboard</a></p>\n<h1>{escape(title)}</h1>\n{body}\n'
            f'<div id="tip"></div><script>{TOOLTIP_JS}</script>\n</body></html>\n')


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _short(commit: Optional[str]) -> str:
    return (commit or "?")[:8]


def _geomean(ratios: list[float]) -> Optional[float]:
    ratios = [r for r in ratios if r and r > 0]
    return math.exp(sum(math.log(r) for r in ratios) / len(ratios)) if ratios else None


def _ratio_cell(ratio: Optional[float], what: str) -> str:
    if ratio is None:
        return ""
    cls = "up" if ratio > 1.02 else "down" if ratio < 0.98 else ""
    return f'<br><span class="{cls}" title="geomean latency ratio {escape(what)}">{ratio:.3f}x {escape(what)}</span>'


def _point_tip(solution: str, p: SeriesPoint) -> str:
    head = f"{solution} @ {_short(p.commit)} ({p.branch or '?'})\n{p.started or '?'}\n"
    if p.median_ms is None:
        return head + f"{p.status}" + (f": {p.reason}" if p.reason else "")
    ci = f"\n95% CI [{p.ci_low_ms:.4g}, {p.ci_high_ms:.4g}] ms" if p.ci_low_ms is not None else ""
    return head + f"median {p.median_ms:.4g} ms (n={p.n_samples}){ci}"


@dataclass
class SiteOptions:
    baseline_solution: Optional[str] = None
    branch: Optional[str] = None
    min_size: int = 3
    threshold: float = 0.05
    alpha: float = 0.01


def _report_links(run_path: Optional[str]) -> str:
    if not run_path or not Path(run_path).is_dir():
        return escape(run_path or "")
    root = Path(run_path)
    links = [f'<a href="{root.as_uri()}">run dir</a>']
    for pattern in ("*.html", "*.md", "report*/*.html", "report*/*.md", "profile/*.html", "profile/*.md"):
        for f in sorted(root.glob(pattern)):
            links.append(f'<a href="{f.as_uri()}">{escape(str(f.relative_to(root)))}</a>')
    return " · ".join(links)


class _Site:
    def __init__(self, db: HistoryDB, options: SiteOptions):
        self.db, self.options = db, options
        self.series = load_series(db, options.branch)
        self.runs = db.runs(options.branch)
        self.changepoints = {k: series_changepoints(v, options.min_size, options.threshold, options.alpha)
                             for k, v in self.series.items()}
        self.definitions = sorted({k[0] for k in self.series})
        self.solutions = {d: sorted({k[1] for k in self.series if k[0] == d}) for d in self.definitions}
        self.hardware = sorted({k[3] or "?" for k in self.series})

    # ---- overview
    def _cell(self, definition: str, solution: str, hardware: str) -> str:
        keys = [k for k in self.series if k[:2] == (definition, solution) and (k[3] or "?") == hardware]
        if not keys:
            return "<td></td>"
        latest_run = max((self.series[k][-1] for k in keys), key=lambda p: p.started or "").run_id
        latest = {k: p for k in keys for p in self.series[k] if p.run_id == latest_run}
        passed = sum(p.status == "PASSED" for p in latest.values())
        failed = [p.status for p in latest.values() if p.status != "PASSED"]
        status = (f'<span class="PASSED">{passed}/{len(latest)} passed</span>' if not failed
                  else f'<span class="FAIL">{passed}/{len(latest)} passed ({escape(", ".join(sorted(set(failed))))})</span>')
        vs_prev = []
        for k, p in latest.items():
            earlier = [q for q in self.series[k] if q.median_ms is not None and q is not p
                       and (q.started or "") <= (p.started or "")]
            if p.median_ms is not None and earlier:
                vs_prev.append(p.median_ms / earlier[-1].median_ms)
        text = status + _ratio_cell(_geomean(vs_prev), "vs previous run")
        base = self.options.baseline_solution
        if base and base != solution:
            vs_base = []
            for k, p in latest.items():
                other = self.series.get((definition, base, k[2], k[3]))
                if p.median_ms is not None and other and other[-1].median_ms:
                    vs_base.append(p.median_ms / other[-1].median_ms)
            text += _ratio_cell(_geomean(vs_base), f"vs {base}")
        return f'<td><a href="def-{slug(definition)}.html#{slug(solution)}">{text}</a></td>'

    def index(self) -> str:
        parts = []
        for hw in self.hardware:
            solutions = sorted({k[1] for k in self.series if (k[3] or "?") == hw})
            parts.append(f"<h2>Overview: {escape(hw)}</h2><table><tr><th>definition</th>"
                         + "".join(f"<th>{escape(s)}</th>" for s in solutions) + "</tr>")
            for d in self.definitions:
                parts.append(f'<tr><th><a href="def-{slug(d)}.html">{escape(d)}</a></th>'
                             + "".join(self._cell(d, s, hw) for s in solutions) + "</tr>")
            parts.append("</table>")
        parts.append("<h2>Detected change points</h2>")
        rows = []
        for key, cps in self.changepoints.items():
            for cp in cps:
                at = self.series[key][cp.index]
                rows.append((at.started or "", f"<tr><td>{escape(at.started or '')}</td><td>{_short(at.commit)}</td>"
                             f"<td>{escape(key[0])}</td><td>{escape(key[1])}</td>"
                             f"<td>{escape(_axes(at.workload_axes))} [{escape(key[2][:8])}]</td><td>{escape(key[3] or '?')}</td>"
                             f'<td class="{"up" if cp.rel_change > 0 else "down"}">{cp.rel_change:+.1%}</td>'
                             f"<td>{cp.before:.4g} → {cp.after:.4g} ms</td></tr>"))
        if rows:
            parts.append('<table class="changepoints"><tr><th>run started</th><th>commit</th><th>definition</th>'
                         "<th>solution</th><th>workload</th><th>GPU</th><th>change</th><th>median</th></tr>"
                         + "".join(r for _, r in sorted(rows, reverse=True)) + "</table>")
        else:
            parts.append("<p>None.</p>")
        parts.append("<h2>Runs</h2><table><tr><th>started</th><th>commit</th><th>branch</th><th>GPU</th>"
                     "<th>run id</th><th>links</th></tr>")
        for run in reversed(self.runs):
            parts.append(f"<tr><td>{escape(run['started'] or '')}</td><td>{_short(run['git_commit'])}"
                         f"{'+dirty' if run['dirty'] else ''}</td><td>{escape(run['branch'] or '')}</td>"
                         f"<td>{escape(run['hardware'] or '')}</td><td>{escape(run['run_id'][:12])}</td>"
                         f"<td>{_report_links(run['path'])}</td></tr>")
        parts.append("</table>")
        return _page("fib dashboard", "\n".join(parts))

    # ---- one definition
    def definition_page(self, definition: str) -> str:
        parts = []
        colors = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(self.solutions[definition])}
        for s in self.solutions[definition]:
            parts.append(f'<span id="{slug(s)}"></span>')
        groups: dict[tuple[str, Optional[str]], list[SeriesKey]] = defaultdict(list)
        for k in self.series:
            if k[0] == definition:
                groups[(k[2], k[3])].append(k)
        parts.append('<h2>Trends</h2><div class="charts">')
        for (uuid, hw), keys in sorted(groups.items(), key=lambda g: (g[0][1] or "", _axes_sort(self.series[g[1][0]][0].workload_axes))):
            runs = sorted({(p.started or "", p.run_id, p.commit) for k in keys for p in self.series[k]})
            x_of = {run_id: i for i, (_, run_id, _) in enumerate(runs)}
            chart_series = []
            for k in sorted(keys):
                cps = {cp.index: cp for cp in self.changepoints[k]}
                ts = TrendSeries(k[1], colors[k[1]])
                for i, p in enumerate(self.series[k]):
                    cp = cps.get(i)
                    ts.points.append(TrendPoint(
                        x=x_of[p.run_id], value=p.median_ms, tip=_point_tip(k[1], p),
                        low=p.ci_low_ms, high=p.ci_high_ms,
                        changepoint=(f"step {cp.rel_change:+.1%} at {_short(p.commit)}: "
                                     f"{cp.before:.4g} → {cp.after:.4g} ms (p={cp.p_value:.2g})") if cp else None))
                chart_series.append(ts)
            axes = _axes(self.series[keys[0]][0].workload_axes)
            title = f"{axes} [{uuid[:8]}] on {hw or '?'}"
            parts.append(trend_chart(chart_series, [_short(c) for _, _, c in runs], title))
        parts.append("</div>")
        parts.append(self._stages(definition))
        return _page(f"{definition}", "\n".join(parts))

    def _stages(self, definition: str) -> str:
        for run in reversed(self.runs):  # newest run with a stage table for this definition
            # stages.csv names no definition: a row belongs here when its (solution, workload)
            # is one this run evaluated for the definition (workload as uuid, uuid prefix or label)
            ours = self.db.conn.execute(
                "SELECT solution, workload_uuid, workload_axes_json FROM results WHERE run_id = ? AND definition = ?",
                (run["run_id"], definition)).fetchall()
            rows = [r for r in self.db.conn.execute("SELECT * FROM stages WHERE run_id = ?", (run["run_id"],))
                    if any(r["solution"] == sol and _same_workload(r["workload"], uuid, axes_json)
                           for sol, uuid, axes_json in ours)]
            if not rows:
                continue
            totals: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
            stage_order: list[str] = []
            for r in rows:
                totals[(r["solution"], r["workload"])][r["stage"]] += r["total_ms"]
                if r["stage"] not in stage_order:
                    stage_order.append(r["stage"])
            colors = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(stage_order)}
            bars = [(f"{sol} · {wl[:20]}", [(s, per[s]) for s in stage_order if s in per])
                    for (sol, wl), per in sorted(totals.items())]
            title = f"stage breakdown, run {run['run_id'][:10]} @ {_short(run['git_commit'])}"
            return "<h2>Latest stage breakdown</h2>" + stacked_bars(bars, colors, title)
        return ""


def _same_workload(name: str, uuid: str, axes_json: str) -> bool:
    if name == uuid or (len(name) >= 8 and uuid.startswith(name)):
        return True
    return name == _axes(json.loads(axes_json)) or name.endswith(f"[{uuid[:8]}]")


def _axes(axes: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in axes.items())


def _axes_sort(axes: dict) -> tuple:
    return tuple(sorted(axes.items()))


def build_dashboard(db: HistoryDB, output: str | Path, options: SiteOptions | None = None) -> list[Path]:
    """Write the site under `output`; returns the pages written (index.html first)."""
    site = _Site(db, options or SiteOptions())
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "index.html"]
    written[0].write_text(site.index())
    for d in site.definitions:
        page = out / f"def-{slug(d)}.html"
        page.write_text(site.definition_page(d))
        written.append(page)
    return written
