"""Small charts drawn on the server as SVG: no script, no style attribute (the CSP forbids
inline styles), only presentation attributes and classes of the console's stylesheet."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH = 560
HEIGHT = 160
_LEFT, _RIGHT, _TOP, _BOTTOM = 58, 8, 24, 22


@dataclass(frozen=True)
class Series:
    label: str
    css: str  # the stylesheet class that colours it
    points: Sequence[tuple[float, float | None]]  # (seconds before now, value); None: no value


def _nice(top: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above `top`."""
    if top <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(top))
    for step in (1, 2, 5, 10):
        if top <= step * power * 1.0000001:
            return float(step * power)
    return float(10 * power)


def line_chart(
    title: str,
    series: Sequence[Series],
    *,
    span_seconds: float,
    fmt: Callable[[float], str],
    empty: str,
    chart_id: str,
) -> Markup:
    """A line chart of the last `span_seconds`, now at the right edge; a series breaks where
    it has no value."""
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    values = [v for s in series for _, v in s.points if v is not None]
    top = _nice(max(values, default=0.0))

    def x(ago: float) -> float:
        return _LEFT + plot_w * (1 - min(max(ago, 0.0), span_seconds) / span_seconds)

    def y(v: float) -> float:
        return _TOP + plot_h * (1 - v / top)

    out = [
        f'<svg class="chart" id="{escape(chart_id)}" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
        f'height="{HEIGHT}" role="img" aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for frac in (0.0, 0.5, 1.0):
        gy = _TOP + plot_h * (1 - frac)
        out.append(f'<line class="grid" x1="{_LEFT}" y1="{gy:.1f}" x2="{WIDTH - _RIGHT}" y2="{gy:.1f}"/>')
        out.append(
            f'<text class="tick" x="{_LEFT - 4}" y="{gy + 4:.1f}" text-anchor="end">{escape(fmt(top * frac))}</text>'
        )
    minutes = int(span_seconds // 60)
    for m in range(minutes, -1, -5 if minutes > 5 else 1):
        tx = x(m * 60.0)
        label = "now" if m == 0 else f"\u2212{m} min"
        out.append(
            f'<text class="tick" x="{tx:.1f}" y="{HEIGHT - 6}" text-anchor="{"end" if m == 0 else "middle"}">'
            f"{label}</text>"
        )
    if not values:
        out.append(
            f'<text class="empty" x="{_LEFT + plot_w / 2:.1f}" y="{_TOP + plot_h / 2:.1f}" '
            f'text-anchor="middle">{escape(empty)}</text>'
        )
    for s in series:
        run: list[str] = []
        runs: list[list[str]] = [run]
        for ago, v in s.points:
            if v is None:
                run = []
                runs.append(run)
                continue
            run.append(f"{x(ago):.1f},{y(v):.1f}")
        for r in runs:
            if len(r) == 1:
                cx, cy = r[0].split(",")
                out.append(f'<circle class="line {escape(s.css)}" cx="{cx}" cy="{cy}" r="2"/>')
            elif r:
                out.append(f'<polyline class="line {escape(s.css)}" points="{" ".join(r)}"/>')
    lx = _LEFT
    for s in series:
        out.append(f'<rect class="key {escape(s.css)}" x="{lx}" y="2" width="10" height="10"/>')
        out.append(f'<text class="legend" x="{lx + 14}" y="11">{escape(s.label)}</text>')
        lx += 24 + 7 * len(s.label)
    out.append("</svg>")
    return Markup("".join(out))  # noqa: S704 -- every value in it went through escape()


@dataclass(frozen=True)
class Share:
    label: str
    got: float | None  # share of leases taken, 0..1; None: none to share
    due: float | None  # share its weight entitles it to, 0..1
    note: str = ""


def share_bars(title: str, rows: Sequence[Share], chart_id: str) -> Markup:
    """Per tenant, two bars: the share of leases it took and the share its weight is due."""
    row_h, label_w, bar_w = 30, 150, 300
    height = 20 + row_h * max(1, len(rows))
    out = [
        f'<svg class="chart shares" id="{escape(chart_id)}" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" '
        f'height="{height}" role="img" aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        '<rect class="key got" x="0" y="2" width="10" height="10"/>',
        '<text class="legend" x="14" y="11">leases taken</text>',
        '<rect class="key due" x="110" y="2" width="10" height="10"/>',
        '<text class="legend" x="124" y="11">due by weight</text>',
    ]
    for i, r in enumerate(rows):
        top = 20 + i * row_h
        out.append(f'<text class="label" x="0" y="{top + 15}">{escape(r.label[:22])}</text>')
        for j, (value, css) in enumerate(((r.got, "got"), (r.due, "due"))):
            w = 0.0 if value is None else bar_w * min(max(value, 0.0), 1.0)
            by = top + 3 + j * 12
            out.append(f'<rect class="track" x="{label_w}" y="{by}" width="{bar_w}" height="10"/>')
            out.append(f'<rect class="bar {css}" x="{label_w}" y="{by}" width="{w:.1f}" height="10"/>')
            pct = "\u2013" if value is None else f"{value * 100:.0f}%"
            out.append(f'<text class="tick" x="{label_w + bar_w + 6}" y="{by + 9}">{pct}</text>')
        if r.note:
            out.append(f'<text class="note" x="{label_w + bar_w + 46}" y="{top + 15}">{escape(r.note)}</text>')
    out.append("</svg>")
    return Markup("".join(out))  # noqa: S704 -- every value in it went through escape()
