"""Alert sinks beside the Kafka alerts topic: webhooks and a JSONL file.

Delivery runs off the hot path.  :meth:`AlertSinks.submit` only puts alert
records on one bounded queue per sink (``alerts.queue`` records); when a
queue is full the alert is dropped for that sink and counted
(``anomstream_alerts_total{sink, status="dropped"}``), so a slow or failing
webhook never slows scoring, and never touches the Kafka alerts topic, which
the runner produces in the same batch as the score records.

A webhook POSTs one alert per request (``format: json``: the alert record;
``format: slack``: a Slack incoming-webhook payload, ``text`` plus ``blocks``)
with ``timeout_s`` per attempt.  Connection errors, timeouts, HTTP 429 and
5xx are retried ``retries`` times with exponential backoff (``backoff_s``,
doubled each time); other 4xx fail at once.  A :class:`CircuitBreaker` per
webhook opens after ``failure_threshold`` alerts in a row failed: for
``reset_s`` its alerts are dropped at once (``status="circuit_open"``), then one
trial alert decides whether it closes again.

``anomstream_alerts_total{sink, status}``: ``sink`` is ``kafka``, ``webhook`` or
``jsonl`` (never the URL: webhook URLs often hold secrets); ``status`` is
``sent``, ``failed``, ``dropped`` or ``circuit_open``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import orjson

from stream.errors import ConfigError
from stream.metrics import Metrics

__all__ = ["AlertSinks", "CircuitBreaker", "JsonlSink", "WebhookSink", "slack_payload"]

log = logging.getLogger(__name__)

Alert = dict[str, Any]


class CircuitBreaker:
    """Closed → open after ``failure_threshold`` failures in a row → half-open after ``reset_s``.

    A plain class; the clock is passed in.

    Examples
    --------
    >>> b = CircuitBreaker(failure_threshold=2, reset_s=10)
    >>> b.record_failure(0.0); b.allow(1.0)
    True
    >>> b.record_failure(1.0); b.state, b.allow(5.0)
    ('open', False)
    >>> b.allow(11.0), b.state  # one trial after reset_s
    (True, 'half_open')
    >>> b.allow(11.5)  # only one trial at a time
    False
    >>> b.record_success(); b.state
    'closed'
    """

    def __init__(self, *, failure_threshold: int = 5, reset_s: float = 30.0) -> None:
        self.failure_threshold = failure_threshold
        self.reset_s = reset_s
        self.state: Literal["closed", "open", "half_open"] = "closed"
        self.failures = 0
        self.opened_at = 0.0

    def allow(self, now: float) -> bool:
        """Whether a delivery may be tried now."""
        if self.state == "closed":
            return True
        if self.state == "open" and now - self.opened_at >= self.reset_s:
            self.state = "half_open"
            return True
        return False

    def record_success(self) -> None:
        """A delivery succeeded: close."""
        self.state = "closed"
        self.failures = 0

    def record_failure(self, now: float) -> None:
        """A delivery failed (after its retries): open at the threshold, or again after a trial."""
        self.failures += 1
        if self.state == "half_open" or self.failures >= self.failure_threshold:
            if self.state != "open":
                log.warning("alert sink circuit opened after %d failures in a row", self.failures)
            self.state = "open"
            self.opened_at = now


def _fmt_ts(ts: Any) -> str:
    if isinstance(ts, (int, float)):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + " UTC"
    return str(ts)


def slack_payload(alert: Alert) -> dict[str, Any]:
    """A Slack incoming-webhook message (``text`` fallback plus ``blocks``) for one alert.

    Examples
    --------
    >>> p = slack_payload({"key": "pump-7", "severity": "high", "score": 0.987654, "model": "m@2",
    ...                    "ts": 0, "contributions": {"temp": 0.8},
    ...                    "episode": {"id": "e1", "start": 0, "count": 3}})
    >>> p["text"]
    'anomstream: high anomaly on pump-7 (score 0.9877, model m@2)'
    >>> p["blocks"][1]["text"]["text"].splitlines()[1]
    '*Episode* e1: 3 anomalies since 1970-01-01 00:00:00 UTC'
    """
    key = alert.get("key")
    text = (f"anomstream: {alert.get('severity')} anomaly on {key if key is not None else 'an unkeyed event'} "
            f"(score {float(alert.get('score', 0.0)):.4f}, model {alert.get('model')})")
    lines = [f"*Event* {alert.get('id')} at {_fmt_ts(alert.get('ts'))}"]
    ep = alert.get("episode")
    if isinstance(ep, dict):
        lines.append(f"*Episode* {ep.get('id')}: {ep.get('count')} anomalies since {_fmt_ts(ep.get('start'))}")
    contrib = alert.get("contributions")
    if isinstance(contrib, dict) and contrib:
        lines.append("*Top features* " + ", ".join(f"`{k}` {v:.2f}" for k, v in contrib.items()))
    return {"text": text, "blocks": [
        {"type": "section", "text": {"type": "plain_text", "text": text}},
        {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}},
    ]}


class _Sink:
    """A bounded queue of alerts and the task that delivers them."""

    name = "sink"

    def __init__(self, *, queue: int, metrics: Metrics) -> None:
        self.queue: asyncio.Queue[Alert] = asyncio.Queue(maxsize=queue)
        self.metrics = metrics

    def count(self, status: str, n: int = 1) -> None:
        self.metrics.alerts.labels(sink=self.name, status=status).inc(n)

    def offer(self, alerts: Sequence[Alert]) -> None:
        put = self.queue.put_nowait
        dropped = 0
        for a in alerts:
            try:
                put(a)
            except asyncio.QueueFull:
                dropped += 1
        if dropped:
            self.count("dropped", dropped)

    async def run(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        """Release what the sink holds (after its task ended)."""


class WebhookSink(_Sink):
    """POST each alert to ``url`` (see the module docstring)."""

    name = "webhook"

    def __init__(self, *, url: str, format: Literal["json", "slack"] = "json", timeout_s: float = 5.0,
                 retries: int = 3, backoff_s: float = 0.5, failure_threshold: int = 5, reset_s: float = 30.0,
                 client: Any, queue: int, metrics: Metrics) -> None:
        super().__init__(queue=queue, metrics=metrics)
        self.url, self.format, self.timeout_s = url, format, timeout_s
        self.retries, self.backoff_s = retries, backoff_s
        self.breaker = CircuitBreaker(failure_threshold=failure_threshold, reset_s=reset_s)
        self.client = client

    async def run(self) -> None:
        get = self.queue.get
        while True:
            alert = await get()
            try:
                if not self.breaker.allow(time.monotonic()):
                    self.count("circuit_open")
                elif await self._deliver(alert):
                    self.breaker.record_success()
                    self.count("sent")
                else:
                    self.breaker.record_failure(time.monotonic())
                    self.count("failed")
            finally:
                self.queue.task_done()

    async def _deliver(self, alert: Alert) -> bool:
        body = orjson.dumps(slack_payload(alert) if self.format == "slack" else alert)
        headers = {"content-type": "application/json"}
        import httpx

        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                resp = await self.client.post(self.url, content=body, headers=headers, timeout=self.timeout_s)
            except httpx.HTTPError as exc:
                log.debug("webhook attempt %d failed: %s", attempt + 1, exc)
                continue
            if resp.status_code < 300:
                return True
            log.debug("webhook attempt %d: HTTP %d", attempt + 1, resp.status_code)
            if resp.status_code < 500 and resp.status_code != 429:
                return False  # a client error will not heal by retrying
        return False


class JsonlSink(_Sink):
    """Append each alert as one JSON line to ``path`` (flushed after every drained run)."""

    name = "jsonl"

    def __init__(self, *, path: Path, queue: int, metrics: Metrics) -> None:
        super().__init__(queue=queue, metrics=metrics)
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "ab")  # noqa: SIM115 - closed in close()

    async def run(self) -> None:
        q = self.queue
        while True:
            batch = [await q.get()]
            while not q.empty():
                batch.append(q.get_nowait())
            try:
                self._file.write(b"".join(orjson.dumps(a) + b"\n" for a in batch))
                self._file.flush()
            except OSError as exc:
                log.warning("cannot append alerts to %s: %s", self.path, exc)
                self.count("failed", len(batch))
            else:
                self.count("sent", len(batch))
            for _ in batch:
                q.task_done()

    async def close(self) -> None:
        self._file.close()


class AlertSinks:
    """Every configured alert sink; ``submit`` from the hot path, delivery in background tasks.

    Use as ``async with AlertSinks(...) as sinks: ... sinks.submit(alerts)``.
    On exit, queued alerts get up to ``drain_s`` seconds to leave; what is
    left is counted as dropped.

    Parameters
    ----------
    webhooks : sequence of dict
        Keyword arguments of :class:`WebhookSink` (``url``, ``format``, ``timeout_s``, ...).
    jsonl_path : Path, optional
    queue : int
        Bound of each sink's queue.
    metrics : Metrics
    """

    def __init__(self, *, webhooks: Sequence[dict[str, Any]] = (), jsonl_path: Path | None = None,
                 queue: int = 1000, metrics: Metrics, drain_s: float = 5.0) -> None:
        self.metrics = metrics
        self.drain_s = drain_s
        self._webhooks = list(webhooks)
        self._jsonl_path = jsonl_path
        self._queue = queue
        self.sinks: list[_Sink] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._client: Any = None

    def __bool__(self) -> bool:
        return bool(self._webhooks) or self._jsonl_path is not None

    async def __aenter__(self) -> Self:
        if self._webhooks:
            try:
                import httpx
            except ImportError:
                raise ConfigError("alerts.webhooks needs httpx: pip install 'anomstream[serve]'") from None
            self._client = httpx.AsyncClient()
            for wh in self._webhooks:
                self.sinks.append(WebhookSink(**wh, client=self._client, queue=self._queue, metrics=self.metrics))
        if self._jsonl_path is not None:
            self.sinks.append(JsonlSink(path=self._jsonl_path, queue=self._queue, metrics=self.metrics))
        for sink in self.sinks:  # the series exist at zero from the start
            for status in ("sent", "failed", "dropped") + (("circuit_open",) if sink.name == "webhook" else ()):
                self.metrics.alerts.labels(sink=sink.name, status=status)
        self._tasks = [asyncio.create_task(s.run(), name=f"alerts-{s.name}") for s in self.sinks]
        if self.sinks:
            log.info("alert sinks: %s", ", ".join(s.name for s in self.sinks))
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self.sinks:
            try:
                await asyncio.wait_for(asyncio.gather(*(s.queue.join() for s in self.sinks)), self.drain_s)
            except TimeoutError:
                log.warning("alert sinks did not drain within %.1f s", self.drain_s)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for s in self.sinks:
            if s.queue.qsize():
                s.count("dropped", s.queue.qsize())
            await s.close()
        if self._client is not None:
            await self._client.aclose()

    def submit(self, alerts: Sequence[Alert]) -> None:
        """Queue ``alerts`` for every sink; never blocks (a full queue drops and counts)."""
        for s in self.sinks:
            s.offer(alerts)
