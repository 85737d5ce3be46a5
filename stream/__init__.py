"""The online service: Kafka in, ONNX scoring, score records and alerts out.

Nothing here imports torch, pyod, optuna, scikit-learn or :mod:`training`;
a model reaches the service only as ``model.onnx`` plus ``card.json``.
"""

from __future__ import annotations

from stream.alerts import AlertFilter
from stream.batching import MicroBatcher, split_batches
from stream.core import ScoredBatch, Scorer
from stream.decoding import REJECT_CODES, DecodedBatch, EventDecoder, Rejection
from stream.errors import BrokerError, ConfigError, ScoringError, StreamError
from stream.settings import Settings

__all__ = [
    "REJECT_CODES",
    "AlertFilter",
    "BrokerError",
    "ConfigError",
    "DecodedBatch",
    "EventDecoder",
    "MicroBatcher",
    "Rejection",
    "ScoredBatch",
    "Scorer",
    "ScoringError",
    "Settings",
    "StreamError",
    "split_batches",
]
