"""WebSocket ingest: frames from every connection → micro-batches → core → replies.

Each text (or binary) frame holds one event or a JSON array of events
(contract §6).  The events of every connection go into one
:class:`~stream.batching.MicroBatcher`, so the ONNX core scores many rows per
call whatever the number of connections; each batch is decoded, scored and
encoded in one synchronous pass, as in the Kafka runner.  The reply to a frame
is one score record for a single event, an array of records (same order) for
an array; a malformed event gets its dead-letter object (``source`` null) in
place of its record.  A frame that is not valid JSON, or larger than the event
limit (1 MiB, the ``too_large`` code), gets one dead-letter object back (a
``too_large`` one echoes only the first KiB, with ``payload_truncated: true``).  The
scored records also go to the hub (``scores``, ``anomalies``).

Batching: a batch closes at ``max_batch`` events, when its first event has
waited ``max_latency_ms``, or as soon as no connection has another frame ready
(checked by yielding to the event loop), so an idle service answers each frame
at once while a busy one scores full batches.

Replies leave through a per-connection :class:`Outbox` (written by the
connection's own task), so a client that does not read its replies only stops
its own reading, never the batch loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, Final

import numpy as np
import orjson

from stream.batching import MicroBatcher
from stream.decoding import DEFAULT_MAX_EVENT_BYTES, Parsed, event_json, plain_array
from stream.fanout import Hub
from stream.kafka import LiveModel
from stream.metrics import Metrics
from stream.records import dlq_record, score_records

__all__ = ["IngestBatcher", "Outbox"]

log = logging.getLogger(__name__)

_NOTHING: Final[Any] = object()  # the item of an empty array frame: a reply, no event
_UNSET: Final[dict[str, Any]] = {}
TOO_LARGE_ECHO: Final = 1024
"""Bytes of a ``too_large`` frame echoed in its dead-letter reply (``payload_truncated: true``)."""


class Outbox:
    """The replies of one ingest connection, in frame order.

    ``limit`` frames may be awaiting their reply or their send before the
    connection stops reading (per-connection back-pressure).
    """

    __slots__ = ("closed", "drained", "frames", "limit", "pending", "ready")

    def __init__(self, *, limit: int = 1024) -> None:
        self.frames: deque[bytes] = deque()
        self.pending = 0  # frames submitted and not yet answered
        self.limit = limit
        self.closed = False
        self.ready = asyncio.Event()
        self.drained = asyncio.Event()
        self.drained.set()

    @property
    def backlog(self) -> int:
        return self.pending + len(self.frames)

    def put(self, reply: bytes) -> None:
        self.pending -= 1
        if not self.closed:
            self.frames.append(reply)
            self.ready.set()

    def take(self) -> bytes | None:
        """The next reply to send, or None (and the events updated) when none is ready."""
        if self.frames:
            return self.frames.popleft()
        self.ready.clear()
        if self.backlog < self.limit:
            self.drained.set()
        return None


class _Frame:
    __slots__ = ("array", "n", "outbox", "received", "results")

    def __init__(self, outbox: Outbox, *, n: int, array: bool, received: float) -> None:
        self.outbox = outbox
        self.n = n
        self.array = array
        self.received = received
        self.results: list[dict[str, Any]] = []


_Item = tuple[_Frame, "bytes | Parsed"]


class IngestBatcher:
    """Score WebSocket frames in micro-batches across connections.

    Parameters
    ----------
    model : LiveModel
        The model served (may be swapped between batches).
    hub : Hub
        Where scored records are published.
    metrics : Metrics
    max_batch, max_latency_ms
        The ``batching`` config section.
    max_event_bytes : int
        Frames larger than this are answered with a ``too_large`` record.
    """

    def __init__(
        self, *, model: LiveModel, hub: Hub, metrics: Metrics, max_batch: int = 512,
        max_latency_ms: float = 20.0, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        self.model = model
        self.hub = hub
        self.metrics = metrics
        self.max_event_bytes = max_event_bytes
        self._batcher: MicroBatcher[_Item] = MicroBatcher(max_batch=max_batch, max_latency_ms=max_latency_ms)
        self._wake = asyncio.Event()
        self.scored = 0
        self.rejected = 0

    def submit(self, outbox: Outbox, frame: bytes) -> None:
        """Queue one received frame; its reply will reach ``outbox``."""
        now = time.time()
        head = frame[:1]
        outbox.pending += 1
        if head == b"{" or len(frame) > self.max_event_bytes:  # the common case: one event per frame
            full = self._batcher.add((_Frame(outbox, n=1, array=False, received=now), frame), now=now)
            if full is not None:
                self._process(full)
            self._wake.set()
            return
        items: list[bytes | Parsed] = [frame]
        array = False
        if head == b"[" or (head in b" \t\r\n" and frame.lstrip()[:1] == b"["):
            # Typed in one call where every element fits the model's card (a cold start has no card yet).
            parsed = self.model.decoder.parse_array(frame) if self.model.scorer.features else plain_array(frame)
            if parsed is not None:  # else the decoder answers with invalid_json
                items, array = parsed, True
        f = _Frame(outbox, n=len(items), array=array, received=now)
        add = self._batcher.add
        if not items:
            items = [_NOTHING]
        for value in items:
            full = add((f, value), now=now)
            if full is not None:
                self._process(full)
        self._wake.set()

    def flush(self) -> None:
        """Score whatever is queued now."""
        batch = self._batcher.flush()
        if batch:
            self._process(batch)

    async def run(self, stop: asyncio.Event) -> None:
        """Close partial batches (see the module docstring) until ``stop`` is set."""
        batcher = self._batcher
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                if not len(batcher):
                    self._wake.clear()
                    woken = asyncio.create_task(self._wake.wait())
                    await asyncio.wait((woken, stopping), return_when=asyncio.FIRST_COMPLETED)
                    woken.cancel()
                    continue
                deadline = batcher.deadline()
                while len(batcher) and deadline is not None and time.time() < deadline:
                    n = len(batcher)
                    await asyncio.sleep(0)
                    await asyncio.sleep(0)
                    if len(batcher) == n:
                        break
                self.flush()
        finally:
            stopping.cancel()
            self.flush()

    def _process(self, items: list[_Item]) -> None:
        """Decode, score, answer and publish one batch (no awaits)."""
        live = self.model
        scorer, decoder = live.scorer, live.decoder
        m = self.metrics
        nothing = _NOTHING
        real = [it for it in items if it[1] is not nothing]
        values = [v for _, v in real]
        if not scorer.features:  # cold start: features from the first event
            live.adopt_features(values)
            decoder = live.decoder
        decoded = decoder.decode(values)
        scored = scorer.score(decoded.X)
        scored_at = time.time()
        received = [real[i][0].received for i in decoded.rows]
        records = score_records(
            decoded, scored, model=scorer.ref, features=scorer.features, scored_at=scored_at, received_at=received,
        )
        out: list[dict[str, Any]] = [_UNSET] * len(values)  # EventDecoder fills every index
        for rec, pos in zip(records, decoded.rows):
            out[pos] = rec
        for rej in decoded.rejected:
            v = values[rej.index]
            payload = v if isinstance(v, (bytes, str)) else event_json(v)
            if rej.code == "too_large":
                # Echoing megabytes would break clients with the usual 1 MiB frame limit.
                head = payload[:TOO_LARGE_ECHO]
                rec = dlq_record(rej, head.decode("utf-8", "ignore") if isinstance(head, bytes) else head, None)
                rec["payload_truncated"] = True
                out[rej.index] = rec
            else:
                out[rej.index] = dlq_record(rej, payload, None)
            m.rejected.labels(reason=rej.code).inc()
        j = 0
        for frame, value in items:
            if value is not nothing:
                frame.results.append(out[j])
                j += 1
                if len(frame.results) < frame.n:
                    continue
            res = frame.results
            frame.outbox.put(orjson.dumps(res) if frame.array else orjson.dumps(res[0]))
        m.record_batch(source="websocket", events=len(values), scored=len(decoded.rows),
                       inference_s=scored.inference_s,
                       latencies_s=scored_at - np.asarray(received, dtype=np.float64),
                       severities=scored.severity[scored.anomalous_rows])
        self.scored += len(records)
        self.rejected += len(decoded.rejected)
        if records:
            self.hub.publish("scores", records)
        if scored.anomalous_rows.size:
            rows = scored.anomalous_rows.tolist()
            self.hub.publish("anomalies", [records[i] for i in rows])

