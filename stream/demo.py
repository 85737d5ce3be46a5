"""``anomstream demo``: the whole product on embedded defaults.

Starts the embedded broker, trains a first model on generated data when the
registry has none, runs ``anomstream serve`` and ``anomstream trainer`` as
child processes, offers synthetic events (1% anomalies, a mean shift halfway
through) at a steady rate, prints the dashboard URL (the service's WebSocket
server) and a one-line summary every second read back from the scores topic:
events/s, anomalies, event-to-record latency p50/p99, the model.  The control
topic's events are printed as they come: the shift is detected, a retrain is
requested, the trainer trains and validates a candidate on the shifted
events, and the service swaps to it without losing an event (the retraining
settings are shortened for the demo: :data:`DEMO_RETRAIN`).  A registry whose
served model came from such a retrain goes back to the newest version trained
on the generator's unshifted rows first, so each demo starts from the same
place.

When the duration ends the producer stops first and the summary keeps
reading until a score record has come back for every event offered (by
event id), or until no new record has come for :data:`DRAIN_IDLE_S`
seconds; the last line says which.  Ctrl-C stops everything at once (from
a terminal it reaches the broker and the service too).
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
from typing import Any

import numpy as np
import orjson

from stream.broker import DEFAULT_PORT, EmbeddedBroker, ensure_topics, port_open
from stream.errors import StreamError
from stream.settings import KafkaSettings
from stream.synthetic import SyntheticStream

__all__ = ["run_demo"]

N_FEATURES = 8
SEED = 7
CONTROL_TOPIC = KafkaSettings().control_topic  # the demo keeps the default
#: After the producer stops, how long the summary waits for a new score record before it gives up.
DRAIN_IDLE_S = 5.0
#: The demo's drift and retraining settings: a retrain ~2 s after a detection, trained within 8 s.
DEMO_RETRAIN = (
    "drift: {warmup_events: 4000, cooldown_events: 4000,\n"
    "        retrain: {min_interval_s: 20, budget_s: 8, min_events: 4000, window_events: 16000}}\n"
)


def _ensure_model(registry: Path, name: str) -> None:
    from models.registry import Registry

    reg = Registry(registry)
    current = reg.current(name)
    if current is not None:
        manual = [v for v in reg.versions(name) if reg.load(f"{name}@{v}").card.lineage.get("trigger") == "manual"]
        if manual and current not in manual:
            reg.promote(name, manual[-1], reason="rollback")
            print(f"model: {name}@{current} came from a retrain; the demo starts from {name}@{manual[-1]}", flush=True)
            current = manual[-1]
        print(f"model: using {name}@{current} from {registry}", flush=True)
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


def _describe(ev: dict[str, Any]) -> str:
    """One line for a control event."""
    kind, model = ev.get("type"), ev.get("model")
    if kind == "drift":
        on = f" in {', '.join(ev['features'])}" if ev.get("features") else ""
        return f"control: drift detected on the {ev.get('signal')} signal{on} after {ev.get('events')} events ({model})"
    if kind == "retrain_requested":
        return f"control: retrain requested by {model} ({ev.get('trigger')}), on the events since the detection"
    if kind == "retrain_finished":
        took = f" after {ev['duration_s']:.1f} s" if isinstance(ev.get("duration_s"), int | float) else ""
        if ev.get("status") == "failed":
            return f"control: retrain failed{took}: {ev.get('error')}"
        return f"control: retrain finished{took}: candidate {ev.get('candidate')} {ev.get('status')}"
    if kind == "model_promoted":
        return f"control: {model} promoted over {ev.get('previous')}; the service swaps to it between two batches"
    if kind == "model_rejected":
        return f"control: {model} rejected ({ev.get('reason')}); {ev.get('champion')} stays"
    return f"control: {kind} ({model})"


async def _summarise(
    bootstrap: str, stop: asyncio.Event, drain: asyncio.Event, ready: asyncio.Event, counts: dict[str, int],
    by_model: dict[str, int],
) -> None:
    """Print a line a second from the scores topic and each control event as it comes.

    After ``drain``, read until every event offered is scored.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from stream.kafka import stop_consumer

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=50, group_id=None)
    await consumer.start()
    await consumer.topics()  # fresh metadata: the demo has just created the topics
    parts = [TopicPartition(topic, p) for topic in ("scores", CONTROL_TOPIC)
             for p in sorted(consumer.partitions_for_topic(topic) or ())]
    if not any(tp.topic == "scores" for tp in parts):
        raise StreamError("the scores topic has no partitions on the broker")
    consumer.assign(parts)
    await consumer.seek_to_end(*parts)
    for tp in parts:  # fix the start at the current end, before the producer sends anything
        await consumer.position(tp)
    ready.set()
    window: deque[float] = deque(maxlen=20000)
    seen = bytearray()  # one flag per event id offered in this run
    n = anomalies = last_n = last_anomalies = 0
    model = "?"
    last = time.monotonic()
    started = last
    idle_since: float | None = None
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            now = time.time()
            got = 0
            for tp, msgs in batch.items():
                if tp.topic == CONTROL_TOPIC:
                    for m in msgs:
                        print(_describe(orjson.loads(m.value)), flush=True)
                    continue
                for m in msgs:
                    rec = orjson.loads(m.value)
                    n += 1
                    by_model[rec["model"]] = by_model.get(rec["model"], 0) + 1
                    got += 1
                    anomalies += rec["anomaly"]
                    model = rec["model"]
                    ts = rec.get("ts")
                    if isinstance(ts, float):
                        window.append((now - ts) * 1000.0)
                    ident = rec.get("id")
                    if isinstance(ident, int) and ident >= 0:
                        if ident >= len(seen):
                            seen.extend(bytes(ident + 1 - len(seen) + 4096))
                        seen[ident] = 1
            mono = time.monotonic()
            if mono - last >= 1.0:
                p50, p99 = np.percentile(np.array(window), [50, 99]) if window else (np.nan, np.nan)
                new, flagged = n - last_n, anomalies - last_anomalies
                print(f"[{mono - started:5.0f}s] {new / (mono - last):8.0f} events/s  scored {n:>8}  "
                      f"anomalies {anomalies:>6} (last second {flagged / max(new, 1):6.2%})  latency p50 {p50:6.1f} ms  "
                      f"p99 {p99:6.1f} ms  model {model}", flush=True)
                window.clear()
                last, last_n, last_anomalies = mono, n, anomalies
            if drain.is_set():
                sent = counts.get("sent", 0)
                if sum(seen[:sent]) == sent:
                    break
                idle_since = None if got else (idle_since or mono)
                if idle_since is not None and mono - idle_since >= DRAIN_IDLE_S:
                    break
        counts["scored"] = n
        counts["scored_offered"] = sum(seen[: counts.get("sent", 0)])
        counts["anomalies"] = anomalies
    finally:
        await stop_consumer(consumer)


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
            + DEMO_RETRAIN
        )
    service: subprocess.Popen[bytes] | None = None
    trainer: subprocess.Popen[bytes] | None = None
    try:
        asyncio.run(ensure_topics(bootstrap, {"events": 4, "scores": 4, "anomalies": 4, "events.dlq": 4,
                                              CONTROL_TOPIC: 4}))
        service = subprocess.Popen([sys.executable, "-m", "stream", "serve", "--config", cfg.name,
                                    "--log-level", "WARNING"])
        print(f"service: pid {service.pid}, metrics on http://127.0.0.1:{metrics_port}/metrics", flush=True)
        trainer = subprocess.Popen([sys.executable, "-m", "stream", "trainer", "--config", cfg.name,
                                    "--log-level", "WARNING"])
        print(f"trainer: pid {trainer.pid}, retrains on the control topic's requests", flush=True)
        print(f"dashboard: http://127.0.0.1:{ws_port}/  (live scores, anomalies, drift and model events)", flush=True)
        counts: dict[str, int] = {}
        by_model: dict[str, int] = {}
        asyncio.run(_demo_loop(bootstrap, rate, duration_s, counts, by_model, service))
        sent, scored = counts.get("sent", 0), counts.get("scored_offered", 0)
        if scored == sent:
            outcome = "every one scored"
        elif counts.get("interrupted"):
            outcome = f"interrupted: {sent - scored} not read back"
        else:
            outcome = f"{sent - scored} not scored within {DRAIN_IDLE_S:.0f} s of the last score record"
        print(f"done: {sent} events offered ({counts.get('injected', 0)} injected anomalies), "
              f"{counts.get('scored', 0)} score records read, {scored} of the offered events scored "
              f"({outcome}), {counts.get('anomalies', 0)} flagged; scored by "
              + ", ".join(f"{ref} ({k})" for ref, k in by_model.items()), flush=True)
    finally:
        for child in (trainer, service):
            if child is not None and child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in (trainer, service):
            if child is not None:
                try:
                    child.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    child.kill()
        os.unlink(cfg.name)
        if broker is not None:
            broker.stop()


