"""Alerts and metrics through the whole service (a subprocess on the embedded broker).

Webhooks up (json and slack), down (connection refused) and failing (HTTP
500) at once: the live ones receive every alert, the Kafka alerts topic keeps
every alert, scoring goes on; then every §8 metric is on ``/metrics``.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.broker import ensure_topics
from stream.synthetic import SyntheticStream
from tests.stream.test_kafka_e2e import _config, _consume, _events, _free_port, _produce, _start
from tests.stream.test_sinks import WebhookServer, _closed_port

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

N = 6000
SECTION8 = ("anomstream_events_total", "anomstream_events_rejected_total", "anomstream_anomalies_total",
            "anomstream_batch_size", "anomstream_inference_seconds", "anomstream_latency_seconds",
            "anomstream_model_info", "anomstream_drift_events_total", "anomstream_retrain_total",
            "anomstream_websocket_clients", "anomstream_websocket_dropped_total", "anomstream_alerts_total",
            "anomstream_consumer_lag")


def _serve_config(tmp: Path, broker: str, registry: Path, prefix: str, metrics_port: int,
                  alerts: dict[str, Any]) -> Path:
    cfg = _config(tmp, broker, registry, prefix, metrics_port=metrics_port)
    data = json.loads(cfg.read_text())
    data["alerts"] = alerts
    data["websocket"] = {"enabled": True, "port": _free_port()}
    cfg.write_text(json.dumps(data))
    return cfg


def _run(cfg: Path, log: Path, broker: str, prefix: str) -> tuple[list[Any], list[Any], str, float]:
    proc = _start(cfg, log)
    try:
        scores = asyncio.run(_consume(broker, f"{prefix}.scores", until=N, timeout_s=120, proc=proc))
        alerts = asyncio.run(_consume(broker, f"{prefix}.anomalies", until=1, timeout_s=10, proc=proc))
        port = json.loads(cfg.read_text())["metrics"]["port"]
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    assert rc == 0, log.read_text()[-3000:]
    records = [orjson.loads(m.value) for m in scores]
    at = sorted(r["scored_at"] for r in records)
    rate = len(records) / max(at[-1] - at[0], 1e-3)
    return records, [orjson.loads(m.value) for m in alerts], metrics, rate


def _sample(metrics: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    m = re.search(rf"^{name}\{{{re.escape(want)}\}} (\S+)$", metrics, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def test_webhooks_up_down_and_failing_while_kafka_alerts_and_scoring_go_on(
        broker: str, registry: Path, tmp_path: Path) -> None:
    gen = SyntheticStream(n_features=6, seed=3)
    events = _events(N, gen)
    results = {}
    with WebhookServer() as up, WebhookServer(status=500) as failing:
        for phase, hooks in (("no webhooks", []), ("webhooks up, down and failing", [
            {"url": up.url + "/json", "format": "json"},
            {"url": up.url + "/slack", "format": "slack"},
            {"url": f"http://127.0.0.1:{_closed_port()}/hook", "timeout_s": 1, "backoff_s": 0.2},
            {"url": failing.url, "timeout_s": 1, "backoff_s": 0.2},
        ])):
            prefix = f"alerts-{uuid.uuid4().hex[:8]}"
            asyncio.run(ensure_topics(broker, {f"{prefix}.events": 3}))
            asyncio.run(_produce(broker, f"{prefix}.events", events))
            cfg = _serve_config(tmp_path, broker, registry, prefix, _free_port(), {
                "min_severity": "low", "cooldown_s": 0, "webhooks": hooks,
                "jsonl_path": str(tmp_path / f"{prefix}.jsonl")})
            results[phase] = (prefix, *_run(cfg, tmp_path / f"{prefix}.log", broker, prefix))
        prefix, records, alerts, metrics, _rate = results["webhooks up, down and failing"]
        received = list(up.received)
    for phase, (_, recs, al, _, r) in results.items():
        print(f"\n{phase}: {len(recs)} events scored at {r:,.0f} events/s (backlog), {len(al)} alerts on Kafka")

    assert len({r["id"] for r in records}) == N
    anomalies = [r for r in records if r["anomaly"]]
    assert anomalies and sorted(a["id"] for a in alerts) == sorted(r["id"] for r in anomalies)
    assert all({"id", "start", "detected_at", "last", "count"} <= set(a["episode"]) for a in alerts)
    by_path = Counter(p for p, _ in received)
    assert by_path == {"/json": len(alerts), "/slack": len(alerts)}, by_path
    assert sorted(b["id"] for p, b in received if p == "/json") == sorted(a["id"] for a in alerts)
    assert all(set(b) == {"text", "blocks"} for p, b in received if p == "/slack")
    lines = (tmp_path / f"{prefix}.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["id"] for x in lines) == sorted(a["id"] for a in alerts)

    n = len(alerts)
    assert _sample(metrics, "anomstream_alerts_total", sink="kafka", status="sent") == n
    assert _sample(metrics, "anomstream_alerts_total", sink="jsonl", status="sent") == n
    assert _sample(metrics, "anomstream_alerts_total", sink="webhook", status="sent") == 2 * n
    failed = {s: _sample(metrics, "anomstream_alerts_total", sink="webhook", status=s)
              for s in ("failed", "dropped", "circuit_open")}
    print(f"failing webhooks: {failed}")
    assert failed["failed"] >= 2
    assert sum(failed.values()) <= 2 * n  # the rest were still queued at shutdown and count as dropped

    # Every §8 metric is exposed, with bounded label values only.
    for name in SECTION8:
        assert f"# TYPE {name.removesuffix('_total')} " in metrics or f"# TYPE {name} " in metrics, name
        assert re.search(rf"^{name}(_bucket|_count)?[{{ ]", metrics, re.MULTILINE), name
    labels = set(re.findall(r'(\w+)="', "\n".join(x for x in metrics.splitlines() if x.startswith("anomstream_"))))
    assert labels <= {"source", "reason", "severity", "name", "version", "provider", "signal", "status",
                      "endpoint", "sink", "topic", "partition", "le"}, labels
    assert '"k1"' not in metrics and '"k2"' not in metrics  # no event keys as label values
