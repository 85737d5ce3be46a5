"""The faust runner beside the aiokafka runner: backlog throughput of ``anomstream serve``.

Run with ``make bench``.  For each ``kafka.backend`` a fresh 4-partition input
topic is filled with the same events (32 features), then ``anomstream serve``
starts on it in its own process and this process reads the scores topic.
Throughput counts score records per second of the records' own ``scored_at``
span (start-up excluded); start-up is the time from process start to the
first score record.  Model: IForest (100 trees) as in ``bench_e2e.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson

N_FEATURES = 32


def _payloads(n: int) -> list[bytes]:
    from stream.synthetic import SyntheticStream

    gen = SyntheticStream(n_features=N_FEATURES, seed=0)
    X, _ = gen.sample(n, anomaly_rate=0.01)
    names = [f"x{j}" for j in range(N_FEATURES)]
    now = time.time()
    return [orjson.dumps({"id": i, "ts": now, "features": dict(zip(names, row))}) for i, row in enumerate(X.tolist())]


async def _produce(bootstrap: str, topic: str, payloads: list[bytes]) -> None:
    from aiokafka import AIOKafkaProducer

    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=256 << 10)
    await p.start()
    try:
        futs = [await p.send(topic, v, key=str(i % 64).encode()) for i, v in enumerate(payloads)]
        await asyncio.gather(*futs)
    finally:
        await p.stop()


async def _collect(bootstrap: str, topic: str, n: int, timeout_s: float) -> tuple[list[float], float]:
    from aiokafka import AIOKafkaConsumer

    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                         fetch_max_wait_ms=100)
    await c.start()
    scored_at: list[float] = []
    first: float | None = None
    deadline = time.monotonic() + timeout_s
    try:
        while len(scored_at) < n and time.monotonic() < deadline:
            for msgs in (await c.getmany(timeout_ms=500, max_records=10_000)).values():
                if msgs and first is None:
                    first = time.monotonic()
                scored_at.extend(orjson.loads(m.value)["scored_at"] for m in msgs)
    finally:
        await c.stop()
    return scored_at, first if first is not None else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--backends", default="aiokafka,faust")
    args = parser.parse_args()


    from perf_registry import train_iforest

    from stream.broker import EmbeddedBroker, ensure_topics
    from stream.synthetic import SyntheticStream

    tmp = Path(tempfile.mkdtemp(prefix="anomstream-bench-faust-"))
    X, _ = SyntheticStream(n_features=N_FEATURES, seed=0).sample(10_000, anomaly_rate=0.01)
    train_iforest(tmp, X)
    payloads = _payloads(args.events)
    print(f"{args.events:,} events of {N_FEATURES} features (≈{len(payloads[0])} B) per backend; "
          f"{os.cpu_count()} CPUs; embedded Tansu; batching max_batch 512, max_latency_ms 20", flush=True)
    rows = []
    with EmbeddedBroker(port=0) as broker:
        bs = broker.bootstrap
        for backend in args.backends.split(","):
            prefix = f"bf-{backend}-{uuid.uuid4().hex[:6]}"
            asyncio.run(ensure_topics(bs, {f"{prefix}.{t}": 4 for t in ("events", "scores", "anomalies", "dlq", "control")}))
            asyncio.run(_produce(bs, f"{prefix}.events", payloads))
            cfg = tmp / f"{backend}.yaml"
            cfg.write_text(json.dumps({
                "model": {"registry": str(tmp / "models")},
                "kafka": {"bootstrap_servers": bs, "backend": backend, "input_topics": [f"{prefix}.events"],
                          "output_topic": f"{prefix}.scores", "alerts_topic": f"{prefix}.anomalies",
                          "dlq_topic": f"{prefix}.dlq", "control_topic": f"{prefix}.control", "group_id": prefix},
                "websocket": {"enabled": False}, "metrics": {"enabled": False}, "drift": {"enabled": False},
            }))
            with open(tmp / f"{backend}.log", "wb") as log:
                t0 = time.monotonic()
                svc = subprocess.Popen([sys.executable, "-m", "stream", "serve", "--config", str(cfg)],
                                       stdout=log, stderr=subprocess.STDOUT)
            try:
                scored_at, first = asyncio.run(_collect(bs, f"{prefix}.scores", args.events, timeout_s=600))
            finally:
                svc.send_signal(signal.SIGTERM)
                svc.wait(60)
            span = max(scored_at) - min(scored_at) if scored_at else float("nan")
            rows.append((backend, len(scored_at), first - t0, len(scored_at) / span))
            print(f"  {backend}: {len(scored_at):,} records, {len(scored_at) / span:,.0f} events/s", flush=True)
    print()
    print(f"| {'kafka.backend':<14} | {'records':>8} | {'start-up s':>10} | {'events/s':>9} | {'vs aiokafka':>11} |")
    print(f"|{'-' * 16}|{'-' * 10}|{'-' * 12}|{'-' * 11}|{'-' * 13}|")
    base = rows[0][3]
    for backend, n, startup, eps in rows:
        print(f"| {backend:<14} | {n:>8,} | {startup:>10.1f} | {eps:>9,.0f} | {eps / base:>11.2f} |")


if __name__ == "__main__":
    main()
