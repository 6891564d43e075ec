"""Charts as inline SVG, drawn on the server: no chart library, no script.

Each chart is a ``<figure>``: an SVG with ``role="img"``, a title and a
description for screen readers, a native tooltip per mark, and the numbers
in a ``<details>`` table for anyone who would rather read than look.
Colours come from CSS classes (``web/static/console.css``), so the charts
follow the light and dark themes.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

__all__ = ["IntervalRow", "Series", "bar_list", "column_chart", "interval_plot", "nice_max"]

Fmt = Callable[[float], str]
_W = 600


def _default_fmt(value: float) -> str:
    if value == 0:
        return "0"
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.1f}{suffix}".replace(".0" + suffix, suffix)
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.3g}"


def money_fmt(value: float) -> str:
    """Dollars without exponents: $12.50, $0.125, $0.00009."""
    if value == 0:
        return "$0"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    digits = max(2, -math.floor(math.log10(abs(value))) + 1)
    return f"${value:.{min(digits, 8)}f}".rstrip("0").rstrip(".")


def nice_max(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 × 10^k at or above ``value`` (never 0)."""
    if value <= 0:
        return 1.0
    exp = math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        candidate = float(step * 10**exp)
        if candidate >= value * (1 - 1e-9):
            return candidate
    return float(10 ** (exp + 1))


def _round_step(step: float, integer: bool) -> bool:
    """Whether grid lines ``step`` apart get short labels: 1, 2, 2.5 or 5 × 10^k (whole, if
    ``integer``)."""
    if step <= 0 or (integer and not float(step).is_integer()):
        return False
    mantissa = step / 10 ** math.floor(math.log10(step))
    return any(math.isclose(mantissa, m) for m in (1, 2, 2.5, 5))


def _id(*parts: object) -> str:
    return "c" + hashlib.sha1(repr(parts).encode()).hexdigest()[:8]


def _t(x: float) -> str:
    return f"{x:.1f}"


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float | None]
    css: str = "s-1"


def _figure(
    cid: str, title: str, desc: str, svg: str, legend: str, table: str, show_title: bool = True
) -> Markup:
    title_class = "chart-title" if show_title else "sr-only"
    return Markup(
        f'<figure class="chart" aria-labelledby="{cid}-cap">'
        f'<figcaption id="{cid}-cap"><span '
        f'class="{title_class}">{escape(title)}</span>{legend}</figcaption>'
        f'{svg}<details class="chart-data"><summary>Show the '
        f"numbers</summary>{table}</details></figure>"
    )


def _svg_open(cid: str, height: int, title: str, desc: str, width: int = _W) -> str:
    return (
        f'<svg class="chart-svg" viewBox="0 0 {width} {height}" role="img" '
        f'aria-labelledby="{cid}-t {cid}-d">'
        f'<title id="{cid}-t">{escape(title)}</title><desc id="{cid}-d">{escape(desc)}</desc>'
    )


def _legend(series: Sequence[Series]) -> str:
    if len(series) < 2:
        return ""
    items = "".join(
        f'<li><span class="swatch {escape(s.css)}" aria-hidden="true"></span>{escape(s.name)}</li>'
        for s in series
    )
    return f'<ul class="legend">{items}</ul>'


