"""Graphs computed compiled against onnxruntime's: PCA's and IForest's scores (native.PcaSplit, ForestSplit) and HBOS's tail."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest

from models.artifact import Artifact, Card
from models.calibration import Calibration, SeverityScale
from models.pipeline import Pipeline
from models.preprocessing import Preprocessor
from models.zoo import make_detector
from stream import native, serving_graph
from stream.core import Scorer
from stream.synthetic import SyntheticStream

pytestmark = pytest.mark.skipif(not native.forest_available(), reason="the grading extension is not built")

_FIELDS = ("raw", "score", "anomaly", "severity", "anomalous_rows", "top_features", "top_shares")


def _artifact(root: Path, model: Pipeline, X: np.ndarray, name: str = "pca") -> Artifact:
    features = tuple(f"f{i}" for i in range(X.shape[1]))
    med = np.median(X, axis=0)
    card = Card(
        name=name, version=1, features=features, calibration=Calibration.fit(model.score_samples(X)),
        threshold=0.99, severity=SeverityScale.from_threshold(0.99),
        medians={f: float(m) for f, m in zip(features, med)}, detector=model.describe(), training={}, metrics={},
        parity=0.0,
    )
    return Artifact.write(root, model.to_onnx(list(features)), card)


def _same_as_the_graphs(art: Artifact, batches: tuple[np.ndarray, ...],
                        caplog: pytest.LogCaptureFixture | None = None) -> None:
    """Every field of ``Scorer.score`` equal between the compiled paths and ``native: never``, at several sizes.

    Both contributions ways are pinned (``all``, ``alerting``): under ``auto`` each scorer times them at load,
    and a row's shares summed at another place in a batch can differ in the last place (README, "Detectors").
    With ``caplog``, the compiled scorer must say that its score-only graph runs compiled.
    """
    for contributions in ("all", "alerting"):
        if caplog is not None:
            caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="stream.core") if caplog is not None else nullcontext():
            compiled = Scorer(art, providers="cpu", contributions=contributions)  # type: ignore[arg-type]
        if caplog is not None and contributions == "alerting":
            assert any("score-only graph runs compiled" in r.getMessage() for r in caplog.records)
        graph_only = Scorer(art, providers="cpu", native="never", contributions=contributions)  # type: ignore[arg-type]
        for batch in batches:
            for n in (1, 16, 255, 256, 1001):
                a, b = compiled.score(batch[:n]), graph_only.score(batch[:n])
                for field in _FIELDS:
                    np.testing.assert_array_equal(getattr(a, field), getattr(b, field),
                                                  err_msg=f"{field}, {n} rows, contributions {contributions}")


def _held_out(gen: SyntheticStream, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` fresh rows; the same with NaN cells; the same with infinities, a huge value and -0.0."""
    rows, _ = gen.sample(n, anomaly_rate=0.05)
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    gaps = rows.copy()
    gaps[::4, ::3] = np.nan
    extreme = rows.copy()  # infinities and huge values: NaN and infinite scores, as the graph gives them
    last = rows.shape[1] - 1
    extreme[::5, 0], extreme[1::7, last], extreme[2::11, min(1, last)], extreme[3::13, min(2, last)] = \
        np.inf, -np.inf, 3e38, -0.0
    return rows, gaps, extreme


def _session(m: object) -> object:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]


