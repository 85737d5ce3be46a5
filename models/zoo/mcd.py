"""MCD: robust Mahalanobis distance, fitted by scikit-learn's MinCovDet, exported as plain ONNX."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray
from sklearn.covariance import MinCovDet

from models.detector import Detector, FloatRange, ParamSpec
from models.onnx_graph import GraphBuilder, row_shares, rowwise_matmul

__all__ = ["MCD"]

_DOUBLE = 11  # onnx TensorProto.DOUBLE
_FLOAT = 1  # onnx TensorProto.FLOAT


class MCD(Detector):
    """Minimum Covariance Determinant (Rousseeuw, 1984), as PyOD's ``MCD``.

    The score is the squared Mahalanobis distance
    ``(x - mu) P (x - mu)^T`` to the robust (reweighted) location ``mu`` with
    precision ``P``, both from scikit-learn's ``MinCovDet``; equal to
    ``pyod.models.mcd.MCD.decision_function`` with the same
    ``support_fraction`` and ``random_state``.

    Contributions: the distance is the sum of the per-feature terms
    ``t_j = (x - mu)_j * (P (x - mu))_j``; a term can be negative (a feature
    that deviates against the correlation the others predict), so each is
    clipped at 0 and the row is divided by its total.

    The ONNX export computes ``(x - mu) @ P`` and the row-wise product in
    double precision inside the graph and casts the outputs to float32.

    Parameters
    ----------
    support_fraction : float or None
        Share of rows in the raw MCD support (None: scikit-learn's
        ``(n + d + 1) / 2`` rows).
    random_state : int or None
        Seed of the FastMCD random starts; the same seed gives the same scores.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(300, 3)).astype(np.float32)
    >>> det = MCD().fit(X)
    >>> s = det.score_samples(np.array([[0, 0, 0], [0, 0, 9]], dtype=np.float32))
    >>> bool(s[1] > s[0]), det.contributions(np.array([[0, 0, 9]], dtype=np.float32)).argmax()
    (True, np.int64(2))
    """

    algorithm: ClassVar[str] = "mcd"
    parity_tolerance: ClassVar[float] = 1e-2
    exact_inputs: ClassVar[bool] = False
    scale_sensitive: ClassVar[bool] = True
    search_space: ClassVar[Mapping[str, ParamSpec]] = {
        "support_fraction": FloatRange(0.5, 0.95),
    }

    def __init__(self, *, support_fraction: float | None = None, random_state: int | None = 0) -> None:
        self.support_fraction = support_fraction
        self.random_state = random_state

    def get_params(self) -> dict[str, Any]:
        return {"support_fraction": self.support_fraction, "random_state": self.random_state}

    def _fit(self, X: NDArray[np.float32]) -> None:
        if self.support_fraction is not None and not 0.0 < self.support_fraction <= 1.0:
            raise ValueError(f"mcd support_fraction must be in (0, 1], got {self.support_fraction!r}")
        mcd = MinCovDet(support_fraction=self.support_fraction, random_state=self.random_state)
        with warnings.catch_warnings():
            # Rank-deficient data (constant or collinear columns) is handled: the
            # precision comes from a pseudo-inverse; the C-step notes are not errors.
            warnings.filterwarnings("ignore", message=".*not full rank.*")
            warnings.filterwarnings("ignore", message=".*Determinant has increased.*")
            mcd.fit(X.astype(np.float64))
        self.location_ = np.asarray(mcd.location_, dtype=np.float64)
        self.precision_ = np.asarray(mcd.get_precision(), dtype=np.float64)

    def _terms(self, X: NDArray[np.float32]) -> NDArray[np.float64]:
        d = X.astype(np.float64) - self.location_
        return d * rowwise_matmul(d, self.precision_)

    def _score(self, X: NDArray[np.float32]) -> NDArray[np.float64]:
        return np.asarray(self._terms(X).sum(axis=1), dtype=np.float64)

    def _contributions(self, X: NDArray[np.float32]) -> NDArray[np.float64]:
        return row_shares(np.maximum(self._terms(X), 0.0))

    def onnx_graph(self, g: GraphBuilder, x: str) -> tuple[str, str]:
        xd = g.node("Cast", [x], to=_DOUBLE, name_hint="x_double")
        d = g.node("Sub", [xd, g.initializer("location", self.location_)], name_hint="centred")
        q = g.node("MatMul", [d, g.initializer("precision", self.precision_)], name_hint="precision_d")
        terms = g.node("Mul", [d, q], name_hint="terms")
        axes = g.initializer("axes1", np.array([1], dtype=np.int64))
        score = g.node("ReduceSum", [terms, axes], keepdims=0)
        score_f = g.node("Cast", [score], to=_FLOAT, name_hint="mcd_score")
        clipped = g.node("Relu", [g.node("Cast", [terms], to=_FLOAT)], name_hint="terms_clipped")
        return score_f, g.row_shares(clipped)
