"""Label-free strategies and labelled ensembles: what AutoML does beyond one search.

**Without labels** a search has no signal to optimise: label-free selectors
tie IForest at best (``notes/label-free-selection.md``).  :func:`train`
therefore offers fixed, measured strategies (``--label-free``):

``ensemble``
    mean of frozen z-scores of three diverse detectors at their defaults,
    routed by the data's shape as PyOD's ADEngine does (fewer than 20
    features and 5,000 rows: KNN, LOF, CBLOF; fewer than 20 features: IForest,
    ECOD, COPOD; otherwise IForest, ECOD, KNN).  Measured on the 20 shared
    ADBench sets as a z-score consensus of three: +0.017 ROC-AUC over
    IForest (11 wins, 7 losses), −0.036 AUCPR.  The routing rules come from
    ADBench rankings, so that figure is partly in-sample.
``routed``
    one detector: KNN for fewer than 5,000 rows and 20 features, else
    IForest (measured: +0.016 ROC-AUC, ±0 AUCPR, cheaper than IForest).
``iforest``
    IForest at its defaults, the safe default.
``centrality``
    the Optuna search ranked by model centrality (see :mod:`training.selection`).

``make bench`` (``tests/perf/adbench.py``) measures each on the shared sets.

**With labels** the search ranks candidates out of fold; afterwards
:func:`labelled_ensemble` tries the top candidates of distinct algorithms as
a z-score ensemble and keeps it only when its out-of-fold metric beats the
best single candidate by :data:`~training.selection.ENSEMBLE_MIN_GAIN`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Final, Literal

import numpy as np
from numpy.typing import NDArray

from models.zoo import ALGORITHMS
from training.selection import ENSEMBLE_MIN_GAIN, zscore
from training.space import Candidate, default_candidate

__all__ = ["LABEL_FREE", "LabelFree", "label_free_candidates", "labelled_ensemble", "routed"]

LabelFree = Literal["ensemble", "routed", "iforest", "centrality"]
LABEL_FREE: Final[tuple[LabelFree, ...]] = ("ensemble", "routed", "iforest", "centrality")
#: Most members a labelled ensemble gets, and how far below the best one may be.
MAX_MEMBERS: Final[int] = 3
MEMBER_MARGIN: Final[float] = 0.05


def routed(n_rows: int, n_features: int, *, members: int) -> list[str]:
    """Detectors for data of this shape (``members`` = 1 or 3); see the module docstring.

    >>> routed(1000, 8, members=3), routed(1000, 8, members=1), routed(50_000, 40, members=1)
    (['knn', 'lof', 'cblof'], ['knn'], ['iforest'])
    """
    if members == 1:
        return ["knn" if n_rows < 5000 and n_features < 20 else "iforest"]
    if n_features < 20:
        return ["knn", "lof", "cblof"] if n_rows < 5000 else ["iforest", "ecod", "copod"]
    return ["iforest", "ecod", "knn"]


def label_free_candidates(strategy: LabelFree, n_rows: int, n_features: int, seed: int,
                          available: Sequence[str]) -> list[Candidate]:
    """The fixed candidates of a no-search strategy (scale-sensitive ones standardised)."""
    if strategy == "iforest":
        names = ["iforest"]
    elif strategy == "routed":
        names = routed(n_rows, n_features, members=1)
    elif strategy == "ensemble":
        names = routed(n_rows, n_features, members=3)
    else:
        raise ValueError(f"strategy {strategy!r} searches; it has no fixed candidates")
    names = [a for a in names if a in available] or [a for a in ("iforest", *available) if a in available][:1]
    out = []
    for a in names:
        c = default_candidate(a, seed)
        if ALGORITHMS[a].scale_sensitive:
            c = Candidate(algorithm=c.algorithm, params=c.params, scaler="standard", onehot=c.onehot)
        out.append(c)
    return out


def labelled_ensemble(
    order: Sequence[int], cands: Mapping[int, Candidate], values: Mapping[int, float],
    oof: Mapping[int, NDArray[np.float64]], objective: Callable[[NDArray[np.float64], NDArray[np.float64]], float],
) -> tuple[list[int], float, NDArray[np.float64]] | None:
    """Top candidates of distinct algorithms whose z-score mean beats the best one out of fold.

    Returns the member trial numbers, the ensemble's objective value and its
    out-of-fold scores, or None when no ensemble gains enough.
    """
    if not order or order[0] not in oof:
        return None
    best = order[0]
    members, seen = [best], {cands[best].algorithm}
    for n in order[1:]:
        if len(members) == MAX_MEMBERS:
            break
        if n in oof and cands[n].algorithm not in seen and values[n] >= values[best] - MEMBER_MARGIN:
            members.append(n)
            seen.add(cands[n].algorithm)
    best_value, best_members, best_scores = values[best], None, None
    for k in range(2, len(members) + 1):
        scores = np.mean([zscore(oof[n]) for n in members[:k]], axis=0)
        value = float(objective(np.empty(0), scores))
        if value >= best_value + ENSEMBLE_MIN_GAIN:
            best_value, best_members, best_scores = value, members[:k], scores
    if best_members is None or best_scores is None:
        return None
    return best_members, best_value, best_scores
