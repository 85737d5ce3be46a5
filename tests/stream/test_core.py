from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.registry import Registry
from models.zoo import ALGORITHMS
from stream import serving_graph
from stream.core import _PARALLEL_TRIALS, Scorer, choose_providers
from stream.errors import ScoringError
from stream.native import grid_available
from stream.synthetic import SyntheticStream


@pytest.fixture(scope="module")
def scorer(registry: Path) -> Scorer:
    return Scorer(Registry(registry).load("default"), providers="auto")


def test_provider_auto_is_cpu_here_and_cuda_is_refused_without_it(scorer: Scorer) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA present")
    assert scorer.provider == "CPUExecutionProvider"
    assert choose_providers("auto") == ["CPUExecutionProvider"]
    with pytest.raises(ScoringError, match="onnxruntime-gpu"):
        choose_providers("cuda")


def test_scores_are_calibrated_and_outliers_flagged_with_top3_contributions(scorer: Scorer) -> None:
    gen = SyntheticStream(n_features=6, seed=3)
    X, _ = gen.sample(2000)
    far = X[:200].copy()
    far[:, [1, 4]] = gen.mean[[1, 4]] + 12 * gen.scale[[1, 4]]
    out = scorer.score(np.vstack([X, far]))
    assert out.score.min() >= 0.0 and out.score.max() <= 1.0
    assert out.anomaly[:2000].mean() < 0.02  # threshold from contamination 0.01 on like data
    assert out.anomaly[2000:].mean() > 0.5
    pos = {r: i for i, r in enumerate(out.anomalous_rows.tolist())}
    pushed = [out.top_features[pos[r]] for r in range(2000, 2200) if r in pos]
    assert np.mean([top[0] in (1, 4) for top in pushed]) >= 0.9  # a pushed feature explains most
    assert (np.diff(out.top_shares, axis=1) <= 1e-7).all()  # largest first
    assert (out.severity[out.anomaly] >= 1).all() and (out.severity[~out.anomaly] == 0).all()


def test_same_rows_score_the_same_alone_or_in_a_batch(scorer: Scorer) -> None:
    X, _ = SyntheticStream(n_features=6, seed=5).sample(64, anomaly_rate=0.1)
    together = scorer.score(X).raw
    alone = np.concatenate([scorer.score(X[i:i + 1]).raw for i in range(64)])
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-6)


def test_decisions_of_a_row_do_not_depend_on_its_batch(scorer: Scorer) -> None:
    """Severity and top features: a few alerting rows (graded in Python) or many (in numpy), alike."""
    gen = SyntheticStream(n_features=6, seed=12)
    X, _ = gen.sample(400, anomaly_rate=0.0)
    X[::3, 2] = gen.mean[2] + np.linspace(3, 30, X[::3].shape[0]) * gen.scale[2]  # mild to extreme
    whole = scorer.score(X)
    assert whole.anomalous_rows.size > 40  # the numpy branch
    for lo in range(0, 400, 20):
        part = scorer.score(X[lo : lo + 20])  # a few rows each: the Python branch
        np.testing.assert_array_equal(part.severity, whole.severity[lo : lo + 20])
        mine = (whole.anomalous_rows >= lo) & (whole.anomalous_rows < lo + 20)
        np.testing.assert_array_equal(part.anomalous_rows, whole.anomalous_rows[mine] - lo)
        np.testing.assert_array_equal(part.top_features, whole.top_features[mine])
    assert len(set(whole.severity[whole.anomalous_rows].tolist())) >= 2


def test_empty_batch_and_wrong_width(scorer: Scorer) -> None:
    assert scorer.score(np.empty((0, 6), dtype=np.float32)).score.shape == (0,)
    with pytest.raises(ScoringError, match="expects 6 features"):
        scorer.score(np.zeros((2, 5), dtype=np.float32))


def test_nan_is_imputed_in_the_graph(scorer: Scorer) -> None:
    X = np.full((1, 6), np.nan, dtype=np.float32)
    out = scorer.score(X)
    assert np.isfinite(out.raw).all()


