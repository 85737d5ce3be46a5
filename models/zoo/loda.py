"""LODA: lightweight on-line detector of anomalies, fitted and exported without PyOD."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import onnx
from numpy.typing import NDArray
from sklearn.utils import check_random_state

from models.detector import Detector, IntRange, ParamSpec
from models.onnx_graph import GraphBuilder, row_shares, rowwise_matmul
from models.step_grid import value_by_count

__all__ = ["LODA"]

_DOUBLE = 11  # onnx TensorProto.DOUBLE
_FLOAT = 1  # onnx TensorProto.FLOAT
_INT32 = 6  # onnx TensorProto.INT32
_F32_MAX = float(np.finfo(np.float32).max)


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

    Values beyond the float32 range (+-inf) count as the largest finite
    float32, natively and in ONNX.

    The ONNX export computes every projection in bin units with one
    double-precision ``Gemm`` and truncates it to the bin.  That is the native
    bin (``np.searchsorted`` on the native, feature-by-feature projection)
    unless a position lies within a proven rounding margin of a bin limit;
    then (an ``If``) the batch is projected exactly as natively, each product
    by a ``MatMul`` with one weight per column and the products added in
    feature order, and the bins found exactly by a :class:`~models.step_grid.StepGrid`.
    So the bins, hence the scores, never depend on the batch.  ``-log h`` is
    then read with one ``GatherElements``; the contributions use two float32
    ``MatMul`` and ``LpNormalization``.

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
        projected = rowwise_matmul(_finite(X), self.projections_.T)
        terms = np.empty(projected.shape)
        for i in range(self.n_random_cuts):
            bins = np.searchsorted(self.limits_[i], projected[:, i], side="left")
            terms[:, i] = self.neg_log_[i, bins]
        return terms

    def _score(self, X: NDArray[np.float32]) -> NDArray[np.float64]:
        return np.asarray(self._terms(X).sum(axis=1), dtype=np.float64)

    def _contributions(self, X: NDArray[np.float32]) -> NDArray[np.float64]:
        dev = np.abs(_finite(X) - self.mean_)  # [N, D]
        weights = np.abs(self.projections_)  # [C, D]
        denom = rowwise_matmul(dev, weights.T)  # [N, C]
        ratio = np.zeros_like(denom)
        np.divide(self._terms(X), denom, out=ratio, where=denom > 0)
        return row_shares(dev * rowwise_matmul(ratio, weights))

    def onnx_graph(self, g: GraphBuilder, x: str) -> tuple[str, str]:
        n_bins = self.n_bins
        w = self.projections_  # [C, D]
        d = w.shape[1]
        limits = self.limits_  # [C, n_bins - 1]
        finite = g.node(
            "Clip",
            [x, g.initializer("f32_lowest", np.array(-_F32_MAX, dtype=np.float32)),
             g.initializer("f32_max", np.array(_F32_MAX, dtype=np.float32))],
            name_hint="x_finite",
        )
        xd = g.node("Cast", [finite], to=_DOUBLE, name_hint="x_double")
        # Fast bins: one Gemm gives each projection in bin units, t = (w . x - a) * r,
        # with the inner limits near the integers 1 .. n_bins - 1.
        a, r = _bin_units(limits)
        t = g.node(
            "Gemm",
            [xd, g.initializer("bin_weights", (w * r[:, None]).T.copy()), g.initializer("bin_bias", -a * r)],
            name_hint="bin_position",
        )
        t = g.node(
            "Clip",
            [t, g.initializer("bin_low", np.array(0.5)), g.initializer("bin_high", np.array(n_bins - 0.5))],
            name_hint="bin_position_clipped",
        )
        fast = g.node("Cast", [t], to=_INT32, name_hint="bins_fast")
        # They are the native bins unless a position lies within the rounding margin
        # of an integer: then the batch takes the exact projection.
        frac = g.node("Sub", [t, g.node("Cast", [fast], to=_DOUBLE)], name_hint="bin_fraction")
        scale_bound, fixed_bound = _margin(w, limits, a, r)
        l1 = g.node("ReduceL1", [xd], keepdims=0, name_hint="x_l1")
        margin = g.node(
            "Add",
            [g.node("Mul", [l1, g.initializer("margin_scale", np.array(scale_bound))]),
             g.initializer("margin_fixed", np.array(fixed_bound))],
            name_hint="bin_margin",
        )
        low = g.node("LessOrEqual", [g.node("ReduceMin", [frac], keepdims=0), margin])
        high = g.node(
            "GreaterOrEqual",
            [g.node("ReduceMax", [frac], keepdims=0),
             g.node("Sub", [g.initializer("one_d", np.array(1.0)), margin])],
        )
        near = g.node("Or", [low, high], name_hint="near_limit")
        neg_log = self.neg_log_.T.astype(np.float32)  # [n_bins, C]
        then_branch, else_branch = self._branches(g, xd, fast, neg_log)
        terms = g.node("If", [near], then_branch=then_branch, else_branch=else_branch, name_hint="terms")
        score = g.node(
            "ReduceSum", [terms, g.initializer("axes1", np.array([1], dtype=np.int64))], keepdims=0, name_hint="loda_score"
        )
        # Contributions: dev * ((terms / (dev @ |W|^T)) @ |W|); the deviation from the
        # mean is taken in float64 (uncentred data), the rest in float32.
        centred = g.node(
            "BatchNormalization",
            [
                xd,
                g.initializer("ones_d", np.ones(d)),
                g.initializer("neg_mean", -self.mean_),
                g.initializer("zeros_d", np.zeros(d)),
                g.initializer("ones_d", np.ones(d)),
            ],
            epsilon=0.0,
            name_hint="centred",
        )
        dev = g.node("Cast", [g.node("Abs", [centred])], to=_FLOAT, name_hint="dev")
        weights = np.abs(w).astype(np.float32)
        # A projection with no deviation on its features (denominator 0) gets a huge ratio
        # that only meets zero deviations below, so it adds nothing, as natively.
        denom = g.node(
            "Gemm",
            [dev, g.initializer("abs_w_t", weights.T.copy()), g.initializer("tiny", np.array(1e-30, dtype=np.float32))],
            name_hint="denom",
        )
        ratio = g.node("Div", [terms, denom], name_hint="ratio")
        spread = g.node("MatMul", [ratio, g.initializer("abs_w", weights)], name_hint="spread")
        shares = g.node("LpNormalization", [g.node("Mul", [dev, spread])], axis=1, p=1, name_hint="loda_shares")
        return score, shares

    def _branches(
        self, g: GraphBuilder, xd: str, fast: str, neg_log: NDArray[np.float32]
    ) -> tuple[onnx.GraphProto, onnx.GraphProto]:
        """The If branches giving the terms [N, C]: from the projection accumulated as natively, or the fast bins."""
        w = self.projections_
        cuts, d = w.shape
        # Slot s of cut i: its s-th used feature (ascending), weighted; a MatMul with one
        # non-zero per column is the rounded product exactly, whatever its summation order.
        used = [np.flatnonzero(w[i]) for i in range(cuts)]
        slots = max(1, max(len(u) for u in used))
        one_hot = np.zeros((slots, d, cuts))
        for i, u in enumerate(used):
            one_hot[np.arange(len(u)), u, i] = w[i, u]
        names = [g.initializer("exact_projection_slot", one_hot[s]) for s in range(slots)]
        # Tensors of the branches are named after that initializer, unique in the model.
        prefix = f"{names[0]}__"
        nodes: list[onnx.NodeProto] = []

        def node(op_type: str, inputs: list[str], *, name_hint: str | None = None, **attrs: Any) -> str:
            out = f"{prefix}{len(nodes)}_{name_hint or op_type.lower()}"
            nodes.append(onnx.helper.make_node(op_type, inputs, [out], name=f"{out}_node", **attrs))
            return out

        projected = ""
        for s, name in enumerate(names):
            term = node("MatMul", [xd, name], name_hint="slot_product")
            projected = term if s == 0 else node("Add", [projected, term], name_hint="projected")
        thresholds = self.limits_.T.copy()  # [n_bins - 1, C]
        exact = value_by_count(node, g.initializer, projected, thresholds, neg_log, "exact_neg_log")
        exact_graph = onnx.helper.make_graph(
            nodes, f"{prefix}exact", [], [onnx.helper.make_tensor_value_info(exact, _FLOAT, None)]
        )
        nodes = []
        kept = node("GatherElements", [g.initializer("neg_log", neg_log), fast], axis=0, name_hint="terms")
        fast_graph = onnx.helper.make_graph(
            nodes, f"{prefix}fast", [], [onnx.helper.make_tensor_value_info(kept, _FLOAT, None)]
        )
        return exact_graph, fast_graph


def _finite(X: NDArray[np.float32]) -> NDArray[np.float64]:
    """``X`` in float64 with +-inf at the largest finite float32, as the graph clips it."""
    return np.clip(X.astype(np.float64), -_F32_MAX, _F32_MAX)


def _bin_units(limits: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per cut ``a, r`` with ``(limit_k - a) * r`` close to ``k`` for the stored limits ``k = 1 ..``."""
    first, last = limits[:, 0], limits[:, -1]
    n_inner = limits.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (n_inner - 1) / (last - first) if n_inner > 1 else np.full(first.shape, np.nan)
    bad = ~(np.isfinite(r) & (r > 0))
    r[bad] = 1.0 / (1.0 + np.abs(first[bad]))
    return first - 1.0 / r, r


def _margin(
    w: NDArray[np.float64], limits: NDArray[np.float64], a: NDArray[np.float64], r: NDArray[np.float64]
) -> tuple[float, float]:
    """``(A, B)``: the fast bin is the native one when its position is more than ``A * ||X||_1 + B`` from an integer.

    Both projections err by at most ``(2D + 3) u (S + |a|) r`` in bin units
    (``u = 2**-53``, ``S = sum_j |w_j x_j| <= max_j |w_j| ||x||_1``): the native
    one accumulates ``D`` rounded products, the Gemm ``D + 1`` terms with rounded
    weights and bias.  The inner limits sit within ``e`` of their integers.
    """
    u = 2.0**-53
    d = w.shape[1]
    k = np.arange(1, limits.shape[1] + 1)
    position = (limits - a[:, None]) * r[:, None]
    e = np.abs(position - k) + 4 * u * ((np.abs(limits) + np.abs(a)[:, None]) * r[:, None] + k)
    slack = 2.0 * (2 * d + 4) * u
    scale_bound = slack * float(np.max(np.abs(w).max(axis=1) * r))
    fixed_bound = float(np.max(slack * np.abs(a) * r + e.max(axis=1)))
    return scale_bound, fixed_bound