def column_chart(
    labels: Sequence[str],
    series: Sequence[Series],
    *,
    title: str,
    desc: str,
    fmt: Fmt = _default_fmt,
    height: int = 200,
    grouped: bool = False,
    first_column: str = "Time",
    integer: bool = False,
) -> Markup:
    """Columns, one per label (a time bucket), one colour per series: stacked, or side by side when
    ``grouped`` (series that are alternatives, such as two runs, rather than parts of a whole)."""
    cid = _id(title, labels, [tuple(s.values) for s in series])
    n = max(1, len(labels))
    totals = [
        (max if grouped else sum)((s.values[i] or 0) for s in series) for i in range(len(labels))
    ]
    top = nice_max(max(totals, default=0))
    if integer:
        top = max(top, 4.0)
    intervals = 4 if _round_step(top / 4, integer) else 5  # 100 → 25s; 50 → 10s; 5000 → 1000s
    left, right, top_pad, bottom = 64, 8, 10, 26
    pw, ph = _W - left - right, height - top_pad - bottom
    band = pw / n
    bar = max(1.0, band * 0.72)
    parts = [_svg_open(cid, height, title, desc)]
    for k in range(intervals + 1):
        v = top * k / intervals
        y = top_pad + ph - ph * k / intervals
        parts.append(
            f'<line class="grid" x1="{left}" x2="{_W - right}" y1="{_t(y)}" y2="{_t(y)}"/>'
            f'<text class="tick" x="{left - 6}" y="{_t(y + 4)}" '
            f'text-anchor="end">{escape(fmt(v))}</text>'
        )
    step = max(1, math.ceil(n / 8))
    for i, label in enumerate(labels):
        x = left + band * i + (band - bar) / 2
        base: float = top_pad + ph
        width = bar / len(series) if grouped and series else bar
        for j, s in enumerate(series):
            value = s.values[i]
            if value is None or value <= 0:
                continue
            h = ph * value / top
            if grouped:
                y, sx = top_pad + ph - h, x + j * width
            else:
                base -= h
                y, sx = base, x
            parts.append(
                f'<rect class="{escape(s.css)}" x="{_t(sx)}" y="{_t(y)}" width="{_t(width)}" '
                f'height="{_t(max(h, 0.5))}"><title>{escape(label)}: {escape(s.name)} '
                f"{escape(fmt(value))}</title></rect>"
            )
        if i % step == 0:
            parts.append(
                f'<text class="tick" x="{_t(left + band * i + band / 2)}" y="{height - 8}" '
                f'text-anchor="middle">{escape(label)}</text>'
            )
    parts.append(
        f'<line class="axis" x1="{left}" x2="{_W - right}" y1="{top_pad + ph}" '
        f'y2="{top_pad + ph}"/>'
    )
    parts.append("</svg>")
    head = "".join(f'<th scope="col">{escape(s.name)}</th>' for s in series)
    rows = "".join(
        f'<tr><th scope="row">{escape(label)}</th>'
        + "".join(
            f"<td>{escape(fmt(cell)) if (cell := s.values[i]) is not None else 'n/a'}</td>"
            for s in series
        )
        + "</tr>"
        for i, label in enumerate(labels)
    )
    table = (
        '<table class="data"><thead><tr><th '
        f'scope="col">{escape(first_column)}</th>{head}</tr></thead>'
        f"<tbody>{rows}</tbody></table>"
    )
    return _figure(cid, title, desc, "".join(parts), _legend(series), table)


def bar_list(
    items: Sequence[tuple[str, float]],
    *,
    title: str,
    desc: str,
    fmt: Fmt = _default_fmt,
    css: str = "s-1",
    limit: int = 12,
) -> Markup:
    """Horizontal bars, largest first: who or what accounts for the total."""
    cid = _id(title, items)
    shown = sorted(items, key=lambda kv: kv[1], reverse=True)[:limit]
    top = max((v for _, v in shown), default=0) or 1.0
    row_h, label_w, value_w = 30, 200, 96
    height = max(1, len(shown)) * row_h + 6
    pw = _W - label_w - value_w
    parts = [_svg_open(cid, height, title, desc)]
    for i, (label, value) in enumerate(shown):
        y = 3 + i * row_h
        short = label if len(label) <= 22 else label[:21] + "…"
        w = max(1.0, pw * value / top) if value > 0 else 0
        parts.append(
            f'<text class="label" x="{label_w - 8}" y="{y + 20}" '
            f'text-anchor="end">{escape(short)}</text>'
            f'<rect class="{escape(css)}" x="{label_w}" y="{y + 4}" width="{_t(w)}" '
            f'height="{row_h - 8}" '
            f'rx="2"><title>{escape(label)}: {escape(fmt(value))}</title></rect>'
            f'<text class="value" x="{_t(label_w + w + 6)}" '
            f'y="{y + 20}">{escape(fmt(value))}</text>'
        )
    parts.append("</svg>")
    rows = "".join(
        f'<tr><th scope="row">{escape(k)}</th><td>{escape(fmt(v))}</td></tr>' for k, v in shown
    )
    table = (
        '<table class="data"><thead><tr><th scope="col">Name</th><th '
        'scope="col">Value</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>"
    )
    return _figure(cid, title, desc, "".join(parts), "", table)


