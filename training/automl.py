"""AutoML: search the zoo with Optuna, refit the winner, export and register it.

One call to :func:`train` does the whole job:

1. split the rows 70/30 (chronological when the data have a time column,
   else stratified on known labels when at least 2 anomalies are known, else
   random); trials fit on at most :data:`MAX_FIT_ROWS` training rows, the
   final model on at most :data:`MAX_FINAL_ROWS`;
2. choose the objective (:mod:`training.selection`): labels when any anomaly
   is known, else model centrality against a reference panel fitted once;
3. run an Optuna study (:mod:`training.search`: seeded TPE, median pruning of
   iterative detectors, ``jobs`` parallel threads) over the space of
   :mod:`training.space`, whose first trial is always IForest at its
   defaults, for ``trials`` trials or ``budget_s`` seconds, whichever ends
   first, but at least one trial; each trial records its fit time and its
   per-row ONNX scoring cost (:mod:`training.cost`);
4. refit the winner, calibrate it on its training scores, set the threshold
   (``1 - contamination``, or the F1-best cut on labelled validation rows),
   export it to ONNX, check parity, and register it with its card,
   ``leaderboard.csv`` and ``report.html`` (:mod:`training.report`).

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
from models.ensemble import Ensemble
from models.export import check_parity
from models.pipeline import Pipeline
from models.preprocessing import onehot_candidates
from models.reference import InputReference
from models.registry import Registry
from training.cost import score_cost_us
from training.data import Dataset
from training.errors import TrainingError
from training.report import ReportData, report_html
from training.search import (
    LEADERBOARD_COLUMNS,
    Search,
    leaderboard,
    open_study,
    pipeline,
    ranked,
    run,
)
from training.selection import (
    CV_FOLDS,
    CentralityObjective,
    LabelledObjective,
    Metric,
    Objective,
    cv_folds,
    f1_threshold,
    make_objective,
    prefer_cheaper,
    validation_metrics,
)
from training.space import Candidate, SearchSpace, default_candidate
from training.strategy import LABEL_FREE, LabelFree, label_free_candidates, labelled_ensemble

__all__ = [
    "DEFAULT_CONTAMINATION",
    "MAX_FINAL_ROWS",
    "MAX_FIT_ROWS",
    "Split",
    "TrainResult",
    "split_rows",
    "train",
]

log = logging.getLogger(__name__)

#: Training rows a trial fits on (a random subsample beyond).
MAX_FIT_ROWS: Final[int] = 20_000
#: Training rows the winner is refitted on.
MAX_FINAL_ROWS: Final[int] = 100_000
VALIDATION_FRACTION: Final[float] = 0.3
DEFAULT_CONTAMINATION: Final[float] = 0.01
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
    """Row indices (ascending): training split, rows trials fit on, rows the winner fits on, validation."""

    train: NDArray[np.intp]
    fit: NDArray[np.intp]
    final: NDArray[np.intp]
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
    final = train
    if train.size > MAX_FINAL_ROWS:
        final = np.sort(rng.choice(train, MAX_FINAL_ROWS, replace=False))
    fit = final
    if final.size > MAX_FIT_ROWS:  # trials fit on a subset of the final rows
        fit = np.sort(rng.choice(final, MAX_FIT_ROWS, replace=False))
    return Split(train=train, fit=fit, final=final, val=val, method=method)


def _study_storage(storage: str | None, registry_root: Path) -> str:
    if storage is not None:
        return storage
    registry_root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{registry_root.resolve() / 'studies.db'}"


def _panel_objective(
    algorithms: tuple[str, ...], X_fit: NDArray[np.float32], X_val: NDArray[np.float32], seed: int
) -> CentralityObjective:
    panel = []
    for algorithm in algorithms:
        pipe = pipeline(default_candidate(algorithm, seed)).fit(X_fit)
        panel.append((pipe.score_samples(X_fit), pipe.score_samples(X_val)))
    return CentralityObjective.from_panel(panel)


def train(
    dataset: Dataset,
    *,
    name: str = "default",
    algorithms: Sequence[str] | None = None,
    space: SearchSpace | None = None,
    budget_s: float = 60.0,
    trials: int | None = None,
    jobs: int = 1,
    max_score_us: float | None = None,
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
    label_free: LabelFree = "ensemble",
) -> TrainResult:
    """Search, refit, calibrate, export and register a model.

    Parameters
    ----------
    dataset : Dataset
        From :func:`training.data.load_dataset`.
    name : str
        Registry name of the model.
    algorithms : sequence of str, optional
        Zoo members to search (default: those of ``space``).
    space : SearchSpace, optional
        What to search (default: every zoo member with its declared ranges;
        :meth:`SearchSpace.from_yaml` reads ``--space`` files).
    budget_s : float
        Wall-clock budget of the search, reference panel included.
    trials : int, optional
        Stop after this many trials (of this call) even if budget is left.
    jobs : int
        Trials run in parallel (threads).  Only ``jobs=1`` is reproducible.
    max_score_us : float, optional
        Reject candidates whose ONNX scoring costs more µs per row (batch 256, 1 thread).
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
    label_free : {"ensemble", "routed", "iforest", "centrality"}
        What to do when no anomaly is labelled (:mod:`training.strategy`);
        only ``centrality`` runs a search.

    Returns
    -------
    TrainResult

    Raises
    ------
    TrainingError
        Bad arguments, or no trial completed (or none fast enough).
    models.errors.ExportError
        The winner's ONNX graph does not reproduce its scores.
    """
    space = space or SearchSpace.default()
    if algorithms is not None:
        space = space.restrict(algorithms)
    algos = space.algorithms
    if metric not in ("roc_auc", "aucpr"):
        raise TrainingError(f"metric must be 'roc_auc' or 'aucpr', got {metric!r}")
    if not budget_s > 0:
        raise TrainingError(f"budget_s must be > 0, got {budget_s}")
    if trials is not None and trials < 1:
        raise TrainingError(f"trials must be >= 1, got {trials}")
    if jobs < 1:
        raise TrainingError(f"jobs must be >= 1, got {jobs}")
    if max_score_us is not None and not max_score_us > 0:
        raise TrainingError(f"max_score_us must be > 0, got {max_score_us}")
    if contamination is not None and not 0.0 < contamination <= 0.5:
        raise TrainingError(f"contamination must be in (0, 0.5], got {contamination}")
    if label_free not in LABEL_FREE:
        raise TrainingError(f"label_free must be one of {', '.join(LABEL_FREE)}, got {label_free!r}")
    if trigger not in _TRIGGERS:
        raise TrainingError(f"trigger must be one of {', '.join(_TRIGGERS)}, got {trigger!r}")
    started = time.monotonic()
    root = Path(registry_root)
    split = split_rows(dataset, seed)
    X, y = dataset.X, dataset.y
    labelled = make_objective(None if y is None else y[split.fit], None if y is None else y[split.val], metric)
    url = _study_storage(storage, root)
    study_name = study or f"{name}-{_dt.datetime.now(_dt.UTC):%Y%m%dT%H%M%S.%fZ}"
    if labelled is None and label_free != "centrality":
        return _train_label_free(
            dataset, split, label_free, space, name=name, seed=seed, contamination=contamination,
            root=root, promote=promote, trigger=trigger, parent=parent, budget_s=budget_s,
            metric=metric, max_score_us=max_score_us, url=url, study_name=study_name,
        )  # fmt: skip

    if labelled is not None and y is not None:
        # Labelled: every row takes part, scored out of fold (k folds), so each
        # known anomaly counts; the card's metrics are out-of-fold estimates.
        pool = _pool(y, seed)
        y_pool: NDArray[np.float64] | None = y[pool]
        assert y_pool is not None
        folds = cv_folds(y_pool, CV_FOLDS, seed)
        objective: Objective = LabelledObjective(y_val=y_pool, y_fit=None, metric=metric)
        X_fit, X_eval = X[pool], X[pool]
        y_eval: NDArray[np.float64] | None = y_pool
        X_time = X_fit[: min(X_fit.shape[0], 4096)]
        final_rows = _subsample(np.arange(dataset.n_rows), MAX_FINAL_ROWS, seed)
        split_name = f"cv{CV_FOLDS}"
    else:
        folds, y_pool = None, None
        X_fit, X_eval = X[split.fit], X[split.val]
        y_eval = None if y is None else y[split.val]
        objective = _panel_objective(algos, X_fit, X_eval, seed)
        X_time = X_eval
        final_rows = split.final
        split_name = split.method
    onehot_available = bool(onehot_candidates(X_fit))
    log.info(
        "training %r: %d rows (%s, %d per trial, %d final fit), objective %s, algorithms %s",
        name, dataset.n_rows, split_name, X_fit.shape[0], final_rows.size, objective.name, ",".join(algos),
    )  # fmt: skip

    opt_study = open_study(url, study_name, seed=seed, resume=study is not None)
    before = len(opt_study.get_trials(deepcopy=False))
    warmup = 1
    if before == 0:  # a fresh study starts with every detector at its defaults
        portfolio = space.portfolio(onehot_searched=onehot_available)
        for params in portfolio:
            opt_study.enqueue_trial(params, skip_if_exists=True)
        warmup = len(portfolio)
    search = Search(
        space=space, objective=objective, X_fit=X_fit, X_val=X_time, features=dataset.features,
        seed=seed, study=opt_study, onehot_available=onehot_available, max_score_us=max_score_us,
        folds=folds, y_fit=y_pool, metric=metric,
    )  # fmt: skip
    run(opt_study, search, trials=trials, deadline=started + budget_s, jobs=jobs, progress=progress,
        warmup=warmup)
    search_s = time.monotonic() - started
    n_run = len([t for t in opt_study.get_trials(deepcopy=False)[before:]
                 if t.state != optuna.trial.TrialState.WAITING])

    order, cands = ranked(opt_study, objective)
    if not order:
        board = leaderboard(opt_study, order)
        notes = [n for n in board["note"] if n]
        raise TrainingError(
            f"no candidate could be trained on {dataset.path}: {notes[0] if notes else 'no trial finished'}"
        )
    trials_by_number = {t.number: t for t in opt_study.get_trials(deepcopy=False)}
    values = {n: float(trials_by_number[n].value or 0.0) for n in order}
    decision = ["best"]
    members: list[int] = [order[0]]
    scores_eval: NDArray[np.float64] | None = None
    if folds is not None:
        fold_vals = {n: [math.nan if v is None else v for v in trials_by_number[n].user_attrs.get("folds", [])]
                     for n in order}
        costs = {n: trials_by_number[n].user_attrs.get("score_us") for n in order}
        cheaper = prefer_cheaper(order, fold_vals, values, costs)
        if cheaper[0] != order[0]:
            decision = ["cheaper equivalent"]
        order = cheaper
        members = [order[0]]
        scores_eval = search.oof.get(order[0])
        ens = labelled_ensemble(order, cands, values, search.oof, objective)
        ens_cost = None if ens is None else sum(float(costs.get(n) or 0.0) for n in ens[0])
        if ens is not None and (max_score_us is None or (ens_cost or 0.0) <= max_score_us):
            members, _, scores_eval = ens
            decision.append(f"ensemble of {len(members)}")
    board = leaderboard(opt_study, order)
    log.info(
        "best of %d trials: %s (%s = %.4f)%s",
        n_run, cands[order[0]].algorithm, objective.name, values[order[0]],
        f"; ensemble of {[cands[n].algorithm for n in members]}" if len(members) > 1 else "",
    )  # fmt: skip
    model = _build([cands[n] for n in members]).fit(X[final_rows])
    if scores_eval is None:
        scores_eval = model.score_samples(X_eval)
    return _register(
        dataset, model, scores_eval, y_eval, X_eval, board, final_rows,
        name=name, seed=seed, contamination=contamination, root=root, promote=promote,
        trigger=trigger, parent=parent, metric=metric, max_score_us=max_score_us,
        training={
            "split": split_name, "fit_rows": int(X_fit.shape[0]), "validation_rows": int(X_eval.shape[0]),
            "budget_s": budget_s, "search_s": round(search_s, 3), "trials": n_run, "jobs": jobs,
            "selection": objective.name, "decision": decision, "study": study_name,
            "space": space.describe(),
        },
        study=opt_study, storage=url, study_name=study_name,
    )  # fmt: skip


def _pool(y: NDArray[np.float64], seed: int) -> NDArray[np.intp]:
    """Rows of a labelled search: every known anomaly, the rest subsampled to :data:`MAX_FIT_ROWS`."""
    anomalies = np.flatnonzero(y == 1.0)
    rest = np.flatnonzero(~(y == 1.0))
    keep = _subsample(rest, max(MAX_FIT_ROWS - anomalies.size, 0), seed)
    return np.sort(np.concatenate([anomalies, keep]))


def _subsample(rows: NDArray[np.intp], limit: int, seed: int) -> NDArray[np.intp]:
    if rows.size <= limit:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, limit, replace=False))


def _build(members: Sequence[Candidate]) -> Pipeline | Ensemble:
    pipes = [pipeline(c) for c in members]
    return pipes[0] if len(pipes) == 1 else Ensemble(pipes)


def _train_label_free(
    dataset: Dataset, split: Split, strategy: LabelFree, space: SearchSpace, *, name: str, seed: int,
    contamination: float | None, root: Path, promote: bool, trigger: Trigger, parent: str | None,
    budget_s: float, metric: Metric, max_score_us: float | None, url: str, study_name: str,
) -> TrainResult:
    """A fixed label-free strategy (no search): see :mod:`training.strategy`."""
    t0 = time.monotonic()
    X, y = dataset.X, dataset.y
    cands = label_free_candidates(strategy, int(split.final.size), X.shape[1], seed, space.algorithms)
    log.info("training %r: %d rows, no labels: label-free strategy %s (%s)", name, dataset.n_rows, strategy,
             ", ".join(c.algorithm for c in cands))
    model = _build(cands).fit(X[split.final])
    fit_s = time.monotonic() - t0
    pipes = model.members if isinstance(model, Ensemble) else [model]
    X_val = X[split.val]
    rows = []
    for i, (c, p) in enumerate(zip(cands, pipes, strict=True)):
        rows.append({
            "rank": i + 1, "trial": None, "algorithm": c.algorithm,
            "params": json.dumps(c.params, sort_keys=True), "scaler": c.scaler, "onehot": c.onehot,
            "value": None, "fit_s": round(fit_s / len(cands), 4),
            "score_us": round(score_cost_us(p.to_onnx(dataset.features), X_val), 3),
            "state": "COMPLETE", "note": f"label-free strategy '{strategy}'",
        })  # fmt: skip
    board = pd.DataFrame(rows, columns=list(LEADERBOARD_COLUMNS))
    board["rank"] = board["rank"].astype("Int64")
    return _register(
        dataset, model, model.score_samples(X_val), None if y is None else y[split.val], X_val, board,
        split.final, name=name, seed=seed, contamination=contamination, root=root, promote=promote,
        trigger=trigger, parent=parent, metric=metric, max_score_us=max_score_us,
        training={
            "split": split.method, "fit_rows": int(split.final.size), "validation_rows": int(split.val.size),
            "budget_s": budget_s, "search_s": round(time.monotonic() - t0, 3), "trials": 0, "jobs": 1,
            "selection": f"label_free:{strategy}", "decision": [f"{len(cands)} fixed member(s)"],
            "study": None, "space": space.describe(),
        },
        study=optuna.create_study(direction="maximize"), storage=url, study_name=study_name,
    )  # fmt: skip


def _register(
    dataset: Dataset, model: Pipeline | Ensemble, raw_eval: NDArray[np.float64],
    y_eval: NDArray[np.float64] | None, X_eval: NDArray[np.float32], board: pd.DataFrame,
    final_rows: NDArray[np.intp], *, name: str, seed: int, contamination: float | None, root: Path,
    promote: bool, trigger: Trigger, parent: str | None, metric: Metric, max_score_us: float | None,
    training: dict[str, object], study: optuna.Study, storage: str, study_name: str,
) -> TrainResult:
    """Calibrate, threshold, export, check parity, write the card and register."""
    X = dataset.X
    calibration = Calibration.fit(model.score_samples(X[final_rows]))
    # Evaluation scores come from other models (out of fold) or other rows: their
    # own ECDF gives the quantile level a threshold transfers with.
    cal_eval = Calibration.fit(raw_eval).apply(raw_eval) if training["split"] == f"cv{CV_FOLDS}" else calibration.apply(raw_eval)
    threshold_from = "contamination"
    if contamination is not None:
        threshold = 1.0 - contamination
    elif y_eval is not None and (t := f1_threshold(y_eval, cal_eval)) is not None:
        threshold, threshold_from = t, "f1"
    else:
        contamination = DEFAULT_CONTAMINATION
        threshold = 1.0 - contamination
    metrics = validation_metrics(y_eval, np.asarray(raw_eval, dtype=np.float64), cal_eval, threshold)
    onnx_bytes = model.to_onnx(dataset.features)
    parity_rows = X_eval[: min(X_eval.shape[0], 5000)]
    parity = check_parity(model, onnx_bytes, parity_rows)
    detector = model.describe()
    pipes = model.members if isinstance(model, Ensemble) else [model]
    described = [p.preprocessor.describe(dataset.features) for p in pipes]
    if isinstance(model, Ensemble):
        for member, pre in zip(detector["members"], described, strict=True):
            member["preprocessing"] = pre
    else:
        detector["preprocessing"] = described[0]
    medians = pipes[0].preprocessor.medians_
    card = Card(
        name=name,
        version=0,  # the registry assigns the version
        features=dataset.features,
        calibration=calibration,
        threshold=threshold,
        severity=SeverityScale.from_threshold(threshold),
        medians={f: float(m) for f, m in zip(dataset.features, medians, strict=True)},
        detector=detector,
        training={
            "rows": dataset.n_rows,
            "final_fit_rows": int(final_rows.size),
            "data_path": str(dataset.path),
            "data_sha256": dataset.sha256,
            "label_column": dataset.label_column,
            "time_column": dataset.time_column,
            "labels": dataset.labels.to_dict(),
            **training,
            "seed": seed,
            "metric": metric,
            "max_score_us": max_score_us,
            "score_us": _winner_cost(board),
            "contamination": contamination,
            "threshold_from": threshold_from,
        },
        metrics=metrics,
        parity=parity,
        lineage={"parent": parent, "trigger": trigger},
        extra={"reference": InputReference.fit(X[final_rows], dataset.features).to_dict()},
    )
    report = ReportData(board=board, card=card, study=study, val_scores=np.asarray(raw_eval), y_val=y_eval)
    files = {
        "leaderboard.csv": board.to_csv(index=False).encode(),
        "report.html": report_html(report).encode(),
    }
    artifact = Registry(root).register(name, onnx_bytes, card, files=files, promote=promote)
    log.info("registered %s at %s (promoted: %s)", artifact.card.ref, artifact.path, promote)
    return TrainResult(artifact=artifact, leaderboard=board, study_name=study_name, storage=storage)


def _winner_cost(board: pd.DataFrame) -> float | None:
    cost = board["score_us"].iloc[0]
    return None if pd.isna(cost) else float(cost)
