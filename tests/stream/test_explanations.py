"""Do the served explanations mean something?  One feature pushed out of range must rank first.

For every zoo detector: a standard-scaled pipeline is fitted on normal rows of
a correlated 8-d Gaussian, exported to ONNX and run by onnxruntime (the
graph the service serves).  Test rows are normal rows with one feature
(cycling over all eight) pushed 8 sd out of range, half up, half down.  These
rows are the injected anomalies: the pushed feature must have the largest
``contributions`` entry in at least 90% of them.  (Whether the model also
flags them is its detection quality, not the explanation's, and is printed:
the rate among the flagged rows, above the 99th percentile of training
scores, is printed beside it.)
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from numpy.typing import NDArray

from models.pipeline import Pipeline
from models.preprocessing import Preprocessor
from models.zoo import ALGORITHMS, make_detector

D = 8
NAMES = [f"f{i}" for i in range(D)]
FLOOR = 0.90
# Detectors measured below the floor, with their rate (see the README's "Explanations").
KNOWN_WEAK: dict[str, str] = {}


def _normal(rng: np.random.Generator, n: int) -> NDArray[np.float32]:
    cov = 0.5 * np.ones((D, D)) + 0.5 * np.eye(D)
    return rng.multivariate_normal(np.zeros(D), cov, size=n).astype(np.float32)


def _pushed(rng: np.random.Generator, n: int) -> tuple[NDArray[np.float32], NDArray[np.intp]]:
    X = _normal(rng, n)
    which = np.arange(n) % D
    sign = np.where(np.arange(n) // D % 2 == 0, 1.0, -1.0)
    X[np.arange(n), which] = (8.0 * sign).astype(np.float32)
    return X, which.astype(np.intp)


def _params(algorithm: str) -> list[object]:
    reason = KNOWN_WEAK.get(algorithm)
    return [pytest.param(algorithm, marks=pytest.mark.xfail(reason=reason, strict=True))] if reason else [algorithm]


@pytest.mark.parametrize("algorithm", [p for a in sorted(ALGORITHMS) for p in _params(a)])
def test_pushed_feature_ranks_first(algorithm: str) -> None:
    rng = np.random.default_rng(11)
    train = _normal(rng, 2000)
    pipe = Pipeline(preprocessor=Preprocessor(scaler="standard"), detector=make_detector(algorithm)).fit(train)
    sess = ort.InferenceSession(pipe.to_onnx(NAMES), providers=["CPUExecutionProvider"])
    X, pushed = _pushed(rng, 400)
    train_scores, _ = sess.run(["score", "contributions"], {"features": train})
    scores, contrib = sess.run(["score", "contributions"], {"features": X})
    flagged = scores > np.quantile(train_scores, 0.99)
    top = contrib.argmax(axis=1)
    hits = top == pushed
    rate = float(hits.mean())
    rate_flagged = float(hits[flagged].mean()) if flagged.any() else float("nan")
    print(f"\n{algorithm}: pushed feature first in {rate:.1%} of the {len(X)} pushed rows; "
          f"{int(flagged.sum())} flagged, {rate_flagged:.1%} of those")
    assert rate >= FLOOR, f"{algorithm}: pushed feature first in {rate:.1%} of the pushed rows < {FLOOR:.0%}"
