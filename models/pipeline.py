"""A fitted preprocessor and detector, scored natively or exported as one ONNX graph.

Examples
--------
>>> import numpy as np
>>> from models.zoo import ECOD
>>> X = np.random.default_rng(0).normal(size=(100, 2)).astype(np.float32)
>>> pipe = Pipeline(preprocessor=Preprocessor(scaler="robust"), detector=ECOD()).fit(X)
>>> pipe.describe()
{'algorithm': 'ecod', 'params': {}, 'preprocessing': {'scaler': 'robust', 'onehot': False}}
>>> len(pipe.to_onnx(["a", "b"])) > 0
True
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray

from models.detector import Detector
from models.errors import FeatureCountError
from models.onnx_graph import GraphBuilder
from models.preprocessing import Preprocessor

__all__ = ["INPUT_NAME", "Pipeline"]

INPUT_NAME = "features"


class Pipeline:
    """Preprocessing followed by a detector, on raw rows (NaN allowed).

    Parameters
    ----------
    preprocessor : Preprocessor
        Imputation and scaling, fitted by :meth:`fit`.
    detector : Detector
        The zoo member, fitted by :meth:`fit` on the preprocessed rows.
    """

    def __init__(self, *, preprocessor: Preprocessor, detector: Detector) -> None:
        self.preprocessor = preprocessor
        self.detector = detector

    def fit(self, X_raw: NDArray[np.floating]) -> Pipeline:
        """Fit the preprocessor on ``X_raw`` [N, D], then the detector on its output."""
        self.detector.fit(self.preprocessor.fit(X_raw).transform(X_raw))
        return self

    def score_samples(self, X_raw: NDArray[np.floating]) -> NDArray[np.float64]:
        """Raw anomaly score per row, higher = more anomalous."""
        return self.detector.score_samples(self.preprocessor.transform(X_raw))

    def contributions(self, X_raw: NDArray[np.floating]) -> NDArray[np.float64]:
        """Each feature's share of the row's score; rows sum to 1 (or 0)."""
        return self.preprocessor.fold(
            self.detector.contributions(self.preprocessor.transform(X_raw))
        )

    def to_onnx(self, feature_names: Sequence[str]) -> bytes:
        """The whole pipeline as a serialised ONNX model (see CONTRACT.md §3).

        The feature names are stored in the model's metadata (``features``, JSON).

        Raises
        ------
        FeatureCountError
            If ``feature_names`` does not have one name per fitted feature.
        """
        n_features = self.preprocessor.n_features_in_
        if len(feature_names) != n_features:
            raise FeatureCountError(
                f"pipeline expects {n_features} feature names, got {len(feature_names)}"
            )
        g = GraphBuilder()
        score, contributions = self.onnx_graph(g, INPUT_NAME)
        model = g.build(INPUT_NAME, n_features, {"score": score, "contributions": contributions})
        onnx.helper.set_model_props(
            model,
            {"features": json.dumps(list(feature_names)), "detector": json.dumps(self.describe())},
        )
        onnx.checker.check_model(model, full_check=True)
        return bytes(model.SerializeToString())

    def onnx_graph(self, g: GraphBuilder, x: str) -> tuple[str, str]:
        """Add preprocessing and detector nodes on the raw-feature tensor ``x``.

        Returns the ``score`` [N] and ``contributions`` [N, D] tensors, the
        contributions folded back onto the raw features.
        """
        affine = self.preprocessor.affine()
        if affine is not None:
            folded = self.detector.onnx_graph_scaled(g, self.preprocessor.onnx_imputed(g, x), *affine)
            if folded is not None:
                return folded  # no one-hot columns: the contributions are per raw feature already
        z = self.preprocessor.onnx_graph(g, x, exact=self.detector.exact_inputs)
        score, contributions = self.detector.onnx_graph(g, z)
        return score, self.preprocessor.onnx_fold(g, contributions)

    @property
    def parity_tolerance(self) -> float:
        """Max abs difference allowed between ONNX and native scores."""
        return float(self.detector.parity_tolerance)

    def describe(self) -> dict[str, Any]:
        """Algorithm, hyperparameters and preprocessing, for the model card."""
        return {
            "algorithm": self.detector.algorithm,
            "params": self.detector.get_params(),
            "preprocessing": self.preprocessor.describe(),
        }

    def __repr__(self) -> str:
        return f"Pipeline(preprocessor={self.preprocessor!r}, detector={self.detector!r})"
