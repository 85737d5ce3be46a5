"""The fan-out hub: records from every source to every WebSocket subscriber.

Sources (the Kafka runner, WebSocket ingest, the control-topic tail, the
service's model watch) call :meth:`Hub.publish` with one batch of records of one
stream (``scores``, ``anomalies`` or ``control``).  The batch is encoded once,
as one frame ``{"stream": name, "records": [...]}``, and the same bytes are
queued for every subscriber of that stream.  Publishing never waits: each
subscriber has a bounded queue (``websocket.queue`` records); when a new frame
would overflow it, the oldest frames are dropped and their records counted in
``anomstream_websocket_dropped_total``.  A stalled client therefore costs one
bounded queue, never the time of the publisher or of the other subscribers.

:class:`Subscriber` is the plain queue (tests drive it without a socket);
sending its frames is the WebSocket server's job.

Examples
--------
>>> hub = Hub(queue=3)
>>> sub = hub.subscribe({"anomalies"})
>>> hub.publish("scores", [{"id": 1}])           # not subscribed: nothing queued
>>> hub.publish("anomalies", [{"id": 2}, {"id": 3}])
>>> hub.publish("anomalies", [{"id": 4}, {"id": 5}])  # 4 records > 3: the oldest frame goes
>>> sub.pop(), sub.pop(), sub.dropped
(b'{"stream":"anomalies","records":[{"id":4},{"id":5}]}', None, 2)
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Literal, get_args

import orjson

from stream.metrics import Metrics

__all__ = ["STREAMS", "Hub", "StreamName", "Subscriber", "parse_streams"]

StreamName = Literal["scores", "anomalies", "control"]
STREAMS: Final[tuple[StreamName, ...]] = get_args(StreamName)


def parse_streams(text: str | None) -> frozenset[StreamName]:
    """The streams named in a ``streams=a,b`` query value (all three when absent).

    Raises
    ------
    ValueError
        For an unknown name, naming the known ones.

    Examples
    --------
    >>> sorted(parse_streams("anomalies, control"))
    ['anomalies', 'control']
    >>> parse_streams("alerts")
    Traceback (most recent call last):
    ...
    ValueError: unknown stream 'alerts'; choose from scores, anomalies, control
    """
    if text is None or not text.strip():
        return frozenset(STREAMS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    out: set[StreamName] = set()
    for n in names:
        if n not in STREAMS:
            raise ValueError(f"unknown stream {n!r}; choose from {', '.join(STREAMS)}")
        out.add(n)
    return frozenset(out)


class Subscriber:
    """One subscriber's bounded queue of encoded frames (drop-oldest).

    Parameters
    ----------
    streams : set of str
        The streams it receives.
    limit : int
        Most records queued; a frame that would overflow drops the oldest frames
        (a single frame larger than ``limit`` is still kept, alone).
    """

    __slots__ = ("_frames", "dropped", "limit", "queued", "ready", "streams")

    def __init__(self, streams: Iterable[StreamName], *, limit: int) -> None:
        self.streams = frozenset(streams)
        self.limit = limit
        self._frames: deque[tuple[bytes, int]] = deque()
        self.queued = 0
        self.dropped = 0
        self.ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._frames)

    def push(self, frame: bytes, records: int) -> int:
        """Queue a frame of ``records`` records; returns how many records were dropped."""
        frames = self._frames
        frames.append((frame, records))
        self.queued += records
        dropped = 0
        while self.queued > self.limit and len(frames) > 1:
            _, n = frames.popleft()
            self.queued -= n
            dropped += n
        self.dropped += dropped
        self.ready.set()
        return dropped

    def pop(self) -> bytes | None:
        """The oldest queued frame, or None (and ``ready`` cleared) when empty."""
        if not self._frames:
            self.ready.clear()
            return None
        frame, n = self._frames.popleft()
        self.queued -= n
        return frame


class Hub:
    """Streams of records to subscribers; see the module docstring.

    Parameters
    ----------
    queue : int
        Each subscriber's bound, in records (``websocket.queue``).
    metrics : Metrics, optional
        Where drops are counted.
    """

    def __init__(self, *, queue: int, metrics: Metrics | None = None) -> None:
        self.queue = queue
        self.metrics = metrics
        self._subs: dict[str, set[Subscriber]] = {s: set() for s in STREAMS}
        self.published = 0

    def subscribe(self, streams: Iterable[StreamName]) -> Subscriber:
        """A new subscriber to ``streams``; call :meth:`unsubscribe` when it leaves."""
        sub = Subscriber(streams, limit=self.queue)
        for s in sub.streams:
            self._subs[s].add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        for s in sub.streams:
            self._subs[s].discard(sub)

    def subscribers(self, stream: StreamName) -> int:
        """How many subscribers ``stream`` has."""
        return len(self._subs[stream])

    def publish(self, stream: str, records: Sequence[Mapping[str, Any]] | Sequence[bytes]) -> None:
        """Queue one batch of ``stream`` records (dicts, or each encoded as JSON already) for its subscribers.

        Never waits.
        """
        subs = self._subs.get(stream)
        if not subs or not records:
            return
        if isinstance(records[0], bytes):
            frame = b'{"stream":' + orjson.dumps(stream) + b',"records":[' + b",".join(records) + b"]}"  # type: ignore[arg-type]
        else:
            frame = orjson.dumps({"stream": stream, "records": records})
        n = len(records)
        dropped = 0
        for sub in subs:
            dropped += sub.push(frame, n)
        self.published += n
        if dropped and self.metrics is not None:
            self.metrics.websocket_dropped.inc(dropped)
