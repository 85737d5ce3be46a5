"""AutoML end to end: search, refit, calibrate, export, register (small budgets)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from models.artifact import Artifact
from models.ensemble import Ensemble
from models.pipeline import Pipeline
from models.preprocessing import Preprocessor
from models.registry import Registry
from models.zoo import make_detector
from training.automl import TrainResult, split_rows, train
from training.data import Dataset, load_dataset
from training.errors import TrainingError
from training.search import LEADERBOARD_COLUMNS

N, D, ANOMALIES = 2000, 6, 40
ADBENCH = Path("/work/shared/data/adbench")


@pytest.fixture(scope="module")
def labelled() -> Dataset:
    rng = np.random.default_rng(42)
    cov = 0.5 * np.eye(D) + 0.5
    X = rng.multivariate_normal(np.zeros(D), cov, size=N).astype(np.float32)
    X *= np.array([1, 10, 100, 1, 0.1, 5], dtype=np.float32)  # scales differ
    y = np.zeros(N)
    idx = rng.choice(N, ANOMALIES, replace=False)
    y[idx] = 1.0
    X[idx[:, None], rng.integers(0, D, size=(ANOMALIES, 3))] += np.float32(4.0) * X.std(axis=0)[0]
    X[idx] += rng.normal(0.0, 3.0, size=(ANOMALIES, D)).astype(np.float32) * X.std(axis=0)
    X[rng.random(X.shape) < 0.01] = np.nan
    return Dataset(
        X=X,
        features=tuple(f"f{j}" for j in range(D)),
        y=y,
        sha256="0" * 64,
        path=Path("synthetic.npz"),
        label_column="label",
    )


@pytest.fixture(scope="module")
def unlabelled(labelled: Dataset) -> Dataset:
    return dataclasses.replace(labelled, y=None, label_column=None)


@pytest.fixture(scope="module")
def five_known(labelled: Dataset) -> Dataset:
    assert labelled.y is not None
    y = np.full(N, np.nan)
    y[np.flatnonzero(labelled.y == 1.0)[:5]] = 1.0
    return dataclasses.replace(labelled, y=y)


@pytest.fixture(scope="module")
def with_labels(labelled: Dataset, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    return train(labelled, label_free="centrality", trials=4, budget_s=30, registry_root=tmp_path_factory.mktemp("reg"))


@pytest.fixture(scope="module")
def without_labels(unlabelled: Dataset, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    return train(unlabelled, label_free="centrality", trials=3, budget_s=30, registry_root=tmp_path_factory.mktemp("reg"))


def test_labels_drive_selection_and_metrics(with_labels: TrainResult) -> None:
    card = with_labels.artifact.card
    assert card.training["selection"] == "labels:roc_auc"
    assert card.metrics["roc_auc"] is not None and card.metrics["roc_auc"] >= 0.9
    assert card.metrics["aucpr"] is not None and card.metrics["f1"] is not None
    assert card.training["labels"] == {
        "anomalies": ANOMALIES,
        "normals": N - ANOMALIES,
        "unknown": 0,
    }
    assert card.training["threshold_from"] == "f1" and 0.0 < card.threshold <= 1.0
    assert card.lineage == {"parent": None, "trigger": "manual"}


def test_without_labels_selection_is_label_free(without_labels: TrainResult) -> None:
    card = without_labels.artifact.card
    assert card.training["selection"] == "label_free:centrality"
    assert card.metrics == {"roc_auc": None, "aucpr": None, "f1": None}
    assert card.threshold == pytest.approx(0.99)  # default contamination 0.01


def test_safe_default_is_the_first_trial(without_labels: TrainResult) -> None:
    board = without_labels.leaderboard
    first = board[board["trial"] == 0].iloc[0]
    assert first["algorithm"] == "iforest"
    assert '"max_samples": "auto"' in first["params"] and '"n_estimators": 100' in first["params"]


def test_a_few_known_anomalies_are_used(five_known: Dataset, tmp_path: Path) -> None:
    card = train(five_known, label_free="centrality", trials=2, budget_s=30, registry_root=tmp_path).artifact.card
    assert card.training["selection"] == "labels:roc_auc"
    assert card.training["labels"] == {"anomalies": 5, "normals": 0, "unknown": N - 5}
    assert card.metrics["roc_auc"] is None  # no known normal to measure against


def test_trials_bound_and_same_seed_same_values(
    unlabelled: Dataset, without_labels: TrainResult, tmp_path: Path
) -> None:
    again = train(unlabelled, label_free="centrality", trials=3, budget_s=30, registry_root=tmp_path)
    assert len(again.leaderboard) == 3 and again.artifact.card.training["trials"] == 3
    a = without_labels.leaderboard.sort_values("trial")
    b = again.leaderboard.sort_values("trial")
    assert a["value"].tolist() == b["value"].tolist()
    assert a["params"].tolist() == b["params"].tolist()


def _rebuild(spec: dict[str, Any]) -> Pipeline:
    pre = {k: v for k, v in spec["preprocessing"].items() if k in ("scaler", "onehot")}
    return Pipeline(
        preprocessor=Preprocessor(**pre),
        detector=make_detector(spec["algorithm"], **spec["params"]),
    )


def test_registered_artifact_scores_like_the_pipeline(
    labelled: Dataset, with_labels: TrainResult
) -> None:
    art = Artifact.load(with_labels.artifact.path)
    card = art.card
    assert card.ref == "default@1" and card.features == labelled.features
    assert Registry(art.path.parent.parent).current("default") == 1
    assert card.training["split"] == "cv5"  # labelled: every row, scored out of fold
    # The refit is deterministic: rebuilding it from the card gives the same model,
    # fitted on every row (labelled training keeps no rows aside).
    spec = card.detector
    model: Pipeline | Ensemble
    if spec["algorithm"] == "ensemble":
        model = Ensemble([_rebuild(m) for m in spec["members"]])
    else:
        model = _rebuild(spec)
    model.fit(labelled.X)
    sess = ort.InferenceSession(str(art.model_path), providers=["CPUExecutionProvider"])
    (score,) = sess.run(["score"], {"features": labelled.X})
    np.testing.assert_allclose(score, model.score_samples(labelled.X), rtol=1e-5, atol=1e-5)
    assert card.parity <= 1e-4
    assert card.medians == pytest.approx(
        dict(zip(card.features, np.nanmedian(labelled.X, axis=0).tolist(), strict=True))
    )


def test_leaderboard_and_report_are_written(with_labels: TrainResult) -> None:
    path = with_labels.artifact.path
    board = pd.read_csv(path / "leaderboard.csv")
    assert list(board.columns) == list(LEADERBOARD_COLUMNS)
    assert len(board) == 4 and board["rank"].iloc[0] == 1
    done = board[board["state"] == "COMPLETE"]
    assert (done["fit_s"] > 0).all() and (done["score_us"] > 0).all()  # quality and cost
    page = (path / "report.html").read_text()
    assert "<table" in page and "<script" not in page
    for plot in (
        "quality and scoring cost",
        "optimisation history",
        "per class",
        "ROC curve",
        "precision-recall curve",
        "parameter importances",
    ):
        assert plot in page, plot
    assert page.count("<svg") >= 6


def test_contamination_sets_the_threshold(labelled: Dataset, tmp_path: Path) -> None:
    card = train(labelled, label_free="centrality", trials=1, contamination=0.05, registry_root=tmp_path).artifact.card
    assert card.threshold == 0.95
    assert card.severity.low == 0.95


def test_a_named_study_resumes(unlabelled: Dataset, tmp_path: Path) -> None:
    seen: list[int] = []
    first = train(
        unlabelled, label_free="centrality",
        trials=2,
        study="shared",
        registry_root=tmp_path,
        progress=lambda n, best: seen.append(n),
    )
    second = train(unlabelled, label_free="centrality", trials=2, study="shared", registry_root=tmp_path, promote=False)
    assert seen == [0, 1]
    assert first.storage == second.storage and first.storage.endswith("studies.db")
    assert sorted(second.leaderboard["trial"]) == [0, 1, 2, 3]
    assert second.artifact.card.ref == "default@2"
    assert Registry(tmp_path).current("default") == 1


def test_chronological_split_keeps_the_latest_rows_for_validation(unlabelled: Dataset) -> None:
    split = split_rows(dataclasses.replace(unlabelled, time_column="ts"), seed=0)
    assert split.method == "chronological"
    assert split.train.max() < split.val.min() and split.val.size == 600


def test_bad_arguments_raise(unlabelled: Dataset, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="'nope'"):
        train(unlabelled, label_free="centrality", algorithms=["nope"], registry_root=tmp_path)
    with pytest.raises(TrainingError, match="jobs"):
        train(unlabelled, label_free="centrality", jobs=0, registry_root=tmp_path)
    with pytest.raises(TrainingError, match="contamination"):
        train(unlabelled, label_free="centrality", contamination=0.9, registry_root=tmp_path)


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.filterwarnings(
    "ignore:The covariance matrix associated to your dataset is not full rank"
)
def test_cardio_with_labels(tmp_path: Path) -> None:
    path = ADBENCH / "6_cardio.npz"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    result = train(load_dataset(path), label_free="centrality", budget_s=20, trials=10, registry_root=tmp_path)
    roc_auc = result.artifact.card.metrics["roc_auc"]
    assert roc_auc is not None and roc_auc >= 0.85


def test_a_search_without_iforest_trains_what_was_asked(
    unlabelled: Dataset, tmp_path: Path
) -> None:
    res = train(unlabelled, label_free="centrality", algorithms=["ecod"], trials=1, registry_root=tmp_path, seed=0)
    assert res.artifact.card.detector["algorithm"] == "ecod"
    assert set(res.leaderboard["algorithm"]) == {"ecod"}
