"""Demo producer: synthetic events (contract §6) to Kafka at a steady rate.

Settings come from the environment: ``BOOTSTRAP`` (default ``kafka:9092``), ``TOPIC``
(``events``), ``RATE`` (events per second, ``1000``), ``N_FEATURES`` (``8``), ``SEED`` (``0``)
and ``ANOMALY_RATE`` (``0.01``). Features and seed must match the data the served model was
trained on (compose's ``trainer-init`` uses 8 features, seed 0). Stops cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import numpy as np
import orjson
from aiokafka import AIOKafkaProducer

from stream.synthetic import SyntheticStream


async def produce(bootstrap: str, topic: str, rate: int, n_features: int, seed: int,
                  anomaly_rate: float) -> None:
    """Send about ``rate`` events per second to ``topic`` until SIGINT/SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    gen = SyntheticStream(n_features=n_features, seed=seed)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=1 << 18)
    await producer.start()
    print(f"producer: {rate}/s to {topic} on {bootstrap}", flush=True)
    t0, sent, injected = time.monotonic(), 0, 0
    X_buf, y_buf = gen.sample(0)
    try:
        while not stop.is_set():
            due = int((time.monotonic() - t0) * rate) - sent
            if due > 0:
                if len(X_buf) < due:  # whole chunks: a 20-row tick would round 1% to 0 anomalies
                    X_new, y_new = gen.sample(max(1000, due), anomaly_rate=anomaly_rate)
                    X_buf, y_buf = np.concatenate([X_buf, X_new]), np.concatenate([y_buf, y_new])
                X, y, X_buf, y_buf = X_buf[:due], y_buf[:due], X_buf[due:], y_buf[due:]
                now = time.time()
                for i, row in enumerate(X.tolist()):
                    key = f"sensor-{(sent + i) % 16}"
                    event = {"id": sent + i, "ts": now, "key": key,
                             "features": dict(zip(gen.features, row))}
                    await producer.send(topic, orjson.dumps(event), key=key.encode())
                sent, injected = sent + due, injected + int(y.sum())
                if sent // (rate * 10) != (sent - due) // (rate * 10):
                    print(f"producer: {sent} sent, {injected} anomalies injected", flush=True)
            await asyncio.sleep(0.02)
    finally:
        await producer.stop()
        print(f"producer: stopped after {sent} events", flush=True)


if __name__ == "__main__":
    asyncio.run(produce(
        bootstrap=os.environ.get("BOOTSTRAP", "kafka:9092"),
        topic=os.environ.get("TOPIC", "events"),
        rate=max(1, int(os.environ.get("RATE", "1000"))),
        n_features=int(os.environ.get("N_FEATURES", "8")),
        seed=int(os.environ.get("SEED", "0")),
        anomaly_rate=float(os.environ.get("ANOMALY_RATE", "0.01")),
    ))
