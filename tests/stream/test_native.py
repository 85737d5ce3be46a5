"""The compiled neighbour search (stream/native.py): its kernel against numpy, and the core with it against the graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.artifact import Artifact, Card
from models.calibration import Calibration, SeverityScale
from models.ensemble import Ensemble
from models.pipeline import Pipeline
from models.preprocessing import Preprocessor
from models.zoo import make_detector
from stream import native, serving_graph
from stream.core import Scorer
from stream.synthetic import SyntheticStream

pytestmark = pytest.mark.skipif(
    not native.available(),
    reason=f"no compiled neighbour search ({native.library_path()} missing, or a CPU without AVX-512F)",
)

_FIELDS = ("raw", "score", "anomaly", "severity", "anomalous_rows", "top_features", "top_shares")
_D = 8
_TRAIN = 4000  # LOF's 22 candidates need at least 2 x 22 groups of 64 reference rows to be searched in groups


def _expected(x: np.ndarray, w: np.ndarray, kk: int) -> np.ndarray:
    """The kk columns of smallest ``[x, 1] @ w`` by (product, column), in ascending order (exact on small integers)."""
    prod = np.hstack([x.astype(np.float64), np.ones((len(x), 1))]) @ w.astype(np.float64)
    cols = np.broadcast_to(np.arange(w.shape[1]), prod.shape)
    return np.sort(np.lexsort((cols, prod), axis=1)[:, :kk], axis=1)


@pytest.mark.parametrize(("d", "groups", "kk"), [(1, 2, 1), (3, 5, 2), (8, 16, 7), (32, 79, 22), (33, 130, 64)])
def test_kernel_finds_the_kk_smallest_products_ties_to_the_lower_column(d: int, groups: int, kk: int) -> None:
    """On small integers every product is exact in float32, so the answer is exact, ties included."""
    rng = np.random.default_rng(d * 1000 + groups)
    w = rng.integers(-4, 5, size=(d + 1, 64 * groups)).astype(np.float32)
    for n in (1, 5, 6, 7, 13, 256):
        x = rng.integers(-4, 5, size=(n, d)).astype(np.float32)
        got, failed, _ = native.candidates(x, w, kk)
        assert failed == 0
        np.testing.assert_array_equal(got, _expected(x, w, kk), err_msg=f"{n} rows")
    centre = rng.integers(-2, 3, size=d).astype(np.float32)
    x = rng.integers(-4, 5, size=(40, d)).astype(np.float32)
    got, _, _ = native.candidates(x, w, kk, center=centre)
    np.testing.assert_array_equal(got, _expected(x - centre, w, kk), err_msg="centred in the kernel")
    # the exact stage's first step, on other rows (the graph feeds the unscaled ones there)
    xs = rng.normal(size=(40, d)).astype(np.float32)
    rows = rng.normal(size=(64 * groups, d))
    again, failed, sq = native.candidates(x, w, kk, (xs, rows), center=centre)
    assert failed == 0 and sq is not None
    np.testing.assert_array_equal(again, got)
    np.testing.assert_array_equal(sq, (xs.astype(np.float64)[:, None, :] - rows[got]) ** 2)


_BF16 = pytest.mark.skipif(
    not native.available() or native.prefilter(np.zeros((2, 64), dtype=np.float32)) is None,
    reason="this CPU has no AVX512-BF16: no prefilter",
)


def _search_weights(rng: np.random.Generator, d: int, width: int, scale: float = 1.0) -> np.ndarray:
    """A squared-distance search's weights: ``-2 s`` per feature and ``|s|^2`` as the bias row."""
    ref = (rng.normal(size=(width, d)) * scale).astype(np.float32)
    return np.vstack([-2.0 * ref.T, (ref.astype(np.float64) ** 2).sum(axis=1)[None, :]]).astype(np.float32)


