"""Alert sinks against a real local HTTP server: delivery, formats, failures off the hot path."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import pytest

from stream.metrics import Metrics
from stream.sinks import AlertSinks


class WebhookServer:
    """A local HTTP server recording the JSON bodies POSTed to it; ``status`` is what it answers."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.received: list[tuple[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                outer.received.append((self.path, json.loads(body)))
                self.send_response(outer.status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[WebhookServer]:
    with WebhookServer() as s:
        yield s


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once closed: connection refused


def _alerts(n: int) -> list[dict[str, Any]]:
    return [{"id": i, "key": f"k{i % 3}", "ts": 1000.0 + i, "model": "default@1", "score": 0.99,
             "raw_score": 0.7, "anomaly": True, "severity": "high", "contributions": {"x0": 0.6, "x1": 0.3},
             "episode": {"id": f"e{i % 3}", "start": 1000.0, "detected_at": 2000.0, "last": 1000.0 + i,
                         "count": i // 3 + 1}} for i in range(n)]


def _counts(m: Metrics) -> dict[tuple[str, str], float]:
    out = {}
    for metric in m.alerts.collect():
        for s in metric.samples:
            if s.name.endswith("_total") and s.value:
                out[(s.labels["sink"], s.labels["status"])] = s.value
    return out


def test_webhooks_receive_json_and_slack_and_the_jsonl_file_gets_every_alert(server: WebhookServer,
                                                                              tmp_path: Path) -> None:
    m = Metrics()
    alerts = _alerts(20)
    path = tmp_path / "alerts" / "alerts.jsonl"

    async def go() -> None:
        async with AlertSinks(webhooks=[{"url": server.url + "/json", "format": "json"},
                                        {"url": server.url + "/slack", "format": "slack"}],
                              jsonl_path=path, metrics=m) as sinks:
            sinks.submit(alerts[:10])
            await asyncio.sleep(0)
            sinks.submit(alerts[10:])

    asyncio.run(go())
    got_json = [b for p, b in server.received if p == "/json"]
    got_slack = [b for p, b in server.received if p == "/slack"]
    assert got_json == alerts  # one POST per alert, in order, the alert record itself
    assert len(got_slack) == 20 and all(set(b) == {"text", "blocks"} for b in got_slack)
    assert "high anomaly on k0" in got_slack[0]["text"] and "`x0` 0.60" in got_slack[0]["blocks"][1]["text"]["text"]
    assert [json.loads(line) for line in path.read_text().splitlines()] == alerts
    assert _counts(m) == {("webhook", "sent"): 40.0, ("jsonl", "sent"): 20.0}


def test_a_dead_or_failing_webhook_never_blocks_submit(tmp_path: Path) -> None:
    m = Metrics()
    n = 3000
    alerts = _alerts(n)
    with WebhookServer(status=500) as failing, WebhookServer() as healthy:
        hooks = [
            {"url": f"http://127.0.0.1:{_closed_port()}/", "retries": 2, "backoff_s": 0.01,
             "failure_threshold": 3, "reset_s": 60},
            {"url": failing.url, "retries": 1, "backoff_s": 0.01, "failure_threshold": 3, "reset_s": 60},
            {"url": healthy.url, "timeout_s": 5},
        ]
        worst = 0.0

        async def go() -> float:
            nonlocal worst
            async with AlertSinks(webhooks=hooks, jsonl_path=tmp_path / "a.jsonl", queue=1000, metrics=m,
                                  drain_s=20) as sinks:
                t0 = time.perf_counter()
                for i in range(0, n, 100):
                    s = time.perf_counter()
                    sinks.submit(alerts[i:i + 100])
                    worst = max(worst, time.perf_counter() - s)
                    await asyncio.sleep(0.002)  # a batch loop yielding between batches
                return time.perf_counter() - t0

        elapsed = asyncio.run(go())
        received_failing = len(failing.received)
        received_healthy = len(healthy.received)
    c = _counts(m)
    print(f"\n{n} alerts submitted in {elapsed * 1000:.1f} ms (worst submit of 100: {worst * 1e6:.0f} µs); "
          f"healthy webhook got {received_healthy}; counts {c}")
    # The failing webhooks: a few tries, then the breaker sheds the rest (or the full queue does).
    assert received_failing == 3 * 2  # threshold 3, each tried 1 + 1 retry
    assert c[("webhook", "failed")] == 6  # 3 refused + 3 answered 500
    assert c[("webhook", "circuit_open")] > 0
    accounted = sum(v for (sink, _), v in c.items() if sink == "webhook")
    assert accounted == 3 * n  # every alert of every webhook is counted exactly once
    assert c[("jsonl", "sent")] == n
    assert received_healthy == c[("webhook", "sent")] and received_healthy > 0
