"""Small, dependency-free SVG charts for the offline report: grouped bars with CI whiskers,
lines (training curves) and dodged points with CI whiskers over categories (accuracy per
exposure bin).

The charts carry no legend: series labels are as long as the axes that differ between runs
("llm=small_qwen2,data=demo_extra"), which a fixed-width SVG legend cuts. The page draws the
legend in HTML under each chart (`colour(i)` is series i's colour), where labels wrap."""

from __future__ import annotations

import math
from html import escape

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]  # fmt: skip
W, H, L, R, T, B = 640, 300, 64, 16, 28, 52  # size and margins


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def dash(i: int) -> str:
    """Beyond the palette, series repeat a colour with a dash pattern, so none coincide."""
    return "" if i < len(PALETTE) else ' stroke-dasharray="6 3"'


def _frame(title: str, x_label: str, y_label: str, body: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}" font-family="sans-serif" role="img">'
        f"<title>{escape(title)}</title>"
        f'<text x="{L}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>'
        f'<text x="{(L + W - R) / 2}" y="{H - 6}" font-size="11" text-anchor="middle">'
        f"{escape(x_label)}</text>"
        f'<text x="12" y="{(T + H - B) / 2}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 12 {(T + H - B) / 2})">{escape(y_label)}</text>'
        + "".join(body)
        + "</svg>"
    )


def _step(lo: float, hi: float, n: int = 5) -> float:
    """A 1-2-5 tick spacing giving at most ~n intervals over [lo, hi]."""
    span = (hi - lo) or abs(hi) or 1.0
    step = 10 ** math.floor(math.log10(span / n))
    for m in (1, 2, 5, 10):
        if span / (step * m) <= n:
            return step * m
    return step * 10


