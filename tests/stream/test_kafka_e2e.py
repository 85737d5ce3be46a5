"""The whole service against the real embedded broker, as a subprocess.

10,000 events with 100 malformed ones (every dead-letter code), then a
crash-safety run: SIGKILL mid-stream, restart, nothing lost.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stream.broker import ensure_topics
from stream.decoding import REJECT_CODES
from stream.synthetic import SyntheticStream
from tests.conftest import python_cmd, subprocess_env

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(tmp: Path, bootstrap: str, registry: Path, prefix: str, *, metrics_port: int,
            backend: str = "aiokafka", compression: str = "none") -> Path:
    cfg = tmp / "service.yaml"
    cfg.write_text(json.dumps({
        "model": {"registry": str(registry), "name": "default", "reload_interval_s": 1},
        "kafka": {"bootstrap_servers": bootstrap, "backend": backend, "input_topics": [f"{prefix}.events"],
                  "output_topic": f"{prefix}.scores", "alerts_topic": f"{prefix}.anomalies",
                  "dlq_topic": f"{prefix}.dlq", "control_topic": f"{prefix}.control",
                  "group_id": f"{prefix}.group", "partitions": 3, "compression": compression},
        "batching": {"max_batch": 256, "max_latency_ms": 10},
        "websocket": {"enabled": False},
        "metrics": {"enabled": True, "port": metrics_port},
        "alerts": {"min_severity": "low", "cooldown_s": 0},
    }))
    return cfg


def _malformed(i: int, features: tuple[str, ...]) -> tuple[bytes, str]:
    code = REJECT_CODES[i % len(REJECT_CODES)]
    full = {f: 1.0 for f in features}
    payload: bytes
    if code == "invalid_json":
        payload = [b'{"id": "bad", "features": {', b"\xff\xfe not utf-8", b"[1, 2, 3]"][(i // 6) % 3]
    elif code == "missing_features":
        payload = orjson.dumps({"id": f"bad{i}", "features": {features[0]: 1.0}})
    elif code == "wrong_length":
        payload = orjson.dumps({"id": f"bad{i}", "features": [1.0] * (len(features) + 1)})
    elif code == "non_numeric":
        payload = orjson.dumps({"id": f"bad{i}", "features": {**full, features[1]: "high"}})
    elif code == "non_finite":
        payload = orjson.dumps({"id": f"bad{i}", "features": full}).replace(b"1.0", b"1e999", 1)
    else:  # too_large
        payload = orjson.dumps({"id": f"bad{i}", "features": full, "blob": "x" * (1 << 20)})
    return payload, code


async def _produce(bootstrap: str, topic: str, payloads: list[tuple[bytes | None, bytes]],
                   compression: str | None = None) -> list[tuple[int, int]]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_request_size=4 << 20,
                                max_batch_size=1 << 20, compression_type=compression)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in payloads]
        metas = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [(m.partition, m.offset) for m in metas]


async def _consume(bootstrap: str, topic: str, *, until: int, timeout_s: float, proc: subprocess.Popen[bytes] | None = None,
                   distinct_ids: bool = False) -> list[Any]:
    """Records of ``topic`` until ``until`` arrived (with ``distinct_ids``: records of ``until`` distinct ``id``
    values, so that replayed duplicates after a crash do not end the wait before the last records)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", fetch_max_wait_ms=100)
    await consumer.start()
    out: list[Any] = []
    seen: set[Any] = set()
    deadline = time.monotonic() + timeout_s
    try:
        while (len(seen) if distinct_ids else len(out)) < until and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for msgs in batch.values():
                out.extend(msgs)
                if distinct_ids:
                    seen.update(orjson.loads(m.value)["id"] for m in msgs)
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"service exited early with {proc.returncode}")
        # Linger briefly: anything beyond `until` would be a duplicate.
        batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
        for msgs in batch.values():
            out.extend(msgs)
    finally:
        await consumer.stop()
    return out


