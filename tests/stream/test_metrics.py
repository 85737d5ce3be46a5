from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from stream.metrics import Metrics, observe_many


def test_observe_many_equals_observing_one_by_one() -> None:
    buckets = (0.001, 0.01, 0.1, 1.0)
    values = np.array([0.0005, 0.001, 0.001, 0.005, 0.01, 0.5, 1.0, 3.0, 0.02])  # bounds included
    r1, r2 = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("h", "x", buckets=buckets, registry=r1)
    h2 = Histogram("h", "x", buckets=buckets, registry=r2)
    for v in values.tolist():
        h1.observe(v)
    observe_many(h2, values)
    def lines(r: CollectorRegistry) -> list[str]:
        return [ln for ln in generate_latest(r).decode().splitlines() if "_created" not in ln]

    assert lines(r1) == lines(r2)


def test_record_batch_counts_events_and_severities() -> None:
    m = Metrics()
    m.record_batch(source="kafka", events=10, scored=8, inference_s=0.001,
                   latencies_s=np.full(8, 0.004), severities=np.array([1, 1, 4], dtype=np.int8))
    text = generate_latest(m.registry).decode()
    assert 'anomstream_events_total{source="kafka"} 10.0' in text
    assert 'anomstream_anomalies_total{severity="low"} 2.0' in text
    assert 'anomstream_anomalies_total{severity="critical"} 1.0' in text
    assert "anomstream_latency_seconds_count 8.0" in text
