"""Shared by the service benchmarks: the registry they serve from (IForest trained by the real AutoML)
and the measuring processes' garbage-collector setting."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np


def train_iforest(tmp: Path, X: np.ndarray) -> Path:
    """Write ``X`` as ``tmp/train.csv`` (columns x0, x1, ...), train ``default`` on it; returns ``tmp/models``."""
    import optuna

    from training.automl import train
    from training.data import load_dataset

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    csv = tmp / "train.csv"
    np.savetxt(csv, X, delimiter=",", header=",".join(f"x{i}" for i in range(X.shape[1])), comments="", fmt="%.5g")
    root = tmp / "models"
    train(load_dataset(csv), name="default", algorithms=["iforest"], trials=1, contamination=0.01,
          registry_root=root, seed=0)
    return root


def quiet_gc() -> None:
    """Measuring processes: freeze what exists and pause the cyclic collector (their loops make no cycles).

    Measured before: full collections of 30-160 ms in the load generator and
    the collector, which showed up as p99 latency of the service.
    """
    gc.collect()
    gc.freeze()
    gc.disable()
