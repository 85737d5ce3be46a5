"""End-to-end benchmark: producer process → broker → ``anomstream serve`` → scores topic.

Run with ``make bench``.  Everything shares this machine: the embedded
broker, a producer in its own process, the service in its own process, and
the collector (this process) that reads the output topic.

Rows of the table:

* ceiling: the same messages produced by the same producer process, consumed
  with aiokafka ``getmany`` and decoded with orjson, no scoring and no output
  (what the parts underneath allow);
* anomstream: the service consuming, scoring (ONNX IForest), producing score
  records; throughput counted on the scores topic, latency from the event's
  ``ts`` (set by the producer at send time) to the arrival of its score record;
  once with each ``kafka.backend`` of ``--backends`` (the aiokafka runner, then
  the faust runner: same decoding, core, records and topics).

With ``--compression`` each codec gets its rows (the load generator
compressing its batches and the service producing with that
``kafka.compression``) and a table of bytes per record and encode/decode
time per codec, on the events and on score records read back.

Each scenario offers events at the maximum rate, at 5,000 and at 20,000
events/s, each on topics of its own (and, for the service, to a process of
its own): the embedded broker keeps topics in memory and slows down as one
grows (the ceiling at 20,000/s on one topic: p50 / p99 9.5 / 23.5 ms before
a 200,000-event run on the same topic, 14.3 / 51.1 ms after; on fresh
topics 9.6 / 20.0 and 9.6 / 20.1 ms).  The producer and the collector run
with Python's cyclic garbage collector paused (``gc.freeze`` then
``gc.disable``): its full collections took 30-160 ms there and counted as
service latency.  The service's resident set size (``VmRSS`` of its
process) is read after each of its runs; the figure printed is the largest.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from perf_registry import quiet_gc

N_FEATURES = 32
WARMUP_EVENTS = 6000  # past the drift monitor's default warm-up of 5,000 events
LOAD_BATCH_BYTES = 1 << 18
SERVICE_ROWS = {"aiokafka": "anomstream serve (decode, ONNX score, produce)",
                "faust": "anomstream serve, kafka.backend faust"}
LINGER_S = 0.005
SAMPLE_RECORDS = 4096  # score records kept from the collector for the codec table
_SAMPLE: list[bytes] = []
CODEC_BATCH = 512  # records per batch in the codec table (batching.max_batch's default)


def _payloads(n: int, seed: int, base: int = 0) -> list[bytes]:
    from stream.synthetic import SyntheticStream

    gen = SyntheticStream(n_features=N_FEATURES, seed=seed)
    X, _ = gen.sample(n, anomaly_rate=0.01)
    # ts is patched in at send time; a fixed-width placeholder keeps encoding out of the send loop.
    names = [f"x{j}" for j in range(N_FEATURES)]
    return [orjson.dumps({"id": base + i, "ts": 0.0, "features": {k: float(f"{v:.6g}") for k, v in zip(names, row)}})
            for i, row in enumerate(X.tolist())]


def _producer_main(bootstrap: str, topic: str, n: int, base: int, rate: float | None, ready: mp.Event, go: mp.Event,
                   cpu: Any, codec: str) -> None:
    asyncio.run(_produce(bootstrap, topic, n, base, rate, ready, go, cpu, codec))


async def _produce(bootstrap: str, topic: str, n: int, base: int, rate: float | None, ready: mp.Event, go: mp.Event,
                   cpu: Any, codec: str = "none") -> None:
    """Send ``n`` events, each stamped with its send time, in record batches built here.

    Batches go round-robin over the topic's partitions and are sent when full
    (256 KiB) or when their first event is 5 ms old, what the producer's
    ``linger_ms=5`` does.  Building them here (``create_batch`` / ``send_batch``)
    costs the load generator 2.7 CPU-µs per event against 10 µs for one
    ``send`` per event (100,000 events to the embedded broker, 2026-11-22), CPU
    that the cores' other tenants (broker, service, collector) then have.
    Sets ``cpu.value`` to the CPU seconds sending took (from the go to the last
    acknowledgement).  ``codec`` compresses the batches (``none``: not).
    """
    from aiokafka import AIOKafkaProducer

    bodies = [p.replace(b'"ts":0.0', b'"ts":%s') for p in _payloads(n, seed=1, base=base)]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, max_batch_size=LOAD_BATCH_BYTES, acks=1,
                                compression_type=None if codec == "none" else codec)
    await producer.start()
    parts = sorted(await producer.partitions_for(topic))
    quiet_gc()  # a collector pause here would delay stamped events and count as service latency
    ready.set()
    while not go.is_set():
        await asyncio.sleep(0.005)
    futures: list[asyncio.Future[Any]] = []
    batch: Any = None
    opened = 0.0
    sent = 0

    async def flush() -> None:
        nonlocal batch, sent
        futures.append(await producer.send_batch(batch, topic, partition=parts[sent % len(parts)]))
        batch, sent = None, sent + 1
        if len(futures) >= 64:
            await asyncio.gather(*futures)
            futures.clear()

    cpu0 = time.process_time()
    t0 = time.perf_counter()
    clock = time.time
    for i, body in enumerate(bodies):
        if rate is not None:
            due = t0 + i / rate
            while True:
                now = time.perf_counter()
                if batch is not None and now - opened >= LINGER_S:
                    await flush()
                    continue
                if due - now <= 0.002:
                    break
                wake = due if batch is None else min(due, opened + LINGER_S)
                await asyncio.sleep(max(wake - now, 0.0))
        value = body % repr(clock()).encode()
        if batch is not None and batch.append(key=None, value=value, timestamp=None) is not None:
            continue
        if batch is not None:  # full
            await flush()
        batch, opened = producer.create_batch(), time.perf_counter()
        batch.append(key=None, value=value, timestamp=None)
    if batch is not None:
        await flush()
    await asyncio.gather(*futures)
    cpu.value = time.process_time() - cpu0
    await producer.stop()


def _start_producer(bootstrap: str, topic: str, n: int, base: int, rate: float | None,
                    codec: str = "none") -> tuple[mp.Process, mp.Event, Any]:
    ctx = mp.get_context("spawn")
    ready, go, cpu = ctx.Event(), ctx.Event(), ctx.Value("d", float("nan"))
    proc = ctx.Process(target=_producer_main, args=(bootstrap, topic, n, base, rate, ready, go, cpu, codec),
                       daemon=True)
    proc.start()
    if not ready.wait(60):
        raise RuntimeError("producer did not start")
    return proc, go, cpu


async def _collect(bootstrap: str, topic: str, n: int, base: int, timeout_s: float, go: mp.Event,
                   watch: dict[str, int]) -> tuple[float, np.ndarray, dict[str, float]]:
    """Let the producer go and read until every id in ``[base, base + n)`` arrived.

    Records outside the range are skipped: the embedded broker's end offsets
    can point before the true end, so a consumer positioned "at the end" may
    first see older records.  Returns events/s (first to last in-range record),
    per-event latency in ms (first arrival of each id) and the CPU seconds each
    process of ``watch`` (name → pid) and this one (``collector``) used from
    the go to the last record.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, fetch_max_wait_ms=5,
                                max_partition_fetch_bytes=8 << 20)
    await consumer.start()
    parts = [TopicPartition(topic, p) for p in sorted(await _partitions(consumer, topic))]
    consumer.assign(parts)
    await consumer.seek_to_end(*parts)
    for tp in parts:
        await consumer.position(tp)
    quiet_gc()  # a collector pause here would hold arrived records and count as service latency
    cpu0 = {name: _cpu_s(pid) for name, pid in watch.items()} | {"collector": time.process_time()}
    go.set()
    lat = np.full(n, np.nan)
    sample = topic.endswith(".scores")  # the service's score records, for the codec table
    got = 0
    first = last = 0.0
    deadline = time.monotonic() + timeout_s
    loads = orjson.loads
    try:
        while got < n and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=100, max_records=10000)
            now = time.time()
            fresh = 0
            for msgs in batch.values():
                for m in msgs:
                    rec = loads(m.value)
                    if sample and len(_SAMPLE) < SAMPLE_RECORDS:
                        _SAMPLE.append(m.value)
                    i = rec["id"] - base
                    if 0 <= i < n and lat[i] != lat[i]:  # first arrival of an id of this run
                        lat[i] = (now - float(rec["ts"])) * 1000.0
                        fresh += 1
            if fresh:
                got += fresh
                if not first:
                    first = time.perf_counter()
                last = time.perf_counter()
        cpu1 = {name: _cpu_s(pid) for name, pid in watch.items()} | {"collector": time.process_time()}
    finally:
        gc.enable()
        await consumer.stop()
    if got < n:
        raise RuntimeError(f"only {got} of {n} records arrived on {topic} within {timeout_s:.0f} s")
    return got / max(last - first, 1e-9), lat, {name: cpu1[name] - cpu0[name] for name in cpu0}


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far, from /proc (Linux); NaN where unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