@dataclass(frozen=True)
class IntervalRow:
    label: str
    value: float | None
    low: float | None
    high: float | None
    n: int | None = None
    flagged: bool = False
    css: str | None = None  # the point's colour class (e.g. one per run when comparing)


def interval_plot(
    rows: Sequence[IntervalRow],
    *,
    title: str,
    desc: str,
    fmt: Fmt = _default_fmt,
    bounds: tuple[float, float] | None = None,
    show_title: bool = True,
    legend: Sequence[Series] = (),
) -> Markup:
    """Each group's estimate with its confidence interval (a forest plot); flagged groups stand
    out."""
    cid = _id(title, [(r.label, r.value, r.low, r.high) for r in rows])
    known = [v for r in rows for v in (r.value, r.low, r.high) if v is not None]
    lo, hi = bounds if bounds is not None else (min(known, default=0.0), max(known, default=1.0))
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    width, row_h, label_w, value_w = 480, 30, 110, 104  # drawn half-width, side by side
    height = len(rows) * row_h + 30
    pw = width - label_w - value_w - 10

    def x(v: float) -> float:
        return label_w + pw * (min(max(v, lo), hi) - lo) / (hi - lo)

    parts = [_svg_open(cid, height, title, desc, width)]
    for k in range(5):
        v = lo + (hi - lo) * k / 4
        parts.append(
            f'<line class="grid" x1="{_t(x(v))}" x2="{_t(x(v))}" y1="4" y2="{height - 22}"/>'
            f'<text class="tick" x="{_t(x(v))}" y="{height - 6}" '
            f'text-anchor="middle">{escape(fmt(v))}</text>'
        )
    for i, r in enumerate(rows):
        y = 4 + i * row_h + row_h / 2
        cls = "iv flag" if r.flagged else "iv"
        parts.append(
            f'<g class="{cls}"><text class="label" x="{label_w - 8}" y="{_t(y + 4)}" '
            f'text-anchor="end">{escape(r.label)}</text>'
        )
        tip = (
            f"{r.label}: {fmt(r.value) if r.value is not None else 'n/a'}"
            + (
                f" [{fmt(r.low)}, {fmt(r.high)}]"
                if r.low is not None and r.high is not None
                else ""
            )
            + (f", n={r.n}" if r.n is not None else "")
        )
        if r.low is not None and r.high is not None:
            parts.append(
                f'<line class="ci" x1="{_t(x(r.low))}" x2="{_t(x(r.high))}" y1="{_t(y)}" '
                f'y2="{_t(y)}"/>'
                f'<line class="ci" x1="{_t(x(r.low))}" x2="{_t(x(r.low))}" y1="{_t(y - 6)}" '
                f'y2="{_t(y + 6)}"/>'
                f'<line class="ci" x1="{_t(x(r.high))}" x2="{_t(x(r.high))}" y1="{_t(y - 6)}" '
                f'y2="{_t(y + 6)}"/>'
            )
        if r.value is not None:
            point = f"pt {r.css}" if r.css else "pt"
            parts.append(
                f'<circle class="{escape(point)}" cx="{_t(x(r.value))}" cy="{_t(y)}" '
                f'r="5"><title>{escape(tip)}</title>'
                "</circle>"
            )
        parts.append(
            f'<text class="value" x="{width - value_w + 4}" y="{_t(y + 4)}">'
            f"{escape(fmt(r.value) if r.value is not None else 'n/a')}"
            f"{f' (n={r.n})' if r.n is not None else ''}</text></g>"
        )
    parts.append("</svg>")
    flag = ' class="flag"'
    body = "".join(
        f"<tr{flag if r.flagged else ''}><th scope='row'>{escape(r.label)}</th>"
        f"<td>{escape(fmt(r.value)) if r.value is not None else 'n/a'}</td>"
        f"<td>{escape(fmt(r.low)) if r.low is not None else '—'} – "
        f"{escape(fmt(r.high)) if r.high is not None else '—'}"
        f"</td><td>{r.n if r.n is not None else '—'}</td></tr>"
        for r in rows
    )
    table = (
        '<table class="data"><thead><tr><th scope="col">Group</th><th scope="col">Estimate</th>'
        '<th scope="col">Interval</th><th '
        f'scope="col">n</th></tr></thead><tbody>{body}</tbody></table>'
    )
    return _figure(cid, title, desc, "".join(parts), _legend(legend), table, show_title)