def test_one_row_path_equals_the_batch_path(scorer: Scorer) -> None:
    gen = SyntheticStream(n_features=6, seed=11)
    X, _ = gen.sample(300, anomaly_rate=0.05)
    X[::7, 2] = gen.mean[2] + 30 * gen.scale[2]  # some far rows: anomalous, graded, explained
    batch = scorer.score(X)
    assert batch.anomaly.sum() >= 40
    pos = {r: i for i, r in enumerate(batch.anomalous_rows.tolist())}
    for i in range(X.shape[0]):
        one = scorer.score(X[i : i + 1])
        assert one.score[0] == batch.score[i]  # bit for bit: same knots, same arithmetic
        assert one.anomaly[0] == batch.anomaly[i] and one.severity[0] == batch.severity[i]
        if batch.anomaly[i]:
            assert one.anomalous_rows.tolist() == [0]
            assert one.top_features[0].tolist() == batch.top_features[pos[i]].tolist()
        else:
            assert one.anomalous_rows.size == 0 and one.top_features.shape == (0, 3)


def test_scalar_interpolation_is_numpys_bit_for_bit() -> None:
    from stream.core import _interp_one

    rng = np.random.default_rng(0)
    xp = np.unique(rng.gamma(2.0, 1.0, 250))
    fp = np.sort(rng.uniform(0, 1, xp.size))
    fp[-1] = 1.0
    probes = np.concatenate([
        rng.uniform(xp[0] - 1, xp[-1] + 1, 5000), xp, np.nextafter(xp, np.inf), np.nextafter(xp, -np.inf),
        [-np.inf, np.inf, np.nan, 0.0],
    ])
    want = np.interp(probes, xp, fp, left=0.0, right=1.0)
    xl, fl = tuple(xp.tolist()), tuple(fp.tolist())
    got = np.array([_interp_one(float(v), xl, fl) for v in probes])
    np.testing.assert_array_equal(got, want)


def _cuda_or_skip() -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("no CUDA provider (onnxruntime-gpu on a GPU machine)")


def _zoo_artifact(root: Path, algorithm: str) -> object:
    """An artifact of one zoo detector at its defaults, fitted on 2,000 synthetic rows."""
    from models.artifact import Artifact, Card
    from models.calibration import Calibration, SeverityScale
    from models.pipeline import Pipeline
    from models.preprocessing import Preprocessor
    from models.zoo import make_detector

    X, _ = SyntheticStream(n_features=6, seed=2).sample(2000, anomaly_rate=0.01)
    pipe = Pipeline(preprocessor=Preprocessor(scaler="standard"), detector=make_detector(algorithm)).fit(X)
    features = tuple(f"f{i}" for i in range(6))
    card = Card(
        name=algorithm, version=1, features=features, calibration=Calibration.fit(pipe.score_samples(X)),
        threshold=0.99, severity=SeverityScale.from_threshold(0.99), medians=dict.fromkeys(features, 0.0),
        detector=pipe.describe(), training={}, metrics={}, parity=0.0,
    )
    return Artifact.write(root / algorithm, pipe.to_onnx(list(features)), card)


def _zoo_graph(root: Path, algorithm: str) -> tuple[object, object]:
    """The artifact of :func:`_zoo_artifact` and its graph, loaded."""
    import onnx

    art = _zoo_artifact(root, algorithm)
    return art, onnx.load(str(art.model_path))  # type: ignore[attr-defined]


def _cpu(model: object) -> object:
    """A CPU session on an in-memory graph."""
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_cuda_scores_equal_cpu_scores_at_every_bucket(algorithm: str, tmp_path: Path) -> None:
    _cuda_or_skip()
    art = _zoo_artifact(tmp_path, algorithm)
    cpu = Scorer(art, providers="cpu")  # type: ignore[arg-type]
    # Every bucket up to 4,096 rows captured at load (where the graph replays CUDA graphs).
    cuda = Scorer(art, providers="cuda", max_batch=3000)  # type: ignore[arg-type]
    assert cuda.provider == "CUDAExecutionProvider"
    print(f"{algorithm}: CUDA graphs {cuda.cuda_graphs}")
    X, _ = SyntheticStream(n_features=6, seed=9).sample(3005, anomaly_rate=0.02)
    for n in (1, 2, 3, 16, 17, 255, 256, 1000, 3000):  # exact buckets and padded ones
        for lo in (0, 5):
            a, b = cpu.score(X[lo : lo + n]), cuda.score(X[lo : lo + n])
            assert b.raw.shape == (n,) and b.score.shape == (n,)
            np.testing.assert_allclose(b.raw, a.raw, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(a.raw).max())))
            assert (a.anomaly == b.anomaly).mean() >= 0.99


