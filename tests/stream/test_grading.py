"""The compiled grading (stream/_native/grading.c) against the core's numpy path, bit for bit."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from models.artifact import Artifact, Card
from models.calibration import Calibration, SeverityScale
from models.pipeline import Pipeline
from models.preprocessing import Preprocessor
from models.zoo import make_detector
from stream.core import Scorer
from stream.native import grading
from stream.synthetic import SyntheticStream

pytestmark = pytest.mark.skipif(grading is None, reason="stream._native._grading not built (hatch_build.py)")

_D = 6
_SIZES = (2, 3, 16, 47, 48, 256, 639, 640, 4096)
_FIELDS = ("raw", "score", "anomaly", "severity", "anomalous_rows", "top_features", "top_shares")


@pytest.fixture(scope="module")
def fitted() -> tuple[Pipeline, np.ndarray]:
    X, _ = SyntheticStream(n_features=_D, seed=11).sample(2000, anomaly_rate=0.01)
    return Pipeline(preprocessor=Preprocessor(scaler="standard"), detector=make_detector("hbos")).fit(X), X


def _cards(train_scores: np.ndarray) -> dict[str, tuple[Calibration, float, SeverityScale]]:
    """Calibrations, thresholds and cuts taking every branch of the grading.

    Thresholds and cuts are calibrated values of knots, so scores land on them exactly.
    """
    fit = Calibration.fit(train_scores)
    at = fit.calibrated
    # float32 knots a few ulps apart in a wide span: several knots share a grid cell (KnotLookup's k > 1)
    lo, hi = np.float32(train_scores.min()), np.float32(train_scores.max())
    close = [lo]
    for _ in range(5):
        close.append(np.nextafter(close[-1], np.float32(np.inf)))
    tight = np.unique(np.concatenate([close, np.linspace(lo + 1e-3, hi, 40, dtype=np.float32)]))
    tight_cal = Calibration(raw=tuple(tight.astype(np.float64).tolist()),
                            calibrated=tuple(np.linspace(0.0, 1.0, tight.size).tolist()))
    t = tight_cal.calibrated
    # values growing 1.5-4 times from knot to knot: on some knots the segment below's formula,
    # slope * (x - xp[j-1]) + fp[j-1], misses fp[j] (so the count of knots at or below x must be exact)
    rng = np.random.default_rng(0)
    growth = np.cumprod(rng.uniform(1.5, 4.0, 39))
    steep = Calibration(raw=tuple(np.sort(rng.uniform(lo, hi, 40)).tolist()),
                        calibrated=(0.0, *(growth / growth[-1]).tolist()))
    s = steep.calibrated
    # the last knot's value below 1: scores above it jump to 1 (KnotLookup's fix_right)
    low_top = Calibration(raw=fit.raw, calibrated=tuple(v * 0.995 for v in at))
    return {
        # the usual cuts: the first cut is the threshold, only alerting rows are graded
        "usual": (fit, at[-40], SeverityScale.from_threshold(at[-40])),
        # cuts below the threshold: every row is graded, NaN gets 4
        "graded": (fit, at[-60], SeverityScale(low=at[-120], medium=at[-60], high=at[-20], critical=1.0)),
        "tight": (tight_cal, t[-8], SeverityScale(low=t[3], medium=t[-8], high=t[-3], critical=t[-1])),
        "steep": (steep, s[-3], SeverityScale(low=s[-3], medium=s[-2], high=s[-2], critical=s[-1])),
        "low top": (low_top, low_top.calibrated[-30], SeverityScale.from_threshold(low_top.calibrated[-30])),
        # equal cuts, the first above the threshold
        "flat cuts": (fit, at[-50], SeverityScale(low=at[-40], medium=at[-40], high=at[-10], critical=at[-10])),
    }


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory, fitted: tuple[Pipeline, np.ndarray]) -> dict[str, Artifact]:
    pipe, X = fitted
    root = tmp_path_factory.mktemp("grading")
    features = tuple(f"f{i}" for i in range(_D))
    graph = pipe.to_onnx(list(features))
    out = {}
    for name, (cal, threshold, severity) in _cards(pipe.score_samples(X)).items():
        card = Card(
            name=name.replace(" ", "-"), version=1, features=features, calibration=cal, threshold=threshold,
            severity=severity, medians=dict.fromkeys(features, 0.0), detector=pipe.describe(), training={},
            metrics={}, parity=0.0,
        )
        out[name] = Artifact.write(root / card.name, graph, card)
    return out


def _scorers(art: Artifact) -> tuple[Scorer, Scorer]:
    """The same artifact with the compiled paths and without; one way for contributions (not timed)."""
    kw: dict[str, str] = {"providers": "cpu", "contributions": "all", "pieces": "never"}
    return Scorer(art, native="auto", **kw), Scorer(art, native="never", **kw)  # type: ignore[arg-type]


def _numpy_path(scorer: Scorer, raw: np.ndarray) -> tuple[np.ndarray, ...]:
    """``Scorer.score``'s numpy steps after the graph."""
    score = scorer.calibrate(raw)
    anomaly = score >= scorer.threshold
    rows = anomaly.nonzero()[0]
    return score, anomaly, scorer._grade(score, rows), rows


