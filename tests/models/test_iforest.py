"""IForest against scikit-learn and PyOD, and the shape of its ONNX graph."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from numpy.typing import NDArray
from pyod.models.iforest import IForest as PyodIForest
from sklearn.ensemble import IsolationForest

from models.export import check_parity
from models.pipeline import Pipeline
from models.preprocessing import Preprocessor
from models.zoo import IForest


@pytest.fixture(scope="module")
def X() -> NDArray[np.float32]:
    rng = np.random.default_rng(5)
    X = rng.normal(size=(1000, 6)) * np.array([1.0, 10.0, 0.1, 1e3, 1.0, 1e-3])
    X[:20] += 8.0 * X.std(axis=0)
    return np.asarray(X, dtype=np.float32)


def test_scores_equal_sklearn(X: NDArray[np.float32]) -> None:
    ours = IForest(n_estimators=50, random_state=3).fit(X).score_samples(X)
    ref = IsolationForest(n_estimators=50, random_state=3, n_jobs=1).fit(X).score_samples(X)
    np.testing.assert_array_equal(ours, -ref)
    assert ((ours > 0) & (ours <= 1)).all()


def test_ranks_match_pyod(X: NDArray[np.float32]) -> None:
    ours = IForest(random_state=0).fit(X).score_samples(X)
    pyod = PyodIForest(random_state=0).fit(X)
    theirs = pyod.decision_function(X)
    np.testing.assert_array_equal(
        np.argsort(ours, kind="stable"), np.argsort(theirs, kind="stable")
    )
    # PyOD only shifts by the contamination offset.
    np.testing.assert_allclose(ours - theirs, -pyod.detector_.offset_, rtol=0, atol=1e-12)


def test_graph_is_a_score_forest_and_a_credit_forest(X: NDArray[np.float32]) -> None:
    import onnxruntime as ort

    pipe = Pipeline(preprocessor=Preprocessor(), detector=IForest(n_estimators=30)).fit(X)
    blob = pipe.to_onnx([f"f{i}" for i in range(X.shape[1])])
    model = onnx.load_from_string(blob)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("TreeEnsembleRegressor") == 2
    assert len(ops) < 20
    targets = sorted(a.i for n in model.graph.node if n.op_type == "TreeEnsembleRegressor"
                     for a in n.attribute if a.name == "n_targets")
    assert targets == [1, X.shape[1]]
    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    alone = sess.run(["score"], {"features": X[:50]})[0]
    both = sess.run(["score", "contributions"], {"features": X[:50]})[0]
    np.testing.assert_array_equal(alone, both)


def test_parity_with_feature_subsampling(X: NDArray[np.float32]) -> None:
    det = IForest(n_estimators=40, max_features=0.5, max_samples=300)
    pipe = Pipeline(preprocessor=Preprocessor(scaler="standard"), detector=det).fit(X[:800])
    assert check_parity(pipe, pipe.to_onnx([f"f{i}" for i in range(6)]), X[800:]) <= 1e-6


def test_parity_at_split_thresholds(X: NDArray[np.float32]) -> None:
    """Rows sitting on the float32 neighbours of every split threshold decide like sklearn."""
    det = IForest(n_estimators=20).fit(X)
    pipe = Pipeline(preprocessor=Preprocessor(), detector=det).fit(X)
    rows = []
    for est in det.forest_.estimators_[:5]:
        t = est.tree_
        for feature, threshold in zip(t.feature, t.threshold, strict=True):
            if feature < 0:
                continue
            f32 = np.float32(threshold)
            for value in (
                np.nextafter(f32, np.float32(-np.inf)),
                f32,
                np.nextafter(f32, np.float32(np.inf)),
            ):
                row = X[0].copy()
                row[feature] = value
                rows.append(row)
    assert check_parity(pipe, pipe.to_onnx([f"f{i}" for i in range(6)]), np.array(rows)) <= 1e-6
