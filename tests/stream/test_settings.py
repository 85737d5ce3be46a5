from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from stream.errors import ConfigError
from stream.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def test_documented_default_config_loads_and_matches_builtin_defaults() -> None:
    assert Settings.load(REPO / "configs" / "service.yaml", environ={}) == Settings.load(None, environ={})


def test_environment_overrides_yaml(tmp_path: Path) -> None:
    cfg = tmp_path / "s.yaml"
    cfg.write_text("kafka: {bootstrap_servers: 'a:9092', input_topics: [x]}\nbatching: {max_batch: 10}\n")
    s = Settings.load(cfg, environ={
        "ANOMSTREAM_KAFKA__BOOTSTRAP_SERVERS": "b:9092",
        "ANOMSTREAM_KAFKA__INPUT_TOPICS": "[p, q]",
        "ANOMSTREAM_DRIFT__RETRAIN__MAX_PER_DAY": "2",
        "OTHER": "ignored",
    })
    assert s.kafka.bootstrap_servers == "b:9092"
    assert s.kafka.input_topics == ("p", "q")
    assert s.batching.max_batch == 10
    assert s.drift.retrain.max_per_day == 2


def test_settings_are_frozen() -> None:
    s = Settings.load(None, environ={})
    with pytest.raises(Exception, match="frozen"):
        s.kafka.group_id = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("yaml_text", "environ", "message"),
    [
        ("kafka: {bogus: 1}\n", {}, "kafka.bogus: unknown key"),
        ("nosection: {}\n", {}, "nosection: unknown key"),
        ("batching: {max_batch: 0}\n", {}, "batching.max_batch"),
        ("inference: {providers: tpu}\n", {}, "inference.providers"),
        ("kafka: {compression: brotli}\n", {}, "kafka.compression"),
        ("", {"ANOMSTREAM_METRICS__PORT": "abc"}, "ANOMSTREAM_METRICS__PORT: metrics.port"),
        ("", {"ANOMSTREAM_KAFKA__NOPE": "1"}, "ANOMSTREAM_KAFKA__NOPE: kafka.nope: unknown key"),
        ("kafka: [1, 2\n", {}, "not valid YAML"),
        ("- a\n", {}, "must hold a mapping"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(tmp_path: Path, yaml_text: str, environ: dict[str, str], message: str) -> None:
    cfg = tmp_path / "s.yaml"
    cfg.write_text(yaml_text)
    with pytest.raises(ConfigError) as err:
        Settings.load(cfg, environ=environ)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        Settings.load(tmp_path / "nope.yaml", environ={})


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_sasl_settings_make_clients_aiokafka_and_faust_accept(protocol: str, mechanism: str) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient

    from stream.broker import client_options
    from stream.faust_runner import _credentials

    s = Settings.load(None, environ={
        "ANOMSTREAM_KAFKA__BOOTSTRAP_SERVERS": "kafka-1:9093", "ANOMSTREAM_KAFKA__SECURITY_PROTOCOL": protocol,
        "ANOMSTREAM_KAFKA__SASL_MECHANISM": mechanism, "ANOMSTREAM_KAFKA__SASL_USERNAME": "scorer",
        "ANOMSTREAM_KAFKA__SASL_PASSWORD": "123456",  # parsed as YAML: a number, kept as text
    })
    assert "123456" not in repr(s)
    options = client_options(s.kafka)
    assert options["sasl_plain_password"] == "123456" and options["sasl_mechanism"] == mechanism
    assert ("ssl_context" in options) == (protocol == "SASL_SSL")
    # aiokafka checks the security options when a client is made (no connection yet).
    async def make_clients() -> None:
        producer = AIOKafkaProducer(bootstrap_servers="kafka-1:9093", **options)
        consumer = AIOKafkaConsumer(bootstrap_servers="kafka-1:9093", **options)
        admin = AIOKafkaAdminClient(bootstrap_servers="kafka-1:9093", **options)
        await producer.stop()
        await consumer.stop()
        await admin.close()

    asyncio.run(make_clients())
    creds = _credentials(options)
    assert (creds.protocol.value, creds.mechanism.value, creds.username) == (protocol, mechanism, "scorer")
