"""ECOD against PyOD, row by row, and its contributions and ONNX search on ties."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray
from pyod.models.ecod import ECOD as PyodECOD

from models.export import check_parity
from models.pipeline import Pipeline
from models.preprocessing import Preprocessor
from models.zoo import ECOD


@pytest.fixture(scope="module")
def X() -> NDArray[np.float32]:
    rng = np.random.default_rng(2)
    # Skewed both ways and symmetric columns, so every tail is used.
    X = np.column_stack(
        [rng.gamma(2.0, size=600), -rng.gamma(2.0, size=600), rng.normal(size=(600, 3))]
    )
    return X.astype(np.float32)


def test_equals_pyod_one_row_at_a_time(X: NDArray[np.float32]) -> None:
    train, rows = X[:500], X[500:520]
    ours = ECOD().fit(train).score_samples(rows)
    pyod = PyodECOD().fit(train)
    one_by_one = np.array([pyod.decision_function(rows[i : i + 1])[0] for i in range(len(rows))])
    np.testing.assert_allclose(ours, one_by_one, rtol=1e-6)

    # PyOD refits its ECDFs on train + batch: the same rows scored in a 500-row batch move.
    batch = np.vstack([rows, X[:480]])
    in_batch = pyod.decision_function(batch)[: len(rows)]
    assert np.max(np.abs(in_batch - ours) / ours) > 1e-3


def test_far_feature_ranks_first(X: NDArray[np.float32]) -> None:
    det = ECOD().fit(X)
    row = np.median(X, axis=0, keepdims=True)
    row[0, 3] = 100.0
    contrib = det.contributions(row)[0]
    assert contrib.argmax() == 3
    assert det.score_samples(row)[0] > det.score_samples(np.median(X, axis=0, keepdims=True))[0]


def test_parity_with_ties_and_out_of_range() -> None:
    """Integer data puts many rows exactly on training values: <= and < must count alike."""
    rng = np.random.default_rng(4)
    train = rng.integers(0, 6, size=(777, 4)).astype(np.float32)
    train[:, 3] = 2.0  # a constant column: zero skewness
    rows = np.vstack([rng.integers(-2, 9, size=(300, 4)), [[np.inf, -np.inf, 1e30, 2.0]]])
    pipe = Pipeline(preprocessor=Preprocessor(), detector=ECOD()).fit(train)
    assert check_parity(pipe, pipe.to_onnx(["a", "b", "c", "d"]), rows.astype(np.float32)) <= 1e-4
