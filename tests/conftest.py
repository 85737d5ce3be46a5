"""Shared fixtures: one embedded broker for the whole suite, a trained model."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stream.broker import EmbeddedBroker
from stream.synthetic import SyntheticStream

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
N_FEATURES = 6


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of an embedded Tansu broker shared by the session."""
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(port=0, log_file=log) as b:
        yield b.bootstrap


@pytest.fixture(scope="session")
def synthetic() -> SyntheticStream:
    return SyntheticStream(n_features=N_FEATURES, seed=3)


@pytest.fixture(scope="session")
def train_csv(tmp_path_factory: pytest.TempPathFactory, synthetic: SyntheticStream) -> Path:
    """3,000 generated rows with 1% injected anomalies (no label column)."""
    X, _ = SyntheticStream(n_features=N_FEATURES, seed=3).sample(3000, anomaly_rate=0.01)
    path = tmp_path_factory.mktemp("data") / "train.csv"
    np.savetxt(path, X, delimiter=",", header=",".join(synthetic.features), comments="", fmt="%.6g")
    return path


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory, train_csv: Path) -> Path:
    """A registry holding ``default@1``, trained by the real AutoML (IForest, 2 trials)."""
    from training.automl import train
    from training.data import load_dataset

    root = tmp_path_factory.mktemp("registry")
    train(load_dataset(train_csv), name="default", algorithms=["iforest"], trials=2, budget_s=60,
          contamination=0.01, registry_root=root, seed=0)
    return root


def python_cmd(*args: str) -> list[str]:
    """The CLI as a subprocess command (``python -m stream ...``)."""
    return [sys.executable, "-m", "stream", *args]


def subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANOMSTREAM_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def read_records(bootstrap: str, topic: str, *, until: Callable[[list[Any]], bool], timeout_s: float,
                       proc: subprocess.Popen[bytes], client: Mapping[str, Any] | None = None) -> list[Any]:
    """JSON records of ``topic`` from the start until ``until(records)`` holds (or the timeout).

    Fails as soon as ``proc`` (the service under test) exits; ``client``:
    aiokafka security options.
    """
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                                fetch_max_wait_ms=100, **(client or {}))
    await consumer.start()
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while not until(out) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300, max_records=10_000)
            for msgs in batch.values():
                out.extend(orjson.loads(m.value) for m in msgs)
            if proc.poll() is not None:
                raise AssertionError(f"service exited early with {proc.returncode}")
    finally:
        await consumer.stop()
    return out


async def produce_events(bootstrap: str, topic: str, n: int, *, seed: int, anomaly_rate: float = 0.01,
                         client: Mapping[str, Any] | None = None) -> None:
    """``n`` generated events (``id`` 0..n-1, named features of :data:`N_FEATURES`) to ``topic``."""
    gen = SyntheticStream(n_features=N_FEATURES, seed=seed)
    X, _ = gen.sample(n, anomaly_rate=anomaly_rate)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, **(client or {}))
    await producer.start()
    try:
        futures = [await producer.send(topic, orjson.dumps({"id": i, "features": dict(zip(gen.features, row))}))
                   for i, row in enumerate(X.tolist())]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
