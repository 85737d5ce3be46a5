"""Errors raised by the online service."""

from __future__ import annotations

__all__ = ["BrokerError", "ConfigError", "ScoringError", "StreamError"]


class StreamError(Exception):
    """Base class of every error raised by :mod:`stream`."""


class ConfigError(StreamError):
    """The service configuration is missing, unreadable or invalid."""


class BrokerError(StreamError):
    """The Kafka-compatible broker could not be started or reached."""


class ScoringError(StreamError):
    """The inference core could not load or run a model."""
