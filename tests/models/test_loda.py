"""LODA against PyOD with the same seed, its contributions, and its ONNX bins."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray
from pyod.models.loda import LODA as PyodLODA

from models.export import onnx_scores
from models.onnx_graph import GraphBuilder
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


def _graph(det: LODA) -> bytes:
    g = GraphBuilder()
    score, shares = det.onnx_graph(g, "features")
    model = g.build("features", det.n_features_in_, {"score": score, "contributions": shares})
    return bytes(model.SerializeToString())


@pytest.mark.parametrize("discrete", [False, True])
def test_onnx_bins_are_native_and_batch_free(X: NDArray[np.float32], discrete: bool) -> None:
    """Integer data put projections on bin limits (the exact branch); rows alone, in 8 and in 4096 agree."""
    rng = np.random.default_rng(5)
    data = rng.integers(1, 6, size=(700, 9)).astype(np.float32) if discrete else X
    det = LODA(n_bins=25, n_random_cuts=60).fit(data[:500])
    model = _graph(det)
    rows = data[:64]  # the training minima project exactly onto the first limit
    native = det.score_samples(rows)
    big = onnx_scores(model, np.tile(data, (6, 1))[:4096])[0][:64]
    small = np.concatenate([onnx_scores(model, rows[i : i + 8])[0] for i in range(0, 64, 8)])
    alone = np.concatenate([onnx_scores(model, rows[i : i + 1])[0] for i in range(64)])
    np.testing.assert_allclose(big, native, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(small, big)
    np.testing.assert_array_equal(alone, big)


def test_infinite_values_count_as_the_float32_limits(X: NDArray[np.float32]) -> None:
    det = LODA().fit(X[:500])
    big = np.finfo(np.float32).max
    rows = np.repeat(X[500:503], 2, axis=0)
    rows[0, 2], rows[1, 2], rows[2, 0], rows[3, 0] = np.inf, big, -np.inf, -big
    native = det.score_samples(rows)
    assert native[0] == native[1] and native[2] == native[3]
    score, shares = onnx_scores(_graph(det), rows)
    np.testing.assert_allclose(score, native, rtol=1e-6)
    assert np.isfinite(shares).all()
