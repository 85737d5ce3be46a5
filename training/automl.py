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
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from models.artifact import Artifact, Card, Trigger
from models.calibration import Calibration, SeverityScale
from models.export import check_parity
from models.preprocessing import onehot_candidates
from models.registry import Registry
from training.data import Dataset
from training.errors import TrainingError
from training.report import ReportData, report_html
from training.search import Search, leaderboard, open_study, pipeline, ranked, run
from training.selection import (
    CentralityObjective,
    Metric,
    Objective,
    f1_threshold,
    make_objective,
    validation_metrics,
)
from training.space import Candidate, SearchSpace, default_candidate

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
    onehot_available = bool(onehot_candidates(X_fit))
    log.info(
        "training %r: %d rows (%s split, %d per trial, %d final fit, %d validation), objective %s, "
        "algorithms %s",
        name, dataset.n_rows, split.method, split.fit.size, split.final.size, split.val.size,
        objective.name, ",".join(algos),
    )  # fmt: skip

    url = _study_storage(storage, root)
    study_name = study or f"{name}-{_dt.datetime.now(_dt.UTC):%Y%m%dT%H%M%S.%fZ}"
    opt_study = open_study(url, study_name, seed=seed, resume=study is not None)
    before = len(opt_study.get_trials(deepcopy=False))
    safe = space.safe_default(onehot_searched=onehot_available)
    if safe is not None and not any(
        Candidate.from_attrs(t.user_attrs["candidate"]).is_safe_default
        for t in opt_study.get_trials(deepcopy=False)
        if "candidate" in t.user_attrs
    ):
        opt_study.enqueue_trial(safe, skip_if_exists=True)
    search = Search(
        space=space, objective=objective, X_fit=X_fit, X_val=X_val, features=dataset.features,
        seed=seed, study=opt_study, onehot_available=onehot_available, max_score_us=max_score_us,
    )  # fmt: skip
    run(opt_study, search, trials=trials, deadline=started + budget_s, jobs=jobs, progress=progress)
    search_s = time.monotonic() - started
    n_run = len(opt_study.get_trials(deepcopy=False)) - before

    order, cands = ranked(opt_study, objective)
    board = leaderboard(opt_study, order)
    if not order:
        notes = [n for n in board["note"] if n]
        raise TrainingError(
            f"no candidate could be trained on {dataset.path}: {notes[0] if notes else 'no trial finished'}"
        )
    best = cands[order[0]]
    log.info(
        "best of %d trials: %s %s (%s = %.4f)",
        n_run, best.algorithm, best.params, objective.name, float(board["value"].iloc[0]),
    )  # fmt: skip

    pipe = pipeline(best).fit(X[split.final])
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
    detector = pipe.describe()
    detector["preprocessing"] = pipe.preprocessor.describe(dataset.features)

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
        detector=detector,
        training={
            "rows": dataset.n_rows,
            "train_rows": int(split.train.size),
            "fit_rows": int(split.fit.size),
            "final_fit_rows": int(split.final.size),
            "validation_rows": int(split.val.size),
            "split": split.method,
            "data_path": str(dataset.path),
            "data_sha256": dataset.sha256,
            "label_column": dataset.label_column,
            "time_column": dataset.time_column,
            "labels": dataset.labels.to_dict(),
            "budget_s": budget_s,
            "search_s": round(search_s, 3),
            "trials": n_run,
            "jobs": jobs,
            "seed": seed,
            "metric": metric,
            "selection": objective.name,
            "study": study_name,
            "space": space.describe(),
            "max_score_us": max_score_us,
            "score_us": _winner_cost(board),
            "contamination": contamination,
            "threshold_from": threshold_from,
        },
        metrics=metrics,
        parity=parity,
        lineage={"parent": parent, "trigger": trigger},
    )
    report = ReportData(board=board, card=card, study=opt_study, val_scores=raw_val, y_val=y_val)
    files = {
        "leaderboard.csv": board.to_csv(index=False).encode(),
        "report.html": report_html(report).encode(),
    }
    artifact = Registry(root).register(name, onnx_bytes, card, files=files, promote=promote)
    log.info("registered %s at %s (promoted: %s)", artifact.card.ref, artifact.path, promote)
    return TrainResult(artifact=artifact, leaderboard=board, study_name=study_name, storage=url)


def _winner_cost(board: pd.DataFrame) -> float | None:
    cost = board["score_us"].iloc[0]
    return None if pd.isna(cost) else float(cost)
