"""The service against a broker reachable only over TLS with client certificates, as a subprocess.

The embedded broker speaks plaintext, so a TLS-terminating proxy stands in
front of it (the Kafka traffic passes through unchanged) and the broker
advertises the proxy's address: every client the service opens, the admin
client, the runner's consumer and producer, the control channel, must
connect with the configured CA and client certificate, or nothing works.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import ssl
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.helpers import create_ssl_context

from stream.broker import EmbeddedBroker, ensure_topics, free_port
from stream.synthetic import SyntheticStream
from tests.conftest import python_cmd, subprocess_env

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

trustme = pytest.importorskip("trustme")


class _TLSProxy:
    """Accept TLS connections (client certificate required) and pipe each to a plaintext address."""

    def __init__(self, port: int, target: tuple[str, int], server: ssl.SSLContext) -> None:
        self.port, self.target, self.context = port, target, server
        self.loop = asyncio.new_event_loop()
        self.handshakes_failed = 0
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", self.port, ssl=self.context), self.loop).result(10)
        self.loop.set_exception_handler(self._on_error)
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

    def _on_error(self, loop: asyncio.AbstractEventLoop, ctx: dict[str, Any]) -> None:
        if isinstance(ctx.get("exception"), ssl.SSLError):
            self.handshakes_failed += 1

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_w), _pipe(up_r, writer))


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


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A broker behind a TLS proxy that requires a client certificate from the CA; the PEM files."""
    d = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    ca.configure_trust(server_ctx)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client = ca.issue_cert("anomstream-service")
    files = {"ca": d / "ca.pem", "cert": d / "client.pem", "key": d / "client.key"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    client.cert_chain_pems[0].write_to_path(str(files["cert"]))
    client.private_key_pem.write_to_path(str(files["key"]))
    other = trustme.CA()  # a CA the proxy does not trust
    files["other_ca"] = d / "other_ca.pem"
    other.cert_pem.write_to_path(str(files["other_ca"]))
    proxy_port = free_port()
    with EmbeddedBroker(port=0, advertised=f"127.0.0.1:{proxy_port}", log_file=d / "tansu.log") as broker, \
            _TLSProxy(proxy_port, ("127.0.0.1", broker.port), server_ctx) as proxy:
        yield {"bootstrap": f"127.0.0.1:{proxy_port}", "plain": broker.bootstrap, "proxy": proxy, **files}


def _client(tls: dict[str, Any]) -> dict[str, Any]:
    ctx = create_ssl_context(cafile=tls["ca"], certfile=tls["cert"], keyfile=tls["key"])
    return {"security_protocol": "SSL", "ssl_context": ctx}


def _config(tmp: Path, tls: dict[str, Any], prefix: str, *, backend: str, **kafka: Any) -> Path:
    cfg = tmp / f"service-{uuid.uuid4().hex[:6]}.yaml"
    cfg.write_text(json.dumps({
        "model": {"registry": str(tmp / "empty-registry"), "name": "default"},
        "kafka": {"bootstrap_servers": tls["bootstrap"], "backend": backend,
                  "input_topics": [f"{prefix}.events"], "output_topic": f"{prefix}.scores",
                  "alerts_topic": f"{prefix}.anomalies", "dlq_topic": f"{prefix}.dlq",
                  "control_topic": f"{prefix}.control", "group_id": f"{prefix}.group", "partitions": 2,
                  "security_protocol": "SSL", "ssl_cafile": str(tls["ca"]), **kafka},
        "batching": {"max_batch": 256, "max_latency_ms": 10},
        "websocket": {"enabled": False}, "metrics": {"enabled": False},
    }))
    return cfg


async def _produce(tls: dict[str, Any], topic: str, n: int) -> None:
    gen = SyntheticStream(n_features=6, seed=9)
    X, _ = gen.sample(n, anomaly_rate=0.02)
    producer = AIOKafkaProducer(bootstrap_servers=tls["bootstrap"], linger_ms=5, **_client(tls))
    await producer.start()
    try:
        futures = [await producer.send(topic, orjson.dumps({"id": i, "features": dict(zip(gen.features, row))}))
                   for i, row in enumerate(X.tolist())]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _consume(tls: dict[str, Any], topic: str, until: int, proc: subprocess.Popen[bytes]) -> list[Any]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=tls["bootstrap"], group_id=None,
                                auto_offset_reset="earliest", fetch_max_wait_ms=100, **_client(tls))
    await consumer.start()
    out: list[Any] = []
    deadline = time.monotonic() + 120
    try:
        while len(out) < until and time.monotonic() < deadline:
            for msgs in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(orjson.loads(m.value) for m in msgs)
            if proc.poll() is not None:
                raise AssertionError(f"service exited early with {proc.returncode}")
    finally:
        await consumer.stop()
    return out


