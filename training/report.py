"""The search report: ``report.html`` beside the model (leaderboard and a plot).

Self-contained HTML (inline SVG, no scripts) so it opens anywhere, offline.
"""

from __future__ import annotations

import html
import json

import numpy as np
import pandas as pd

from models.artifact import Card

__all__ = ["report_html"]


def _svg_plot(board: pd.DataFrame, width: int = 640, height: int = 280) -> str:
    done = board[board["value"].notna()].sort_values("trial")
    if done.empty:
        return "<p>No trial completed.</p>"
    xs = done["trial"].to_numpy(dtype=float)
    ys = done["value"].to_numpy(dtype=float)
    best = np.maximum.accumulate(ys)
    pad = 40
    x0, x1 = float(xs.min()), float(max(xs.max(), xs.min() + 1))
    y0, y1 = float(ys.min()), float(ys.max())
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 0.5, y1 + 0.5

    def px(x: float) -> float:
        return pad + (x - x0) / (x1 - x0) * (width - 2 * pad)

    def py(v: float) -> float:
        return height - pad - (v - y0) / (y1 - y0) * (height - 2 * pad)

    dots = "".join(
        f'<circle cx="{px(x):.1f}" cy="{py(v):.1f}" r="3" fill="#4878a8">'
        f"<title>trial {int(x)}: {v:.4f}</title></circle>"
        for x, v in zip(xs, ys, strict=True)
    )
    steps = " ".join(f"{px(x):.1f},{py(v):.1f}" for x, v in zip(xs, best, strict=True))
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="objective per trial">'
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="white" stroke="#ccc"/>'
        f'<polyline points="{steps}" fill="none" stroke="#d62728" stroke-width="2"/>{dots}'
        f'<text x="{pad}" y="{height - 10}" font-size="12">trial {int(x0)}</text>'
        f'<text x="{width - pad}" y="{height - 10}" font-size="12" text-anchor="end">'
        f"trial {int(xs.max())}</text>"
        f'<text x="4" y="{pad - 10}" font-size="12">{y1:.4f}</text>'
        f'<text x="4" y="{height - pad + 14}" font-size="12">{y0:.4f}</text>'
        f'<text x="{width - pad}" y="{pad - 10}" font-size="12" text-anchor="end" '
        'fill="#d62728">running best</text>'
        "</svg>"
    )


def report_html(board: pd.DataFrame, card: Card) -> str:
    """A self-contained HTML page: summary, objective per trial, leaderboard."""
    t = card.training
    summary = {
        "selection": t.get("selection"),
        "trials": t.get("trials"),
        "budget_s": t.get("budget_s"),
        "rows": t.get("rows"),
        "labels": json.dumps(t.get("labels")),
        "detector": json.dumps(card.detector),
        "threshold": f"{card.threshold:.6g} ({t.get('threshold_from')})",
        "parity": f"{card.parity:.3g}",
        **{f"validation {k}": "n/a" if v is None else f"{v:.4f}" for k, v in card.metrics.items()},
    }
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in summary.items()
    )
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8">'
        f"<title>anomstream training report: {html.escape(card.name)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}</style></head><body>"
        f"<h1>Training report: {html.escape(card.name)}</h1><table>{rows}</table>"
        "<h2>Objective per trial</h2>"
        + _svg_plot(board)
        + "<h2>Leaderboard</h2>"
        + str(board.to_html(index=False, escape=True, na_rep="", border=0))
        + "</body></html>"
    )
