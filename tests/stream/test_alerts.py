"""Alert hygiene as documented: severity floor, per-key cooldown, episodes (no asyncio)."""

from __future__ import annotations

from stream.alerts import AlertFilter
from stream.episodes import EpisodeTracker
from stream.sinks import CircuitBreaker, slack_payload

LOW, MEDIUM, HIGH = 1, 2, 3


def _rec(key: str | None, ts: float) -> dict[str, object]:
    return {"id": f"{key}-{ts}", "key": key, "ts": ts, "severity": "high", "score": 0.99, "model": "m@1"}


def test_cooldown_admits_one_alert_per_key_per_window() -> None:
    f = AlertFilter(min_severity="medium", cooldown_s=60)
    assert f.admit(["a", "a", "b"], [HIGH, HIGH, HIGH], now=0.0) == [True, False, True]
    assert f.admit(["a", "b"], [HIGH, HIGH], now=59.9) == [False, False]
    assert f.admit(["a", "b"], [HIGH, LOW], now=60.0) == [True, False]  # window over; low is below the floor
    assert f.admit([None, None], [MEDIUM, MEDIUM], now=60.0) == [True, True]  # keyless: no cooldown


def test_zero_cooldown_admits_every_anomaly_at_or_above_the_floor() -> None:
    f = AlertFilter(min_severity="low", cooldown_s=0)
    assert f.admit(["a", "a", "a"], [LOW, MEDIUM, HIGH], now=0.0) == [True, True, True]


def test_episode_opens_extends_and_closes_after_the_gap() -> None:
    t = EpisodeTracker(gap_s=10)
    first = t.observe("k", ts=1000.0, now=5000.0)
    assert (first.count, first.start, first.last, first.detected_at) == (1, 1000.0, 1000.0, 5000.0)
    for i in range(1, 5):  # anomalies every 9 s of processing time: one episode
        ep = t.observe("k", ts=1000.0 + i, now=5000.0 + 9 * i)
        assert ep.id == first.id
    assert (ep.count, ep.start, ep.last, ep.detected_at) == (5, 1000.0, 1004.0, 5000.0)
    other = t.observe("j", ts=7.0, now=5040.0)
    assert other.id != first.id
    # 10 s without an anomaly of k closes its episode; the next opens a new one.
    assert [e.id for e in t.sweep(now=5046.0)] == [first.id]
    again = t.observe("k", ts=2000.0, now=5047.0)
    assert again.id != first.id and again.count == 1 and again.start == 2000.0
    assert t.closed == 1 and len(t) == 2


def test_episode_start_is_event_time_and_detection_is_processing_time() -> None:
    t = EpisodeTracker(gap_s=60)
    ep = t.observe("k", ts="2024-05-01T10:00:00Z", now=1_714_557_700.0)  # detected 100 s later
    assert ep.as_dict() == {"id": ep.id, "start": "2024-05-01T10:00:00Z", "detected_at": 1_714_557_700.0,
                            "last": "2024-05-01T10:00:00Z", "count": 1}


def test_keyless_anomalies_are_episodes_of_one() -> None:
    t = EpisodeTracker(gap_s=60)
    a, b = t.observe(None, ts=1.0, now=1.0), t.observe(None, ts=1.0, now=1.0)
    assert a.id != b.id and a.count == b.count == 1 and len(t) == 0


def test_alerts_carry_their_episode_and_reminders_keep_its_id() -> None:
    f = AlertFilter(min_severity="medium", cooldown_s=60)
    # An episode starts with a low anomaly; its first alert comes at the first medium one.
    out = f.select([_rec("a", 100.0), _rec("a", 101.0), _rec("a", 102.0)], [LOW, MEDIUM, HIGH], now=1000.0)
    assert [i for i, _ in out] == [1]
    ep = out[0][1]["episode"]
    assert ep["start"] == 100.0 and ep["count"] == 2 and ep["detected_at"] == 1000.0
    assert out[0][1]["key"] == "a" and "episode" not in _rec("a", 0)
    # Anomalies keep arriving every 30 s: one episode; a reminder alert once per cooldown.
    alerts = []
    for step in range(1, 5):
        alerts += f.select([_rec("a", 100.0 + 30 * step)], [HIGH], now=1000.0 + 30 * step)
    assert len(alerts) == 2  # at +60 s and +120 s
    assert {a["episode"]["id"] for _, a in alerts} == {ep["id"]}
    assert [a["episode"]["count"] for _, a in alerts] == [5, 7]
    # Quiet for the cooldown: the episode has closed, the next anomaly opens a new one and alerts.
    (_, fresh), = f.select([_rec("a", 500.0)], [HIGH], now=1000.0 + 120 + 60)
    assert fresh["episode"]["id"] != ep["id"] and fresh["episode"]["count"] == 1


def test_circuit_breaker_opens_and_half_opens() -> None:
    b = CircuitBreaker(failure_threshold=3, reset_s=10)
    for t in range(3):
        assert b.allow(float(t))
        b.record_failure(float(t))
    assert b.state == "open" and not b.allow(5.0)
    assert b.allow(12.5) and b.state == "half_open"
    b.record_failure(12.6)  # the trial failed: open again for another reset_s
    assert b.state == "open" and not b.allow(20.0) and b.allow(22.6)
    b.record_success()
    assert b.state == "closed" and b.failures == 0


def test_slack_payload_has_text_and_blocks() -> None:
    alert = {**_rec("pump", 0.0), "contributions": {"temp": 0.7, "rpm": 0.2},
             "episode": {"id": "e", "start": 0.0, "count": 4}}
    p = slack_payload(alert)
    assert set(p) == {"text", "blocks"} and "pump" in p["text"] and "high" in p["text"]
    body = p["blocks"][1]["text"]["text"]
    assert "`temp` 0.70" in body and "4 anomalies" in body