async def _partitions(consumer: object, topic: str) -> set[int]:
    for _ in range(100):
        parts = consumer.partitions_for_topic(topic)  # type: ignore[attr-defined]
        if parts:
            return set(parts)
        await consumer._client.force_metadata_update()  # type: ignore[attr-defined]
        await asyncio.sleep(0.05)
    raise RuntimeError(f"topic {topic} has no partitions")


_next_base = [0]


def _rss_mib(pid: int) -> float:
    """Resident set size of a process from /proc (Linux), MiB; NaN where unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _scenario(bootstrap: str, topic_in: str, topic_out: str, n: int, rate: float | None, watch: dict[str, int],
              on_ready: Callable[[], object] | None = None,
              codec: str = "none") -> tuple[float, np.ndarray, dict[str, float]]:
    """One run: events/s, latencies (ms) and CPU seconds per process (``watch``, ``collector``, ``load``)."""
    base = _next_base[0]
    _next_base[0] += n
    proc, go, load_cpu = _start_producer(bootstrap, topic_in, n, base, rate, codec)
    if on_ready is not None:
        on_ready()
    try:
        eps, lat, cpu = asyncio.run(_collect(bootstrap, topic_out, n, base, timeout_s=300, go=go, watch=watch))
    finally:
        proc.join(60)
    return eps, lat, cpu | {"load": load_cpu.value}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="events per max-rate run")
    parser.add_argument("--paced-seconds", type=float, default=10.0, help="length of each paced run")
    parser.add_argument("--rates", default="max,5000,20000", help="offered rates, events/s ('max' = unpaced)")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the ceiling rows")
    parser.add_argument("--backends", default="aiokafka,faust",
                        help="kafka.backend of the service rows (comma-separated: aiokafka, faust)")
    parser.add_argument("--service-settings", type=json.loads, default={}, metavar="JSON",
                        help="config sections for the service, e.g. '{\"batching\": {\"max_latency_ms\": 5}}' "
                             "(each section given replaces the bench's)")
    parser.add_argument("--artifact", type=Path, default=None, metavar="DIR",
                        help="serve this exported artifact (model.onnx + card.json, 32 features x0..x31, e.g. "
                             "from bench_core.py --export) instead of training an IForest here")
    parser.add_argument("--compression", default="none", metavar="CODECS",
                        help="kafka.compression of the service rows, comma-separated (none, gzip, snappy, lz4, "
                             "zstd); the load generator compresses its batches with the same codec")
    parser.add_argument("--py-spy", type=Path, default=None, metavar="FILE",
                        help="record the service with py-spy (collapsed stacks) during its max-rate run")
    args = parser.parse_args()
    overrides = dict(args.service_settings)

    from perf_registry import train_iforest

    from stream.broker import EmbeddedBroker, ensure_topics

    tmp = Path(tempfile.mkdtemp(prefix="anomstream-bench-"))
    from stream.synthetic import SyntheticStream

    gen = SyntheticStream(n_features=N_FEATURES, seed=1)
    X, _ = gen.sample(10_000, anomaly_rate=0.01)
    if args.artifact is None:
        train_iforest(tmp, X)
        model_name = "IForest (100 trees)"
    else:  # a machine without the training extras (a GPU machine): serve what was exported elsewhere
        from models.artifact import Artifact
        from models.registry import Registry

        art = Artifact.load(args.artifact)
        Registry(tmp / "models").register("default", art.model_path.read_bytes(), art.card)
        model_name = f"{art.card.detector.get('algorithm', '?')} from {args.artifact}"
    sample = _payloads(1, 0)[0]
    print(f"model: {model_name}, {N_FEATURES} features; event size ≈ {len(sample)} B; "
          f"{os.cpu_count()} CPUs; broker: embedded Tansu", flush=True)

    codecs = args.compression.split(",")
    tag = (lambda c: f" [{c}]") if codecs != ["none"] else (lambda c: "")
    rows: list[tuple[str, str, str, float, np.ndarray | None, dict[str, float]]] = []
    scenarios = [("max", args.events, None) if r == "max" else (f"{int(r):,}/s", int(int(r) * args.paced_seconds), float(r))
                 for r in args.rates.split(",")]
    rss_mib: list[float] = []
    with EmbeddedBroker(port=0) as broker:
        bs = broker.bootstrap
        run = uuid.uuid4().hex[:6]
        # Ceiling: produce → consume → orjson, no scoring.
        for codec in codecs:
            for label, n, rate in ([] if args.no_ceiling else scenarios):
                topic = f"ceiling-{run}-{codec}-{label.replace(',', '').replace('/', '')}"
                asyncio.run(ensure_topics(bs, {topic: 4}))
                eps, lat, cpu = _scenario(bs, topic, topic, n, rate, watch={"broker": broker.pid or 0}, codec=codec)
                rows.append(("ceiling: aiokafka produce → consume → orjson" + tag(codec), codec, label, eps, lat, cpu))
                print(f"  ceiling{tag(codec)} {label}: {eps:,.0f} events/s", flush=True)
        # The service: a fresh process on fresh topics for each scenario, like the ceiling rows (the
        # embedded broker slows down as a topic grows: see the module docstring).
        runs = [(backend, codec, scenario) for backend in args.backends.split(",") for codec in codecs
                for scenario in scenarios]
        for i, (backend, codec, (label, n, rate)) in enumerate(runs):
            prefix = f"svc-{run}-{i}"
            topics = {f"{prefix}.{t}": 4 for t in ("events", "scores", "anomalies", "dlq", "control")}
            asyncio.run(ensure_topics(bs, topics))
            cfg = tmp / f"service-{i}.yaml"
            cfg.write_text(json.dumps({
                "model": {"registry": str(tmp / "models"), "name": "default"},
                "kafka": {"bootstrap_servers": bs, "backend": backend, "input_topics": [f"{prefix}.events"],
                          "output_topic": f"{prefix}.scores", "alerts_topic": f"{prefix}.anomalies",
                          "dlq_topic": f"{prefix}.dlq", "control_topic": f"{prefix}.control", "group_id": prefix,
                          "compression": codec},
                "websocket": {"enabled": False}, "metrics": {"enabled": False},
            } | overrides))
            log_path = tmp / f"serve-{i}.log"
            with open(log_path, "wb") as svc_log:
                svc = subprocess.Popen([sys.executable, "-m", "stream", "serve", "--config", str(cfg),
                                        "--log-level", "INFO"], stdout=svc_log, stderr=subprocess.STDOUT)
            print(f"service log: {log_path}", flush=True)
            try:
                # Warm up: the service joins its group, and the drift monitor takes its reference from
                # the first drift.warmup_events (5,000) events, outside the measured run.
                _scenario(bs, f"{prefix}.events", f"{prefix}.scores", WARMUP_EVENTS, 5000.0, watch={}, codec=codec)
                spies: list[subprocess.Popen[bytes]] = []

                def spy(pid: int = svc.pid, spies: list[subprocess.Popen[bytes]] = spies) -> None:
                    spies.append(subprocess.Popen([_py_spy(), "record", "-p", str(pid), "-r", "100", "-d", "4",
                                                   "-f", "raw", "-o", str(args.py_spy)], stdout=subprocess.DEVNULL))

                profile = args.py_spy is not None and rate is None
                eps, lat, cpu = _scenario(bs, f"{prefix}.events", f"{prefix}.scores", n, rate,
                                          watch={"service": svc.pid, "broker": broker.pid or 0},
                                          on_ready=spy if profile else None, codec=codec)
                for p in spies:
                    p.wait(60)
                rows.append((SERVICE_ROWS[backend] + tag(codec), codec, label, eps, lat, cpu))
                rss_mib.append(_rss_mib(svc.pid))
                print(f"  anomstream ({backend}){tag(codec)} {label}: {eps:,.0f} events/s, RSS {rss_mib[-1]:.0f} MiB",
                      flush=True)
            finally:
                svc.send_signal(signal.SIGTERM)
                svc.wait(30)

    ceiling = {(codec, label): eps for name, codec, label, eps, _, _ in rows if name.startswith("ceiling")}
    print()
    print(f"| {'pipeline':<48} | {'offered':>8} | {'events/s':>9} | {'p50 ms':>7} | {'p99 ms':>7} | {'vs ceiling':>10} |")
    print(f"|{'-' * 50}|{'-' * 10}|{'-' * 11}|{'-' * 9}|{'-' * 9}|{'-' * 12}|")
    for name, codec, label, eps, lat, _ in rows:
        p50, p99 = (np.percentile(lat, [50, 99]) if lat is not None else (np.nan, np.nan))
        vs = f"{eps / ceiling[codec, label]:.2f}" if (codec, label) in ceiling else "n/a"
        print(f"| {name:<48} | {label:>8} | {eps:>9,.0f} | {p50:>7.1f} | {p99:>7.1f} | {vs:>10} |")
    if rss_mib:
        print(f"\nservice resident set (VmRSS) after each run: {', '.join(f'{r:.0f}' for r in rss_mib)} MiB; "
              f"largest {max(rss_mib):.0f} MiB")
    print("\nlatency: event ts (producer send) → record read by the collector; max-rate latency includes the backlog.")
    print("\nCPU per event of each process over the measured run (µs; the load generator from its go to its last "
          "acknowledgement, the others from the go to the last record)\n")
    print(f"| {'pipeline':<10} | {'offered':>8} | {'service':>8} | {'broker':>8} | {'load':>8} | {'collector':>9} | {'total':>8} |")
    print(f"|{'-' * 12}|{'-' * 10}|{'-' * 10}|{'-' * 10}|{'-' * 10}|{'-' * 11}|{'-' * 10}|")
    for name, codec, label, eps, lat, cpu in rows:
        n_events = len(lat) if lat is not None else 0
        per = {k: v / max(n_events, 1) * 1e6 for k, v in cpu.items()}
        cells = [f"{per[k]:>8.1f}" if k in per else f"{'—':>8}" for k in ("service", "broker", "load")]
        total = float(np.nansum(list(per.values())))
        who = ("faust" if "faust" in name else name.split(":")[0].split()[0]) + tag(codec)
        print(f"| {who:<10} | {label:>8} | {' | '.join(cells)} | {per['collector']:>9.1f} | {total:>8.1f} |")
    if codecs != ["none"]:
        _codec_table(codecs)


def _codec_table(codecs: list[str]) -> None:
    """Bytes per record and encode/decode time of each codec, with aiokafka's own codec functions.

    The values of ``CODEC_BATCH`` records, concatenated (a record batch's
    payload without its per-record headers): the load generator's events and
    score records read back from the service's output.
    """
    from aiokafka import codec as kc

    coders = {"gzip": (kc.gzip_encode, kc.gzip_decode), "snappy": (kc.snappy_encode, kc.snappy_decode),
              "lz4": (kc.lz4_encode, kc.lz4_decode), "zstd": (kc.zstd_encode, kc.zstd_decode)}
    events = _payloads(CODEC_BATCH, seed=1)
    samples = {"input events": b"".join(events), "score records": b"".join(_SAMPLE[:CODEC_BATCH])}
    print(f"\ncodecs on batches of {CODEC_BATCH} records (aiokafka's codec functions, best of 20 calls)\n")
    print(f"| {'records':<13} | {'codec':<6} | {'bytes/record':>12} | {'ratio':>6} | {'encode µs/record':>16} | "
          f"{'decode µs/record':>16} |")
    print(f"|{'-' * 15}|{'-' * 8}|{'-' * 14}|{'-' * 8}|{'-' * 18}|{'-' * 18}|")
    for what, raw in samples.items():
        n = CODEC_BATCH if what == "input events" else min(CODEC_BATCH, len(_SAMPLE))
        for codec in codecs:
            if codec == "none":
                print(f"| {what:<13} | {codec:<6} | {len(raw) / n:>12.1f} | {1.0:>6.2f} | {'—':>16} | {'—':>16} |")
                continue
            enc, dec = coders[codec]
            packed = enc(raw)
            assert dec(packed) == raw
            t_enc = min(_timed(enc, raw) for _ in range(20))
            t_dec = min(_timed(dec, packed) for _ in range(20))
            print(f"| {what:<13} | {codec:<6} | {len(packed) / n:>12.1f} | {len(raw) / len(packed):>6.2f} | "
                  f"{t_enc / n * 1e6:>16.3f} | {t_dec / n * 1e6:>16.3f} |")


def _timed(fn: Callable[[bytes], object], data: bytes) -> float:
    t0 = time.perf_counter()
    fn(data)
    return time.perf_counter() - t0


def _py_spy() -> str:
    """py-spy from the running interpreter's environment (the dev extra), else from PATH."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else "py-spy"


if __name__ == "__main__":
    main()

