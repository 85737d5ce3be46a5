"""AutoML: search the zoo with Optuna, refit the winner, export and register it.

One call to :func:`train` does the whole job:

1. split the rows 70/30 (chronological when the data have a time column,
   else stratified on known labels when at least 2 anomalies are known, else
   random) and cap the rows a candidate is fitted on at :data:`MAX_FIT_ROWS`;
2. choose the objective (:mod:`training.selection`): labels when any anomaly
   is known, else model centrality against a reference panel fitted once;
3. run an Optuna study (TPE, seeded) whose first trial is always IForest at
   its defaults, for ``trials`` trials or ``budget_s`` seconds, whichever ends
   first, but at least one trial;
4. refit the winner, calibrate it on its training scores, set the threshold
   (``1 - contamination``, or the F1-best cut on labelled validation rows),
   export it to ONNX, check parity, and register it with its card,
   ``leaderboard.csv`` and ``report.html``.

The study lives in an Optuna storage (default: SQLite in the registry root),
so several workers can share one study by name and a stopped search resumes.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import numpy as np
import optuna
import pandas as pd
from numpy.typing import NDArray

from models.artifact import Artifact, Card, Trigger
from models.calibration import Calibration, SeverityScale
from models.errors import ModelError
from models.export import check_parity
from models.pipeline import Pipeline
from models.preprocessing import Preprocessor
from models.registry import Registry
from models.zoo import ALGORITHMS, make_detector
from training.data import Dataset
from training.errors import TrainingError
from training.report import report_html
from training.selection import (
    CentralityObjective,
    Metric,
    Objective,
    f1_threshold,
    make_objective,
    pick,
    validation_metrics,
)
from training.space import SAFE_DEFAULT, Candidate, default_candidate, suggest

__all__ = ["DEFAULT_CONTAMINATION", "MAX_FIT_ROWS", "Split", "TrainResult", "split_rows", "train"]

log = logging.getLogger(__name__)

MAX_FIT_ROWS: Final[int] = 20_000
VALIDATION_FRACTION: Final[float] = 0.3
DEFAULT_CONTAMINATION: Final[float] = 0.01
#: Stop when the sampler keeps proposing points already tried (a space of
#: parameter-free detectors is exhausted after one trial each).
MAX_REPEATS: Final[int] = 10
#: Failures of one candidate that must not end the search; each is logged and
#: recorded on the leaderboard with its reason.
CANDIDATE_ERRORS: Final[tuple[type[Exception], ...]] = (ModelError, ValueError, ArithmeticError)
_TRIGGERS: Final[tuple[str, ...]] = ("manual", "drift", "schedule", "coldstart")


@dataclass(frozen=True, slots=True)
class TrainResult:
    """What :func:`train` produced."""

    artifact: Artifact
    leaderboard: pd.DataFrame
    study_name: str
    storage: str


@dataclass(frozen=True, slots=True)
class Split:
    """Row indices (ascending) of the training split, the rows fitted on, and validation."""

    train: NDArray[np.intp]
    fit: NDArray[np.intp]
    val: NDArray[np.intp]
    method: Literal["chronological", "stratified", "random"]


def split_rows(dataset: Dataset, seed: int) -> Split:
    """Split 70/30; see the module docstring for which way."""
    n = dataset.n_rows
    n_val = min(max(1, round(VALIDATION_FRACTION * n)), n - 2)
    rng = np.random.default_rng(seed)
    y = dataset.y
    method: Literal["chronological", "stratified", "random"]
    if dataset.time_column is not None:
        train, val, method = np.arange(n - n_val), np.arange(n - n_val, n), "chronological"
    elif y is not None and int(np.sum(y == 1.0)) >= 2:
        parts = []
        for stratum in (y == 1.0, y == 0.0, np.isnan(y)):
            rows = rng.permutation(np.flatnonzero(stratum))
            k = round(VALIDATION_FRACTION * rows.size)
            if rows.size >= 2:  # both sides get at least one row of each class
                k = min(max(k, 1), rows.size - 1)
            parts.append(rows[:k])
        val = np.sort(np.concatenate(parts))
        train, method = np.setdiff1d(np.arange(n), val), "stratified"
    else:
        perm = rng.permutation(n)
        val, train, method = np.sort(perm[:n_val]), np.sort(perm[n_val:]), "random"
    fit = train
    if train.size > MAX_FIT_ROWS:
        fit = np.sort(rng.choice(train, MAX_FIT_ROWS, replace=False))
    return Split(train=train, fit=fit, val=val, method=method)


def _pipeline(c: Candidate) -> Pipeline:
    return Pipeline(
        preprocessor=Preprocessor(scaler=c.scaler), detector=make_detector(c.algorithm, **c.params)
    )


def _algorithms(algorithms: Sequence[str] | None) -> tuple[str, ...]:
    if algorithms is None:
        return tuple(ALGORITHMS)
    unknown = [a for a in algorithms if a not in ALGORITHMS]
    if unknown or not algorithms:
        raise TrainingError(
            f"unknown algorithm {unknown[0] if unknown else '(none)'!r}; "
            f"known: {', '.join(ALGORITHMS)}"
        )
    return tuple(
        a for a in ALGORITHMS if a in set(algorithms)
    )  # canonical order: stable study space


def _study_storage(storage: str | None, registry_root: Path) -> str:
    if storage is not None:
        return storage
    registry_root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{registry_root.resolve() / 'studies.db'}"


class _Search:
    """The Optuna objective: fits candidates on the fit rows, scores the validation rows."""

    def __init__(
        self,
        algorithms: tuple[str, ...],
        objective: Objective,
        X_fit: NDArray[np.float32],
        X_val: NDArray[np.float32],
        seed: int,
        study: optuna.Study,
    ) -> None:
        self.algorithms, self.objective, self.seed, self.study = algorithms, objective, seed, study
        self.X_fit, self.X_val = X_fit, X_val
        self.seen: dict[str, tuple[int, float]] = {}
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            if "candidate" in t.user_attrs and t.value is not None:
                self.seen.setdefault(
                    json.dumps(t.user_attrs["candidate"], sort_keys=True), (t.number, t.value)
                )
        self.repeats = 0

    def __call__(self, trial: optuna.Trial) -> float:
        cand = suggest(trial, self.algorithms, n_rows=self.X_fit.shape[0], seed=self.seed)
        trial.set_user_attr("candidate", cand.to_attrs())
        key = json.dumps(cand.to_attrs(), sort_keys=True)
        if key in self.seen:
            # Same point as an earlier trial: same seed, same data, same value.
            number, value = self.seen[key]
            trial.set_user_attr("repeat_of", number)
            trial.set_user_attr("fit_s", 0.0)
            self.repeats += 1
            if self.repeats >= MAX_REPEATS:
                log.info(
                    "search space exhausted after %d repeated proposals; stopping", self.repeats
                )
                self.study.stop()
            return value
        self.repeats = 0
        t0 = time.perf_counter()
        try:
            pipe = _pipeline(cand).fit(self.X_fit)
            fit_scores = (
                pipe.score_samples(self.X_fit) if self.objective.needs_fit_scores else np.empty(0)
            )
            value = self.objective(fit_scores, pipe.score_samples(self.X_val))
        except CANDIDATE_ERRORS as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            log.warning("trial %d (%s) failed: %s", trial.number, cand.algorithm, exc)
            raise
        trial.set_user_attr("fit_s", round(time.perf_counter() - t0, 4))
        self.seen[key] = (trial.number, value)
        return value


def _panel_objective(
    algorithms: tuple[str, ...], X_fit: NDArray[np.float32], X_val: NDArray[np.float32], seed: int
) -> CentralityObjective:
    panel = []
    for algorithm in algorithms:
        pipe = _pipeline(default_candidate(algorithm, seed)).fit(X_fit)
        panel.append((pipe.score_samples(X_fit), pipe.score_samples(X_val)))
    return CentralityObjective.from_panel(panel)


def _ranked(study: optuna.Study, objective: Objective) -> tuple[list[int], dict[int, Candidate]]:
    complete = [
        t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if "candidate" in t.user_attrs and t.value is not None and math.isfinite(t.value)
    ]
    cands = {t.number: Candidate.from_attrs(t.user_attrs["candidate"]) for t in complete}
    entries = [
        (
            t.number,
            float(t.value),
            cands[t.number].is_safe_default,
            cands[t.number].algorithm == "iforest",
        )
        for t in complete
        if t.value is not None
    ]
    return pick(entries, objective.tie_tolerance), cands


def leaderboard(study: optuna.Study, order: Sequence[int]) -> pd.DataFrame:
    """One row per trial of the study: best first, then unranked (failed, running) trials."""
    rank = {number: i + 1 for i, number in enumerate(order)}
    rows = []
    for t in study.get_trials(deepcopy=False):
        cand = t.user_attrs.get("candidate", {})
        rows.append(
            {
                "rank": rank.get(t.number),
                "trial": t.number,
                "algorithm": cand.get("algorithm", t.params.get("algorithm")),
                "params": json.dumps(cand.get("params", {}), sort_keys=True),
                "scaler": cand.get("scaler"),
                "value": t.value,
                "fit_s": t.user_attrs.get("fit_s"),
                "state": t.state.name,
            }
        )
    df = pd.DataFrame(
        rows, columns=["rank", "trial", "algorithm", "params", "scaler", "value", "fit_s", "state"]
    )
    df["rank"] = df["rank"].astype("Int64")
    return df.sort_values(["rank", "trial"], na_position="last", kind="stable").reset_index(
        drop=True
    )


def train(
    dataset: Dataset,
    *,
    name: str = "default",
    algorithms: Sequence[str] | None = None,
    budget_s: float = 60.0,
    trials: int | None = None,
    metric: Metric = "roc_auc",
    contamination: float | None = None,
    storage: str | None = None,
    study: str | None = None,
    seed: int = 0,
    registry_root: str | Path = "./var/models",
    promote: bool = True,
    trigger: Trigger = "manual",
    parent: str | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Search, refit, calibrate, export and register a model.

    Parameters
    ----------
    dataset : Dataset
        From :func:`training.data.load_dataset`.
    name : str
        Registry name of the model.
    algorithms : sequence of str, optional
        Zoo members to search (default: all of :data:`models.zoo.ALGORITHMS`).
    budget_s : float
        Wall-clock budget of the search, reference panel included.
    trials : int, optional
        Stop after this many trials (of this call) even if budget is left.
    metric : {"roc_auc", "aucpr"}
        Objective when labels are known.
    contamination : float, optional
        Expected anomaly fraction; the threshold is ``1 - contamination``.  Default:
        the F1-best threshold when validation rows of both classes are labelled,
        else 0.01.
    storage, study : str, optional
        Optuna storage URL (default SQLite in the registry root) and study name
        (default ``<name>-<UTC time>``); a named study is resumed or shared.
    seed : int
        Seeds the split, the sampler and the detectors.
    registry_root, promote, trigger, parent
        Where and how the result is registered.
    progress : callable, optional
        Called with ``(trial number, best value so far)`` after each trial.

    Returns
    -------
    TrainResult

    Raises
    ------
    TrainingError
        Bad arguments, or no trial completed.
    models.errors.ExportError
        The winner's ONNX graph does not reproduce its scores.
    """
    algos = _algorithms(algorithms)
    if metric not in ("roc_auc", "aucpr"):
        raise TrainingError(f"metric must be 'roc_auc' or 'aucpr', got {metric!r}")
    if not budget_s > 0:
        raise TrainingError(f"budget_s must be > 0, got {budget_s}")
    if trials is not None and trials < 1:
        raise TrainingError(f"trials must be >= 1, got {trials}")
    if contamination is not None and not 0.0 < contamination <= 0.5:
        raise TrainingError(f"contamination must be in (0, 0.5], got {contamination}")
    if trigger not in _TRIGGERS:
        raise TrainingError(f"trigger must be one of {', '.join(_TRIGGERS)}, got {trigger!r}")
    started = time.monotonic()
    root = Path(registry_root)
    split = split_rows(dataset, seed)
    X, y = dataset.X, dataset.y
    X_fit, X_val = X[split.fit], X[split.val]
    y_val = None if y is None else y[split.val]
    objective: Objective | None = make_objective(None if y is None else y[split.fit], y_val, metric)
    if objective is None:
        objective = _panel_objective(algos, X_fit, X_val, seed)
    log.info(
        "training %r: %d rows (%s split, %d fitted, %d validation), objective %s, algorithms %s",
        name,
        dataset.n_rows,
        split.method,
        split.fit.size,
        split.val.size,
        objective.name,
        ",".join(algos),
    )

    url = _study_storage(storage, root)
    study_name = study or f"{name}-{_dt.datetime.now(_dt.UTC):%Y%m%dT%H%M%S.%fZ}"
    opt_study = optuna.create_study(
        storage=url,
        study_name=study_name,
        direction="maximize",
        load_if_exists=study is not None,
        sampler=optuna.samplers.TPESampler(seed=seed),
    )
    before = len(opt_study.get_trials(deepcopy=False))
    if SAFE_DEFAULT["algorithm"] in algos and not any(
        Candidate.from_attrs(t.user_attrs["candidate"]).is_safe_default
        for t in opt_study.get_trials(deepcopy=False)
        if "candidate" in t.user_attrs
    ):
        opt_study.enqueue_trial(dict(SAFE_DEFAULT), skip_if_exists=True)
    search = _Search(algos, objective, X_fit, X_val, seed, opt_study)
    callbacks = []
    if progress is not None:

        def report(s: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
            done = s.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            progress(
                t.number,
                max((float(d.value) for d in done if d.value is not None), default=math.nan),
            )

        callbacks.append(report)
    # The first trial runs whatever the budget; the rest share what is left of it.
    opt_study.optimize(search, n_trials=1, catch=CANDIDATE_ERRORS, callbacks=callbacks)
    left = budget_s - (time.monotonic() - started)
    if (trials is None or trials > 1) and left > 0:
        opt_study.optimize(
            search,
            n_trials=None if trials is None else trials - 1,
            timeout=left,
            catch=CANDIDATE_ERRORS,
            callbacks=callbacks,
        )
    run = len(opt_study.get_trials(deepcopy=False)) - before

    order, cands = _ranked(opt_study, objective)
    board = leaderboard(opt_study, order)
    if not order:
        errors = [t.user_attrs.get("error") for t in opt_study.get_trials(deepcopy=False)]
        first = next((e for e in errors if e), "no trial finished")
        raise TrainingError(f"no candidate could be trained on {dataset.path}: {first}")
    best = cands[order[0]]
    log.info(
        "best of %d trials: %s %s (%s = %.4f)",
        run,
        best.algorithm,
        best.params,
        objective.name,
        float(board["value"].iloc[0]),
    )

    pipe = _pipeline(best).fit(X_fit)
    calibration = Calibration.fit(pipe.score_samples(X[split.train]))
    raw_val = pipe.score_samples(X_val)
    cal_val = calibration.apply(raw_val)
    threshold_from = "contamination"
    if contamination is not None:
        threshold = 1.0 - contamination
    elif y_val is not None and (t := f1_threshold(y_val, cal_val)) is not None:
        threshold, threshold_from = t, "f1"
    else:
        contamination = DEFAULT_CONTAMINATION
        threshold = 1.0 - contamination
    metrics = validation_metrics(y_val, raw_val, cal_val, threshold)
    onnx_bytes = pipe.to_onnx(dataset.features)
    parity = check_parity(pipe, onnx_bytes, X_val)

    card = Card(
        name=name,
        version=0,  # the registry assigns the version
        features=dataset.features,
        calibration=calibration,
        threshold=threshold,
        severity=SeverityScale.from_threshold(threshold),
        medians={
            f: float(m) for f, m in zip(dataset.features, pipe.preprocessor.medians_, strict=True)
        },
        detector=pipe.describe(),
        training={
            "rows": dataset.n_rows,
            "train_rows": int(split.train.size),
            "fit_rows": int(split.fit.size),
            "validation_rows": int(split.val.size),
            "split": split.method,
            "data_path": str(dataset.path),
            "data_sha256": dataset.sha256,
            "label_column": dataset.label_column,
            "time_column": dataset.time_column,
            "labels": dataset.labels.to_dict(),
            "budget_s": budget_s,
            "trials": run,
            "seed": seed,
            "metric": metric,
            "selection": objective.name,
            "study": study_name,
            "contamination": contamination,
            "threshold_from": threshold_from,
        },
        metrics=metrics,
        parity=parity,
        lineage={"parent": parent, "trigger": trigger},
    )
    files = {
        "leaderboard.csv": board.to_csv(index=False).encode(),
        "report.html": report_html(board, card).encode(),
    }
    artifact = Registry(root).register(name, onnx_bytes, card, files=files, promote=promote)
    log.info("registered %s at %s (promoted: %s)", artifact.card.ref, artifact.path, promote)
    return TrainResult(artifact=artifact, leaderboard=board, study_name=study_name, storage=url)
