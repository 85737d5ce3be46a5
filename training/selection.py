"""What the search maximises, and how the winner is picked.

**Labels first.**  Whenever the data carry labels, even a handful of confirmed
incidents, the objective is ROC-AUC (or AUCPR) of the candidate's validation
scores on the labelled validation rows.  When only anomalies are labelled (the
common case: an analyst confirmed 3-20 incidents, every other row is unknown)
the unknown rows stand in for normals; the few anomalies hidden among them
lower every candidate's AUC alike, so the ranking holds.  Measured on the 20
shared ADBench sets, picking by AUC with only 5 labelled anomalies beats
"always IForest" by +0.053 mean ROC-AUC (``notes/label-free-selection.md``).
If the validation split holds no known anomaly but the training rows do (a
chronological split can do that), the labelled training rows are used,
scored by the candidate fitted on them.

**No labels: model centrality** (Lin, Zhao, Akoglu et al., ICML 2020).  A
reference panel (every searched algorithm at its defaults) is fitted once
before the search; each member's validation scores are turned into z-scores
with the mean and standard deviation of its own training scores, and their
mean is the consensus.  A candidate's objective is the Spearman rank
correlation of its validation scores with that fixed consensus: the candidate
that agrees most with the others wins.  The caveat, measured here and in Ma et
al. (2023): label-free selection at best *ties* IForest at its defaults
(within about ±0.01 ROC-AUC, no gain on AUCPR), and centrality fails when most
detectors share a blind spot.  IForest at defaults is therefore the safe
default: it is always the first trial, and candidates within
:attr:`Objective.tie_tolerance` of the best count as tied, with ties broken
towards it (then towards other IForest settings, then the earlier trial).

Examples
--------
>>> import numpy as np
>>> y = np.array([0, 0, 1, np.nan, 0, 1])
>>> obj = LabelledObjective(y_val=y, y_fit=None, metric="roc_auc")
>>> obj.name, obj.needs_fit_scores
('labels:roc_auc', False)
>>> float(obj(np.zeros(6), np.array([0.1, 0.2, 0.9, 0.5, 0.3, 0.8])))
1.0
>>> pick([(0, 0.80, True, True), (1, 0.805, False, False), (2, 0.90, False, True)], 0.01)
[2, 1, 0]
>>> pick([(0, 0.80, True, True), (1, 0.805, False, False)], 0.01)
[0, 1]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Final, Literal, Protocol

import numpy as np
from numpy.typing import NDArray
from scipy.stats import rankdata, ttest_rel
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

__all__ = [
    "CV_FOLDS",
    "ENSEMBLE_MIN_GAIN",
    "CentralityObjective",
    "LabelledObjective",
    "Metric",
    "Objective",
    "cv_folds",
    "f1_threshold",
    "fold_values",
    "make_objective",
    "pick",
    "prefer_cheaper",
    "spearman",
    "validation_metrics",
    "zscore",
]

Metric = Literal["roc_auc", "aucpr"]
FloatArray = NDArray[np.float64]


class Objective(Protocol):
    """Maps a candidate's scores to the value the search maximises."""

    @property
    def name(self) -> str:
        """``labels:<metric>`` or ``label_free:centrality`` (recorded in the card)."""
        ...

    @property
    def tie_tolerance(self) -> float:
        """Values this close to the best count as tied."""
        ...

    @property
    def needs_fit_scores(self) -> bool:
        """Whether :meth:`__call__` reads the scores of the fitted rows."""
        ...

    def __call__(self, fit_scores: FloatArray, val_scores: FloatArray) -> float: ...


def _score(metric: Metric, y: FloatArray, s: FloatArray) -> float:
    if metric == "aucpr":
        return float(average_precision_score(y, s))
    return float(roc_auc_score(y, s))


def _pu_targets(y: FloatArray) -> tuple[NDArray[np.bool_], FloatArray] | None:
    """Rows and 0/1 targets to score on, or None when no anomaly is known."""
    known = ~np.isnan(y)
    if not np.any(y[known] == 1.0):
        return None
    if np.any(y[known] == 0.0):
        return known, y[known]
    # Only anomalies are known: the unknown rows stand in for normals.
    rows = np.ones(y.shape, dtype=bool)
    return rows, np.where(y == 1.0, 1.0, 0.0)


