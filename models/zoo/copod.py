"""COPOD: copula-based outlier detection, fitted and exported without PyOD."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from models.onnx_graph import GraphBuilder
from models.zoo.ecod import ECOD

__all__ = ["COPOD"]


class COPOD(ECOD):
    """COPOD (Li et al., 2020) scored against the training distribution alone.

    It shares ECOD's empirical tails: for feature ``j`` of a row, with ``n``
    training rows, ``le`` of them ``<= x_j`` and ``ge`` of them ``>= x_j``,

    - left tail ``U_l = -log((le + 1) / (n + 1))``,
    - right tail ``U_r = -log((ge + 1) / (n + 1))``,
    - skew-chosen tail ``U_s``: ``U_l`` where the training column's skewness
      is negative, ``U_r`` where positive, ``U_l + U_r`` where it is zero.

    and differs only in how it combines them: ``O_j = max(U_s, (U_l + U_r) / 2)``
    (ECOD takes ``max(U_l, U_r, U_s)``); the score is ``sum_j O_j``.

    PyOD's ``COPOD.decision_function`` refits its ECDFs and skewness on the
    training rows plus the scored batch, so its scores depend on the batch.
    Here each row is scored alone against the training ECDFs, which equals
    PyOD called one row at a time, except that PyOD's skewness then also
    includes the scored row: where that row flips the sign of a column's
    skewness (a nearly symmetric column and an extreme value) PyOD picks the
    other tail and the two differ.  The skewness here is the training
    column's alone, so the tail choice is fixed at fit time.

    Contributions: ``O_j / sum_j O_j``, each feature's share of the score.

    The ONNX export counts ``le`` and ``ge`` exactly as ECOD's does (an
    unrolled branch-free binary search over the sorted training columns).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 2)).astype(np.float32)
    >>> det = COPOD().fit(X)
    >>> s = det.score_samples(np.array([[0, 0], [0, 9]], dtype=np.float32))
    >>> bool(s[1] > s[0]), det.contributions(np.array([[0, 9]], dtype=np.float32)).argmax()
    (True, np.int64(1))
    """

    algorithm: ClassVar[str] = "copod"
    parity_tolerance: ClassVar[float] = 1e-4
    scale_sensitive: ClassVar[bool] = False

    def _tails(self, X: NDArray[np.float32]) -> NDArray[np.float64]:
        n = self.n_train_
        le = np.empty(X.shape, dtype=np.float64)
        ge = np.empty(X.shape, dtype=np.float64)
        for j in range(X.shape[1]):
            col = self.sorted_[:, j]
            le[:, j] = np.searchsorted(col, X[:, j], side="right")
            ge[:, j] = n - np.searchsorted(col, X[:, j], side="left")
        u_l = np.log(n + 1.0) - np.log(le + 1.0)
        u_r = np.log(n + 1.0) - np.log(ge + 1.0)
        u_s = (self.skew_sign_ <= 0) * u_l + (self.skew_sign_ >= 0) * u_r
        return np.asarray(np.maximum(u_s, (u_l + u_r) / 2.0), dtype=np.float64)

    def onnx_graph(self, g: GraphBuilder, x: str) -> tuple[str, str]:
        u_l, u_r, u_s = self._tail_nodes(g, x)
        half = g.initializer("half", np.array(0.5, dtype=np.float32))
        mean = g.node("Mul", [g.node("Add", [u_l, u_r]), half], name_hint="u_mean")
        tails = g.node("Max", [u_s, mean], name_hint="tails")
        axes = g.initializer("axes1", np.array([1], dtype=np.int64))
        score = g.node("ReduceSum", [tails, axes], keepdims=0, name_hint="copod_score")
        return score, g.row_shares(tails)
