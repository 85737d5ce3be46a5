"""Calibration of raw scores into [0, 1] and the severity scale.

Both are fitted offline on the training scores and applied online by the
inference core, so this module depends on numpy only.

The calibrated score of a raw score ``s`` is the fraction of training rows
whose raw score is at most ``s`` (the empirical CDF), kept as a piecewise
linear curve through at most a few hundred quantile knots, denser in the
upper tail where alerts are decided.  A row scored above every training row
gets 1.0.  With ``contamination = c`` the threshold on the calibrated score is
``1 - c``: on data like the training data, a fraction ``c`` of rows alert.

Severity grades how rare an anomaly is relative to the alert rate:

======== =========================================================
low      calibrated score at or above the threshold ``1 - c``
medium   at or above ``1 - c/4`` (rarer than a quarter of the alerts)
high     at or above ``1 - c/20``
critical raw score above every training score (calibrated 1.0)
======== =========================================================

Examples
--------
>>> import numpy as np
>>> cal = Calibration.fit(np.arange(1000, dtype=np.float64))
>>> [round(float(v), 3) for v in cal.apply(np.array([-5.0, 499.5, 2000.0]))]
[0.0, 0.5, 1.0]
>>> sev = SeverityScale.from_threshold(0.99)
>>> sev.grade(np.array([0.5, 0.991, 0.998, 0.9996, 1.0])).tolist()
[0, 1, 2, 3, 4]
>>> [SEVERITIES[i] for i in (0, 4)]
['none', 'critical']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
from numpy.typing import NDArray

__all__ = ["SEVERITIES", "Calibration", "Severity", "SeverityScale"]

Severity = Literal["none", "low", "medium", "high", "critical"]
SEVERITIES: Final[tuple[Severity, ...]] = ("none", "low", "medium", "high", "critical")


def _knot_levels() -> NDArray[np.float64]:
    body = np.linspace(0.0, 0.9, 91)
    tail = np.linspace(0.9, 0.999, 100, endpoint=False)
    far = 1.0 - np.geomspace(1e-3, 1e-6, 61)
    return np.unique(np.concatenate([body, tail, far, [1.0]]))


@dataclass(frozen=True, slots=True)
class Calibration:
    """Piecewise-linear empirical CDF of the training scores.

    Parameters
    ----------
    raw : tuple of float
        Raw-score knots, non-decreasing.
    calibrated : tuple of float
        Calibrated value at each knot, non-decreasing, in [0, 1].
    """

    raw: tuple[float, ...]
    calibrated: tuple[float, ...]

    @classmethod
    def fit(cls, train_scores: NDArray[np.floating]) -> Calibration:
        """Fit on the raw scores of the training rows."""
        scores = np.asarray(train_scores, dtype=np.float64).ravel()
        scores = scores[np.isfinite(scores)]
        if scores.size < 2:
            raise ValueError(f"calibration needs at least 2 finite scores, got {scores.size}")
        levels = _knot_levels()
        knots = np.quantile(scores, levels, method="linear")
        # Collapse ties: keep the highest level for each distinct knot so the
        # curve stays a function of the raw score.
        uniq, last = np.unique(knots[::-1], return_index=True)
        lv = levels[::-1][last]
        if uniq.size == 1:
            return cls(raw=(float(uniq[0]),), calibrated=(1.0,))
        # Below the lowest knot the ECDF is 0.
        lv = np.maximum.accumulate(lv)
        lv[0] = 0.0
        return cls(raw=tuple(float(v) for v in uniq), calibrated=tuple(float(v) for v in lv))

    def apply(self, raw: NDArray[np.floating]) -> NDArray[np.float64]:
        """Map raw scores to [0, 1]; vectorised."""
        x = np.asarray(raw, dtype=np.float64)
        if len(self.raw) == 1:
            return np.where(x > self.raw[0], 1.0, 0.0)
        out = np.interp(x, self.raw, self.calibrated, left=0.0, right=1.0)
        return out

    def to_dict(self) -> dict[str, object]:
        return {"method": "ecdf", "raw": list(self.raw), "calibrated": list(self.calibrated)}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Calibration:
        method = d.get("method")
        if method != "ecdf":
            raise ValueError(f"unknown calibration method {method!r}, expected 'ecdf'")
        raw = d.get("raw")
        cal = d.get("calibrated")
        if not isinstance(raw, list) or not isinstance(cal, list) or len(raw) != len(cal) or not raw:
            raise ValueError("calibration needs equal-length, non-empty 'raw' and 'calibrated' lists")
        return cls(raw=tuple(float(v) for v in raw), calibrated=tuple(float(v) for v in cal))


@dataclass(frozen=True, slots=True)
class SeverityScale:
    """Cut points on the calibrated score: ``low <= medium <= high <= critical``."""

    low: float
    medium: float
    high: float
    critical: float = 1.0

    @classmethod
    def from_threshold(cls, threshold: float) -> SeverityScale:
        """Derive the cuts from the alert threshold (see module docstring)."""
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        c = 1.0 - threshold
        return cls(low=threshold, medium=1.0 - c / 4.0, high=1.0 - c / 20.0, critical=1.0)

    def grade(self, calibrated: NDArray[np.floating]) -> NDArray[np.int8]:
        """Index into :data:`SEVERITIES` for each calibrated score; vectorised."""
        cuts = np.array([self.low, self.medium, self.high, self.critical], dtype=np.float64)
        return np.searchsorted(cuts, np.asarray(calibrated, dtype=np.float64), side="right").astype(
            np.int8
        )

    def to_dict(self) -> dict[str, float]:
        return {"low": self.low, "medium": self.medium, "high": self.high, "critical": self.critical}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> SeverityScale:
        try:
            vals = [float(d[k]) for k in ("low", "medium", "high", "critical")]  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"severity needs numeric low, medium, high, critical: {exc}") from None
        if vals != sorted(vals):
            raise ValueError(f"severity cuts must be non-decreasing, got {vals}")
        return cls(*vals)
