"""The inference core: one onnxruntime session plus the card's decision rules.

Every path that scores (Kafka, WebSocket, ``anomstream score``) goes through
:class:`Scorer`: the ONNX graph gives raw scores and per-feature
contributions; the card's calibration maps raw scores to [0, 1]; the threshold
decides the anomaly flag and the severity scale grades it; the top three
contributions are kept for anomalies only.  All of it is vectorised per batch.

Provider choice (``inference.providers``): ``auto`` takes CUDA when
``onnxruntime.get_available_providers()`` offers it, else the CPU; ``cuda``
insists on CUDA; ``cpu`` forces the CPU.  ``inference.threads = 0`` means one
intra-op thread on the CPU: measured on the 2-core reference machine, one
thread was best or equal for every graph at batch sizes up to 256, and the
remaining core is better spent decoding and producing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from models.artifact import Artifact, Card
from models.calibration import SEVERITIES
from stream.errors import ScoringError

__all__ = ["TOP_K", "ScoredBatch", "Scorer", "choose_providers"]

log = logging.getLogger(__name__)
TOP_K = 3
ProviderChoice = Literal["auto", "cpu", "cuda"]


def choose_providers(choice: ProviderChoice) -> list[str]:
    """The onnxruntime provider list for ``choice`` (see module docstring)."""
    available = ort.get_available_providers()
    if choice == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if choice == "cuda":
        raise ScoringError(
            "inference.providers is 'cuda' but onnxruntime offers no CUDA provider "
            f"(available: {', '.join(available)}); install the 'gpu' extra (onnxruntime-gpu)"
        )
    return ["CPUExecutionProvider"]


@dataclass(frozen=True, slots=True)
class ScoredBatch:
    """Scores of one batch, row-aligned with its input matrix.

    ``top_features[i]``/``top_shares[i]`` hold the top contributions of row
    ``anomalous_rows[i]``.
    """

    raw: NDArray[np.float32]
    score: NDArray[np.float64]
    anomaly: NDArray[np.bool_]
    severity: NDArray[np.int8]
    anomalous_rows: NDArray[np.intp]
    top_features: NDArray[np.intp]
    top_shares: NDArray[np.float32]
    inference_s: float


class Scorer:
    """Score float32 feature matrices with a model artifact.

    Parameters
    ----------
    artifact : Artifact
        The model directory (graph + card).
    providers : {"auto", "cpu", "cuda"}
    threads : int
        Intra-op threads; 0 picks 1 on the CPU (see module docstring).
    """

    def __init__(self, artifact: Artifact, *, providers: ProviderChoice = "auto", threads: int = 0) -> None:
        self.artifact = artifact
        self.card: Card = artifact.card
        self.ref = self.card.ref
        self.features = self.card.features
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                str(artifact.model_path), sess_options=opts, providers=choose_providers(providers)
            )
        except ScoringError:
            raise
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises untyped pybind errors
            raise ScoringError(f"cannot load {artifact.model_path}: {' '.join(str(exc).split())}") from None
        self.provider = self._session.get_providers()[0]
        inputs = self._session.get_inputs()
        if [i.name for i in inputs] != ["features"]:
            raise ScoringError(f"{artifact.model_path}: expected one input 'features', got {[i.name for i in inputs]}")
        width = inputs[0].shape[1]
        if isinstance(width, int) and width != len(self.features):
            raise ScoringError(
                f"{artifact.model_path}: graph takes {width} features, the card lists {len(self.features)}"
            )
        outputs = {o.name for o in self._session.get_outputs()}
        if not {"score", "contributions"} <= outputs:
            raise ScoringError(f"{artifact.model_path}: graph must output 'score' and 'contributions', got {sorted(outputs)}")
        cal = self.card.calibration
        self._cal_x = np.asarray(cal.raw, dtype=np.float64)
        self._cal_y = np.asarray(cal.calibrated, dtype=np.float64)
        sev = self.card.severity
        self._cuts = np.array([sev.low, sev.medium, sev.high, sev.critical], dtype=np.float64)
        self.threshold = self.card.threshold
        self._top_k = min(TOP_K, len(self.features))
        self.score(np.zeros((1, len(self.features)), dtype=np.float32))  # warm-up
        log.info("model %s loaded from %s on %s", self.ref, artifact.path, self.provider)

    def calibrate(self, raw: NDArray[np.floating]) -> NDArray[np.float64]:
        """Raw scores → calibrated scores in [0, 1]."""
        if self._cal_x.size == 1:
            return np.where(np.asarray(raw, dtype=np.float64) > self._cal_x[0], 1.0, 0.0)
        out: NDArray[np.float64] = np.interp(raw, self._cal_x, self._cal_y, left=0.0, right=1.0)
        return out

    def score(self, X: NDArray[np.float32]) -> ScoredBatch:
        """Score a batch (rows in card feature order, NaN for missing)."""
        n = X.shape[0]
        if X.ndim != 2 or X.shape[1] != len(self.features):
            raise ScoringError(f"model {self.ref!r} expects {len(self.features)} features, got shape {X.shape}")
        t0 = time.perf_counter()
        if n:
            raw, contrib = self._session.run(None, {"features": X})  # outputs: score, contributions
        else:
            raw = np.empty(0, dtype=np.float32)
            contrib = np.empty((0, len(self.features)), dtype=np.float32)
        elapsed = time.perf_counter() - t0
        score = self.calibrate(raw)
        anomaly = score >= self.threshold
        severity = np.searchsorted(self._cuts, score, side="right").astype(np.int8)
        rows = np.flatnonzero(anomaly)
        k = self._top_k
        if rows.size:
            c = contrib[rows]
            idx = np.argpartition(-c, k - 1, axis=1)[:, :k] if c.shape[1] > k else np.tile(np.arange(c.shape[1]), (rows.size, 1))
            shares = np.take_along_axis(c, idx, axis=1)
            order = np.argsort(-shares, axis=1, kind="stable")
            idx = np.take_along_axis(idx, order, axis=1)
            shares = np.take_along_axis(shares, order, axis=1)
        else:
            idx = np.empty((0, k), dtype=np.intp)
            shares = np.empty((0, k), dtype=np.float32)
        return ScoredBatch(
            raw=raw, score=score, anomaly=anomaly, severity=severity, anomalous_rows=rows,
            top_features=idx, top_shares=shares, inference_s=elapsed,
        )

    @staticmethod
    def severity_name(code: int) -> str:
        return SEVERITIES[code]
