"""What a candidate costs: its per-row ONNX scoring time, measured the way the stream runs it.

The candidate's exported graph is loaded into onnxruntime on one thread (CPU)
and scores batches of :data:`BATCH_ROWS` rows; the cost is the best of a few
timed runs, in microseconds per row.  The best run, not the mean, because
the quantity of interest is the model's cost, not the machine's noise (other
trials run beside it with ``--jobs``).

Examples
--------
>>> import numpy as np
>>> from models.pipeline import Pipeline
>>> from models.preprocessing import Preprocessor
>>> from models.zoo import ECOD
>>> X = np.random.default_rng(0).normal(size=(300, 3)).astype(np.float32)
>>> pipe = Pipeline(preprocessor=Preprocessor(), detector=ECOD()).fit(X)
>>> score_cost_us(pipe.to_onnx(["a", "b", "c"]), X) > 0
True
"""

from __future__ import annotations

import time
from typing import Final

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

__all__ = ["BATCH_ROWS", "score_cost_us"]

BATCH_ROWS: Final[int] = 256
#: Timed runs (after one warm-up); stops early once this much time is spent.
REPEATS: Final[int] = 5
TIME_CAP_S: Final[float] = 0.5


def score_cost_us(onnx_bytes: bytes, X: NDArray[np.float32], *, batch: int = BATCH_ROWS) -> float:
    """Microseconds per row to score a ``batch``-row batch of ``X`` (cycled) on one CPU thread."""
    if X.ndim != 2 or X.shape[0] < 1:
        raise ValueError(f"timing needs a non-empty 2-d array of rows, got shape {X.shape}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
    rows = np.resize(np.ascontiguousarray(X, dtype=np.float32), (batch, X.shape[1]))
    feed = {sess.get_inputs()[0].name: rows}
    sess.run(None, feed)  # warm-up: allocations, first-run graph work
    best = float("inf")
    spent = 0.0
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        sess.run(None, feed)
        dt = time.perf_counter() - t0
        best = min(best, dt)
        spent += dt
        if spent > TIME_CAP_S:
            break
    return best / batch * 1e6
