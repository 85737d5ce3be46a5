from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.artifact import Artifact
from stream.core import Scorer
from training.automl import train
from training.data import Dataset
from training.selection import LabelledObjective
from training.space import default_candidate
from training.strategy import label_free_candidates, labelled_ensemble


@pytest.fixture(scope="module")
def unlabelled() -> Dataset:
    rng = np.random.default_rng(5)
    X = rng.normal(size=(1500, 6)).astype(np.float32)
    X[:15] += 6.0
    return Dataset(X=X, features=tuple(f"c{i}" for i in range(6)), y=None, sha256="0" * 64, path=Path("t.csv"))


@pytest.mark.parametrize(("strategy", "algorithms"), [
    ("ensemble", ["knn", "lof", "cblof"]),  # small, low-dimensional data
    ("routed", ["knn"]),
    ("iforest", ["iforest"]),
])
def test_label_free_strategies_build_fixed_models(unlabelled: Dataset, tmp_path: Path, strategy: str,
                                                  algorithms: list[str]) -> None:
    res = train(unlabelled, label_free=strategy, registry_root=tmp_path, seed=0)  # type: ignore[arg-type]
    card = Artifact.load(res.artifact.path).card
    assert card.training["selection"] == f"label_free:{strategy}"
    assert card.training["trials"] == 0
    assert list(res.leaderboard["algorithm"]) == algorithms
    spec = card.detector
    got = [m["algorithm"] for m in spec["members"]] if spec["algorithm"] == "ensemble" else [spec["algorithm"]]
    assert got == algorithms
    out = Scorer(res.artifact, providers="cpu").score(unlabelled.X)
    assert out.score[:15].mean() > out.score[15:].mean()  # the shifted rows stand out
    assert card.metrics == {"roc_auc": None, "aucpr": None, "f1": None}


def test_scale_sensitive_members_are_standardised() -> None:
    cands = label_free_candidates("ensemble", 1000, 40, 0, ["iforest", "ecod", "knn"])
    assert [(c.algorithm, c.scaler) for c in cands] == [("iforest", "none"), ("ecod", "none"), ("knn", "standard")]
    assert [c.algorithm for c in label_free_candidates("ensemble", 1000, 40, 0, ["iforest"])] == ["iforest"]


def test_labelled_ensemble_only_when_it_gains() -> None:
    rng = np.random.default_rng(0)
    y = np.zeros(400)
    y[:20] = 1.0
    signal = np.r_[np.ones(20), np.zeros(380)]
    # Two candidates each seeing the anomalies through independent noise: their mean is better.
    a = signal + rng.normal(scale=0.8, size=400)
    b = signal + rng.normal(scale=0.8, size=400)
    objective = LabelledObjective(y_val=y, y_fit=None)
    cands = {0: default_candidate("iforest", 0), 1: default_candidate("ecod", 0), 2: default_candidate("iforest", 1)}
    values = {0: objective(np.empty(0), a), 1: objective(np.empty(0), b), 2: objective(np.empty(0), a)}
    out = labelled_ensemble([0, 1, 2], cands, values, {0: a, 1: b, 2: a}, objective)
    assert out is not None
    members, value, scores = out
    assert scores.shape == a.shape
    assert members == [0, 1]  # the second iforest is not a distinct algorithm
    assert value > max(values.values())
    # A copy of the best adds nothing: no ensemble.
    assert labelled_ensemble([0, 2], cands, values, {0: a, 2: a}, objective) is None
