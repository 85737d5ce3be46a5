"""MCD against PyOD (scikit-learn's MinCovDet), and its contributions."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray
from pyod.models.mcd import MCD as PyodMCD

from models.zoo.mcd import MCD


@pytest.fixture(scope="module")
def X() -> NDArray[np.float32]:
    rng = np.random.default_rng(10)
    cov = 0.5 * np.ones((5, 5)) + 0.5 * np.eye(5)
    X = rng.multivariate_normal(np.zeros(5), cov, size=600) * [1.0, 4.0, 0.2, 1.0, 30.0]
    X[:30] += 6.0 * X.std(axis=0)
    return X.astype(np.float32)


@pytest.mark.parametrize("support_fraction", [None, 0.8])
def test_equals_pyod(X: NDArray[np.float32], support_fraction: float | None) -> None:
    train, rows = X[:450], X[450:]
    ours = MCD(support_fraction=support_fraction, random_state=1).fit(train).score_samples(rows)
    pyod = PyodMCD(support_fraction=support_fraction, random_state=1)
    theirs = pyod.fit(train.astype(np.float64)).decision_function(rows.astype(np.float64))
    np.testing.assert_allclose(ours, theirs, rtol=1e-9)


def test_far_feature_ranks_first(X: NDArray[np.float32]) -> None:
    det = MCD().fit(X[:450])
    rows = X[450:].copy()
    cols = np.arange(len(rows)) % X.shape[1]
    far = X.max(axis=0) + 10.0 * X.std(axis=0)
    rows[np.arange(len(rows)), cols] = far[cols]
    assert np.mean(det.contributions(rows).argmax(axis=1) == cols) >= 0.9


def test_score_is_the_squared_robust_distance(X: NDArray[np.float32]) -> None:
    det = MCD().fit(X)
    d = X[:40].astype(np.float64) - det.location_
    np.testing.assert_allclose(
        det.score_samples(X[:40]), np.einsum("ij,jk,ik->i", d, det.precision_, d), rtol=1e-9
    )
