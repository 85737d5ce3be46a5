"""HBOS against PyOD, its contributions, and its ONNX bin lookup on the edges."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from numpy.typing import NDArray
from pyod.models.hbos import HBOS as PyodHBOS

from models.export import check_parity, onnx_scores
from models.onnx_graph import GraphBuilder
from models.pipeline import Pipeline
from models.preprocessing import Preprocessor
from models.step_grid import StepGrid, value_by_count
from models.zoo.hbos import HBOS


@pytest.fixture(scope="module")
def X() -> NDArray[np.float32]:
    rng = np.random.default_rng(6)
    X = np.column_stack([rng.gamma(2.0, size=800), rng.normal(size=(800, 3)) * [1.0, 50.0, 1e-3]])
    return X.astype(np.float32)


@pytest.mark.parametrize(("n_bins", "alpha", "tol"), [(10, 0.1, 0.5), (23, 0.02, 0.9)])
def test_equals_pyod(X: NDArray[np.float32], n_bins: int, alpha: float, tol: float) -> None:
    train, rows = X[:600], X[600:]
    rows = np.vstack([rows, rows * 1.5, rows - 0.3]).astype(np.float32)  # in, near and far outside
    ours = HBOS(n_bins=n_bins, alpha=alpha, tol=tol).fit(train).score_samples(rows)
    theirs = PyodHBOS(n_bins=n_bins, alpha=alpha, tol=tol).fit(train).decision_function(rows)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)


def test_far_feature_ranks_first() -> None:
    # Comparable scales, as after a scaler: HBOS's alpha makes raw densities of
    # very different scales incomparable, in the score and so in its shares.
    X = np.random.default_rng(8).normal(size=(800, 5)).astype(np.float32)
    det = HBOS().fit(X[:600])
    rows = X[600:].copy()
    cols = np.arange(len(rows)) % X.shape[1]
    far = X.max(axis=0) + 10.0 * X.std(axis=0)
    rows[np.arange(len(rows)), cols] = far[cols]
    assert np.mean(det.contributions(rows).argmax(axis=1) == cols) >= 0.9


def test_row_in_every_densest_bin_gets_equal_shares(X: NDArray[np.float32]) -> None:
    det = HBOS().fit(X)
    densest = det.bin_scores_.argmin(axis=0)
    d = X.shape[1]
    row = ((det.edges_[densest, range(d)] + det.edges_[densest + 1, range(d)]) / 2)[None]
    np.testing.assert_array_equal(det.contributions(row.astype(np.float32)), np.full((1, d), 1 / d))


def test_parity_on_edges_and_limits(X: NDArray[np.float32]) -> None:
    """Values exactly on the bin edges, one ulp either side, on the tol limits and infinite."""
    det = HBOS().fit(X)
    edges = det.edges_.astype(np.float32)
    rows = np.vstack(
        [
            edges,
            np.nextafter(edges, np.float32(np.inf)),
            np.nextafter(edges, np.float32(-np.inf)),
            det.low_limit_.astype(np.float32),
            det.high_limit_.astype(np.float32),
            np.full(X.shape[1], np.inf, dtype=np.float32),
            np.full(X.shape[1], -np.inf, dtype=np.float32),
        ]
    )
    finite = np.isfinite(rows).all(axis=1)
    pyod = PyodHBOS().fit(X).decision_function(rows[finite])
    np.testing.assert_allclose(det.score_samples(rows[finite]), pyod, rtol=1e-12)
    pipe = Pipeline(preprocessor=Preprocessor(), detector=HBOS()).fit(X)
    assert check_parity(pipe, pipe.to_onnx(["a", "b", "c", "d"]), rows) <= 1e-4


@pytest.mark.parametrize(("n_bins", "tol"), [(10, 0.5), (50, 0.01), (10, 1e-6)])
def test_onnx_counts_limits_exactly(X: NDArray[np.float32], n_bins: int, tol: float) -> None:
    """Every limit, one ulp either side and +-inf, on the grid path and (tiny tol) the one-by-one path."""
    det = HBOS(n_bins=n_bins, tol=tol).fit(X)
    limits = np.vstack(
        [det.edges_.astype(np.float32), det.low_limit_.astype(np.float32), det.high_limit_.astype(np.float32)]
    )
    rows = np.vstack(
        [
            limits,
            np.nextafter(limits, np.float32(np.inf)),
            np.nextafter(limits, np.float32(-np.inf)),
            np.full((1, X.shape[1]), np.inf, dtype=np.float32),
            np.full((1, X.shape[1]), -np.inf, dtype=np.float32),
            X[:50],
        ]
    )
    g = GraphBuilder()
    score, shares = det.onnx_graph(g, "features")
    model = g.build("features", X.shape[1], {"score": score, "contributions": shares}).SerializeToString()
    onnx_score, onnx_shares = onnx_scores(model, rows)
    np.testing.assert_allclose(onnx_score, det.score_samples(rows), rtol=1e-6, atol=1e-5)
    finite = np.isfinite(rows).all(axis=1)
    np.testing.assert_allclose(onnx_shares[finite], det.contributions(rows[finite]), atol=1e-6)


@pytest.mark.parametrize("flat", [True, False])
def test_step_grid_matches_counting(flat: bool) -> None:
    rng = np.random.default_rng(2)
    thresholds = (np.cumsum(rng.uniform(0.1, 1.0, size=(12, 5)), axis=0) - 3.0).astype(np.float32)
    thresholds[3:6, 1] = thresholds[3, 1]  # repeated limits count together
    thresholds[:, 2] = np.float32(1000.0) + np.arange(12, dtype=np.float32) * np.float32(2**-14)  # a few ulps apart
    grid = StepGrid.fit(thresholds, flat=flat)
    assert grid is not None and bool(grid.stride) == flat
    _assert_counts(grid, thresholds, rng)


def test_step_grid_flat_layout_keeps_counts_exact_where_the_offset_rounds() -> None:
    # Many columns (large offsets, so the offset addition rounds at ~1e-4 of a cell) whose limits
    # sit just below, on and just above cell boundaries of a grid of step 1: the plan must refine or
    # place them so that every value still counts exactly.
    rng = np.random.default_rng(5)
    base = np.arange(40, dtype=np.float32)
    columns = []
    for j in range(300):
        eps = np.float32(j % 7 - 3) * np.float32(2**-20)
        col = np.sort(base + eps + np.where(rng.random(40) < 0.5, np.float32(0.5), np.float32(0)))
        columns.append(col)
    thresholds = np.stack(columns, axis=1).astype(np.float32)
    grid, plain = StepGrid.fit(thresholds), StepGrid.fit(thresholds, flat=False)
    assert grid is not None and grid.stride > 0 and plain is not None
    assert (grid.cells != plain.cells).any()  # the offset's rounding moved some limits' cells
    _assert_counts(grid, thresholds, rng)


def _assert_counts(grid: StepGrid, thresholds: np.ndarray, rng: np.random.Generator) -> None:
    m = thresholds.shape[1]
    z = np.vstack(
        [
            thresholds,
            np.nextafter(thresholds, np.float32(np.inf)),
            np.nextafter(thresholds, np.float32(-np.inf)),
            rng.permuted(thresholds, axis=0),
            (thresholds.min() - 1 + rng.random((200, m)) * (thresholds.max() - thresholds.min() + 2)).astype(np.float32),
            np.full((1, m), np.inf, dtype=np.float32),
            np.full((1, m), -np.inf, dtype=np.float32),
            np.full((1, m), 3e38, dtype=np.float32),
            np.full((1, m), -3e38, dtype=np.float32),
        ]
    )
    g = GraphBuilder()
    counts = grid.lookup(g.node, g.initializer, "features", grid.count_table().astype(np.float32), "counts")
    model = g.build("features", m, {"contributions": counts}).SerializeToString()
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    (got,) = sess.run(["contributions"], {"features": z})
    np.testing.assert_array_equal(got, (thresholds[None] < z[:, None]).sum(axis=1))


def test_step_grid_declines_crowded_limits() -> None:
    thresholds = np.array([[0.0], [1e-6], [1.0]], dtype=np.float32)
    assert StepGrid.fit(thresholds) is None


@pytest.mark.parametrize("crowded", [False, True])
def test_value_by_count_reads_the_value_of_each_cells_count_with_or_without_a_grid(crowded: bool) -> None:
    thresholds = np.array([[0.0, -2.0], [0.5, 0.0], [1.0, 3.0]], dtype=np.float32)
    if crowded:  # no grid of bounded size: one comparison per threshold
        thresholds[1, 0] = np.float32(1e-6)
    assert (StepGrid.fit(thresholds) is None) == crowded
    values = np.arange(8, dtype=np.float32).reshape(4, 2) * np.float32(10.0) + np.array([0, 1], dtype=np.float32)
    z = np.concatenate([thresholds, np.nextafter(thresholds, np.float32(np.inf)),
                        np.array([[-np.inf, np.inf], [np.inf, -np.inf], [0.25, 1.5]], dtype=np.float32)])
    g = GraphBuilder()
    got_name = value_by_count(g.node, g.initializer, "features", thresholds, values, "values")
    model = g.build("features", 2, {"contributions": got_name}).SerializeToString()
    (got,) = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(["contributions"], {"features": z})
    counts = (thresholds[None] < z[:, None]).sum(axis=1)
    np.testing.assert_array_equal(got, np.take_along_axis(values, counts, axis=0))


@pytest.mark.parametrize("scaler", ["standard", "robust"])
def test_scaling_folded_into_the_limits_scores_bit_for_bit_as_the_scaled_graph(
    X: NDArray[np.float32], scaler: str
) -> None:
    from models.zoo.hbos import _unscaled_limits

    rows = (X * np.float32(37.0) + np.float32(1e4)).astype(np.float32)  # far from 0: scaling rounds
    pipe = Pipeline(preprocessor=Preprocessor(scaler=scaler), detector=HBOS(n_bins=12)).fit(rows[:300])  # type: ignore[arg-type]
    folded = pipe.to_onnx([f"f{i}" for i in range(X.shape[1])])
    g = GraphBuilder()
    z = pipe.preprocessor.onnx_graph(g, "features", exact=True)
    score, contrib = pipe.detector.onnx_graph(g, z)
    scaled = g.build("features", X.shape[1], {"score": score, "contributions": contrib}).SerializeToString()
    assert len(onnx_model_nodes(folded)) < len(onnx_model_nodes(scaled))
    # every raw limit, its float32 neighbours, and the infinities
    center, scale = pipe.preprocessor.affine()  # type: ignore[misc]
    limits = _unscaled_limits(pipe.detector._thresholds(), center, scale)
    probes = np.concatenate([limits, np.nextafter(limits, np.float32(-np.inf)), np.nextafter(limits, np.float32(np.inf))])
    edge_rows = np.concatenate([probes, np.full((2, X.shape[1]), np.inf, np.float32) * np.array([[1], [-1]], np.float32)])
    data = np.concatenate([rows, edge_rows.astype(np.float32)])
    for a, b in zip(onnx_scores(folded, data), onnx_scores(scaled, data)):
        np.testing.assert_array_equal(a, b)
    # the moved limits are exact: z(r) <= t < z(nextafter(r))
    zs = lambda v: (v - center.astype(np.float32)) / scale.astype(np.float32)
    t = pipe.detector._thresholds()
    finite = np.isfinite(limits)
    assert np.all(zs(limits)[finite] <= t[finite])
    assert np.all(zs(np.nextafter(limits, np.float32(np.inf)))[finite] > t[finite])


def onnx_model_nodes(model: bytes) -> list[str]:
    import onnx

    return [n.op_type for n in onnx.load_from_string(model).graph.node]
