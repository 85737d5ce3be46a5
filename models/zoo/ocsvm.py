"""One-class SVM with an RBF kernel, fitted by scikit-learn, exported as a kernel expansion."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import numpy as np
from numpy.typing import NDArray
from onnx import TensorProto
from sklearn.svm import OneClassSVM

from models.detector import Detector, FloatRange, ParamSpec
from models.onnx_graph import GraphBuilder, row_shares
from models.zoo.neighbours import ReferenceSet, subsample, to_float

__all__ = ["OCSVM"]


class OCSVM(Detector):
    """One-class SVM (Schölkopf et al., 2001) with the RBF kernel (PyOD's ``OCSVM``).

    Score: ``rho - sum_i a_i exp(-gamma |x - s_i|^2)`` over the support
    vectors ``s_i`` with dual coefficients ``a_i``, equal to
    ``-OneClassSVM.decision_function`` (and PyOD's ``decision_function``).
    Each row is scored alone.

    The SVM is fitted on at most ``max_train`` rows, drawn without
    replacement with seed 0 (see :mod:`models.zoo.neighbours`): the fit
    grows about quadratically with the rows, and the support vectors (about
    ``nu`` times the rows) make the exported graph.

    Contributions: the per-feature squared differences to the support
    vectors, averaged with weights ``a_i exp(-gamma |x - s_i|^2)``, the
    support vectors' shares of the kernel sum, so the support vectors that
    hold the row up count most.  The weights are a softmax of
    ``log a_i - gamma |x - s_i|^2``: far from every support vector, where
    all kernels underflow, the nearest ones still carry the weight.  This is
    a heuristic attribution, not a Shapley value.

    The ONNX export computes the kernel's logits in float64 from one Gemm
    of centred rows against the support vectors, their exponentials in
    float32 after the shift by each row's largest logit (so every value is
    at most 0), and the sums in float64.

    Parameters
    ----------
    nu : float
        Upper bound on the share of training errors, lower bound on the
        share of support vectors, in (0, 1].
    gamma : float, "auto" or "scale"
        RBF kernel coefficient; ``"auto"`` is ``1 / D``, ``"scale"`` is
        ``1 / (D * X.var())``.
    tol : float
        Stopping tolerance of the solver.
    max_train : int
        Most training rows the SVM is fitted on.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 2)).astype(np.float32)
    >>> det = OCSVM().fit(X)
    >>> rows = np.array([[0, 0], [0, 9]], dtype=np.float32)
    >>> bool(det.score_samples(rows)[1] > det.score_samples(rows)[0])
    True
    >>> int(det.contributions(rows)[1].argmax())
    1
    """

    algorithm: ClassVar[str] = "ocsvm"
    # Scores reach nu * max_train; float32 output rounds them to ~1e-4 there.
    parity_tolerance: ClassVar[float] = 1e-3
    exact_inputs: ClassVar[bool] = False
    scale_sensitive: ClassVar[bool] = True
    search_space: ClassVar[Mapping[str, ParamSpec]] = {
        "nu": FloatRange(0.01, 0.5, log=True),
        "gamma": FloatRange(1e-3, 1.0, log=True),
    }

    def __init__(
        self,
        *,
        nu: float = 0.5,
        gamma: float | Literal["auto", "scale"] = "auto",
        tol: float = 1e-3,
        max_train: int = 5000,
    ) -> None:
        self.nu = nu
        self.gamma = gamma
        self.tol = tol
        self.max_train = max_train

    def get_params(self) -> dict[str, Any]:
        return {"nu": self.nu, "gamma": self.gamma, "tol": self.tol, "max_train": self.max_train}

    def _resolve_gamma(self, X: NDArray[np.float64]) -> float:
        if self.gamma == "auto":
            return 1.0 / int(X.shape[1])
        if self.gamma == "scale":
            var = float(X.var())
            return 1.0 / (X.shape[1] * var) if var > 0 else 1.0
        if isinstance(self.gamma, str) or not self.gamma > 0:
            raise ValueError(f"gamma must be 'auto', 'scale' or a float > 0, got {self.gamma!r}")
        return float(self.gamma)

    def _fit(self, X: NDArray[np.float32]) -> None:
        if not 0.0 < self.nu <= 1.0:
            raise ValueError(f"nu must be in (0, 1], got {self.nu!r}")
        train = subsample(X, self.max_train).astype(np.float64)
        gamma = self._resolve_gamma(train)
        svm = OneClassSVM(kernel="rbf", nu=self.nu, gamma=gamma, tol=self.tol).fit(train)
        self.svm_ = svm
        self.gamma_ = gamma
        self.support_ = ReferenceSet(svm.support_vectors_)
        # Support vectors have a_i > 0; the floor only keeps log() finite.
        self.dual_coef_ = np.maximum(np.asarray(svm.dual_coef_[0], dtype=np.float64), 1e-300)
        self.rho_ = float(-svm.intercept_[0])

    def _score(self, X: NDArray[np.float32]) -> NDArray[np.float64]:
        # libsvm predicts row by row: batch-independent.
        return -np.asarray(self.svm_.decision_function(X.astype(np.float64)), dtype=np.float64)

    def _contributions(self, X: NDArray[np.float32]) -> NDArray[np.float64]:
        ref = self.support_
        Xc = ref.centred(X)
        logits = np.log(self.dual_coef_) - self.gamma_ * ref.approx_sq_distances(Xc)
        w = np.exp(logits - logits.max(axis=1, keepdims=True))
        w /= w.sum(axis=1, keepdims=True)
        # sum_i w_i (x - s_i)^2, expanded into matrix products
        spread = Xc**2 - 2.0 * Xc * (w @ ref.rows) + w @ (ref.rows**2)
        return row_shares(np.maximum(spread, 0.0))

    def onnx_graph(self, g: GraphBuilder, x: str) -> tuple[str, str]:
        ref = self.support_
        d = self.n_features_in_
        xc = ref.onnx_centred(g, x)
        # logits_i = log a_i - gamma |x - s_i|^2 = partial_i - gamma |x|^2, partial from one Gemm.
        # One Exp of partial - max(partial) serves both the kernel sum and the softmax weights.
        log_a = np.log(self.dual_coef_)
        partial = ref.onnx_partial_sq_distances(g, xc, scale=-self.gamma_, offset=log_a)
        top = g.node("ReduceMax", [partial], axes=[1], keepdims=1, name_hint="top_logit")
        # The shifted logits are <= 0, so float32 holds each to ~6e-8 of its size, and a term's
        # error grows with its distance below the top while its weight e^shifted shrinks: the Exp
        # runs in float32 (onnxruntime's float64 Exp took 3.4 of the 5.9 ms of a 256-row batch
        # against 2,508 support vectors) and the sums in float64.
        shifted = g.node("Cast", [g.node("Sub", [partial, top])], to=TensorProto.FLOAT)
        e = g.node("Cast", [g.node("Exp", [shifted], name_hint="shifted_kernel32")], to=TensorProto.DOUBLE,
                   name_hint="shifted_kernel")
        axes = g.initializer("axes1", np.array([1], dtype=np.int64))
        e_sum = g.node("ReduceSum", [e, axes], keepdims=1, name_hint="shifted_sum")
        neg_gamma = g.initializer("neg_gamma", np.array(-self.gamma_))
        x_term = g.node("Mul", [ref.onnx_query_sq_norms(g, xc), neg_gamma])
        scale = g.node("Exp", [g.node("Add", [top, x_term])], name_hint="kernel_scale")
        kernel_sum = g.node("ReduceSum", [g.node("Mul", [e_sum, scale]), axes], keepdims=0)
        rho = g.initializer("rho", np.array(self.rho_))
        score = g.node("Sub", [rho, kernel_sum], name_hint="ocsvm_score")

        # Weighted means of s_i and s_i^2 in one MatMul, normalised by the shifted sum (>= 1).
        sv_both = g.initializer("sv_both", np.hstack([ref.rows, ref.rows**2]))
        both = g.node("Div", [g.node("MatMul", [e, sv_both]), e_sum], name_hint="w_sv_both")
        w_s, w_s2 = g.node(
            "Split",
            [both, g.initializer("split", np.array([d, d], dtype=np.int64))],
            n_outputs=2,
            axis=1,
        )
        two = g.initializer("two64", np.array(2.0))
        cross = g.node("Mul", [g.node("Mul", [xc, w_s]), two], name_hint="cross")
        spread = g.node("Add", [g.node("Sub", [g.node("Mul", [xc, xc]), cross]), w_s2])
        spread = g.node("Max", [spread, g.initializer("zero64", np.array(0.0))], name_hint="spread")
        return to_float(g, score), g.row_shares(to_float(g, spread))
