"""Kafka-sourced records reach WebSocket subscribers: ``anomstream serve`` as a subprocess."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from websockets.asyncio.client import connect

from stream.broker import ensure_topics
from tests.conftest import python_cmd, subprocess_env
from tests.stream.serving import events

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ready(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def test_kafka_records_and_control_events_reach_subscribers(broker: str, registry: Path, tmp_path: Path) -> None:
    prefix = f"ws-{uuid.uuid4().hex[:8]}"
    port = _free_port()
    cfg = tmp_path / "service.yaml"
    cfg.write_text(json.dumps({
        "model": {"registry": str(registry), "name": "default"},
        "kafka": {"bootstrap_servers": broker, "input_topics": [f"{prefix}.events"],
                  "output_topic": f"{prefix}.scores", "alerts_topic": f"{prefix}.anomalies",
                  "dlq_topic": f"{prefix}.dlq", "control_topic": f"{prefix}.control",
                  "group_id": f"{prefix}.group", "partitions": 2},
        "batching": {"max_batch": 256, "max_latency_ms": 10},
        "websocket": {"enabled": True, "port": port},
        "metrics": {"enabled": False},
    }))
    evs = events(3000, anomaly_rate=0.03)
    asyncio.run(ensure_topics(broker, {f"{prefix}.events": 2, f"{prefix}.control": 1}))
    log = tmp_path / "serve.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(python_cmd("serve", "--config", str(cfg)), stdout=out, stderr=subprocess.STDOUT,
                                env=subprocess_env())
    try:
        deadline = time.monotonic() + 60
        while _ready(f"http://127.0.0.1:{port}/readyz") != 200:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "not ready in 60 s"
            time.sleep(0.2)
        got = asyncio.run(_subscribe_and_produce(broker, port, prefix, evs))
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    assert rc == 0, log.read_text()[-3000:]

    scores, anomalies, control = got
    assert sorted(r["id"] for r in scores) == list(range(len(evs)))
    assert all(r["source"]["topic"] == f"{prefix}.events" for r in scores)
    flagged = sorted(r["id"] for r in scores if r["anomaly"])
    assert flagged and sorted(r["id"] for r in anomalies) == flagged
    assert control == [{"type": "drift", "at": 1.0, "model": "default@1", "signal": "test"}]


async def _subscribe_and_produce(broker: str, port: int, prefix: str,
                                 evs: list[dict[str, Any]]) -> tuple[list[Any], list[Any], list[Any]]:
    got: dict[str, list[Any]] = {"scores": [], "anomalies": [], "control": []}
    url = f"ws://127.0.0.1:{port}/subscribe?streams=scores,anomalies,control"
    async with connect(url, compression=None) as ws:
        producer = AIOKafkaProducer(bootstrap_servers=broker, linger_ms=5)
        await producer.start()
        try:
            for ev in evs:
                await producer.send(f"{prefix}.events", orjson.dumps(ev))
            await producer.flush()
            # The control tail reads from the end of its topic: send until the service's tail has it.
            deadline = time.monotonic() + 60
            next_control = 0.0
            while len(got["scores"]) < len(evs) or not got["control"]:
                assert time.monotonic() < deadline, {k: len(v) for k, v in got.items()}
                if not got["control"] and time.monotonic() >= next_control:
                    ev = {"type": "drift", "at": 1.0, "model": "default@1", "signal": "test"}
                    await producer.send_and_wait(f"{prefix}.control", orjson.dumps(ev))
                    next_control = time.monotonic() + 1.0
                try:
                    frame = orjson.loads(await asyncio.wait_for(ws.recv(), timeout=1.0))
                except TimeoutError:
                    continue
                got[frame["stream"]].extend(frame["records"])
            # Anomalies of the last batch may trail its scores frame.
            while len(got["anomalies"]) < sum(r["anomaly"] for r in got["scores"]):
                frame = orjson.loads(await asyncio.wait_for(ws.recv(), timeout=10))
                got[frame["stream"]].extend(frame["records"])
        finally:
            await producer.stop()
    control = got["control"][:1]  # the tail may have caught more than one of the repeats
    return got["scores"], got["anomalies"], control
