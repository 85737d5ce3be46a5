"""What a model is: the detector zoo, ONNX export, the artifact and the registry.

Score convention, everywhere: **higher = more anomalous**.  Detectors, the
ONNX ``score`` output, score records and metrics all follow it; wrappers of
libraries with the opposite sign (scikit-learn's ``score_samples``) flip it
once, at the wrapper.

This package's ``__init__`` imports only the light modules (artifact,
registry, calibration, errors) so the serving path can use them without
pulling in scikit-learn or onnx; the zoo lives in :mod:`models.zoo` and the
exporter in :mod:`models.pipeline`.
"""

from __future__ import annotations

from models.artifact import Artifact, Card
from models.calibration import SEVERITIES, Calibration, SeverityScale
from models.errors import (
    ArtifactError,
    ExportError,
    FeatureCountError,
    ModelError,
    NotFittedError,
    RegistryError,
)
from models.registry import ModelRef, Registry, parse_ref

__all__ = [
    "SEVERITIES",
    "Artifact",
    "ArtifactError",
    "Calibration",
    "Card",
    "ExportError",
    "FeatureCountError",
    "ModelError",
    "ModelRef",
    "NotFittedError",
    "Registry",
    "RegistryError",
    "SeverityScale",
    "parse_ref",
]
