"""The model registry the service benchmarks serve from: IForest trained by the real AutoML."""

from __future__ import annotations

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