@dataclass(frozen=True, slots=True)
class LabelledObjective:
    """ROC-AUC or AUCPR on labelled rows of the validation split (else of the fitted rows).

    Parameters
    ----------
    y_val : ndarray
        Labels of the validation rows (NaN = unknown).
    y_fit : ndarray or None
        Labels of the rows the candidate is fitted on; used only when the
        validation rows hold no known anomaly.
    metric : {"roc_auc", "aucpr"}
    """

    y_val: FloatArray
    y_fit: FloatArray | None
    metric: Metric = "roc_auc"
    tie_tolerance: ClassVar[float] = 0.005

    @property
    def name(self) -> str:
        return f"labels:{self.metric}"

    @property
    def needs_fit_scores(self) -> bool:
        return _pu_targets(self.y_val) is None

    def __call__(self, fit_scores: FloatArray, val_scores: FloatArray) -> float:
        target = _pu_targets(self.y_val)
        scores = val_scores
        if target is None:
            if self.y_fit is None or (target := _pu_targets(self.y_fit)) is None:
                raise ValueError("labelled objective needs at least one known anomaly")
            scores = fit_scores
        rows, y = target
        return _score(self.metric, y, np.asarray(scores, dtype=np.float64)[rows])


def spearman(a: FloatArray, b: FloatArray) -> float:
    """Spearman rank correlation; 0.0 when either side is constant."""
    ra = rankdata(a)
    rb = rankdata(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = float(np.sqrt(np.dot(ra, ra) * np.dot(rb, rb)))
    return float(np.dot(ra, rb) / denom) if denom > 0.0 else 0.0


@dataclass(frozen=True, slots=True)
class CentralityObjective:
    """Spearman correlation with a fixed consensus of a reference panel (label-free)."""

    consensus: FloatArray
    tie_tolerance: ClassVar[float] = 0.01
    needs_fit_scores: ClassVar[bool] = False

    @property
    def name(self) -> str:
        return "label_free:centrality"

    @classmethod
    def from_panel(cls, panel: Sequence[tuple[FloatArray, FloatArray]]) -> CentralityObjective:
        """Build the consensus from ``(training scores, validation scores)`` per panel member."""
        if not panel:
            raise ValueError("model centrality needs at least one reference detector")
        zs = []
        for fit_scores, val_scores in panel:
            mu, sd = float(np.mean(fit_scores)), float(np.std(fit_scores))
            zs.append((np.asarray(val_scores, dtype=np.float64) - mu) / (sd if sd > 0.0 else 1.0))
        return cls(consensus=np.mean(zs, axis=0))

    def __call__(self, fit_scores: FloatArray, val_scores: FloatArray) -> float:
        return spearman(np.asarray(val_scores, dtype=np.float64), self.consensus)


def make_objective(
    y_fit: FloatArray | None, y_val: FloatArray | None, metric: Metric
) -> LabelledObjective | None:
    """The labelled objective when any anomaly is known, else None (use centrality)."""
    if y_val is None:
        return None
    for y in (y_val, y_fit):
        if y is not None and _pu_targets(y) is not None:
            return LabelledObjective(y_val=y_val, y_fit=y_fit, metric=metric)
    return None


def pick(entries: Sequence[tuple[int, float, bool, bool]], tie_tolerance: float) -> list[int]:
    """Order trials best first, ties broken towards IForest at defaults.

    Parameters
    ----------
    entries : sequence of (trial number, value, is the safe default, is IForest)
    tie_tolerance : float
        Values within this of the best are tied.

    Returns
    -------
    list of int
        Trial numbers, the chosen one first.
    """
    if not entries:
        return []
    best = max(v for _, v, _, _ in entries)

    def key(e: tuple[int, float, bool, bool]) -> tuple[bool, bool, bool, float, int]:
        number, value, safe, iforest = e
        tied = value >= best - tie_tolerance
        return (not tied, not (tied and safe), not (tied and iforest), -value, number)

    return [e[0] for e in sorted(entries, key=key)]


def _known(y: FloatArray) -> NDArray[np.bool_] | None:
    known = ~np.isnan(y)
    if np.any(y[known] == 1.0) and np.any(y[known] == 0.0):
        return known
    return None


def f1_threshold(y: FloatArray, calibrated: FloatArray) -> float | None:
    """Calibrated threshold maximising F1 on the labelled rows (None without both classes).

    The threshold sits halfway between the lowest score flagged and the
    highest score below it, so it does not sit on a training quantile knot.
    """
    known = _known(y)
    if known is None:
        return None
    yk = y[known]
    s = np.asarray(calibrated, dtype=np.float64)[known]
    levels = np.unique(s)[::-1]  # candidate cuts, highest first
    best_f1, best_i = -1.0, 0
    positives = float(np.sum(yk == 1.0))
    for i, t in enumerate(levels):
        flagged = s >= t
        tp = float(np.sum(flagged & (yk == 1.0)))
        f1 = 2.0 * tp / (float(np.sum(flagged)) + positives)
        if f1 > best_f1:  # strict: ties keep the higher threshold (fewer alerts)
            best_f1, best_i = f1, i
    t = float(levels[best_i])
    below = levels[best_i + 1] if best_i + 1 < levels.size else 0.0
    return float(min(max((t + float(below)) / 2.0, 1e-6), 1.0))


def validation_metrics(
    y: FloatArray | None, raw: FloatArray, calibrated: FloatArray, threshold: float
) -> dict[str, float | None]:
    """ROC-AUC, AUCPR and F1 at ``threshold`` on labelled rows; None without both classes."""
    known = None if y is None else _known(y)
    if y is None or known is None:
        return {"roc_auc": None, "aucpr": None, "f1": None}
    yk = y[known]
    flagged = np.asarray(calibrated)[known] >= threshold
    return {
        "roc_auc": _score("roc_auc", yk, raw[known]),
        "aucpr": _score("aucpr", yk, raw[known]),
        "f1": float(f1_score(yk, flagged.astype(np.float64), zero_division=0.0)),
    }


# --------------------------------------------------------------------------- cross-validation
#: Folds of the labelled search: every known anomaly is scored out of fold once.
CV_FOLDS: Final[int] = 5
#: A candidate this close to the best (mean over folds) and not significantly
#: worse (one-sided paired t-test over folds, p >= 0.05) counts as equal: the
#: cheapest such candidate (µs per row) wins.
EQUIVALENCE_MARGIN: Final[float] = 0.01
#: An ensemble replaces the best single candidate only when its out-of-fold
#: metric beats it by at least this much.
ENSEMBLE_MIN_GAIN: Final[float] = 0.005


def cv_folds(y: FloatArray, k: int, seed: int) -> list[tuple[NDArray[np.intp], NDArray[np.intp]]]:
    """``k`` folds (train positions, test positions), stratified on known anomaly vs the rest."""
    rng = np.random.default_rng(seed)
    assign = np.empty(y.size, dtype=np.intp)
    for stratum in (y == 1.0, ~(y == 1.0)):
        rows = rng.permutation(np.flatnonzero(stratum))
        assign[rows] = np.arange(rows.size) % k
    positions = np.arange(y.size)
    return [(positions[assign != f], positions[assign == f]) for f in range(k)]


def fold_values(metric: Metric, y: FloatArray, oof: FloatArray,
                folds: Sequence[tuple[NDArray[np.intp], NDArray[np.intp]]]) -> list[float]:
    """The metric on each fold's labelled rows (NaN for a fold without both classes)."""
    out = []
    for _, test in folds:
        target = _pu_targets(y[test])
        if target is None or np.unique(target[1]).size < 2:
            out.append(float("nan"))
            continue
        rows, yt = target
        out.append(_score(metric, yt, np.asarray(oof, dtype=np.float64)[test][rows]))
    return out


def prefer_cheaper(order: Sequence[int], folds: Mapping[int, Sequence[float]],
                   values: Mapping[int, float], cost_us: Mapping[int, float | None]) -> list[int]:
    """Move the cheapest candidate statistically equal to the best to the front.

    Equal: mean within :data:`EQUIVALENCE_MARGIN` of the best and a one-sided
    paired t-test over the folds (best better) with p >= 0.05.

    >>> prefer_cheaper([1, 2], {1: [.9, .8, .85], 2: [.89, .81, .84]}, {1: .85, 2: .847}, {1: 30.0, 2: 2.0})
    [2, 1]
    >>> prefer_cheaper([1, 2], {1: [.9, .9, .9], 2: [.7, .72, .71]}, {1: .9, 2: .71}, {1: 30.0, 2: 2.0})
    [1, 2]
    """
    if len(order) < 2:
        return list(order)
    best = order[0]
    equal = [best]
    for other in order[1:]:
        if values[other] < values[best] - EQUIVALENCE_MARGIN:
            continue
        a, b = np.asarray(folds.get(best, ())), np.asarray(folds.get(other, ()))
        both = ~(np.isnan(a) | np.isnan(b)) if a.size == b.size and a.size else np.zeros(0, dtype=bool)
        if both.sum() < 2:
            continue
        d = a[both] - b[both]
        if np.allclose(d, 0.0):
            p = 1.0
        else:
            p = float(ttest_rel(a[both], b[both], alternative="greater").pvalue)
        if p >= 0.05:
            equal.append(other)
    costs = {n: cost_us.get(n) for n in equal}
    if any(c is None for c in costs.values()):
        return list(order)
    cheapest = min(equal, key=lambda n: (costs[n], order.index(n)))
    return [cheapest, *[n for n in order if n != cheapest]]


def zscore(s: FloatArray) -> FloatArray:
    """Standardise scores by their own mean and sd (sd 0 → 1)."""
    s = np.asarray(s, dtype=np.float64)
    sd = float(s.std())
    return (s - float(s.mean())) / (sd if sd > 0 else 1.0)
