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
import logging
import time
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Self

from models.errors import ModelError
from models.registry import Registry
from stream.alerts import AlertFilter
from stream.broker import EmbeddedBroker, ensure_topics, resolve_bootstrap
from stream.core import Scorer
from stream.errors import ScoringError
from stream.fanout import Hub
from stream.ingest import IngestBatcher
from stream.kafka import KafkaRunner, LiveModel, tail_control
from stream.metrics import Metrics
from stream.settings import Settings
from stream.websocket import HealthReport, WebServer

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
    return Scorer(artifact, providers=settings.inference.providers, threads=settings.inference.threads)


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
        self.live: LiveModel | None = None
        self.hub = Hub(queue=settings.websocket.queue, metrics=self.metrics)
        self.ingest: IngestBatcher | None = None
        self.web: WebServer | None = None
        self.kafka_state = "connecting" if settings.kafka.enabled else "disabled"
        self._registry = Registry(settings.model.registry)

    async def __aenter__(self) -> Self:
        s = self.settings
        scorer = await asyncio.to_thread(load_scorer, s)
        self.live = LiveModel(scorer)
        self.metrics.set_model(scorer.card.name, scorer.card.version, scorer.provider)
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
                bootstrap, self.broker = await asyncio.to_thread(resolve_bootstrap, s.kafka.bootstrap_servers)
                self.bootstrap = bootstrap
                k = s.kafka
                topics = {t: k.partitions for t in (*k.input_topics, k.output_topic, k.alerts_topic, k.dlq_topic, k.control_topic)}
                await ensure_topics(bootstrap, topics)
        except BaseException:
            await self._close()
            raise
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
        try:
            if s.kafka.enabled and self.bootstrap is not None:
                k = s.kafka
                runner = KafkaRunner(
                    bootstrap=self.bootstrap, input_topics=k.input_topics, output_topic=k.output_topic,
                    alerts_topic=k.alerts_topic, dlq_topic=k.dlq_topic, group_id=k.group_id,
                    model=self.live, metrics=self.metrics,
                    alert_filter=AlertFilter(min_severity=s.alerts.min_severity, cooldown_s=s.alerts.cooldown_s),
                    max_batch=s.batching.max_batch, max_latency_ms=s.batching.max_latency_ms,
                    on_records=self.hub.publish if self.web is not None else None,
                )
                if self.web is not None:
                    spawn(tail_control(self.bootstrap, k.control_topic, self.hub.publish, stop), "control-tail")
                async with runner:
                    self.kafka_state = "connected"
                    try:
                        await runner.run(stop, stop_after=stop_after)
                    finally:
                        self.kafka_state = "stopped"
                log.info("stopped: %d events scored, %d rejected", runner.scored, runner.rejected)
            else:
                await stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            if self.ingest is not None:
                self.ingest.flush()
        for r in results:
            if isinstance(r, Exception):
                raise r

    async def _watch_registry(self, stop: asyncio.Event) -> None:
        """Load and swap in a new current version (polls every ``reload_interval_s``)."""
        name = self.settings.model.name
        while not stop.is_set():
            await asyncio.sleep(self.settings.model.reload_interval_s)
            assert self.live is not None
            try:
                current = await asyncio.to_thread(self._registry.current, name)
                if current is None or current == self.live.scorer.card.version:
                    continue
                scorer = await asyncio.to_thread(load_scorer, self.settings, current)
            except (ModelError, ScoringError) as exc:
                log.error("model reload failed, keeping %s: %s", self.live.scorer.ref, exc)
                continue
            if len(scorer.features) and scorer.features != self.live.scorer.features:
                log.info("model %s has features different from %s", scorer.ref, self.live.scorer.ref)
            previous = self.live.scorer.ref
            self.live.set(scorer)
            self.metrics.set_model(scorer.card.name, scorer.card.version, scorer.provider)
            log.info("model swapped: %s -> %s", previous, scorer.ref)
            self.hub.publish("control", [{"type": "model_promoted", "at": time.time(), "model": scorer.ref,
                                          "previous": previous, "origin": "service"}])
