"""The faust-streaming runner (``kafka.backend: faust``), for teams already on faust.

A faust app (memory store, no web server) runs inside the service's event
loop with one agent on the input topics::

    async for events in stream.take_events(max_batch, within=max_latency_ms / 1000):
        ...decode, score, encode (the aiokafka runner's code), produce, await the acks

``take_events`` is ``stream.take`` that yields faust's events rather than their
values: the raw bytes, key, topic, partition, offset and timestamp that score
and dead-letter records need.  Decoding, scoring, records, alerts (Kafka topic,
webhooks, JSONL) and metrics are the aiokafka runner's
(:class:`stream.kafka.KafkaRunner`), and so are the output topics and keys.

Delivery (at-least-once, as far as faust allows): the agent awaits the
broker's acknowledgement of every record produced for a batch before its
next iteration; only then does ``take_events`` *ack* the batch's events, and
faust commits acked offsets every ``broker_commit_interval`` (1 s here) and
when partitions are revoked or the app stops.  A crash loses no event, but may
score again up to a commit interval's worth of events (more than the aiokafka
runner, which commits after every acknowledged batch).

Consumer settings (faust's defaults replaced, as the aiokafka runner's): the
fetch wait is ``max_latency_ms`` (faust's aiokafka driver fixes 1,500 ms),
fetches take up to 4 MiB per partition (faust: 1 MiB) and the group session
times out after 10 s (faust: 60 s).  On the embedded broker, which answers a
fetch when its wait runs out and holds a new member's first JoinGroup for half
the session timeout, faust's defaults gave 5,521 events/s on a backlog and
32 s from start to the first batch; with these, 12,348 events/s and 7.1 s, and
p50 / p99 latency at 5,000 events/s offered 35 / 52 ms against 367 / 999 ms
(``tests/perf/bench_faust.py``, ``bench_e2e.py``, 2026-11-23).  What bounds
it now is faust's per-event machinery (~80 CPU-µs an event against ~10 in
the aiokafka runner): a loop reading the agent's channel queue in batches
instead of ``take_events`` gave 14.5k against 12.7k events/s and was not kept.

faust is imported here only, when this backend is chosen (``faust`` extra).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from stream.alerts import AlertFilter
from stream.batching import split_batches
from stream.errors import ConfigError
from stream.kafka import FETCH_BYTES, KafkaRunner, LiveModel, RecordSink, ScoredHook
from stream.metrics import Metrics

__all__ = ["FaustRunner"]

log = logging.getLogger(__name__)
# The consumer group's session timeout, as the aiokafka runner's (aiokafka's default).  faust's own default,
# 60 s, kept it ~30 s from start to first batch on the embedded broker, which holds a new member's first
# JoinGroup for half the session timeout.
_SESSION_TIMEOUT_S = 10.0


@dataclass(slots=True)
class _Message:
    """A faust message as the aiokafka runner reads one (timestamp in ms)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: float


class _Publisher(KafkaRunner):
    """The aiokafka runner's processing and producing, without its consumer."""

    async def __aenter__(self) -> Self:
        await self._producer.start()
        try:
            for topic in (self.output_topic, self.alerts_topic, self.dlq_topic):
                self._partitions[topic] = sorted(await self._producer.partitions_for(topic))
        except BaseException:
            await self._producer.stop()
            raise
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        await self._producer.stop()

    async def publish(self, messages: Sequence[_Message]) -> None:
        """Decode, score and produce ``messages``; return once the broker acknowledged all."""
        outputs, _ = self._process(messages)
        await asyncio.gather(*await self._send(outputs))


