"""LODA: lightweight on-line detector of anomalies, fitted and exported without PyOD."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray
from sklearn.utils import check_random_state

from models.detector import Detector, IntRange, ParamSpec
from models.onnx_graph import GraphBuilder, row_shares, rowwise_matmul

__all__ = ["LODA"]

_DOUBLE = 11  # onnx TensorProto.DOUBLE
_FLOAT = 1  # onnx TensorProto.FLOAT
_INT64 = 7  # onnx TensorProto.INT64


class LODA(Detector):
    """LODA (Pevny, 2016) with static histograms, as PyOD's ``LODA``.

    ``n_random_cuts`` sparse random projections ``w_i`` (Gaussian weights,
    ``d - int(sqrt(d))`` of them zeroed per projection); each projects the
    training rows and keeps an ``n_bins`` equal-width histogram of the
    result as probabilities ``h_i`` (counts + 1e-12, normalised).  A row
    scores ``sum_i -log h_i(bin of w_i . x) / n_random_cuts**2`` (PyOD's
    uniform weights ``1 / n_random_cuts`` and its final division by
    ``n_random_cuts``); a projection outside the training range falls in the
    edge bin, as in PyOD.  With the same ``random_state`` the projections,
    histograms and scores equal ``pyod.models.loda.LODA.decision_function``
    (only the integer ``n_bins`` form; PyOD's ``"auto"`` is not offered).

    Contributions: each projection's term ``-log h_i / n_random_cuts**2`` is
    shared over its features in proportion to ``|w_ij (x_j - mu_j)|``, their
    parts of the projection's deviation from the projected training mean
    ``mu`` (centring keeps the shares independent of where the origin lies);
    the shares are summed over the projections and each row divided by its
    total.  A row equal to ``mu`` on every used feature has none (all zero).

    The ONNX export projects with a double-precision ``MatMul``, finds each
    bin by comparing with the stored bin limits (broadcast ``Greater`` and a
    sum, exact like ``np.searchsorted``) and gathers ``-log h`` from a table.

    Parameters
    ----------
    n_bins : int
        Bins per projection histogram (>= 2).
    n_random_cuts : int
        Number of random projections.
    random_state : int or None
        Seed of the projections; the same seed gives the same scores.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(300, 4)).astype(np.float32)
    >>> det = LODA().fit(X)
    >>> s = det.score_samples(np.array([[0, 0, 0, 0], [0, 0, 9, 0]], dtype=np.float32))
    >>> bool(s[1] > s[0]), det.contributions(np.array([[0, 0, 9, 0]], dtype=np.float32)).argmax()
    (True, np.int64(2))
    """

    algorithm: ClassVar[str] = "loda"
    parity_tolerance: ClassVar[float] = 1e-5
    scale_sensitive: ClassVar[bool] = True
    search_space: ClassVar[Mapping[str, ParamSpec]] = {
        "n_bins": IntRange(5, 50),
        "n_random_cuts": IntRange(50, 300, step=25),
    }

    def __init__(
        self, *, n_bins: int = 10, n_random_cuts: int = 100, random_state: int | None = 0
    ) -> None:
        self.n_bins = n_bins
        self.n_random_cuts = n_random_cuts
        self.random_state = random_state

    def get_params(self) -> dict[str, Any]:
        return {
            "n_bins": self.n_bins,
            "n_random_cuts": self.n_random_cuts,
            "random_state": self.random_state,
        }

    def _fit(self, X: NDArray[np.float32]) -> None:
        for name, value, low in (("n_bins", self.n_bins, 2), ("n_random_cuts", self.n_random_cuts, 1)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
                raise ValueError(f"loda {name} must be an int >= {low}, got {value!r}")
        cuts, n_bins = self.n_random_cuts, self.n_bins
        Xd = X.astype(np.float64)
        d = X.shape[1]
        n_zero = d - int(np.sqrt(d))
        # The same draws in the same order as PyOD, so a seed gives PyOD's projections.
        rng = check_random_state(self.random_state)
        projections = rng.randn(cuts, d)
        hist = np.zeros((cuts, n_bins))
        limits = np.zeros((cuts, n_bins + 1))
        for i in range(cuts):
            projections[i, rng.permutation(d)[:n_zero]] = 0.0
            counts, limits[i] = np.histogram(projections[i] @ Xd.T, bins=n_bins, density=False)
            hist[i] = counts + 1e-12
            hist[i] /= hist[i].sum()
        self.projections_ = projections
        self.limits_ = limits[:, : n_bins - 1]  # the inner limits np.searchsorted looks at
        self.neg_log_ = -np.log(hist) / cuts**2  # each projection's term per bin
        self.mean_ = Xd.mean(axis=0)

    def _terms(self, X: NDArray[np.float32]) -> NDArray[np.float64]:
        """Each projection's score term, [N, n_random_cuts]."""
        projected = rowwise_matmul(X.astype(np.float64), self.projections_.T)
        terms = np.empty(projected.shape)
        for i in range(self.n_random_cuts):
            bins = np.searchsorted(self.limits_[i], projected[:, i], side="left")
            terms[:, i] = self.neg_log_[i, bins]
        return terms

    def _score(self, X: NDArray[np.float32]) -> NDArray[np.float64]:
        return np.asarray(self._terms(X).sum(axis=1), dtype=np.float64)

    def _contributions(self, X: NDArray[np.float32]) -> NDArray[np.float64]:
        dev = np.abs(X.astype(np.float64) - self.mean_)  # [N, D]
        weights = np.abs(self.projections_)  # [C, D]
        denom = rowwise_matmul(dev, weights.T)  # [N, C]
        ratio = np.zeros_like(denom)
        np.divide(self._terms(X), denom, out=ratio, where=denom > 0)
        return row_shares(dev * rowwise_matmul(ratio, weights))

    def onnx_graph(self, g: GraphBuilder, x: str) -> tuple[str, str]:
        cuts, n_bins = self.n_random_cuts, self.n_bins
        xd = g.node("Cast", [x], to=_DOUBLE, name_hint="x_double")
        # The projection is accumulated feature by feature, in the native order
        # (rowwise_matmul), so both land in the same histogram bin bit for bit:
        # a MatMul's other summation order can move a value across a bin edge.
        d = self.projections_.shape[1]
        columns = [xd] if d == 1 else g.node("Split", [xd], n_outputs=d, axis=1, name_hint="x_col")
        projected = ""
        for j, col in enumerate(columns):
            w = g.initializer(f"projection_{j}", self.projections_[:, j].copy())
            term = g.node("Mul", [col, w], name_hint="projected_term")
            projected = term if j == 0 else g.node("Add", [projected, term], name_hint="projected")
        # Bin = how many inner limits are < the projection (np.searchsorted side="left").
        p3 = g.node("Unsqueeze", [projected, g.initializer("axis2", np.array([2], dtype=np.int64))])
        above = g.node("Greater", [p3, g.initializer("limits", self.limits_)], name_hint="above")
        bins = g.node(
            "ReduceSum",
            [g.node("Cast", [above], to=_INT64), g.initializer("axes2", np.array([2], dtype=np.int64))],
            keepdims=0,
            name_hint="bins",
        )
        offset = g.initializer("bin_offset", np.arange(cuts, dtype=np.int64) * n_bins)
        terms = g.node(
            "Gather",
            [g.initializer("neg_log", self.neg_log_.ravel()), g.node("Add", [bins, offset])],
            axis=0,
            name_hint="terms",
        )
        axes1 = g.initializer("axes1", np.array([1], dtype=np.int64))
        score = g.node("ReduceSum", [terms, axes1], keepdims=0)
        # Contributions: dev * ((terms / (dev @ |W|^T)) @ |W|).
        dev = g.node("Abs", [g.node("Sub", [xd, g.initializer("mean", self.mean_)])], name_hint="dev")
        weights = np.abs(self.projections_)
        denom = g.node("MatMul", [dev, g.initializer("abs_w_t", weights.T.copy())], name_hint="denom")
        zero = g.initializer("zero_d", np.array(0.0, dtype=np.float64))
        one = g.initializer("one_d", np.array(1.0, dtype=np.float64))
        positive = g.node("Greater", [denom, zero])
        ratio = g.node(
            "Where",
            [positive, g.node("Div", [terms, g.node("Where", [positive, denom, one])]), zero],
            name_hint="ratio",
        )
        spread = g.node("MatMul", [ratio, g.initializer("abs_w", weights)], name_hint="spread")
        contrib = g.node("Cast", [g.node("Mul", [dev, spread])], to=_FLOAT, name_hint="loda_terms")
        score_f = g.node("Cast", [score], to=_FLOAT, name_hint="loda_score")
        return score_f, g.row_shares(contrib)
