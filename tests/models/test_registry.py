from __future__ import annotations

from pathlib import Path

import pytest

from models.artifact import Artifact, Card
from models.calibration import Calibration, SeverityScale
from models.errors import ArtifactError, RegistryError
from models.registry import Registry, parse_ref


def _card() -> Card:
    return Card(
        name="x", version=0, features=("a", "b"), calibration=Calibration(raw=(0.0, 1.0), calibrated=(0.0, 1.0)),
        threshold=0.99, severity=SeverityScale.from_threshold(0.99), medians={"a": 0.0, "b": 1.0},
        detector={"algorithm": "iforest", "params": {}}, training={}, metrics={"roc_auc": None}, parity=0.0,
    )


def test_register_assigns_versions_and_promotes(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    a1 = reg.register("m", b"onnx1", _card(), files={"leaderboard.csv": b"x"})
    a2 = reg.register("m", b"onnx2", _card(), promote=False)
    assert (a1.card.ref, a2.card.ref) == ("m@1", "m@2")
    assert reg.versions("m") == [1, 2] and reg.current("m") == 1
    assert (tmp_path / "m" / "current").read_text().strip() == "1"
    assert (tmp_path / "m" / "1" / "leaderboard.csv").read_bytes() == b"x"
    assert reg.load("m").card.version == 1 and reg.load("m@2").card.version == 2
    assert Artifact.load(tmp_path / "m" / "2").card.name == "m"


def test_rollback_walks_back_the_promotion_stack(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    for _ in range(3):
        reg.register("m", b"g", _card())  # 1, 2, 3 each promoted in turn
    assert reg.current("m") == 3
    assert reg.rollback("m") == 2
    assert reg.rollback("m") == 1
    reg.promote("m", 3)
    assert reg.rollback("m") == 1  # back to what was current before promoting 3
    assert reg.rollback("m", 2) == 2


def test_errors_name_the_model_and_version(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    with pytest.raises(RegistryError, match="no model named 'm'"):
        reg.load("m")
    reg.register("m", b"g", _card())
    with pytest.raises(RegistryError, match=r"has no version 7 \(versions: \[1\]\)"):
        reg.promote("m", 7)
    with pytest.raises(RegistryError, match="no version to roll back"):
        reg.rollback("m")
    with pytest.raises(RegistryError, match="invalid model version"):
        parse_ref("m@x")


def test_card_round_trip_and_validation(tmp_path: Path) -> None:
    card = _card()
    assert Card.from_dict(card.to_dict()) == card
    bad = card.to_dict()
    del bad["features"]
    with pytest.raises(ArtifactError, match="lacks the field 'features'"):
        Card.from_dict(bad)
    bad = card.to_dict() | {"threshold": 1.5}
    with pytest.raises(ArtifactError, match="threshold"):
        Card.from_dict(bad)
