"""A Kafka front door for tests: TLS, SASL/PLAIN and request recording in front of the embedded broker."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
import threading
from typing import Self


class KafkaFrontDoor:
    """A broker's front door: TLS (with ``tls``) and SASL/PLAIN (with ``users``), then the Kafka bytes piped as they are.

    With ``record``, the client's requests (after any authentication) are
    kept in :attr:`requests` as ``(api_key, api_version, frame)``.

    SASL: the handshake (API 17) and the authentication (API 36) are answered
    here, versions 0 and 1 as aiokafka sends them; the API versions request
    before them goes to the broker; any other request before a successful
    authentication closes the connection, as a broker requiring SASL does.
    """

    def __init__(self, port: int, target: tuple[str, int], tls: ssl.SSLContext | None = None,
                 users: dict[str, str] | None = None, record: bool = False) -> None:
        self.port, self.target, self.tls, self.users = port, target, tls, users
        self.requests: list[tuple[int, int, bytes]] | None = [] if record else None
        self.refused: list[str] = []  # user names whose authentication failed
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", self.port, ssl=self.tls), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    async def _close(self) -> None:
        self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        try:
            admitted = self.users is None or await self._authenticate(reader, writer, up_r, up_w)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            admitted = False
        if not admitted:
            writer.close()
            up_w.close()
            return
        upstream = _pipe(reader, up_w) if self.requests is None else self._frames(reader, up_w)
        await asyncio.gather(upstream, _pipe(up_r, writer))

    async def _frames(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Pipe the client's requests one frame at a time, keeping each in :attr:`requests`."""
        assert self.requests is not None
        try:
            while True:
                head = await reader.readexactly(4)
                frame = await reader.readexactly(struct.unpack(">i", head)[0])
                api_key, version = struct.unpack(">hh", frame[:4])
                self.requests.append((api_key, version, frame))
                writer.write(head + frame)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _authenticate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            up_r: asyncio.StreamReader, up_w: asyncio.StreamWriter) -> bool:
        assert self.users is not None
        while True:
            frame = await reader.readexactly(struct.unpack(">i", await reader.readexactly(4))[0])
            api_key, version, corr, id_len = struct.unpack(">hhih", frame[:10])
            body = frame[10 + max(id_len, 0):]
            if api_key == 18:  # API versions: the broker's answer
                up_w.write(struct.pack(">i", len(frame)) + frame)
                await up_w.drain()
                answer = await up_r.readexactly(struct.unpack(">i", await up_r.readexactly(4))[0])
                writer.write(struct.pack(">i", len(answer)) + answer)
            elif api_key == 17:  # SASL handshake: PLAIN only
                (n,) = struct.unpack(">h", body[:2])
                error = 0 if body[2:2 + n] == b"PLAIN" else 33  # UNSUPPORTED_SASL_MECHANISM
                _send(writer, struct.pack(">ihih", corr, error, 1, 5) + b"PLAIN")
            elif api_key == 36 and version <= 1:  # SASL authenticate: \0user\0password
                (n,) = struct.unpack(">i", body[:4])
                _, user, password = body[4:4 + n].split(b"\0")
                ok = self.users.get(user.decode()) == password.decode()
                message = b"" if ok else b"Authentication failed: invalid credentials"
                reply = struct.pack(">ih", corr, 0 if ok else 58)  # SASL_AUTHENTICATION_FAILED
                reply += struct.pack(">h", -1) if ok else struct.pack(">h", len(message)) + message
                reply += struct.pack(">i", 0) + (struct.pack(">q", 0) if version == 1 else b"")
                _send(writer, reply)
                await writer.drain()
                if not ok:
                    self.refused.append(user.decode())
                return ok
            else:
                return False
            await writer.drain()


def _send(writer: asyncio.StreamWriter, payload: bytes) -> None:
    writer.write(struct.pack(">i", len(payload)) + payload)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, asyncio.CancelledError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError, asyncio.CancelledError):
            await writer.wait_closed()