def test_capturable_graphs_are_those_without_tree_operators_or_control_flow(tmp_path: Path) -> None:
    import onnx

    from models.ensemble import Ensemble
    from models.pipeline import Pipeline
    from models.preprocessing import Preprocessor
    from models.zoo import make_detector
    from stream.serving_graph import cuda_capturable

    verdicts = {a: cuda_capturable(_zoo_graph(tmp_path, a)[1]) for a in sorted(ALGORITHMS)}
    assert sorted(a for a, ok in verdicts.items() if not ok) == ["iforest", "loda"]
    X, _ = SyntheticStream(n_features=6, seed=2).sample(500, anomaly_rate=0.01)
    features = [f"f{i}" for i in range(6)]

    def ensemble(*members: str) -> bool:
        ens = Ensemble([Pipeline(preprocessor=Preprocessor(scaler="standard"), detector=make_detector(a))
                        for a in members]).fit(X)
        return cuda_capturable(onnx.load_from_string(ens.to_onnx(features)))

    assert ensemble("ecod", "knn") and not ensemble("iforest", "ecod")


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_auto_keeps_on_cuda_only_graphs_that_replay_cuda_graphs(algorithm: str, tmp_path: Path) -> None:
    import onnx

    _cuda_or_skip()
    art = _zoo_artifact(tmp_path, algorithm)
    auto = Scorer(art, providers="auto")  # type: ignore[arg-type]
    cuda = Scorer(art, providers="cuda")  # type: ignore[arg-type]
    assert cuda.provider == "CUDAExecutionProvider"
    # The tree operator has no CUDA kernel and LODA's graph holds an If: neither can be captured.
    capturable = algorithm not in ("iforest", "loda")
    assert cuda.cuda_graphs is capturable
    assert serving_graph.cuda_capturable(onnx.load(str(art.model_path))) is capturable  # type: ignore[attr-defined]
    assert auto.provider == ("CUDAExecutionProvider" if capturable else "CPUExecutionProvider")
    assert auto.cuda_graphs is capturable
    X, _ = SyntheticStream(n_features=6, seed=9).sample(300, anomaly_rate=0.02)
    np.testing.assert_allclose(auto.score(X).raw, cuda.score(X).raw, rtol=1e-4, atol=1e-4)


