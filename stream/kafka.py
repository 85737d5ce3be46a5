"""The Kafka runner: consumer group → micro-batches → core → output topics.

Per fetched batch: decode and validate (:mod:`stream.decoding`), score
(:class:`stream.core.Scorer`), then produce one score record per valid event
to ``output_topic``, the admitted anomalies to ``alerts_topic`` and one
dead-letter record per bad event to ``dlq_topic``.  Offsets are committed only
after the broker acknowledged every record produced for them (at-least-once:
after a crash, events since the last commit are scored again; none is lost).

Batching: ``getmany(max_records=max_batch, timeout_ms=max_latency_ms)`` returns
as soon as records are buffered, so an idle service scores each arrival at
once while a busy one scores full batches; ``fetch_max_wait_ms`` is tied to
``max_latency_ms`` (aiokafka's default of 500 ms adds about 110 ms of median
latency against the embedded broker).  Records are appended to one producer
batch per (topic, partition), not sent one by one.  Production of batch *k*
overlaps the fetching and scoring of batch *k+1*; commits stay in order and
run as a task beside the loop, the batches acknowledged during one commit
going out together in the next (the loop never waits on a commit's round
trip).

Client settings, chosen by ``tests/perf/bench_e2e.py`` on the 2-core machine
(embedded broker; max-rate events/s, p50/p99 ms at 5,000/s): the defaults here
(``acks="all"``, ``linger_ms=2``, fetch wait = ``max_latency_ms``) gave 41.8k,
20/35 ms; ``acks=1`` 39.5k, 22/42; ``linger_ms=0`` 36.2k, 19/35; a 5 ms fetch
wait 37.0k, 22/54.  All within run-to-run noise, so the safe ``acks="all"``
stays.  Batch sizes (three alternating rounds, 2026-11-23, IForest; events/s at
the maximum rate, service CPU-µs per event): producer batches of up to 1 MiB
36.3k, 38.0k, 37.7k at ~24.4 µs against 20.9k, 17.3k, 23.0k at 30.5–35.2 µs
with aiokafka's default of 16 KiB (the broker's CPU per event doubled too);
fetches of up to 4 MiB per partition against aiokafka's 1 MiB, 38.2k, 39.1k,
41.5k: the same within the noise, and 4 MiB keeps an oversized event (over
1 MiB, dead-lettered as ``too_large``) fetchable from brokers that return
only what fits.  Per event, latencies go into the histogram as one bucket count per
batch (:func:`stream.metrics.observe_many`), not one ``observe`` call each.

Compression (``kafka.compression``, the codec of the batches produced; input
batches are read in any codec, cramjam being a dependency): the service's
score records shrink 8.4× with zstd, 5.8× with lz4, 4.4× with snappy and 8.6×
with gzip, and batches of input events 2.8×, 2.3×, 1.7× and 3.1× (batches of
512, aiokafka's codec functions).  With the load generator compressing its
events in the same codec (``bench_e2e.py --compression``, IForest, 2-core
machine), the service's CPU per event at the maximum rate was within the
noise of uncompressed for zstd (22.7–25.8 against 20.3–25.0 µs, alternating
runs) and the embedded broker's fell from ~10 to ~6 µs; at 5,000 events/s
p50 / p99 20.8 / 34.0 ms against 20.6 / 35.6.  aiokafka's gzip runs at level
9 (4.0 µs per score record to encode, 98 µs per input event) and its lz4 at
~27 MB/s (17.9 µs per input event): gzip took the service from 47.5k to 9.4k
events/s.  The default stays ``none``, which every consumer can read; zstd
is the codec to choose where the consumers of the output topics support it
(Kafka clients from 2.1 on; Python clients through a codec library).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from stream.alerts import AlertFilter
from stream.batching import split_batches
from stream.core import ScoredBatch
from stream.decoding import DecodedBatch, EventDecoder
from stream.metrics import Metrics
from stream.records import Source, dlq_record, dumps, encoded_score_records, score_records

__all__ = ["KafkaRunner", "LiveModel", "RecordSink", "ScoredHook", "stop_consumer", "tail_control"]

log = logging.getLogger(__name__)
# The input consumers' fetch size per partition (the docstring's "Batch sizes"; the faust runner's and the
# trainer's window reader take it too).
FETCH_BYTES = 4 << 20

RecordSink = Callable[[str, list[dict[str, Any]] | list[bytes]], None]  # records as dicts or encoded JSON
ControlSink = Callable[[str, list[dict[str, Any]]], None]
ScoredHook = Callable[[DecodedBatch, ScoredBatch, dict[TopicPartition, int]], None]
"""Called with every scored batch (decoded rows, scores, next offsets): the drift monitor's seam."""


