"""Imputation, scaling and one-hot encoding in front of every detector, exported into the same graph.

Steps, in order (each exported as ONNX nodes on the raw ``features`` input):

1. **impute**: a missing value (NaN) becomes the training median of its column;
2. **scale** (``scaler``): ``none``; ``standard`` (mean, standard deviation);
   ``robust`` (median, interquartile range); ``quantile``: each column is mapped
   through the piecewise-linear interpolation of its training ECDF (at most
   :data:`QUANTILE_KNOTS` knots) into [0, 1], values beyond the training range
   clamped, like scikit-learn's ``QuantileTransformer`` (uniform output);
3. **one-hot** (``onehot=True``): each low-cardinality column (3 to
   :data:`MAX_ONEHOT_LEVELS` distinct integer training values) is replaced by
   one 0/1 column per training value (taken from the imputed, unscaled value;
   an unseen value gives all zeros).  Encoded columns go after the others.

The detector sees the output of step 3; its per-column contributions are folded
back onto the raw features (:meth:`Preprocessor.fold`), so the model keeps the
contract's interface: raw float32 features in, ``[N, D]`` contributions out.

All arithmetic is float32, in the same order as the exported nodes, so the
native and the ONNX path feed the detector the same numbers (quantile: within
a float32 rounding).

Examples
--------
>>> import numpy as np
>>> X = np.array([[1.0, np.nan], [3.0, 4.0], [np.nan, 8.0]], dtype=np.float32)
>>> pre = Preprocessor(scaler="robust").fit(X)
>>> pre.medians_.tolist()
[2.0, 6.0]
>>> pre.transform(np.array([[np.nan, 10.0]], dtype=np.float32)).tolist()
[[0.0, 2.0]]
>>> q = Preprocessor(scaler="quantile").fit(np.arange(12, dtype=np.float32).reshape(6, 2))
>>> q.transform(np.array([[-5, 5], [4, 100]], dtype=np.float32)).tolist()
[[0.0, 0.4000000059604645], [0.4000000059604645, 1.0]]
>>> c = np.array([[0, 1, 2, 0, 1, 2, 0, 1, 2, 3]], dtype=np.float32).T
>>> oh = Preprocessor(onehot=True).fit(np.hstack([c, c * 0.5]))
>>> oh.onehot_levels_, oh.n_features_out_
({0: [0.0, 1.0, 2.0, 3.0]}, 5)
"""

from __future__ import annotations

from typing import Any, Final, Literal

import numpy as np
from numpy.typing import NDArray

from models.errors import FeatureCountError, NotFittedError
from models.onnx_graph import GraphBuilder

__all__ = [
    "MAX_ONEHOT_LEVELS",
    "QUANTILE_KNOTS",
    "SCALERS",
    "Preprocessor",
    "Scaler",
    "onehot_candidates",
]

Scaler = Literal["none", "standard", "robust", "quantile"]
SCALERS: Final[tuple[Scaler, ...]] = ("none", "standard", "robust", "quantile")
#: Most knots of the quantile map per column (scikit-learn's default n_quantiles).
QUANTILE_KNOTS: Final[int] = 1000
#: Columns with 3 to this many distinct integer values are one-hot encoded.
MAX_ONEHOT_LEVELS: Final[int] = 10


def onehot_candidates(X: NDArray[np.floating]) -> dict[int, list[float]]:
    """Columns of ``X`` with 3..:data:`MAX_ONEHOT_LEVELS` distinct integer values, and those values."""
    out: dict[int, list[float]] = {}
    for j in range(X.shape[1]):
        col = X[:, j]
        values = np.unique(col[~np.isnan(col)])
        if 3 <= values.size <= MAX_ONEHOT_LEVELS and np.all(values == np.round(values)):
            out[j] = [float(v) for v in values]
    return out


