"""Offline AutoML: load training data, search the detector zoo, register the winner.

Training depends on :mod:`models` (never the other way round) and is not part of
a serving install.

Typical use::

    from training import load_dataset, train
    result = train(load_dataset("events.csv", label_column="label"), budget_s=30)
    print(result.leaderboard, result.artifact.path)
"""

from __future__ import annotations

from training.automl import TrainResult, train
from training.data import ColumnProfile, Dataset, LabelCounts, load_dataset, profile
from training.errors import DataError, SpaceError, TrainingError
from training.space import SearchSpace

__all__ = [
    "ColumnProfile",
    "DataError",
    "Dataset",
    "LabelCounts",
    "SearchSpace",
    "SpaceError",
    "TrainResult",
    "TrainingError",
    "load_dataset",
    "profile",
    "train",
]
