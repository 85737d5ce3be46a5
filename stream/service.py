"""The service: settings in, a running scorer out.

Wires the pieces named by the configuration: the model from the registry
(reloaded when ``current`` changes), the metrics endpoint, the embedded or
external broker, the topics, and the Kafka runner.  Stops on ``stop``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from types import TracebackType
from typing import Self

from models.errors import ModelError
from models.registry import Registry
from stream.alerts import AlertFilter
from stream.broker import EmbeddedBroker, ensure_topics, resolve_bootstrap
from stream.core import Scorer
from stream.errors import ScoringError
from stream.kafka import KafkaRunner, LiveModel
from stream.metrics import Metrics
from stream.settings import Settings

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
        self._registry = Registry(settings.model.registry)

    async def __aenter__(self) -> Self:
        s = self.settings
        scorer = await asyncio.to_thread(load_scorer, s)
        self.live = LiveModel(scorer)
        self.metrics.set_model(scorer.card.name, scorer.card.version, scorer.provider)
        if s.metrics.enabled:
            self.metrics.serve(s.metrics.port)
        if s.websocket.enabled:
            log.info("websocket section read; this release serves Kafka only")
        if s.kafka.enabled:
            bootstrap, self.broker = await asyncio.to_thread(resolve_bootstrap, s.kafka.bootstrap_servers)
            self.bootstrap = bootstrap
            k = s.kafka
            topics = {t: k.partitions for t in (*k.input_topics, k.output_topic, k.alerts_topic, k.dlq_topic, k.control_topic)}
            await ensure_topics(bootstrap, topics)
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self.broker is not None:
            await asyncio.to_thread(self.broker.stop)

    async def run(self, stop: asyncio.Event, *, stop_after: int | None = None) -> None:
        """Serve until ``stop`` is set."""
        assert self.live is not None, "use 'async with Service(...)' first"
        s = self.settings
        watcher = asyncio.create_task(self._watch_registry(stop), name="registry-watch")
        try:
            if s.kafka.enabled and self.bootstrap is not None:
                k = s.kafka
                runner = KafkaRunner(
                    bootstrap=self.bootstrap, input_topics=k.input_topics, output_topic=k.output_topic,
                    alerts_topic=k.alerts_topic, dlq_topic=k.dlq_topic, group_id=k.group_id,
                    model=self.live, metrics=self.metrics,
                    alert_filter=AlertFilter(min_severity=s.alerts.min_severity, cooldown_s=s.alerts.cooldown_s),
                    max_batch=s.batching.max_batch, max_latency_ms=s.batching.max_latency_ms,
                )
                async with runner:
                    await runner.run(stop, stop_after=stop_after)
                log.info("stopped: %d events scored, %d rejected", runner.scored, runner.rejected)
            else:
                await stop.wait()
        finally:
            watcher.cancel()

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