def _compiled(scorer: Scorer, raw: np.ndarray) -> tuple[np.ndarray, ...]:
    assert scorer._grade_c is not None
    n = raw.shape[0]
    score, anomaly = np.empty(n), np.empty(n, dtype=np.bool_)
    severity, rows = np.empty(n, dtype=np.int8), np.empty(n, dtype=np.intp)
    alerts = scorer._grade_c(raw, score, anomaly, severity, rows)
    return score, anomaly, severity, rows[:alerts]


def _raw_pool(cal: Calibration, rng: np.random.Generator) -> np.ndarray:
    """Knots and their neighbours (float64 and float32), values around and between them, NaN, ±inf, ±0."""
    xp = np.asarray(cal.raw)
    x32 = xp.astype(np.float32)
    span = float(xp[-1] - xp[0]) or 1.0
    return np.concatenate([
        rng.uniform(xp[0] - 0.2 * span, xp[-1] + 0.2 * span, 2000),
        xp, np.nextafter(xp, np.inf), np.nextafter(xp, -np.inf),
        x32, np.nextafter(x32, np.float32(np.inf)), np.nextafter(x32, np.float32(-np.inf)),
        [-np.inf, np.inf, np.nan, 0.0, -0.0, xp[0] - 1e6, xp[-1] + 1e6],
    ])


def test_cards_take_both_ways_of_grading(artifacts: dict[str, Artifact]) -> None:
    alerting_only = {name: _scorers(art)[1]._grade_alerting_only for name, art in artifacts.items()}
    assert alerting_only == {"usual": True, "graded": False, "tight": False, "steep": True, "low top": True,
                             "flat cuts": True}
    for art in artifacts.values():  # scores land on the threshold
        assert art.card.threshold in art.card.calibration.calibrated
    tight = artifacts["tight"].card.calibration.lookup()
    assert tight.k > 1
    assert artifacts["low top"].card.calibration.lookup().fix_right
    steep = artifacts["steep"].card.calibration
    xp, fp = np.asarray(steep.raw), np.asarray(steep.calibrated)
    below = np.diff(fp) / np.diff(xp) * np.diff(xp) + fp[:-1]
    assert np.sum(below != fp[1:]) >= 2


@pytest.mark.parametrize("name", ["usual", "graded", "tight", "steep", "low top", "flat cuts"])
def test_compiled_grading_equals_the_numpy_path(name: str, artifacts: dict[str, Artifact]) -> None:
    compiled, plain = _scorers(artifacts[name])
    assert compiled._grade_c is not None and plain._grade_c is None
    rng = np.random.default_rng(len(name))
    pool = _raw_pool(artifacts[name].card.calibration, rng)
    alerted = 0
    for n in _SIZES:
        for dtype in (np.float32, np.float64):
            raw = rng.choice(pool, n).astype(dtype)
            want, got = _numpy_path(plain, raw), _compiled(compiled, raw)
            for field, w, g in zip(("score", "anomaly", "severity", "anomalous_rows"), want, got, strict=True):
                assert g.dtype == w.dtype, (n, field)
                assert np.array_equal(g, w, equal_nan=field == "score"), f"{name}, {n} rows {dtype}, {field}"
            alerted += int(want[3].size)
    assert alerted > 100  # the pool alerts often enough to test the severity of alerting rows


