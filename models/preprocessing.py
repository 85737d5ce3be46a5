"""Imputation and scaling in front of every detector, exported into the same graph.

Missing values (NaN) are replaced by the training median of their column; the
optional scaler then centres and divides each column.  All arithmetic is in
float32, in the same order as the exported ONNX nodes, so the native and the
ONNX path feed identical numbers to the detector.

Examples
--------
>>> import numpy as np
>>> X = np.array([[1.0, np.nan], [3.0, 4.0], [np.nan, 8.0]], dtype=np.float32)
>>> pre = Preprocessor(scaler="robust").fit(X)
>>> pre.medians_.tolist()
[2.0, 6.0]
>>> pre.transform(np.array([[np.nan, 10.0]], dtype=np.float32)).tolist()
[[0.0, 2.0]]
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import NDArray

from models.errors import FeatureCountError, NotFittedError
from models.onnx_graph import GraphBuilder

__all__ = ["Preprocessor", "Scaler"]

Scaler = Literal["none", "standard", "robust"]
_SCALERS = ("none", "standard", "robust")


class Preprocessor:
    """Median imputation followed by an optional scaler.

    Parameters
    ----------
    scaler : {"none", "standard", "robust"}
        ``standard``: subtract the mean, divide by the standard deviation.
        ``robust``: subtract the median, divide by the interquartile range.
        Both are computed on the imputed training data; a zero scale becomes 1.

    Attributes
    ----------
    medians_ : ndarray of float32, shape (D,)
        Per-column median ignoring NaN (0.0 for a column that is all NaN).
    center_, scale_ : ndarray of float32, shape (D,)
        What the scaler subtracts and divides by (0 and 1 for ``none``).
    """

    def __init__(self, *, scaler: Scaler = "none") -> None:
        self.scaler = scaler

    def fit(self, X: NDArray[np.floating]) -> Preprocessor:
        """Learn medians and the scaler from raw rows ``X`` [N, D] (NaN allowed)."""
        if self.scaler not in _SCALERS:
            raise ValueError(f"scaler must be one of {_SCALERS}, got {self.scaler!r}")
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[0] < 1 or X.shape[1] < 1:
            raise ValueError(f"preprocessing needs a non-empty 2-d array, got shape {X.shape}")
        medians = np.zeros(X.shape[1], dtype=np.float32)
        seen = ~np.isnan(X).all(axis=0)
        # nanmedian warns on all-NaN columns; those get 0.0 by definition.
        medians[seen] = np.nanmedian(X[:, seen], axis=0)
        self.medians_ = medians
        Xi = np.where(np.isnan(X), medians, X).astype(np.float64)
        if self.scaler == "standard":
            center, scale = Xi.mean(axis=0), Xi.std(axis=0)
        elif self.scaler == "robust":
            q25, center, q75 = np.percentile(Xi, [25.0, 50.0, 75.0], axis=0)
            scale = q75 - q25
        else:
            center, scale = np.zeros(X.shape[1]), np.ones(X.shape[1])
        self.center_ = center.astype(np.float32)
        self.scale_ = np.where(scale.astype(np.float32) == 0.0, 1.0, scale).astype(np.float32)
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X: NDArray[np.floating]) -> NDArray[np.float32]:
        """Impute and scale rows ``X`` [N, D]; float32 out."""
        if not hasattr(self, "n_features_in_"):
            raise NotFittedError("this Preprocessor is not fitted yet; call fit first")
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            got = X.shape[1] if X.ndim == 2 else f"shape {X.shape}"
            raise FeatureCountError(
                f"preprocessing expects {self.n_features_in_} features, got {got}"
            )
        out = np.where(np.isnan(X), self.medians_, X)
        if self.scaler != "none":
            out = (out - self.center_) / self.scale_
        return out.astype(np.float32, copy=False)

    def onnx_graph(self, g: GraphBuilder, x: str) -> str:
        """Add IsNaN + Where (+ Sub + Div) nodes on ``x``; returns the output tensor name."""
        if not hasattr(self, "n_features_in_"):
            raise NotFittedError("this Preprocessor is not fitted yet; call fit first")
        missing = g.node("IsNaN", [x], name_hint="missing")
        out = g.node(
            "Where", [missing, g.initializer("medians", self.medians_), x], name_hint="imputed"
        )
        if self.scaler != "none":
            out = g.node("Sub", [out, g.initializer("center", self.center_)], name_hint="centred")
            out = g.node("Div", [out, g.initializer("scale", self.scale_)], name_hint="scaled")
        return out

    def get_params(self) -> dict[str, str]:
        """Constructor arguments, JSON-serialisable."""
        return {"scaler": self.scaler}

    def __repr__(self) -> str:
        return f"Preprocessor(scaler={self.scaler!r})"