class Preprocessor:
    """Median imputation, an optional scaler and optional one-hot encoding.

    Parameters
    ----------
    scaler : {"none", "standard", "robust", "quantile"}
        ``standard``/``robust``: computed on the imputed training data; a zero
        scale becomes 1.  ``quantile``: see the module docstring.
    onehot : bool
        One-hot encode the low-cardinality columns (see the module docstring).

    Attributes
    ----------
    medians_ : ndarray of float32, shape (D,)
        Per-column median ignoring NaN (0.0 for a column that is all NaN).
    center_, scale_ : ndarray of float32, shape (D,)
        What ``standard``/``robust`` subtract and divide by (0 and 1 otherwise).
    knots_, levels_ : list of ndarray of float32
        Per column, the quantile map's increasing knots and their ECDF levels
        (``quantile`` only).
    onehot_levels_ : dict of int to list of float
        Encoded columns and their values (empty without ``onehot``).
    n_features_out_ : int
        Columns handed to the detector.
    """

    def __init__(self, *, scaler: Scaler = "none", onehot: bool = False) -> None:
        self.scaler = scaler
        self.onehot = onehot

    # ------------------------------------------------------------------ fitting
    def fit(self, X: NDArray[np.floating]) -> Preprocessor:
        """Learn medians, the scaler and the encoding from raw rows ``X`` [N, D] (NaN allowed)."""
        if self.scaler not in SCALERS:
            raise ValueError(f"scaler must be one of {SCALERS}, got {self.scaler!r}")
        if not isinstance(self.onehot, bool):
            raise TypeError(f"onehot must be a bool, got {self.onehot!r}")
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[0] < 1 or X.shape[1] < 1:
            raise ValueError(f"preprocessing needs a non-empty 2-d array, got shape {X.shape}")
        d = X.shape[1]
        medians = np.zeros(d, dtype=np.float32)
        seen = ~np.isnan(X).all(axis=0)
        # nanmedian warns on all-NaN columns; those get 0.0 by definition.
        medians[seen] = np.nanmedian(X[:, seen], axis=0)
        self.medians_ = medians
        Xi = np.where(np.isnan(X), medians, X)
        X64 = Xi.astype(np.float64)
        center, scale = np.zeros(d), np.ones(d)
        if self.scaler == "standard":
            center, scale = X64.mean(axis=0), X64.std(axis=0)
        elif self.scaler == "robust":
            q25, center, q75 = np.percentile(X64, [25.0, 50.0, 75.0], axis=0)
            scale = q75 - q25
        self.center_ = center.astype(np.float32)
        self.scale_ = np.where(scale.astype(np.float32) == 0.0, 1.0, scale).astype(np.float32)
        self.knots_: list[NDArray[np.float32]] = []
        self.levels_: list[NDArray[np.float32]] = []
        if self.scaler == "quantile":
            for j in range(d):
                knots, levels = _quantile_map(Xi[:, j])
                self.knots_.append(knots)
                self.levels_.append(levels)
        self.onehot_levels_ = onehot_candidates(X) if self.onehot else {}
        kept = [j for j in range(d) if j not in self.onehot_levels_]
        self.kept_ = np.array(kept, dtype=np.int64)
        # Output column -> raw feature, for folding contributions back.
        origin = kept + [j for j, vals in self.onehot_levels_.items() for _ in vals]
        self.fold_ = np.zeros((len(origin), d), dtype=np.float32)
        self.fold_[np.arange(len(origin)), origin] = 1.0
        self.n_features_out_ = len(origin)
        self.n_features_in_ = d
        return self

    # ------------------------------------------------------------------ native path
    def _check(self, X: NDArray[np.floating]) -> NDArray[np.float32]:
        if not hasattr(self, "n_features_in_"):
            raise NotFittedError("this Preprocessor is not fitted yet; call fit first")
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            got = X.shape[1] if X.ndim == 2 else f"shape {X.shape}"
            raise FeatureCountError(
                f"preprocessing expects {self.n_features_in_} features, got {got}"
            )
        return X

    def transform(self, X: NDArray[np.floating]) -> NDArray[np.float32]:
        """Impute, scale and encode rows ``X`` [N, D]; float32 ``[N, n_features_out_]`` out."""
        X = self._check(X)
        imputed = np.where(np.isnan(X), self.medians_, X).astype(np.float32, copy=False)
        out = imputed
        if self.scaler in ("standard", "robust"):
            out = (imputed - self.center_) / self.scale_
        elif self.scaler == "quantile":
            out = np.empty_like(imputed)
            for j, (knots, levels) in enumerate(zip(self.knots_, self.levels_, strict=True)):
                out[:, j] = _interp32(imputed[:, j], knots, levels)
        if self.onehot_levels_:
            blocks = [out[:, self.kept_]]
            for j, values in self.onehot_levels_.items():
                blocks.append(
                    (imputed[:, [j]] == np.array(values, dtype=np.float32)).astype(np.float32)
                )
            out = np.concatenate(blocks, axis=1)
        return out.astype(np.float32, copy=False)

    def fold(self, contributions: NDArray[np.floating]) -> NDArray[np.float64]:
        """Map the detector's ``[N, n_features_out_]`` contributions back onto the D raw features."""
        if not self.onehot_levels_:
            return np.asarray(contributions, dtype=np.float64)
        return np.asarray(contributions, dtype=np.float64) @ self.fold_.astype(np.float64)

    # ------------------------------------------------------------------ ONNX
    def onnx_graph(self, g: GraphBuilder, x: str, *, exact: bool = True) -> str:
        """Add the preprocessing nodes on ``x`` [N, D]; returns the ``[N, n_features_out_]`` tensor.

        ``exact`` keeps :meth:`transform`'s arithmetic, ``(x - center) / scale``;
        otherwise standard and robust scaling is one Gemm, ``x @ diag(1/scale) -
        center/scale``, equal to the last bit or so (see ``Detector.exact_inputs``).
        """
        if not hasattr(self, "n_features_in_"):
            raise NotFittedError("this Preprocessor is not fitted yet; call fit first")
        imputed = self.onnx_imputed(g, x)
        out = imputed
        if self.scaler in ("standard", "robust") and exact:
            out = g.node("Sub", [out, g.initializer("center", self.center_)], name_hint="centred")
            out = g.node("Div", [out, g.initializer("scale", self.scale_)], name_hint="scaled")
        elif self.scaler in ("standard", "robust"):
            inv = 1.0 / np.asarray(self.scale_, dtype=np.float64)
            out = g.node(
                "Gemm",
                [
                    out,
                    g.initializer("inv_scale", np.diag(inv).astype(np.float32)),
                    g.initializer("offset", (-np.asarray(self.center_, dtype=np.float64) * inv).astype(np.float32)),
                ],
                name_hint="scaled",
            )
        elif self.scaler == "quantile":
            out = self._quantile_graph(g, imputed)
        if self.onehot_levels_:
            kept = g.node(
                "Gather", [out, g.initializer("kept_columns", self.kept_)], axis=1, name_hint="kept"
            )
            cols = [j for j, vals in self.onehot_levels_.items() for _ in vals]
            values = [v for vals in self.onehot_levels_.values() for v in vals]
            repeated = g.node(
                "Gather",
                [imputed, g.initializer("onehot_columns", np.array(cols, dtype=np.int64))],
                axis=1,
                name_hint="onehot_source",
            )
            equal = g.node(
                "Equal",
                [repeated, g.initializer("onehot_values", np.array(values, dtype=np.float32))],
            )
            onehot = g.node("Cast", [equal], to=1, name_hint="onehot")  # 1 = FLOAT
            out = g.node("Concat", [kept, onehot], axis=1, name_hint="encoded")
        return out

    def affine(self) -> tuple[NDArray[np.float64], NDArray[np.float64]] | None:
        """``(center, scale)`` where the whole transform after imputation is ``(x - center) / scale``, else None."""
        if self.scaler not in ("standard", "robust") or self.onehot_levels_:
            return None
        return np.asarray(self.center_, dtype=np.float64), np.asarray(self.scale_, dtype=np.float64)

    def onnx_imputed(self, g: GraphBuilder, x: str) -> str:
        """The imputation nodes alone (for a detector that absorbs the scaling, see :meth:`affine`)."""
        missing = g.node("IsNaN", [x], name_hint="missing")
        return g.node("Where", [missing, g.initializer("medians", self.medians_), x], name_hint="imputed")

    def onnx_fold(self, g: GraphBuilder, contributions: str) -> str:
        """Nodes doing :meth:`fold` on the tensor ``contributions``."""
        if not self.onehot_levels_:
            return contributions
        return g.node(
            "MatMul", [contributions, g.initializer("fold", self.fold_)], name_hint="folded"
        )

    def _quantile_graph(self, g: GraphBuilder, x: str) -> str:
        """Piecewise-linear ECDF map, the segment found by an unrolled binary search (like ECOD)."""
        d = self.n_features_in_
        sizes = np.array([k.size for k in self.knots_], dtype=np.int64)
        width = 2 ** int(np.ceil(np.log2(int(sizes.max()) + 1))) - 1
        knots = np.full((d, width), np.inf, dtype=np.float32)
        levels = np.zeros((d, width), dtype=np.float32)
        for j in range(d):
            knots[j, : sizes[j]] = self.knots_[j]
            levels[j, : sizes[j]] = self.levels_[j]
        flat_k = g.initializer("quantile_knots", knots.reshape(1, -1))
        flat_l = g.initializer("quantile_levels", levels.reshape(1, -1))
        col_start = np.arange(d, dtype=np.int64) * width
        pos = g.prefix_count(x, knots, flat_k, "LessOrEqual", name_hint="q_probe")  # knots <= x
        # Segment i in [1, size - 1]: between knots i - 1 and i.
        i = g.node(
            "Max", [pos, g.initializer("q_one", np.array(1, dtype=np.int64))], name_hint="q_seg"
        )
        i = g.node("Min", [i, g.initializer("q_last", sizes - 1)], name_hint="q_seg")
        hi_idx = g.node("Add", [i, g.initializer("q_cols", col_start)], name_hint="q_hi_idx")
        lo_idx = g.node(
            "Sub",
            [hi_idx, g.initializer("q_one_i", np.array(1, dtype=np.int64))],
            name_hint="q_lo_idx",
        )
        lo = g.lookup(flat_k, lo_idx, d, name_hint="q_lo")
        hi = g.lookup(flat_k, hi_idx, d, name_hint="q_hi")
        p_lo = g.lookup(flat_l, lo_idx, d, name_hint="q_plo")
        p_hi = g.lookup(flat_l, hi_idx, d, name_hint="q_phi")
        t = g.node("Div", [g.node("Sub", [x, lo]), g.node("Sub", [hi, lo])], name_hint="q_t")
        t = g.node(
            "Max", [t, g.initializer("q_zero_f", np.array(0.0, dtype=np.float32))], name_hint="q_t"
        )
        t = g.node(
            "Min", [t, g.initializer("q_one_f", np.array(1.0, dtype=np.float32))], name_hint="q_t"
        )
        span = g.node("Sub", [p_hi, p_lo], name_hint="q_span")
        return g.node("Add", [p_lo, g.node("Mul", [t, span])], name_hint="quantiled")

    # ------------------------------------------------------------------ description
    def get_params(self) -> dict[str, Any]:
        """Constructor arguments, JSON-serialisable."""
        return {"scaler": self.scaler, "onehot": self.onehot}

    def describe(self, feature_names: tuple[str, ...] | list[str] | None = None) -> dict[str, Any]:
        """For the model card: the parameters and, once fitted, what is encoded."""
        out = self.get_params()
        if hasattr(self, "onehot_levels_") and self.onehot_levels_:
            name = (lambda j: feature_names[j]) if feature_names is not None else str
            out["onehot_columns"] = {name(j): vals for j, vals in self.onehot_levels_.items()}
        return out

    def __repr__(self) -> str:
        return f"Preprocessor(scaler={self.scaler!r}, onehot={self.onehot!r})"


