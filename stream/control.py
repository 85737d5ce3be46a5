"""Control events (contract §6) and the drift → retrain-request loop of the service.

:class:`DriftLoop` is plain: fed one scored batch at a time, it runs the
:class:`~stream.drift.DriftMonitor`, and returns the control events to emit —
``drift`` for each detection, ``retrain_requested`` when the
:class:`RetrainPolicy` allows one.  A request is not sent at the detection
itself: the worker trains on events after the change, so the request waits
until ``min_events`` events were seen since the detection, and carries the
consumer positions at the detection (``from``), where the worker starts
reading.  Cold start (no model yet) arms a ``coldstart`` request at start.

:class:`ControlChannel` is the async side: it produces events to
``kafka.control_topic`` (the service's control tail relays them to WebSocket
subscribers), or straight to the hub when Kafka is off.

Examples
--------
>>> p = RetrainPolicy(min_interval_s=3600, max_per_day=2, min_events=100)
>>> p.arm("drift", at_event=0, positions={})
>>> p.poll(events=50, now=0.0) is None, p.poll(events=100, now=0.0) is not None
(True, True)
>>> p.arm("drift", at_event=100, positions={}); p.poll(events=1000, now=60.0) is None   # min_interval_s
True
>>> p.poll(events=1000, now=3700.0) is not None                                  # then allowed
True
>>> p.arm("drift", at_event=1000, positions={}); p.poll(events=5000, now=9000.0) is None   # max_per_day
True
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson
from numpy.typing import NDArray

from models.reference import InputReference
from stream.drift import Detection, DriftMonitor

__all__ = ["ControlChannel", "DriftLoop", "EventType", "RetrainPolicy", "RetrainRequest", "control_event"]

log = logging.getLogger(__name__)

EventType = Literal["drift", "retrain_requested", "retrain_finished", "model_promoted", "model_rejected"]
RetrainTrigger = Literal["drift", "coldstart"]
Positions = dict[str, dict[str, int]]  # topic -> partition (as str, JSON keys) -> next offset
DAY_S = 86_400.0


def control_event(type: EventType, model: str, *, at: float | None = None, **details: Any) -> dict[str, Any]:
    """``{"type", "at", "model", ...details}`` (contract §6).

    >>> control_event("drift", "default@3", at=1.0, signal="score")
    {'type': 'drift', 'at': 1.0, 'model': 'default@3', 'signal': 'score'}
    """
    return {"type": type, "at": time.time() if at is None else at, "model": model, **details}


@dataclass(frozen=True, slots=True)
class RetrainRequest:
    """A request the policy let through."""

    trigger: RetrainTrigger
    positions: Positions
    request_id: str


class RetrainPolicy:
    """When a retrain request may go out: after ``min_events``, rate limited.

    Parameters
    ----------
    min_interval_s : float
        Least time between two requests.
    max_per_day : int
        Most requests in any 24 hours.
    min_events : int
        Events to see after arming before the request goes out.
    """

    def __init__(self, *, min_interval_s: float, max_per_day: int, min_events: int) -> None:
        self.min_interval_s, self.max_per_day, self.min_events = min_interval_s, max_per_day, min_events
        self.sent: deque[float] = deque()
        self._armed: tuple[RetrainTrigger, int, Positions] | None = None

    @property
    def armed(self) -> bool:
        return self._armed is not None

    def arm(self, trigger: RetrainTrigger, *, at_event: int, positions: Positions) -> None:
        """Want a retrain (a drift, or cold start); a pending one keeps its earlier start."""
        if self._armed is None:
            self._armed = (trigger, at_event, positions)

    def disarm(self) -> None:
        self._armed = None

    def allowed(self, now: float) -> bool:
        """Whether the rate limits let a request out at ``now``."""
        while self.sent and self.sent[0] <= now - DAY_S:
            self.sent.popleft()
        if len(self.sent) >= self.max_per_day:
            return False
        return not self.sent or now - self.sent[-1] >= self.min_interval_s

    def poll(self, *, events: int, now: float) -> RetrainRequest | None:
        """The request to send now (``events`` = events seen so far), if any."""
        if self._armed is None:
            return None
        trigger, at_event, positions = self._armed
        if events - at_event < self.min_events or not self.allowed(now):
            return None
        self._armed = None
        self.sent.append(now)
        return RetrainRequest(trigger=trigger, positions=positions, request_id=uuid.uuid4().hex[:12])


class DriftLoop:
    """The service's drift monitor and retrain policy for the model being served.

    Parameters
    ----------
    model : str
        ``name@version`` served (``coldstart@0`` during cold start).
    features : sequence of str
    reference : InputReference, optional
        From the card's ``reference``.
    policy : RetrainPolicy, optional
        None: drift events only, no retrain requests.
    retrain_window : int
        ``window_events``, passed on in requests.
    topics : sequence of str
        The input topics, passed on in requests.
    false_alarm_events, warmup_events, cooldown_events
        See :mod:`stream.drift`.
    monitor : bool
        False: no detection (cold start: nothing to compare against).
    """

    def __init__(
        self, *, model: str, features: Sequence[str], reference: InputReference | None, policy: RetrainPolicy | None,
        retrain_window: int, topics: Sequence[str], false_alarm_events: float, warmup_events: int = 5000,
        cooldown_events: int = 5000, monitor: bool = True,
    ) -> None:
        self.model = model
        self.features = tuple(features)
        self.policy = policy
        self.retrain_window = retrain_window
        self.topics = tuple(topics)
        self.monitoring = monitor
        self.monitor = DriftMonitor(features=features, reference=reference, false_alarm_events=false_alarm_events,
                                    warmup_events=warmup_events, cooldown_events=cooldown_events)
        self.events = 0
        self.positions: Positions = {}
        self.detections: list[Detection] = []

    def swap(self, *, model: str, features: Sequence[str], reference: InputReference | None) -> None:
        """A new model is served: reset the monitors, drop a pending request."""
        self.model = model
        self.features = tuple(features)
        self.monitoring = True
        self.monitor.reset(features=features, reference=reference)
        if self.policy is not None:
            self.policy.disarm()

    def cold_start(self, features: Sequence[str]) -> None:
        """Cold start: no detection, one ``coldstart`` request once enough events were seen."""
        self.monitoring = False
        self.features = tuple(features)
        if self.policy is not None:
            self.policy.arm("coldstart", at_event=self.events, positions={})

    def observe(
        self, X: NDArray[np.floating], score: NDArray[np.floating], anomaly: NDArray[np.bool_],
        offsets: Mapping[tuple[str, int], int], *, ids: Sequence[Any] = (), now: float | None = None,
    ) -> list[dict[str, Any]]:
        """Feed one scored batch; ``offsets`` maps (topic, partition) to the next offset after it.

        Returns the control events to emit, in order.
        """
        now = time.time() if now is None else now
        out: list[dict[str, Any]] = []
        before = {t: dict(p) for t, p in self.positions.items()}
        if self.monitoring and X.shape[0]:
            for d in self.monitor.update(X, score, anomaly):
                self.detections.append(d)
                ev = control_event("drift", self.model, at=now, signal=d.signal, events=d.index,
                                   statistic=round(d.statistic, 6), threshold=round(d.threshold, 6))
                if d.features:
                    ev["features"] = list(d.features[:5])
                if ids and 0 <= d.row < len(ids):
                    ev["id"] = ids[d.row]
                out.append(ev)
                log.info("drift detected on %s (%s) after %d events: %.4g > %.4g", self.model, d.signal, d.index,
                         d.statistic, d.threshold)
                if self.policy is not None:
                    self.policy.arm("drift", at_event=d.index, positions=before)
        for (topic, part), off in offsets.items():
            self.positions.setdefault(topic, {})[str(part)] = off
        self.events += int(X.shape[0])
        if self.policy is not None:
            req = self.policy.poll(events=self.events, now=now)
            if req is not None:
                out.append(control_event(
                    "retrain_requested", self.model, at=now, trigger=req.trigger, request_id=req.request_id,
                    window_events=self.retrain_window, features=list(self.features), topics=list(self.topics),
                    **{"from": req.positions},
                ))
                log.info("retrain requested (%s, %s)", req.trigger, req.request_id)
        return out


class ControlChannel:
    """Emit control events: to the control topic (Kafka), else to ``sink`` (the hub)."""

    def __init__(self, *, producer: Any | None, topic: str, sink: Callable[[str, list[dict[str, Any]]], None] | None) -> None:
        self.producer, self.topic, self.sink = producer, topic, sink
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def emit(self, events: Sequence[dict[str, Any]]) -> None:
        """Queue events (never waits)."""
        for ev in events:
            self._queue.put_nowait(ev)

    async def run(self, stop: asyncio.Event) -> None:
        """Send queued events until ``stop``; flushes what is queued when stopping."""
        while True:
            getter = asyncio.ensure_future(self._queue.get())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if not getter.done():
                getter.cancel()
                break
            await self._send([getter.result()])
        rest = []
        while not self._queue.empty():
            rest.append(self._queue.get_nowait())
        if rest:
            await self._send(rest)

    async def _send(self, events: list[dict[str, Any]]) -> None:
        if self.producer is None:
            if self.sink is not None:
                self.sink("control", events)
            return
        for ev in events:
            await self.producer.send_and_wait(self.topic, orjson.dumps(ev), key=ev.get("type", "").encode())
