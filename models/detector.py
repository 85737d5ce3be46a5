"""The detector interface every zoo member implements.

Score convention (everywhere in anomstream): **higher = more anomalous**.
scikit-learn's ``score_samples`` is the opposite; a wrapper flips it once.

A detector only scores.  The decision (calibration, threshold, severity) is
fitted separately and lives in the model card.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np
from numpy.typing import NDArray

from models.errors import FeatureCountError, NotFittedError

if TYPE_CHECKING:
    from models.onnx_graph import GraphBuilder

__all__ = ["Choice", "Detector", "FloatRange", "IntRange", "ParamSpec"]


@dataclass(frozen=True, slots=True)
class IntRange:
    """An integer hyperparameter searched in ``[low, high]``."""

    low: int
    high: int
    log: bool = False
    step: int = 1


@dataclass(frozen=True, slots=True)
class FloatRange:
    """A float hyperparameter searched in ``[low, high]``."""

    low: float
    high: float
    log: bool = False


@dataclass(frozen=True, slots=True)
class Choice:
    """A hyperparameter taking one of ``options`` (JSON scalars)."""

    options: tuple[Any, ...]


ParamSpec = IntRange | FloatRange | Choice


class Detector(ABC):
    """Base class of the zoo (scikit-learn estimator rules).

    Subclasses take keyword-only hyperparameters stored as given, validate in
    :meth:`fit`, name fitted attributes with a trailing underscore and set
    ``n_features_in_``.

    Methods to implement: :meth:`_fit`, :meth:`_score`, :meth:`_contributions`,
    :meth:`onnx_graph`, and :meth:`get_params`.
    """

    algorithm: ClassVar[str]
    #: The hyperparameters AutoML searches, and their ranges (defaults: the constructor's).
    search_space: ClassVar[Mapping[str, ParamSpec]] = {}
    #: False for detectors whose scores do not change under per-feature monotone
    #: rescaling (trees, ECDF-based): the search then skips the scaler choice.
    scale_sensitive: ClassVar[bool] = True
    #: Max abs difference allowed between ONNX and native scores.
    parity_tolerance: ClassVar[float] = 1e-4
    #: True where the graph must see the scaled rows bit for bit as the native path
    #: does (bins, split thresholds, ECDF knots, exact neighbour ties); False lets the
    #: export scale with one Gemm, whose rounding differs in the last bit (~4 µs less
    #: per 256 rows than a Sub and a Div).
    exact_inputs: ClassVar[bool] = True
    n_features_in_: int

    def fit(self, X: NDArray[np.float32]) -> Self:
        """Fit on rows ``X`` [N, D] (already preprocessed, finite); returns self."""
        for _ in self.fit_steps(X):
            pass
        return self

    def fit_steps(self, X: NDArray[np.float32]) -> Iterator[float]:
        """Fit like :meth:`fit`, yielding the fraction of training done after each step.

        Iterative detectors (autoencoders) yield after each epoch or group of
        epochs so a search can score the partly trained model and prune it;
        the others yield 1.0 once.  The detector is usable after each yield.
        """
        X = self._validate_fit(X)
        for fraction in self._fit_steps(X):
            self.n_features_in_ = X.shape[1]
            yield fraction

    def _fit_steps(self, X: NDArray[np.float32]) -> Iterator[float]:
        self._fit(X)
        yield 1.0

    def _validate_fit(self, X: NDArray[np.float32]) -> NDArray[np.float32]:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[0] < 2 or X.shape[1] < 1:
            raise ValueError(f"{self.algorithm} needs a 2-d array with >= 2 rows, got shape {X.shape}")
        if not np.isfinite(X).all():
            raise ValueError(f"{self.algorithm} got non-finite values; impute first")
        return X

    def score_samples(self, X: NDArray[np.float32]) -> NDArray[np.float64]:
        """Raw anomaly score per row, higher = more anomalous; each row scored alone."""
        return self._score(self._check(X))

    def contributions(self, X: NDArray[np.float32]) -> NDArray[np.float64]:
        """Each feature's non-negative share of the row's score; rows sum to 1 (or 0)."""
        return self._contributions(self._check(X))

    def _check(self, X: NDArray[np.float32]) -> NDArray[np.float32]:
        if not hasattr(self, "n_features_in_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit first")
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            got = X.shape[1] if X.ndim == 2 else f"shape {X.shape}"
            raise FeatureCountError(
                f"{self.algorithm} expects {self.n_features_in_} features, got {got}"
            )
        return X

    @abstractmethod
    def _fit(self, X: NDArray[np.float32]) -> None: ...

    @abstractmethod
    def _score(self, X: NDArray[np.float32]) -> NDArray[np.float64]: ...

    @abstractmethod
    def _contributions(self, X: NDArray[np.float32]) -> NDArray[np.float64]: ...

    @abstractmethod
    def onnx_graph(self, g: GraphBuilder, x: str) -> tuple[str, str]:
        """Add this detector's nodes to ``g``.

        ``x`` names a float32 [N, D] tensor (preprocessed).  Returns the names
        of the float32 ``score`` [N] and ``contributions`` [N, D] tensors.
        """

    def onnx_graph_scaled(
        self, g: GraphBuilder, x: str, center: NDArray[np.float64], scale: NDArray[np.float64]
    ) -> tuple[str, str] | None:
        """:meth:`onnx_graph` on the rows before a per-column scaling ``(x - center) / scale``, or None.

        A detector whose graph starts with per-column affine arithmetic (or
        with comparisons against per-column limits) can absorb the pipeline's
        standard or robust scaling into its constants, sparing the graph that
        pass over the batch; those override this (the default absorbs
        nothing).  ``x`` is the imputed, unscaled rows; ``center`` and
        ``scale`` hold float32 values.  With ``exact_inputs`` the result must
        equal the graph on the rows scaled as the preprocessing does (float32
        ``Sub`` then ``Div``) bit for bit; without, up to float32 rounding.
        """
        return None

    @abstractmethod
    def get_params(self) -> dict[str, Any]:
        """Hyperparameters as given to the constructor (JSON-serialisable)."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"
