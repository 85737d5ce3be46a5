"""PCA against PyOD's formula, and its contributions."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from pyod.models.pca import PCA as PyodPCA

from models.export import onnx_scores
from models.pipeline import Pipeline
from models.preprocessing import Preprocessor
from models.zoo.pca import PCA


@pytest.fixture(scope="module")
def X() -> NDArray[np.float32]:
    rng = np.random.default_rng(9)
    cov = 0.6 * np.ones((6, 6)) + 0.4 * np.eye(6)
    X = rng.multivariate_normal(np.zeros(6), cov, size=700) * [1.0, 3.0, 0.5, 10.0, 1.0, 2.0]
    X[:15] += 5.0 * X.std(axis=0)
    return X.astype(np.float32)


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"n_components": 4, "n_selected_components": 2},
        {"weighted": False, "standardization": False},
    ],
)
def test_equals_pyod(X: NDArray[np.float32], params: dict[str, Any]) -> None:
    train, rows = X[:500], X[500:]
    ours = PCA(**params).fit(train).score_samples(rows)
    # PyOD in float64 on the same values: we compute in float64 too.
    theirs = PyodPCA(**params).fit(train.astype(np.float64)).decision_function(rows.astype(np.float64))
    np.testing.assert_allclose(ours, theirs, rtol=1e-9)


def test_contributions_split_the_score_exactly(X: NDArray[np.float32]) -> None:
    det = PCA().fit(X)
    z = (X[:50].astype(np.float64) - det.mean_) / det.scale_
    diff2 = (z[:, None, :] - det.components_[None]) ** 2
    terms = (diff2 / (np.sqrt(diff2.sum(axis=2, keepdims=True)) * det.weights_[:, None])).sum(axis=1)
    np.testing.assert_allclose(terms.sum(axis=1), det.score_samples(X[:50]), rtol=1e-12)


def test_far_feature_ranks_first(X: NDArray[np.float32]) -> None:
    det = PCA().fit(X[:500])
    rows = X[500:].copy()
    cols = np.arange(len(rows)) % X.shape[1]
    far = X.max(axis=0) + 10.0 * X.std(axis=0)
    rows[np.arange(len(rows)), cols] = far[cols]
    assert np.mean(det.contributions(rows).argmax(axis=1) == cols) >= 0.9


def test_rejects_too_many_selected_components(X: NDArray[np.float32]) -> None:
    with pytest.raises(ValueError, match=r"\[1, 3\].*got 5"):
        PCA(n_components=3, n_selected_components=5).fit(X)


@pytest.mark.parametrize("scaler", ["none", "standard", "robust"])
@pytest.mark.parametrize("offset", [0.0, 1e4])
@pytest.mark.parametrize(
    "params",
    [
        {},
        {"n_components": 4, "n_selected_components": 2},
        {"weighted": False, "standardization": False},
    ],
)
def test_onnx_matches_native(X: NDArray[np.float32], params: dict[str, Any], offset: float, scaler: str) -> None:
    """The float32 graph keeps parity, also on rows far from the origin (moved first).

    A standard or robust scaling is folded into the graph's constants: no
    scaling node of its own.
    """
    import onnx

    rows = (X + offset * np.arange(1, 7)).astype(np.float32)
    pipe = Pipeline(preprocessor=Preprocessor(scaler=scaler), detector=PCA(**params)).fit(rows[:500])  # type: ignore[arg-type]
    model = pipe.to_onnx([f"f{i}" for i in range(6)])
    nodes = [n.name for n in onnx.load_from_string(model).graph.node]
    assert not any(n.startswith("scaled") for n in nodes), nodes
    score, contrib = onnx_scores(model, rows[500:])
    native = pipe.score_samples(rows[500:])
    np.testing.assert_allclose(score, native, rtol=1e-5)
    np.testing.assert_allclose(contrib, pipe.contributions(rows[500:]), rtol=0, atol=1e-5)
    assert (contrib >= 0).all()
    np.testing.assert_allclose(contrib.sum(axis=1), 1.0, rtol=0, atol=1e-5)
