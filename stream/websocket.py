"""The WebSocket/HTTP server: one port, several routes (contract §7).

Built on the ``websockets`` library's asyncio server; plain HTTP requests are
answered from ``process_request`` before any upgrade:

* ``GET /`` — the dashboard page, and its assets (``/dashboard.js``, …) from
  the package's ``dashboard`` folder (uPlot 1.6.32 vendored there, MIT);
* ``GET /healthz`` — liveness JSON (status, model, kafka, uptime_s), never
  behind the token;
* ``GET /readyz`` — 200 when a model is loaded and the enabled sources are
  connected, else 503 with the reasons;
* ``ws /ingest`` — events in, score records back (:mod:`stream.ingest`);
* ``ws /subscribe?streams=scores,anomalies,control`` — pushed frames
  ``{"stream": name, "records": [...]}`` from every source (:mod:`stream.fanout`).

With a token, every other request needs ``Authorization: Bearer <token>`` or
``?token=<token>``, else HTTP 401 before any upgrade.  Compression is off
(permessage-deflate costs about 35% of ingest throughput here).  Frames up to
``max_frame_bytes`` are read; those over the event limit (1 MiB) are answered
with a ``too_large`` record and the connection stays open; larger ones close it
(code 1009).
"""

from __future__ import annotations

import asyncio
import email.utils
import hmac
import logging
from collections.abc import Callable, Mapping
from http import HTTPStatus
from importlib import resources
from types import TracebackType
from typing import Any, Final, Protocol, Self, TypedDict
from urllib.parse import parse_qs, quote, urlsplit

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from stream.errors import StreamError
from stream.fanout import Hub, StreamName, Subscriber, parse_streams
from stream.ingest import IngestBatcher, Outbox
from stream.metrics import Metrics

__all__ = ["HealthReport", "HealthSource", "WebServer"]

log = logging.getLogger(__name__)

MAX_FRAME_BYTES: Final = 16 << 20
_ASSETS: Final = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
}


class HealthReport(TypedDict):
    """The ``/healthz`` body."""

    status: str
    model: str | None
    threshold: float | None
    kafka: str
    uptime_s: float


class HealthSource(Protocol):
    """What the server asks the service for ``/healthz`` and ``/readyz``."""

    def health(self) -> HealthReport: ...

    def not_ready(self) -> list[str]:
        """Reasons the service is not ready (empty when it is)."""
        ...


def _assets() -> dict[str, bytes]:
    folder = resources.files("stream") / "dashboard"
    return {name: (folder / name).read_bytes() for name in _ASSETS}


