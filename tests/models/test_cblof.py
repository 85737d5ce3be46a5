"""CBLOF against PyOD on new rows, including its small/large cluster split."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from pyod.models.cblof import CBLOF as PyodCBLOF

from models.export import onnx_scores
from models.pipeline import Pipeline
from models.preprocessing import Preprocessor
from models.zoo import CBLOF


@pytest.fixture(scope="module")
def X() -> NDArray[np.float32]:
    rng = np.random.default_rng(15)
    # Clusters of very different sizes, so small clusters exist.
    parts = [rng.normal(size=(n, 4)) + c for n, c in ((900, 0.0), (500, 6.0), (40, -6.0))]
    return rng.permutation(np.vstack(parts)).astype(np.float32)


@pytest.mark.parametrize(
    "params",
    [{}, {"n_clusters": 4, "alpha": 0.8}, {"n_clusters": 12, "beta": 2.0}],
)
def test_equals_pyod_on_new_rows(X: NDArray[np.float32], params: dict[str, float]) -> None:
    train, rows = X[200:], X[:200]
    ours = CBLOF(**params).fit(train)  # type: ignore[arg-type]
    assert not ours.large_.all()  # the small-cluster branch is exercised
    theirs = PyodCBLOF(random_state=0, **params).fit(train)
    np.testing.assert_allclose(ours.score_samples(rows), theirs.decision_function(rows), rtol=1e-5)


def test_weights_are_cluster_shares(X: NDArray[np.float32]) -> None:
    train, rows = X[200:], X[:200]
    ours = CBLOF(use_weights=True).fit(train).score_samples(rows)
    theirs = PyodCBLOF(use_weights=True, random_state=0).fit(train).decision_function(rows)
    np.testing.assert_allclose(ours * len(train), theirs, rtol=1e-5)


def test_every_cluster_large_where_pyod_finds_no_split() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1000, 6)).astype(np.float32)  # one blob: near-equal clusters
    with pytest.raises(ValueError, match="Could not form valid cluster separation"):
        PyodCBLOF(random_state=0).fit(X)
    det = CBLOF().fit(X)
    assert det.large_.all()
    # Then each row is scored by the distance to its own (nearest) centre.
    rows = X[:5].astype(np.float64)
    centres = det.centres_.rows + det.centres_.center
    nearest = np.sqrt(((rows[:, None] - centres) ** 2).sum(axis=2)).min(axis=1)
    np.testing.assert_allclose(det.score_samples(X[:5]), nearest, rtol=1e-9)


def test_rejects_bad_parameters(X: NDArray[np.float32]) -> None:
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\), got 1.2"):
        CBLOF(alpha=1.2).fit(X)
    with pytest.raises(ValueError, match=r"n_clusters must be in \[2, 5\].*got 8"):
        CBLOF().fit(X[:5])


@pytest.mark.parametrize("offset", [0.0, 1e4])
@pytest.mark.parametrize(
    "params",
    [{}, {"use_weights": True}, {"n_clusters": 12, "beta": 2.0}],
)
def test_onnx_matches_native(X: NDArray[np.float32], params: dict[str, Any], offset: float) -> None:
    """The float32 graph keeps parity, also on rows far from the origin (moved first)."""
    rows = (X + offset * np.array([1.0, -2.0, 3.0, 0.5])).astype(np.float32)
    det = CBLOF(**params)
    pipe = Pipeline(preprocessor=Preprocessor(scaler="none"), detector=det).fit(rows[200:])
    assert not det.large_.all()
    model = pipe.to_onnx([f"f{i}" for i in range(4)])
    score, contrib = onnx_scores(model, rows[:200])
    np.testing.assert_allclose(score, pipe.score_samples(rows[:200]), rtol=1e-5)
    np.testing.assert_allclose(contrib, pipe.contributions(rows[:200]), rtol=0, atol=1e-5)


def test_scored_against_the_nearest_large_centre(X: NDArray[np.float32]) -> None:
    """What the graph relies on: the centre that applies is the nearest large one."""
    det = CBLOF(n_clusters=12, beta=2.0).fit(X[200:])
    centres = (det.centres_.rows + det.centres_.center)[det.large_]
    rows = X[:200].astype(np.float64)
    nearest_large = np.sqrt(((rows[:, None] - centres) ** 2).sum(axis=2)).min(axis=1)
    np.testing.assert_allclose(det.score_samples(X[:200]), nearest_large, rtol=1e-9)
