"""LOF: local outlier factor against the training rows (scikit-learn's novelty mode)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from models.detector import Detector, IntRange, ParamSpec
from models.onnx_graph import GraphBuilder, row_shares
from models.zoo.neighbours import ReferenceSet, subsample, to_float

__all__ = ["LOF"]

# scikit-learn adds it to the mean reachability distance so duplicates give a finite density.
_EPS = 1e-10


class LOF(Detector):
    """Local outlier factor (Breunig et al., 2000), novelty semantics.

    With ``k = min(n_neighbors, n_train - 1)``, each training row ``o`` has
    its k-distance ``kd(o)`` (to its k-th nearest other training row) and its
    local reachability density ``lrd(o)``.  A new row ``x`` with nearest
    training rows ``o_1..o_k`` at distances ``d_i`` has

    ``lrd(x) = 1 / (mean_i max(d_i, kd(o_i)) + 1e-10)`` and score
    ``mean_i lrd(o_i) / lrd(x)``,

    equal to ``-LocalOutlierFactor(novelty=True).score_samples(x)`` (about 1
    for inliers, larger for outliers).  Each row is scored against the
    training rows only, whatever else is in its batch.

    The training set is capped at ``max_train`` rows, drawn without
    replacement with seed 0 (see :mod:`models.zoo.neighbours`); below the
    cap the scores equal scikit-learn's.

    Contributions: the per-feature squared differences to the ``k``
    neighbours, summed over the neighbours, as a share of the summed squared
    distances.

    The ONNX export holds the training rows with their k-distances and
    densities precomputed: the neighbour search of
    :mod:`models.zoo.neighbours` (a float32 MatMul and TopKs for candidates,
    an exact float64 ranking of those) marks the neighbours among ``k + margin``
    candidates, Gathers fetch the candidates' k-distances and densities and
    sums weighted by the marks give the means (no sort needed).

    Parameters
    ----------
    n_neighbors : int
        Neighbours per row (capped at the training rows minus one).
    max_train : int
        Most training rows kept.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 2)).astype(np.float32)
    >>> det = LOF().fit(X)
    >>> s = det.score_samples(np.array([[0, 0], [0, 9]], dtype=np.float32))
    >>> bool(s[0] < 1.5 < s[1])
    True
    """

    algorithm: ClassVar[str] = "lof"
    parity_tolerance: ClassVar[float] = 1e-4
    scale_sensitive: ClassVar[bool] = True
    search_space: ClassVar[Mapping[str, ParamSpec]] = {
        "n_neighbors": IntRange(5, 100, log=True),
    }

    def __init__(self, *, n_neighbors: int = 20, max_train: int = 5000) -> None:
        self.n_neighbors = n_neighbors
        self.max_train = max_train

    def get_params(self) -> dict[str, Any]:
        return {"n_neighbors": self.n_neighbors, "max_train": self.max_train}

    def _fit(self, X: NDArray[np.float32]) -> None:
        if not isinstance(self.n_neighbors, int | np.integer) or self.n_neighbors < 1:
            raise ValueError(f"n_neighbors must be an integer >= 1, got {self.n_neighbors!r}")
        train = subsample(X, self.max_train)
        self.k_ = min(int(self.n_neighbors), train.shape[0] - 1)
        self.reference_ = ReferenceSet(train)
        self.reference_.settle_margin(self.k_)
        sq_diff, index = self.reference_.nearest(train, self.k_, exclude_self=True)
        dist = np.sqrt(sq_diff.sum(axis=2))
        self.k_distance_ = dist[:, -1].copy()
        self.lrd_ = self._density(dist, index)

    def _density(self, dist: NDArray[np.float64], index: NDArray[np.intp]) -> NDArray[np.float64]:
        reach = np.maximum(dist, self.k_distance_[index])
        return np.asarray(1.0 / (reach.mean(axis=1) + _EPS), dtype=np.float64)

    def _score(self, X: NDArray[np.float32]) -> NDArray[np.float64]:
        sq_diff, index = self.reference_.nearest(X, self.k_)
        lrd = self._density(np.sqrt(sq_diff.sum(axis=2)), index)
        return np.asarray((self.lrd_[index] / lrd[:, None]).mean(axis=1), dtype=np.float64)

    def _contributions(self, X: NDArray[np.float32]) -> NDArray[np.float64]:
        sq_diff, _ = self.reference_.nearest(X, self.k_)
        return row_shares(sq_diff.sum(axis=1))

    def onnx_graph(self, g: GraphBuilder, x: str) -> tuple[str, str]:
        # The k + margin candidates, a 0/1 weight marking the k neighbours: the means need no order.
        sq_dist, cand, chosen, per_feature, _ = self.reference_.onnx_nearest_set(g, x, self.k_)
        kk = self.reference_.n_candidates(self.k_)
        dist = g.node("Sqrt", [sq_dist], name_hint="dist")
        k_dist = g.lookup(g.initializer("k_distance", self.k_distance_[None, :]), cand, kk, name_hint="k_dist")
        reach = g.node("Max", [dist, k_dist], name_hint="reach_dist")
        lrd_nbrs = g.lookup(g.initializer("lrd", self.lrd_[None, :]), cand, kk, name_hint="lrd_nbrs")
        axes = g.initializer("axes1", np.array([1], dtype=np.int64))
        inv_k = g.initializer("inv_k", np.array(1.0 / self.k_))

        def mean(t: str, hint: str) -> str:
            total = g.node("ReduceSum", [g.node("Mul", [t, chosen]), axes], keepdims=0)
            return g.node("Mul", [total, inv_k], name_hint=hint)

        mean_reach = mean(reach, "mean_reach")
        eps = g.initializer("eps", np.array(_EPS))
        # score = mean_i lrd(o_i) / lrd(x) = mean_i lrd(o_i) * (mean reach + eps)
        score = g.node(
            "Mul", [mean(lrd_nbrs, "mean_lrd"), g.node("Add", [mean_reach, eps])], name_hint="lof_score"
        )
        return to_float(g, score), g.row_shares(to_float(g, per_feature))