@_BF16
@pytest.mark.parametrize(("d", "groups", "kk"), [(1, 2, 1), (5, 3, 3), (8, 16, 7), (32, 79, 22), (33, 130, 64)])
def test_prefilter_finds_the_candidates_of_the_float32_search(d: int, groups: int, kk: int) -> None:
    """bfloat16 products and a bound, then float32 for the columns near the cut: the same columns, every row."""
    rng = np.random.default_rng(d * 7 + groups)
    for scale in (1.0, 1e-3, 50.0):
        w = _search_weights(rng, d, 64 * groups, scale)
        pre = native.prefilter(w)
        assert pre is not None
        x = (rng.normal(size=(301, d)) * scale).astype(np.float32)
        x[::9] *= 4.0  # far rows
        x[5] = -w[:d, 17] / 2.0  # a row on a reference row
        xs = rng.normal(size=x.shape).astype(np.float32)
        rows = rng.normal(size=(64 * groups, d))
        want, failed, sq_want = native.candidates(x, w, kk, (xs, rows))
        got, failed_pre, sq = native.candidates(x, w, kk, (xs, rows), pre=pre)
        assert failed == failed_pre == 0
        np.testing.assert_array_equal(got, want, err_msg=f"scale {scale}")
        np.testing.assert_array_equal(sq, sq_want)
        np.testing.assert_array_equal(native.candidates(x, np.asfortranarray(w), kk)[0], want)


@_BF16
def test_prefilter_keeps_ties_and_hands_crowded_rows_to_the_float32_search() -> None:
    rng = np.random.default_rng(11)
    # small integers: many equal products, the lower column must win
    w = rng.integers(-3, 4, size=(9, 64 * 20)).astype(np.float32)
    x = rng.integers(-3, 4, size=(97, 8)).astype(np.float32)
    pre = native.prefilter(w)
    assert pre is not None
    got, failed, _ = native.candidates(x, w, 9, pre=pre)
    assert failed == 0
    np.testing.assert_array_equal(got, _expected(x, w, 9))
    # every reference row alike: every column lies within the bound, so rows take the float32 search
    same = np.repeat(_search_weights(rng, 8, 1), 64 * 12, axis=1)
    got, failed, _ = native.candidates(x, same, 5, pre=native.prefilter(same))
    assert failed == 0
    np.testing.assert_array_equal(got, np.broadcast_to(np.arange(5), (97, 5)))
    # rows too large for bfloat16 products take it too; NaN rows still fail
    big = x.copy()
    big[::4] *= np.float32(1e35)
    big[3, 2] = np.nan
    want, failed, _ = native.candidates(big, w, 9)
    got, failed_pre, _ = native.candidates(big, w, 9, pre=pre)
    assert failed == failed_pre == 1
    ok = np.delete(np.arange(len(big)), 3)
    np.testing.assert_array_equal(got[ok], want[ok])


def test_prefilter_refuses_weights_it_cannot_bound() -> None:
    w = np.ones((5, 128), dtype=np.float32)
    w[2, 7] = np.inf
    assert native.prefilter(w) is None
    assert native.prefilter(np.ones((5, 100), dtype=np.float32)) is None  # not in groups of 64


def test_kernel_reports_rows_it_cannot_rank_and_refuses_bad_sizes() -> None:
    rng = np.random.default_rng(3)
    w = rng.normal(size=(5, 64 * 8)).astype(np.float32)
    x = rng.normal(size=(20, 4)).astype(np.float32)
    x[[2, 9], 1] = np.nan
    got, failed, _ = native.candidates(x, w, 3)
    assert failed == 2
    good = np.delete(np.arange(20), [2, 9])
    ok, _, _ = native.candidates(x[good], w, 3)
    np.testing.assert_array_equal(got[good], ok)
    with pytest.raises(RuntimeError, match="refused"):
        native.candidates(x, w[:, :100], 3)  # width not a multiple of 64
    with pytest.raises(RuntimeError, match="refused"):
        native.candidates(x, w, 9)  # more candidates than groups


