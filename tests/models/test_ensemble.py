from __future__ import annotations

import pickle

import numpy as np
import pytest

from models.ensemble import Ensemble
from models.errors import NotFittedError
from models.export import check_parity, onnx_scores
from models.pipeline import Pipeline
from models.preprocessing import Preprocessor
from models.zoo import make_detector


def _members() -> list[Pipeline]:
    return [Pipeline(preprocessor=Preprocessor(scaler="robust"), detector=make_detector(a))
            for a in ("iforest", "ecod")]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1500, 5)).astype(np.float32)
    X[rng.random(X.shape) < 0.02] = np.nan
    test = rng.normal(size=(300, 5)).astype(np.float32)
    test[:10, 2] = 9.0
    return X, test


def test_ensemble_is_one_graph_with_parity(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, test = data
    ens = Ensemble(_members()).fit(X)
    blob = ens.to_onnx([f"f{i}" for i in range(5)])
    diff = check_parity(ens, blob, test)
    assert diff <= ens.parity_tolerance
    score, contrib = onnx_scores(blob, test)
    assert score.shape == (300,) and contrib.shape == (300, 5)
    assert np.allclose(contrib.sum(axis=1), 1.0, atol=1e-5)
    assert np.mean(score[:10] > np.percentile(score[10:], 95)) >= 0.8  # the pushed rows stand out
    assert (contrib[:10].argmax(axis=1) == 2).mean() >= 0.9


def test_scores_are_mean_member_zscores(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, test = data
    ens = Ensemble(_members()).fit(X)
    z = ens.member_zscores(X)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(z.std(axis=0), 1.0, atol=1e-9)
    np.testing.assert_allclose(ens.score_samples(test), ens.member_zscores(test).mean(axis=1))
    card = ens.describe()
    assert [m["algorithm"] for m in card["members"]] == ["iforest", "ecod"]
    assert all("score_mean" in m and "score_sd" in m for m in card["members"])


def test_unfitted_and_pickle(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, test = data
    with pytest.raises(NotFittedError):
        Ensemble(_members()).score_samples(test)
    with pytest.raises(ValueError, match="at least 2"):
        Ensemble(_members()[:1])
    ens = Ensemble(_members()).fit(X)
    again = pickle.loads(pickle.dumps(ens))
    np.testing.assert_array_equal(again.score_samples(test), ens.score_samples(test))
