"""CBLOF: cluster-based local outlier factor on k-means clusters (PyOD's ``CBLOF``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray
from sklearn.cluster import KMeans

from models.detector import Choice, Detector, FloatRange, IntRange, ParamSpec
from models.onnx_graph import GraphBuilder, row_shares
from models.zoo.neighbours import ReferenceSet

__all__ = ["CBLOF"]

# The export moves the rows by the centres' mean first where that mean lies
# further from the origin than this many times the centres' RMS spread.
_CENTRE_LIMIT = 4.0


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

    The centre that applies is always the nearest large one (a row whose
    nearest centre is large is nearest to it among the large ones too), so
    the ONNX export ranks only the large centres, in float32 with one Gemm
    (``|c|**2 - 2 x.c``; the row's own ``|x|**2`` does not change the
    order), gathers the nearest with ArgMin and recomputes the per-feature
    differences to it exactly; ``use_weights`` adds a Gemm and ArgMin over
    all centres for the row's cluster.  Rows are first moved by the centres'
    mean (rounded to float32, an exact move) where it lies further from the
    origin than 4 times the centres' RMS spread.

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
        centres = ref.rows + ref.center  # [C, D], float64
        # Rows far from the origin (compared with the spread of the centres) are
        # first moved by the centres' mean, rounded to float32 so that the move
        # is exact; the differences below then stay accurate in float32.
        origin = np.zeros(centres.shape[1], dtype=np.float32)
        if float(np.linalg.norm(ref.center)) > _CENTRE_LIMIT * float(np.sqrt(ref.sq_norms.mean())):
            origin = ref.center.astype(np.float32)
            x = g.node("Sub", [x, g.initializer("centres_mean", origin)], name_hint="x_centred")
        centres = centres - origin.astype(np.float64)
        # The centre a row is scored against is always its nearest large one (a
        # row whose nearest centre is large is nearest to that one among the
        # large ones too), ranked by |x - c|^2 less the row's own |x|^2.
        large = np.flatnonzero(self.large_)
        rank_w, rank_b = -2.0 * centres.T, (centres**2).sum(axis=1)
        partial = g.node(
            "Gemm",
            [
                x,
                g.initializer("large_t", rank_w[:, large].astype(np.float32)),
                g.initializer("large_sq_norms", rank_b[large].astype(np.float32)[None, :]),
            ],
            name_hint="large_partial_sq",
        )
        target = g.node("ArgMin", [partial], axis=1, keepdims=0, name_hint="target")
        centre = g.node(
            "Gather",
            [g.initializer("large_centres", centres[large].astype(np.float32)), target],
            axis=0,
        )
        diff = g.node("Sub", [x, centre], name_hint="diff")
        sq_diff = g.node("Mul", [diff, diff], name_hint="sq_diff")
        axes = g.initializer("axes1", np.array([1], dtype=np.int64))
        sq_dist = g.node("ReduceSum", [sq_diff, axes], keepdims=1, name_hint="sq_dist")  # [N, 1]
        dist = g.node("Sqrt", [sq_dist], name_hint="dist")
        if self.use_weights:
            all_partial = g.node(
                "Gemm",
                [
                    x,
                    g.initializer("centres_t", rank_w.astype(np.float32)),
                    g.initializer("centres_sq_norms", rank_b.astype(np.float32)[None, :]),
                ],
                name_hint="partial_sq",
            )
            label = g.node("ArgMin", [all_partial], axis=1, keepdims=1, name_hint="label")
            shares = g.initializer("cluster_shares", self.cluster_shares_.astype(np.float32))
            dist = g.node(
                "Mul", [dist, g.node("Gather", [shares, label], axis=0)], name_hint="weighted"
            )
        score = g.node("Reshape", [dist, g.initializer("flat", np.array([-1], dtype=np.int64))])
        # Shares of the squared distance; a row on its centre stays all zero.
        tiny = g.initializer("tiny", np.array(np.finfo(np.float32).tiny, dtype=np.float32))
        contributions = g.node("Div", [sq_diff, g.node("Max", [sq_dist, tiny])], name_hint="shares")
        return score, contributions
