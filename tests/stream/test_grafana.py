"""The Grafana dashboard queries only metrics the service exposes, and shows every §8 metric."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import generate_latest

from stream.metrics import Metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "docker" / "grafana" / "dashboards" / "anomstream.json"


def test_dashboard_uses_exactly_the_exposed_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|sum|count|total)$", "", n) for e in exprs for n in re.findall(r"anomstream_\w+", e)}
    m = Metrics()
    m.consumer_lag.labels(topic="events", partition="0").set(0)
    m.model_info.labels(name="m", version="1", provider="CPU").set(1)
    exposed = {re.sub(r"_(bucket|sum|count|created|total)$", "", n)
               for n in re.findall(r"^(anomstream_\w+)", generate_latest(m.registry).decode(), re.MULTILINE)}
    assert used == exposed, (used ^ exposed)
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
