"""Line charts as inline SVG, drawn on the server: no script, no external asset, and nothing the
page's Content-Security-Policy has to allow (presentation attributes, not ``style``).

``line_chart`` draws one polyline per series with a ``<circle class="point">`` per point (its
``<title>`` the value, so hovering shows it), axes with the range of each, and a legend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["Series", "human_bytes", "line_chart"]

_COLOURS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2")


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[tuple[float, float]]  # (x, y), in x order
    labels: Sequence[str] = ()  # one per point, shown on hover (default: "name x: y")


def _fmt(v: float) -> str:
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.3g}"
    return f"{v:.4g}"


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def line_chart(series: Sequence[Series], *, x_label: str, y_label: str, width: int = 720, height: int = 260,
               y_format: str = "number") -> str:
    """SVG markup (escaped) for ``series``; an empty chart says so. ``y_format`` "bytes" labels the
    y axis in KiB/MiB/GiB."""
    pts = [p for s in series for p in s.points]
    if not pts:
        return '<p class="empty">nothing to chart yet</p>'
    left, right, top, bottom = 64, 16, 12, 40
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - (abs(y0) or 1) * 0.1, y1 + (abs(y1) or 1) * 0.1
    w, h = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * w

    def py(y: float) -> float:
        return top + h - (y - y0) / (y1 - y0) * h

    fy = human_bytes if y_format == "bytes" else _fmt
    out = [f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}"'
           f' xmlns="http://www.w3.org/2000/svg"><title>{escape(y_label)} by {escape(x_label)}</title>',
           f'<line x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}" stroke="#94a3b8"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + h}" stroke="#94a3b8"/>',
           f'<text x="{left - 6}" y="{top + 10}" text-anchor="end" font-size="11">{escape(fy(y1))}</text>',
           f'<text x="{left - 6}" y="{top + h}" text-anchor="end" font-size="11">{escape(fy(y0))}</text>',
           f'<text x="{left}" y="{top + h + 16}" font-size="11">{escape(_fmt(x0))}</text>',
           f'<text x="{left + w}" y="{top + h + 16}" text-anchor="end" font-size="11">{escape(_fmt(x1))}</text>',
           f'<text x="{left + w / 2}" y="{height - 6}" text-anchor="middle" font-size="12">{escape(x_label)}</text>']
    for i, s in enumerate(series):
        colour = _COLOURS[i % len(_COLOURS)]
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in s.points)
        out.append(f'<polyline class="line" fill="none" stroke="{colour}" stroke-width="2" points="{coords}"/>')
        for j, (x, y) in enumerate(s.points):
            label = s.labels[j] if j < len(s.labels) else f"{s.name} at {x_label} {_fmt(x)}: {fy(y)}"
            out.append(f'<circle class="point" data-series="{escape(s.name)}" cx="{px(x):.1f}" cy="{py(y):.1f}"'
                       f' r="3.5" fill="{colour}"><title>{escape(label)}</title></circle>')
        out.append(f'<text x="{left + w - 4}" y="{top + 12 + 15 * i}" text-anchor="end" font-size="12"'
                   f' fill="{colour}">{escape(s.name)}</text>')
    out.append("</svg>")
    return "".join(out)
