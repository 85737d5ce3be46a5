"""What the service's input consumer asks the broker for, read off the wire, on both runners.

The broker is reached through a recording front door
(:class:`tests.kafka_front.KafkaFrontDoor`): every Fetch and JoinGroup request
the ``serve`` subprocess sends is kept and decoded here.  faust's own consumer
settings (a fixed 1,500 ms fetch wait, 1 MiB per partition, a 60 s session)
would hold each fetch and the first group join on the embedded broker, so the
faust runner replaces them with the aiokafka runner's.
"""

from __future__ import annotations

import asyncio
import json
import signal
import struct
import subprocess
import uuid
from pathlib import Path

import pytest

from stream.broker import EmbeddedBroker, ensure_topics, free_port
from tests.conftest import produce_events, python_cmd, read_records, subprocess_env
from tests.kafka_front import KafkaFrontDoor

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

FETCH, JOIN_GROUP = 1, 11
MAX_LATENCY_MS = 15


def _body(version: int, frame: bytes, flexible_from: int) -> bytes:
    """A request's body: the frame after its header (v1, or v2 with an empty tag buffer for flexible versions)."""
    (id_len,) = struct.unpack(">h", frame[8:10])
    start = 10 + max(id_len, 0)
    if version >= flexible_from:
        assert frame[start] == 0, "tagged header fields"
        start += 1
    return frame[start:]


def _fetch_wait_ms(version: int, frame: bytes) -> int:
    _replica, wait = struct.unpack(">ii", _body(version, frame, flexible_from=12)[:8])
    return int(wait)


def _join(version: int, frame: bytes) -> tuple[str, int]:
    """(group id, session timeout ms) of a JoinGroup request."""
    body = _body(version, frame, flexible_from=6)
    if version >= 6:  # compact string: unsigned varint length + 1 (one byte for short ids)
        n = body[0] - 1
        group, rest = body[1:1 + n], body[1 + n:]
    else:
        (n,) = struct.unpack(">h", body[:2])
        group, rest = body[2:2 + n], body[2 + n:]
    (session,) = struct.unpack(">i", rest[:4])
    return group.decode(), int(session)


@pytest.mark.parametrize("backend", ["aiokafka", "faust"])
def test_input_consumer_fetches_within_the_batching_latency_and_joins_with_a_10_s_session(
        registry: Path, tmp_path: Path, backend: str) -> None:
    prefix = f"wire-{uuid.uuid4().hex[:8]}"
    events, group = f"{prefix}.events", f"{prefix}.group"
    port = free_port()
    with EmbeddedBroker(port=0, advertised=f"127.0.0.1:{port}", log_file=tmp_path / "broker.log") as broker, \
            KafkaFrontDoor(port, ("127.0.0.1", broker.port), record=True) as door:
        bootstrap = f"127.0.0.1:{port}"
        asyncio.run(ensure_topics(bootstrap, {events: 2}))
        asyncio.run(produce_events(bootstrap, events, 300, seed=3))
        cfg = tmp_path / "service.yaml"
        cfg.write_text(json.dumps({
            "model": {"registry": str(registry), "name": "default"},
            "kafka": {"bootstrap_servers": bootstrap, "backend": backend, "input_topics": [events],
                      "output_topic": f"{prefix}.scores", "alerts_topic": f"{prefix}.anomalies",
                      "dlq_topic": f"{prefix}.dlq", "control_topic": f"{prefix}.control", "group_id": group,
                      "partitions": 2},
            "batching": {"max_batch": 256, "max_latency_ms": MAX_LATENCY_MS},
            "websocket": {"enabled": False}, "metrics": {"enabled": False}, "drift": {"enabled": False},
        }))
        log = tmp_path / "serve.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(python_cmd("serve", "--config", str(cfg)), stdout=out, stderr=subprocess.STDOUT,
                                    env=subprocess_env())
        try:
            records = asyncio.run(read_records(bootstrap, f"{prefix}.scores", until=lambda r: len(r) >= 300,
                                               timeout_s=120, proc=proc))
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=30)
        assert rc == 0, log.read_text()[-3000:]
        assert len(records) == 300
        assert door.requests is not None
        requests = list(door.requests)

    # The input consumer's fetches name the events topic; other clients (the control tail, this test's reader)
    # fetch other topics.
    waits = {_fetch_wait_ms(v, f) for k, v, f in requests if k == FETCH and events.encode() in f}
    assert waits == {MAX_LATENCY_MS}, waits
    joins = {_join(v, f) for k, v, f in requests if k == JOIN_GROUP}
    assert joins and {session for g, session in joins if g == group} == {10_000}, joins