def test_contributions_for_alerting_rows_only_equal_the_whole_graph(registry: Path) -> None:
    import onnxruntime as ort

    art = Registry(registry).load("default")
    gen = SyntheticStream(n_features=6, seed=21)
    X, _ = gen.sample(500, anomaly_rate=0.05)
    X[::9, 3] = gen.mean[3] + 25 * gen.scale[3]
    full = ort.InferenceSession(str(art.model_path), providers=["CPUExecutionProvider"])
    contrib = full.run(["contributions"], {"features": X})[0]
    whole, alerting = Scorer(art, providers="cpu", contributions="all"), Scorer(art, providers="cpu", contributions="alerting")
    assert not whole.contributions_on_demand and alerting.contributions_on_demand
    for n in (1, 7, 500):
        for i in range(0, 500 - n + 1, max(n, 50)):
            a, b = whole.score(X[i : i + n]), alerting.score(X[i : i + n])
            np.testing.assert_array_equal(a.raw, b.raw)
            np.testing.assert_array_equal(a.anomalous_rows, b.anomalous_rows)
            np.testing.assert_array_equal(a.top_features, b.top_features)
            np.testing.assert_allclose(a.top_shares, b.top_shares, rtol=1e-6, atol=1e-7)
            rows = i + a.anomalous_rows
            want = np.argsort(-contrib[rows], axis=1, kind="stable")[:, :3]
            np.testing.assert_array_equal(a.top_features, want)
    assert whole.score(X).anomaly.sum() >= 50


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_score_only_graph_gives_the_same_results_for_every_zoo_graph(algorithm: str, tmp_path: Path) -> None:
    art = _zoo_artifact(tmp_path, algorithm)
    whole = Scorer(art, providers="cpu", contributions="all")  # type: ignore[arg-type]
    alerting = Scorer(art, providers="cpu", contributions="alerting")  # type: ignore[arg-type]
    gen = SyntheticStream(n_features=6, seed=4)
    X, _ = gen.sample(400, anomaly_rate=0.05)
    X[::11, 1] = gen.mean[1] + 20 * gen.scale[1]
    for n in (1, 33, 400):
        a, b = whole.score(X[:n]), alerting.score(X[:n])
        np.testing.assert_array_equal(a.raw, b.raw)
        np.testing.assert_array_equal(a.anomalous_rows, b.anomalous_rows)
        # numpy's stable sort of the whole graph's contributions against the TopK graph on alerting rows
        np.testing.assert_array_equal(a.top_features, b.top_features)
        np.testing.assert_allclose(a.top_shares, b.top_shares, rtol=1e-5, atol=1e-6)
    assert whole.score(X).anomaly.sum() >= 30


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_handed_over_neighbours_give_the_whole_graphs_contributions(algorithm: str, tmp_path: Path) -> None:
    """Alerting rows' contributions from the tensors the score call hands over: the whole graph's.

    Scores and decisions bit for bit; shares to float32 rounding (the whole
    graph sums them over a batch of another size, as in the score-only test).
    """
    from stream.serving_graph import contribution_handover

    art, model = _zoo_graph(tmp_path, algorithm)
    if not contribution_handover(model):
        pytest.skip(f"{algorithm}: its contributions share nothing costly with its score")
    whole = Scorer(art, providers="cpu", contributions="all")  # type: ignore[arg-type]
    relay = Scorer(art, providers="cpu", contributions="handover")  # type: ignore[arg-type]
    assert relay.contributions_on_demand and relay.handed_over == tuple(contribution_handover(model))
    gen = SyntheticStream(n_features=6, seed=4)
    X, _ = gen.sample(400, anomaly_rate=0.05)
    X[::11, 1] = gen.mean[1] + 20 * gen.scale[1]
    X[::37, 3] = np.nan
    for n in (1, 7, 33, 400):
        a, b = whole.score(X[:n]), relay.score(X[:n])
        for field in ("raw", "score", "anomalous_rows", "severity", "top_features"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=f"{field} at {n} rows")
        np.testing.assert_allclose(a.top_shares, b.top_shares, rtol=1e-5, atol=1e-6)
    assert whole.score(X).anomaly.sum() >= 30


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_complete_batches_without_imputation_score_the_same_for_every_zoo_graph(algorithm: str, tmp_path: Path) -> None:
    art = _zoo_artifact(tmp_path, algorithm)
    gen = SyntheticStream(n_features=6, seed=8)
    X, _ = gen.sample(400, anomaly_rate=0.05)
    X[::11, 1] = gen.mean[1] + 20 * gen.scale[1]
    X[::13, 2] = 1e30
    X[::17, 4] = -np.inf
    gaps = X.copy()
    gaps[::7, 3] = np.nan
    for contributions in ("all", "alerting"):
        imputing = Scorer(art, providers="cpu", contributions=contributions, imputation="always")  # type: ignore[arg-type]
        skipping = Scorer(art, providers="cpu", contributions=contributions, imputation="skip")  # type: ignore[arg-type]
        assert skipping.complete_batches_skip_imputation and not imputing.complete_batches_skip_imputation
        for data in (X, gaps):
            for n in (1, 7, 8, 33, 400):
                a, b = imputing.score(data[:n]), skipping.score(data[:n])
                for field in ("raw", "score", "anomaly", "severity", "anomalous_rows", "top_features", "top_shares"):
                    np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=f"{field} at {n} rows")


def test_graph_without_imputation_drops_only_the_imputation(tmp_path: Path) -> None:
    from stream.serving_graph import without_imputation

    _, model = _zoo_graph(tmp_path, "pca")
    stripped = without_imputation(model)
    assert stripped is not None and without_imputation(stripped) is None
    kept = [n.op_type for n in stripped.graph.node]
    assert len(kept) == len(model.graph.node) - 2 and "IsNaN" not in kept
    assert "medians" not in {t.name for t in stripped.graph.initializer}
    X, _ = SyntheticStream(n_features=6, seed=2).sample(50, anomaly_rate=0.0)
    full, bare = _cpu(model), _cpu(stripped)
    np.testing.assert_array_equal(full.run(None, {"features": X})[0], bare.run(None, {"features": X})[0])
    X[0, 0] = np.nan  # the stripped graph no longer imputes: the core must not hand it such a row
    assert np.isnan(bare.run(["score"], {"features": X})[0][0])
    assert np.isfinite(full.run(["score"], {"features": X})[0][0])


def test_top_contributions_order_ties_and_nan_the_same_at_any_row_count() -> None:
    from stream.core import _top_k

    row = np.array([0.0, 0.5, np.nan, 0.5, 0.0, 0.25], dtype=np.float32)
    for m in (1, 3, 129, 300):
        idx, shares = _top_k(np.tile(row, (m, 1)), 3)
        assert idx.tolist() == [[1, 3, 5]] * m
        assert shares.tolist() == [[0.5, 0.5, 0.25]] * m
    idx, shares = _top_k(np.tile(np.array([np.nan, 0.0, np.nan], dtype=np.float32), (200, 1)), 3)
    assert idx.tolist() == [[1, 0, 2]] * 200


