"""The Optuna study: one trial fits one candidate, measures its quality and its cost.

A trial samples a :class:`~training.space.Candidate`, fits its preprocessing
and detector on the (subsampled) fit rows and returns the objective of
:mod:`training.selection` on the validation rows.  Iterative detectors fit
through :meth:`~models.detector.Detector.fit_steps`: after each step short of
the end the partly trained model is scored, the value reported to Optuna at
step ``round(100 * fraction)``, and the pruner (median rule) may stop it.
A finished candidate is exported to ONNX and its scoring cost measured
(:func:`training.cost.score_cost_us`); with ``max_score_us`` a slower one is
*rejected*: it keeps its value (the sampler learns from it) but is never
ranked, and the leaderboard says why.

Every trial stores its candidate, fit time and cost as user attributes, so any
worker sharing the storage can rank and refit the study's trials.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import optuna
import pandas as pd
from numpy.typing import NDArray

from models.errors import ModelError
from models.pipeline import Pipeline
from models.preprocessing import Preprocessor
from models.zoo import make_detector
from training.cost import score_cost_us
from training.selection import Metric, Objective, fold_values, pick
from training.space import Candidate, SearchSpace

__all__ = [
    "CANDIDATE_ERRORS",
    "LEADERBOARD_COLUMNS",
    "Search",
    "best_value",
    "leaderboard",
    "open_study",
    "pipeline",
    "ranked",
    "run",
]

log = logging.getLogger(__name__)

#: Stop when the sampler keeps proposing points already tried (a space of
#: parameter-free detectors is exhausted after one trial each).
MAX_REPEATS: Final[int] = 10
#: Failures of one candidate that must not end the search; each is logged and
#: recorded on the leaderboard with its reason.
CANDIDATE_ERRORS: Final[tuple[type[Exception], ...]] = (ModelError, ValueError, ArithmeticError)
LEADERBOARD_COLUMNS: Final[tuple[str, ...]] = (
    "rank", "trial", "algorithm", "params", "scaler", "onehot",
    "value", "fit_s", "score_us", "state", "note",
)  # fmt: skip


def pipeline(c: Candidate) -> Pipeline:
    """The unfitted pipeline of a candidate."""
    return Pipeline(
        preprocessor=Preprocessor(scaler=c.scaler, onehot=c.onehot),
        detector=make_detector(c.algorithm, **c.params),
    )


def open_study(url: str, name: str, *, seed: int, resume: bool) -> optuna.Study:
    """Create (or, with ``resume``, load) a maximising study: seeded TPE, median pruner."""
    return optuna.create_study(
        storage=url,
        study_name=name,
        direction="maximize",
        load_if_exists=resume,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
    )


@dataclass
class Search:
    """The Optuna objective (thread-safe: ``--jobs`` runs it in several threads)."""

    space: SearchSpace
    objective: Objective
    X_fit: NDArray[np.float32]
    X_val: NDArray[np.float32]
    features: tuple[str, ...]
    seed: int
    study: optuna.Study
    onehot_available: bool
    max_score_us: float | None = None
    #: Labelled search: k folds over ``X_fit`` (positions) and its labels; each
    #: trial is then scored out of fold on every row and ``X_val`` only times it.
    folds: Sequence[tuple[NDArray[np.intp], NDArray[np.intp]]] | None = None
    y_fit: NDArray[np.float64] | None = None
    metric: Metric = "roc_auc"
    #: Out-of-fold scores per trial number (labelled search), for ensembles.
    oof: dict[int, NDArray[np.float64]] = field(init=False, default_factory=dict)
    _seen: dict[str, int] = field(init=False, default_factory=dict)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    _repeats: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            if "candidate" in t.user_attrs and t.value is not None:
                self._seen.setdefault(_key(t.user_attrs["candidate"]), t.number)

    def __call__(self, trial: optuna.Trial) -> float:
        fit_rows = self.X_fit.shape[0] if self.folds is None else min(len(tr) for tr, _ in self.folds)
        cand = self.space.suggest(
            trial,
            n_rows=fit_rows,
            seed=self.seed,
            onehot_available=self.onehot_available,
        )
        trial.set_user_attr("candidate", cand.to_attrs())
        repeat = self._repeat(trial, cand)
        if repeat is not None:
            return repeat
        t0 = time.perf_counter()
        if self.folds is not None:
            return self._cross_validate(trial, cand, t0)
        try:
            pipe = pipeline(cand)
            Xf = pipe.preprocessor.fit(self.X_fit).transform(self.X_fit)
            Xv = pipe.preprocessor.transform(self.X_val)
            for fraction in pipe.detector.fit_steps(Xf):
                if fraction < 1.0:
                    _report(trial, self._value(pipe, Xf, Xv), fraction, t0)
            value = self._value(pipe, Xf, Xv)
            fit_s = time.perf_counter() - t0
            cost = score_cost_us(pipe.to_onnx(self.features), self.X_val)
        except CANDIDATE_ERRORS as exc:
            trial.set_user_attr("note", f"failed: {type(exc).__name__}: {exc}")
            log.warning("trial %d (%s) failed: %s", trial.number, cand.algorithm, exc)
            raise
        return self._finish(trial, cand, value, fit_s, cost)

    def _cross_validate(self, trial: optuna.Trial, cand: Candidate, t0: float) -> float:
        """Fit the candidate on k-1 folds and score the k-th, k times; pruning on the first fold."""
        assert self.folds is not None and self.y_fit is not None
        oof = np.empty(self.X_fit.shape[0], dtype=np.float64)
        pipe = pipeline(cand)
        try:
            for f, (train_pos, test_pos) in enumerate(self.folds):
                pipe = pipeline(cand)
                Xf = pipe.preprocessor.fit(self.X_fit[train_pos]).transform(self.X_fit[train_pos])
                Xt = pipe.preprocessor.transform(self.X_fit[test_pos])
                for fraction in pipe.detector.fit_steps(Xf):
                    if f == 0 and fraction < 1.0:
                        oof[test_pos] = pipe.detector.score_samples(Xt)
                        partial = fold_values(self.metric, self.y_fit, oof, self.folds[:1])[0]
                        if math.isfinite(partial):
                            _report(trial, partial, fraction, t0)
                oof[test_pos] = pipe.detector.score_samples(Xt)
            value = float(self.objective(np.empty(0), oof))
            fit_s = time.perf_counter() - t0
            cost = score_cost_us(pipe.to_onnx(self.features), self.X_val)
        except CANDIDATE_ERRORS as exc:
            trial.set_user_attr("note", f"failed: {type(exc).__name__}: {exc}")
            log.warning("trial %d (%s) failed: %s", trial.number, cand.algorithm, exc)
            raise
        per_fold = fold_values(self.metric, self.y_fit, oof, self.folds)
        trial.set_user_attr("folds", [None if math.isnan(v) else round(v, 6) for v in per_fold])
        with self._lock:
            self.oof[trial.number] = oof
        return self._finish(trial, cand, value, fit_s, cost)

    def _finish(self, trial: optuna.Trial, cand: Candidate, value: float, fit_s: float, cost: float) -> float:
        if not math.isfinite(value):
            trial.set_user_attr("note", f"failed: objective is {value}")
            raise ArithmeticError(f"trial {trial.number} ({cand.algorithm}): objective is {value}")
        trial.set_user_attr("fit_s", round(fit_s, 4))
        trial.set_user_attr("score_us", round(cost, 3))
        if self.max_score_us is not None and cost > self.max_score_us:
            trial.set_user_attr("rejected", True)
            trial.set_user_attr("note", f"rejected: {cost:.1f} µs/row > {self.max_score_us:g}")
        with self._lock:
            self._seen.setdefault(_key(cand.to_attrs()), trial.number)
        return value

    def _value(self, pipe: Pipeline, Xf: NDArray[np.float32], Xv: NDArray[np.float32]) -> float:
        fit_scores = (
            pipe.detector.score_samples(Xf) if self.objective.needs_fit_scores else np.empty(0)
        )
        return float(self.objective(fit_scores, pipe.detector.score_samples(Xv)))

    def _repeat(self, trial: optuna.Trial, cand: Candidate) -> float | None:
        """Same point as an earlier trial (same seed, same data): reuse its value and costs."""
        with self._lock:
            number = self._seen.get(_key(cand.to_attrs()))
            if number is None:
                self._repeats = 0
                return None
            self._repeats += 1
            exhausted = self._repeats >= MAX_REPEATS
        earlier = self.study.get_trials(deepcopy=False)[number]
        if earlier.value is None:  # still running in another thread: fit it again
            return None
        trial.set_user_attr("repeat_of", number)
        trial.set_user_attr("note", f"repeat of trial {number}")
        for attr in ("fit_s", "score_us", "rejected"):
            if attr in earlier.user_attrs:
                trial.set_user_attr(attr, earlier.user_attrs[attr])
        if exhausted:
            log.info("search space exhausted after %d repeated proposals; stopping", MAX_REPEATS)
            self.study.stop()
        return float(earlier.value)


def _key(attrs: object) -> str:
    return json.dumps(attrs, sort_keys=True)


def _rankable(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if "candidate" in t.user_attrs
        and t.value is not None
        and math.isfinite(t.value)
        and not t.user_attrs.get("rejected", False)
        and "repeat_of" not in t.user_attrs  # the same point is ranked once
    ]


def best_value(study: optuna.Study) -> float:
    """Best objective among rankable (complete, not rejected) trials; NaN if none."""
    return max((float(t.value) for t in _rankable(study) if t.value is not None), default=math.nan)


def ranked(study: optuna.Study, objective: Objective) -> tuple[list[int], dict[int, Candidate]]:
    """Rankable trial numbers, best first (ties towards the safe default), and their candidates."""
    done = _rankable(study)
    cands = {t.number: Candidate.from_attrs(t.user_attrs["candidate"]) for t in done}
    entries = [
        (
            t.number,
            float(t.value),
            cands[t.number].is_safe_default,
            cands[t.number].algorithm == "iforest",
        )
        for t in done
        if t.value is not None
    ]
    return pick(entries, objective.tie_tolerance), cands


def leaderboard(study: optuna.Study, order: Sequence[int]) -> pd.DataFrame:
    """One row per trial: ranked ones first, then rejected, failed, pruned and running ones."""
    rank = {number: i + 1 for i, number in enumerate(order)}
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state == optuna.trial.TrialState.WAITING:  # enqueued, never run
            continue
        cand = t.user_attrs.get("candidate", {})
        rows.append(
            {
                "rank": rank.get(t.number),
                "trial": t.number,
                "algorithm": cand.get("algorithm", t.params.get("algorithm")),
                "params": json.dumps(cand.get("params", {}), sort_keys=True),
                "scaler": cand.get("scaler"),
                "onehot": cand.get("onehot"),
                "value": t.value,
                "fit_s": t.user_attrs.get("fit_s"),
                "score_us": t.user_attrs.get("score_us"),
                "state": t.state.name,
                "note": t.user_attrs.get("note", ""),
            }
        )
    df = pd.DataFrame(rows, columns=list(LEADERBOARD_COLUMNS))
    df["rank"] = df["rank"].astype("Int64")
    return df.sort_values(["rank", "trial"], na_position="last", kind="stable").reset_index(
        drop=True
    )


def run(
    study: optuna.Study,
    search: Search,
    *,
    trials: int | None,
    deadline: float,
    jobs: int,
    progress: Callable[[int, float], None] | None,
    warmup: int = 1,
) -> None:
    """Run the first trial whatever the budget, the enqueued ``warmup`` trials in order,
    then the rest in ``jobs`` threads until ``trials`` or the monotonic ``deadline``."""
    callbacks = []
    if progress is not None:

        def report(s: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
            progress(t.number, best_value(s))

        callbacks.append(report)
    study.optimize(search, n_trials=1, catch=CANDIDATE_ERRORS, callbacks=callbacks)
    done = 1
    rest = max(warmup - 1, 0) if trials is None else min(max(warmup - 1, 0), trials - 1)
    left = deadline - time.monotonic()
    if rest > 0 and left > 0:
        study.optimize(search, n_trials=rest, timeout=left, catch=CANDIDATE_ERRORS, callbacks=callbacks)
        done += rest
    left = deadline - time.monotonic()
    if (trials is None or trials > done) and left > 0:
        study.optimize(
            search,
            n_trials=None if trials is None else trials - done,
            timeout=left,
            n_jobs=jobs,
            catch=CANDIDATE_ERRORS,
            callbacks=callbacks,
        )


def _report(trial: optuna.Trial, value: float, fraction: float, t0: float) -> None:
    """Report an intermediate value at ``fraction`` of training; raise ``TrialPruned`` if told to."""
    trial.report(value, round(100 * fraction))
    if trial.should_prune():
        trial.set_user_attr("fit_s", round(time.perf_counter() - t0, 4))
        trial.set_user_attr("note", f"pruned at {fraction:.0%} of training")
        raise optuna.TrialPruned()
