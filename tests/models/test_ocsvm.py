"""OCSVM against scikit-learn and PyOD, and its kernel expansion in ONNX."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray
from pyod.models.ocsvm import OCSVM as PyodOCSVM
from sklearn.svm import OneClassSVM

from models.export import check_parity
from models.pipeline import Pipeline
from models.preprocessing import Preprocessor
from models.zoo import OCSVM


@pytest.fixture(scope="module")
def X() -> NDArray[np.float32]:
    rng = np.random.default_rng(14)
    X = rng.normal(size=(800, 5)) * np.array([1.0, 2.0, 0.5, 1.0, 4.0])
    X[:10] += 8.0
    return np.asarray(X, dtype=np.float32)


@pytest.mark.parametrize(
    ("nu", "gamma"), [(0.5, "auto"), (0.1, "scale"), (0.05, 0.3)]
)
def test_equals_pyod_and_sklearn(X: NDArray[np.float32], nu: float, gamma: str | float) -> None:
    train, rows = X[100:], X[:100]
    ours = OCSVM(nu=nu, gamma=gamma).fit(train).score_samples(rows)  # type: ignore[arg-type]
    pyod = PyodOCSVM(nu=nu, gamma=gamma).fit(train).decision_function(rows)
    np.testing.assert_allclose(ours, pyod, rtol=1e-9, atol=1e-9)
    sk = OneClassSVM(nu=nu, gamma=gamma).fit(train.astype(np.float64))
    np.testing.assert_allclose(ours, -sk.decision_function(rows), rtol=1e-9, atol=1e-9)


def test_parity_on_raw_scales(X: NDArray[np.float32]) -> None:
    """Unscaled columns and many support vectors: the float64 kernel keeps ONNX close."""
    pipe = Pipeline(preprocessor=Preprocessor(), detector=OCSVM(nu=0.9, gamma="scale"))
    pipe.fit(X[100:])
    assert len(pipe.detector.support_) > 600  # type: ignore[attr-defined]
    rows = np.vstack([X[:100], 50.0 * X[:20]])
    assert check_parity(pipe, pipe.to_onnx([f"f{i}" for i in range(5)]), rows) <= 1e-3


def test_rejects_bad_parameters(X: NDArray[np.float32]) -> None:
    with pytest.raises(ValueError, match=r"nu must be in \(0, 1\], got 1.5"):
        OCSVM(nu=1.5).fit(X)
    with pytest.raises(ValueError, match=r"gamma must be.*got -1"):
        OCSVM(gamma=-1.0).fit(X)