def _limit_rows(model: object, seed: int, *, nan: bool = False) -> np.ndarray:
    """Rows holding every grid limit of an HBOS graph, its float32 neighbours, random values, zeros, infinities (and NaN)."""
    from onnx import numpy_helper

    limits = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "grid_thresholds"))  # type: ignore[attr-defined]
    width = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value  # type: ignore[attr-defined]
    limits = limits.reshape(width, -1).T
    rng = np.random.default_rng(seed)
    columns = []
    for j in range(limits.shape[1]):
        lim = limits[:, j][np.isfinite(limits[:, j])]
        columns.append(np.concatenate([
            lim, np.nextafter(lim, np.float32(np.inf)), np.nextafter(lim, np.float32(-np.inf)),
            rng.uniform(lim.min() - 1, lim.max() + 1, 300).astype(np.float32),
            np.array([0.0, -0.0, 1e-45, -1e-45, 1e-38, 3e38, -3e38, np.inf, -np.inf, *([np.nan] if nan else [])],
                     dtype=np.float32),
        ]))
    n = max(c.size for c in columns)
    X = np.stack([np.resize(c, n) for c in columns], axis=1).astype(np.float32)
    return np.vstack([X, rng.permuted(X, axis=0)])


def test_fused_affine_grid_scores_bit_for_bit_on_every_limit_and_its_neighbours(tmp_path: Path) -> None:
    """HBOS's grid step ``z * 2**p + bias`` as one BatchNormalization: same bits, on the bin limits too."""
    from stream.serving_graph import fused_affine

    art, model = _zoo_graph(tmp_path, "hbos")
    fused = fused_affine(model)
    assert fused is not None and fused_affine(fused) is None
    ops = [n.op_type for n in fused.graph.node]
    # The grid's Mul and Add as one node; the flat layout's offset Add as another.
    assert ops.count("BatchNormalization") == 2 and len(ops) == len(model.graph.node) - 1
    X = _limit_rows(model, seed=0, nan=True)
    a, b = _cpu(model), _cpu(fused)
    for want, got in zip(a.run(None, {"features": X}), b.run(None, {"features": X})):
        np.testing.assert_array_equal(got, want)
    # The core runs the fused graph on the CPU: its raw scores are the artifact's own.
    np.testing.assert_array_equal(Scorer(art, providers="cpu").score(X).raw, a.run(["score"], {"features": X})[0])


