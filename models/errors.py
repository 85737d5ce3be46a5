"""Errors raised by the model layer."""

from __future__ import annotations

__all__ = [
    "ArtifactError",
    "ExportError",
    "FeatureCountError",
    "ModelError",
    "NotFittedError",
    "RegistryError",
]


class ModelError(Exception):
    """Base class of every error raised by :mod:`models`."""


class NotFittedError(ModelError):
    """A detector was asked to score before it was fitted."""


class FeatureCountError(ModelError, ValueError):
    """The input has a different number of features than the model expects."""


class ExportError(ModelError):
    """A detector could not be exported to ONNX, or the export failed its parity check."""


class ArtifactError(ModelError):
    """A model artifact (model.onnx + card.json) is missing or malformed."""


class RegistryError(ModelError):
    """A registry operation named a model or version that does not exist."""
