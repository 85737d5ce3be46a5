"""The closed loop against the real broker: `serve` and `trainer` as subprocesses.

Drift → retrain → validate → promote → hot swap → rollback; a stationary stream stays quiet; cold start
to a first model; a killed trainer leaves serving untouched.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from models.registry import Registry
from stream.broker import ensure_topics
from stream.synthetic import SyntheticStream
from tests.conftest import python_cmd, read_records, subprocess_env

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

D = 12


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def registry12(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``default@1``: IForest on 5,000 rows of the 12-feature stream (no input reference in its card)."""
    from training.automl import train
    from training.data import load_dataset

    X, _ = SyntheticStream(n_features=D, seed=11).sample(5000, anomaly_rate=0.01)
    data = tmp_path_factory.mktemp("data12") / "train.csv"
    np.savetxt(data, X, delimiter=",", header=",".join(f"f{i}" for i in range(D)), comments="", fmt="%.6g")
    root = tmp_path_factory.mktemp("registry12")
    train(load_dataset(data), name="default", label_free="iforest", budget_s=30, contamination=0.01,
          registry_root=root, seed=0)
    return root


@pytest.fixture
def fresh_registry(registry12: Path, tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "registry"
    shutil.copytree(registry12, root)
    yield root


def _config(tmp: Path, bootstrap: str, registry: Path, prefix: str, **retrain: Any) -> tuple[Path, int]:
    port = _free_port()
    cfg = tmp / "service.yaml"
    cfg.write_text(json.dumps({
        "model": {"registry": str(registry), "name": "default", "reload_interval_s": 1},
        "kafka": {"bootstrap_servers": bootstrap, "input_topics": [f"{prefix}.events"],
                  "output_topic": f"{prefix}.scores", "alerts_topic": f"{prefix}.anomalies",
                  "dlq_topic": f"{prefix}.dlq", "control_topic": f"{prefix}.control",
                  "group_id": f"{prefix}.group", "partitions": 1},
        "batching": {"max_batch": 256, "max_latency_ms": 10},
        "websocket": {"enabled": False},
        "metrics": {"enabled": True, "port": port},
        "drift": {"false_alarm_events": 1_000_000, "warmup_events": 5000, "cooldown_events": 5000,
                  "retrain": {"min_interval_s": 3600, "max_per_day": 6, "window_events": 10_000, "budget_s": 10,
                              "min_events": 3000, **retrain}},
    }))
    return cfg, port


def _events(gen: SyntheticStream, n: int, start: int, *, named: bool = False) -> list[bytes]:
    X, _ = gen.sample(n, anomaly_rate=0.01)
    rows: list[Any] = X.tolist()
    if named:
        rows = [dict(zip(gen.features, r)) for r in rows]
    return [orjson.dumps({"id": start + i, "features": row}) for i, row in enumerate(rows)]


async def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=1 << 20)
    await producer.start()
    try:
        futures = [await producer.send(topic, v) for v in values]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(python_cmd(*args), stdout=out, stderr=subprocess.STDOUT, env=subprocess_env())


def _stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=60)
    assert rc in (0, -9), log.read_text()[-3000:]


