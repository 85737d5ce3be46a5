"""The model artifact: ``model.onnx`` plus ``card.json`` in one directory.

The card says everything the serving side needs besides the graph: feature
order, calibration, threshold, severity cuts, imputation medians; and what a
person needs to trust the model: detector, training data, metrics, parity and
lineage.  This module is on the serving path: numpy and the standard library.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from models.calibration import Calibration, SeverityScale
from models.errors import ArtifactError

__all__ = ["CARD_FILE", "MODEL_FILE", "Artifact", "Card", "Trigger", "write_atomic"]

MODEL_FILE = "model.onnx"
CARD_FILE = "card.json"
Trigger = Literal["manual", "drift", "schedule", "coldstart"]
_TRIGGERS = ("manual", "drift", "schedule", "coldstart")


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@dataclass(frozen=True, slots=True)
class Card:
    """The model card (``card.json``).

    ``detector``, ``training``, ``metrics`` and ``lineage`` are JSON objects
    kept as written; the fields the serving side computes with are typed.
    """

    name: str
    version: int
    features: tuple[str, ...]
    calibration: Calibration
    threshold: float
    severity: SeverityScale
    medians: dict[str, float]
    detector: dict[str, Any]
    training: dict[str, Any]
    metrics: dict[str, float | None]
    parity: float
    lineage: dict[str, Any] = field(default_factory=lambda: {"parent": None, "trigger": "manual"})
    created_at: str = field(
        default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    )
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        """``name@version``, as score records name the model."""
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "created_at": self.created_at,
            "features": list(self.features),
            "detector": self.detector,
            "training": self.training,
            "metrics": self.metrics,
            "calibration": self.calibration.to_dict(),
            "threshold": self.threshold,
            "severity": self.severity.to_dict(),
            "medians": self.medians,
            "parity": self.parity,
            "lineage": self.lineage,
        }
        out.update(self.extra)
        return out

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False).encode()

    def with_version(self, name: str, version: int) -> Card:
        """A copy named ``name@version`` (the registry assigns versions)."""
        d = self.to_dict()
        d["name"], d["version"] = name, version
        return Card.from_dict(d)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Card:
        """Validate and build a card; raises :class:`ArtifactError` naming the bad field."""
        known = {
            "name", "version", "created_at", "features", "detector", "training", "metrics",
            "calibration", "threshold", "severity", "medians", "parity", "lineage",
        }
        try:
            features = tuple(str(f) for f in d["features"])
            if not features:
                raise ValueError("'features' is empty")
            if len(set(features)) != len(features):
                raise ValueError("'features' has duplicate names")
            medians = {str(k): float(v) for k, v in dict(d["medians"]).items()}
            missing = [f for f in features if f not in medians]
            if missing:
                raise ValueError(f"'medians' lacks features {missing[:5]}")
            threshold = float(d["threshold"])
            if not 0.0 < threshold <= 1.0:
                raise ValueError(f"'threshold' must be in (0, 1], got {threshold}")
            severity = (
                SeverityScale.from_dict(d["severity"])
                if "severity" in d
                else SeverityScale.from_threshold(threshold)
            )
            lineage = dict(d.get("lineage") or {"parent": None, "trigger": "manual"})
            if lineage.get("trigger", "manual") not in _TRIGGERS:
                raise ValueError(f"'lineage.trigger' must be one of {_TRIGGERS}")
            return cls(
                name=str(d["name"]),
                version=int(d["version"]),
                created_at=str(d.get("created_at") or ""),
                features=features,
                detector=dict(d["detector"]),
                training=dict(d.get("training") or {}),
                metrics=dict(d.get("metrics") or {}),
                calibration=Calibration.from_dict(dict(d["calibration"])),
                threshold=threshold,
                severity=severity,
                medians=medians,
                parity=float(d.get("parity", float("nan"))),
                lineage=lineage,
                extra={k: v for k, v in d.items() if k not in known},
            )
        except KeyError as exc:
            raise ArtifactError(f"model card lacks the field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise ArtifactError(f"model card is invalid: {exc}") from None


@dataclass(frozen=True, slots=True)
class Artifact:
    """A model directory: the ONNX graph and its card."""

    path: Path
    card: Card

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Artifact:
        """Read ``card.json`` and check ``model.onnx`` exists; the graph is loaded by the core."""
        p = Path(path)
        card_path = p / CARD_FILE
        if not (p / MODEL_FILE).is_file():
            raise ArtifactError(f"no {MODEL_FILE} in model directory {str(p)!r}")
        try:
            raw = json.loads(card_path.read_text())
        except FileNotFoundError:
            raise ArtifactError(f"no {CARD_FILE} in model directory {str(p)!r}") from None
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{card_path} is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ArtifactError(f"{card_path} must hold a JSON object")
        return cls(path=p, card=Card.from_dict(raw))

    @staticmethod
    def write(path: Path, onnx_bytes: bytes, card: Card, files: dict[str, bytes] | None = None) -> Artifact:
        """Write a complete artifact directory (graph, card, any extra files)."""
        path.mkdir(parents=True, exist_ok=True)
        for fname, data in (files or {}).items():
            write_atomic(path / fname, data)
        write_atomic(path / MODEL_FILE, onnx_bytes)
        write_atomic(path / CARD_FILE, card.to_json())
        return Artifact(path=path, card=card)
