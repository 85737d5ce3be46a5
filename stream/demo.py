"""``anomstream demo``: the whole product on embedded defaults.

Starts the embedded broker, trains a first model on generated data when the
registry has none, runs ``anomstream serve`` as a child process, offers
synthetic events (1% anomalies, a mean shift halfway through) at a steady
rate, prints the dashboard URL (the service's WebSocket server) and a
one-line summary every second read back from the scores topic: events/s,
anomalies, event-to-record latency p50/p99, the model.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import numpy as np
import orjson

from stream.broker import DEFAULT_PORT, EmbeddedBroker, ensure_topics, port_open
from stream.errors import StreamError
from stream.synthetic import SyntheticStream

__all__ = ["run_demo"]

N_FEATURES = 8
SEED = 7


def _ensure_model(registry: Path, name: str) -> None:
    from models.registry import Registry

    if Registry(registry).current(name) is not None:
        print(f"model: using {name}@{Registry(registry).current(name)} from {registry}", flush=True)
        return
    import optuna

    from training.automl import train
    from training.data import load_dataset

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    gen = SyntheticStream(n_features=N_FEATURES, seed=SEED)
    X, _ = gen.sample(5000, anomaly_rate=0.01)
    data_dir = registry.parent / "demo"
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "train.csv"
    header = ",".join(gen.features)
    np.savetxt(path, X, delimiter=",", header=header, comments="", fmt="%.6g")
    print(f"model: none in {registry}; training a first one on {path} (5000 generated rows)", flush=True)
    res = train(load_dataset(path), name=name, budget_s=15.0, trials=12, contamination=0.01,
                registry_root=registry, seed=0)
    print(f"model: {res.artifact.card.ref} ({res.artifact.card.detector.get('algorithm')}) at {res.artifact.path}", flush=True)


async def _produce(bootstrap: str, rate: int, stop: asyncio.Event, counts: dict[str, int], drift_at_s: float) -> None:
    from aiokafka import AIOKafkaProducer

    gen = SyntheticStream(n_features=N_FEATURES, seed=SEED)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=1 << 18)
    await producer.start()
    t0 = time.monotonic()
    sent = 0
    drifted = False
    tick = 0.02
    try:
        while not stop.is_set():
            elapsed = time.monotonic() - t0
            if not drifted and elapsed >= drift_at_s:
                gen.drift(features=3, sd=3.0)
                drifted = True
                print(f"producer: drift injected at t={elapsed:.0f}s (3 features shifted by 3 sd)", flush=True)
            due = int(elapsed * rate) - sent
            if due > 0:
                X, y = gen.sample(due, anomaly_rate=0.01)
                now = time.time()
                for i, row in enumerate(X.tolist()):
                    key = f"sensor-{(sent + i) % 16}"
                    ev = {"id": sent + i, "ts": now, "key": key, "features": dict(zip(gen.features, row))}
                    await producer.send("events", orjson.dumps(ev), key=key.encode())
                sent += due
                counts["sent"] = sent
                counts["injected"] = counts.get("injected", 0) + int(y.sum())
            await asyncio.sleep(tick)
    finally:
        await producer.stop()


async def _summarise(bootstrap: str, stop: asyncio.Event, counts: dict[str, int], metrics_port: int) -> None:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer("scores", bootstrap_servers=bootstrap, auto_offset_reset="latest",
                                fetch_max_wait_ms=50, group_id=None)
    await consumer.start()
    window: deque[float] = deque(maxlen=20000)
    n = anomalies = last_n = last_anomalies = 0
    model = "?"
    last = time.monotonic()
    started = last
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            now = time.time()
            for msgs in batch.values():
                for m in msgs:
                    rec = orjson.loads(m.value)
                    n += 1
                    anomalies += rec["anomaly"]
                    model = rec["model"]
                    ts = rec.get("ts")
                    if isinstance(ts, float):
                        window.append((now - ts) * 1000.0)
            mono = time.monotonic()
            if mono - last >= 1.0:
                p50, p99 = np.percentile(np.array(window), [50, 99]) if window else (np.nan, np.nan)
                new, flagged = n - last_n, anomalies - last_anomalies
                print(f"[{mono - started:5.0f}s] {new / (mono - last):8.0f} events/s  scored {n:>8}  "
                      f"anomalies {anomalies:>6} (last second {flagged / max(new, 1):6.2%})  latency p50 {p50:6.1f} ms  "
                      f"p99 {p99:6.1f} ms  model {model}", flush=True)
                window.clear()
                last, last_n, last_anomalies = mono, n, anomalies
        counts["scored"] = n
        counts["anomalies"] = anomalies
    finally:
        await consumer.stop()


def run_demo(*, duration_s: float | None, rate: int, registry: Path, name: str = "default") -> None:
    """Run the demo (see module docstring) until ``duration_s`` or Ctrl-C."""
    registry = Path(registry)
    _ensure_model(registry, name)
    broker: EmbeddedBroker | None = None
    if port_open("127.0.0.1", DEFAULT_PORT):
        bootstrap = f"127.0.0.1:{DEFAULT_PORT}"
        print(f"broker: using the one already on {bootstrap}", flush=True)
    else:
        broker = EmbeddedBroker(port=DEFAULT_PORT)
        bootstrap = broker.start()
        print(f"broker: embedded Tansu on {bootstrap}", flush=True)
    metrics_port = 9108
    ws_port = 8765
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as cfg:
        cfg.write(
            f"model: {{registry: {str(registry)!r}, name: {name}}}\n"
            f"kafka: {{bootstrap_servers: {bootstrap!r}}}\n"
            f"metrics: {{port: {metrics_port}}}\n"
            f"websocket: {{enabled: true, host: 127.0.0.1, port: {ws_port}}}\n"
            "alerts: {min_severity: medium, cooldown_s: 10}\n"
        )
    service: subprocess.Popen[bytes] | None = None
    try:
        asyncio.run(ensure_topics(bootstrap, {"events": 4, "scores": 4, "anomalies": 4, "events.dlq": 4,
                                              "anomstream.control": 4}))
        service = subprocess.Popen([sys.executable, "-m", "stream", "serve", "--config", cfg.name,
                                    "--log-level", "WARNING"])
        print(f"service: pid {service.pid}, metrics on http://127.0.0.1:{metrics_port}/metrics", flush=True)
        print(f"dashboard: http://127.0.0.1:{ws_port}/  (live scores, anomalies, drift and model events)", flush=True)
        counts: dict[str, int] = {}
        asyncio.run(_demo_loop(bootstrap, rate, duration_s, counts, metrics_port, service))
        print(f"done: {counts.get('sent', 0)} events offered ({counts.get('injected', 0)} injected anomalies), "
              f"{counts.get('scored', 0)} score records read, {counts.get('anomalies', 0)} flagged", flush=True)
    finally:
        if service is not None and service.poll() is None:
            service.send_signal(signal.SIGTERM)
            try:
                service.wait(timeout=15)
            except subprocess.TimeoutExpired:
                service.kill()
        os.unlink(cfg.name)
        if broker is not None:
            broker.stop()


async def _demo_loop(bootstrap: str, rate: int, duration_s: float | None, counts: dict[str, int],
                     metrics_port: int, service: subprocess.Popen[bytes]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    drift_at = (duration_s or 120.0) / 2
    tasks = [
        asyncio.create_task(_produce(bootstrap, rate, stop, counts, drift_at)),
        asyncio.create_task(_summarise(bootstrap, stop, counts, metrics_port)),
    ]
    t0 = time.monotonic()
    while not stop.is_set():
        await asyncio.sleep(0.2)
        if service.poll() is not None:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise StreamError(f"the service exited with code {service.returncode}")
        if duration_s is not None and time.monotonic() - t0 >= duration_s:
            stop.set()
    await asyncio.gather(*tasks)