class WebServer:
    """Serve the routes above until the ``async with`` block ends.

    Parameters
    ----------
    host, port : str, int
        Where to listen (port 0: any free port, see :attr:`port`).
    token : str or None
        Required on every request but ``/healthz`` when set.
    hub : Hub
    ingest : IngestBatcher
    health : HealthSource
    metrics : Metrics
    max_frame_bytes : int
        Largest frame read at all (the protocol limit).
    """

    def __init__(
        self, *, host: str, port: int, token: str | None, hub: Hub, ingest: IngestBatcher,
        health: HealthSource, metrics: Metrics, max_frame_bytes: int = MAX_FRAME_BYTES,
    ) -> None:
        self.host = host
        self.port = port
        self.token = token
        self.hub = hub
        self.ingest = ingest
        self.health = health
        self.metrics = metrics
        self.max_frame_bytes = max_frame_bytes
        self._assets = _assets()
        self._server: Server | None = None
        self._outboxes: set[Outbox] = set()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def __aenter__(self) -> Self:
        try:
            self._server = await serve(
                self._handle, self.host, self.port, process_request=self._route, compression=None,
                max_size=self.max_frame_bytes, server_header=None,
            )
        except OSError as exc:
            raise StreamError(
                f"websocket server cannot listen on {self.host}:{self.port}: {exc.strerror or exc} "
                "(set websocket.port, or websocket.enabled: false)"
            ) from None
        self.port = int(next(iter(self._server.sockets)).getsockname()[1])
        log.info("dashboard on %s (ws /ingest, ws /subscribe)", self.url)
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        """Answer what was received, give writers a moment, then close every connection."""
        server = self._server
        if server is None:
            return
        self.ingest.flush()
        for _ in range(100):
            if not any(o.backlog for o in self._outboxes):
                break
            await asyncio.sleep(0.01)
        server.close()
        await server.wait_closed()
        self._server = None

    # ------------------------------------------------------------------ HTTP
    def _route(self, conn: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        path = url.path
        query = parse_qs(url.query)
        if path == "/healthz":
            return _json(HTTPStatus.OK, self.health.health())
        if self.token is not None and not self._authorised(request.headers, query):
            resp = _text(HTTPStatus.UNAUTHORIZED, "401 Unauthorized: send 'Authorization: Bearer <token>' or ?token=<token>\n")
            resp.headers["WWW-Authenticate"] = 'Bearer realm="anomstream"'
            return resp
        if path == "/readyz":
            reasons = self.health.not_ready()
            status = HTTPStatus.SERVICE_UNAVAILABLE if reasons else HTTPStatus.OK
            return _json(status, {"ready": not reasons, "reasons": reasons})
        if path == "/ingest":
            return None
        if path == "/subscribe":
            try:
                parse_streams(_first(query, "streams"))
            except ValueError as exc:
                return _text(HTTPStatus.BAD_REQUEST, f"{exc}\n")
            return None
        name = "index.html" if path in ("/", "/index.html") else path.lstrip("/")
        body = self._assets.get(name)
        if body is None:
            return _text(HTTPStatus.NOT_FOUND, f"404 Not Found: {path}\n")
        if name == "index.html":
            token = _first(query, "token")
            body = body.replace(b"{{query}}", f"?token={quote(token, safe='')}".encode() if token else b"")
        return _response(HTTPStatus.OK, body, _ASSETS[name])

    def _authorised(self, headers: Headers, query: Mapping[str, list[str]]) -> bool:
        assert self.token is not None
        want = self.token.encode()
        given = _first(query, "token")
        if given is not None and hmac.compare_digest(given.encode(), want):
            return True
        auth = headers.get("Authorization")
        if auth is not None and auth[:7].lower() == "bearer ":
            return hmac.compare_digest(auth[7:].strip().encode(), want)
        return False

    # ------------------------------------------------------------------ WebSocket
    async def _handle(self, ws: ServerConnection) -> None:
        path = urlsplit(ws.request.path if ws.request else "/").path
        endpoint = path.lstrip("/")
        gauge = self.metrics.websocket_clients.labels(endpoint=endpoint)
        gauge.inc()
        try:
            if path == "/ingest":
                await self._ingest(ws)
            elif path == "/subscribe":
                streams = parse_streams(_first(parse_qs(urlsplit(ws.request.path if ws.request else "").query), "streams"))
                await self._subscribe(ws, streams)
        finally:
            gauge.dec()

    async def _ingest(self, ws: ServerConnection) -> None:
        outbox = Outbox()
        self._outboxes.add(outbox)
        writer = asyncio.create_task(_write_replies(ws, outbox), name="ingest-replies")
        submit = self.ingest.submit
        try:
            while True:
                if outbox.backlog >= outbox.limit:
                    outbox.drained.clear()
                    await outbox.drained.wait()
                frame = await ws.recv(decode=False)
                submit(outbox, frame if isinstance(frame, bytes) else bytes(frame))
        except ConnectionClosed:
            pass
        finally:
            outbox.closed = True
            self._outboxes.discard(outbox)
            writer.cancel()

    async def _subscribe(self, ws: ServerConnection, streams: frozenset[StreamName]) -> None:
        sub = self.hub.subscribe(streams)
        pump = asyncio.create_task(_pump(ws, sub), name="subscriber")
        try:
            async for _ in ws:  # clients have nothing to say; this ends when they leave
                pass
        except ConnectionClosed:
            pass
        finally:
            self.hub.unsubscribe(sub)
            pump.cancel()


async def _write_replies(ws: ServerConnection, outbox: Outbox) -> None:
    take = outbox.take
    try:
        while True:
            reply = take()
            if reply is None:
                await outbox.ready.wait()
                continue
            await _send_many(ws, reply, take)
    except ConnectionClosed:
        pass


async def _pump(ws: ServerConnection, sub: Subscriber) -> None:
    pop = sub.pop
    try:
        while True:
            frame = pop()
            if frame is None:
                await sub.ready.wait()
                continue
            await _send_many(ws, frame, pop)
    except ConnectionClosed:
        pass


async def _send_many(ws: ServerConnection, first: bytes, more: Callable[[], bytes | None]) -> None:
    """Send ``first`` and whatever ``more()`` has ready, as text frames, in one write.

    ``send_context`` is the library's documented way to write frames from user
    code; one context for up to 256 frames instead of one ``ws.send`` each took
    array ingest from 57k to 75k events/s and single events from 22k to 35k
    (``tests/perf/bench_ws.py``, 2 cores).
    """
    async with ws.send_context():
        send_text = ws.protocol.send_text
        send_text(first)
        for _ in range(255):
            frame = more()
            if frame is None:
                break
            send_text(frame)


def _first(query: Mapping[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    return values[0] if values else None


def _response(status: HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers([
        ("Date", email.utils.formatdate(usegmt=True)),
        ("Connection", "close"),
        ("Content-Length", str(len(body))),
        ("Content-Type", content_type),
        ("Cache-Control", "no-store"),
    ])
    return Response(status.value, status.phrase, headers, body)


def _text(status: HTTPStatus, text: str) -> Response:
    return _response(status, text.encode(), "text/plain; charset=utf-8")


def _json(status: HTTPStatus, body: Mapping[str, Any]) -> Response:
    return _response(status, orjson.dumps(body), "application/json")
