"""PCA outlier score with PyOD's semantics, fitted by scikit-learn, exported as plain ONNX."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import numpy as np
from numpy.typing import NDArray
from sklearn.decomposition import PCA as SklearnPCA
from sklearn.preprocessing import StandardScaler

from models.detector import Choice, Detector, ParamSpec
from models.onnx_graph import GraphBuilder, row_shares

__all__ = ["PCA"]

# Floor on a component's weight, so a zero-variance component gives a huge
# but finite score instead of PyOD's inf.
_MIN_WEIGHT = 1e-12
_DOUBLE = 11  # onnx TensorProto.DOUBLE
_FLOAT = 1  # onnx TensorProto.FLOAT


class PCA(Detector):
    """PyOD's PCA detector (Shyu et al., 2003, as PyOD implements it).

    With ``z`` the row standardised by the training mean and standard
    deviation (when ``standardization``), ``v_k`` the unit principal axes of
    the training data (scikit-learn's ``PCA``, sign fixed by ``svd_flip``)
    and ``w_k`` their explained-variance ratios (1 when not ``weighted``), the
    score is PyOD's ``sum_k ||z - v_k|| / w_k`` over the *last*
    ``n_selected_components`` axes (default: all fitted ones): the Euclidean
    distance from the row to each axis' unit vector, weighted most on the
    low-variance axes.  It equals ``pyod.models.pca.PCA.decision_function``
    fitted on the same rows; ``w_k`` is floored at 1e-12 so a degenerate
    component gives a huge finite score where PyOD gives inf.

    Contributions: the score splits exactly over the features as
    ``c_j = sum_k (z_j - v_kj)**2 / (w_k ||z - v_k||)`` (each distance
    shared in proportion to the squared coordinate differences); each row is
    divided by its total.

    The ONNX export works in double precision inside the graph (broadcast
    ``z - v_k`` over the selected axes) and casts the outputs to float32.

    Parameters
    ----------
    n_components : int, float or None
        Components kept by scikit-learn's ``PCA`` (None: all; a float in
        (0, 1): enough to explain that share of the variance).
    n_selected_components : int or None
        How many of the last (lowest-variance) components enter the score
        (None: all kept components).
    weighted : bool
        Divide each distance by the component's explained-variance ratio.
    standardization : bool
        Standardise the features before the PCA (PyOD's default).
    svd_solver : str
        scikit-learn's solver.
    random_state : int or None
        Seed of the randomized solvers.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(300, 3)).astype(np.float32)
    >>> det = PCA().fit(X)
    >>> s = det.score_samples(np.array([[0, 0, 0], [0, 0, 9]], dtype=np.float32))
    >>> bool(s[1] > s[0]), det.contributions(np.array([[0, 0, 9]], dtype=np.float32)).argmax()
    (True, np.int64(2))
    """

    algorithm: ClassVar[str] = "pca"
    parity_tolerance: ClassVar[float] = 1e-2
    scale_sensitive: ClassVar[bool] = True
    search_space: ClassVar[Mapping[str, ParamSpec]] = {
        "n_components": Choice((None, 0.8, 0.9, 0.95, 0.99)),
        "weighted": Choice((True, False)),
        "standardization": Choice((True, False)),
    }

    def __init__(
        self,
        *,
        n_components: float | None = None,
        n_selected_components: int | None = None,
        weighted: bool = True,
        standardization: bool = True,
        svd_solver: Literal["auto", "full", "covariance_eigh", "arpack", "randomized"] = "auto",
        random_state: int | None = 0,
    ) -> None:
        self.n_components = n_components
        self.n_selected_components = n_selected_components
        self.weighted = weighted
        self.standardization = standardization
        self.svd_solver = svd_solver
        self.random_state = random_state

    def get_params(self) -> dict[str, Any]:
        return {
            "n_components": self.n_components,
            "n_selected_components": self.n_selected_components,
            "weighted": self.weighted,
            "standardization": self.standardization,
            "svd_solver": self.svd_solver,
            "random_state": self.random_state,
        }

    def _fit(self, X: NDArray[np.float32]) -> None:
        Z = X.astype(np.float64)
        d = X.shape[1]
        if self.standardization:
            scaler = StandardScaler().fit(Z)
            self.mean_ = np.asarray(scaler.mean_, dtype=np.float64)
            self.scale_ = np.asarray(scaler.scale_, dtype=np.float64)
        else:
            self.mean_, self.scale_ = np.zeros(d), np.ones(d)
        Z = (Z - self.mean_) / self.scale_
        pca = SklearnPCA(
            n_components=self.n_components,
            svd_solver=self.svd_solver,
            random_state=self.random_state,
        ).fit(Z)
        kept = int(pca.n_components_)
        k = kept if self.n_selected_components is None else self.n_selected_components
        if not 1 <= k <= kept:
            raise ValueError(
                f"pca n_selected_components must be in [1, {kept}] (the fitted components), got {k}"
            )
        weights = pca.explained_variance_ratio_ if self.weighted else np.ones(kept)
        self.components_ = np.asarray(pca.components_[-k:], dtype=np.float64)
        self.weights_ = np.maximum(np.asarray(weights[-k:], dtype=np.float64), _MIN_WEIGHT)

    def _differences(self, X: NDArray[np.float32]) -> NDArray[np.float64]:
        z = (X.astype(np.float64) - self.mean_) / self.scale_
        return z[:, None, :] - self.components_[None, :, :]  # [N, K, D]

    def _score(self, X: NDArray[np.float32]) -> NDArray[np.float64]:
        dist = np.sqrt((self._differences(X) ** 2).sum(axis=2))
        return np.asarray((dist / self.weights_).sum(axis=1), dtype=np.float64)

    def _contributions(self, X: NDArray[np.float32]) -> NDArray[np.float64]:
        sq = self._differences(X) ** 2
        dist = np.sqrt(sq.sum(axis=2, keepdims=True))
        factor = np.zeros_like(dist)
        np.divide(1.0, dist * self.weights_[:, None], out=factor, where=dist > 0)
        return row_shares((sq * factor).sum(axis=1))

    def onnx_graph(self, g: GraphBuilder, x: str) -> tuple[str, str]:
        xd = g.node("Cast", [x], to=_DOUBLE, name_hint="x_double")
        z = g.node(
            "Div",
            [g.node("Sub", [xd, g.initializer("mean", self.mean_)]), g.initializer("scale", self.scale_)],
            name_hint="z",
        )
        z3 = g.node("Unsqueeze", [z, g.initializer("axis1", np.array([1], dtype=np.int64))])
        diff = g.node("Sub", [z3, g.initializer("axes_vectors", self.components_)], name_hint="diff")
        sq = g.node("Mul", [diff, diff], name_hint="sq")
        axis2 = g.initializer("axis2", np.array([2], dtype=np.int64))
        dist = g.node("Sqrt", [g.node("ReduceSum", [sq, axis2], keepdims=1)], name_hint="dist")
        inv_w = g.initializer("inv_weight", (1.0 / self.weights_)[:, None])  # [K, 1]
        axes12 = g.initializer("axes12", np.array([1, 2], dtype=np.int64))
        score = g.node("ReduceSum", [g.node("Mul", [dist, inv_w]), axes12], keepdims=0)
        # Contribution factor 1 / (w_k * dist_k), 0 where the row sits on v_k.
        zero = g.initializer("zero_d", np.array(0.0, dtype=np.float64))
        one = g.initializer("one_d", np.array(1.0, dtype=np.float64))
        positive = g.node("Greater", [dist, zero])
        safe = g.node("Where", [positive, dist, one])
        factor = g.node("Where", [positive, g.node("Div", [inv_w, safe]), zero], name_hint="factor")
        axis1 = g.initializer("axis1_r", np.array([1], dtype=np.int64))
        contrib = g.node("ReduceSum", [g.node("Mul", [sq, factor]), axis1], keepdims=0)
        score_f = g.node("Cast", [score], to=_FLOAT, name_hint="pca_score")
        contrib_f = g.node("Cast", [contrib], to=_FLOAT, name_hint="pca_terms")
        return score_f, g.row_shares(contrib_f)