def test_fused_affine_leaves_other_scales_alone() -> None:
    """A scale that is not a positive power of two would round its products: that Mul stays a Mul."""
    from onnx import TensorProto, helper, numpy_helper

    from stream.serving_graph import fused_affine

    def graph(scale: list[float]) -> object:
        return helper.make_model(helper.make_graph(
            [helper.make_node("Mul", ["x", "s"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
            [numpy_helper.from_array(np.array(scale, dtype=np.float32), "s"),
             numpy_helper.from_array(np.array([1.0, -3.0], dtype=np.float32), "b")],
        ), opset_imports=[helper.make_opsetid("", 17)], ir_version=8)

    X = np.array([[0.3, -7.1], [-0.0, 0.0], [1e-40, 3e38], [np.inf, -np.inf], [np.nan, 2.5]], dtype=np.float32)
    for scale, ops in (([0.1, 4.0], ["Mul", "BatchNormalization"]), ([-4.0, 4.0], ["Mul", "BatchNormalization"]),
                       ([0.125, 4.0], ["BatchNormalization"])):
        model = graph(scale)
        fused = fused_affine(model)
        assert fused is not None and [n.op_type for n in fused.graph.node] == ops, scale
        want, got = _cpu(model).run(None, {"x": X})[0], _cpu(fused).run(None, {"x": X})[0]
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))  # -0.0 and NaN bits too


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_fused_affine_is_bit_identical_for_every_zoo_graph(algorithm: str, tmp_path: Path) -> None:
    """Every per-column step rewritten as a BatchNormalization gives the artifact's bits, on extreme values too."""
    from stream.serving_graph import fused_affine

    _, model = _zoo_graph(tmp_path, algorithm)
    fused = fused_affine(model)
    if fused is None:
        pytest.skip(f"{algorithm}: no per-column affine step on the input side")
    assert "BatchNormalization" in {n.op_type for n in fused.graph.node}
    gen = SyntheticStream(n_features=6, seed=21)
    X, _ = gen.sample(600, anomaly_rate=0.05)
    rng = np.random.default_rng(1)
    for value in (np.inf, -np.inf, 1e30, -1e30, 0.0, -0.0, 1e-40, np.nan):
        X[rng.random(X.shape) < 0.03] = value
    X = X.astype(np.float32)
    for want, got in zip(_cpu(model).run(None, {"features": X}), _cpu(fused).run(None, {"features": X})):
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("rows", [1, 2, 47, 48, 49, 256, 639, 640, 641, 4096])
def test_calibration_is_numpys_interp_at_every_batch_size(scorer: Scorer, rows: int) -> None:
    # Batch sizes take different ways (np.interp as it comes, on sorted scores, the grid lookup):
    # every way gives np.interp's bits, for unordered scores with ties, knots, NaN and infinities.
    rng = np.random.default_rng(rows)
    xp = scorer.card.calibration.raw
    pool = np.concatenate([
        rng.uniform(xp[0] - 1, xp[-1] + 1, 4000), xp, np.nextafter(xp, np.inf), np.nextafter(xp, -np.inf),
        [-np.inf, np.inf, np.nan, 0.0, -0.0],
    ]).astype(np.float32)
    raw = rng.choice(pool, rows)
    want = np.interp(raw, np.asarray(xp), np.asarray(scorer.card.calibration.calibrated), left=0.0, right=1.0)
    np.testing.assert_array_equal(scorer.calibrate(raw), want)


_FIELDS = ("raw", "score", "anomaly", "severity", "anomalous_rows", "top_features", "top_shares")


@pytest.mark.skipif(not grid_available(), reason="the extension module (stream/_native/grading.c) is not built")
def test_grid_lookup_compiled_gives_the_graphs_bits_on_every_limit(tmp_path: Path) -> None:
    """HBOS's graph without imputation: the compiled lookup then the tail equal the whole graph, bit for bit."""
    from stream.native import GridSplit
    from stream.serving_graph import fused_affine, grid_cut, without_imputation

    art, model = _zoo_graph(tmp_path, "hbos")
    assert grid_cut(model) is None  # the artifact's graph imputes: its lookup reads imputed rows
    complete = without_imputation(fused_affine(model) or model)
    cut = grid_cut(complete)
    assert cut is not None and [n.op_type for n in cut.tail.graph.node][:2] == ["ReduceSum", "Add"]
    split = GridSplit(cut, _cpu)
    X = _limit_rows(model, seed=1)
    names = ["score", "contributions"]
    for rows in (X, X[:1], X[:16]):
        for want, got in zip(_cpu(complete).run(names, {"features": rows}), split.run(names, {"features": rows})):
            np.testing.assert_array_equal(got, want)
    # the plain C loop (CPUs without AVX-512) gives the same terms
    from stream.native import grading

    args = (cut.pos_scale, cut.pos_bias, cut.flat_scale, cut.flat_bias, cut.low, cut.high, cut.thresholds, cut.values)
    vector, portable = np.empty_like(X), np.empty_like(X)
    grading.grid_terms(X, vector, *args)
    grading.grid_terms(X, portable, *args, True)
    np.testing.assert_array_equal(portable, vector)
    # The core takes it for NaN-free batches, where native="never" runs the graph: the same results.
    auto, never = Scorer(art, providers="cpu"), Scorer(art, providers="cpu", native="never")  # type: ignore[arg-type]
    whole_batches = Scorer(art, providers="cpu", pieces="never")  # type: ignore[arg-type]
    assert isinstance(getattr(whole_batches._complete_c, "__self__", None), GridSplit)
    for rows in (X[:2], X[:300], X):
        _assert_same_scores(auto.score(rows), never.score(rows), f"{len(rows)} rows")
    for other in ("loda", "iforest", "ecod"):
        _, graph = _zoo_graph(tmp_path / other, other)
        assert grid_cut(without_imputation(graph) or graph) is None, other


def _assert_same_scores(a: object, b: object, what: str) -> None:
    for field in _FIELDS:
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=f"{what}, {field}")


def _rows_to_cut(root: Path, algorithm: str, *, seed: int, rows: int) -> tuple[object, np.ndarray, np.ndarray, list[str]]:
    """A zoo artifact, rows with far values and NaN, the same rows completed, and the contributions ways to try."""
    from stream.serving_graph import contribution_handover

    art, model = _zoo_graph(root, algorithm)
    gen = SyntheticStream(n_features=6, seed=seed)
    X, _ = gen.sample(rows, anomaly_rate=0.05)
    X[::11, 1] = gen.mean[1] + 20 * gen.scale[1]
    X[::37, 3] = np.nan
    complete = X.copy()
    complete[::37, 3] = 0.0
    return art, X, complete, ["all", "alerting"] + (["handover"] if contribution_handover(model) else [])


