"""KNN: distance to the nearest training rows (PyOD's ``KNN``), fitted and exported without PyOD."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import numpy as np
from numpy.typing import NDArray

from models.detector import Choice, Detector, IntRange, ParamSpec
from models.onnx_graph import GraphBuilder, row_shares
from models.zoo.neighbours import ReferenceSet, subsample, to_float

__all__ = ["KNN"]

_METHODS = ("largest", "mean", "median")


class KNN(Detector):
    """k-nearest-neighbour distance (Ramaswamy et al., 2000; PyOD's ``KNN``).

    The score of a row is a summary of its Euclidean distances to its
    ``n_neighbors`` nearest training rows: the largest (the k-th distance),
    their mean or their median.  A new row's neighbours are training rows
    only, as in PyOD's ``decision_function`` on new data; a training row
    scored again counts itself (distance 0), unlike PyOD's
    ``decision_scores_``.

    The training set is capped at ``max_train`` rows, drawn without
    replacement with seed 0 (see :mod:`models.zoo.neighbours`); below the
    cap the scores equal PyOD's.

    Contributions: the per-feature squared differences to the
    ``n_neighbors`` neighbours, summed over the neighbours, as a share of
    the summed squared distances.

    Parameters
    ----------
    n_neighbors : int
        Neighbours per row.
    method : {"largest", "mean", "median"}
        How the neighbour distances make the score.
    max_train : int
        Most training rows kept.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 2)).astype(np.float32)
    >>> det = KNN().fit(X)
    >>> rows = np.array([[0, 0], [0, 9]], dtype=np.float32)
    >>> bool(det.score_samples(rows)[1] > det.score_samples(rows)[0])
    True
    >>> int(det.contributions(rows)[1].argmax())
    1
    """

    algorithm: ClassVar[str] = "knn"
    parity_tolerance: ClassVar[float] = 1e-4
    scale_sensitive: ClassVar[bool] = True
    search_space: ClassVar[Mapping[str, ParamSpec]] = {
        "n_neighbors": IntRange(1, 50, log=True),
        "method": Choice(_METHODS),
    }

    def __init__(
        self,
        *,
        n_neighbors: int = 5,
        method: Literal["largest", "mean", "median"] = "largest",
        max_train: int = 5000,
    ) -> None:
        self.n_neighbors = n_neighbors
        self.method = method
        self.max_train = max_train

    def get_params(self) -> dict[str, Any]:
        return {"n_neighbors": self.n_neighbors, "method": self.method, "max_train": self.max_train}

    def _fit(self, X: NDArray[np.float32]) -> None:
        if self.method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {self.method!r}")
        train = subsample(X, self.max_train)
        if not 1 <= self.n_neighbors <= train.shape[0]:
            raise ValueError(
                f"n_neighbors must be in [1, {train.shape[0]}] (the training rows), "
                f"got {self.n_neighbors!r}"
            )
        self.reference_ = ReferenceSet(train)
        self.reference_.settle_margin(int(self.n_neighbors))

    def _neighbours(self, X: NDArray[np.float32]) -> NDArray[np.float64]:
        sq_diff, _ = self.reference_.nearest(X, self.n_neighbors)
        return sq_diff

    def _score(self, X: NDArray[np.float32]) -> NDArray[np.float64]:
        dist = np.sqrt(self._neighbours(X).sum(axis=2))
        if self.method == "largest":
            return np.asarray(dist[:, -1], dtype=np.float64)
        if self.method == "mean":
            return np.asarray(dist.mean(axis=1), dtype=np.float64)
        return np.asarray(np.median(dist, axis=1), dtype=np.float64)

    def _contributions(self, X: NDArray[np.float32]) -> NDArray[np.float64]:
        return row_shares(self._neighbours(X).sum(axis=1))

    def onnx_graph(self, g: GraphBuilder, x: str) -> tuple[str, str]:
        k = self.n_neighbors
        if self.method == "largest":
            # The k-th distance needs no order among the neighbours: one TopK over the candidates
            # instead of sorting them by row number and then by distance.
            _, _, _, per_feature, kth = self.reference_.onnx_nearest_set(g, x, k)
            axes = g.initializer("axes1", np.array([1], dtype=np.int64))
            dist = g.node("Sqrt", [g.node("Squeeze", [kth, axes])], name_hint="knn_score")
            return to_float(g, dist), g.row_shares(to_float(g, per_feature))
        sq_dist, _, per_feature = self.reference_.onnx_nearest(g, x, k)
        dist = g.node("Sqrt", [sq_dist], name_hint="dist")  # nearest first
        picked = list(range(k)) if self.method == "mean" else sorted({(k - 1) // 2, k // 2})
        if len(picked) < k:
            dist = g.node("Gather", [dist, g.initializer("picked", np.array(picked))], axis=1)
        score = g.node("ReduceMean", [dist], axes=[1], keepdims=0, name_hint="knn_score")
        return to_float(g, score), g.row_shares(to_float(g, per_feature))
