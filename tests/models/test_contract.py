"""The contract every detector of the zoo keeps, run against each entry of ALGORITHMS."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from numpy.typing import NDArray
from sklearn.metrics import roc_auc_score

from models.detector import Detector
from models.errors import FeatureCountError, NotFittedError
from models.export import check_parity, onnx_scores
from models.pipeline import Pipeline
from models.preprocessing import Preprocessor
from models.zoo import ALGORITHMS, make_detector

N_FEATURES = 8
NAMES = [f"f{i}" for i in range(N_FEATURES)]


def correlated_data(
    seed: int, n: int = 2000, outlier_share: float = 0.02
) -> tuple[NDArray[np.float32], NDArray[np.int8]]:
    """8-d Gaussian, pairwise correlation 0.5; a share of rows moved 6 sd per feature."""
    rng = np.random.default_rng(seed)
    cov = 0.5 * np.ones((N_FEATURES, N_FEATURES)) + 0.5 * np.eye(N_FEATURES)
    X = rng.multivariate_normal(np.zeros(N_FEATURES), cov, size=n)
    y = np.zeros(n, dtype=np.int8)
    out = rng.choice(n, size=int(n * outlier_share), replace=False)
    X[out] += 6.0 * rng.choice([-1.0, 1.0], size=(out.size, N_FEATURES))
    y[out] = 1
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def data() -> tuple[NDArray[np.float32], NDArray[np.int8]]:
    return correlated_data(seed=7)


@pytest.fixture(scope="module", params=sorted(ALGORITHMS))
def algorithm(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def fitted(algorithm: str, data: tuple[NDArray[np.float32], NDArray[np.int8]]) -> Detector:
    return make_detector(algorithm).fit(data[0])


def test_fit_returns_self(
    algorithm: str, data: tuple[NDArray[np.float32], NDArray[np.int8]]
) -> None:
    det = make_detector(algorithm)
    assert det.fit(data[0][:200]) is det


def test_scoring_before_fit_raises(algorithm: str) -> None:
    det = make_detector(algorithm)
    X = np.zeros((3, N_FEATURES), dtype=np.float32)
    with pytest.raises(NotFittedError):
        det.score_samples(X)
    with pytest.raises(NotFittedError):
        det.contributions(X)


def test_shapes_and_dtypes(
    fitted: Detector, data: tuple[NDArray[np.float32], NDArray[np.int8]]
) -> None:
    X = data[0][:50]
    scores, contrib = fitted.score_samples(X), fitted.contributions(X)
    assert scores.shape == (50,) and scores.dtype == np.float64
    assert contrib.shape == (50, N_FEATURES) and contrib.dtype == np.float64
    assert np.isfinite(scores).all()


def test_contributions_are_shares(
    fitted: Detector, data: tuple[NDArray[np.float32], NDArray[np.int8]]
) -> None:
    contrib = fitted.contributions(data[0])
    assert (contrib >= 0).all()
    np.testing.assert_allclose(contrib.sum(axis=1), 1.0, rtol=0, atol=1e-9)


def test_wrong_feature_count_names_both(fitted: Detector) -> None:
    with pytest.raises(FeatureCountError, match=r"expects 8 features, got 7"):
        fitted.score_samples(np.zeros((2, 7), dtype=np.float32))
    with pytest.raises(FeatureCountError, match=r"8.*9"):
        fitted.contributions(np.zeros((2, 9), dtype=np.float32))


def test_same_seed_same_scores(
    algorithm: str, fitted: Detector, data: tuple[NDArray[np.float32], NDArray[np.int8]]
) -> None:
    again = make_detector(algorithm).fit(data[0])
    np.testing.assert_array_equal(again.score_samples(data[0]), fitted.score_samples(data[0]))


def test_pickle_round_trip(
    fitted: Detector, data: tuple[NDArray[np.float32], NDArray[np.int8]]
) -> None:
    clone = pickle.loads(pickle.dumps(fitted))
    X = data[0][:300]
    np.testing.assert_array_equal(clone.score_samples(X), fitted.score_samples(X))
    np.testing.assert_array_equal(clone.contributions(X), fitted.contributions(X))


def test_roc_auc_floor(
    fitted: Detector, data: tuple[NDArray[np.float32], NDArray[np.int8]]
) -> None:
    X, y = data
    assert roc_auc_score(y, fitted.score_samples(X)) >= 0.9


@pytest.mark.parametrize("scaler", ["none", "robust"])
def test_onnx_parity_with_missing_values(algorithm: str, scaler: str) -> None:
    X, _ = correlated_data(seed=11, n=1200)
    rng = np.random.default_rng(3)
    X_train, X_hold = X[:900].copy(), X[900:].copy()
    X_train[rng.random(X_train.shape) < 0.05] = np.nan
    X_hold[rng.random(X_hold.shape) < 0.1] = np.nan
    pipe = Pipeline(
        preprocessor=Preprocessor(scaler=scaler),  # type: ignore[arg-type]
        detector=make_detector(algorithm),
    ).fit(X_train)
    model = pipe.to_onnx(NAMES)

    diff = check_parity(pipe, model, X_hold)
    assert diff <= ALGORITHMS[algorithm].parity_tolerance  # type: ignore[attr-defined]

    # NaN is scored as the training median of its column, natively and in ONNX.
    imputed = np.where(np.isnan(X_hold), pipe.preprocessor.medians_, X_hold)
    np.testing.assert_array_equal(pipe.score_samples(X_hold), pipe.score_samples(imputed))
    np.testing.assert_array_equal(onnx_scores(model, X_hold)[0], onnx_scores(model, imputed)[0])


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_onnx_parity_on_discrete_data(algorithm: str) -> None:
    """Integer-valued columns put many values on histogram and split edges (ADBench's WBC looks so)."""
    rng = np.random.default_rng(7)
    X = rng.integers(1, 11, size=(700, N_FEATURES)).astype(np.float32)
    pipe = Pipeline(preprocessor=Preprocessor(scaler="standard"), detector=make_detector(algorithm)).fit(X[:500])
    assert check_parity(pipe, pipe.to_onnx(NAMES), X) >= 0.0


def test_batch_independence(
    algorithm: str, data: tuple[NDArray[np.float32], NDArray[np.int8]]
) -> None:
    X = data[0]
    pipe = Pipeline(preprocessor=Preprocessor(), detector=make_detector(algorithm)).fit(X[:1500])
    rows = X[1500:1540]
    model = pipe.to_onnx(NAMES)

    together = pipe.score_samples(rows)
    alone = np.concatenate([pipe.score_samples(rows[i : i + 1]) for i in range(len(rows))])
    np.testing.assert_array_equal(alone, together)

    onnx_together = onnx_scores(model, rows)[0]
    onnx_alone = np.concatenate([onnx_scores(model, rows[i : i + 1])[0] for i in range(len(rows))])
    np.testing.assert_allclose(onnx_alone, onnx_together, rtol=1e-6, atol=0)


def test_make_detector_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match=r"'nope'.*known: "):
        make_detector("nope")
    with pytest.raises(TypeError, match=r"'n_trees'"):
        make_detector("iforest", n_trees=10)
    with pytest.raises(TypeError, match=r"'window'"):
        make_detector("ecod", window=3)
