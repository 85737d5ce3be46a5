"""The search report: ``report.html`` beside the model.

Self-contained HTML (inline SVG, no scripts) so it opens anywhere, offline:
a summary of the card; quality against scoring cost per trial (the
leaderboard as a plot); the optimisation history; the chosen model's
validation score distribution per class, and ROC and precision-recall curves
when labels of both classes exist; hyperparameter importances
(``optuna.importance``, fANOVA) when at least two trials completed; the
leaderboard table.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass

import numpy as np
import optuna
import pandas as pd
from numpy.typing import NDArray
from sklearn.metrics import precision_recall_curve, roc_curve

from models.artifact import Card
from training.plots import Frame, bars, lines, scatter

__all__ = ["ReportData", "report_html"]

HIST_BINS = 30


@dataclass(frozen=True, slots=True)
class ReportData:
    """What the report shows: the leaderboard, the card, the study and the winner's validation scores."""

    board: pd.DataFrame
    card: Card
    study: optuna.Study | None = None
    val_scores: NDArray[np.float64] | None = None
    y_val: NDArray[np.float64] | None = None


def _quality_vs_cost(board: pd.DataFrame) -> str:
    done = board[board["value"].notna() & board["score_us"].notna()]
    if done.empty:
        return "<p>No trial completed.</p>"
    groups = []
    for algo, rows in done.groupby("algorithm", sort=True):
        pts = [
            (float(r.score_us), float(r.value),
             f"trial {r.trial} {algo}: {r.value:.4f}, {r.score_us:.2f} µs/row" + (f" ({r.note})" if r.note else ""))
            for r in rows.itertuples()
        ]  # fmt: skip
        groups.append((str(algo), pts))
    xs = done["score_us"].astype(float).tolist()
    ys = done["value"].astype(float).tolist()
    frame = Frame.around(xs, ys, logx=True)
    rejected = done[done["note"].astype(str).str.startswith("rejected")]
    marks = "".join(
        f'<line x1="{frame.px(float(r.score_us)) - 6:.1f}" y1="{frame.py(float(r.value)) - 6:.1f}" '
        f'x2="{frame.px(float(r.score_us)) + 6:.1f}" y2="{frame.py(float(r.value)) + 6:.1f}" stroke="black"/>'
        for r in rejected.itertuples()
    )
    return scatter(
        groups, title="quality and scoring cost per trial (crossed: rejected as too slow)",
        xlabel="ONNX scoring cost, µs per row (log)", ylabel="objective", extra=marks, frame=frame,
    )  # fmt: skip


def _history(board: pd.DataFrame) -> str:
    done = board[board["value"].notna()].sort_values("trial")
    if done.empty:
        return "<p>No trial completed.</p>"
    xs = done["trial"].astype(float).tolist()
    ys = done["value"].astype(float).tolist()
    ok = ~done["note"].astype(str).str.startswith("rejected")
    best, running = [], -np.inf
    for x, y, good in zip(xs, ys, ok, strict=True):
        running = max(running, y) if good else running
        if np.isfinite(running):
            best.append((x, running))
    frame = Frame.around(xs, ys)
    trials = scatter(
        [("trial", [(x, y, f"trial {int(x)}: {y:.4f}") for x, y in zip(xs, ys, strict=True)])],
        title="",
        xlabel="",
        ylabel="",
        frame=frame,
    )
    dots = trials[trials.index("<circle") : trials.rindex("</circle>") + len("</circle>")]
    svg = lines(
        [("best so far", best)],
        title="optimisation history",
        xlabel="trial",
        ylabel="objective",
        frame=frame,
        steps=True,
    )
    return svg.replace("</svg>", dots + "</svg>")


