"""COPOD against PyOD, row by row, and its contributions and ONNX search on ties."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray
from pyod.models.copod import COPOD as PyodCOPOD

from models.export import check_parity
from models.pipeline import Pipeline
from models.preprocessing import Preprocessor
from models.zoo.copod import COPOD


@pytest.fixture(scope="module")
def X() -> NDArray[np.float32]:
    rng = np.random.default_rng(2)
    # Clearly skewed columns both ways, so every tail is used and one row cannot flip a sign.
    X = np.column_stack(
        [rng.gamma(2.0, size=600), -rng.gamma(2.0, size=600), rng.exponential(size=(600, 3))]
    )
    return X.astype(np.float32)


def test_equals_pyod_one_row_at_a_time(X: NDArray[np.float32]) -> None:
    train, rows = X[:500], X[500:540]
    ours = COPOD().fit(train).score_samples(rows)
    pyod = PyodCOPOD().fit(train)
    one_by_one = np.array([pyod.decision_function(rows[i : i + 1])[0] for i in range(len(rows))])
    np.testing.assert_allclose(ours, one_by_one, rtol=1e-9)


def test_far_feature_ranks_first(X: NDArray[np.float32]) -> None:
    """Pushed out along its skewed tail, a feature earns the full tail and ranks first.

    (Pushed against the skew COPOD counts half of it, ``log(n + 1) / 2``, by
    design, and a moderately extreme feature elsewhere can outrank it.)
    """
    det = COPOD().fit(X[:500])
    rows = X[500:].copy()
    cols = np.arange(len(rows)) % X.shape[1]
    high = X.max(axis=0) + 10.0 * X.std(axis=0)
    low = X.min(axis=0) - 10.0 * X.std(axis=0)
    far = np.where(det.skew_sign_ >= 0, high, low)
    rows[np.arange(len(rows)), cols] = far[cols]
    assert np.mean(det.contributions(rows).argmax(axis=1) == cols) >= 0.9
    assert (det.score_samples(rows) > det.score_samples(X[500:])).all()


def test_parity_with_ties_and_out_of_range() -> None:
    """Integer data puts many rows exactly on training values: <= and < must count alike."""
    rng = np.random.default_rng(4)
    train = rng.integers(0, 6, size=(777, 4)).astype(np.float32)
    train[:, 3] = 2.0  # a constant column: zero skewness
    rows = np.vstack([rng.integers(-2, 9, size=(300, 4)), [[np.inf, -np.inf, 1e30, 2.0]]])
    pipe = Pipeline(preprocessor=Preprocessor(), detector=COPOD()).fit(train)
    assert check_parity(pipe, pipe.to_onnx(["a", "b", "c", "d"]), rows.astype(np.float32)) <= 1e-4
