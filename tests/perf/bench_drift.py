"""Drift-monitor benchmark: cost per event, and end-to-end latency with the monitor on and off.

Run with ``make bench``.  Two tables:

* monitor cost: :class:`stream.drift.DriftMonitor` (score CUSUM, alert-rate
  CUSUM, per-feature PSI) fed batches of the given size, in µs per event, next
  to river's ``PageHinkley`` and ``ADWIN`` updated once per event from Python
  (one signal each, what a per-event loop would cost);
* end to end: ``anomstream serve`` (subprocess, embedded broker) with
  ``drift.enabled`` true and false, events offered at a fixed rate by a
  producer process; latency from the event's ``ts`` (set at send time) to the
  arrival of its score record at the collector.  A warm-up pass of 2,000
  events runs first (the service joins its consumer group), then the first
  6,000 measured events (the monitor's warm-up) are left out; the producer
  and the collector pause Python's cyclic garbage collector, as in
  ``bench_e2e.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
from perf_registry import quiet_gc

D = 12
SKIP = 6000


def monitor_table(n: int = 200_000) -> None:
    from river import drift as river_drift

    from stream.drift import DriftMonitor
    from stream.synthetic import SyntheticStream

    gen = SyntheticStream(n_features=D, seed=0)
    X, _ = gen.sample(n, anomaly_rate=0.01)
    score = np.random.default_rng(0).uniform(size=n)
    anomaly = score >= 0.99
    print(f"drift monitor, {D} features, {n:,} events (µs per event)")
    print(f"{'batch':>6} {'DriftMonitor':>13}")
    for batch in (1, 16, 64, 256, 512):
        mon = DriftMonitor(features=gen.features, reference=None, false_alarm_events=1e6)
        m = n if batch >= 16 else 20_000
        t0 = time.perf_counter()
        for i in range(0, m, batch):
            mon.update(X[i:i + batch], score[i:i + batch], anomaly[i:i + batch])
        print(f"{batch:>6} {(time.perf_counter() - t0) / m * 1e6:>13.2f}")
    for name, det in (("river PageHinkley", river_drift.PageHinkley()), ("river ADWIN", river_drift.ADWIN())):
        values = score.tolist()
        t0 = time.perf_counter()
        for v in values:
            det.update(v)
        print(f"{name:>20}: {(time.perf_counter() - t0) / n * 1e6:.2f} µs per event (one signal)")


# --------------------------------------------------------------------------- end to end
def _producer_main(bootstrap: str, topic: str, n: int, base: int, rate: float, go: mp.Event) -> None:
    asyncio.run(_produce(bootstrap, topic, n, base, rate, go))


async def _produce(bootstrap: str, topic: str, n: int, base: int, rate: float, go: mp.Event) -> None:
    from aiokafka import AIOKafkaProducer

    from stream.synthetic import SyntheticStream

    X, _ = SyntheticStream(n_features=D, seed=11).sample(n, anomaly_rate=0.01)
    rows = X.tolist()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2, acks=1)
    await producer.start()
    quiet_gc()
    while not go.is_set():
        await asyncio.sleep(0.005)
    t0 = time.perf_counter()
    futures = []
    for i, row in enumerate(rows):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0.002:
            await asyncio.sleep(delay)
        futures.append(await producer.send(topic, orjson.dumps({"id": base + i, "ts": time.time(), "features": row})))
    await asyncio.gather(*futures)
    await producer.stop()


async def _collect(bootstrap: str, topic: str, n: int, base: int, go: mp.Event, *, skip: int) -> np.ndarray:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="latest",
                                fetch_max_wait_ms=5)
    await consumer.start()
    await consumer.getmany(timeout_ms=500)
    quiet_gc()
    go.set()
    lat = np.full(n, np.nan)
    got = 0
    deadline = time.monotonic() + 300
    try:
        while got < n and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=100, max_records=10_000)
            now = time.time()
            for msgs in batch.values():
                for m in msgs:
                    rec = orjson.loads(m.value)
                    i = rec["id"] - base
                    if 0 <= i < n and np.isnan(lat[i]):
                        lat[i] = (now - float(rec["ts"])) * 1000.0
                        got += 1
    finally:
        gc.enable()
        await consumer.stop()
    lat = lat[skip:]  # the monitor's warm-up (5,000 events) is not measured
    return lat[~np.isnan(lat)]


def e2e_table(n: int, rate: float) -> None:
    from stream.broker import EmbeddedBroker, ensure_topics
    from stream.synthetic import SyntheticStream
    from training.automl import train
    from training.data import load_dataset

    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(port=0, log_file=Path(tmp) / "tansu.log") as broker:
        X, _ = SyntheticStream(n_features=D, seed=11).sample(5000, anomaly_rate=0.01)
        data = Path(tmp) / "train.csv"
        np.savetxt(data, X, delimiter=",", header=",".join(f"x{i}" for i in range(D)), comments="", fmt="%.6g")
        train(load_dataset(data), name="default", label_free="iforest", registry_root=Path(tmp) / "reg", seed=0)
        print(f"\nend to end, {n:,} events offered at {rate:,.0f}/s (latency ms, send → score record arrives)")
        print(f"{'monitor':>8} {'p50':>8} {'p99':>8} {'max':>8}")
        base = 0
        for enabled in (False, True, False, True):
            prefix = f"bench-{uuid.uuid4().hex[:6]}"
            cfg = Path(tmp) / f"{prefix}.yaml"
            cfg.write_text(json.dumps({
                "model": {"registry": str(Path(tmp) / "reg")},
                "kafka": {"bootstrap_servers": broker.bootstrap, "input_topics": [f"{prefix}.in"],
                          "output_topic": f"{prefix}.out", "alerts_topic": f"{prefix}.alerts",
                          "dlq_topic": f"{prefix}.dlq", "control_topic": f"{prefix}.control",
                          "group_id": prefix, "partitions": 1},
                "websocket": {"enabled": False}, "metrics": {"enabled": False},
                "drift": {"enabled": enabled, "retrain": {"enabled": False}},
            }))
            asyncio.run(ensure_topics(broker.bootstrap, {f"{prefix}.in": 1, f"{prefix}.out": 1}))
            env = {k: v for k, v in os.environ.items() if not k.startswith("ANOMSTREAM_")}
            proc = subprocess.Popen([sys.executable, "-m", "stream", "serve", "--config", str(cfg), "--log-level", "WARNING"],
                                    env=env)
            try:
                ctx = mp.get_context("spawn")
                # A warm-up pass first: the service joins its consumer group (~5 s on the embedded
                # broker) and scores a first batch; events offered before that would wait as a backlog.
                for count, offered, measured in ((2_000, 2_000.0, False), (n, rate, True)):
                    go = ctx.Event()
                    prod = ctx.Process(target=_producer_main,
                                       args=(broker.bootstrap, f"{prefix}.in", count, base, offered, go), daemon=True)
                    prod.start()
                    skip = SKIP if measured else 0
                    lat = asyncio.run(_collect(broker.bootstrap, f"{prefix}.out", count, base, go, skip=skip))
                    prod.join(60)
                    base += count
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
            print(f"{'on' if enabled else 'off':>8} {np.percentile(lat, 50):>8.2f} {np.percentile(lat, 99):>8.2f} "
                  f"{lat.max():>8.2f}   ({lat.size:,} records)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=30_000)
    p.add_argument("--rate", type=float, default=5000.0)
    p.add_argument("--skip-e2e", action="store_true")
    args = p.parse_args()
    monitor_table()
    if not args.skip_e2e:
        e2e_table(args.events, args.rate)


if __name__ == "__main__":
    main()
