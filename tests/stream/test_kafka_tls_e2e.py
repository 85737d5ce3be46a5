"""The service against a broker reachable only over TLS (client certificates, or SASL: PLAIN, SCRAM), as a subprocess.

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
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.helpers import create_ssl_context

from stream.broker import EmbeddedBroker, ensure_topics, free_port
from tests.conftest import produce_events, python_cmd, read_records, subprocess_env
from tests.kafka_front import KafkaFrontDoor

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

trustme = pytest.importorskip("trustme")


_USERS = {"scorer": "s3cret-pw"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """PEM files: a test CA, the brokers' certificate (127.0.0.1), a client certificate, a CA nobody uses."""
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server, client = ca.issue_cert("127.0.0.1"), ca.issue_cert("anomstream-service")
    files = {"ca": d / "ca.pem", "cert": d / "client.pem", "key": d / "client.key", "other_ca": d / "other_ca.pem",
             "server_cert": d / "server.pem", "server_key": d / "server.key"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    client.cert_chain_pems[0].write_to_path(str(files["cert"]))
    client.private_key_pem.write_to_path(str(files["key"]))
    files["server_cert"].write_bytes(b"".join(pem.bytes() for pem in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(files["server_key"]))
    trustme.CA().cert_pem.write_to_path(str(files["other_ca"]))
    return {"dir": d, **files}


def _server_context(pki: dict[str, Any], *, client_certificates: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(pki["server_cert"]), str(pki["server_key"]))
    if client_certificates:
        ctx.load_verify_locations(str(pki["ca"]))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@contextlib.contextmanager
def _fronted(pki: dict[str, Any], name: str, **front: Any) -> Iterator[tuple[str, KafkaFrontDoor]]:
    """An embedded broker that advertises a front door (:class:`KafkaFrontDoor`) and is reached only through it."""
    port = free_port()
    with EmbeddedBroker(port=0, advertised=f"127.0.0.1:{port}", log_file=pki["dir"] / f"{name}.log") as broker, \
            KafkaFrontDoor(port, ("127.0.0.1", broker.port), **front) as door:
        yield f"127.0.0.1:{port}", door


@pytest.fixture(scope="module")
def tls(pki: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A broker behind TLS that requires a client certificate signed by the test CA."""
    with _fronted(pki, "tls", tls=_server_context(pki, client_certificates=True)) as (bootstrap, door):
        yield {"bootstrap": bootstrap, "door": door, **pki,
               "client": {"security_protocol": "SSL", "ssl_context": create_ssl_context(
                   cafile=pki["ca"], certfile=pki["cert"], keyfile=pki["key"])},
               "service": {"security_protocol": "SSL", "ssl_cafile": str(pki["ca"]),
                           "ssl_certfile": str(pki["cert"]), "ssl_keyfile": str(pki["key"])}}


@pytest.fixture(scope="module")
def sasl(pki: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A broker behind TLS (server certificate only) and SASL (PLAIN, SCRAM-SHA-256/512) with one user."""
    user, password = next(iter(_USERS.items()))
    with _fronted(pki, "sasl", tls=_server_context(pki, client_certificates=False), users=_USERS) as (bootstrap, door):
        yield {"bootstrap": bootstrap, "door": door, **pki,
               "client": {"security_protocol": "SASL_SSL", "ssl_context": create_ssl_context(cafile=pki["ca"]),
                          "sasl_mechanism": "PLAIN", "sasl_plain_username": user, "sasl_plain_password": password},
               "service": {"security_protocol": "SASL_SSL", "ssl_cafile": str(pki["ca"]), "sasl_mechanism": "PLAIN",
                           "sasl_username": user, "sasl_password": password}}


def _config(tmp: Path, front: dict[str, Any], prefix: str, *, backend: str = "aiokafka",
            retrain: dict[str, Any] | None = None, **kafka: Any) -> Path:
    cfg = tmp / f"service-{uuid.uuid4().hex[:6]}.yaml"
    cfg.write_text(json.dumps({
        "model": {"registry": str(tmp / "empty-registry"), "name": "default"},  # cold start
        "drift": {"retrain": retrain or {}},
        "kafka": {"bootstrap_servers": front["bootstrap"], "backend": backend,
                  "input_topics": [f"{prefix}.events"], "output_topic": f"{prefix}.scores",
                  "alerts_topic": f"{prefix}.anomalies", "dlq_topic": f"{prefix}.dlq",
                  "control_topic": f"{prefix}.control", "group_id": f"{prefix}.group", "partitions": 2,
                  **front["service"], **kafka},
        "batching": {"max_batch": 256, "max_latency_ms": 10},
        "websocket": {"enabled": False}, "metrics": {"enabled": False},
    }))
    return cfg


def _serve_scores_all(front: dict[str, Any], tmp_path: Path, backend: str, **kafka: Any) -> None:
    prefix = f"sec-{uuid.uuid4().hex[:8]}"
    topic = f"{prefix}.events"
    asyncio.run(ensure_topics(front["bootstrap"], {topic: 2}, client=front["client"]))
    asyncio.run(produce_events(front["bootstrap"], topic, 600, seed=9, anomaly_rate=0.02, client=front["client"]))
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(python_cmd("serve", "--config", str(_config(tmp_path, front, prefix, backend=backend, **kafka))),
                                stdout=out, stderr=subprocess.STDOUT, env=subprocess_env())
    try:
        records = asyncio.run(read_records(front["bootstrap"], f"{prefix}.scores", until=lambda r: len(r) >= 600,
                                           timeout_s=120, proc=proc, client=front["client"]))
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    assert rc == 0, log.read_text()[-3000:]
    ids = Counter(r["id"] for r in records)
    assert set(ids) == set(range(600)) and max(ids.values()) == 1


def _serve_fails(cfg: Path) -> list[str]:
    """The output lines of a ``serve`` that must exit with code 2 (the last is the error)."""
    done = subprocess.run(python_cmd("serve", "--config", str(cfg)), capture_output=True, text=True, timeout=120,
                          env=subprocess_env(), check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "s3cret" not in done.stderr and "hunter2" not in done.stderr
    return done.stderr.strip().splitlines()


@pytest.mark.parametrize("backend", ["aiokafka", "faust"])
def test_serve_over_tls_with_a_client_certificate(tls: dict[str, Any], tmp_path: Path, backend: str) -> None:
    _serve_scores_all(tls, tmp_path, backend)


@pytest.mark.parametrize("backend", ["aiokafka", "faust"])
def test_serve_over_sasl_ssl(sasl: dict[str, Any], tmp_path: Path, backend: str) -> None:
    _serve_scores_all(sasl, tmp_path, backend)


@pytest.mark.parametrize(("backend", "mechanism"), [("aiokafka", "SCRAM-SHA-256"), ("faust", "SCRAM-SHA-512")])
def test_serve_over_sasl_ssl_with_scram(sasl: dict[str, Any], tmp_path: Path, backend: str, mechanism: str) -> None:
    _serve_scores_all(sasl, tmp_path, backend, sasl_mechanism=mechanism)
    assert ("scorer", mechanism) in sasl["door"].admitted
    assert "scorer" not in sasl["door"].refused


def test_trainer_over_sasl_ssl_trains_the_first_model(sasl: dict[str, Any], tmp_path: Path) -> None:
    """The trainer's clients (control tail, window reader, publisher) through the same secured door as ``serve``."""
    prefix = f"sectrain-{uuid.uuid4().hex[:8]}"
    topic = f"{prefix}.events"
    asyncio.run(ensure_topics(sasl["bootstrap"], {topic: 2, f"{prefix}.control": 1}, client=sasl["client"]))
    cfg = _config(tmp_path, sasl, prefix, sasl_mechanism="SCRAM-SHA-256",
                  retrain={"window_events": 2000, "min_events": 1000, "budget_s": 10})
    procs, logs = [], [tmp_path / "serve.log", tmp_path / "trainer.log"]
    for args, log in zip((["serve"], ["trainer", "--label-free", "iforest"]), logs):
        with open(log, "wb") as out:
            procs.append(subprocess.Popen(python_cmd(*args, "--config", str(cfg)), stdout=out,
                                          stderr=subprocess.STDOUT, env=subprocess_env()))
    try:
        asyncio.run(produce_events(sasl["bootstrap"], topic, 2500, seed=9, anomaly_rate=0.02, client=sasl["client"]))
        control = asyncio.run(read_records(
            sasl["bootstrap"], f"{prefix}.control", timeout_s=120, proc=procs[1], client=sasl["client"],
            until=lambda evs: any(e["type"] == "model_promoted" or e.get("status") == "failed" for e in evs)))
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        rcs = [proc.wait(timeout=30) for proc in procs]
    assert rcs == [0, 0], [log.read_text()[-2000:] for log in logs]
    promoted = [e for e in control if e["type"] == "model_promoted"]
    assert promoted and promoted[0]["model"] == "default@1", control
    assert "scorer" not in sasl["door"].refused


@pytest.mark.parametrize(
    ("kafka", "cause"),
    [
        ({"ssl_certfile": None, "ssl_keyfile": None}, "closed"),  # no client certificate: the broker hangs up
        ({"ssl_cafile": "other_ca"}, "CERTIFICATE_VERIFY_FAILED"),  # a CA that did not sign the broker's certificate
        ({"security_protocol": "PLAINTEXT", "ssl_cafile": None, "ssl_certfile": None, "ssl_keyfile": None},
         "closed"),  # plaintext to a TLS listener
    ],
)
def test_serve_refused_over_tls_exits_2_with_one_line(tls: dict[str, Any], tmp_path: Path, kafka: dict[str, Any],
                                                     cause: str) -> None:
    kafka = {k: str(tls[v]) if k.startswith("ssl_") and v else v for k, v in kafka.items()}
    last = _serve_fails(_config(tmp_path, tls, f"tlsbad-{uuid.uuid4().hex[:8]}", **kafka))[-1]
    assert last.startswith(f"anomstream: error: cannot reach Kafka at {tls['bootstrap']}: "), last
    assert cause in last, last


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
def test_serve_with_a_wrong_sasl_password_exits_2_naming_the_refusal(sasl: dict[str, Any], tmp_path: Path,
                                                                   mechanism: str) -> None:
    last = _serve_fails(_config(tmp_path, sasl, f"saslbad-{uuid.uuid4().hex[:8]}", sasl_password="hunter2",
                                sasl_mechanism=mechanism))[-1]
    assert last.startswith(f"anomstream: error: cannot reach Kafka at {sasl['bootstrap']}"), last
    assert "SaslAuthenticationFailed: Authentication failed: invalid credentials" in last, last
    assert "scorer" in sasl["door"].refused


def test_security_settings_are_checked_before_any_connection(tls: dict[str, Any], tmp_path: Path) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    cases = [
        ({"ssl_cafile": str(not_pem)}, "kafka: cannot load the TLS files (ssl_cafile="),
        ({"ssl_cafile": str(tmp_path / "missing.pem")}, "kafka.ssl_cafile: Value error, no such file"),
        ({"ssl_keyfile": None}, "ssl_certfile and ssl_keyfile go together"),
        ({"security_protocol": "SASL_SSL", "sasl_password": "hunter2"},
         "security_protocol SASL_SSL needs sasl_username and sasl_password"),
        ({"bootstrap_servers": "embedded"}, "the embedded broker speaks PLAINTEXT only"),
    ]
    for kafka, message in cases:
        last = _serve_fails(_config(tmp_path, tls, "unused", **kafka))[-1]
        assert message in last, last