def _all_alerting(X: np.ndarray) -> np.ndarray:
    """``X`` with every row moved out on two features: batches whose rows nearly all alert."""
    far = X.copy()
    far[:, 1:3] += 6 * np.nanstd(X[:, 1:3], axis=0)
    return far


def _one_call(art: object, contributions: str, X: np.ndarray, step: int) -> tuple[Scorer, bool]:
    """A scorer that never cuts, and whether ``X`` scored ``step`` rows at a time gives its one call's scores.

    Matrix products may round a row differently in batches of other sizes:
    such graphs are not cut.
    """
    one = Scorer(art, providers="cpu", contributions=contributions, imputation="skip",  # type: ignore[arg-type]
                 pieces="never")
    assert one.parallel_rows == one.piece_rows == 0
    steps = np.concatenate([one.score(X[i:i + step]).raw for i in range(0, X.shape[0], step)])
    return one, np.array_equal(one.score(X).raw, steps)


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_batches_cut_into_parts_score_bit_for_bit_like_one_call(algorithm: str, tmp_path: Path) -> None:
    """``threads`` above 1 on the CPU: parts scored side by side, joined, equal one call in every field."""
    art, X, complete, ways = _rows_to_cut(tmp_path, algorithm, seed=9, rows=400)
    for contributions in ways:
        one, cuttable = _one_call(art, contributions, complete[:128], 64)
        for threads in (2, 3):
            cut = Scorer(art, providers="cpu", threads=threads, contributions=contributions,  # type: ignore[arg-type]
                         imputation="skip", parallel="always", pieces="never")
            assert cut.parallel_rows == (128 if cuttable else 0), f"{algorithm}: cuttable={cuttable}"
            for data in (X, complete, _all_alerting(X)):
                for n in (1, 127, 128, 129, 200, 400):
                    _assert_same_scores(one.score(data[:n]), cut.score(data[:n]),
                                        f"{contributions}, {threads} threads at {n}")
    assert one.score(X).anomaly.sum() >= 30 and one.score(_all_alerting(X)).anomaly.mean() > 0.9


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_batches_in_pieces_score_bit_for_bit_like_one_call(algorithm: str, tmp_path: Path) -> None:
    """Large batches scored as consecutive pieces of 128 rows, alone and within parts, equal one call."""
    art, X, complete, ways = _rows_to_cut(tmp_path, algorithm, seed=19, rows=2100)
    for contributions in ways:
        one, cuttable = _one_call(art, contributions, complete[:1024], 128)
        cut = Scorer(art, providers="cpu", contributions=contributions, imputation="skip",  # type: ignore[arg-type]
                     pieces="always")
        both = Scorer(art, providers="cpu", threads=2, contributions=contributions,  # type: ignore[arg-type]
                      imputation="skip", pieces="always", parallel="always")
        assert cut.piece_rows == both.piece_rows == (512 if cuttable else 0), f"{algorithm}: cuttable={cuttable}"
        for data in (X, complete, _all_alerting(X)):
            for n in (1, 511, 512, 513, 1025, 1100, 2100):
                a = one.score(data[:n])
                _assert_same_scores(a, cut.score(data[:n]), f"{contributions}, pieces at {n}")
                _assert_same_scores(a, both.score(data[:n]), f"{contributions}, parts in pieces at {n}")
    assert one.score(X).anomaly.sum() >= 150 and one.score(_all_alerting(X)).anomaly.mean() > 0.9


def test_pieces_never_always_and_auto_choices(tmp_path: Path) -> None:
    """``auto`` takes turns between the ways on the first large batches, then keeps one; every turn scores alike."""
    art = _zoo_artifact(tmp_path, "lof")
    # One contributions way for both (``auto`` races at each load, and the ways' shares agree to rounding).
    never = Scorer(art, providers="cpu", pieces="never", contributions="handover")  # type: ignore[arg-type]
    assert never.piece_rows == 0 and never.pieces_kept is None
    assert Scorer(art, providers="cpu", pieces="always").pieces_kept is True  # type: ignore[arg-type]
    auto = Scorer(art, providers="cpu", contributions="handover")  # type: ignore[arg-type]
    assert auto.piece_rows == 512 and auto.pieces_kept is None
    X, _ = SyntheticStream(n_features=6, seed=4).sample(20 * 600, anomaly_rate=0.02)
    auto.score(X[:511])
    assert auto.pieces_kept is None  # batches below 512 rows are not timed
    for i in range(20):
        batch = X[i * 600:(i + 1) * 600]
        _assert_same_scores(auto.score(batch), never.score(batch), f"batch {i}")
        if i < 15:
            assert auto.pieces_kept is None, f"decided after {i + 1} batches"
    assert isinstance(auto.pieces_kept, bool)