def _artifact(root: Path, name: str, model: object, X: np.ndarray) -> Artifact:
    features = tuple(f"f{i}" for i in range(X.shape[1]))
    card = Card(
        name=name, version=1, features=features, calibration=Calibration.fit(model.score_samples(X)),  # type: ignore[attr-defined]
        threshold=0.99, severity=SeverityScale.from_threshold(0.99), medians=dict.fromkeys(features, 0.0),
        detector=model.describe(), training={}, metrics={}, parity=0.0,  # type: ignore[attr-defined]
    )
    return Artifact.write(root / name, model.to_onnx(list(features)), card)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    gen = SyntheticStream(n_features=_D, seed=5)
    X, _ = gen.sample(_TRAIN, anomaly_rate=0.01)
    rows, _ = gen.sample(2100, anomaly_rate=0.05)
    rows[::11, 1] = gen.mean[1] + 20 * gen.scale[1]
    rows[::37, 3] = np.nan
    return X, rows


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory, data: tuple[np.ndarray, np.ndarray]) -> dict[str, Artifact]:
    X, _ = data
    root = tmp_path_factory.mktemp("native")

    def pipe(algorithm: str) -> Pipeline:
        return Pipeline(preprocessor=Preprocessor(scaler="standard"), detector=make_detector(algorithm))

    out = {a: _artifact(root, a, pipe(a).fit(X), X) for a in ("knn", "lof")}
    out["ensemble"] = _artifact(root, "ensemble", Ensemble([pipe("knn"), pipe("lof"), pipe("hbos")]).fit(X), X)
    return out


@pytest.mark.parametrize("name", ["knn", "lof", "ensemble"])
def test_neighbour_graphs_are_cut_around_every_search(name: str, artifacts: dict[str, Artifact]) -> None:
    import onnx

    model = onnx.load(str(artifacts[name].model_path))
    cut = serving_graph.neighbour_cut(model)
    assert cut is not None
    assert [s.kk for s in cut.searches] == {"knn": [7], "lof": [22], "ensemble": [7, 22]}[name]
    assert all(s.output in cut.tail_inputs for s in cut.searches)
    assert all(s.exact is not None and s.exact.output in cut.tail_inputs for s in cut.searches)
    # the same after the load-time rewrites the core makes first
    fused = serving_graph.fused_affine(model) or model
    for derived in (fused, serving_graph.without_imputation(fused), serving_graph.pruned(fused, ["score"])[0]):
        assert derived is not None
        again = serving_graph.neighbour_cut(derived)
        assert again is not None and [s.kk for s in again.searches] == [s.kk for s in cut.searches]


def test_graphs_without_a_grouped_search_stay_whole(tmp_path: Path) -> None:
    import onnx

    gen = SyntheticStream(n_features=_D, seed=6)
    X, _ = gen.sample(600, anomaly_rate=0.01)
    for algorithm in ("iforest", "ocsvm", "lof"):  # LOF on 600 rows: too few groups, one TopK over every row
        art = _artifact(tmp_path, algorithm, Pipeline(preprocessor=Preprocessor(scaler="standard"),
                                                      detector=make_detector(algorithm)).fit(X), X)
        assert serving_graph.neighbour_cut(onnx.load(str(art.model_path))) is None, algorithm
        assert Scorer(art, providers="cpu").native_searches == 0


def test_a_search_whose_intermediates_are_read_elsewhere_is_not_cut(artifacts: dict[str, Artifact]) -> None:
    import onnx

    model = onnx.load(str(artifacts["knn"].model_path))
    group_min = next(n.output[0] for n in model.graph.node if n.op_type == "ReduceMin")
    assert serving_graph.neighbour_cut(serving_graph.with_outputs(model, [group_min])) is not None  # an output is fine
    extra = onnx.helper.make_node("Identity", [group_min], ["leak"])
    model.graph.node.append(extra)
    assert serving_graph.neighbour_cut(model) is None


