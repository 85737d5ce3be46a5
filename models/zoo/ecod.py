"""ECOD: empirical-CDF outlier detection, fitted and exported without PyOD."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from models.detector import Detector
from models.onnx_graph import GraphBuilder, row_shares

__all__ = ["ECOD"]


def _skew_sign(X: NDArray[np.float32]) -> NDArray[np.int8]:
    """Sign of each column's (biased) sample skewness, as ``scipy.stats.skew``; 0 if constant."""
    x = X.astype(np.float64)
    d = x - x.mean(axis=0)
    m2 = (d**2).mean(axis=0)
    m3 = (d**3).mean(axis=0)
    return np.where(m2 > 0, np.sign(m3), 0.0).astype(np.int8)


class ECOD(Detector):
    """ECOD (Li et al., 2022) scored against the training distribution alone.

    For feature ``j`` of a row, with ``n`` training rows, ``le`` of them
    ``<= x_j`` and ``ge`` of them ``>= x_j``:

    - left tail ``U_l = -log((le + 1) / (n + 1))``,
    - right tail ``U_r = -log((ge + 1) / (n + 1))``,
    - skew-chosen tail ``U_s``: ``U_l`` where the training column's skewness
      is negative, ``U_r`` where positive, ``U_l + U_r`` where it is zero.

    The per-feature outlyingness is ``O_j = max(U_l, U_r, U_s)`` and the score
    is ``sum_j O_j``.  This is PyOD's formula (the paper takes the maximum of
    the three sums instead); PyOD however refits its ECDFs and skewness on
    the training rows plus the scored batch, so its scores depend on the
    batch.  Here each row is scored alone, which equals PyOD's
    ``decision_function`` called one row at a time.

    Contributions: ``O_j / sum_j O_j``, each feature's share of the score.

    The ONNX export finds ``le`` and ``ge`` with an unrolled branch-free
    binary search over the sorted training columns (about ``log2(n)`` Gather
    steps), so its cost grows with ``log n`` and not with ``n``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 2)).astype(np.float32)
    >>> det = ECOD().fit(X)
    >>> s = det.score_samples(np.array([[0, 0], [0, 9]], dtype=np.float32))
    >>> bool(s[1] > s[0]), det.contributions(np.array([[0, 9]], dtype=np.float32)).argmax()
    (True, np.int64(1))
    """

    algorithm: ClassVar[str] = "ecod"
    parity_tolerance: ClassVar[float] = 1e-4
    scale_sensitive: ClassVar[bool] = False

    def __init__(self) -> None:
        pass

    def get_params(self) -> dict[str, Any]:
        return {}

    def _fit(self, X: NDArray[np.float32]) -> None:
        self.sorted_ = np.sort(X, axis=0)
        self.n_train_ = X.shape[0]
        self.skew_sign_ = _skew_sign(X)

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
        return np.asarray(np.maximum(np.maximum(u_l, u_r), u_s), dtype=np.float64)

    def _score(self, X: NDArray[np.float32]) -> NDArray[np.float64]:
        return np.asarray(self._tails(X).sum(axis=1), dtype=np.float64)

    def _contributions(self, X: NDArray[np.float32]) -> NDArray[np.float64]:
        return row_shares(self._tails(X))

    def _count(self, g: GraphBuilder, x: str, values: NDArray[np.float32], table: str, op: str) -> str:
        """Per cell of ``x``, how many training values ``v`` satisfy ``op(v, x)`` (float32).

        ``values`` [D, width] holds the sorted columns padded with +inf
        (``table``: the same as one row); see :meth:`GraphBuilder.prefix_count`.
        """
        pos = g.prefix_count(x, values, table, op)
        # Only the +inf padding can push a count above n (when x is +inf).
        n = g.initializer("n_train", np.array(self.n_train_, dtype=np.int64))
        count = g.node("Min", [pos, n], name_hint="count")
        return g.node("Cast", [count], to=1, name_hint="count_f")  # 1 = FLOAT

    def _tail_nodes(self, g: GraphBuilder, x: str) -> tuple[str, str, str]:
        """ONNX nodes of the left, right and skew-chosen tail terms (each [N, D])."""
        n, d = self.sorted_.shape
        width = 2 ** int(np.ceil(np.log2(n + 1))) - 1
        padded = np.full((width, d), np.inf, dtype=np.float32)
        padded[:n] = self.sorted_
        values = np.ascontiguousarray(padded.T)
        table = g.initializer("sorted_columns", values.reshape(1, -1))
        le = self._count(g, x, values, table, "LessOrEqual")
        lt = self._count(g, x, values, table, "Less")
        log_n1 = g.initializer("log_n1", np.array(np.log(n + 1.0), dtype=np.float32))
        one = g.initializer("one_f", np.array(1.0, dtype=np.float32))
        n1 = g.initializer("n1", np.array(n + 1.0, dtype=np.float32))
        u_l = g.node("Sub", [log_n1, g.node("Log", [g.node("Add", [le, one])])], name_hint="u_left")
        # ge + 1 = n - lt + 1
        u_r = g.node("Sub", [log_n1, g.node("Log", [g.node("Sub", [n1, lt])])], name_hint="u_right")
        a = g.initializer("skew_left", (self.skew_sign_ <= 0).astype(np.float32))
        b = g.initializer("skew_right", (self.skew_sign_ >= 0).astype(np.float32))
        u_s = g.node("Add", [g.node("Mul", [u_l, a]), g.node("Mul", [u_r, b])], name_hint="u_skew")
        return u_l, u_r, u_s

    def onnx_graph(self, g: GraphBuilder, x: str) -> tuple[str, str]:
        u_l, u_r, u_s = self._tail_nodes(g, x)
        tails = g.node("Max", [u_l, u_r, u_s], name_hint="tails")
        axes = g.initializer("axes1", np.array([1], dtype=np.int64))
        score = g.node("ReduceSum", [tails, axes], keepdims=0, name_hint="ecod_score")
        return score, g.row_shares(tails)
