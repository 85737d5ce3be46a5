"""LOF against scikit-learn's novelty LOF and PyOD on new rows."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray
from pyod.models.lof import LOF as PyodLOF
from sklearn.neighbors import LocalOutlierFactor

from models.zoo import LOF


@pytest.fixture(scope="module")
def X() -> NDArray[np.float32]:
    rng = np.random.default_rng(13)
    # Two clusters of different density, so the local part of LOF matters.
    X = np.vstack([rng.normal(size=(600, 4)), 5.0 + 0.2 * rng.normal(size=(300, 4))])
    X[:10] += 4.0
    return rng.permutation(X).astype(np.float32)


@pytest.mark.parametrize("n_neighbors", [1, 5, 20])
def test_equals_sklearn_and_pyod(X: NDArray[np.float32], n_neighbors: int) -> None:
    train, rows = X[150:], X[:150]
    ours = LOF(n_neighbors=n_neighbors).fit(train).score_samples(rows)
    sk = LocalOutlierFactor(n_neighbors=n_neighbors, novelty=True).fit(train)
    # scikit-learn rounds its distances to float32 for float32 input.
    np.testing.assert_allclose(ours, -sk.score_samples(rows), rtol=1e-5)
    pyod = PyodLOF(n_neighbors=n_neighbors).fit(train).decision_function(rows)
    np.testing.assert_allclose(ours, pyod, rtol=1e-5)


def test_neighbours_capped_at_training_rows_minus_one(X: NDArray[np.float32]) -> None:
    train = X[:30]
    ours = LOF(n_neighbors=50).fit(train)
    assert ours.k_ == 29
    with pytest.warns(UserWarning, match="n_neighbors"):
        sk = LocalOutlierFactor(n_neighbors=50, novelty=True).fit(train)
    np.testing.assert_allclose(ours.score_samples(X[30:80]), -sk.score_samples(X[30:80]), rtol=1e-5)


def test_duplicate_training_rows_give_finite_scores() -> None:
    rng = np.random.default_rng(0)
    train = rng.integers(0, 3, size=(400, 3)).astype(np.float32)  # 27 distinct rows
    rows = np.array([[1, 1, 1], [9, 9, 9]], dtype=np.float32)
    scores = LOF(n_neighbors=5).fit(train).score_samples(rows)
    assert np.isfinite(scores).all() and scores[1] > scores[0]


def test_graph_breaks_ties_at_the_kth_distance_like_native() -> None:
    """Integer grid rows: many training rows at exactly the k-th distance, lower row numbers win."""
    from models.export import check_parity, onnx_scores
    from models.pipeline import Pipeline
    from models.preprocessing import Preprocessor

    grid = np.array([[i, j] for i in range(14) for j in range(14)], dtype=np.float32)
    rows = np.vstack([grid[::5], grid[::7] + 0.5, [[6.5, 6.0], [0.0, 6.5]]]).astype(np.float32)
    for k in (3, 6, 10, 15):  # 10 and 15 take the k-th distance from the largest side
        pipe = Pipeline(preprocessor=Preprocessor(), detector=LOF(n_neighbors=k)).fit(grid)
        model = pipe.to_onnx(["a", "b"])
        assert check_parity(pipe, model, rows) >= 0.0
        np.testing.assert_allclose(onnx_scores(model, rows)[0], pipe.score_samples(rows), rtol=1e-6)