@pytest.mark.parametrize("name", ["knn", "lof", "ensemble"])
def test_core_with_the_compiled_search_scores_bit_for_bit_like_the_graph(
    name: str, artifacts: dict[str, Artifact], data: tuple[np.ndarray, np.ndarray]
) -> None:
    """Every contributions way, NaN rows, alerting batches, parts and pieces: every field equal."""
    _, rows = data
    complete = np.nan_to_num(rows, nan=0.0)
    far = rows.copy()
    far[:, 1:3] += 6 * np.nanstd(rows[:, 1:3], axis=0)
    art = artifacts[name]
    for contributions in ("all", "alerting", "handover"):
        graph = Scorer(art, providers="cpu", contributions=contributions, native="never",  # type: ignore[arg-type]
                       pieces="never")
        assert graph.native_searches == 0
        compiled = [
            Scorer(art, providers="cpu", contributions=contributions, pieces="never"),  # type: ignore[arg-type]
            Scorer(art, providers="cpu", contributions=contributions, pieces="always",  # type: ignore[arg-type]
                   threads=2, parallel="always"),
        ]
        assert all(s.native_searches > 0 for s in compiled)
        for batch in (rows, complete, far):
            m = native.MIN_ROWS
            for n in (1, m - 1, m, m + 1, 255, 256, 600, 2100):
                want = graph.score(batch[:n])
                for scorer in compiled:
                    got = scorer.score(batch[:n])
                    for field in _FIELDS:
                        np.testing.assert_array_equal(getattr(got, field), getattr(want, field),
                                                      err_msg=f"{name}, {contributions}, {n} rows, {field}")
    assert graph.score(rows).anomaly.sum() >= 50 and graph.score(far).anomaly.mean() > 0.9


def test_a_batch_the_search_cannot_rank_is_scored_by_the_whole_graph(artifacts: dict[str, Artifact]) -> None:
    """An infinity reaches the search (imputation replaces NaN only): the split hands the batch to the whole graph."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(artifacts["knn"].model_path))
    cut = serving_graph.neighbour_cut(model)
    assert cut is not None

    def session(m: object) -> object:
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]

    whole = session(model)
    split = native.NeighbourSplit(cut, session, whole)
    gen = SyntheticStream(n_features=_D, seed=8)
    X, _ = gen.sample(64, anomaly_rate=0.0)
    names = ["score", "contributions"]
    for a, b in zip(split.run(names, {"features": X}), whole.run(names, {"features": X}), strict=True):
        np.testing.assert_array_equal(a, b)
    assert split.fallbacks == 0
    X[5, 2] = np.inf
    for a, b in zip(split.run(names, {"features": X}), whole.run(names, {"features": X}), strict=True):
        np.testing.assert_array_equal(a, b)
    assert split.fallbacks == 1


@pytest.mark.parametrize(("native_setting", "searches"), [("auto", True), ("never", False)])
def test_inference_native_setting_reaches_the_service_scorer(
    native_setting: str, searches: bool, artifacts: dict[str, Artifact], tmp_path: Path
) -> None:
    from models.registry import Registry
    from stream.service import load_scorer
    from stream.settings import Settings

    art = artifacts["knn"]
    Registry(tmp_path).register("default", art.model_path.read_bytes(), art.card)
    cfg = tmp_path / "s.yaml"
    cfg.write_text(f"model: {{registry: '{tmp_path}'}}\n")
    settings = Settings.load(cfg, environ={"ANOMSTREAM_INFERENCE__NATIVE": native_setting})
    assert settings.inference.native == native_setting
    assert (load_scorer(settings).native_searches > 0) is searches


def _session(m: object) -> object:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]


def test_compiled_sums_add_in_onnxruntimes_order() -> None:
    """The check the split makes before compiling LOF's density stage holds on this onnxruntime, and means it.

    Sequential sums, numpy's pairwise ones and the compiled ones differ on
    such rows, so agreeing bit for bit on every length is not a given.
    """
    assert native.sums_agree(_session)
    lib = native._library()
    assert lib is not None
    rng = np.random.default_rng(3)
    v = np.exp(rng.standard_normal(64) * 8.0)
    compiled = lib.anomstream_reduce_sum(v.ctypes.data, 64, 0)
    assert compiled != float(sum(v.tolist())) or compiled != float(np.sum(v))


def _lof_split(root: Path, X: np.ndarray, k: int, name: str,
               extra: tuple[str, ...] = ()) -> tuple[native.NeighbourSplit, object]:
    import onnx

    art = _artifact(root, name, Pipeline(preprocessor=Preprocessor(scaler="standard"),
                                         detector=make_detector("lof", n_neighbors=k)).fit(X), X)
    # the score call of the core's hand-over way (for LOF at 20 neighbours): the candidates and weights too
    model = serving_graph.with_outputs(serving_graph.pruned(onnx.load(str(art.model_path)), ["score"])[0],
                                       ["candidates", "chosen", *extra])
    cut = serving_graph.neighbour_cut(model)
    assert cut is not None
    whole = _session(model)
    return native.NeighbourSplit(cut, _session, whole), whole


@pytest.mark.parametrize(("d", "k"), [(8, 20), (5, 20), (7, 5), (5, 2), (6, 3), (3, 1)])
def test_compiled_density_gives_the_graphs_bits(d: int, k: int, tmp_path: Path) -> None:
    """LOF's score and neighbour weights from the compiled stage equal the graph's, ties and odd widths included.

    Against the graph's own tail on the same candidates: every bit of the