async def _committed(bootstrap: str, topic: str, group: str, *, partitions: int) -> dict[int, int | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        await consumer.stop()


def _events(n: int, gen: SyntheticStream, start: int = 0) -> list[tuple[bytes | None, bytes]]:
    X, _ = gen.sample(n, anomaly_rate=0.02)
    now = time.time()
    out = []
    for i, row in enumerate(X.tolist()):
        idx = start + i
        ev: dict[str, Any] = {"id": idx, "ts": now, "features": dict(zip(gen.features, row))}
        if idx % 7 == 0:
            ev["features"][gen.features[2]] = None  # imputed
        if idx % 2 == 0:
            ev["features"] = [ev["features"][f] for f in gen.features]  # list form
        key = f"k{idx % 10}".encode() if idx % 3 else None
        out.append((key, orjson.dumps(ev)))
    return out


def _start(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(python_cmd("serve", "--config", str(cfg)), stdout=out,
                                stderr=subprocess.STDOUT, env=subprocess_env())


@pytest.mark.parametrize("backend", ["aiokafka", "faust"])
def test_serve_scores_every_event_once_and_dead_letters_the_bad(broker: str, registry: Path, tmp_path: Path,
                                                                backend: str) -> None:
    prefix = f"e2e-{uuid.uuid4().hex[:8]}"
    port = _free_port()
    cfg = _config(tmp_path, broker, registry, prefix, metrics_port=port, backend=backend)
    gen = SyntheticStream(n_features=6, seed=3)
    valid = _events(9900, gen)
    bad = [_malformed(i, gen.features) for i in range(100)]
    payloads: list[tuple[bytes | None, bytes]] = list(valid)
    bad_at = list(range(50, 10000, 100))  # spread the bad ones through the stream
    for pos, (payload, _) in zip(bad_at, bad):
        payloads.insert(pos, (b"badkey", payload))
    expected_code = {i: code for i, (_, code) in zip(bad_at, bad)}
    topic = f"{prefix}.events"
    asyncio.run(ensure_topics(broker, {topic: 3}))
    metas = asyncio.run(_produce(broker, topic, payloads))
    code_at = {metas[i]: code for i, code in expected_code.items()}

    proc = _start(cfg, tmp_path / "serve.log")
    try:
        t0 = time.monotonic()
        scores = asyncio.run(_consume(broker, f"{prefix}.scores", until=9900, timeout_s=180, proc=proc))
        print(f"\n{backend}: 9900 score records {time.monotonic() - t0:.1f} s after start")
        dlq = asyncio.run(_consume(broker, f"{prefix}.dlq", until=100, timeout_s=30, proc=proc))
        alerts = asyncio.run(_consume(broker, f"{prefix}.anomalies", until=1, timeout_s=30, proc=proc))
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    log = (tmp_path / "serve.log").read_text()
    assert rc == 0, log[-3000:]

    records = [orjson.loads(m.value) for m in scores]
    ids = Counter(r["id"] for r in records)
    assert len(records) == 9900 and set(ids) == set(range(9900)) and max(ids.values()) == 1
    for m, r in zip(scores, records):
        assert r["model"] == "default@1"
        assert 0.0 <= r["score"] <= 1.0 and r["severity"] in ("none", "low", "medium", "high", "critical")
        assert set(r["source"]) == {"topic", "partition", "offset"} and r["source"]["topic"] == topic
        src_key = None if r["id"] % 3 == 0 else f"k{r['id'] % 10}".encode()
        assert m.key == src_key
        assert ("contributions" in r) == r["anomaly"]
        if r["anomaly"]:
            assert len(r["contributions"]) == 3
        assert ("imputed" in r) == (r["id"] % 7 == 0)
    anomalies = [r for r in records if r["anomaly"]]
    assert 0 < len(anomalies) < 1000

    dlq_records = [orjson.loads(m.value) for m in dlq]
    assert len(dlq_records) == 100
    got = {(d["source"]["partition"], d["source"]["offset"]): d for d in dlq_records}
    assert set(got) == set(code_at)
    for where, d in got.items():
        assert d["error"] == code_at[where], d["detail"]
        assert d["detail"] and isinstance(d["payload"], str)
    assert Counter(d["error"] for d in dlq_records) == Counter(code_at.values())
    non_utf8 = [d for d in dlq_records if d.get("payload_encoding") == "base64"]
    assert non_utf8 and base64.b64decode(non_utf8[0]["payload"]).startswith(b"\xff\xfe")

    alert_records = [orjson.loads(m.value) for m in alerts]
    assert sorted(a["id"] for a in alert_records) == sorted(r["id"] for r in anomalies)

    committed = asyncio.run(_committed(broker, topic, f"{prefix}.group", partitions=3))
    ends: dict[int, int] = {}
    for part, off in metas:
        ends[part] = max(ends.get(part, 0), off + 1)
    assert committed == ends, (committed, ends)
    for name in ("anomstream_events_total", "anomstream_events_rejected_total", "anomstream_anomalies_total",
                 "anomstream_batch_size_bucket", "anomstream_inference_seconds_bucket",
                 "anomstream_latency_seconds_bucket", "anomstream_model_info", "anomstream_consumer_lag"):
        assert name in metrics, name
    assert 'anomstream_events_total{source="kafka"} 10000.0' in metrics
    assert 'anomstream_model_info{name="default",provider="CPUExecutionProvider",version="1"} 1.0' in metrics


def test_sigkill_mid_stream_loses_nothing(broker: str, registry: Path, tmp_path: Path) -> None:
    prefix = f"crash-{uuid.uuid4().hex[:8]}"
    cfg = _config(tmp_path, broker, registry, prefix, metrics_port=_free_port())
    gen = SyntheticStream(n_features=6, seed=4)
    topic = f"{prefix}.events"
    asyncio.run(ensure_topics(broker, {topic: 3}))
    asyncio.run(_produce(broker, topic, _events(20000, gen)))

    proc = _start(cfg, tmp_path / "serve1.log")
    try:
        first = asyncio.run(_consume(broker, f"{prefix}.scores", until=4000, timeout_s=120, proc=proc))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert 4000 <= len(first) < 20000, "the kill should land mid-stream"

    cfg2 = _config(tmp_path, broker, registry, prefix, metrics_port=_free_port())
    proc = _start(cfg2, tmp_path / "serve2.log")
    try:
        everything = asyncio.run(_consume(broker, f"{prefix}.scores", until=20000, timeout_s=120, proc=proc,
                                          distinct_ids=True))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    ids = Counter(orjson.loads(m.value)["id"] for m in everything)
    duplicates = sum(ids.values()) - len(ids)
    print(f"\ncrash safety: {len(first)} records before SIGKILL, {sum(ids.values())} in all, "
          f"{duplicates} duplicates, {20000 - len(ids)} missing")
    assert set(ids) == set(range(20000))


# A consumer on an install without aiokafka's codec library (cramjam): it reads uncompressed and gzip batches
# and stops at the first batch in another codec, naming it.
_CONSUMER_WITHOUT_CODECS = """
import asyncio, sys
sys.modules["cramjam"] = None
from aiokafka import AIOKafkaConsumer

async def main(bootstrap, topic):
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    read = 0
    try:
        while got := await consumer.getmany(timeout_ms=3000):  # to the end of the topic
            read += sum(len(v) for v in got.values())
        print("read", read)
    except Exception as exc:
        print(type(exc).__name__, exc)
    finally:
        await consumer.stop()

asyncio.run(main(*sys.argv[1:]))
"""


def _read_without_codecs(bootstrap: str, topic: str) -> str:
    """The last line the consumer without codecs printed: ``read N``, or the error that stopped it."""
    done = subprocess.run([sys.executable, "-c", _CONSUMER_WITHOUT_CODECS, bootstrap, topic], capture_output=True,
                          text=True, timeout=60, env=subprocess_env(), check=True)
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("backend", ["aiokafka", "faust"])
def test_input_in_every_codec_is_scored_and_output_takes_the_configured_one(
        broker: str, registry: Path, tmp_path: Path, backend: str) -> None:
    prefix = f"codec-{uuid.uuid4().hex[:8]}"
    cfg = _config(tmp_path, broker, registry, prefix, metrics_port=_free_port(), backend=backend,
                  compression="zstd")
    gen = SyntheticStream(n_features=6, seed=5)
    topic = f"{prefix}.events"
    asyncio.run(ensure_topics(broker, {topic: 3}))
    codecs = [None, "gzip", "snappy", "lz4", "zstd"]
    for i, codec in enumerate(codecs):  # producers upstream may use any codec, each its own batches
        asyncio.run(_produce(broker, topic, _events(200, gen, start=200 * i), compression=codec))
    # Without the codec library the first batch in a codec it lacks stops a consumer.
    assert _read_without_codecs(broker, topic).startswith("UnsupportedCodecError")

    proc = _start(cfg, tmp_path / "serve.log")
    try:
        scores = asyncio.run(_consume(broker, f"{prefix}.scores", until=1000, timeout_s=120, proc=proc))
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    assert rc == 0, (tmp_path / "serve.log").read_text()[-3000:]
    ids = Counter(orjson.loads(m.value)["id"] for m in scores)
    assert set(ids) == set(range(1000)) and max(ids.values()) == 1
    # The service's batches are zstd: a consumer without the codec library stops on them, naming the codec.
    out = _read_without_codecs(broker, f"{prefix}.scores")
    assert out.startswith("UnsupportedCodecError") and "zstd" in out, out
