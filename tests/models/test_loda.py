"""LODA against PyOD with the same seed, and its contributions."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray
from pyod.models.loda import LODA as PyodLODA

from models.zoo.loda import LODA


@pytest.fixture(scope="module")
def X() -> NDArray[np.float32]:
    rng = np.random.default_rng(12)
    cov = 0.3 * np.ones((9, 9)) + 0.7 * np.eye(9)
    X = rng.multivariate_normal(np.zeros(9), cov, size=700)
    X[:20] += 6.0 * rng.choice([-1.0, 1.0], size=(20, 9))
    return X.astype(np.float32)


@pytest.mark.parametrize(("n_bins", "n_random_cuts"), [(10, 100), (25, 40)])
def test_equals_pyod(X: NDArray[np.float32], n_bins: int, n_random_cuts: int) -> None:
    train, rows = X[:500], X[500:]
    ours = LODA(n_bins=n_bins, n_random_cuts=n_random_cuts, random_state=4).fit(train)
    pyod = PyodLODA(n_bins=n_bins, n_random_cuts=n_random_cuts, random_state=4).fit(train)
    np.testing.assert_array_equal(ours.projections_, pyod.projections_)
    np.testing.assert_allclose(ours.score_samples(rows), pyod.decision_function(rows), rtol=1e-9)


def test_far_feature_ranks_first(X: NDArray[np.float32]) -> None:
    det = LODA().fit(X[:500])
    rows = X[500:].copy()
    cols = np.arange(len(rows)) % X.shape[1]
    far = X.max(axis=0) + 10.0 * X.std(axis=0)
    rows[np.arange(len(rows)), cols] = far[cols]
    assert np.mean(det.contributions(rows).argmax(axis=1) == cols) >= 0.9


def test_rejects_bad_bin_count(X: NDArray[np.float32]) -> None:
    with pytest.raises(ValueError, match=r"n_bins must be an int >= 2, got 1"):
        LODA(n_bins=1).fit(X)