@pytest.mark.parametrize("backend", ["aiokafka", "faust"])
def test_serve_over_tls_with_a_client_certificate(tls: dict[str, Any], tmp_path: Path, backend: str) -> None:
    prefix = f"tls-{uuid.uuid4().hex[:8]}"
    topic = f"{prefix}.events"
    asyncio.run(ensure_topics(tls["bootstrap"], {topic: 2}, client=_client(tls)))
    asyncio.run(_produce(tls, topic, 600))
    cfg = _config(tmp_path, tls, prefix, backend=backend, ssl_certfile=str(tls["cert"]),
                  ssl_keyfile=str(tls["key"]))
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(python_cmd("serve", "--config", str(cfg)), stdout=out, stderr=subprocess.STDOUT,
                                env=subprocess_env())
    try:
        records = asyncio.run(_consume(tls, f"{prefix}.scores", 600, proc))
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    assert rc == 0, log.read_text()[-3000:]
    ids = Counter(r["id"] for r in records)
    assert set(ids) == set(range(600)) and max(ids.values()) == 1


@pytest.mark.parametrize(
    ("kafka", "why"),
    [
        ({}, "no client certificate"),
        ({"ssl_cafile": "other_ca", "ssl_certfile": "cert", "ssl_keyfile": "key"}, "a CA that did not sign the proxy's"),
        ({"security_protocol": "PLAINTEXT", "ssl_cafile": None}, "plaintext to a TLS listener"),
    ],
)
def test_serve_refused_by_the_tls_listener_exits_2_with_one_line(tls: dict[str, Any], tmp_path: Path,
                                                                 kafka: dict[str, Any], why: str) -> None:
    files = {k: (str(tls[v]) if isinstance(v, str) else v) for k, v in kafka.items() if k.startswith("ssl_")}
    cfg = _config(tmp_path, tls, f"tlsbad-{uuid.uuid4().hex[:8]}", backend="aiokafka",
                  **{**{k: v for k, v in kafka.items() if not k.startswith("ssl_")}, **files})
    done = subprocess.run(python_cmd("serve", "--config", str(cfg)), capture_output=True, text=True, timeout=120,
                          env=subprocess_env(), check=False)
    assert done.returncode == 2, (why, done.stderr[-2000:])
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("anomstream: error: cannot reach Kafka at " + tls["bootstrap"]), (why, last)


def test_tls_settings_are_checked_before_any_connection(tls: dict[str, Any], tmp_path: Path) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    cases = [
        ({"ssl_cafile": str(not_pem)}, "kafka: cannot load the TLS files (ssl_cafile="),
        ({"ssl_cafile": str(tmp_path / "missing.pem")}, "kafka.ssl_cafile: Value error, no such file"),
        ({"ssl_certfile": str(tls["cert"])}, "ssl_certfile and ssl_keyfile go together"),
        ({"security_protocol": "SASL_SSL", "sasl_password": "hunter2"},
         "security_protocol SASL_SSL needs sasl_username and sasl_password"),
    ]
    for kafka, message in cases:
        cfg = _config(tmp_path, tls, "unused", backend="aiokafka", **kafka)
        done = subprocess.run(python_cmd("serve", "--config", str(cfg)), capture_output=True, text=True,
                              timeout=60, env=subprocess_env(), check=False)
        assert done.returncode == 2, done.stderr[-2000:]
        last = done.stderr.strip().splitlines()[-1]
        assert message in last and "hunter2" not in done.stderr, last
