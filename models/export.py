"""Running an exported graph with onnxruntime and checking it against the native scores."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from models.errors import ExportError
from models.pipeline import INPUT_NAME

__all__ = ["CONTRIBUTION_TOLERANCE", "ScoringModel", "check_parity", "onnx_scores"]


class ScoringModel(Protocol):
    """What export checks need: a pipeline or an ensemble of pipelines."""

    @property
    def parity_tolerance(self) -> float: ...

    def score_samples(self, X_raw: NDArray[np.floating]) -> NDArray[np.float64]: ...

    def contributions(self, X_raw: NDArray[np.floating]) -> NDArray[np.float64]: ...

CONTRIBUTION_TOLERANCE = 1e-3


def onnx_scores(
    onnx_bytes: bytes, X: NDArray[np.floating]
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Score rows ``X`` [N, D] with the graph on onnxruntime's CPU provider, one thread.

    Returns
    -------
    score : ndarray of float32, shape (N,)
    contributions : ndarray of float32, shape (N, D)
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
    score, contributions = sess.run(
        ["score", "contributions"], {INPUT_NAME: np.asarray(X, dtype=np.float32)}
    )
    return np.asarray(score), np.asarray(contributions)


def check_parity(
    pipeline: ScoringModel,
    onnx_bytes: bytes,
    X_holdout: NDArray[np.floating],
    *,
    tolerance: float | None = None,
) -> float:
    """Max abs difference of scores, ONNX vs native, on held-out raw rows.

    Parameters
    ----------
    tolerance : float, optional
        Defaults to the model's ``parity_tolerance``.

    Raises
    ------
    ExportError
        If the scores differ by more than ``tolerance``, or the contributions
        by more than :data:`CONTRIBUTION_TOLERANCE`.
    """
    detector = getattr(pipeline, "detector", pipeline)
    name = type(detector).__name__
    if tolerance is None:
        tolerance = pipeline.parity_tolerance
    score, contributions = onnx_scores(onnx_bytes, X_holdout)
    native = pipeline.score_samples(X_holdout)
    gap = np.abs(score - native)
    diff = float(np.max(gap, initial=0.0))
    # The tolerance is absolute for scores up to 1 and relative beyond: float32
    # output rounds large scores (distances, reconstruction errors) by ~6e-8 of their size.
    allowed = tolerance * np.maximum(1.0, np.abs(native))
    if not bool(np.all(gap <= allowed)):  # also catches NaN
        worst = int(np.argmax(np.where(np.isnan(gap), np.inf, gap / allowed)))
        raise ExportError(
            f"ONNX export of {name} differs from its native scores by {float(gap[worst]):.3g} "
            f"(score {float(native[worst]):.3g}), tolerance {tolerance:.3g} (relative above 1)"
        )
    c_diff = float(np.max(np.abs(contributions - pipeline.contributions(X_holdout)), initial=0.0))
    if not c_diff <= CONTRIBUTION_TOLERANCE:
        raise ExportError(
            f"ONNX export of {name} differs from its native contributions by {c_diff:.3g}, "
            f"tolerance {CONTRIBUTION_TOLERANCE:.3g}"
        )
    return diff
