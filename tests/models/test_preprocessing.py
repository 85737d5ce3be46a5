"""Preprocessing inside the graph: quantile map and one-hot encoding match ONNX, contract kept."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from models.pipeline import Pipeline
from models.preprocessing import SCALERS, Preprocessor, onehot_candidates
from models.zoo import make_detector


def _data(n: int = 600, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = np.column_stack(
        [
            rng.lognormal(size=n),  # skewed float
            rng.integers(0, 5, size=n),  # 5 integer levels: one-hot candidate
            rng.normal(size=n) * 100,
            rng.integers(0, 2, size=n),  # binary: never encoded
            np.full(n, 3.0),  # constant
        ]
    ).astype(np.float32)
    X[rng.random(X.shape) < 0.02] = np.nan
    return X


def _onnx(pipe: Pipeline, X: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    sess = ort.InferenceSession(
        pipe.to_onnx([f"f{j}" for j in range(d)]), providers=["CPUExecutionProvider"]
    )
    score, contrib = sess.run(["score", "contributions"], {"features": X})
    return score, contrib


def test_quantile_map_is_monotone_and_bounded() -> None:
    X = _data()
    out = Preprocessor(scaler="quantile").fit(X).transform(X)
    assert out.min() >= 0.0 and out.max() <= 1.0
    order = np.argsort(np.nan_to_num(X[:, 2], nan=np.nanmedian(X[:, 2])))
    assert np.all(np.diff(out[order, 2]) >= 0)
    assert np.all(out[:, 4] == 0.5)  # a constant column maps to the middle


def test_onehot_candidates_are_low_cardinality_integers() -> None:
    levels = onehot_candidates(_data())
    assert list(levels) == [1] and levels[1] == [0.0, 1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize("scaler", SCALERS)
@pytest.mark.parametrize("onehot", [False, True])
def test_onnx_matches_native_and_keeps_the_contract(scaler: str, onehot: bool) -> None:
    X = _data()
    test = _data(seed=1)
    test[:3] = [[1e9, 7, -1e9, 1, 3], [-np.inf, -1, np.inf, 0, 4], [np.nan] * 5]
    pipe = Pipeline(
        preprocessor=Preprocessor(scaler=scaler, onehot=onehot),  # type: ignore[arg-type]
        detector=make_detector("ecod"),
    ).fit(X)
    pre = pipe.preprocessor
    assert pre.n_features_out_ == (5 + 4 if onehot else 5)
    score, contrib = _onnx(pipe, test, 5)
    assert contrib.shape == (test.shape[0], 5)  # folded back onto the raw features
    np.testing.assert_allclose(score, pipe.score_samples(test), atol=1e-4)
    np.testing.assert_allclose(contrib, pipe.contributions(test), atol=1e-5)
    np.testing.assert_allclose(contrib.sum(axis=1), 1.0, atol=1e-5)
    assert pipe.describe()["preprocessing"]["scaler"] == scaler
    assert ("onehot_columns" in pipe.describe()["preprocessing"]) is onehot


def test_quantile_transform_matches_onnx_exactly_enough() -> None:
    X = _data(n=3000)
    pre = Preprocessor(scaler="quantile").fit(X)
    from models.onnx_graph import GraphBuilder

    g = GraphBuilder()
    out = pre.onnx_graph(g, "features")
    model = g.build(
        "features",
        5,
        {
            "score": g.node("ReduceSum", [out, g.initializer("ax", np.array([1]))], keepdims=0),
            "contributions": out,
        },
    )
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    test = _data(n=500, seed=2)
    (got,) = sess.run(["contributions"], {"features": test})
    np.testing.assert_allclose(got, pre.transform(test), atol=1e-6)