def _metrics(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def _wait_model(port: int, version: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if f'version="{version}"' in _metrics(port):
            return
        time.sleep(0.2)
    raise AssertionError(f"the service never served version {version}: {_metrics(port)[-2000:]}")


def _by_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


def test_drift_retrains_validates_swaps_and_rolls_back(broker: str, fresh_registry: Path, tmp_path: Path) -> None:
    prefix = f"drift-{uuid.uuid4().hex[:8]}"
    cfg, port = _config(tmp_path, broker, fresh_registry, prefix)
    topic = f"{prefix}.events"
    asyncio.run(ensure_topics(broker, {topic: 1, f"{prefix}.control": 1}))
    gen = SyntheticStream(n_features=D, seed=11)
    gen.sample(5000)  # not the training rows
    serve = _start(["serve", "--config", str(cfg)], tmp_path / "serve.log")
    trainer = _start(["trainer", "--config", str(cfg), "--label-free", "iforest"], tmp_path / "trainer.log")
    try:
        values = _events(gen, 30_000, 0)
        gen.drift(4, 3.0)  # 3 sd on 4 of 12 features from event 30,000
        values += _events(gen, 30_000, 30_000)
        asyncio.run(_produce(broker, topic, values))
        produced = time.monotonic()
        control = asyncio.run(read_records(broker, f"{prefix}.control", timeout_s=120, proc=serve,
                                    until=lambda evs: bool(_by_type(evs, "model_promoted"))))
        promoted_after_s = time.monotonic() - produced
        _wait_model(port, 2)
        asyncio.run(_produce(broker, topic, _events(gen, 3000, 60_000)))
        out = subprocess.run(python_cmd("models", "rollback", "default", "--registry", str(fresh_registry)),
                             capture_output=True, text=True, env=subprocess_env(), check=True)
        assert "default@1 is current" in out.stdout
        _wait_model(port, 1, timeout_s=5)  # reload_interval_s is 1
        asyncio.run(_produce(broker, topic, _events(gen, 2000, 63_000)))
        scores = asyncio.run(read_records(broker, f"{prefix}.scores", timeout_s=120, proc=serve,
                                   until=lambda recs: len({r["id"] for r in recs}) >= 65_000))
        metrics = _metrics(port)
    finally:
        _stop(trainer, tmp_path / "trainer.log")
        _stop(serve, tmp_path / "serve.log")

    drifts = _by_type(control, "drift")
    print(f"\ndrift: {[(d['signal'], d.get('id')) for d in drifts]}; promoted {promoted_after_s:.1f} s after "
          f"the last event was produced")
    assert drifts and min(d["id"] for d in drifts) >= 30_000, drifts  # no false alarm on the stationary part
    assert min(d["id"] for d in drifts) < 32_000, drifts              # detected within 2,000 events
    assert {d["model"] for d in drifts} == {"default@1"}
    req = _by_type(control, "retrain_requested")
    assert len(req) == 1 and req[0]["trigger"] == "drift"
    finished = _by_type(control, "retrain_finished")
    assert finished[0]["status"] == "promoted" and finished[0]["validation"]["passed"], finished
    assert _by_type(control, "model_promoted")[0]["model"] == "default@2"
    assert promoted_after_s < 120
    card = Registry(fresh_registry).load("default@2").card
    assert card.lineage == {"parent": "default@1", "trigger": "drift"} and "reference" in card.extra

    ids = {r["id"] for r in scores}
    assert ids == set(range(65_000))  # every input event has a score record
    models = {r["id"]: r["model"] for r in scores}
    assert all(models[i] == "default@2" for i in range(60_000, 63_000))
    assert all(models[i] == "default@1" for i in range(63_000, 65_000))
    assert all(models[i] == "default@1" for i in range(30_000))
    assert 'anomstream_retrain_total{status="requested"} 1.0' in metrics
    assert 'anomstream_retrain_total{status="promoted"} 1.0' in metrics
    assert "anomstream_drift_events_total{signal=" in metrics


def test_gradual_drift_is_detected_and_retrains_respect_max_per_day(broker: str, fresh_registry: Path,
                                                                     tmp_path: Path) -> None:
    prefix = f"ramp-{uuid.uuid4().hex[:8]}"
    # No minimum interval: only max_per_day (1) holds the retrains back.
    cfg, _ = _config(tmp_path, broker, fresh_registry, prefix, min_interval_s=0, max_per_day=1)
    topic = f"{prefix}.events"
    asyncio.run(ensure_topics(broker, {topic: 1, f"{prefix}.control": 1}))
    gen = SyntheticStream(n_features=D, seed=11)
    gen.sample(5000)
    serve = _start(["serve", "--config", str(cfg)], tmp_path / "serve.log")
    trainer = _start(["trainer", "--config", str(cfg), "--label-free", "iforest"], tmp_path / "trainer.log")
    try:
        values = _events(gen, 10_000, 0)
        for step in range(1, 31):  # a slow ramp: +0.1 sd on 4 of 12 features every 2,000 events
            gen.drift(4, 0.1 * step)
            values += _events(gen, 2000, 10_000 + 2000 * (step - 1))
        n = len(values)
        asyncio.run(_produce(broker, topic, values))
        scores = asyncio.run(read_records(broker, f"{prefix}.scores", timeout_s=150, proc=serve,
                                   until=lambda recs: len({r["id"] for r in recs}) >= n))
        control = asyncio.run(read_records(broker, f"{prefix}.control", timeout_s=60, proc=serve,
                                    until=lambda evs: bool(_by_type(evs, "retrain_finished"))))
        time.sleep(3)  # later drift events would ask again: give them time to show
        control = asyncio.run(read_records(broker, f"{prefix}.control", timeout_s=3, proc=serve, until=lambda e: False))
    finally:
        _stop(trainer, tmp_path / "trainer.log")
        _stop(serve, tmp_path / "serve.log")
    drifts = _by_type(control, "drift")
    print(f"\nramp: drift at {[(d['signal'], d.get('id')) for d in drifts]}; "
          f"{len(_by_type(control, 'retrain_requested'))} retrain request(s)")
    assert drifts and min(d["id"] for d in drifts) >= 10_000, drifts  # detected during the ramp, not before
    assert len(_by_type(control, "retrain_requested")) == 1  # max_per_day = 1, however often drift fires
    assert {r["id"] for r in scores} == set(range(n))


def test_stationary_stream_raises_no_drift(broker: str, fresh_registry: Path, tmp_path: Path) -> None:
    prefix = f"calm-{uuid.uuid4().hex[:8]}"
    cfg, port = _config(tmp_path, broker, fresh_registry, prefix)
    topic = f"{prefix}.events"
    asyncio.run(ensure_topics(broker, {topic: 1}))
    gen = SyntheticStream(n_features=D, seed=11)
    gen.sample(5000)
    n = 100_000
    serve = _start(["serve", "--config", str(cfg)], tmp_path / "serve.log")
    try:
        asyncio.run(_produce(broker, topic, _events(gen, n, 0)))
        scores = asyncio.run(read_records(broker, f"{prefix}.scores", timeout_s=150, proc=serve,
                                   until=lambda recs: len(recs) >= n))
        metrics = _metrics(port)
        control = asyncio.run(read_records(broker, f"{prefix}.control", timeout_s=2, proc=serve, until=lambda e: False))
    finally:
        _stop(serve, tmp_path / "serve.log")
    assert len({r["id"] for r in scores}) == n
    drift_counts = [float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                    if line.startswith("anomstream_drift_events_total{")]
    assert _by_type(control, "drift") == [] and drift_counts and not any(drift_counts)  # series exist at 0


def test_cold_start_scores_then_trains_and_swaps_to_a_first_model(broker: str, tmp_path: Path) -> None:
    prefix = f"cold-{uuid.uuid4().hex[:8]}"
    registry = tmp_path / "empty-registry"
    cfg, port = _config(tmp_path, broker, registry, prefix, window_events=5000)
    topic = f"{prefix}.events"
    asyncio.run(ensure_topics(broker, {topic: 1, f"{prefix}.control": 1}))
    gen = SyntheticStream(n_features=6, seed=3)
    serve = _start(["serve", "--config", str(cfg)], tmp_path / "serve.log")
    trainer = _start(["trainer", "--config", str(cfg), "--label-free", "iforest"], tmp_path / "trainer.log")
    try:
        asyncio.run(_produce(broker, topic, _events(gen, 6000, 0, named=True)))
        control = asyncio.run(read_records(broker, f"{prefix}.control", timeout_s=120, proc=serve,
                                    until=lambda evs: bool(_by_type(evs, "model_promoted"))))
        _wait_model(port, 1)
        asyncio.run(_produce(broker, topic, _events(gen, 1000, 6000, named=True)))
        scores = asyncio.run(read_records(broker, f"{prefix}.scores", timeout_s=60, proc=serve,
                                   until=lambda recs: len({r["id"] for r in recs}) >= 7000))
    finally:
        _stop(trainer, tmp_path / "trainer.log")
        _stop(serve, tmp_path / "serve.log")
    req = _by_type(control, "retrain_requested")
    assert req and req[0]["trigger"] == "coldstart" and req[0]["model"] == "coldstart@0"
    assert req[0]["features"] == [f"f{i}" for i in range(6)]
    assert _by_type(control, "model_promoted")[0]["model"] == "default@1"
    card = Registry(registry).load("default@1").card
    assert card.lineage["trigger"] == "coldstart" and card.lineage["parent"] is None
    models = {r["id"]: r["model"] for r in scores}
    assert set(models) == set(range(7000))
    assert models[0] == "coldstart@0" and all(0.0 <= r["score"] <= 1.0 for r in scores)
    assert all(models[i] == "default@1" for i in range(6000, 7000))


def test_killed_trainer_leaves_serving_untouched(broker: str, fresh_registry: Path, tmp_path: Path) -> None:
    prefix = f"kill-{uuid.uuid4().hex[:8]}"
    cfg, port = _config(tmp_path, broker, fresh_registry, prefix, budget_s=60)
    topic = f"{prefix}.events"
    control_topic = f"{prefix}.control"
    asyncio.run(ensure_topics(broker, {topic: 1, control_topic: 1}))
    gen = SyntheticStream(n_features=D, seed=11)
    serve = _start(["serve", "--config", str(cfg)], tmp_path / "serve.log")
    trainer_log = tmp_path / "trainer.log"
    trainer = _start(["trainer", "--config", str(cfg), "--algorithms", "iforest", "--label-free", "centrality"],
                     trainer_log)  # a 60 s search
    try:
        asyncio.run(_produce(broker, topic, _events(gen, 5000, 0)))
        request = {"type": "retrain_requested", "at": time.time(), "model": "default@1", "trigger": "drift",
                   "request_id": "manual", "window_events": 5000, "features": [f"f{i}" for i in range(D)],
                   "topics": [topic], "from": {}}
        asyncio.run(_produce(broker, control_topic, [orjson.dumps(request)]))
        deadline = time.monotonic() + 60
        while "training 'default'" not in trainer_log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "training 'default'" in trainer_log.read_text(), trainer_log.read_text()[-2000:]
        trainer.send_signal(signal.SIGKILL)
        trainer.wait(timeout=10)
        asyncio.run(_produce(broker, topic, _events(gen, 5000, 5000)))
        scores = asyncio.run(read_records(broker, f"{prefix}.scores", timeout_s=60, proc=serve,
                                   until=lambda recs: len({r["id"] for r in recs}) >= 10_000))
        health = _metrics(port)
    finally:
        _stop(trainer, trainer_log)
        _stop(serve, tmp_path / "serve.log")
    assert {r["id"] for r in scores} == set(range(10_000))
    assert {r["model"] for r in scores} == {"default@1"}
    assert Registry(fresh_registry).current("default") == 1
    assert 'version="1"' in health