def _quantile_map(col: NDArray[np.float32]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Increasing knots and their ECDF levels for one imputed training column.

    Knots are the column's quantiles at ``min(QUANTILE_KNOTS, N)`` evenly spaced
    levels; a value repeated over several levels keeps the mean of those levels
    (scikit-learn's rule).  A constant column maps to 0.5.
    """
    n_levels = min(QUANTILE_KNOTS, col.size)
    grid = np.linspace(0.0, 1.0, max(n_levels, 2))
    q = np.quantile(col.astype(np.float64), grid).astype(np.float32)
    knots, inverse = np.unique(q, return_inverse=True)
    levels = np.bincount(inverse, weights=grid) / np.bincount(inverse)
    if knots.size == 1:
        return np.array([knots[0], knots[0] + 1.0], dtype=np.float32), np.array(
            [0.5, 0.5], dtype=np.float32
        )
    return knots.astype(np.float32), levels.astype(np.float32)


def _interp32(
    x: NDArray[np.float32], knots: NDArray[np.float32], levels: NDArray[np.float32]
) -> NDArray[np.float32]:
    """The native twin of the exported quantile map (same float32 operations)."""
    i = np.clip(np.searchsorted(knots, x, side="right"), 1, knots.size - 1)
    lo, hi = knots[i - 1], knots[i]
    t = np.clip((x - lo) / (hi - lo), np.float32(0.0), np.float32(1.0)).astype(np.float32)
    return (levels[i - 1] + t * (levels[i] - levels[i - 1])).astype(np.float32)