XX
    a coarse grid, half the training rows repeated and queries that copy
    training rows make many candidates tie at the k-th distance; odd feature
    counts and candidate counts put the graph's rows at both alignments its
    ReduceSum adds differently.  Both of the graph's k-th selections are met
    (the k smallest where k is small, the rest's largest otherwise).
    """
    rng = np.random.default_rng(d * 100 + k)
    X = np.round(rng.normal(size=(_TRAIN, d)) * 2) / 2
    X[1::2] = X[::2]
    X = X.astype(np.float32)
    split, whole = _lof_split(tmp_path, X, k, f"lof{d}_{k}")
    stage = split.density
    assert stage is not None and stage.k_sq == k == stage.k_key
    queries = np.vstack([X[rng.integers(0, _TRAIN, 300)], np.round(rng.normal(size=(300, d)) * 2) / 2,
                         rng.normal(size=(300, d)) * 3]).astype(np.float32)
    names = ["score", stage.candidates, stage.chosen]
    for n in (native.MIN_ROWS, 37, 256, 900):
        feed = {"features": queries[:n]}
        got = split.run(names, feed)
        split.density = None
        tail = split.run(names, feed)
        split.density = stage
        for name, a, b in zip(names, got, tail, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"{name}, {n} rows, against the graph's tail")
        np.testing.assert_array_equal(got[0], whole.run(["score"], feed)[0],  # type: ignore[attr-defined]
                                      err_msg=f"{n} rows, against the whole graph")
        assert np.all(got[2].sum(axis=1) == k)
    assert split.fallbacks == 0


@pytest.mark.parametrize(("d", "k"), [(8, 20), (7, 5), (5, 2), (3, 1)])
def test_compiled_density_adds_in_the_graphs_order(d: int, k: int, tmp_path: Path) -> None:
    """The float64 sums before any cast: the squared distances and the unrounded score, bit for bit.

    The float32 score hides most last-place differences of its float64
    sums; these are the graph's own intermediate tensors (``sq_dist``,
    ``lof_score``) from its tail on the same candidates.  Odd feature counts
    and odd candidate counts (for some of these k) start rows at both
    alignments.
    """
    rng = np.random.default_rng(d + k)
    X = rng.normal(size=(_TRAIN, d)).astype(np.float32)
    split, _ = _lof_split(tmp_path, X, k, f"lof_sums{d}_{k}", ("sq_dist", "lof_score"))
    stage, search = split.density, split.cut.searches[0]
    assert stage is not None and search.exact is not None
    queries = (rng.normal(size=(301, d)) * 2).astype(np.float32)
    feed = {"features": queries}
    want_sq, want_lof, cand = split.run(["sq_dist", "lof_score", "candidates"], feed)  # the graph's tail
    inputs = [n for n in (search.x, search.exact.x) if n in split.cut.head_outputs]
    head = dict(zip(inputs, split.run(inputs, feed)))
    got_cand, failed, sums = native.candidates(head[search.x], search.weights, search.kk,
                                               (head.get(search.exact.x, queries), search.exact.rows), sums=True)
    assert failed == 0 and sums is not None
    np.testing.assert_array_equal(got_cand, cand)
    np.testing.assert_array_equal(sums, want_sq)
    unrounded = np.empty(len(queries))
    assert native.density(sums, got_cand, stage, unrounded=unrounded) is not None
    np.testing.assert_array_equal(unrounded, want_lof)


def test_compiled_density_picks_the_k_nearest_on_every_path() -> None:
    """Every k from 1 to kk (both selections, the four-register one and the longer one), many ties.

    Against numpy: the neighbours are those below the k-th smallest summed
    square and, at it, the lowest row numbers; the score is LOF's formula.
    """
    rng = np.random.default_rng(11)
    rows = 300
    table_kd, table_lrd = rng.random(rows) + 0.5, rng.random(rows) + 0.5
    for kk in (1, 2, 3, 5, 7, 8, 9, 22, 64):
        for k in range(1, kk + 1):
            stage = serving_graph.DensityStage("candidates", "score", "chosen", k, k, table_kd, table_lrd, 1 / k, 1e-10)
            sums = rng.integers(0, 6, size=(40, kk)).astype(np.float64)  # small integers: many ties
            cand = np.stack([rng.choice(rows, kk, replace=False) for _ in range(40)]).astype(np.int64)
            got = native.density(sums, cand, stage)
            assert got is not None
            score, chosen = got
            kth = np.sort(sums, axis=1)[:, k - 1:k]
            key = np.where(sums < kth, -1.0, np.where(sums == kth, cand.astype(np.float64), np.inf))
            want = (key <= np.sort(key, axis=1)[:, k - 1:k]).astype(np.float64)
            np.testing.assert_array_equal(chosen, want, err_msg=f"kk={kk}, k={k}")
            reach = np.maximum(np.sqrt(sums), table_kd[cand])
            lof = (table_lrd[cand] * want).sum(axis=1) / k * ((reach * want).sum(axis=1) / k + 1e-10)
            np.testing.assert_allclose(score, lof, rtol=1e-6, err_msg=f"kk={kk}, k={k}")


def test_density_stage_is_matched_only_on_lofs_tail(artifacts: dict[str, Artifact]) -> None:
    """KNN's tail is not LOF's; a LOF tail with one constant changed is not matched either."""
    import onnx
    from onnx import numpy_helper

    knn = serving_graph.neighbour_cut(onnx.load(str(artifacts["knn"].model_path)))
    assert knn is not None and serving_graph.density_stage(knn) is None
    model = onnx.load(str(artifacts["lof"].model_path))
    cut = serving_graph.neighbour_cut(model)
    assert cut is not None
    stage = serving_graph.density_stage(cut)
    assert stage is not None and stage.k_sq == 20 and stage.inv_k == 1 / 20 and stage.eps == 1e-10
    for name, value in (("minus_one", -2.0), ("inf", 1e300), ("eps", 1e-9)):
        changed = onnx.load(str(artifacts["lof"].model_path))
        init = next(t for t in changed.graph.initializer if t.name == name)
        init.CopyFrom(numpy_helper.from_array(np.array(value), name))
        cut = serving_graph.neighbour_cut(changed)
        assert cut is not None
        found = serving_graph.density_stage(cut)
        assert found is None or (name == "eps" and found.eps == 1e-9), name


def test_compiled_density_refuses_candidates_outside_the_reference_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    X = rng.normal(size=(_TRAIN, 5)).astype(np.float32)
    split, _ = _lof_split(tmp_path, X, 20, "lof_refuse")
    stage = split.density
    assert stage is not None
    sums = rng.random((4, 22))
    cand = rng.integers(0, stage.lrd.shape[0], size=(4, 22))
    assert native.density(sums, cand, stage) is not None
    cand[2, 5] = stage.lrd.shape[0]
    assert native.density(sums, cand, stage) is None
    sums[0, 0] = np.nan
    cand[2, 5] = 0
    assert native.density(sums, cand, stage) is None
