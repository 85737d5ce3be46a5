"""The shared nearest-row search, and what the distance-based detectors share through it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from numpy.typing import NDArray

from models.detector import Detector
from models.export import check_parity, onnx_scores
from models.pipeline import Pipeline
from models.preprocessing import Preprocessor
from models.zoo import CBLOF, KNN, LOF, OCSVM
from models.zoo.neighbours import ReferenceSet, subsample

DISTANCE_DETECTORS = [KNN, LOF, OCSVM, CBLOF]


@pytest.fixture(scope="module")
def X() -> NDArray[np.float32]:
    rng = np.random.default_rng(8)
    cov = 0.4 * np.ones((6, 6)) + 0.6 * np.eye(6)
    return rng.multivariate_normal(np.zeros(6), cov, size=1500).astype(np.float32)


def test_nearest_equals_brute_force(X: NDArray[np.float32]) -> None:
    ref = ReferenceSet(X[:1000])
    sq_diff, index = ref.nearest(X[1000:], 7)
    full = ((X[1000:, None, :].astype(np.float64) - X[None, :1000]) ** 2).sum(axis=2)
    expected = np.argsort(full, axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(index, expected)
    np.testing.assert_allclose(
        sq_diff.sum(axis=2), np.take_along_axis(full, expected, axis=1), rtol=1e-12
    )


def test_nearest_excludes_self_but_not_duplicates() -> None:
    rows = np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 0.0], [7.0, 0.0]], dtype=np.float32)
    sq_diff, index = ReferenceSet(rows).nearest(rows, 1, exclude_self=True)
    assert index[:, 0].tolist() == [1, 0, 3, 2]
    assert sq_diff.sum(axis=2)[:, 0].tolist() == [0.0, 0.0, 4.0, 4.0]


def test_margin_is_narrow_only_where_the_training_rows_do_not_tie(X: NDArray[np.float32]) -> None:
    rng = np.random.default_rng(3)
    assert ReferenceSet(X[:1000]).settle_margin(20) == 2
    grid = rng.integers(0, 30, size=(1000, 4)).astype(np.float32)  # equal distances abound
    assert ReferenceSet(grid).settle_margin(20) == 8
    copies = np.repeat(X[:100], 3, axis=0)  # each row's nearest others at distance 0
    assert ReferenceSet(copies).settle_margin(1) == 8
    assert ReferenceSet(X[:12]).settle_margin(11) == 8  # every other row a neighbour


def test_sets_pickled_without_a_margin_keep_the_wide_one(X: NDArray[np.float32]) -> None:
    ref = ReferenceSet(X[:1000])
    assert ref.settle_margin(5) == 2
    narrow = ref.nearest(X[1000:], 5)
    del ref.margin
    assert ref._margin() == 8
    wide = ref.nearest(X[1000:], 5)
    np.testing.assert_array_equal(narrow[1], wide[1])
    np.testing.assert_array_equal(narrow[0], wide[0])


def test_subsample_is_seeded_and_capped(X: NDArray[np.float32]) -> None:
    a, b = subsample(X, 300), subsample(X, 300)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (300, 6)
    assert subsample(X, 5000) is X
    with pytest.raises(ValueError, match=r"max_train.*got 1"):
        subsample(X, 1)


@pytest.mark.parametrize("cls", DISTANCE_DETECTORS, ids=lambda c: c.algorithm)
def test_far_feature_ranks_first(cls: type[Detector], X: NDArray[np.float32]) -> None:
    det = cls().fit(X[:1000])
    rows = X[1000:1100].copy()
    far = np.arange(len(rows)) % X.shape[1]
    rows[np.arange(len(rows)), far] += np.where(np.arange(len(rows)) % 2, 12.0, -12.0)
    contrib = det.contributions(rows)
    assert np.mean(contrib.argmax(axis=1) == far) >= 0.9
    assert (det.score_samples(rows) > np.median(det.score_samples(X[1000:1100]))).all()


@pytest.mark.parametrize("cls", DISTANCE_DETECTORS, ids=lambda c: c.algorithm)
def test_graph_is_small_and_loop_free(cls: type[Detector], X: NDArray[np.float32]) -> None:
    """Whole-batch tensor ops only: no per-row control flow, a node count independent of N."""
    pipe = Pipeline(preprocessor=Preprocessor(scaler="standard"), detector=cls()).fit(X[:1000])
    model = pipe.to_onnx([f"f{i}" for i in range(6)])
    ops = {n.op_type for n in onnx.load_from_string(model).graph.node}
    assert not ops & {"Loop", "Scan", "If"}
    assert len(onnx.load_from_string(model).graph.node) < 60
    # A batch of 2,000 rows in one call, parity included.
    rng = np.random.default_rng(1)
    assert check_parity(pipe, model, rng.normal(size=(2000, 6)).astype(np.float32) * 2) >= 0.0


@pytest.mark.parametrize("cls", [KNN, LOF], ids=lambda c: c.algorithm)
@pytest.mark.parametrize("kind", ["gaussian", "integers", "duplicates"])
def test_graph_search_in_groups_matches_native(cls: type[Detector], kind: str) -> None:
    """Enough training rows for the graph's grouped float32 search; ties and duplicates included."""
    rng = np.random.default_rng(4)
    if kind == "gaussian":
        X = rng.normal(size=(3400, 6)).astype(np.float32)
    elif kind == "integers":  # robust scaling keeps them exact: equal distances abound
        X = rng.integers(1, 41, size=(3400, 6)).astype(np.float32)
    else:
        X = np.repeat(rng.normal(size=(170, 6)), 20, axis=0).astype(np.float32)
    scaler = "robust" if kind == "integers" else "standard"
    pipe = Pipeline(preprocessor=Preprocessor(scaler=scaler), detector=cls()).fit(X[:3000])
    if kind != "integers":  # scaled integer rows may or may not tie at the boundary
        # Continuous rows take the narrow candidate margin, copies the wide: both paths run here.
        assert pipe.detector.reference_.margin == (2 if kind == "gaussian" else 8)
    model = pipe.to_onnx([f"f{i}" for i in range(6)])
    rows = np.vstack([X[2900:], rng.normal(size=(100, 6)).astype(np.float32) * 3])
    assert check_parity(pipe, model, rows) >= 0.0
    together = onnx_scores(model, rows)[0]
    alone = np.concatenate([onnx_scores(model, rows[i : i + 1])[0] for i in range(0, len(rows), 7)])
    np.testing.assert_array_equal(alone, together[::7])