class FaustRunner:
    """Score events from Kafka topics with a faust agent until stopped.

    Takes the same parameters as :class:`stream.kafka.KafkaRunner`.
    """

    def __init__(
        self, *, bootstrap: str, input_topics: Sequence[str], output_topic: str, alerts_topic: str,
        dlq_topic: str, group_id: str, model: LiveModel, alert_filter: AlertFilter, metrics: Metrics,
        max_batch: int = 512, max_latency_ms: float = 20.0, compression: str = "none",
        client: Mapping[str, Any] | None = None, partitions: int = 4, on_records: RecordSink | None = None, on_scored: ScoredHook | None = None,
        on_alerts: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.input_topics = tuple(input_topics)
        self.group_id = group_id
        self.max_batch = max_batch
        self.within_s = max(max_latency_ms, 1.0) / 1000.0
        self.partitions = partitions
        self.client = dict(client or {})
        self.publisher = _Publisher(
            bootstrap=bootstrap, input_topics=input_topics, output_topic=output_topic, alerts_topic=alerts_topic,
            dlq_topic=dlq_topic, group_id=group_id, model=model, alert_filter=alert_filter, metrics=metrics,
            max_batch=max_batch, max_latency_ms=max_latency_ms, compression=compression, client=client,
            on_records=on_records,
            on_scored=on_scored,
            on_alerts=on_alerts,
        )
        self.events = 0

    @property
    def scored(self) -> int:
        return self.publisher.scored

    @property
    def rejected(self) -> int:
        return self.publisher.rejected

    async def __aenter__(self) -> Self:
        await self.publisher.__aenter__()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        await self.publisher.__aexit__(et, e, tb)

    def _app(self, done: asyncio.Event, stop_after: int | None, datadir: str) -> Any:
        try:
            import faust
        except ImportError:
            raise ConfigError("kafka.backend 'faust' needs faust-streaming: pip install 'anomstream[faust]'") from None
        app = faust.App(
            self.group_id, broker=f"kafka://{self.bootstrap}", store="memory://", web_enabled=False, datadir=datadir,
            consumer_auto_offset_reset="earliest", topic_partitions=self.partitions,
            broker_commit_interval=1.0, broker_session_timeout=_SESSION_TIMEOUT_S, producer_acks=-1,
            stream_buffer_maxsize=max(4096, 4 * self.max_batch), broker_max_poll_records=max(500, self.max_batch),
            consumer_max_fetch_size=FETCH_BYTES, autodiscover=False, loghandlers=[],
            broker_credentials=_credentials(self.client),
        )
        app.transport = _transport(self.publisher.fetch_wait_ms)(app.conf.broker_consumer, app)
        topic = app.topic(*self.input_topics, key_type=bytes, value_type=bytes, key_serializer="raw",
                          value_serializer="raw")
        publisher, max_batch = self.publisher, self.max_batch

        async def score(stream: Any) -> None:
            async for events in stream.take_events(max_batch, within=self.within_s):
                messages = [_Message(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp * 1000.0)
                            for m in (e.message for e in events)]
                for batch in split_batches(messages, max_batch):
                    await publisher.publish(batch)
                self.events += len(messages)
                if stop_after is not None and self.events >= stop_after:
                    done.set()

        app.agent(topic, name="anomstream.score")(score)
        return app

    async def run(self, stop: asyncio.Event, *, stop_after: int | None = None) -> None:
        """Run the faust app until ``stop`` is set (or ``stop_after`` events); stopping commits what was acked."""
        done = asyncio.Event()
        # faust keeps a data directory (default: ``<app id>-data`` in the working directory) even with the
        # memory store; nothing in it outlives the run.
        datadir = tempfile.mkdtemp(prefix="anomstream-faust-")
        try:
            app = self._app(done, stop_after, datadir)
            await self._serve(app, stop, done)
        finally:
            shutil.rmtree(datadir, ignore_errors=True)

    async def _serve(self, app: Any, stop: asyncio.Event, done: asyncio.Event) -> None:
        await app.start()
        log.info("faust app %r consuming %s", self.group_id, ", ".join(self.input_topics))
        try:
            while not (stop.is_set() or done.is_set()):
                if app.crashed:
                    raise app.crash_reason or RuntimeError("the faust app crashed")
                try:
                    await asyncio.wait_for(stop.wait(), timeout=0.2)
                except TimeoutError:
                    pass
        finally:
            await app.stop()


def _credentials(client: Mapping[str, Any]) -> Any:
    """faust's ``broker_credentials`` for the aiokafka options of :func:`stream.broker.client_options` (None: plaintext)."""
    import faust

    protocol = client.get("security_protocol", "PLAINTEXT")
    if protocol == "SSL":
        return faust.SSLCredentials(client["ssl_context"])
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(username=client["sasl_plain_username"], password=client["sasl_plain_password"],
                                     mechanism=client["sasl_mechanism"], ssl_context=client.get("ssl_context"))
    return None


def _transport(fetch_wait_ms: int) -> Any:
    """faust's aiokafka transport, its consumer fetching with ``fetch_wait_ms`` (faust fixes 1,500 ms)."""
    from faust.transport.drivers import aiokafka as driver

    class _Thread(driver.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            # Read by the consumer's fetcher when it starts, which faust does right after this returns.
            if hasattr(consumer, "_fetch_max_wait_ms"):
                consumer._fetch_max_wait_ms = fetch_wait_ms
            else:
                log.warning("this aiokafka keeps its fetch wait elsewhere: faust's consumer waits up to 1,500 ms")
            return consumer

    class _Consumer(driver.Consumer):
        def _new_consumer_thread(self) -> Any:
            return _Thread(self, loop=self.loop, beacon=self.beacon)

    class _Transport(driver.Transport):
        Consumer = _Consumer

    return _Transport
