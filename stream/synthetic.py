"""Synthetic multivariate data with known anomalies, for the demo and tests.

Normal rows are correlated Gaussian.  Each row is an anomaly with probability ``anomaly_rate`` (so small
batches carry anomalies too).  An anomaly pushes one or two features
6 to 9 standard deviations out, so its top contributions are known.  A drift
shifts the mean of some features by a number of standard deviations from a
chosen event on.

Examples
--------
>>> gen = SyntheticStream(n_features=4, seed=0)
>>> X, y = gen.sample(1000, anomaly_rate=0.05)
>>> X.shape, X.dtype.name, 30 < int(y.sum()) < 70
((1000, 4), 'float32', True)
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["SyntheticStream"]


class SyntheticStream:
    """A seeded generator of feature rows.

    Parameters
    ----------
    n_features : int
    seed : int
    """

    def __init__(self, *, n_features: int = 8, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.n_features = n_features
        self.features = tuple(f"f{i}" for i in range(n_features))
        a = rng.normal(size=(n_features, n_features)) / np.sqrt(n_features)
        cov = a @ a.T + 0.5 * np.eye(n_features)
        self.scale = np.sqrt(np.diag(cov))
        self.chol = np.linalg.cholesky(cov)
        self.mean = rng.uniform(-5, 5, size=n_features) * self.scale
        self.rng = np.random.default_rng(seed + 1)
        self.shift = np.zeros(n_features)

    def drift(self, features: int, sd: float) -> None:
        """Shift the mean of the first ``features`` features by ``sd`` standard deviations."""
        self.shift = np.zeros(self.n_features)
        self.shift[:features] = sd * self.scale[:features]

    def sample(self, n: int, *, anomaly_rate: float = 0.0) -> tuple[NDArray[np.float32], NDArray[np.int8]]:
        """``n`` rows and their labels (1 = injected anomaly)."""
        z = self.rng.normal(size=(n, self.n_features))
        X = self.mean + self.shift + z @ self.chol.T
        y = np.zeros(n, dtype=np.int8)
        k = int(self.rng.binomial(n, anomaly_rate)) if anomaly_rate > 0 else 0
        if k:
            rows = self.rng.choice(n, size=k, replace=False)
            y[rows] = 1
            for r in rows:
                cols = self.rng.choice(self.n_features, size=self.rng.integers(1, 3), replace=False)
                sign = self.rng.choice([-1.0, 1.0], size=cols.size)
                X[r, cols] = self.mean[cols] + sign * self.rng.uniform(6, 9, size=cols.size) * self.scale[cols]
        return X.astype(np.float32), y
