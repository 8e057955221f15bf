"""Hand-written inline SVG charts (no JS library, no network): trend lines and stacked bars."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from typing import Optional

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#7f7f7f", "#d62728"]


@dataclass
class TrendPoint:
    x: int                  # index into the chart's x labels (runs, oldest first)
    value: Optional[float]  # None: a failed run, drawn as a red cross on the axis
    tip: str
    low: Optional[float] = None
    high: Optional[float] = None
    changepoint: Optional[str] = None  # text when a step starts at this point


@dataclass
class TrendSeries:
    name: str
    color: str
    points: list[TrendPoint] = field(default_factory=list)


def _ticks(lo: float, hi: float, count: int = 4) -> list[float]:
    span = hi - lo or abs(hi) or 1.0
    raw = span / count
    step = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 2.5, 5, 10):
        if raw <= step * mult:
            step *= mult
            break
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(count + 2) if start + i * step <= hi + 1e-12]


def trend_chart(series: list[TrendSeries], x_labels: list[str], title: str,
                width: int = 640, height: int = 240) -> str:
    """Latency (ms) per run, one line per series, steps marked with a dashed line and a diamond."""
    left, right, top, bottom = 60, 12, 24, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for s in series for p in s.points for v in (p.value, p.low, p.high) if v is not None]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    pad = (hi - lo) * 0.08 or max(hi * 0.05, 1e-6)
    lo, hi = max(0.0, lo - pad), hi + pad
    n = max(len(x_labels), 1)

    def sx(i: int) -> float:
        return left + (plot_w * (i + 0.5) / n)

    def sy(v: float) -> float:
        return top + plot_h * (1 - (v - lo) / (hi - lo))

    out = [f'<svg class="trend" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
           f'<title>{escape(title)}</title>',
           f'<text x="{left}" y="15" class="chart-title">{escape(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" class="plot-bg"/>']
    for t in _ticks(lo, hi):
        y = sy(t)
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                   f'<text x="{left - 4}" y="{y + 3:.1f}" class="ytick">{t:.4g}</text>')
    out.append(f'<text x="12" y="{top + plot_h / 2:.0f}" class="ylabel" '
               f'transform="rotate(-90 12 {top + plot_h / 2:.0f})">ms</text>')
    every = max(1, math.ceil(n / 12))
    for i, label in enumerate(x_labels):
        if i % every == 0:
            out.append(f'<text x="{sx(i):.1f}" y="{top + plot_h + 14}" class="xtick">{escape(label)}</text>')
    for s in series:
        ok = [p for p in s.points if p.value is not None]
        if len(ok) > 1:
            path = " ".join(f"{sx(p.x):.1f},{sy(p.value):.1f}" for p in ok)  # type: ignore[arg-type]
            out.append(f'<polyline points="{path}" fill="none" stroke="{s.color}" stroke-width="1.5"/>')
        for p in s.points:
            tip = escape(p.tip)
            if p.value is None:
                x, y = sx(p.x), top + plot_h - 6
                out.append(f'<g class="failed" data-tip="{tip}"><title>{tip}</title>'
                           f'<path d="M{x - 4:.1f},{y - 4:.1f}L{x + 4:.1f},{y + 4:.1f}M{x - 4:.1f},{y + 4:.1f}'
                           f'L{x + 4:.1f},{y - 4:.1f}" stroke="#d62728" stroke-width="2"/></g>')
                continue
            x, y = sx(p.x), sy(p.value)
            if p.low is not None and p.high is not None:
                out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{sy(p.low):.1f}" y2="{sy(p.high):.1f}" '
                           f'stroke="{s.color}" class="ci"/>')
            if p.changepoint:
                cp = escape(p.changepoint)
                out.append(f'<g class="changepoint" data-tip="{cp}"><title>{cp}</title>'
                           f'<line x1="{x - plot_w / n / 2:.1f}" x2="{x - plot_w / n / 2:.1f}" y1="{top}" '
                           f'y2="{top + plot_h}" stroke="{s.color}" stroke-dasharray="4 3"/>'
                           f'<path d="M{x:.1f},{y - 7:.1f}L{x + 7:.1f},{y:.1f}L{x:.1f},{y + 7:.1f}'
                           f'L{x - 7:.1f},{y:.1f}Z" fill="none" stroke="#d62728" stroke-width="1.5"/></g>')
            out.append(f'<circle class="pt" cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{s.color}" '
                       f'data-tip="{tip}"><title>{tip}</title></circle>')
    lx = left
    for s in series:
        out.append(f'<rect x="{lx}" y="{height - 14}" width="10" height="10" fill="{s.color}"/>'
                   f'<text x="{lx + 14}" y="{height - 5}" class="legend">{escape(s.name)}</text>')
        lx += 24 + 8 * len(s.name)
    out.append("</svg>")
    return "\n".join(out)


def stacked_bars(bars: list[tuple[str, list[tuple[str, float]]]], stage_colors: dict[str, str],
                 title: str, width: int = 640) -> str:
    """One horizontal bar per (label, [(stage, ms), ...]), segments in the given order."""
    left, right, top, row_h = 220, 70, 24, 22
    height = top + row_h * len(bars) + 30
    total_max = max((sum(ms for _, ms in segs) for _, segs in bars), default=1.0) or 1.0
    plot_w = width - left - right
    out = [f'<svg class="stages" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
           f'<title>{escape(title)}</title>',
           f'<text x="4" y="15" class="chart-title">{escape(title)}</text>']
    for i, (label, segments) in enumerate(bars):
        y = top + i * row_h
        out.append(f'<text x="{left - 6}" y="{y + 14}" class="ytick">{escape(label)}</text>')
        x = float(left)
        for stage, ms in segments:
            w = plot_w * ms / total_max
            tip = escape(f"{label} · {stage}: {ms:.4g} ms")
            out.append(f'<rect class="seg" x="{x:.1f}" y="{y + 3}" width="{max(w, 0.5):.1f}" height="{row_h - 6}" '
                       f'fill="{stage_colors[stage]}" data-tip="{tip}"><title>{tip}</title></rect>')
            x += w
        out.append(f'<text x="{x + 4:.1f}" y="{y + 14}" class="legend">'
                   f'{sum(ms for _, ms in segments):.4g} ms</text>')
    lx, ly = 4, height - 8
    for stage, color in stage_colors.items():
        out.append(f'<rect x="{lx}" y="{ly - 9}" width="10" height="10" fill="{color}"/>'
                   f'<text x="{lx + 14}" y="{ly}" class="legend">{escape(stage)}</text>')
        lx += 24 + 8 * len(stage)
    out.append("</svg>")
    return "\n".join(out)
