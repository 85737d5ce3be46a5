"""The hyperparameter search space, one small function per algorithm.

Each function takes an Optuna trial and returns the detector's keyword
arguments; parameter names inside the study are prefixed with the algorithm
(``iforest.n_estimators``) because the space is conditional on the algorithm.
An algorithm of the zoo without an entry here is tried at its defaults.

The scaler in front of the detector is searched only where it changes the
result: tree and per-feature-ECDF detectors are invariant to monotone
per-feature rescaling, so :data:`SCALERS` fixes ``"none"`` for them.

Examples
--------
>>> import optuna
>>> trial = optuna.trial.FixedTrial({"algorithm": "iforest", "iforest.n_estimators": 150,
...     "iforest.max_samples": 1024, "iforest.max_features": 0.75})
>>> c = suggest(trial, ("iforest", "ecod"), n_rows=500, seed=3)
>>> c.algorithm, c.scaler, c.params["max_samples"], c.params["random_state"]
('iforest', 'none', 500, 3)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, TypedDict

import optuna

from models.preprocessing import Scaler
from models.zoo import ALGORITHMS

__all__ = [
    "SAFE_DEFAULT",
    "SCALERS",
    "SPACES",
    "Candidate",
    "IForestParams",
    "default_candidate",
    "ecod_space",
    "iforest_space",
    "suggest",
]

ParamValue = int | float | str | None
SpaceFn = Callable[[optuna.Trial, int, int], Mapping[str, ParamValue]]

ALL_SCALERS: Final[tuple[Scaler, ...]] = ("none", "standard", "robust")
#: Scalers tried per algorithm; algorithms not listed get :data:`ALL_SCALERS`.
SCALERS: Final[Mapping[str, tuple[Scaler, ...]]] = {
    "iforest": ("none",),  # axis-parallel random splits: scale-invariant
    "ecod": ("none",),  # per-feature empirical CDFs: invariant to monotone rescaling
}
MAX_SAMPLES: Final[tuple[str | int, ...]] = ("auto", 64, 128, 256, 512, 1024)


class IForestParams(TypedDict):
    n_estimators: int
    max_samples: str | int
    max_features: float
    random_state: int


def iforest_space(trial: optuna.Trial, n_rows: int, seed: int) -> IForestParams:
    """Isolation Forest: trees, rows per tree (capped to the training rows), feature fraction."""
    max_samples = trial.suggest_categorical("iforest.max_samples", MAX_SAMPLES)
    if not isinstance(max_samples, str | int):
        raise TypeError(f"iforest.max_samples must be 'auto' or an int, got {max_samples!r}")
    return IForestParams(
        n_estimators=trial.suggest_int("iforest.n_estimators", 50, 300, step=25),
        max_samples=max_samples if isinstance(max_samples, str) else min(max_samples, n_rows),
        max_features=trial.suggest_float("iforest.max_features", 0.5, 1.0),
        random_state=seed,
    )


def ecod_space(trial: optuna.Trial, n_rows: int, seed: int) -> dict[str, ParamValue]:
    """ECOD has no hyperparameters."""
    return {}


SPACES: Final[Mapping[str, SpaceFn]] = {
    "iforest": iforest_space,  # type: ignore[dict-item]  # TypedDict is a Mapping at run time
    "ecod": ecod_space,
}

#: The safe default, enqueued as the first trial of every search so it is
#: always on the leaderboard: IForest with scikit-learn's default settings.
SAFE_DEFAULT: Final[Mapping[str, ParamValue]] = {
    "algorithm": "iforest",
    "iforest.n_estimators": 100,
    "iforest.max_samples": "auto",
    "iforest.max_features": 1.0,
}


@dataclass(frozen=True, slots=True)
class Candidate:
    """One point of the space: what a trial fits."""

    algorithm: str
    scaler: Scaler = "none"
    params: Mapping[str, ParamValue] = field(default_factory=dict)

    def to_attrs(self) -> dict[str, object]:
        """JSON-able form, stored on the Optuna trial so any worker can refit it."""
        return {"algorithm": self.algorithm, "scaler": self.scaler, "params": dict(self.params)}

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, object]) -> Candidate:
        params = attrs.get("params")
        scaler = next((s for s in ALL_SCALERS if s == attrs.get("scaler", "none")), None)
        if scaler is None:
            raise ValueError(f"stored trial has unknown scaler {attrs.get('scaler')!r}")
        return cls(
            algorithm=str(attrs["algorithm"]),
            scaler=scaler,
            params=dict(params) if isinstance(params, Mapping) else {},
        )

    @property
    def is_safe_default(self) -> bool:
        """IForest at its default settings (ties are broken towards it)."""
        p = self.params
        return (
            self.algorithm == "iforest"
            and p.get("n_estimators") == 100
            and p.get("max_samples") == "auto"
            and p.get("max_features") == 1.0
        )


def default_candidate(algorithm: str, seed: int) -> Candidate:
    """``algorithm`` at its default hyperparameters (seeded), behind its default scaler.

    Scale-sensitive detectors get ``"standard"``, as in the ADBench protocol.
    """
    seeded = "random_state" in inspect.signature(ALGORITHMS[algorithm]).parameters
    scaler: Scaler = SCALERS[algorithm][0] if algorithm in SCALERS else "standard"
    return Candidate(algorithm, scaler, {"random_state": seed} if seeded else {})


def suggest(trial: optuna.Trial, algorithms: Sequence[str], *, n_rows: int, seed: int) -> Candidate:
    """Sample an algorithm, its scaler and its hyperparameters."""
    algorithm = str(trial.suggest_categorical("algorithm", tuple(algorithms)))
    scalers = SCALERS.get(algorithm, ALL_SCALERS)
    scaler: Scaler = scalers[0]
    if len(scalers) > 1:
        chosen = trial.suggest_categorical(f"{algorithm}.scaler", scalers)
        scaler = next(s for s in scalers if s == chosen)
    space = SPACES.get(algorithm)
    params = dict(space(trial, n_rows, seed)) if space is not None else {}
    return Candidate(algorithm=algorithm, scaler=scaler, params=params)
