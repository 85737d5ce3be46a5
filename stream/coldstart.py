"""Cold start: score with an online river detector while the registry has no model.

``preprocessing.StandardScaler | anomaly.HalfSpaceTrees`` (8 trees of height 8,
window 250: measured ~46k events/s with score_one + learn_one on the reference
machine; taller trees cost exponentially more), scoring each event before
learning it.  The scaled features are clipped by HalfSpaceTrees' ``limits``
of ±4 standard deviations.

Calibration: a raw score maps to the fraction of the last
:data:`CALIBRATION_EVENTS` raw scores at or below it (its own running ECDF),
so scores are in [0, 1] and, once the buffer is full, about
``1 - threshold`` of the events alert.  Records name the model ``coldstart@0``.

river is imported when a :class:`ColdStartScorer` is built (cold start only),
not at module import: river's submodules load pandas (and scikit-learn, when
installed), which the warm serving path does without.

The features are learnt from the first event that parses (an object's names in
order, or ``x0..x{D-1}`` for a list); :meth:`adopt_features` does it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import orjson
from numpy.typing import NDArray

from models.calibration import SeverityScale
from stream.core import ScoredBatch

__all__ = ["CALIBRATION_EVENTS", "COLDSTART_REF", "ColdStartScorer", "features_of"]

log = logging.getLogger(__name__)

COLDSTART_REF: Final[str] = "coldstart@0"
CALIBRATION_EVENTS: Final[int] = 5000
THRESHOLD: Final[float] = 0.99
LIMIT_SD: Final[float] = 4.0


@dataclass(frozen=True, slots=True)
class _ColdCard:
    name: str = "coldstart"
    version: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def features_of(values: Sequence[Any]) -> tuple[str, ...]:
    """Feature names of the first value that parses as an event (empty if none does).

    >>> features_of([b"nonsense", b'{"features": {"b": 1, "a": 2}}'])
    ('b', 'a')
    >>> features_of([b'{"features": [1, 2, 3]}'])
    ('x0', 'x1', 'x2')
    """
    for v in values:
        try:
            ev = orjson.loads(v) if isinstance(v, (bytes, str)) else v
        except orjson.JSONDecodeError:
            continue
        f = ev.get("features") if isinstance(ev, dict) else None
        if isinstance(f, dict) and f:
            return tuple(str(k) for k in f)
        if isinstance(f, list) and f:
            return tuple(f"x{i}" for i in range(len(f)))
    return ()


class ColdStartScorer:
    """The :class:`stream.core.Scorer` interface over an online river model.

    Parameters
    ----------
    features : sequence of str
        May be empty until :meth:`adopt_features`.
    seed : int
    """

    provider = "river"
    ref = COLDSTART_REF

    def __init__(self, features: Sequence[str] = (), *, seed: int = 0) -> None:
        from river import anomaly, compose, preprocessing

        self._anomaly, self._compose, self._preprocessing = anomaly, compose, preprocessing
        self.seed = seed
        self.card = _ColdCard()
        self.threshold = THRESHOLD
        self._cuts = _cuts(THRESHOLD)
        self._recent = np.empty(0, dtype=np.float64)
        self.features: tuple[str, ...] = ()
        self.model: Any = None
        if features:
            self.adopt_features(features)

    def adopt_features(self, features: Sequence[str]) -> None:
        """Fix the feature names (and build the model)."""
        self.features = tuple(features)
        limits: dict[Hashable, tuple[float, float]] = {f: (-LIMIT_SD, LIMIT_SD) for f in self.features}
        self.model = self._compose.Pipeline(
            self._preprocessing.StandardScaler(),
            self._anomaly.HalfSpaceTrees(n_trees=8, height=8, window_size=250, limits=limits, seed=self.seed),
        )
        log.info("cold start: river StandardScaler | HalfSpaceTrees on %d features %s", len(features),
                 ", ".join(self.features[:8]))

    def score(self, X: NDArray[np.float32]) -> ScoredBatch:
        """Score then learn each row; NaN features are left out of the row (river skips them)."""
        n = X.shape[0]
        t0 = time.perf_counter()
        raw = np.empty(n, dtype=np.float32)
        names = self.features
        model = self.model
        for i, row in enumerate(X.tolist()):
            x = {f: v for f, v in zip(names, row) if not math.isnan(v)}
            raw[i] = model.score_one(x)
            model.learn_one(x)
        elapsed = time.perf_counter() - t0
        recent = np.concatenate([self._recent, raw.astype(np.float64)])[-CALIBRATION_EVENTS:]
        self._recent = recent
        ordered = np.sort(recent)
        score = np.searchsorted(ordered, raw, side="right") / max(ordered.size, 1)
        score = score.astype(np.float64)
        anomaly = score >= self.threshold
        severity = np.searchsorted(self._cuts, score, side="right").astype(np.int8)
        rows = np.flatnonzero(anomaly)
        k = min(3, len(names))
        # Contributions: the features farthest from the running mean, in standard deviations.
        if rows.size and k:
            scaler = model.steps["StandardScaler"]
            mean = np.array([scaler.means.get(f, 0.0) for f in names])
            var = np.array([scaler.vars.get(f, 1.0) for f in names])
            z = np.abs(np.nan_to_num(X[rows] - mean)) / np.sqrt(np.maximum(var, 1e-12))
            idx = np.argsort(-z, axis=1, kind="stable")[:, :k]
            share = np.take_along_axis(z, idx, axis=1)
            share = (share / np.maximum(z.sum(axis=1, keepdims=True), 1e-12)).astype(np.float32)
        else:
            idx = np.empty((0, k), dtype=np.intp)
            share = np.empty((0, k), dtype=np.float32)
        return ScoredBatch(raw=raw, score=score, anomaly=anomaly, severity=severity, anomalous_rows=rows,
                           top_features=idx, top_shares=share, inference_s=elapsed)


def _cuts(threshold: float) -> NDArray[np.float64]:
    sev = SeverityScale.from_threshold(threshold)
    return np.array([sev.low, sev.medium, sev.high, sev.critical], dtype=np.float64)
