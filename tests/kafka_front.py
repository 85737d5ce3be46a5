"""A Kafka front door for tests: TLS, SASL (PLAIN, SCRAM-SHA-256/512) and request recording before the embedded broker."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import ssl
import struct
import threading
from typing import Any, Self


class KafkaFrontDoor:
    """A broker's front door: TLS (with ``tls``) and SASL (with ``users``), then the Kafka bytes piped as they are.

    With ``record``, the client's requests (after any authentication) are
    kept in :attr:`requests` as ``(api_key, api_version, frame)``.

    SASL: the handshake (API 17) and the authentication (API 36) are answered
    here, versions 0 and 1 as aiokafka sends them, for PLAIN and SCRAM-SHA-256
    and -512 (a fresh salt per exchange, 4,096 iterations); the API versions request
    before them goes to the broker; any other request before a successful
    authentication closes the connection, as a broker requiring SASL does.
    """

    def __init__(self, port: int, target: tuple[str, int], tls: ssl.SSLContext | None = None,
                 users: dict[str, str] | None = None, record: bool = False) -> None:
        self.port, self.target, self.tls, self.users = port, target, tls, users
        self.requests: list[tuple[int, int, bytes]] | None = [] if record else None
        self.refused: list[str] = []  # user names whose authentication failed
        self.admitted: list[tuple[str, str]] = []  # (user name, mechanism) of each successful authentication
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
        mechanism, scram = b"", None
        while True:
            frame = await reader.readexactly(struct.unpack(">i", await reader.readexactly(4))[0])
            api_key, version, corr, id_len = struct.unpack(">hhih", frame[:10])
            body = frame[10 + max(id_len, 0):]
            if api_key == 18:  # API versions: the broker's answer
                up_w.write(struct.pack(">i", len(frame)) + frame)
                await up_w.drain()
                answer = await up_r.readexactly(struct.unpack(">i", await up_r.readexactly(4))[0])
                writer.write(struct.pack(">i", len(answer)) + answer)
            elif api_key == 17:  # SASL handshake
                (n,) = struct.unpack(">h", body[:2])
                mechanism = body[2:2 + n]
                error = 0 if mechanism in _MECHANISMS else 33  # UNSUPPORTED_SASL_MECHANISM
                reply = struct.pack(">ihi", corr, error, len(_MECHANISMS))
                for m in _MECHANISMS:
                    reply += struct.pack(">h", len(m)) + m
                _send(writer, reply)
            elif api_key == 36 and version <= 1:  # SASL authenticate
                (n,) = struct.unpack(">i", body[:4])
                message = body[4:4 + n]
                if mechanism == b"PLAIN":  # \0user\0password
                    _, user, password = (part.decode() for part in message.split(b"\0"))
                    ok, answer = self.users.get(user) == password, b""
                elif scram is None:  # SCRAM client-first: n,,n=user,r=nonce
                    scram = _Scram(_MECHANISMS[mechanism], message.decode(), self.users)
                    user, ok, answer = scram.user, True, scram.server_first.encode()
                else:  # SCRAM client-final: c=biws,r=nonce,p=proof
                    user, answer = scram.user, scram.server_final(message.decode())
                    ok = bool(answer)
                error = b"" if ok else b"Authentication failed: invalid credentials"
                reply = struct.pack(">ih", corr, 0 if ok else 58)  # SASL_AUTHENTICATION_FAILED
                reply += struct.pack(">h", -1) if ok else struct.pack(">h", len(error)) + error
                reply += struct.pack(">i", len(answer)) + answer + (struct.pack(">q", 0) if version == 1 else b"")
                _send(writer, reply)
                await writer.drain()
                if not ok:
                    self.refused.append(user)
                    return False
                if mechanism == b"PLAIN" or scram is not None and scram.done:
                    self.admitted.append((user, mechanism.decode()))
                    return True
            else:
                return False
            await writer.drain()


_MECHANISMS = {b"PLAIN": None, b"SCRAM-SHA-256": hashlib.sha256, b"SCRAM-SHA-512": hashlib.sha512}


class _Scram:
    """The server's side of one SCRAM exchange (RFC 5802), from the stored password of the named user."""

    def __init__(self, hash_: Any, client_first: str, users: dict[str, str]) -> None:
        self.hash, self.done = hash_, False
        self.client_first_bare = client_first.removeprefix("n,,")
        fields = dict(part.split("=", 1) for part in self.client_first_bare.split(","))
        self.user = fields["n"].replace("=2C", ",").replace("=3D", "=")
        salt, iterations = os.urandom(16), 4096
        self.nonce = fields["r"] + base64.b64encode(os.urandom(18)).decode()
        self.server_first = f"r={self.nonce},s={base64.b64encode(salt).decode()},i={iterations}"
        password = users.get(self.user)
        self.salted = None if password is None else hashlib.pbkdf2_hmac(
            hash_().name, password.encode(), salt, iterations)

    def _hmac(self, key: bytes, msg: bytes) -> bytes:
        return hmac.new(key, msg, self.hash).digest()

    def server_final(self, client_final: str) -> bytes:
        """The server-final message, or b"" when the proof does not match (or no such user)."""
        without_proof, _, proof = client_final.rpartition(",p=")
        if self.salted is None or f",r={self.nonce}" not in f",{without_proof}":
            return b""
        auth = f"{self.client_first_bare},{self.server_first},{without_proof}".encode()
        client_key = self._hmac(self.salted, b"Client Key")
        signature = self._hmac(self.hash(client_key).digest(), auth)
        sent_key = bytes(a ^ b for a, b in zip(base64.b64decode(proof), signature))
        if not hmac.compare_digest(self.hash(sent_key).digest(), self.hash(client_key).digest()):
            return b""
        self.done = True
        return b"v=" + base64.b64encode(self._hmac(self._hmac(self.salted, b"Server Key"), auth))


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
