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
# The export folds the standardisation into its matrix products; it first
# moves the rows by the mean where a training mean lies further from zero
# than this many standard deviations.
_FOLD_LIMIT = 4.0


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

    The ONNX export works in float32 with matrix products instead of
    broadcasting ``z - v_k`` over the axes: with the standardisation folded
    into the constants, ``||z - v_k||**2 = ||z||**2 - 2 z.v_k + 1`` comes
    from two Gemms, and the contributions from
    ``c_j = z_j**2 sum_k a_k - 2 z_j (a V)_j + (a V**2)_j`` with
    ``a_k = 1 / (w_k ||z - v_k|| score)``, three small products over the
    axes that yield the shares directly (they add up to the score), clipped
    at 0 against rounding.  Rows are first moved by the training mean
    (rounded to float32, an exact move) where a mean lies more than 4
    standard deviations from zero, so the expansions never cancel badly.

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
    exact_inputs: ClassVar[bool] = False
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
        d = self.components_.shape[1]
        return self._graph(g, x, np.zeros(d), np.ones(d))

    def onnx_graph_scaled(
        self, g: GraphBuilder, x: str, center: NDArray[np.float64], scale: NDArray[np.float64]
    ) -> tuple[str, str]:
        """The pipeline's scaling folded into the standardisation's constants (one Gemm pass fewer)."""
        return self._graph(g, x, center, scale)

    def _graph(
        self, g: GraphBuilder, x: str, pre_center: NDArray[np.float64], pre_scale: NDArray[np.float64]
    ) -> tuple[str, str]:
        """The graph on rows ``x`` that the detector sees as ``(x - pre_center) / pre_scale``."""
        f32 = np.float32
        v, inv_w = self.components_, 1.0 / self.weights_
        k, d = v.shape
        mean, scale = self.mean_, self.scale_
        if not self.standardization:
            mean, scale = np.zeros(d), np.ones(d)
        # z = ((x - c) / s - mean) / scale = (x - (c + s mean)) / (s scale): one standardisation.
        mean, scale = pre_center + pre_scale * mean, pre_scale * scale
        if float(np.max(np.abs(mean) / scale)) > _FOLD_LIMIT:
            # Far from the origin: move the rows by the mean rounded to float32
            # (an exact move), so that the expansions below work on values of
            # the order of the spread and their float32 cancellation stays small.
            origin = mean.astype(np.float32)
            x = g.node("Sub", [x, g.initializer("mean", origin)], name_hint="x_centred")
            mean = mean - origin.astype(np.float64)
        # In the row's own units the axis points are u_k = mean + scale * v_k and
        # ||z - v_k||^2 = sum_j (x_j - u_kj)^2 / scale_j^2, expanded into matrix products.
        u, inv_s2 = mean + scale * v, 1.0 / scale**2  # [K, D], [D]
        x_sq = g.node("Mul", [x, x], name_hint="x_sq")
        norms = g.node(
            "Gemm",
            [
                x_sq,
                g.initializer("inv_scale2", np.repeat(inv_s2[:, None], k, axis=1).astype(f32)),
                g.initializer("axes_norm2", (u**2 * inv_s2).sum(axis=1).astype(f32)[None, :]),
            ],
            name_hint="norms",
        )
        cross = g.initializer("axes_m2", (-2.0 * u * inv_s2).T.astype(f32))  # [D, K]
        # Relu: rounding can take a distance to a point just below zero.
        sq_dist = g.node("Relu", [g.node("Gemm", [x, cross, norms])], name_hint="sq_dist")
        dist = g.node("Sqrt", [sq_dist], name_hint="dist")
        score_col = g.node(
            "MatMul", [dist, g.initializer("inv_weight", inv_w[:, None].astype(f32))]
        )
        score = g.node(
            "Reshape",
            [score_col, g.initializer("flat", np.array([-1], dtype=np.int64))],
            name_hint="pca_score",
        )
        # r_k = 1 / (dist_k * score): the contributions below then come out as
        # shares (they add up to the score); 0 where the row sits on the point.
        tiny = g.initializer("tiny", np.array(np.finfo(np.float32).tiny, dtype=f32))
        scaled = g.node("Max", [g.node("Mul", [sq_dist, score_col]), tiny])
        r = g.node("Div", [dist, scaled], name_hint="inv_dist")
        # c_j = sum_k r_k/w_k (x_j - u_kj)^2 / scale_j^2
        #     = x_j (x_j (r M1)_j + (r M2)_j) + (r M3)_j, clipped at 0 (rounding).
        w = inv_w[:, None] * inv_s2[None, :]  # [K, D]
        inner = g.node("Mul", [x, g.node("MatMul", [r, g.initializer("share_sq", w.astype(f32))])])
        inner = g.node("Gemm", [r, g.initializer("share_lin", (-2.0 * w * u).astype(f32)), inner])
        terms = g.node(
            "Gemm",
            [r, g.initializer("share_const", (w * u**2).astype(f32)), g.node("Mul", [inner, x])],
        )
        return score, g.node("Relu", [terms], name_hint="pca_terms")