def _distributions(scores: NDArray[np.float64], y: NDArray[np.float64] | None) -> str:
    classes = [("all rows", np.ones(scores.shape, dtype=bool))]
    if y is not None:
        classes = [
            (name, mask)
            for name, mask in (
                ("normal", y == 0.0),
                ("anomaly", y == 1.0),
                ("unknown", np.isnan(y)),
            )
            if mask.any()
        ]
    edges = np.histogram_bin_edges(scores, bins=HIST_BINS)
    centres = (edges[:-1] + edges[1:]) / 2
    series = []
    for name, mask in classes:
        counts, _ = np.histogram(scores[mask], bins=edges)
        density = counts / max(int(mask.sum()), 1)
        series.append(
            (
                f"{name} ({int(mask.sum())})",
                list(zip(centres.tolist(), density.tolist(), strict=True)),
            )
        )
    return lines(series, title="validation scores of the chosen model, per class", xlabel="raw score",
                 ylabel="fraction of rows")  # fmt: skip


def _curves(scores: NDArray[np.float64], y: NDArray[np.float64] | None) -> str:
    if y is None:
        return ""
    known = ~np.isnan(y)
    yk = y[known]
    if not (np.any(yk == 1.0) and np.any(yk == 0.0)):
        return ""
    fpr, tpr, _ = roc_curve(yk, scores[known])
    precision, recall, _ = precision_recall_curve(yk, scores[known])
    unit = Frame(0.0, 1.0, 0.0, 1.0)
    roc = lines([("ROC", list(zip(fpr.tolist(), tpr.tolist(), strict=True))), ("chance", [(0.0, 0.0), (1.0, 1.0)])],
                title="ROC curve (validation)", xlabel="false positive rate", ylabel="true positive rate",
                frame=unit)  # fmt: skip
    pr = lines([("precision-recall", list(zip(recall.tolist(), precision.tolist(), strict=True)))],
               title="precision-recall curve (validation)", xlabel="recall", ylabel="precision",
               frame=unit)  # fmt: skip
    return "<h2>ROC and precision-recall</h2>" + roc + pr


def _importances(study: optuna.Study | None) -> str:
    if study is None:
        return ""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(done) < 2:
        return "<p>Parameter importances need at least two completed trials.</p>"
    try:
        imp = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
        )
    except (ValueError, RuntimeError) as exc:  # e.g. a single distinct point: nothing to attribute
        return f"<p>Parameter importances unavailable: {html.escape(str(exc))}</p>"
    if not imp:
        return "<p>Parameter importances unavailable: no parameter varied across the trials.</p>"
    return bars(
        list(imp.items()), title="parameter importances", xlabel="fANOVA, over completed trials"
    )


def report_html(data: ReportData) -> str:
    """A self-contained HTML page: summary, plots, leaderboard."""
    card, board = data.card, data.board
    t = card.training
    summary = {
        "selection": t.get("selection"),
        "trials": t.get("trials"),
        "budget_s": t.get("budget_s"),
        "rows": t.get("rows"),
        "labels": json.dumps(t.get("labels")),
        "detector": json.dumps(card.detector),
        "scoring cost": "n/a"
        if t.get("score_us") is None
        else f"{t['score_us']:.2f} µs/row (batch 256, 1 thread)",
        "threshold": f"{card.threshold:.6g} ({t.get('threshold_from')})",
        "parity": f"{card.parity:.3g}",
        **{f"validation {k}": "n/a" if v is None else f"{v:.4f}" for k, v in card.metrics.items()},
    }
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in summary.items()
    )
    parts = [
        '<!DOCTYPE html><html><head><meta charset="utf-8">',
        f"<title>anomstream training report: {html.escape(card.name)}</title>",
        (
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}svg{margin:4px}</style>"
            "</head><body>"
        ),
        f"<h1>Training report: {html.escape(card.ref if card.version else card.name)}</h1><table>{rows}</table>",
        "<h2>Leaderboard: quality and cost</h2>",
        _quality_vs_cost(board),
        "<h2>Optimisation history</h2>",
        _history(board),
    ]
    if data.val_scores is not None and data.val_scores.size:
        parts += ["<h2>Score distributions</h2>", _distributions(data.val_scores, data.y_val)]
        parts.append(_curves(data.val_scores, data.y_val))
    parts += ["<h2>Parameter importances</h2>", _importances(data.study)]
    parts += [
        "<h2>Leaderboard</h2>",
        str(board.to_html(index=False, escape=True, na_rep="", border=0)),
    ]
    parts.append("</body></html>")
    return "".join(parts)