async def _demo_loop(bootstrap: str, rate: int, duration_s: float | None, counts: dict[str, int],
                     by_model: dict[str, int], service: subprocess.Popen[bytes]) -> None:
    stop = asyncio.Event()  # the producer stops
    drain = asyncio.Event()  # the summary reads what is still on its way, then stops
    halt = asyncio.Event()  # Ctrl-C, or the service died: the summary stops at once
    ready = asyncio.Event()
    loop = asyncio.get_running_loop()

    def interrupt() -> None:
        # A terminal's Ctrl-C reaches the whole process group, the broker and the service included: no drain.
        counts["interrupted"] = 1
        stop.set()
        halt.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupt)
    drift_at = (duration_s or 120.0) / 2
    summary = asyncio.create_task(_summarise(bootstrap, halt, drain, ready, counts, by_model))
    waiting = asyncio.create_task(ready.wait())
    await asyncio.wait({waiting, summary}, return_when=asyncio.FIRST_COMPLETED)
    if not ready.is_set():  # the summary failed before it could read
        waiting.cancel()
        await summary
        return
    producer = asyncio.create_task(_produce(bootstrap, rate, stop, counts, drift_at))
    t0 = time.monotonic()
    while not summary.done():
        await asyncio.sleep(0.2)
        if service.poll() is not None and not halt.is_set():
            stop.set()
            halt.set()
            await asyncio.gather(producer, summary, return_exceptions=True)
            raise StreamError(f"the service exited with code {service.returncode}")
        if duration_s is not None and time.monotonic() - t0 >= duration_s:
            stop.set()
        if stop.is_set() and not drain.is_set() and not halt.is_set():
            await producer  # every event offered is with the broker before the count is final
            drain.set()
    await asyncio.gather(producer, summary)