def test_a_grader_refuses_tables_and_cuts_it_cannot_grade_like_numpy(artifacts: dict[str, Artifact]) -> None:
    lk = artifacts["usual"].card.calibration.lookup()
    args = (lk.base_x, lk.base_y, lk.slope, lk.next_knot, lk.start, lk.inv, lk.k, lk.first, lk.last, lk.right)
    kw = {"fix_right": lk.fix_right, "threshold": 0.99, "alerting_only": True}
    grading.Grader(*args, cuts=np.array([0.9, 0.95, 0.99, 1.0]), **kw)
    for cuts in ([0.95, 0.9, 0.99, 1.0], [0.9, np.nan, 0.99, 1.0], [0.9, 0.99, 1.0]):
        with pytest.raises(ValueError, match="cuts"):
            grading.Grader(*args, cuts=np.array(cuts), **kw)
    with pytest.raises(ValueError, match="knot table"):
        grading.Grader(lk.base_x, lk.base_y, lk.slope, lk.next_knot[:-1], *args[4:], cuts=np.ones(4), **kw)
    with pytest.raises(ValueError, match="knot table"):  # start counts not intp
        grading.Grader(*args[:4], lk.start.astype(np.int32), *args[5:], cuts=np.ones(4), **kw)
    grader = grading.Grader(*args, cuts=np.ones(4), **kw)
    out = (np.empty(4), np.empty(4, dtype=np.bool_), np.empty(4, dtype=np.int8), np.empty(4, dtype=np.intp))
    with pytest.raises(TypeError, match="outputs"):
        grader.run(np.zeros(5, dtype=np.float32), *out)
    with pytest.raises(TypeError, match="outputs"):
        grader.run(np.zeros(4, dtype=np.float16), *out)
    with pytest.raises((BufferError, ValueError)):  # not contiguous
        grader.run(np.zeros(4, dtype=np.float32), np.empty(8)[::2], *out[1:])
    frozen = np.empty(4)
    frozen.flags.writeable = False
    with pytest.raises((BufferError, ValueError)):
        grader.run(np.zeros(4, dtype=np.float32), frozen, *out[1:])
    assert grader.run(np.array([lk.first, np.nan, lk.last, np.inf]), *out) == 2  # float64 raw scores too
    assert out[0][[0, 2, 3]].tolist() == [0.0, 1.0, 1.0] and out[1].tolist() == [False, False, True, True]
    assert out[2].tolist() == [0, 0, 4, 4] and out[3][:2].tolist() == [2, 3]


def test_unsorted_cuts_keep_the_numpy_path(tmp_path: Path, artifacts: dict[str, Artifact]) -> None:
    """A card read from disk has sorted cuts (``SeverityScale.from_dict``); one made in memory may not."""
    odd = replace(artifacts["usual"].card, name="odd", severity=SeverityScale(low=0.99, medium=0.9, high=0.999))
    art = Artifact.write(tmp_path / "odd", artifacts["usual"].model_path.read_bytes(), odd)
    assert Scorer(art, providers="cpu")._grade_c is None


@pytest.mark.parametrize("name", ["usual", "graded", "low top"])
def test_scorer_with_the_compiled_grading_scores_like_numpy(name: str, artifacts: dict[str, Artifact]) -> None:
    """Every ScoredBatch field, with dtypes, on batches of every size; some with NaN and far rows."""
    compiled, plain = _scorers(artifacts[name])
    gen = SyntheticStream(n_features=_D, seed=12)
    rows, _ = gen.sample(4096, anomaly_rate=0.05)
    rows[::13, 2] = gen.mean[2] + 30 * gen.scale[2]
    rows[::29, 4] = np.nan
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    for n in (1, *_SIZES):
        for batch in (rows[:n], rows[-n:]):
            want, got = plain.score(batch), compiled.score(batch)
            for field in _FIELDS:
                w, g = getattr(want, field), getattr(got, field)
                assert g.dtype == w.dtype, (name, n, field)
                np.testing.assert_array_equal(g, w, err_msg=f"{name}, {n} rows, {field}")
    assert plain.score(rows).anomalous_rows.size > 200
