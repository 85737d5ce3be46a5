"""Search mechanics: pruning through fit_steps, cost and rejection, parallel trials, subsampling."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import optuna
import pandas as pd
import pytest
from numpy.typing import NDArray

from models.detector import Detector, FloatRange, ParamSpec
from models.onnx_graph import GraphBuilder, row_shares
from models.zoo import ALGORITHMS
from training.automl import MAX_FINAL_ROWS, MAX_FIT_ROWS, split_rows, train
from training.cost import score_cost_us
from training.data import Dataset
from training.errors import TrainingError
from training.search import Search, leaderboard, open_study, ranked
from training.selection import LabelledObjective
from training.space import SearchSpace

N, D = 1000, 4


class Toy(Detector):
    """An 'iterative' detector: the centre is learnt over 4 steps; ``sign`` < 0 makes it bad."""

    algorithm: ClassVar[str] = "toy"
    search_space: ClassVar[dict[str, ParamSpec]] = {"sign": FloatRange(-1.0, 1.0)}

    def __init__(self, *, sign: float = 1.0) -> None:
        self.sign = sign

    def get_params(self) -> dict[str, Any]:
        return {"sign": self.sign}

    def _fit(self, X: NDArray[np.float32]) -> None:  # pragma: no cover - fit_steps is used
        for _ in self._fit_steps(X):
            pass

    def _fit_steps(self, X: NDArray[np.float32]) -> Iterator[float]:
        for k in range(1, 5):
            self.center_ = X[: X.shape[0] * k // 4].mean(axis=0).astype(np.float32)
            yield k / 4

    def _score(self, X: NDArray[np.float32]) -> NDArray[np.float64]:
        dist = np.abs(X - self.center_).sum(axis=1, dtype=np.float32)
        return np.asarray(np.float32(self.sign) * dist, dtype=np.float64)

    def _contributions(self, X: NDArray[np.float32]) -> NDArray[np.float64]:
        return row_shares(np.abs(X - self.center_))

    def onnx_graph(self, g: GraphBuilder, x: str) -> tuple[str, str]:
        dist = g.node("Abs", [g.node("Sub", [x, g.initializer("center", self.center_)])])
        total = g.node("ReduceSum", [dist, g.initializer("ax", np.array([1]))], keepdims=0)
        score = g.node("Mul", [total, g.initializer("sign", np.array(self.sign, dtype=np.float32))])
        return score, g.row_shares(dist)


@pytest.fixture(scope="module")
def data() -> Dataset:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(N, D)).astype(np.float32)
    y = np.zeros(N)
    y[:30] = 1.0
    X[:30] += 4.0
    return Dataset(X=X, features=tuple(f"f{j}" for j in range(D)), y=y, sha256="0" * 64,
                   path=Path("toy.npz"), label_column="label")  # fmt: skip


def _search(data: Dataset, space: SearchSpace, study: optuna.Study, **kw: Any) -> Search:
    assert data.y is not None
    split = split_rows(data, 0)
    return Search(
        space=space, objective=LabelledObjective(y_val=data.y[split.val], y_fit=None),
        X_fit=data.X[split.fit], X_val=data.X[split.val], features=data.features, seed=0,
        study=study, onehot_available=False, **kw,
    )  # fmt: skip


def test_iterative_detectors_are_pruned(monkeypatch: pytest.MonkeyPatch, data: Dataset) -> None:
    monkeypatch.setitem(ALGORITHMS, "toy", Toy)
    study = open_study("sqlite:///:memory:", "prune", seed=0, resume=False)
    search = _search(data, SearchSpace.default(["toy"]), study)
    study.optimize(search, n_trials=16)
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.PRUNED in states
    pruned = next(t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED)
    assert pruned.intermediate_values and max(pruned.intermediate_values) < 100
    assert pruned.user_attrs["note"].startswith("pruned at")
    board = leaderboard(study, ranked(study, search.objective)[0])
    assert board.loc[board["state"] == "PRUNED", "rank"].isna().all()


def test_every_trial_records_fit_time_and_scoring_cost(data: Dataset) -> None:
    study = open_study("sqlite:///:memory:", "cost", seed=0, resume=False)
    search = _search(data, SearchSpace.default(["iforest", "ecod"]), study, max_score_us=1e-6)
    study.optimize(search, n_trials=2)
    order, _ = ranked(study, search.objective)
    board = leaderboard(study, order)
    assert order == []  # nothing is that fast: every candidate is rejected ...
    assert (board["score_us"] > 0).all() and (board["fit_s"] > 0).all()
    assert board["note"].str.startswith("rejected").all()  # ... and says why
    assert board["value"].notna().all()  # but keeps its value for the sampler


def test_too_slow_everywhere_is_an_error(data: Dataset, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="rejected"):
        train(data, label_free="centrality", algorithms=["ecod"], trials=1, max_score_us=1e-6, registry_root=tmp_path)
    ok = train(data, label_free="centrality", algorithms=["ecod"], trials=1, max_score_us=1e6, registry_root=tmp_path)
    assert (
        ok.artifact.card.training["score_us"] > 0
        and ok.artifact.card.training["max_score_us"] == 1e6
    )


def test_parallel_trials(data: Dataset, tmp_path: Path) -> None:
    res = train(data, label_free="centrality", algorithms=["iforest", "ecod"], trials=5, jobs=2, registry_root=tmp_path)
    assert len(res.leaderboard) == 5 and res.artifact.card.training["jobs"] == 2
    assert res.leaderboard["rank"].iloc[0] == 1


def test_score_cost_is_per_row(data: Dataset) -> None:
    from models.pipeline import Pipeline
    from models.preprocessing import Preprocessor
    from models.zoo import make_detector

    pipe = Pipeline(
        preprocessor=Preprocessor(), detector=make_detector("iforest", n_estimators=10)
    ).fit(data.X)
    small = score_cost_us(pipe.to_onnx(data.features), data.X)
    big = Pipeline(
        preprocessor=Preprocessor(), detector=make_detector("iforest", n_estimators=300)
    ).fit(data.X)
    assert 0 < small < score_cost_us(big.to_onnx(data.features), data.X)


def test_trials_fit_on_a_subsample_and_the_winner_on_more() -> None:
    n = MAX_FINAL_ROWS * 3 // 2 + 50_000  # training split > MAX_FINAL_ROWS
    ds = Dataset(X=np.zeros((n, 1), dtype=np.float32), features=("a",), y=None, sha256="0" * 64,
                 path=Path("big.npz"))  # fmt: skip
    split = split_rows(ds, 0)
    assert split.fit.size == MAX_FIT_ROWS and split.final.size == MAX_FINAL_ROWS
    assert np.isin(split.fit, split.final).all() and np.isin(split.final, split.train).all()
    assert not np.isin(split.final, split.val).any()


def test_onehot_is_searched_and_recorded(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.normal(size=800), rng.integers(0, 4, size=800)]).astype(np.float32)
    ds = Dataset(X=X, features=("x", "level"), y=None, sha256="0" * 64, path=Path("cat.npz"))
    space = SearchSpace.from_mapping({"preprocessing": {"onehot": True, "scalers": ["quantile"]}})
    res = train(ds, label_free="centrality", space=space, algorithms=["ecod"], trials=1, registry_root=tmp_path)
    pre = res.artifact.card.detector["preprocessing"]
    assert pre["onehot"] is True and pre["onehot_columns"] == {"level": [0.0, 1.0, 2.0, 3.0]}
    assert pre["scaler"] == "none"  # ECOD is scale-invariant
    assert res.artifact.card.parity < 1e-4
    assert bool(pd.read_csv(res.artifact.path / "leaderboard.csv")["onehot"].iloc[0]) is True


def test_the_seed_is_recorded(data: Dataset, tmp_path: Path) -> None:
    unl = dataclasses.replace(data, y=None, label_column=None)
    res = train(unl, label_free="centrality", algorithms=["iforest"], trials=2, seed=5, registry_root=tmp_path)
    assert res.artifact.card.training["seed"] == 5
