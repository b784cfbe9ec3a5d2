"""Small, dependency-free SVG charts for the offline report: grouped bars with CI whiskers,
lines (training curves) and scatter (per-class accuracy vs concept exposure)."""

from __future__ import annotations

import math
from html import escape

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]  # fmt: skip
W, H, L, R, T, B = 640, 300, 56, 170, 24, 48  # size and margins


def _frame(title: str, x_label: str, y_label: str, body: list[str], legend: list[str]) -> str:
    items = [
        f'<rect x="{W - R + 8}" y="{T + 5 + 16 * i}" width="10" height="10" '
        f'fill="{PALETTE[i % len(PALETTE)]}"/>'
        f'<text x="{W - R + 22}" y="{T + 14 + 16 * i}" font-size="11">{escape(name)}</text>'
        for i, name in enumerate(legend)
    ]
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}" font-family="sans-serif" role="img">'
        f"<title>{escape(title)}</title>"
        f'<text x="{L}" y="14" font-size="13" font-weight="bold">{escape(title)}</text>'
        f'<text x="{(L + W - R) / 2}" y="{H - 6}" font-size="11" text-anchor="middle">'
        f"{escape(x_label)}</text>"
        f'<text x="12" y="{(T + H - B) / 2}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 12 {(T + H - B) / 2})">{escape(y_label)}</text>'
        + "".join(body)
        + "".join(items)
        + "</svg>"
    )


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= n:
            step *= m
            break
    start = math.floor(lo / step) * step
    return [
        start + i * step
        for i in range(int((hi - start) / step) + 2)
        if start + i * step <= hi + 1e-12
    ]


def _axes(xlo, xhi, ylo, yhi, fmt=lambda v: f"{v:g}"):
    sx = lambda v: L + (v - xlo) / ((xhi - xlo) or 1) * (W - L - R)  # noqa: E731
    sy = lambda v: H - B - (v - ylo) / ((yhi - ylo) or 1) * (H - T - B)  # noqa: E731
    body = [f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="#444"/>',
            f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="#444"/>']  # fmt: skip
    for t in _ticks(ylo, yhi):
        body.append(f'<line x1="{L - 3}" y1="{sy(t):.1f}" x2="{W - R}" y2="{sy(t):.1f}" '
                    f'stroke="#ddd"/><text x="{L - 6}" y="{sy(t) + 4:.1f}" font-size="10" '
                    f'text-anchor="end">{fmt(t)}</text>')  # fmt: skip
    return sx, sy, body


def bar_chart(title: str, groups: list[str], series: dict[str, list[tuple | None]],
              y_label: str = "accuracy") -> str:  # fmt: skip
    """series: name -> per group (value, ci_low, ci_high) or None; bars with CI whiskers."""
    values = [v for vals in series.values() for v in vals if v is not None]
    yhi = max([max(v[2], v[0]) for v in values] + [1e-9])
    sx, sy, body = _axes(0, len(groups), 0, yhi * 1.05)
    width = 0.8 / max(len(series), 1)
    for gi, g in enumerate(groups):
        body.append(f'<text x="{sx(gi + 0.5):.1f}" y="{H - B + 14}" font-size="10" '
                    f'text-anchor="middle">{escape(g)}</text>')  # fmt: skip
        for si, (name, vals) in enumerate(series.items()):
            v = vals[gi]
            if v is None:
                continue
            x0 = sx(gi + 0.1 + si * width)
            x1 = sx(gi + 0.1 + (si + 1) * width)
            colour = PALETTE[si % len(PALETTE)]
            body.append(f'<rect x="{x0:.1f}" y="{sy(v[0]):.1f}" width="{x1 - x0 - 1:.1f}" '
                        f'height="{sy(0) - sy(v[0]):.1f}" fill="{colour}">'
                        f"<title>{escape(name)} {escape(g)}: {v[0]:.4f} [{v[1]:.4f}, {v[2]:.4f}]"
                        "</title></rect>")  # fmt: skip
            xm = (x0 + x1) / 2
            body.append(f'<line x1="{xm:.1f}" y1="{sy(v[1]):.1f}" x2="{xm:.1f}" '
                        f'y2="{sy(v[2]):.1f}" stroke="#000"/>')  # fmt: skip
    return _frame(title, "", y_label, body, list(series))


def line_chart(title: str, series: dict[str, list[tuple[float, float]]], x_label: str,
               y_label: str) -> str:  # fmt: skip
    pts = [p for s in series.values() for p in s if math.isfinite(p[1])]
    if not pts:
        return ""
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    sx, sy, body = _axes(min(xs), max(xs), min(min(ys), 0), max(ys) * 1.05 or 1)
    for i, (name, s) in enumerate(series.items()):
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s if math.isfinite(y))
        body.append(f'<polyline points="{path}" fill="none" stroke-width="1.5" '
                    f'stroke="{PALETTE[i % len(PALETTE)]}"><title>{escape(name)}</title>'
                    "</polyline>")  # fmt: skip
    body.append(f'<text x="{W - R}" y="{H - B + 14}" font-size="10" text-anchor="end">'
                f"{max(xs):g}</text>")  # fmt: skip
    return _frame(title, x_label, y_label, body, list(series))


def scatter_chart(title: str, series: dict[str, list[tuple[float, float, str]]], x_label: str,
                  y_label: str) -> str:  # fmt: skip
    """series: name -> (x, y, point label); x is drawn on log10(1 + x)."""
    pts = [p for s in series.values() for p in s]
    if not pts:
        return ""
    lx = [math.log10(1 + p[0]) for p in pts]
    sx, sy, body = _axes(0, max(lx) or 1, 0, 1)
    for i, (name, s) in enumerate(series.items()):
        for x, y, label in s:
            body.append(f'<circle cx="{sx(math.log10(1 + x)):.1f}" cy="{sy(y):.1f}" r="3" '
                        f'fill="{PALETTE[i % len(PALETTE)]}" fill-opacity="0.7">'
                        f"<title>{escape(name)} {escape(label)}: exposure {x:g}, "
                        f"accuracy {y:.4f}</title></circle>")  # fmt: skip
    return _frame(title, x_label, y_label, body, list(series))
