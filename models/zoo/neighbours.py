"""Nearest training rows, found alike natively and in the exported graph.

The distance-based detectors (KNN, LOF, OCSVM, CBLOF) keep a reference set
of training rows (or centres, or support vectors) and score a new row by its
Euclidean distances to them.  This module holds that shared arithmetic:

- :func:`subsample` caps the reference set at ``max_train`` rows, drawn
  without replacement with a fixed seed (0), so graphs stay small and fast;
- :class:`ReferenceSet` stores the rows centred on their mean in float64
  (centring keeps ``|x|^2 - 2 x.t + |t|^2`` from cancelling badly) and finds
  each row's ``k`` nearest reference rows;
- its ONNX twin does the same with nodes, in float64 as well.

How the ``k`` nearest rows are found, in both paths: squared distances by
matrix products pick the candidates, then the per-feature squared
differences to the chosen rows are recomputed directly.  Those exact
differences give the distances (no cancellation) and the contributions.
Natively, ``k + 8`` candidates are kept before the exact re-ranking (ties
broken by the lower index, as ONNX ``TopK`` does), so a row's neighbours do
not depend on the other rows of its batch even where BLAS rounds a matrix
product differently for different batch sizes.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from models.onnx_graph import GraphBuilder

__all__ = ["SUBSAMPLE_SEED", "ReferenceSet", "subsample", "to_float"]

#: Seed of the draw that caps a reference set at ``max_train`` rows.
SUBSAMPLE_SEED = 0
_DOUBLE = 11  # onnx.TensorProto.DOUBLE
_FLOAT = 1  # onnx.TensorProto.FLOAT
_MARGIN = 8  # extra candidates kept before the exact re-ranking
_CHUNK_CELLS = 4_000_000  # float64 cells per temporary block (32 MB)


def subsample(X: NDArray[np.float32], max_train: int) -> NDArray[np.float32]:
    """At most ``max_train`` rows of ``X``, drawn without replacement (seed 0), in order.

    Raises
    ------
    ValueError
        If ``max_train`` is below 2.
    """
    if not isinstance(max_train, int | np.integer) or max_train < 2:
        raise ValueError(f"max_train must be an integer >= 2, got {max_train!r}")
    if X.shape[0] <= max_train:
        return X
    rng = np.random.default_rng(SUBSAMPLE_SEED)
    return X[np.sort(rng.choice(X.shape[0], size=int(max_train), replace=False))]


class ReferenceSet:
    """Rows to measure Euclidean distances to, centred on their mean, in float64.

    Parameters
    ----------
    rows : ndarray, shape (M, D)
        The reference rows (training rows, support vectors, centres).
    center : ndarray, shape (D,), optional
        The point subtracted from every row and query; the rows' mean by default.

    Examples
    --------
    >>> ref = ReferenceSet(np.array([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0]]))
    >>> sq, idx = ref.nearest(np.array([[0.0, 0.0]], dtype=np.float32), 2)
    >>> idx.tolist(), sq.sum(axis=2).tolist()
    ([[0, 2]], [[0.0, 1.0]])
    """

    def __init__(
        self, rows: NDArray[np.floating], center: NDArray[np.floating] | None = None
    ) -> None:
        rows = np.asarray(rows, dtype=np.float64)
        self.center = rows.mean(axis=0) if center is None else np.asarray(center, np.float64)
        self.rows = np.ascontiguousarray(rows - self.center)
        self.sq_norms = (self.rows**2).sum(axis=1)

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def centred(self, X: NDArray[np.floating]) -> NDArray[np.float64]:
        """Queries ``X`` moved like the reference rows, in float64."""
        return np.asarray(X, dtype=np.float64) - self.center

    def approx_sq_distances(self, Xc: NDArray[np.float64]) -> NDArray[np.float64]:
        """Squared distances [N, M] of centred queries by matrix products (may round)."""
        sq = (Xc**2).sum(axis=1)[:, None] - 2.0 * (Xc @ self.rows.T) + self.sq_norms
        return np.asarray(np.maximum(sq, 0.0), dtype=np.float64)

    def nearest(
        self, X: NDArray[np.floating], k: int, *, exclude_self: bool = False
    ) -> tuple[NDArray[np.float64], NDArray[np.intp]]:
        """The ``k`` nearest reference rows of each query, nearest first.

        Parameters
        ----------
        X : ndarray, shape (N, D)
            Queries (not centred).
        k : int
            Neighbours wanted, at most ``len(self)`` (``len(self) - 1`` with
            ``exclude_self``).
        exclude_self : bool
            The queries are the reference rows themselves, in order: row ``i``
            is not its own neighbour (duplicates of it still are).

        Returns
        -------
        sq_diff : ndarray of float64, shape (N, k, D)
            Per-feature squared differences to each neighbour.
        index : ndarray of intp, shape (N, k)
            The neighbours' row numbers; ties go to the lower number.
        """
        Xc = self.centred(X)
        n, m = Xc.shape[0], len(self)
        kk = min(k + _MARGIN, m - int(exclude_self))
        sq_diff = np.empty((n, k, Xc.shape[1]), dtype=np.float64)
        index = np.empty((n, k), dtype=np.intp)
        step = max(1, _CHUNK_CELLS // max(m, kk * Xc.shape[1]))
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            approx = self.approx_sq_distances(Xc[lo:hi])
            if exclude_self:
                approx[np.arange(hi - lo), np.arange(lo, hi)] = np.inf
            cand = np.argpartition(approx, kk - 1, axis=1)[:, :kk]
            diff = (Xc[lo:hi, None, :] - self.rows[cand]) ** 2
            exact = diff.sum(axis=2)
            order = np.lexsort((cand, exact), axis=1)[:, :k]
            index[lo:hi] = np.take_along_axis(cand, order, axis=1)
            sq_diff[lo:hi] = np.take_along_axis(diff, order[:, :, None], axis=1)
        return sq_diff, index

    # --- the same in ONNX --------------------------------------------------

    def onnx_centred(self, g: GraphBuilder, x: str) -> str:
        """Nodes casting the float32 ``x`` [N, D] to float64 and centring it."""
        x64 = g.node("Cast", [x], to=_DOUBLE, name_hint="x64")
        return g.node("Sub", [x64, g.initializer("center", self.center)], name_hint="x_centred")

    def onnx_partial_sq_distances(
        self,
        g: GraphBuilder,
        xc: str,
        *,
        scale: float = 1.0,
        offset: NDArray[np.float64] | None = None,
    ) -> str:
        """One Gemm: ``scale * (|t|^2 - 2 x.t) + offset`` [N, M] for centred ``xc``.

        That is ``scale`` times the squared distances less each query's own
        ``|x|^2``, which ranks the reference rows alike; leaving it out (and
        folding the constants into the Gemm) saves whole [N, M] passes.
        """
        weights = g.initializer("ref_t", np.ascontiguousarray(-2.0 * scale * self.rows.T))
        bias = scale * self.sq_norms + (0.0 if offset is None else offset)
        return g.node("Gemm", [xc, weights, g.initializer("ref_bias", bias[None, :])])

    def onnx_query_sq_norms(self, g: GraphBuilder, xc: str) -> str:
        """``|x|^2`` [N, 1] of centred ``xc``."""
        axes = g.initializer("axes1", np.array([1], dtype=np.int64))
        return g.node("ReduceSum", [g.node("Mul", [xc, xc]), axes], keepdims=1, name_hint="x_sq")

    def onnx_nearest(self, g: GraphBuilder, xc: str, k: int) -> tuple[str, str]:
        """Nodes for :meth:`nearest` of centred ``xc``.

        Returns the names of ``sq_diff`` [N, k, D] and ``index`` [N, k] (int64).
        """
        _, index = g.node(
            "TopK",
            [
                self.onnx_partial_sq_distances(g, xc),
                g.initializer("k", np.array([k], dtype=np.int64)),
            ],
            n_outputs=2,
            axis=1,
            largest=0,
            sorted=1,
            name_hint="nearest",
        )
        rows = g.node("Gather", [g.initializer("ref_rows", self.rows), index], axis=0)
        x3 = g.node("Unsqueeze", [xc, g.initializer("axes1", np.array([1], dtype=np.int64))])
        diff = g.node("Sub", [x3, rows], name_hint="diff")
        return g.node("Mul", [diff, diff], name_hint="sq_diff"), index


def to_float(g: GraphBuilder, x: str) -> str:
    """A Cast node from float64 to the float32 the graph outputs."""
    return g.node("Cast", [x], to=_FLOAT, name_hint="f32")
