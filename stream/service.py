"""The service: settings in, a running scorer out.

Wires the pieces named by the configuration: the model from the registry
(reloaded when ``current`` changes), the metrics endpoint, the embedded or
external broker, the topics, the Kafka runner, and the WebSocket/HTTP server
(ingest, subscriptions, dashboard, health) with its fan-out hub.  Every score
record, anomaly and control event, from Kafka or WebSocket, goes through the
hub to the subscribers.  Stops on ``stop``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from aiokafka import AIOKafkaProducer, TopicPartition

from models.errors import ModelError
from models.reference import InputReference
from models.registry import Registry
from stream.alerts import AlertFilter
from stream.broker import EmbeddedBroker, client_options, ensure_topics, resolve_bootstrap
from stream.control import ControlChannel, DriftLoop, RetrainPolicy
from stream.core import ScoredBatch, Scorer
from stream.decoding import DecodedBatch
from stream.errors import ScoringError
from stream.fanout import Hub
from stream.ingest import IngestBatcher
from stream.kafka import KafkaRunner, LiveModel, tail_control
from stream.metrics import Metrics
from stream.settings import Settings
from stream.sinks import AlertSinks
from stream.websocket import HealthReport, WebServer

if TYPE_CHECKING:
    from stream.faust_runner import FaustRunner

__all__ = ["Service", "load_scorer"]

log = logging.getLogger(__name__)


def load_scorer(settings: Settings, version: int | None = None) -> Scorer:
    """The scorer for ``model.name`` (its current version unless ``version``)."""
    reg = Registry(settings.model.registry)
    name = settings.model.name
    ref = name if version is None else f"{name}@{version}"
    try:
        artifact = reg.load(ref)
    except ModelError as exc:
        hint = "" if reg.versions(name) else "; train one with `anomstream train DATA`"
        raise ScoringError(f"{exc}{hint}") from None
    return Scorer(artifact, providers=settings.inference.providers, threads=settings.inference.threads,
                  max_batch=settings.batching.max_batch, native=settings.inference.native)


class Service:
    """The online service for one configuration.

    Use as ``async with Service(settings) as svc: await svc.run(stop)``.
    """

    def __init__(self, settings: Settings, *, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.started_at = time.time()
        self.broker: EmbeddedBroker | None = None
        self.bootstrap: str | None = None
        self.client: dict[str, Any] = {}  # the Kafka clients' security options
        self.live: LiveModel | None = None
        self.hub = Hub(queue=settings.websocket.queue, metrics=self.metrics)
        self.ingest: IngestBatcher | None = None
        self.web: WebServer | None = None
        self.kafka_state = "connecting" if settings.kafka.enabled else "disabled"
        self._registry = Registry(settings.model.registry)
        self.drift: DriftLoop | None = None
        self.control: ControlChannel | None = None
        self._reload = asyncio.Event()

    async def __aenter__(self) -> Self:
        s = self.settings
        scorer: Any
        if self._registry.versions(s.model.name) or self._registry.current(s.model.name) is not None:
            scorer = await asyncio.to_thread(load_scorer, s)
            cold = False
        else:
            from stream.coldstart import ColdStartScorer

            log.info("no model %r in registry %s: cold start with river HalfSpaceTrees (%s)",
                     s.model.name, s.model.registry, "coldstart@0")
            scorer = ColdStartScorer()
            cold = True
        self.live = LiveModel(scorer)
        self.metrics.set_model(scorer.card.name, scorer.card.version, scorer.provider)
        if s.drift.enabled:
            d, r = s.drift, s.drift.retrain
            policy = RetrainPolicy(min_interval_s=r.min_interval_s, max_per_day=r.max_per_day,
                                   min_events=r.min_events) if r.enabled else None
            self.drift = DriftLoop(
                model=scorer.ref, features=scorer.features, reference=None if cold else _reference(scorer),
                policy=policy, retrain_window=r.window_events, topics=s.kafka.input_topics,
                false_alarm_events=d.false_alarm_events, warmup_events=d.warmup_events,
                cooldown_events=d.cooldown_events, monitor=not cold,
            )
            if cold:
                self.drift.cold_start(())
            elif self.drift.monitor.inputs.reference is None:
                log.info("card of %s has no input reference: the first %d events are the input reference",
                         scorer.ref, d.warmup_events)
        if s.metrics.enabled:
            self.metrics.serve(s.metrics.port)
        if s.websocket.enabled:
            w = s.websocket
            self.ingest = IngestBatcher(
                model=self.live, hub=self.hub, metrics=self.metrics,
                max_batch=s.batching.max_batch, max_latency_ms=s.batching.max_latency_ms,
            )
            self.web = WebServer(host=w.host, port=w.port, token=w.token, hub=self.hub, ingest=self.ingest,
                                 health=self, metrics=self.metrics)
            await self.web.__aenter__()
        try:
            if s.kafka.enabled:
                self.client = client_options(s.kafka)
                bootstrap, self.broker = await asyncio.to_thread(resolve_bootstrap, s.kafka.bootstrap_servers)
                self.bootstrap = bootstrap
                k = s.kafka
                topics = {t: k.partitions for t in (*k.input_topics, k.output_topic, k.alerts_topic, k.dlq_topic, k.control_topic)}
                await ensure_topics(bootstrap, topics, client=self.client, replication_factor=k.replication_factor)
        except BaseException:
            await self._close()
            raise
        _freeze_heap()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        await self._close()

    async def _close(self) -> None:
        if self.web is not None:
            await self.web.__aexit__(None, None, None)
            self.web = None
        if self.broker is not None:
            await asyncio.to_thread(self.broker.stop)
            self.broker = None

    def health(self) -> HealthReport:
        """The ``/healthz`` body: liveness, the model served, the Kafka source, uptime."""
        scorer = self.live.scorer if self.live is not None else None
        return {
            "status": "ok",
            "model": scorer.ref if scorer is not None else None,
            "threshold": scorer.threshold if scorer is not None else None,
            "kafka": self.kafka_state,
            "uptime_s": round(time.time() - self.started_at, 3),
        }

    def not_ready(self) -> list[str]:
        """Why the service is not ready: no model, or an enabled source not connected."""
        reasons = []
        if self.live is None:
            reasons.append("no model loaded")
        if self.kafka_state not in ("disabled", "connected"):
            reasons.append(f"kafka is {self.kafka_state}")
        return reasons

    async def run(self, stop: asyncio.Event, *, stop_after: int | None = None) -> None:
        """Serve until ``stop`` is set."""
        assert self.live is not None, "use 'async with Service(...)' first"
        s = self.settings
        tasks: list[asyncio.Task[None]] = []

        def spawn(coro: Coroutine[Any, Any, None], name: str) -> None:
            task = asyncio.create_task(coro, name=name)
            task.add_done_callback(_stop_on_failure)
            tasks.append(task)

        def _stop_on_failure(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and task.exception() is not None:
                log.error("%s failed, stopping: %s", task.get_name(), task.exception())
                stop.set()

        spawn(self._watch_registry(stop), "registry-watch")
        if self.ingest is not None:
            spawn(self.ingest.run(stop), "ingest-batcher")
        producer: AIOKafkaProducer | None = None
        try:
            if s.kafka.enabled and self.bootstrap is not None:
                k = s.kafka
                if self.drift is not None:
                    producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", client_id="anomstream-control",
                                                **self.client)
                    await producer.start()
                    self.control = ControlChannel(producer=producer, topic=k.control_topic, sink=None)
                    spawn(self.control.run(stop), "control-channel")
                a = s.alerts
                sinks = AlertSinks(webhooks=[w.model_dump() for w in a.webhooks], jsonl_path=a.jsonl_path,
                                   queue=a.queue, metrics=self.metrics)
                runner_kwargs: dict[str, Any] = {
                    "bootstrap": self.bootstrap, "input_topics": k.input_topics, "output_topic": k.output_topic,
                    "alerts_topic": k.alerts_topic, "dlq_topic": k.dlq_topic, "group_id": k.group_id,
                    "model": self.live, "metrics": self.metrics,
                    "alert_filter": AlertFilter(min_severity=s.alerts.min_severity, cooldown_s=s.alerts.cooldown_s),
                    "max_batch": s.batching.max_batch, "max_latency_ms": s.batching.max_latency_ms,
                    "compression": k.compression, "client": self.client,
                    "on_records": self.hub.publish if self.web is not None else None,
                    "on_scored": self._on_scored if self.drift is not None else None,
                    "on_alerts": sinks.submit if sinks else None,
                }
                runner: KafkaRunner | FaustRunner
                if k.backend == "faust":
                    from stream.faust_runner import FaustRunner

                    runner = FaustRunner(**runner_kwargs, partitions=k.partitions)
                else:
                    runner = KafkaRunner(**runner_kwargs)
                spawn(tail_control(self.bootstrap, k.control_topic, self._on_control, stop, client=self.client),
                      "control-tail")
                async with sinks, runner:
                    self.kafka_state = "connected"
                    try:
                        await runner.run(stop, stop_after=stop_after)
                    finally:
                        self.kafka_state = "stopped"
                log.info("stopped: %d events scored, %d rejected", runner.scored, runner.rejected)
            else:
                await stop.wait()
        finally:
            stop.set()  # lets the control channel flush what is queued
            for t in tasks:
                if t.get_name() != "control-channel":
                    t.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            if self.ingest is not None:
                self.ingest.flush()
            if producer is not None:
                await producer.stop()
        for r in results:
            if isinstance(r, Exception):
                raise r

    def _on_scored(self, decoded: DecodedBatch, scored: ScoredBatch, offsets: dict[TopicPartition, int]) -> None:
        """Every scored Kafka batch: drift monitor, retrain policy, control events."""
        assert self.drift is not None
        if self.live is not None and self.drift.features != tuple(self.live.scorer.features) and not self.drift.monitoring:
            self.drift.features = tuple(self.live.scorer.features)  # cold start learnt its features
        events = self.drift.observe(decoded.X, scored.score, scored.anomaly,
                                    {(tp.topic, tp.partition): off for tp, off in offsets.items()}, ids=decoded.ids)
        if not events:
            return
        for ev in events:
            if ev["type"] == "drift":
                self.metrics.drift_events.labels(signal=ev["signal"]).inc()
            elif ev["type"] == "retrain_requested":
                self.metrics.retrain.labels(status="requested").inc()
        if self.control is not None:
            self.control.emit(events)
        else:
            self.hub.publish("control", events)

    def _on_control(self, stream: str, events: list[dict[str, Any]]) -> None:
        """Control-topic events: relayed to subscribers; retrain outcomes counted; promotions reload at once."""
        if self.web is not None:
            self.hub.publish(stream, events)
        for ev in events:
            if ev.get("type") == "retrain_finished" and ev.get("status") in ("promoted", "rejected", "failed"):
                self.metrics.retrain.labels(status=str(ev["status"])).inc()
            elif ev.get("type") == "model_promoted" and ev.get("origin") != "service":
                self._reload.set()

    async def _watch_registry(self, stop: asyncio.Event) -> None:
        """Load and swap in a new current version (every ``reload_interval_s``, or at a ``model_promoted``)."""
        name = self.settings.model.name
        while not stop.is_set():
            try:
                await asyncio.wait_for(self._reload.wait(), timeout=self.settings.model.reload_interval_s)
            except TimeoutError:
                pass
            self._reload.clear()
            assert self.live is not None
            try:
                current = await asyncio.to_thread(self._registry.current, name)
                if current is None or (current == self.live.scorer.card.version
                                       and self.live.scorer.card.name == name):
                    continue
                scorer = await asyncio.to_thread(load_scorer, self.settings, current)
            except (ModelError, ScoringError) as exc:
                log.error("model reload failed, keeping %s: %s", self.live.scorer.ref, exc)
                continue
            if self.live.scorer.features and scorer.features != self.live.scorer.features:
                log.info("model %s has features different from %s", scorer.ref, self.live.scorer.ref)
            previous = self.live.scorer.ref
            self.live.set(scorer)
            if self.drift is not None:
                self.drift.swap(model=scorer.ref, features=scorer.features, reference=_reference(scorer))
            self.metrics.set_model(scorer.card.name, scorer.card.version, scorer.provider)
            _freeze_heap()
            log.info("model swapped: %s -> %s", previous, scorer.ref)
            self.hub.publish("control", [{"type": "model_promoted", "at": time.time(), "model": scorer.ref,
                                          "previous": previous, "origin": "service"}])


def _freeze_heap() -> None:
    """Move every object alive now (modules, sessions, settings) out of the cyclic collector's reach.

    Full collections otherwise walk the whole start-up heap: 18-31 ms pauses
    of the event loop measured at 5,000 events/s, in the p99 latency.  The
    per-event objects are freed by reference counting; only what later start-ups
    (a model swap) leave in cycles stays uncollected.
    """
    gc.collect()
    gc.freeze()


def _reference(scorer: Scorer) -> InputReference | None:
    """The card's input reference for the drift monitor, if it has a usable one."""
    ref = scorer.card.extra.get("reference")
    if not isinstance(ref, dict):
        return None
    try:
        return InputReference.from_dict(ref, scorer.features)
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("card of %s has an unusable input reference (%s); the first events will be", scorer.ref, exc)
        return None
