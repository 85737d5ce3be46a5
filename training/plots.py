"""Small inline-SVG charts for the training report (no plotting library, no scripts).

Each function returns one ``<svg>`` element as a string.

Examples
--------
>>> svg = lines([("a", [(0.0, 0.0), (1.0, 1.0)])], title="t", xlabel="x", ylabel="y")
>>> svg.startswith("<svg") and "polyline" in svg
True
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = ["PALETTE", "Frame", "bars", "lines", "scatter"]

PALETTE: Final[tuple[str, ...]] = (
    "#4878a8", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
)  # fmt: skip
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 560, 300, 64, 16, 28, 44


def _esc(s: object) -> str:
    return html.escape(str(s))


def _fmt(v: float) -> str:
    return f"{v:.3g}"


@dataclass(frozen=True, slots=True)
class Frame:
    """Axes mapping data to pixels (``logx``: log10 x axis)."""

    x0: float
    x1: float
    y0: float
    y1: float
    logx: bool = False

    @classmethod
    def around(cls, xs: Sequence[float], ys: Sequence[float], *, logx: bool = False) -> Frame:
        fx = [math.log10(x) for x in xs if x > 0] if logx else list(xs)
        x0, x1 = (min(fx), max(fx)) if fx else (0.0, 1.0)
        y0, y1 = (min(ys), max(ys)) if ys else (0.0, 1.0)
        if x1 - x0 < 1e-12:
            x0, x1 = x0 - 0.5, x1 + 0.5
        if y1 - y0 < 1e-12:
            y0, y1 = y0 - 0.5, y1 + 0.5
        return cls(x0, x1, y0, y1, logx)

    def px(self, x: float) -> float:
        v = math.log10(max(x, 1e-12)) if self.logx else x
        return PAD_L + (v - self.x0) / (self.x1 - self.x0) * (W - PAD_L - PAD_R)

    def py(self, y: float) -> float:
        return H - PAD_B - (y - self.y0) / (self.y1 - self.y0) * (H - PAD_T - PAD_B)

    def svg(
        self, body: str, *, title: str, xlabel: str, ylabel: str, legend: Sequence[str] = ()
    ) -> str:
        xt0 = 10**self.x0 if self.logx else self.x0
        xt1 = 10**self.x1 if self.logx else self.x1
        keys = "".join(
            f'<rect x="{W - PAD_R - 150}" y="{PAD_T + 4 + 16 * i}" width="10" height="10" '
            f'fill="{PALETTE[i % len(PALETTE)]}"/><text x="{W - PAD_R - 135}" y="{PAD_T + 13 + 16 * i}" '
            f'font-size="11">{_esc(name)}</text>'
            for i, name in enumerate(legend)
        )
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" role="img" '
            f'aria-label="{_esc(title)}"><rect width="{W}" height="{H}" fill="white" stroke="#ccc"/>'
            f'<text x="{W / 2}" y="18" font-size="13" text-anchor="middle">{_esc(title)}</text>'
            f'<line x1="{PAD_L}" y1="{H - PAD_B}" x2="{W - PAD_R}" y2="{H - PAD_B}" stroke="#888"/>'
            f'<line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{H - PAD_B}" stroke="#888"/>'
            f'<text x="{PAD_L}" y="{H - PAD_B + 14}" font-size="11">{_fmt(xt0)}</text>'
            f'<text x="{W - PAD_R}" y="{H - PAD_B + 14}" font-size="11" text-anchor="end">{_fmt(xt1)}</text>'
            f'<text x="{W / 2}" y="{H - 8}" font-size="12" text-anchor="middle">{_esc(xlabel)}</text>'
            f'<text x="{PAD_L - 4}" y="{PAD_T + 10}" font-size="11" text-anchor="end">{_fmt(self.y1)}</text>'
            f'<text x="{PAD_L - 4}" y="{H - PAD_B}" font-size="11" text-anchor="end">{_fmt(self.y0)}</text>'
            f'<text x="14" y="{H / 2}" font-size="12" text-anchor="middle" '
            f'transform="rotate(-90 14 {H / 2})">{_esc(ylabel)}</text>{body}{keys}</svg>'
        )


def lines(
    series: Sequence[tuple[str, Sequence[tuple[float, float]]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    frame: Frame | None = None,
    steps: bool = False,
) -> str:
    """One polyline per named series (``steps``: a step function)."""
    pts = [p for _, s in series for p in s]
    f = frame or Frame.around([x for x, _ in pts], [y for _, y in pts])
    body = ""
    for i, (name, s) in enumerate(series):
        coords = []
        for j, (x, y) in enumerate(s):
            if steps and j > 0:
                coords.append(f"{f.px(x):.1f},{f.py(s[j - 1][1]):.1f}")
            coords.append(f"{f.px(x):.1f},{f.py(y):.1f}")
        body += (
            f'<polyline points="{" ".join(coords)}" fill="none" stroke="{PALETTE[i % len(PALETTE)]}" '
            f'stroke-width="2"><title>{_esc(name)}</title></polyline>'
        )
    return f.svg(body, title=title, xlabel=xlabel, ylabel=ylabel, legend=[n for n, _ in series])


def scatter(
    groups: Sequence[tuple[str, Sequence[tuple[float, float, str]]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
    extra: str = "",
    frame: Frame | None = None,
) -> str:
    """Points ``(x, y, tooltip)`` per named group, one colour per group."""
    pts = [(x, y) for _, g in groups for x, y, _ in g]
    f = frame or Frame.around([x for x, _ in pts], [y for _, y in pts], logx=logx)
    body = extra
    for i, (_, g) in enumerate(groups):
        colour = PALETTE[i % len(PALETTE)]
        body += "".join(
            f'<circle cx="{f.px(x):.1f}" cy="{f.py(y):.1f}" r="4" fill="{colour}" fill-opacity="0.8">'
            f"<title>{_esc(tip)}</title></circle>"
            for x, y, tip in g
        )
    return f.svg(body, title=title, xlabel=xlabel, ylabel=ylabel, legend=[n for n, _ in groups])


def bars(items: Sequence[tuple[str, float]], *, title: str, xlabel: str) -> str:
    """Horizontal bars, one per ``(label, value >= 0)``."""
    n = max(len(items), 1)
    height = 40 + 22 * n
    top = max((v for _, v in items), default=1.0) or 1.0
    body = "".join(
        f'<text x="{PAD_L + 96}" y="{34 + 22 * i}" font-size="11" text-anchor="end">{_esc(label)}</text>'
        f'<rect x="{PAD_L + 100}" y="{22 + 22 * i}" height="16" width="{v / top * (W - PAD_L - 180):.1f}" '
        f'fill="{PALETTE[0]}"><title>{_esc(label)}: {v:.4f}</title></rect>'
        f'<text x="{PAD_L + 104 + v / top * (W - PAD_L - 180):.1f}" y="{34 + 22 * i}" font-size="11">{v:.3f}</text>'
        for i, (label, v) in enumerate(items)
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" role="img" '
        f'aria-label="{_esc(title)}"><rect width="{W}" height="{height}" fill="white" stroke="#ccc"/>'
        f'<text x="{W / 2}" y="15" font-size="13" text-anchor="middle">{_esc(title)} ({_esc(xlabel)})</text>'
        f"{body}</svg>"
    )