class LiveModel:
    """The scorer currently served and its decoder; swapped between batches."""

    def __init__(self, scorer: Any) -> None:
        self.set(scorer)

    def set(self, scorer: Any) -> None:
        self.scorer = scorer
        # Cold start before its first parseable event: a placeholder that rejects what it sees.
        self.decoder = EventDecoder(scorer.features or ("features",))

    def adopt_features(self, values: Sequence[Any]) -> bool:
        """Cold start: learn the feature names from the first event that parses; True once known."""
        if self.scorer.features:
            return True
        from stream.coldstart import features_of

        names = features_of(values)
        if not names:
            return False
        self.scorer.adopt_features(names)
        self.decoder = EventDecoder(names)
        return True


@dataclass(slots=True)
class _InFlight:
    acks: asyncio.Future[Any]
    offsets: dict[TopicPartition, int]


class _DrainOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: KafkaRunner) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self.runner.drain()
        if revoked:
            log.info("partitions revoked: %s", ", ".join(f"{tp.topic}[{tp.partition}]" for tp in revoked))

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        log.info("partitions assigned: %s", ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(assigned)) or "none")


class KafkaRunner:
    """Score events from Kafka topics until stopped.

    Parameters
    ----------
    bootstrap : str
        Kafka bootstrap servers.
    input_topics, output_topic, alerts_topic, dlq_topic, group_id
        As in the ``kafka`` config section.
    model : LiveModel
        The model to score with (may be swapped while running).
    alert_filter : AlertFilter
    metrics : Metrics
    max_batch, max_latency_ms
        The ``batching`` config section.
    compression : {"none", "gzip", "snappy", "lz4", "zstd"}
        Codec of the record batches produced (``kafka.compression``); batches
        consumed are read in any codec.
    client : mapping, optional
        The clients' security options (:func:`stream.broker.client_options`).
    max_in_flight : int
        Scored batches whose records may await acknowledgement at once.
    on_records : callable, optional
        Called with (stream name, records) for every published batch
        (``"scores"``, ``"anomalies"``); the seam for WebSocket fan-out.
    on_scored : callable, optional
        Called with (decoded batch, scored batch, next offsets) for every batch
        (the drift monitor).
    on_alerts : callable, optional
        Called with the alert records of every batch that has some (after the
        severity floor and cooldown, with their ``episode``): the seam for the
        webhook and JSONL sinks, which queue them off the hot path.
    """

    def __init__(
        self, *, bootstrap: str, input_topics: Sequence[str], output_topic: str, alerts_topic: str,
        dlq_topic: str, group_id: str, model: LiveModel, alert_filter: AlertFilter, metrics: Metrics,
        max_batch: int = 512, max_latency_ms: float = 20.0, compression: str = "none",
        client: Mapping[str, Any] | None = None, max_in_flight: int = 4, on_records: RecordSink | None = None, on_scored: ScoredHook | None = None,
        on_alerts: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> None:
        self.model = model
        self.output_topic, self.alerts_topic, self.dlq_topic = output_topic, alerts_topic, dlq_topic
        self.alert_filter = alert_filter
        self.metrics = metrics
        self.max_batch = max_batch
        self.max_latency_ms = max_latency_ms
        self.max_in_flight = max_in_flight
        self.on_records = on_records
        self.on_scored = on_scored
        self.on_alerts = on_alerts
        self.input_topics = tuple(input_topics)
        self.group_id = group_id
        self.fetch_wait_ms = max(1, int(max_latency_ms))
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False,
            auto_offset_reset="earliest", fetch_max_wait_ms=self.fetch_wait_ms, max_partition_fetch_bytes=FETCH_BYTES,
            client_id="anomstream", **(client or {}),
        )
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", linger_ms=2, max_batch_size=1 << 20,
            max_request_size=4 << 20, client_id="anomstream",
            compression_type=None if compression == "none" else compression, **(client or {}),
        )
        self._partitioner = DefaultPartitioner()
        self._partitions: dict[str, list[int]] = {}
        self._pending: deque[_InFlight] = deque()
        self._acked: dict[TopicPartition, int] = {}
        self._commit_task: asyncio.Future[Any] | None = None
        self.scored = 0
        self.rejected = 0

    async def __aenter__(self) -> Self:
        await self._producer.start()
        try:
            for topic in (self.output_topic, self.alerts_topic, self.dlq_topic):
                self._partitions[topic] = sorted(await self._producer.partitions_for(topic))
            self._consumer.subscribe(list(self.input_topics), listener=_DrainOnRevoke(self))
            await self._consumer.start()
        except BaseException:
            await self._producer.stop()
            raise
        log.info("consuming %s as a member of group %r", ", ".join(self.input_topics), self.group_id)
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if et is None or et is asyncio.CancelledError:
                await self.drain()
        finally:
            await stop_consumer(self._consumer)
            await self._producer.stop()

    async def run(self, stop: asyncio.Event, *, stop_after: int | None = None) -> None:
        """Consume, score and publish until ``stop`` is set (or ``stop_after`` events)."""
        consumer = self._consumer
        seen = 0
        while not stop.is_set():
            fetched = await consumer.getmany(timeout_ms=int(self.max_latency_ms) or 1, max_records=self.max_batch)
            if not fetched:
                self._settle()  # an idle service still commits what was acknowledged
                continue
            messages = [m for tp in sorted(fetched) for m in fetched[tp]]
            for batch in split_batches(messages, self.max_batch):
                await self._publish(batch)
            self._update_lag(fetched)
            seen += len(messages)
            if stop_after is not None and seen >= stop_after:
                break
        await self.drain()

    async def drain(self) -> None:
        """Wait for every in-flight batch to be acknowledged and its offsets committed, in order."""
        while self._pending:
            await self._pending[0].acks  # raises if the broker refused a record: nothing is committed then
            self._settle()
        task, self._commit_task = self._commit_task, None
        if task is not None:
            await task
        if self._acked:
            offsets, self._acked = self._acked, {}
            await self._consumer.commit(offsets)

    def _settle(self) -> None:
        """Move acknowledged batches (in order) to the offsets to commit; commit them unless a commit is running.

        The commit runs as a task beside the loop rather than in it: a commit is a
        broker round trip, and under load the batches acknowledged while one is in
        flight go out together in the next (one commit per round trip, not per batch).
        """
        pending, acked = self._pending, self._acked
        while pending and pending[0].acks.done():
            head = pending.popleft()
            head.acks.result()  # raises if the broker refused a record: nothing of it is committed
            acked.update(head.offsets)  # later batches carry later offsets of the same partitions
        task = self._commit_task
        if task is not None:
            if not task.done():
                return
            self._commit_task = None
            task.result()  # a failed commit stops the runner, as an inline one would
        if acked:
            self._acked = {}
            self._commit_task = asyncio.ensure_future(self._consumer.commit(acked))

    async def _publish(self, messages: Sequence[Any]) -> None:
        outputs, offsets = self._process(messages)
        futures = await self._send(outputs)
        self._pending.append(_InFlight(asyncio.gather(*futures), offsets))
        while len(self._pending) > self.max_in_flight:
            await self._pending[0].acks  # backpressure: at most max_in_flight batches unacknowledged
            self._settle()
        self._settle()

    def _process(self, messages: Sequence[Any]) -> tuple[list[tuple[str, int, bytes | None, bytes]], dict[TopicPartition, int]]:
        """Decode, score and encode one batch (synchronous: no awaits per event)."""
        live = self.model
        values = [msg.value if msg.value is not None else b"" for msg in messages]
        if not live.scorer.features:  # cold start: features from the first event
            live.adopt_features(values)
        scorer, decoder = live.scorer, live.decoder
        m = self.metrics
        now = time.time()
        decoded = decoder.decode(values)
        scored = scorer.score(decoded.X)
        scored_at = time.time()
        keys = [msg.key.decode("utf-8", "replace") if msg.key is not None else None for msg in messages]
        stamps = np.fromiter((messages[i].timestamp or 0 for i in decoded.rows), np.float64, len(decoded.rows))
        received = np.where(stamps > 0, stamps / 1000.0, now)
        # The score records straight to JSON in one compiled call where it can (records.c); dicts then only
        # for the anomalous rows, which the alerts read.
        encoded = encoded_score_records(
            decoded, scored, model=scorer.ref, features=scorer.features, scored_at=scored_at, received_at=received,
            keys=keys, topics=[msg.topic for msg in messages],
            partitions=np.fromiter((msg.partition for msg in messages), np.int64, len(messages)),
            offsets=np.fromiter((msg.offset for msg in messages), np.int64, len(messages)),
        )
        sources = _Sources(messages)
        anomalous_rows = scored.anomalous_rows.tolist()
        if encoded is None or anomalous_rows:
            records = score_records(
                decoded, scored, model=scorer.ref, features=scorer.features, scored_at=scored_at,
                received_at=received, keys=keys, sources=sources, only=None if encoded is None else anomalous_rows,
            )
        if encoded is None:
            encoded = [dumps(rec) for rec in records]
            anomalies = [records[i] for i in anomalous_rows]
        else:
            anomalies = records if anomalous_rows else []
        outputs: list[tuple[str, int, bytes | None, bytes]] = []
        parts = self._partitions
        out_parts = parts[self.output_topic]
        for value, pos in zip(encoded, decoded.rows):
            msg = messages[pos]
            outputs.append((self.output_topic, self._partition(msg.key, msg.partition, out_parts), msg.key, value))
        if anomalies:
            sev = scored.severity[scored.anomalous_rows].tolist()
            alerts = self.alert_filter.select(anomalies, sev, scored_at)
            alert_parts = parts[self.alerts_topic]
            for i, alert in alerts:
                msg = messages[decoded.rows[anomalous_rows[i]]]
                outputs.append((self.alerts_topic, self._partition(msg.key, msg.partition, alert_parts), msg.key, dumps(alert)))
            if alerts:
                m.alerts.labels(sink="kafka", status="sent").inc(len(alerts))
                if self.on_alerts is not None:
                    self.on_alerts([a for _, a in alerts])
        if decoded.rejected:
            dlq_parts = parts[self.dlq_topic]
            for rej in decoded.rejected:
                msg = messages[rej.index]
                rec = dlq_record(rej, msg.value or b"", sources[rej.index])
                outputs.append((self.dlq_topic, self._partition(msg.key, msg.partition, dlq_parts), msg.key, dumps(rec)))
                m.rejected.labels(reason=rej.code).inc()
            self.rejected += len(decoded.rejected)
        last: dict[tuple[str, int], int] = {}
        for msg in messages:
            last[msg.topic, msg.partition] = msg.offset + 1
        offsets = {TopicPartition(t, p): o for (t, p), o in last.items()}
        m.record_batch(source="kafka", events=len(messages), scored=len(decoded.rows),
                       inference_s=scored.inference_s, latencies_s=scored_at - received,
                       severities=scored.severity[scored.anomalous_rows])
        self.scored += len(encoded)
        if self.on_scored is not None:
            self.on_scored(decoded, scored, offsets)
        if self.on_records is not None:
            self.on_records("scores", encoded)
            if anomalies:
                self.on_records("anomalies", anomalies)
        return outputs, offsets

    def _partition(self, key: bytes | None, source_partition: int, partitions: list[int]) -> int:
        if key is not None:
            return int(self._partitioner(key, partitions, partitions))
        return partitions[source_partition % len(partitions)]

    async def _send(self, outputs: list[tuple[str, int, bytes | None, bytes]]) -> list[Awaitable[Any]]:
        producer = self._producer
        builders: dict[tuple[str, int], Any] = {}
        futures: list[Awaitable[Any]] = []
        for topic, part, key, value in outputs:
            b = builders.get((topic, part))
            if b is None:
                b = builders[(topic, part)] = producer.create_batch()
            if b.append(key=key, value=value, timestamp=None) is None:
                futures.append(await producer.send_batch(b, topic, partition=part))
                b = builders[(topic, part)] = producer.create_batch()
                if b.append(key=key, value=value, timestamp=None) is None:
                    raise ValueError(f"a record for {topic!r} of {len(value)} bytes exceeds the producer batch size")
        for (topic, part), b in builders.items():
            if b.record_count():
                futures.append(await producer.send_batch(b, topic, partition=part))
        return futures

    def _update_lag(self, fetched: dict[TopicPartition, list[Any]]) -> None:
        gauge = self.metrics.consumer_lag
        for tp, msgs in fetched.items():
            high = self._consumer.highwater(tp)
            if high is not None and msgs:
                gauge.labels(topic=tp.topic, partition=str(tp.partition)).set(max(0, high - msgs[-1].offset - 1))