@pytest.mark.parametrize(("d", "scaler", "params"), [
    (32, "standard", {}),
    (7, "none", {"weighted": False}),
    (5, "robust", {"standardization": False}),
    (33, "standard", {"n_components": 0.9}),
    (17, "none", {"n_components": 0.8, "standardization": True}),
])
def test_compiled_pca_scores_are_the_graphs_bits(d: int, scaler: str, params: dict[str, object], tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Both score graphs (with and without imputation), rows at three scales, NaN, a batch not of eight rows."""
    import onnx

    gen = SyntheticStream(n_features=d, seed=d)
    X, _ = gen.sample(3000, anomaly_rate=0.01)
    X = np.ascontiguousarray(X, dtype=np.float32)
    art = _artifact(tmp_path, Pipeline(preprocessor=Preprocessor(scaler=scaler), detector=make_detector("pca", **params)).fit(X), X)
    model = onnx.load(str(art.model_path))
    model = serving_graph.fused_affine(model) or model
    score = serving_graph.pruned(model, ["score"])[0]
    complete = serving_graph.without_imputation(score)
    rows, gaps, extreme = _held_out(gen, 1001)
    for graph, batches in ((score, (rows, gaps, extreme)), (complete, (rows, extreme))):
        cut = serving_graph.pca_cut(graph)
        assert cut is not None and (cut.medians is not None) == (graph is score)
        split = native.PcaSplit(cut, _session(graph))
        for batch in batches:
            for scale in (1.0, 1e-3, 1e3):
                with np.errstate(over="ignore"):
                    assert split.agrees(batch * np.float32(scale))
            for n in (1, 7, 8, 9, 256, 1001):
                got = split.run(["score"], {"features": batch[:n]})[0]
                want = _session(graph).run(["score"], {"features": batch[:n]})[0]  # type: ignore[attr-defined]
                np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    # the core: compiled against the graph, every field of every batch
    _same_as_the_graphs(art, (rows, gaps, extreme, rows * np.float32(50)), caplog)


def test_pca_cut_matches_pca_score_graphs_only(tmp_path: Path) -> None:
    import onnx
    from onnx import helper

    gen = SyntheticStream(n_features=6, seed=2)
    X, _ = gen.sample(2000, anomaly_rate=0.01)
    X = np.ascontiguousarray(X, dtype=np.float32)
    for algorithm in ("hbos", "mcd", "iforest"):
        art = _artifact(tmp_path / algorithm, Pipeline(preprocessor=Preprocessor(scaler="standard"),
                                                      detector=make_detector(algorithm)).fit(X), X)
        graph = serving_graph.pruned(onnx.load(str(art.model_path)), ["score"])[0]
        assert serving_graph.pca_cut(graph) is None, algorithm
    art = _artifact(tmp_path / "pca", Pipeline(preprocessor=Preprocessor(scaler="standard"),
                                               detector=make_detector("pca")).fit(X), X)
    graph = serving_graph.pruned(onnx.load(str(art.model_path)), ["score"])[0]
    graph = serving_graph.fused_affine(graph) or graph
    assert serving_graph.pca_cut(graph) is not None
    assert serving_graph.pca_cut(onnx.load(str(art.model_path))) is None  # contributions too: not the score graph
    gemm = next(n for n in graph.graph.node if n.op_type == "Gemm")
    gemm.attribute.append(helper.make_attribute("alpha", 2.0))
    assert serving_graph.pca_cut(graph) is None


@pytest.mark.parametrize(("d", "scaler"), [(32, "standard"), (7, "none"), (5, "robust"), (13, "standard")])
def test_compiled_hbos_tail_gives_the_graphs_bits(d: int, scaler: str, tmp_path: Path) -> None:
    """Row sums in onnxruntime's order at every row alignment, the p=1 shares, rows at three scales and infinities."""
    import onnx

    gen = SyntheticStream(n_features=d, seed=d + 1)
    X, _ = gen.sample(3000, anomaly_rate=0.01)
    X = np.ascontiguousarray(X, dtype=np.float32)
    art = _artifact(tmp_path, Pipeline(preprocessor=Preprocessor(scaler=scaler), detector=make_detector("hbos")).fit(X),
                    X, "hbos")
    model = onnx.load(str(art.model_path))
    model = serving_graph.fused_affine(model) or model
    rows, _ = gen.sample(1001, anomaly_rate=0.05)
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    rows[::5, 0], rows[1::7, -1], rows[2::11, 1] = np.inf, -np.inf, 3e38
    for graph in (serving_graph.without_imputation(model), serving_graph.without_imputation(
            serving_graph.pruned(model, ["score"])[0])):
        cut = serving_graph.grid_cut(graph)
        assert cut is not None
        total = serving_graph.grid_tail_total(cut)
        assert total is not None
        split = native.GridSplit(cut, _session)
        for scale in (1.0, 1e-3, 1e3):
            with np.errstate(over="ignore"):
                assert split.tail_agrees(rows * np.float32(scale), total)
        split.total = total
        names = [o.name for o in graph.graph.output]
        whole = _session(graph)
        for n in (1, 3, 4, 5, 256, 1001):
            got = split.run(names, {"features": rows[:n]})
            want = whole.run(names, {"features": rows[:n]})  # type: ignore[attr-defined]
            for a, b in zip(got, want, strict=True):
                np.testing.assert_array_equal(np.asarray(a).view(np.uint32), np.asarray(b).view(np.uint32))
    _same_as_the_graphs(art, (rows, rows * np.float32(0.01)))


def test_grid_tail_is_matched_only_as_hbos_builds_it(tmp_path: Path) -> None:
    import onnx
    from onnx import helper

    gen = SyntheticStream(n_features=6, seed=3)
    X, _ = gen.sample(2000, anomaly_rate=0.01)
    X = np.ascontiguousarray(X, dtype=np.float32)
    art = _artifact(tmp_path, Pipeline(preprocessor=Preprocessor(scaler="standard"), detector=make_detector("hbos")).fit(X),
                    X, "hbos")
    loaded = onnx.load(str(art.model_path))
    model = serving_graph.without_imputation(serving_graph.fused_affine(loaded) or loaded)
    assert model is not None
    cut = serving_graph.grid_cut(model)
    assert cut is not None and serving_graph.grid_tail_total(cut) is not None
    lp = next(n for n in cut.tail.graph.node if n.op_type == "LpNormalization")
    del lp.attribute[:]
    lp.attribute.extend([helper.make_attribute("axis", 1), helper.make_attribute("p", 2)])
    assert serving_graph.grid_tail_total(cut) is None


@pytest.mark.parametrize(("d", "params"), [
    (32, {}),
    (7, {"n_estimators": 13, "max_samples": 64}),
    (5, {"n_estimators": 3, "max_samples": 2000}),
    (12, {"n_estimators": 30, "max_samples": 0.5, "max_features": 0.5}),
    (2, {"n_estimators": 7, "max_samples": 8}),
])
def test_compiled_forest_scores_are_the_graphs_bits(d: int, params: dict[str, object], tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Both score graphs, 16-row blocks and the rows left over, the plain C walk, NaN, infinities, three scales."""
    import onnx

    gen = SyntheticStream(n_features=d, seed=d + 7)
    X, _ = gen.sample(3000, anomaly_rate=0.01)
    X = np.ascontiguousarray(X, dtype=np.float32)
    art = _artifact(tmp_path, Pipeline(preprocessor=Preprocessor(scaler="none"),
                                       detector=make_detector("iforest", **params)).fit(X), X, "iforest")
    model = onnx.load(str(art.model_path))
    score = serving_graph.pruned(model, ["score"])[0]
    complete = serving_graph.without_imputation(score)
    rows, gaps, extreme = _held_out(gen, 1001)
    gaps[1::9] = np.nan  # whole rows missing
    ties = rows.copy()  # values on the splits' thresholds: x <= threshold goes to the first child
    cut = serving_graph.forest_cut(score)
    assert cut is not None
    rng = np.random.default_rng(d)
    for j in range(d):
        on_j = cut.thr[cut.feat == j]
        ties[:, j] = rng.choice(on_j, size=len(ties)) if on_j.size else ties[:, j]
    for graph, batches in ((score, (rows, gaps, extreme, ties)), (complete, (rows, gaps, extreme, ties))):
        # the graph without imputation sends NaN down the false branch, and so must the compiled walk
        cut = serving_graph.forest_cut(graph)
        assert cut is not None and (cut.medians is not None) == (graph is score)
        whole = _session(graph)
        splits = [native.ForestSplit(cut, whole), native.ForestSplit(cut, whole, portable=True)]
        for batch in batches:
            for scale in (1.0, 1e-3, 1e3):
                with np.errstate(over="ignore"):
                    scaled = batch * np.float32(scale)
                assert all(split.agrees(scaled) for split in splits)
            for n in (1, 2, 8, 9, 15, 16, 17, 24, 25, 256, 1001):
                want = whole.run(["score"], {"features": batch[:n]})[0]  # type: ignore[attr-defined]
                for split in splits:
                    got = split.run(["score"], {"features": batch[:n]})[0]
                    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32), err_msg=f"{n} rows")
    _same_as_the_graphs(art, (rows, gaps, extreme, rows * np.float32(50)), caplog)


def test_forest_cut_matches_iforest_score_graphs_only(tmp_path: Path) -> None:
    import onnx
    from onnx import helper

    gen = SyntheticStream(n_features=3, seed=4)
    X, _ = gen.sample(9000, anomaly_rate=0.01)
    X = np.ascontiguousarray(X, dtype=np.float32)

    def graph_of(name: str, **params: object) -> object:
        art = _artifact(tmp_path / f"{name}{len(params)}", Pipeline(preprocessor=Preprocessor(scaler="none"),
                                                                   detector=make_detector(name, **params)).fit(X), X, name)
        return onnx.load(str(art.model_path))

    for algorithm in ("hbos", "pca", "copod"):
        assert serving_graph.forest_cut(serving_graph.pruned(graph_of(algorithm), ["score"])[0]) is None, algorithm
    full = graph_of("iforest", n_estimators=5)
    assert serving_graph.forest_cut(full) is None  # contributions too: not the score graph
    score = serving_graph.pruned(full, ["score"])[0]
    cut = serving_graph.forest_cut(score)
    assert cut is not None and cut.feat.shape == (5, (1 << cut.depth) - 1) and cut.leaf.shape == (5, 1 << cut.depth)
    assert cut.base == 2.0 and cut.factor < 0

    def changed(edit: object) -> object:
        g = onnx.ModelProto()
        g.CopyFrom(score)
        edit(next(n for n in g.graph.node if n.op_type == "TreeEnsembleRegressor"))  # type: ignore[operator]
        return serving_graph.forest_cut(g)

    def set_attr(name: str, value: object) -> object:
        def edit(node: object) -> None:
            kept = [a for a in node.attribute if a.name != name]  # type: ignore[attr-defined]
            del node.attribute[:]  # type: ignore[attr-defined]
            node.attribute.extend([*kept, helper.make_attribute(name, value)])  # type: ignore[attr-defined]
        return edit

    def attr(node: object, name: str) -> list[object]:
        return list(helper.get_attribute_value(next(a for a in node.attribute if a.name == name)))  # type: ignore[attr-defined]

    node = next(n for n in score.graph.node if n.op_type == "TreeEnsembleRegressor")
    modes = attr(node, "nodes_modes")
    assert changed(lambda n: None) is not None
    assert changed(set_attr("post_transform", "LOGISTIC")) is None
    assert changed(set_attr("base_values", [1.0])) is None
    assert changed(set_attr("aggregate_function", "AVERAGE")) is None
    assert changed(set_attr("nodes_modes", [b"BRANCH_LT" if m == b"BRANCH_LEQ" else m for m in modes])) is None
    assert changed(set_attr("nodes_missing_value_tracks_true", [1] * len(modes))) is None
    twice = [attr(node, k) for k in ("target_treeids", "target_nodeids", "target_ids", "target_weights")]

    def doubled(n: object) -> None:  # a second weight on the first leaf
        for k, values in zip(("target_treeids", "target_nodeids", "target_ids", "target_weights"), twice, strict=True):
            set_attr(k, [*values, values[0]])(n)
    assert changed(doubled) is None
    deep = serving_graph.pruned(graph_of("iforest", n_estimators=2, max_samples=8192), ["score"])[0]
    assert serving_graph.forest_cut(deep) is None  # 13 levels: over FOREST_MAX_DEPTH
    assert serving_graph.forest_cut(serving_graph.pruned(graph_of("iforest", n_estimators=2, max_samples=4096),
                                                         ["score"])[0]) is not None


@pytest.mark.parametrize("portable", [False, True])
def test_compiled_prefix_counts_are_the_searches_counts(portable: bool) -> None:
    """Ties, NaN (0), infinities, -0.0, the +inf padding, every table width from 1 to 2**13 - 1, 1 to 40 rows."""
    rng = np.random.default_rng(1)
    for k in range(1, 14):
        width, d = 2 ** k - 1, int(rng.integers(1, 5))
        n_train = int(rng.integers(1, width + 1))
        values = np.full((d, width), np.inf, dtype=np.float32)
        values[:, :n_train] = np.sort(np.round(rng.normal(size=(n_train, d)), 1).astype(np.float32), axis=0).T
        for n in (1, 15, 16, 17, 40):
            x = np.round(rng.normal(size=(n, d)), 1).astype(np.float32)  # rounded: many ties with the table
            x.ravel()[::7] = np.nan
            x.ravel()[1::11] = np.inf
            x.ravel()[2::13] = -np.inf
            x.ravel()[3::5] = -0.0
            for strict in (False, True):
                out = np.full((n, d), -1, dtype=np.int64)
                native.grading.prefix_counts(x, values, out, strict, portable)
                want = np.zeros((n, d), dtype=np.int64)
                for j in range(d):  # the graph's search, step by step
                    step = (width + 1) // 2
                    while step >= 1:
                        probe = values[j, want[:, j] + step - 1]
                        want[:, j] += np.where(probe < x[:, j] if strict else probe <= x[:, j], step, 0)
                        step //= 2
                np.testing.assert_array_equal(out, want, err_msg=f"width {width}, {n} rows, strict {strict}")
                side = "left" if strict else "right"
                counted = np.stack([np.searchsorted(values[j], x[:, j], side=side) for j in range(d)], axis=1)
                np.testing.assert_array_equal(out, np.where(np.isnan(x), 0, counted))


def _ecdf_artifact(root: Path, algorithm: str, X: np.ndarray) -> Artifact:
    from models.ensemble import Ensemble

    def pipe(name: str) -> Pipeline:
        return Pipeline(preprocessor=Preprocessor(scaler="standard"), detector=make_detector(name))

    model = Ensemble([pipe("iforest"), pipe("ecod"), pipe("knn")]) if algorithm == "ensemble" else pipe(algorithm)
    return _artifact(root / algorithm, model.fit(X), X, algorithm)  # type: ignore[arg-type]


@pytest.mark.parametrize("algorithm", ["ecod", "copod", "ensemble"])
def test_graphs_with_ecdf_counts_give_the_graphs_bits(algorithm: str, tmp_path: Path) -> None:
    """The cut around the counts (alone, or beside a neighbour search) against the whole graph, every output."""
    import onnx

    gen = SyntheticStream(n_features=9, seed=5)
    X, _ = gen.sample(3000, anomaly_rate=0.01)
    X = np.ascontiguousarray(X, dtype=np.float32)
    art = _ecdf_artifact(tmp_path, algorithm, X)
    model = onnx.load(str(art.model_path))
    rows, gaps, extreme = _held_out(gen, 300)
    for batch in (rows, gaps, extreme):
        batch[::3, 1] = X[::3, 1][:100]  # training values: ties with the sorted columns
    for graph in (model, serving_graph.pruned(model, ["score"])[0], serving_graph.without_imputation(model)):
        assert graph is not None
        cut = serving_graph.neighbour_cut(graph, searches=False, counts=True)
        assert cut is not None and len(cut.counts) == 2 and not cut.searches
        assert sorted(c.strict for c in cut.counts) == [False, True]
        counted = [c.output for c in cut.counts]
        inner = _session(serving_graph.with_outputs(graph, counted))
        names = [o.name for o in graph.graph.output]
        split = native.NeighbourSplit(cut, _session, _session(graph))
        for batch in (rows, gaps, extreme):
            for n in (1, 16, 17, 300):
                feed = {"features": batch[:n]}
                want = inner.run([*names, *counted], feed)  # type: ignore[attr-defined]
                for c, w in zip(cut.counts, want[len(names):], strict=True):  # the counts themselves
                    x = feed["features"] if c.x == "features" else \
                        dict(zip(cut.head_outputs, _session(cut.head).run(cut.head_outputs, feed)))[c.x]  # type: ignore[attr-defined]
                    np.testing.assert_array_equal(native.counts(x, c), w)
                for a, b in zip(split.run(names, feed), want[:len(names)], strict=True):
                    np.testing.assert_array_equal(np.asarray(a).view(np.uint32), np.asarray(b).view(np.uint32))
    both = serving_graph.neighbour_cut(model, counts=True)
    assert both is not None and len(both.counts) == 2 and len(both.searches) == (algorithm == "ensemble")
    assert serving_graph.neighbour_cut(model) is None or algorithm == "ensemble"  # counts only when asked
    _same_as_the_graphs(art, (rows, gaps, extreme))


def test_ecdf_counts_are_matched_only_as_the_graph_builds_them(tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    gen = SyntheticStream(n_features=4, seed=6)
    X, _ = gen.sample(1000, anomaly_rate=0.01)
    model = onnx.load(str(_ecdf_artifact(tmp_path, "ecod", np.ascontiguousarray(X, dtype=np.float32)).model_path))
    assert len(serving_graph.neighbour_cut(model, counts=True).counts) == 2  # type: ignore[union-attr]

    def edited(name_part: str, edit: object) -> int:
        g = onnx.ModelProto()
        g.CopyFrom(model)
        for i, t in enumerate(g.graph.initializer):
            if name_part in t.name:
                g.graph.initializer[i].CopyFrom(numpy_helper.from_array(edit(numpy_helper.to_array(t)), t.name))  # type: ignore[operator]
        cut = serving_graph.neighbour_cut(g, counts=True)
        return 0 if cut is None else len(cut.counts)

    assert edited("offset", lambda a: a + 1) == 0  # probes off the table's steps
    assert edited("sorted_columns", lambda a: a[:, ::-1].copy()) == 0  # columns not ascending
    assert edited("probe_step", lambda a: a * 2) == 0  # steps not halving to 1
    assert edited("probe_value", lambda a: a + 1) == 0  # the first probes not the table's
    reread = onnx.ModelProto()  # an intermediate count read outside the chain
    reread.CopyFrom(model)
    where = next(n for n in reread.graph.node if n.op_type == "Where" and "prefix" in n.output[0])
    reread.graph.node.append(onnx.helper.make_node("Identity", [where.output[0]], ["leak"]))
    cut = serving_graph.neighbour_cut(reread, counts=True)
    assert cut is not None and len(cut.counts) == 1  # that chain stays in the graph, the other is cut
