"""HBOS: histogram-based outlier score, fitted and exported without PyOD."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from models.detector import Detector, FloatRange, IntRange, ParamSpec
from models.onnx_graph import GraphBuilder, row_shares
from models.step_grid import value_by_count

__all__ = ["HBOS"]


def _float32_at_least(value: NDArray[np.float64]) -> NDArray[np.float32]:
    """The smallest float32 ``>=`` each value: ``x >= v`` iff ``x >= result`` for float32 ``x``."""
    f = value.astype(np.float32)
    down = f.astype(np.float64) < value
    f[down] = np.nextafter(f[down], np.float32(np.inf))
    return f


def _float32_at_most(value: NDArray[np.float64]) -> NDArray[np.float32]:
    """The largest float32 ``<=`` each value: ``x <= v`` iff ``x <= result`` for float32 ``x``."""
    f = value.astype(np.float32)
    up = f.astype(np.float64) > value
    f[up] = np.nextafter(f[up], np.float32(-np.inf))
    return f


class HBOS(Detector):
    """HBOS (Goldstein & Dengel, 2012) with static equal-width histograms, as PyOD's.

    Each training column gets ``n_bins`` equal-width bins between its minimum
    and maximum (``np.histogram(..., density=True)``).  A value in bin ``b``
    (bins closed on the right, ``np.digitize(..., right=True)``) scores
    ``T_j = -log2(density_b + alpha)``.  A value below the first edge scores
    as the first bin if it lies within ``tol`` bin widths of it, else as the
    emptiest bin; likewise above the last edge.  The score is ``sum_j T_j``,
    equal to PyOD's ``HBOS(n_bins, alpha, tol).decision_function`` (only the
    integer ``n_bins`` form; PyOD's ``"auto"`` bin count is not offered).

    Not invariant to rescaling: the bins are equal-width, so a nonlinear
    monotone transform regroups the values, and even a linear one changes the
    densities against the fixed ``alpha``; hence ``scale_sensitive``.

    Contributions: each feature's excess over its own best case,
    ``T_j - min_b T_j(b)``, i.e. how many bits less dense the row's bin is
    than the feature's densest bin, divided by the row's total.  A row lying
    in every feature's densest bin has no excess anywhere and gets equal
    shares ``1 / D``.

    The ONNX export counts, per feature, the limits below the value (the
    ``tol`` limits and the edges) with a :class:`~models.step_grid.StepGrid`: one scaling to a
    uniform grid, one lookup of the grid cell's limit and an exact comparison,
    so it equals ``np.digitize`` on every float32 value.  One ``GatherElements``
    then reads each feature's excess from a table of the grid's cells (one
    flat row, columns one after the other, where it fits); the score is
    their sum plus the sum of the best cases, the contributions their row
    shares (``LpNormalization``).  A zero excess is stored as ``1e-30``, which
    gives the all-densest row its equal shares and moves no other share by
    more than ``1e-30`` relative.  Limits too unevenly spaced for a grid
    (``tol`` far below 0.01) are compared one by one instead.

    Parameters
    ----------
    n_bins : int
        Number of equal-width bins per feature (>= 2).
    alpha : float
        Added to each density before the log, in (0, 1).
    tol : float
        How many bin widths outside the training range still count as the
        edge bin, in (0, 1).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(300, 2)).astype(np.float32)
    >>> det = HBOS().fit(X)
    >>> s = det.score_samples(np.array([[0, 0], [0, 9]], dtype=np.float32))
    >>> bool(s[1] > s[0]), det.contributions(np.array([[0, 9]], dtype=np.float32)).argmax()
    (True, np.int64(1))
    """

    algorithm: ClassVar[str] = "hbos"
    parity_tolerance: ClassVar[float] = 1e-4
    scale_sensitive: ClassVar[bool] = True
    search_space: ClassVar[Mapping[str, ParamSpec]] = {
        "n_bins": IntRange(5, 50),
        "alpha": FloatRange(0.01, 0.5, log=True),
        "tol": FloatRange(0.1, 0.9),
    }

    def __init__(self, *, n_bins: int = 10, alpha: float = 0.1, tol: float = 0.5) -> None:
        self.n_bins = n_bins
        self.alpha = alpha
        self.tol = tol

    def get_params(self) -> dict[str, Any]:
        return {"n_bins": self.n_bins, "alpha": self.alpha, "tol": self.tol}

    def _fit(self, X: NDArray[np.float32]) -> None:
        if isinstance(self.n_bins, bool) or not isinstance(self.n_bins, int | np.integer):
            raise TypeError(f"hbos n_bins must be an int >= 2, got {self.n_bins!r}")
        if self.n_bins < 2:
            raise ValueError(f"hbos n_bins must be >= 2, got {self.n_bins}")
        for name, value in (("alpha", self.alpha), ("tol", self.tol)):
            if not 0.0 < value < 1.0:
                raise ValueError(f"hbos {name} must be in (0, 1), got {value!r}")
        n_bins, d = self.n_bins, X.shape[1]
        edges = np.empty((n_bins + 1, d), dtype=np.float64)
        density = np.empty((n_bins, d), dtype=np.float64)
        for j in range(d):
            # On the float32 column, as PyOD does: the edges are then float32 values.
            density[:, j], edges[:, j] = np.histogram(X[:, j], bins=n_bins, density=True)
        self.edges_ = edges
        self.bin_scores_ = -np.log2(density + self.alpha)  # [n_bins, D]
        self.far_score_ = self.bin_scores_.max(axis=0)
        self.best_score_ = self.bin_scores_.min(axis=0)
        tol_width = self.tol * (edges[1] - edges[0]), self.tol * (edges[-1] - edges[-2])
        self.low_limit_ = edges[0] - tol_width[0]
        self.high_limit_ = edges[-1] + tol_width[1]

    def _terms(self, X: NDArray[np.float32]) -> NDArray[np.float64]:
        x = X.astype(np.float64)
        n_bins = self.n_bins
        terms = np.empty(X.shape, dtype=np.float64)
        for j in range(X.shape[1]):
            e = self.edges_[:, j]
            b = np.digitize(x[:, j], e, right=True)
            col = self.bin_scores_[np.clip(b - 1, 0, n_bins - 1), j]
            # PyOD's test: distance to the edge <= tol * edge bin width.
            far_low = (b == 0) & (e[0] - x[:, j] > self.tol * (e[1] - e[0]))
            far_high = (b == n_bins + 1) & (x[:, j] - e[-1] > self.tol * (e[-1] - e[-2]))
            terms[:, j] = np.where(far_low | far_high, self.far_score_[j], col)
        return terms

    def _score(self, X: NDArray[np.float32]) -> NDArray[np.float64]:
        return np.asarray(self._terms(X).sum(axis=1), dtype=np.float64)

    def _contributions(self, X: NDArray[np.float32]) -> NDArray[np.float64]:
        excess = self._terms(X) - self.best_score_
        shares = row_shares(excess)
        shares[excess.sum(axis=1) <= 0] = 1.0 / X.shape[1]
        return shares

    def onnx_graph(self, g: GraphBuilder, x: str) -> tuple[str, str]:
        return self._graph(g, x, self._thresholds())

    def onnx_graph_scaled(
        self, g: GraphBuilder, x: str, center: NDArray[np.float64], scale: NDArray[np.float64]
    ) -> tuple[str, str]:
        """The graph on the unscaled rows: the limits moved through the scaling, exactly.

        The pipeline scales a row as ``z = (x - center) / scale`` in float32,
        which never decreases as ``x`` grows (``scale > 0``).  So a limit ``t``
        lies below ``z`` exactly when ``x`` lies above the largest float32
        ``r`` with ``z(r) <= t``, found per limit by bisection over the float32
        values; the counts, hence the scores, are those of the scaled graph
        bit for bit, without its two passes over the batch.
        """
        return self._graph(g, x, _unscaled_limits(self._thresholds(), center, scale))

    def _thresholds(self) -> NDArray[np.float32]:
        n_bins, d = self.n_bins, self.n_features_in_
        # Slot = how many of these are < x: 0 far below, 1 near below, 2 .. n_bins + 1 the
        # bins (np.digitize(right=True) on the edges), n_bins + 2 near above, n_bins + 3 far above.
        thresholds = np.empty((n_bins + 3, d), dtype=np.float32)
        thresholds[0] = np.nextafter(_float32_at_least(self.low_limit_), np.float32(-np.inf))
        thresholds[1 : n_bins + 2] = _float32_at_most(self.edges_)
        thresholds[-1] = _float32_at_most(self.high_limit_)
        return thresholds

    def _graph(self, g: GraphBuilder, x: str, thresholds: NDArray[np.float32]) -> tuple[str, str]:
        n_bins, d = self.n_bins, self.n_features_in_
        slot_scores = np.empty((n_bins + 4, d), dtype=np.float64)
        slot_scores[0] = slot_scores[-1] = self.far_score_
        slot_scores[1] = self.bin_scores_[0]
        slot_scores[2 : n_bins + 2] = self.bin_scores_
        slot_scores[n_bins + 2] = self.bin_scores_[-1]
        # Excess over the feature's densest bin; a zero excess is floored at a negligible
        # epsilon so every row has a positive total (all-densest rows get 1 / D each).
        excess = (slot_scores - self.best_score_).astype(np.float32)
        excess[excess < _EXCESS_FLOOR] = _EXCESS_FLOOR
        terms = value_by_count(g.node, g.initializer, x, thresholds, excess, "hbos_excess")
        total = g.node("ReduceSum", [terms, g.initializer("axes1", np.array([1], dtype=np.int64))], keepdims=0)
        best = np.array(self.best_score_.sum(), dtype=np.float32)
        score = g.node("Add", [total, g.initializer("hbos_best_total", best)], name_hint="hbos_score")
        shares = g.node("LpNormalization", [terms], axis=1, p=1, name_hint="hbos_shares")
        return score, shares


_EXCESS_FLOOR = np.float32(1e-30)


def _float32_key(f: NDArray[np.float32]) -> NDArray[np.int64]:
    """An integer for each float32 that orders like the floats (-0.0 and +0.0 share 0)."""
    bits = f.view(np.int32).astype(np.int64)
    return np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)


def _float32_of(key: NDArray[np.int64]) -> NDArray[np.float32]:
    """The float32 of each :func:`_float32_key`."""
    bits = np.where(key < 0, (-key) | 0x80000000, key).astype(np.uint32)
    return bits.view(np.float32)


def _unscaled_limits(
    limits: NDArray[np.float32], center: NDArray[np.float64], scale: NDArray[np.float64]
) -> NDArray[np.float32]:
    """Per column ``j``, the largest float32 ``r`` with ``(r - center_j) / scale_j <= limit`` (float32 arithmetic).

    ``(x - c) / s`` rounds monotonically for ``s > 0``, so ``limit < z(x)``
    holds exactly when ``r < x``.  Bisection over the ordered float32 values,
    all limits at once (32 steps).
    """
    c, s = center.astype(np.float32), scale.astype(np.float32)
    if not np.all(s > 0):
        raise ValueError("the scaling must have positive scales")

    def z(key: NDArray[np.int64]) -> NDArray[np.float32]:
        with np.errstate(over="ignore", invalid="ignore"):
            return (_float32_of(key) - c) / s

    lo = np.full(limits.shape, _float32_key(np.array([-np.inf], dtype=np.float32))[0])
    hi = np.full(limits.shape, _float32_key(np.array([np.inf], dtype=np.float32))[0])
    done = z(hi) <= limits  # every value qualifies (an infinite limit)
    lo[done] = hi[done]
    while np.any(hi - lo > 1):
        mid = (lo + hi) // 2
        below = z(mid) <= limits
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    return _float32_of(lo)
