"""The service configuration: one typed, frozen settings object.

(pydantic models with a small loader rather than pydantic-settings: the loader
parses environment values as YAML and rejects unknown ``ANOMSTREAM_`` variables,
which pydantic-settings would ignore.)

Read once, at the entry point, from a YAML file (``configs/service.yaml`` is
the documented default) with environment overrides
``ANOMSTREAM_<SECTION>__<KEY>`` (e.g. ``ANOMSTREAM_KAFKA__BOOTSTRAP_SERVERS``).
Environment values are parsed as YAML scalars or lists, so
``ANOMSTREAM_KAFKA__INPUT_TOPICS='[a, b]'`` and ``ANOMSTREAM_BATCHING__MAX_BATCH=256``
work.  An unknown key or a bad value stops start-up with one line naming it.

Examples
--------
>>> s = Settings.load(None, environ={"ANOMSTREAM_BATCHING__MAX_BATCH": "64"})
>>> s.batching.max_batch, s.kafka.output_topic
(64, 'scores')
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from stream.errors import ConfigError

__all__ = [
    "AlertSettings",
    "BatchingSettings",
    "DriftSettings",
    "InferenceSettings",
    "KafkaSettings",
    "MetricsSettings",
    "ModelSettings",
    "RetrainSettings",
    "Settings",
    "WebSocketSettings",
    "WebhookSettings",
]

ENV_PREFIX = "ANOMSTREAM_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSettings(_Section):
    registry: Path = Path("./var/models")
    name: str = "default"
    reload_interval_s: float = Field(5.0, gt=0)


class KafkaSettings(_Section):
    enabled: bool = True
    bootstrap_servers: str = "embedded"
    backend: Literal["aiokafka", "faust"] = "aiokafka"
    input_topics: tuple[str, ...] = ("events",)
    output_topic: str = "scores"
    alerts_topic: str = "anomalies"
    dlq_topic: str = "events.dlq"
    control_topic: str = "anomstream.control"
    group_id: str = "anomstream"
    partitions: int = Field(4, ge=1)
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"
    replication_factor: int | None = Field(None, ge=1)  # of the topics the service creates; None: min(3, brokers)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    ssl_cafile: Path | None = None  # CA bundle the brokers' certificates are checked against (None: the system's)
    ssl_certfile: Path | None = None  # client certificate, for brokers that authenticate clients by TLS
    ssl_keyfile: Path | None = None
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None

    @field_validator("input_topics")
    @classmethod
    def _non_empty(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v or any(not t for t in v):
            raise ValueError("needs at least one non-empty topic name")
        return v

    @field_validator("sasl_username", "sasl_password", mode="before")
    @classmethod
    def _text(cls, v: Any) -> Any:
        # Environment values are parsed as YAML: a numeric password arrives as a number.
        return v if v is None or isinstance(v, (str, SecretStr)) else str(v)

    @field_validator("ssl_cafile", "ssl_certfile", "ssl_keyfile")
    @classmethod
    def _readable(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"no such file: {v}")
        return v

    @model_validator(mode="after")
    def _security(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and (not self.sasl_username or self.sasl_password is None):
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_username and sasl_password")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together")
        if self.bootstrap_servers == "embedded" and self.security_protocol != "PLAINTEXT":
            raise ValueError("the embedded broker speaks PLAINTEXT only: set bootstrap_servers to your cluster")
        return self


class BatchingSettings(_Section):
    max_batch: int = Field(512, ge=1, le=65536)
    max_latency_ms: float = Field(20.0, ge=0)


class InferenceSettings(_Section):
    providers: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(0, ge=0)
    native: Literal["auto", "never"] = "auto"  # the compiled neighbour search (stream/native.py)


class WebSocketSettings(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535)
    token: str | None = None
    queue: int = Field(1000, ge=1)


class MetricsSettings(_Section):
    enabled: bool = True
    port: int = Field(9108, ge=0, le=65535)


class RetrainSettings(_Section):
    enabled: bool = True
    min_interval_s: float = Field(3600.0, ge=0)
    max_per_day: int = Field(6, ge=0)
    window_events: int = Field(50000, ge=100)
    budget_s: float = Field(120.0, gt=0)
    min_events: int = Field(10000, ge=1)


class DriftSettings(_Section):
    enabled: bool = True
    false_alarm_events: float = Field(1_000_000.0, gt=1)
    warmup_events: int = Field(5000, ge=100)
    cooldown_events: int = Field(5000, ge=0)
    retrain: RetrainSettings = RetrainSettings()


class WebhookSettings(_Section):
    url: str
    format: Literal["json", "slack"] = "json"
    timeout_s: float = Field(5.0, gt=0)
    retries: int = Field(3, ge=0)
    backoff_s: float = Field(0.5, ge=0)
    failure_threshold: int = Field(5, ge=1)
    reset_s: float = Field(30.0, gt=0)


class AlertSettings(_Section):
    min_severity: Literal["low", "medium", "high", "critical"] = "medium"
    cooldown_s: float = Field(60.0, ge=0)
    webhooks: tuple[WebhookSettings, ...] = ()
    jsonl_path: Path | None = None
    queue: int = Field(1000, ge=1)


class Settings(_Section):
    """Every section of the service configuration (contract §5)."""

    model: ModelSettings = ModelSettings()
    kafka: KafkaSettings = KafkaSettings()
    batching: BatchingSettings = BatchingSettings()
    inference: InferenceSettings = InferenceSettings()
    websocket: WebSocketSettings = WebSocketSettings()
    metrics: MetricsSettings = MetricsSettings()
    drift: DriftSettings = DriftSettings()
    alerts: AlertSettings = AlertSettings()

    @classmethod
    def load(
        cls, path: str | os.PathLike[str] | None, *, environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Read ``path`` (None: defaults only), apply environment overrides, validate.

        Raises
        ------
        ConfigError
            One line naming the file, key and problem.
        """
        data: dict[str, Any] = {}
        where = "defaults"
        if path is not None:
            where = str(path)
            try:
                text = Path(path).read_text()
            except OSError as exc:
                raise ConfigError(f"cannot read config file {where!r}: {exc.strerror}") from None
            try:
                loaded = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ConfigError(f"config file {where!r} is not valid YAML: {_one_line(exc)}") from None
            if loaded is None:
                loaded = {}
            if not isinstance(loaded, dict):
                raise ConfigError(f"config file {where!r} must hold a mapping of sections")
            data = loaded
        env = os.environ if environ is None else environ
        env_keys: dict[tuple[str, ...], str] = {}
        for var, value in env.items():
            if not var.startswith(ENV_PREFIX):
                continue
            parts = [p.lower() for p in var[len(ENV_PREFIX):].split("__")]
            if len(parts) < 2 or not all(parts):
                raise ConfigError(f"environment variable {var}: expected ANOMSTREAM_<SECTION>__<KEY>")
            env_keys[tuple(parts)] = var
            node = data
            for part in parts[:-1]:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise ConfigError(f"environment variable {var}: {part!r} is not a section")
                node = child
            try:
                node[parts[-1]] = yaml.safe_load(value) if value != "" else None
            except yaml.YAMLError:
                node[parts[-1]] = value
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = tuple(str(p) for p in err["loc"])
            key = ".".join(loc)
            for n in range(len(loc), 0, -1):
                if loc[:n] in env_keys:
                    where = f"environment variable {env_keys[loc[:n]]}"
                    break
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            value = err.get("input")
            # No echo of whole sections (a section-wide check) or secrets.
            hidden = err["type"] in ("extra_forbidden", "missing") or isinstance(value, dict) or "password" in key
            shown = "" if hidden else f" (got {value!r})"
            raise ConfigError(f"{where}: {key}: {msg}{shown}") from None


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
