"""CBLOF: cluster-based local outlier factor on k-means clusters (PyOD's ``CBLOF``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray
from sklearn.cluster import KMeans

from models.detector import Choice, Detector, FloatRange, IntRange, ParamSpec
from models.onnx_graph import GraphBuilder, row_shares
from models.zoo.neighbours import ReferenceSet, to_float

__all__ = ["CBLOF"]


def _large_clusters(sizes: NDArray[np.intp], alpha: float, beta: float) -> NDArray[np.bool_]:
    """Which clusters are large, by PyOD's rule (``_set_small_large_clusters``).

    Clusters sorted by size, largest first; the split after the first ``b``
    clusters must hold ``alpha`` of the rows or follow a size ratio of at
    least ``beta``; the first ``b`` meeting both wins, else the first meeting
    either.  Where no split qualifies PyOD raises; here every cluster is then
    large (the split after all of them, which always holds ``alpha`` of the
    rows), so near-equal clusters of unimodal data still give a detector.
    """
    order = np.argsort(sizes * -1)  # PyOD's exact expression: same order on ties
    n_rows = sizes.sum()
    alpha_ok = [b for b in range(1, len(sizes)) if sizes[order[:b]].sum() >= n_rows * alpha]
    beta_ok = [b for b in range(1, len(sizes)) if sizes[order[b - 1]] / sizes[order[b]] >= beta]
    both = sorted(set(alpha_ok) & set(beta_ok))
    split = (both or alpha_ok or beta_ok or [len(sizes)])[0]
    large = np.zeros(len(sizes), dtype=bool)
    large[order[:split]] = True
    return large


class CBLOF(Detector):
    """Cluster-based local outlier factor (He et al., 2003) as in PyOD.

    k-means (scikit-learn's ``KMeans``, seeded by ``random_state``) groups
    the training rows; clusters are split into large and small by ``alpha``
    and ``beta`` (every cluster is large where PyOD finds no split and
    raises).  A row belongs to its nearest centre; its score is the
    Euclidean distance to that centre when the cluster is large, else to the
    nearest large-cluster centre.  This is PyOD's ``decision_function`` on
    new rows; rows are scored alone.  With ``use_weights`` the distance is
    multiplied by the share of the training rows in the row's cluster (PyOD
    multiplies by their count: the same ranking, but a scale that grows
    with the training set and would spoil float32 parity).

    Contributions: the per-feature squared differences to the centre the
    score measures against, as a share of the squared distance.

    The ONNX export computes the distances to all centres (float64), picks
    the nearest centre and the nearest large one with ArgMin, and gathers
    the one that applies.

    Parameters
    ----------
    n_clusters : int
        Clusters k-means forms.
    alpha : float
        Share of the rows, in (0, 1), the large clusters hold at least.
    beta : float
        Size ratio, above 1, between the smallest large cluster and the
        largest small one.
    use_weights : bool
        Multiply the score by the share of training rows in the row's cluster.
    random_state : int or None
        Seed of k-means (PyOD's default is None; 0 here, so that the same
        parameters give the same scores).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(300, 2)).astype(np.float32)
    >>> det = CBLOF().fit(X)
    >>> rows = np.array([[0, 0], [0, 9]], dtype=np.float32)
    >>> bool(det.score_samples(rows)[1] > det.score_samples(rows)[0])
    True
    >>> int(det.contributions(rows)[1].argmax())
    1
    """

    algorithm: ClassVar[str] = "cblof"
    parity_tolerance: ClassVar[float] = 1e-4
    scale_sensitive: ClassVar[bool] = True
    search_space: ClassVar[Mapping[str, ParamSpec]] = {
        "n_clusters": IntRange(2, 30, log=True),
        "alpha": FloatRange(0.7, 0.95),
        "beta": FloatRange(2.0, 10.0),
        "use_weights": Choice((False, True)),
    }

    def __init__(
        self,
        *,
        n_clusters: int = 8,
        alpha: float = 0.9,
        beta: float = 5.0,
        use_weights: bool = False,
        random_state: int | None = 0,
    ) -> None:
        self.n_clusters = n_clusters
        self.alpha = alpha
        self.beta = beta
        self.use_weights = use_weights
        self.random_state = random_state

    def get_params(self) -> dict[str, Any]:
        return {
            "n_clusters": self.n_clusters,
            "alpha": self.alpha,
            "beta": self.beta,
            "use_weights": self.use_weights,
            "random_state": self.random_state,
        }

    def _fit(self, X: NDArray[np.float32]) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha!r}")
        if not self.beta > 1.0:
            raise ValueError(f"beta must be > 1, got {self.beta!r}")
        if not 2 <= self.n_clusters <= X.shape[0]:
            raise ValueError(
                f"n_clusters must be in [2, {X.shape[0]}] (the training rows), "
                f"got {self.n_clusters!r}"
            )
        kmeans = KMeans(n_clusters=self.n_clusters, random_state=self.random_state).fit(X)
        sizes = np.bincount(kmeans.labels_, minlength=self.n_clusters)
        if (sizes == 0).any():
            raise ValueError(f"k-means left {int((sizes == 0).sum())} of its clusters empty")
        self.centres_ = ReferenceSet(kmeans.cluster_centers_)
        self.cluster_sizes_ = sizes
        self.cluster_shares_ = sizes / sizes.sum()
        self.large_ = _large_clusters(sizes, self.alpha, self.beta)

    def _targets(self, X: NDArray[np.float32]) -> tuple[NDArray[np.float64], NDArray[np.intp]]:
        """Squared differences [N, D] to each row's reference centre, and its cluster."""
        ref = self.centres_
        Xc = ref.centred(X)
        sq = np.empty((X.shape[0], len(ref)), dtype=np.float64)
        for c in range(len(ref)):  # a loop over the few centres, not the rows
            sq[:, c] = ((Xc - ref.rows[c]) ** 2).sum(axis=1)
        label = sq.argmin(axis=1)
        nearest_large = np.where(self.large_, sq, np.inf).argmin(axis=1)
        target = np.where(self.large_[label], label, nearest_large)
        return (Xc - ref.rows[target]) ** 2, label

    def _score(self, X: NDArray[np.float32]) -> NDArray[np.float64]:
        sq_diff, label = self._targets(X)
        score = np.sqrt(sq_diff.sum(axis=1))
        if self.use_weights:
            score = score * self.cluster_shares_[label]
        return np.asarray(score, dtype=np.float64)

    def _contributions(self, X: NDArray[np.float32]) -> NDArray[np.float64]:
        return row_shares(self._targets(X)[0])

    def onnx_graph(self, g: GraphBuilder, x: str) -> tuple[str, str]:
        ref = self.centres_
        xc = ref.onnx_centred(g, x)
        x3 = g.node("Unsqueeze", [xc, g.initializer("axes1", np.array([1], dtype=np.int64))])
        diff = g.node("Sub", [x3, g.initializer("centres", ref.rows)], name_hint="diff")
        axis2 = g.initializer("axes2", np.array([2], dtype=np.int64))
        sq = g.node("ReduceSum", [g.node("Mul", [diff, diff]), axis2], keepdims=0, name_hint="sq")
        label = g.node("ArgMin", [sq], axis=1, keepdims=0, name_hint="label")
        small_penalty = np.where(self.large_, 0.0, np.inf)
        masked = g.node("Add", [sq, g.initializer("small_penalty", small_penalty)])
        nearest_large = g.node("ArgMin", [masked], axis=1, keepdims=0, name_hint="nearest_large")
        is_large = g.node("Gather", [g.initializer("is_large", self.large_), label], axis=0)
        target = g.node("Where", [is_large, label, nearest_large], name_hint="target")
        centre = g.node("Gather", [g.initializer("centres_t", ref.rows), target], axis=0)
        t_diff = g.node("Sub", [xc, centre], name_hint="target_diff")
        sq_diff = g.node("Mul", [t_diff, t_diff], name_hint="sq_diff")
        axis1 = g.initializer("axes1", np.array([1], dtype=np.int64))
        sq_dist = g.node("ReduceSum", [sq_diff, axis1], keepdims=0)
        score = g.node("Sqrt", [sq_dist], name_hint="dist")
        if self.use_weights:
            shares = g.initializer("cluster_shares", self.cluster_shares_)
            score = g.node("Mul", [score, g.node("Gather", [shares, label], axis=0)])
        return to_float(g, score), g.row_shares(to_float(g, sq_diff))
