"""KNN against PyOD on new rows, and its training-set cap."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray
from pyod.models.knn import KNN as PyodKNN

from models.zoo import KNN


@pytest.fixture(scope="module")
def X() -> NDArray[np.float32]:
    rng = np.random.default_rng(12)
    X = rng.normal(size=(900, 5)) * np.array([1.0, 3.0, 0.5, 1.0, 2.0])
    X[:15] += 6.0
    return np.asarray(X, dtype=np.float32)


@pytest.mark.parametrize("method", ["largest", "mean", "median"])
@pytest.mark.parametrize("n_neighbors", [1, 4, 5])
def test_equals_pyod_on_new_rows(X: NDArray[np.float32], method: str, n_neighbors: int) -> None:
    train, rows = X[100:], X[:100]
    det = KNN(n_neighbors=n_neighbors, method=method)  # type: ignore[arg-type]
    ours = det.fit(train).score_samples(rows)
    theirs = PyodKNN(n_neighbors=n_neighbors, method=method).fit(train).decision_function(rows)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)


def test_training_set_is_capped(X: NDArray[np.float32]) -> None:
    det = KNN(max_train=300).fit(X)
    assert len(det.reference_) == 300
    kept = det.reference_.rows + det.reference_.center
    theirs = PyodKNN().fit(kept.astype(np.float32)).decision_function(X[:50])
    np.testing.assert_allclose(det.score_samples(X[:50]), theirs, rtol=1e-5)


def test_rejects_bad_parameters(X: NDArray[np.float32]) -> None:
    with pytest.raises(ValueError, match=r"n_neighbors must be in \[1, 900\].*got 901"):
        KNN(n_neighbors=901).fit(X)
    with pytest.raises(ValueError, match=r"method must be one of.*'max'"):
        KNN(method="max").fit(X)  # type: ignore[arg-type]
