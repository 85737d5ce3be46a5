"""Drift monitors on seeded streams with known change points (STYLE.md §9), the retrain loop, cold start."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from stream.coldstart import ColdStartScorer
from stream.control import DriftLoop, RetrainPolicy
from stream.drift import Cusum, DriftMonitor, InputMonitor, InputReference, ScoreMonitor, lindley
from stream.synthetic import SyntheticStream
from stream.trainer import judge

FEATURES = tuple(f"f{i}" for i in range(12))
BUDGET = 1_000_000


def _stream(n: int, *, seed: int, change_at: int | None = None, sd: float = 3.0, features: int = 4,
            ramp: int = 0) -> tuple[NDArray[np.float32], NDArray[np.float64]]:
    """Rows of a 12-feature correlated Gaussian and a calibrated-like score (the χ² CDF of the z-norm).

    From ``change_at`` the mean of the first ``features`` features moves by ``sd`` standard deviations
    (abruptly, or linearly over ``ramp`` events).
    """
    g = SyntheticStream(n_features=12, seed=seed)
    X, _ = g.sample(n, anomaly_rate=0.01)
    if change_at is not None:
        t = np.arange(n) - change_at
        frac = np.clip(t / ramp, 0, 1) if ramp else (t >= 0).astype(float)
        X[:, :features] += (frac[:, None] * sd * g.scale[:features]).astype(np.float32)
    z = (X - g.mean) / g.scale
    r = np.sqrt((z**2).sum(axis=1))
    score = 1 - np.exp(-0.5 * (r / 3.0) ** 2)  # monotone in the distance, bounded in [0, 1]
    return X, score


def _feed(mon: DriftMonitor, X: NDArray[np.float32], score: NDArray[np.float64], *, seed: int) -> list[tuple[str, int]]:
    """Feed in batches of random sizes (1..512), as the runner does."""
    rng = np.random.default_rng(seed)
    out, i = [], 0
    while i < X.shape[0]:
        b = int(rng.integers(1, 513))
        s = score[i:i + b]
        out += [(d.signal, d.index) for d in mon.update(X[i:i + b], s, s >= 0.99)]
        i += b
    return out


def test_lindley_matches_the_scalar_recursion() -> None:
    x = np.random.default_rng(0).normal(-0.1, 1, size=1000)
    s, ref = 3.0, []
    for v in x:
        s = max(0.0, s + v)
        ref.append(s)
    np.testing.assert_allclose(lindley(3.0, x), ref)


def test_cusum_reports_the_first_crossing_and_resets() -> None:
    c = Cusum(k=0.5, h=4.0, two_sided=False)
    assert c.update(np.zeros(100)) is None
    hit = c.update(np.array([0.0, 2.0, 2.0, 2.0, 2.0]))
    assert hit is not None and hit[0] == 3 and c.up == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_long_stationary_stream_raises_nothing(seed: int) -> None:
    X, score = _stream(200_000, seed=seed)
    mon = DriftMonitor(features=FEATURES, reference=None, false_alarm_events=BUDGET)
    assert _feed(mon, X, score, seed=seed) == []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_abrupt_shift_is_detected_right_after_the_change(seed: int) -> None:
    X, score = _stream(60_000, seed=seed, change_at=30_000)
    mon = DriftMonitor(features=FEATURES, reference=None, false_alarm_events=BUDGET)
    found = _feed(mon, X, score, seed=seed)
    first = {}
    for signal, index in found:
        first.setdefault(signal, index)
    assert set(first) == {"score", "anomaly_rate", "input"}, found
    assert all(30_000 < i <= 32_000 for i in first.values()), first
    assert 30_000 < min(i for _, i in found) <= 30_500  # nothing before the change, the first right after


def test_input_monitor_names_the_shifted_features_and_uses_the_card_reference() -> None:
    X, _ = _stream(40_000, seed=5, change_at=20_000)
    ref = InputReference.fit(X[:10_000], FEATURES)
    again = InputReference.from_dict(ref.to_dict(), FEATURES)
    np.testing.assert_array_equal(again.edges, ref.edges)
    mon = InputMonitor(features=FEATURES, reference=again, false_alarm_events=BUDGET)
    hits = mon.update(X)
    assert len(hits) == 1 and 20_000 < hits[0].index <= 20_500
    assert set(hits[0].features) == {"f0", "f1", "f2", "f3"}


def test_missing_values_count_as_a_bin() -> None:
    X, _ = _stream(30_000, seed=6)
    X[15_000:, 5] = np.nan  # the feature stops arriving at event 15,000
    mon = InputMonitor(features=FEATURES, reference=InputReference.fit(X[:10_000], FEATURES), false_alarm_events=BUDGET)
    hits = mon.update(X)
    assert len(hits) == 1 and hits[0].features[0] == "f5" and 15_000 < hits[0].index <= 15_500


def test_gradual_ramp_is_detected_during_the_ramp() -> None:
    X, score = _stream(120_000, seed=7, change_at=30_000, sd=3.0, ramp=60_000)
    mon = DriftMonitor(features=FEATURES, reference=None, false_alarm_events=BUDGET)
    found = _feed(mon, X, score, seed=7)
    assert found and 30_000 < min(i for _, i in found) < 90_000


def test_score_warmup_on_saturated_scores_stays_quiet() -> None:
    mon = ScoreMonitor(false_alarm_events=BUDGET, warmup_events=1000, cooldown_events=1000)
    rng = np.random.default_rng(0)
    s = np.where(rng.uniform(size=50_000) < 0.999, 1.0, rng.uniform(size=50_000))  # a model that no longer fits
    assert mon.update(s, s >= 0.99) == []


def test_drift_loop_requests_one_retrain_after_min_events_with_the_positions_at_detection() -> None:
    X, score = _stream(40_000, seed=8, change_at=20_000)
    policy = RetrainPolicy(min_interval_s=3600, max_per_day=6, min_events=5000)
    loop = DriftLoop(model="default@1", features=FEATURES, reference=None, policy=policy, retrain_window=8000,
                     topics=["events"], false_alarm_events=BUDGET)
    events = []
    for i in range(0, 40_000, 500):
        s = score[i:i + 500]
        events += loop.observe(X[i:i + 500], s, s >= 0.99, {("events", 0): i + 500}, ids=list(range(i, i + 500)),
                               now=float(i))
    kinds = [e["type"] for e in events]
    assert kinds.count("retrain_requested") == 1 and "drift" in kinds
    drift = next(e for e in events if e["type"] == "drift")
    assert 20_000 <= drift["id"] < 21_000 and drift["model"] == "default@1"
    req = next(e for e in events if e["type"] == "retrain_requested")
    assert req["trigger"] == "drift" and req["window_events"] == 8000 and req["features"] == list(FEATURES)
    assert 20_000 <= req["from"]["events"]["0"] <= drift["id"] + 1


def test_policy_respects_max_per_day_on_a_ramp() -> None:
    p = RetrainPolicy(min_interval_s=0, max_per_day=3, min_events=0)
    sent = 0
    for hour in range(48):
        p.arm("drift", at_event=hour, positions={})
        sent += p.poll(events=hour, now=hour * 3600.0) is not None
    assert sent == 6  # 3 in each 24 hours


def test_judge_promotes_a_sane_candidate_over_a_drifted_champion_only() -> None:
    rng = np.random.default_rng(0)
    fits = rng.uniform(size=4000)
    drifted = np.minimum(fits + 0.5, 1.0)
    assert judge(fits, 0.99, drifted, 0.99).passed
    assert not judge(fits, 0.99, fits, 0.99).passed                 # champion still fits: keep it
    assert judge(fits, 0.99, None, None).passed                      # cold start: no champion
    assert not judge(drifted, 0.99, None, None).passed               # an insane candidate never passes


def test_coldstart_scores_in_unit_range_and_ranks_anomalies_higher() -> None:
    g = SyntheticStream(n_features=6, seed=3)
    scorer = ColdStartScorer()
    scorer.adopt_features(g.features)
    gaps = []
    for _ in range(20):
        X, y = g.sample(500, anomaly_rate=0.02)
        out = scorer.score(X)
        assert out.score.min() >= 0 and out.score.max() <= 1 and out.score.shape == (500,)
        if y.any():
            gaps.append(out.score[y == 1].mean() - out.score[y == 0].mean())
    assert np.mean(gaps[5:]) > 0.2
    assert scorer.ref == "coldstart@0"