def nice_range(lo: float, hi: float, n: int = 5) -> tuple[float, float]:
    """[lo, hi] widened to whole ticks, so the data fill the axis instead of starting at 0."""
    if hi <= lo:
        lo, hi = lo - 0.5 * (abs(lo) or 1), hi + 0.5 * (abs(hi) or 1)
    step = _step(lo, hi, n)
    return math.floor(lo / step) * step, math.ceil(hi / step) * step


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    step = _step(lo, hi, n)
    start = math.ceil(lo / step - 1e-9) * step
    return [start + i * step for i in range(int((hi - start) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:g}"


def _axes(xlo, xhi, ylo, yhi, x_ticks: bool = True):
    sx = lambda v: L + (v - xlo) / ((xhi - xlo) or 1) * (W - L - R)  # noqa: E731
    sy = lambda v: H - B - (v - ylo) / ((yhi - ylo) or 1) * (H - T - B)  # noqa: E731
    body = [f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="#444"/>',
            f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="#444"/>']  # fmt: skip
    for t in _ticks(ylo, yhi):
        body.append(f'<line x1="{L - 3}" y1="{sy(t):.1f}" x2="{W - R}" y2="{sy(t):.1f}" '
                    f'stroke="#ddd"/><text x="{L - 6}" y="{sy(t) + 4:.1f}" font-size="10" '
                    f'text-anchor="end">{_fmt(round(t, 10))}</text>')  # fmt: skip
    if x_ticks:
        for t in _ticks(xlo, xhi, 8):
            body.append(f'<line x1="{sx(t):.1f}" y1="{H - B}" x2="{sx(t):.1f}" '
                        f'y2="{H - B + 4}" stroke="#444"/><text x="{sx(t):.1f}" '
                        f'y="{H - B + 16}" font-size="10" text-anchor="middle">'
                        f"{_fmt(round(t, 10))}</text>")  # fmt: skip
    return sx, sy, body


def bar_chart(title: str, groups: list[str], series: dict[str, list[tuple | None]],
              y_label: str = "accuracy") -> str:  # fmt: skip
    """series: name -> per group (value, ci_low, ci_high) or None; bars with CI whiskers. Bars
    start at 0 (a bar's length is its value)."""
    values = [v for vals in series.values() for v in vals if v is not None]
    yhi = max([max(v[2], v[0]) for v in values] + [1e-9])
    sx, sy, body = _axes(0, len(groups), 0, nice_range(0, yhi)[1], x_ticks=False)
    width = 0.8 / max(len(series), 1)
    for gi, g in enumerate(groups):
        body.append(f'<text x="{sx(gi + 0.5):.1f}" y="{H - B + 16}" font-size="10" '
                    f'text-anchor="middle">{escape(g)}</text>')  # fmt: skip
        for si, (name, vals) in enumerate(series.items()):
            v = vals[gi]
            if v is None:
                continue
            x0 = sx(gi + 0.1 + si * width)
            x1 = sx(gi + 0.1 + (si + 1) * width)
            body.append(f'<rect x="{x0:.1f}" y="{sy(v[0]):.1f}" width="{x1 - x0 - 1:.1f}" '
                        f'height="{sy(0) - sy(v[0]):.1f}" fill="{colour(si)}">'
                        f"<title>{escape(name)} {escape(g)}: {v[0]:.4f} [{v[1]:.4f}, {v[2]:.4f}]"
                        "</title></rect>")  # fmt: skip
            xm = (x0 + x1) / 2
            body.append(f'<line x1="{xm:.1f}" y1="{sy(v[1]):.1f}" x2="{xm:.1f}" '
                        f'y2="{sy(v[2]):.1f}" stroke="#000"/>')  # fmt: skip
    return _frame(title, "", y_label, body)


def line_chart(title: str, series: dict[str, list[tuple[float, float]]], x_label: str,
               y_label: str) -> str:  # fmt: skip
    """series: name -> (x, y) points. Both axes fit the data (a loss of 6.0-6.2 is not drawn
    flat against a 0-based axis); x ticks are labelled."""
    pts = [p for s in series.values() for p in s if math.isfinite(p[1])]
    if not pts:
        return ""
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    sx, sy, body = _axes(min(xs), max(xs), *nice_range(min(ys), max(ys)))
    for i, (name, s) in enumerate(series.items()):
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s if math.isfinite(y))
        body.append(f'<polyline points="{path}" fill="none" stroke-width="1.5" '
                    f'stroke="{colour(i)}"{dash(i)}><title>{escape(name)}</title>'
                    "</polyline>")  # fmt: skip
    return _frame(title, x_label, y_label, body)


def dodged_points_chart(
    title: str,
    categories: list[tuple[str, str]],
    series: dict[str, list[tuple[float, float, float, str] | None]],
    x_label: str,
    y_label: str,
) -> str:
    """categories: (label, second line); series: name -> per category (value, ci_low, ci_high,
    hover text) or None. Each series' points sit side by side within a category (never on top
    of another series'), with CI whiskers, joined by a line across categories."""
    k = max(len(series), 1)
    sx, sy, body = _axes(0, len(categories), 0, 1, x_ticks=False)
    for ci, (label, sub) in enumerate(categories):
        body.append(f'<text x="{sx(ci + 0.5):.1f}" y="{H - B + 15}" font-size="10" '
                    f'text-anchor="middle">{escape(label)}</text><text x="{sx(ci + 0.5):.1f}" '
                    f'y="{H - B + 27}" font-size="9" fill="#666" text-anchor="middle">'
                    f"{escape(sub)}</text>")  # fmt: skip
    for si, (name, vals) in enumerate(series.items()):
        offset = (si - (k - 1) / 2) * min(0.6 / k, 0.12)
        x_of = lambda ci, o=offset: sx(ci + 0.5 + o)  # noqa: E731
        path = [f"{x_of(ci):.1f},{sy(v[0]):.1f}" for ci, v in enumerate(vals) if v is not None]
        body.append(f'<polyline points="{" ".join(path)}" fill="none" stroke-width="1" '
                    f'stroke="{colour(si)}" stroke-opacity="0.5"{dash(si)}/>')  # fmt: skip
        for ci, v in enumerate(vals):
            if v is None:
                continue
            x = x_of(ci)
            body.append(f'<line x1="{x:.1f}" y1="{sy(v[1]):.1f}" x2="{x:.1f}" y2="{sy(v[2]):.1f}" '
                        f'stroke="{colour(si)}"/><circle cx="{x:.1f}" cy="{sy(v[0]):.1f}" r="4" '
                        f'fill="{colour(si)}"><title>{escape(name)}: {escape(v[3])}</title>'
                        "</circle>")  # fmt: skip
    return _frame(title, x_label, y_label, body)