def test_pieces_are_chosen_on_served_batches_not_on_the_loads_timings(tmp_path: Path) -> None:
    """With two threads the load times parts on up to 4,096 probe rows; the pieces' turns start after it."""
    art = _zoo_artifact(tmp_path, "hbos")  # a cheap graph: parts rarely pay, so the load times large batches
    two = Scorer(art, providers="cpu", threads=2)  # type: ignore[arg-type]
    assert two.piece_rows == 512 and two.pieces_kept is None
    X, _ = SyntheticStream(n_features=6, seed=6).sample(16 * 1100, anomaly_rate=0.02)
    for i in range(16):
        two.score(X[i * 1100:(i + 1) * 1100])
    assert isinstance(two.pieces_kept, bool)


def test_parallel_never_always_and_auto_choices(tmp_path: Path) -> None:
    """``auto`` takes turns between one call and parts on the served batches, then keeps one; every turn scores alike."""
    art = _zoo_artifact(tmp_path, "lof")
    never = Scorer(art, providers="cpu", threads=2, parallel="never", pieces="never")  # type: ignore[arg-type]
    assert never.parallel_rows == 0 and never.parts_kept is None
    always = Scorer(art, providers="cpu", threads=2, parallel="always")  # type: ignore[arg-type]
    assert always.parallel_rows == 128 and always.parts_kept is True
    auto = Scorer(art, providers="cpu", threads=2, pieces="never", contributions="handover")  # type: ignore[arg-type]
    # The load's timings only say where the served batches start taking turns (256 where no size paid).
    assert auto.parallel_rows in (128, 256, 1024, 4096) and auto.parts_kept is None
    one = Scorer(art, providers="cpu", pieces="never", contributions="handover")  # type: ignore[arg-type]
    turns = 2 * _PARALLEL_TRIALS
    X, _ = SyntheticStream(n_features=6, seed=3).sample((turns + 2) * 300, anomaly_rate=0.02)
    auto.score(X[:auto.parallel_rows - 1])
    assert auto.parts_kept is None  # smaller batches are not timed
    size = max(300, auto.parallel_rows)
    for i in range(turns + 2):
        batch = np.resize(X[i * 300:(i + 1) * 300], (size, X.shape[1]))
        _assert_same_scores(auto.score(batch), one.score(batch), f"batch {i}")
        if i < turns - 1:
            assert auto.parts_kept is None, f"decided after {i + 1} batches"
    assert isinstance(auto.parts_kept, bool)


def test_parts_take_turns_again_after_a_while_and_follow_the_machine() -> None:
    """A choice holds ``retry_s``; then the served batches take turns again and the choice can change."""
    from concurrent.futures import ThreadPoolExecutor
    from time import sleep

    from stream.core import _Parts

    cost = {"whole": 0.001, "part": 0.004}  # seconds a call sleeps: parts slower than one call at first
    calls: list[int] = []

    def run(names: list[str], feed: dict[str, np.ndarray], options: object) -> list[np.ndarray]:
        x = feed["features"]
        calls.append(x.shape[0])
        sleep(cost["whole" if x.shape[0] == 256 else "part"])
        return [x[:, 0] * 2.0]

    with ThreadPoolExecutor(1) as pool:
        parts = _Parts(run, 2, 256, pool)
        parts.retry_s = 3600.0
        parts.take_turns(4)
        X = np.arange(256 * 3, dtype=np.float32).reshape(256, 3)
        for _ in range(9):
            np.testing.assert_array_equal(parts(["y"], {"features": X}, None)[0], X[:, 0] * 2.0)
        assert parts.kept is False and calls.count(256) == 4 + 1  # 4 turns in one call, then the one chosen
        cost.update(whole=0.008, part=0.001)  # the other core is free now: parts pay
        calls.clear()
        parts(["y"], {"features": X}, None)
        assert parts.kept is False and calls == [256]  # the choice holds until retry_s has passed
        parts.next_trial = 0.0  # retry_s has passed
        for _ in range(8):
            np.testing.assert_array_equal(parts(["y"], {"features": X}, None)[0], X[:, 0] * 2.0)
        assert parts.kept is True
        calls.clear()
        parts(["y"], {"features": X}, None)
        assert sorted(calls) == [128, 128]