async def stop_consumer(consumer: Any) -> None:
    """``consumer.stop()``, also when the broker has gone away.

    With the broker gone, aiokafka's fetcher waits out a retry back-off
    between failed fetches, and ``stop()`` cancels that wait and re-raises
    the cancellation as its own (aiokafka issue #647): a process stopping
    because its broker died (a terminal's Ctrl-C reaches the embedded broker
    too) would end in a traceback.  That cancellation is absorbed here; one
    aimed at the calling task is not.
    """
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.debug("the consumer's fetcher was cancelled while the broker was away")


async def tail_control(bootstrap: str, topic: str, sink: ControlSink, stop: asyncio.Event, *,
                       client: Mapping[str, Any] | None = None) -> None:
    """Forward control-topic events (drift, retraining, promotions) to ``sink("control", ...)``.

    Reads from the end of the topic with no consumer group: these events are
    for live viewers, not work to share.  A value that is not a JSON object is
    logged and skipped (the control topic is written by anomstream itself).
    """
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="latest",
        fetch_max_wait_ms=100, client_id="anomstream-control", **(client or {}),
    )
    await consumer.start()
    try:
        while not stop.is_set():
            fetched = await consumer.getmany(timeout_ms=200, max_records=500)
            events: list[dict[str, Any]] = []
            for tp in sorted(fetched):
                for msg in fetched[tp]:
                    try:
                        ev = orjson.loads(msg.value or b"")
                    except orjson.JSONDecodeError:
                        ev = None
                    if type(ev) is dict:
                        events.append(ev)
                    else:
                        log.warning("control event at %s[%d]@%d is not a JSON object; skipped",
                                    msg.topic, msg.partition, msg.offset)
            if events:
                sink("control", events)
    finally:
        await stop_consumer(consumer)


class _Sources(Sequence[Source]):
    """The ``source`` of each message of a batch, built only for the positions asked for (dead letters, alerts)."""

    __slots__ = ("_messages",)

    def __init__(self, messages: Sequence[Any]) -> None:
        self._messages = messages

    def __len__(self) -> int:
        return len(self._messages)

    def __getitem__(self, pos: int) -> Source:  # type: ignore[override]
        msg = self._messages[pos]
        return {"topic": msg.topic, "partition": msg.partition, "offset": msg.offset}
