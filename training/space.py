"""The search space: preprocessing × algorithm × hyperparameters, read off the zoo.

Every detector class declares what AutoML searches (``search_space``: a mapping
of hyperparameter to :class:`~models.detector.IntRange`,
:class:`~models.detector.FloatRange` or :class:`~models.detector.Choice`) and
whether scaling matters to it (``scale_sensitive``), so a member added to
:data:`models.zoo.ALGORITHMS` is searched with no change here.  A YAML file
(``configs/search.yaml`` documents every key; ``anomstream train --space``)
can restrict the algorithms, override ranges or choices, fix values and set
the preprocessing choices.

Study parameter names are prefixed with the algorithm (``iforest.n_estimators``,
``knn.scaler``) because the space is conditional on it; ``onehot`` is shared.
The scaler is searched only for scale-sensitive detectors (the others get
``none``), and one-hot encoding only when the data have low-cardinality
columns.  Detectors taking ``random_state`` get the search seed.

Examples
--------
>>> import optuna
>>> space = SearchSpace.default(["iforest", "ecod"])
>>> trial = optuna.trial.FixedTrial({"algorithm": "iforest", "iforest.n_estimators": 150,
...     "iforest.max_samples": 1024, "iforest.max_features": 0.75})
>>> c = space.suggest(trial, n_rows=500, seed=3, onehot_available=False)
>>> c.algorithm, c.scaler, c.params["max_samples"], c.params["random_state"]
('iforest', 'none', 500, 3)
>>> space.safe_default(onehot_searched=False)["iforest.max_samples"]
'auto'
>>> SearchSpace.from_mapping({"params": {"iforest": {"n_estimators": 50}}}).params["iforest"]["n_estimators"]
Fixed(value=50)
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import optuna
import yaml

from models.detector import Choice, FloatRange, IntRange, ParamSpec
from models.preprocessing import SCALERS, Scaler
from models.zoo import ALGORITHMS
from training.errors import SpaceError

__all__ = ["SAFE_ALGORITHM", "Candidate", "Fixed", "SearchSpace", "default_candidate"]

ParamValue = int | float | str | bool | None
#: The safe default (enqueued first, preferred on ties): this algorithm at its defaults.
SAFE_ALGORITHM: Final[str] = "iforest"
#: Hyperparameters that must not exceed the rows fitted on (offset from N).
_ROW_CAPPED: Final[Mapping[str, int]] = {"max_samples": 0, "n_neighbors": -1}
#: Rough relative cost, so the portfolio runs the cheap detectors first.
_PORTFOLIO_COST: Final[Mapping[str, int]] = {
    "iforest": 0, "ecod": 1, "copod": 1, "hbos": 1, "pca": 1, "mcd": 2, "loda": 2, "knn": 3,
    "cblof": 3, "lof": 4, "ocsvm": 6, "autoencoder": 7, "vae": 8,
}
_TOP_KEYS: Final[frozenset[str]] = frozenset({"algorithms", "preprocessing", "params"})
_PRE_KEYS: Final[frozenset[str]] = frozenset({"scalers", "onehot"})


@dataclass(frozen=True, slots=True)
class Fixed:
    """A hyperparameter held at one value (not searched)."""

    value: ParamValue


Spec = ParamSpec | Fixed


def _constructor_defaults(algorithm: str) -> dict[str, Any]:
    sig = inspect.signature(ALGORITHMS[algorithm])
    return {
        k: p.default for k, p in sig.parameters.items() if p.default is not inspect.Parameter.empty
    }


@dataclass(frozen=True, slots=True)
class Candidate:
    """One point of the space: what a trial fits."""

    algorithm: str
    scaler: Scaler = "none"
    params: Mapping[str, ParamValue] = field(default_factory=dict)
    onehot: bool = False

    def to_attrs(self) -> dict[str, object]:
        """JSON-able form, stored on the Optuna trial so any worker can refit it."""
        return {
            "algorithm": self.algorithm,
            "scaler": self.scaler,
            "onehot": self.onehot,
            "params": dict(self.params),
        }

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, object]) -> Candidate:
        params = attrs.get("params")
        scaler = next((s for s in SCALERS if s == attrs.get("scaler", "none")), None)
        if scaler is None:
            raise ValueError(f"stored trial has unknown scaler {attrs.get('scaler')!r}")
        return cls(
            algorithm=str(attrs["algorithm"]),
            scaler=scaler,
            params=dict(params) if isinstance(params, Mapping) else {},
            onehot=bool(attrs.get("onehot", False)),
        )

    @property
    def is_safe_default(self) -> bool:
        """IForest at its default settings, no preprocessing (ties are broken towards it)."""
        if self.algorithm != SAFE_ALGORITHM or self.scaler != "none" or self.onehot:
            return False
        defaults = _constructor_defaults(self.algorithm)
        return all(defaults.get(k) == v for k, v in self.params.items() if k != "random_state")


def default_candidate(algorithm: str, seed: int) -> Candidate:
    """``algorithm`` at its default hyperparameters (seeded), behind its default scaler.

    Scale-sensitive detectors get ``"standard"``, as in the ADBench protocol.
    """
    seeded = "random_state" in inspect.signature(ALGORITHMS[algorithm]).parameters
    scaler: Scaler = "standard" if ALGORITHMS[algorithm].scale_sensitive else "none"
    return Candidate(algorithm, scaler, {"random_state": seed} if seeded else {})


def _admits(spec: Spec, value: object) -> bool:
    if isinstance(spec, Fixed):
        return spec.value == value
    if isinstance(spec, Choice):
        return value in spec.options
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return spec.low <= value <= spec.high


@dataclass(frozen=True, slots=True)
class SearchSpace:
    """What the search may propose.

    Parameters
    ----------
    algorithms : tuple of str
        Zoo members searched, in the zoo's order.
    params : mapping
        Per algorithm, per hyperparameter: its spec or a :class:`Fixed` value.
    scalers : tuple of str
        Scalers tried in front of scale-sensitive detectors.
    onehot : tuple of bool
        One-hot encoding choices (used only when the data have low-cardinality columns).
    """

    algorithms: tuple[str, ...]
    params: Mapping[str, Mapping[str, Spec]]
    scalers: tuple[Scaler, ...] = SCALERS
    onehot: tuple[bool, ...] = (False, True)

    @classmethod
    def default(cls, algorithms: Sequence[str] | None = None) -> SearchSpace:
        """Every zoo member (or ``algorithms``) with the ranges its class declares."""
        space = cls(
            algorithms=tuple(ALGORITHMS),
            params={a: dict(c.search_space) for a, c in ALGORITHMS.items()},
        )
        return space if algorithms is None else space.restrict(algorithms)

    def restrict(self, algorithms: Sequence[str]) -> SearchSpace:
        """Only ``algorithms`` (zoo names), in the zoo's order."""
        unknown = [a for a in algorithms if a not in ALGORITHMS]
        if unknown or not algorithms:
            raise SpaceError(
                f"unknown algorithm {unknown[0] if unknown else '(none)'!r}; "
                f"known: {', '.join(ALGORITHMS)}"
            )
        wanted = set(algorithms)
        return replace(self, algorithms=tuple(a for a in ALGORITHMS if a in wanted))

    @classmethod
    def from_yaml(cls, path: str | Path) -> SearchSpace:
        """Read a space file (see ``configs/search.yaml``); :class:`SpaceError` names the bad key."""
        p = Path(path)
        try:
            doc = yaml.safe_load(p.read_text())
        except OSError as exc:
            raise SpaceError(f"{p}: cannot be read: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise SpaceError(f"{p}: not valid YAML: {' '.join(str(exc).split())}") from None
        try:
            return cls.from_mapping(doc or {})
        except SpaceError as exc:
            raise SpaceError(f"{p}: {exc}") from None

    @classmethod
    def from_mapping(cls, doc: object) -> SearchSpace:
        """Build from a parsed YAML document (keys ``algorithms``, ``preprocessing``, ``params``)."""
        if not isinstance(doc, Mapping):
            raise SpaceError(f"expected a mapping at the top, got {type(doc).__name__}")
        extra = sorted(set(map(str, doc)) - _TOP_KEYS)
        if extra:
            raise SpaceError(f"unknown key {extra[0]!r}; expected {', '.join(sorted(_TOP_KEYS))}")
        space = cls.default()
        algos = doc.get("algorithms")
        if algos is not None:
            if not isinstance(algos, list) or not all(isinstance(a, str) for a in algos):
                raise SpaceError(f"algorithms: expected a list of names, got {algos!r}")
            space = space.restrict(algos)
        pre = doc.get("preprocessing") or {}
        if not isinstance(pre, Mapping):
            raise SpaceError(f"preprocessing: expected a mapping, got {pre!r}")
        extra = sorted(set(map(str, pre)) - _PRE_KEYS)
        if extra:
            raise SpaceError(f"preprocessing: unknown key {extra[0]!r}; expected scalers, onehot")
        if "scalers" in pre:
            scalers = pre["scalers"]
            if (
                not isinstance(scalers, list)
                or not scalers
                or any(s not in SCALERS for s in scalers)
            ):
                raise SpaceError(
                    f"preprocessing.scalers: expected a non-empty list of {', '.join(SCALERS)}, got {scalers!r}"
                )
            space = replace(space, scalers=tuple(s for s in SCALERS if s in scalers))
        if "onehot" in pre:
            onehot = pre["onehot"]
            onehot = [onehot] if isinstance(onehot, bool) else onehot
            if (
                not isinstance(onehot, list)
                or not onehot
                or any(not isinstance(v, bool) for v in onehot)
            ):
                raise SpaceError(
                    f"preprocessing.onehot: expected true, false or a list of them, got {pre['onehot']!r}"
                )
            space = replace(space, onehot=tuple(v for v in (False, True) if v in onehot))
        overrides = doc.get("params") or {}
        if not isinstance(overrides, Mapping):
            raise SpaceError(
                f"params: expected a mapping of algorithm to hyperparameters, got {overrides!r}"
            )
        params = {a: dict(s) for a, s in space.params.items()}
        for algo, specs in overrides.items():
            if algo not in ALGORITHMS:
                raise SpaceError(
                    f"params: unknown algorithm {algo!r}; known: {', '.join(ALGORITHMS)}"
                )
            if specs is None:
                continue
            if not isinstance(specs, Mapping):
                raise SpaceError(
                    f"params.{algo}: expected a mapping of hyperparameters, got {specs!r}"
                )
            accepted = set(inspect.signature(ALGORITHMS[algo]).parameters)
            for name, raw in specs.items():
                if name not in accepted:
                    raise SpaceError(
                        f"params.{algo}: unknown hyperparameter {name!r}; "
                        f"{algo} takes: {', '.join(sorted(accepted)) or 'none'}"
                    )
                params[algo][name] = _parse_spec(f"params.{algo}.{name}", raw)
        return replace(space, params=params)

    # ------------------------------------------------------------------ sampling
    def scalers_for(self, algorithm: str) -> tuple[Scaler, ...]:
        """The scalers tried for ``algorithm`` (``none`` only for scale-invariant detectors)."""
        return self.scalers if ALGORITHMS[algorithm].scale_sensitive else ("none",)

    def suggest(
        self, trial: optuna.trial.BaseTrial, *, n_rows: int, seed: int, onehot_available: bool
    ) -> Candidate:
        """Sample an algorithm, its preprocessing and its hyperparameters."""
        algorithm = str(trial.suggest_categorical("algorithm", self.algorithms))
        scalers = self.scalers_for(algorithm)
        scaler: Scaler = scalers[0]
        if len(scalers) > 1:
            chosen = trial.suggest_categorical(f"{algorithm}.scaler", scalers)
            scaler = next(s for s in scalers if s == chosen)
        choices = self.onehot if onehot_available else (False,)
        onehot = (
            choices[0] if len(choices) == 1 else bool(trial.suggest_categorical("onehot", choices))
        )
        params: dict[str, ParamValue] = {}
        for name, spec in self.params.get(algorithm, {}).items():
            params[name] = _sample(trial, f"{algorithm}.{name}", spec)
            if (
                name in _ROW_CAPPED
                and isinstance(params[name], int)
                and not isinstance(params[name], bool)
            ):
                params[name] = min(int(params[name]), n_rows + _ROW_CAPPED[name])  # type: ignore[arg-type]
        if "random_state" in inspect.signature(ALGORITHMS[algorithm]).parameters:
            params.setdefault("random_state", seed)
        return Candidate(algorithm=algorithm, scaler=scaler, params=params, onehot=onehot)

    def safe_default(self, *, onehot_searched: bool) -> dict[str, ParamValue] | None:
        """Trial parameters of IForest at its defaults, or None when the space excludes it."""
        if SAFE_ALGORITHM not in self.algorithms:
            return None
        return self.defaults_of(SAFE_ALGORITHM, onehot_searched=onehot_searched)

    def defaults_of(self, algorithm: str, *, onehot_searched: bool) -> dict[str, ParamValue] | None:
        """Trial parameters of ``algorithm`` at its defaults (standard scaling when it is
        scale-sensitive), or None when the space excludes them."""
        if algorithm not in self.algorithms:
            return None
        if onehot_searched and False not in self.onehot:
            return None
        defaults = _constructor_defaults(algorithm)
        out: dict[str, ParamValue] = {"algorithm": algorithm}
        scalers = self.scalers_for(algorithm)
        if len(scalers) > 1:
            out[f"{algorithm}.scaler"] = "standard" if "standard" in scalers else scalers[0]
        if onehot_searched and len(self.onehot) > 1:
            out["onehot"] = False
        for name, spec in self.params.get(algorithm, {}).items():
            if name == "random_state":
                continue
            if not _admits(spec, defaults.get(name)):
                return None
            if not isinstance(spec, Fixed):
                out[f"{algorithm}.{name}"] = defaults[name]
        return out

    def portfolio(self, *, onehot_searched: bool) -> list[dict[str, ParamValue]]:
        """Every algorithm at its defaults, IForest first: the first trials of a search.

        Selecting among detectors at their defaults is what the measured gain of
        a few labels rests on (``notes/label-free-selection.md``); the sampler
        then refines the hyperparameters of the promising ones.
        """
        order = sorted(self.algorithms, key=lambda a: (a != SAFE_ALGORITHM, _PORTFOLIO_COST.get(a, 5), a))
        return [d for a in order if (d := self.defaults_of(a, onehot_searched=onehot_searched)) is not None]

    def describe(self) -> dict[str, object]:
        """JSON-able summary for the card and report."""
        return {
            "algorithms": list(self.algorithms),
            "scalers": list(self.scalers),
            "onehot": list(self.onehot),
        }


def _sample(trial: optuna.trial.BaseTrial, name: str, spec: Spec) -> ParamValue:
    if isinstance(spec, Fixed):
        return spec.value
    if isinstance(spec, IntRange):
        if spec.log:
            return trial.suggest_int(name, spec.low, spec.high, log=True)
        return trial.suggest_int(name, spec.low, spec.high, step=spec.step)
    if isinstance(spec, FloatRange):
        return trial.suggest_float(name, spec.low, spec.high, log=spec.log)
    value: ParamValue = trial.suggest_categorical(name, spec.options)
    return value


def _scalar(key: str, value: object) -> ParamValue:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise SpaceError(f"{key}: expected a number, string, boolean or null, got {value!r}")


def _parse_spec(key: str, raw: object) -> Spec:
    """``{low, high[, log, step]}`` → range, ``{choices: [...]}`` or a list → choice, a scalar → fixed."""
    if isinstance(raw, list):
        raw = {"choices": raw}
    if not isinstance(raw, Mapping):
        return Fixed(_scalar(key, raw))
    keys = set(map(str, raw))
    if keys == {"choices"}:
        options = raw["choices"]
        if not isinstance(options, list) or not options:
            raise SpaceError(f"{key}: choices must be a non-empty list, got {options!r}")
        return Choice(tuple(_scalar(key, o) for o in options))
    if not {"low", "high"} <= keys or keys - {"low", "high", "log", "step"}:
        raise SpaceError(
            f"{key}: expected {{low, high[, log, step]}}, {{choices: [...]}}, a list or a value, got {dict(raw)!r}"
        )
    low, high, log, step = raw["low"], raw["high"], raw.get("log", False), raw.get("step")
    numbers = (low, high) if step is None else (low, high, step)
    if any(
        isinstance(v, bool) or not isinstance(v, int | float) for v in numbers
    ) or not isinstance(log, bool):
        raise SpaceError(
            f"{key}: low, high and step must be numbers and log a boolean, got {dict(raw)!r}"
        )
    if low > high:
        raise SpaceError(f"{key}: low must be <= high, got {low} > {high}")
    if log and low <= 0:
        raise SpaceError(f"{key}: a log range needs low > 0, got {low}")
    if all(isinstance(v, int) for v in numbers):
        if log and step not in (None, 1):
            raise SpaceError(f"{key}: a log range cannot have a step, got step {step}")
        return IntRange(int(low), int(high), log=log, step=int(step or 1))
    if step is not None:
        raise SpaceError(f"{key}: step is for integer ranges, got {dict(raw)!r}")
    return FloatRange(float(low), float(high), log=log)
