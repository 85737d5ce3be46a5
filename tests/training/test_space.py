"""The search space: read off the zoo classes, narrowed by YAML; bad files name the bad key."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import optuna
import pytest

from models.detector import Choice, FloatRange, IntRange
from models.zoo import ALGORITHMS, ECOD
from training.errors import SpaceError, TrainingError
from training.space import Candidate, Fixed, SearchSpace

REPO = Path(__file__).resolve().parents[2]


def test_default_space_is_the_whole_zoo_with_declared_ranges() -> None:
    space = SearchSpace.default()
    assert space.algorithms == tuple(ALGORITHMS)
    for name, cls in ALGORITHMS.items():
        assert dict(space.params[name]) == dict(cls.search_space)
        assert (space.scalers_for(name) == ("none",)) is (not cls.scale_sensitive)


def test_a_new_zoo_member_is_searched(monkeypatch: pytest.MonkeyPatch) -> None:
    class Toy(ECOD):
        algorithm = "toy"
        search_space: ClassVar[dict[str, IntRange]] = {"k": IntRange(1, 3)}
        scale_sensitive = True

        def __init__(self, *, k: int = 2) -> None:
            self.k = k

    monkeypatch.setitem(ALGORITHMS, "toy", Toy)
    space = SearchSpace.default()
    assert "toy" in space.algorithms
    space = space.restrict(["toy", "iforest"])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        t = study.ask()
        c = space.suggest(t, n_rows=100, seed=0, onehot_available=True)
        study.tell(t, 0.0)
        seen.add((c.algorithm, c.scaler, c.onehot))
        if c.algorithm == "toy":
            assert 1 <= int(c.params["k"]) <= 3  # type: ignore[arg-type]
    assert {s for a, s, _ in seen if a == "toy"} > {"none"}  # scalers searched for it
    assert {s for a, s, _ in seen if a == "iforest"} == {"none"}  # never for trees
    assert {o for *_, o in seen} == {False, True}


def test_yaml_restricts_overrides_and_fixes(tmp_path: Path) -> None:
    f = tmp_path / "space.yaml"
    f.write_text(
        "algorithms: [iforest, ecod]\n"
        "preprocessing: {scalers: [quantile], onehot: false}\n"
        "params:\n"
        "  iforest:\n"
        "    n_estimators: {low: 10, high: 20, step: 5}\n"
        "    max_samples: [64, 128]\n"
        "    max_features: 0.5\n"
        "    random_state: 7\n"
    )
    space = SearchSpace.from_yaml(f)
    assert space.algorithms == ("iforest", "ecod") or set(space.algorithms) == {"iforest", "ecod"}
    assert space.scalers == ("quantile",) and space.onehot == (False,)
    p = space.params["iforest"]
    assert p["n_estimators"] == IntRange(10, 20, step=5)
    assert p["max_samples"] == Choice((64, 128)) and p["max_features"] == Fixed(0.5)
    # The safe default no longer fits the space: it is not enqueued.
    assert space.safe_default(onehot_searched=False) is None
    trial = optuna.trial.FixedTrial(
        {"algorithm": "iforest", "iforest.n_estimators": 15, "iforest.max_samples": 64}
    )
    c = space.suggest(trial, n_rows=1000, seed=0, onehot_available=True)
    assert c.params == {
        "n_estimators": 15,
        "max_samples": 64,
        "max_features": 0.5,
        "random_state": 7,
    }
    assert c.onehot is False and not c.is_safe_default


def test_float_and_log_ranges_parse() -> None:
    space = SearchSpace.from_mapping(
        {"params": {"iforest": {"max_features": {"low": 0.1, "high": 1.0, "log": True}}}}
    )
    assert space.params["iforest"]["max_features"] == FloatRange(0.1, 1.0, log=True)


def test_the_shipped_file_is_valid() -> None:
    space = SearchSpace.from_yaml(REPO / "configs" / "search.yaml")
    assert space.algorithms == tuple(ALGORITHMS)
    assert space.safe_default(onehot_searched=True) == {
        "algorithm": "iforest", "onehot": False, "iforest.n_estimators": 100,
        "iforest.max_samples": "auto", "iforest.max_features": 1.0,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("bogus: 1\n", "bogus"),
        ("algorithms: [iforest, nope]\n", "nope"),
        ("params: {nope: {}}\n", "nope"),
        ("params: {iforest: {depth: 3}}\n", "depth"),
        ("params: {iforest: {n_estimators: {low: 5, high: 1}}}\n", "n_estimators"),
        ("params: {iforest: {n_estimators: {lo: 5}}}\n", "n_estimators"),
        ("preprocessing: {scalers: [minmax]}\n", "scalers"),
        ("preprocessing: {onehot: maybe}\n", "onehot"),
        ("params: [1, 2\n", "YAML"),
    ],
)
def test_bad_files_name_the_key(tmp_path: Path, text: str, named: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(SpaceError, match=named) as info:
        SearchSpace.from_yaml(f)
    assert str(f) in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, TrainingError)


def test_candidate_round_trips_through_trial_attrs() -> None:
    c = Candidate("iforest", "none", {"n_estimators": 100}, onehot=True)
    assert Candidate.from_attrs(c.to_attrs()) == c
