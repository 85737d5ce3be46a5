"""The inference core: one onnxruntime session plus the card's decision rules.

Every path that scores (Kafka, WebSocket, ``anomstream score``) goes through
:class:`Scorer`: the ONNX graph gives raw scores and per-feature
contributions; the card's calibration maps raw scores to [0, 1]; the threshold
decides the anomaly flag and the severity scale grades it; the top three
contributions are kept for anomalies only.  All of it is vectorised per batch:
a handful of numpy calls whatever the batch size, about 4 µs per batch at
batch 1 and about 50 ns per row at batch 4096, most of it the calibration's
binary search over its knots (2-core reference machine).

Provider choice (``inference.providers``): ``auto`` takes CUDA when
``onnxruntime.get_available_providers()`` offers it, else the CPU; ``cuda``
insists on CUDA; ``cpu`` forces the CPU.  On CUDA the session runs through an
IO binding (input copied to the device by the binding, outputs bound to host
memory so they come back as numpy); on the CPU plain ``run`` is kept: a
binding per call measured 13.4 µs against 10.2 µs at batch 1 and equal at 256
and 4096.  The CPU call goes to the C session directly, skipping
``InferenceSession.run``'s per-call input validation (1-1.5 µs).

Session options, measured with ``tests/perf/bench_core.py --session-grid``
(bare session, rows/s at batch 1 / 256 / 4096, 2-core machine otherwise idle,
2026-11-22):

* graph optimisation ``ENABLE_ALL`` vs ``BASIC`` vs off: within 6% for every
  zoo graph (e.g. IForest 246k / 240k / 228k at 256); ``ENABLE_ALL`` is kept.
* ``ORT_PARALLEL`` never helped: equal with one thread, 2-5× slower with two
  (ensemble at batch 1: 1.4k vs 6.8k).  Sequential is kept.
* Two intra-op threads: IForest 438k vs 247k at 256, ensemble 54k vs 42k,
  PCA 495k vs 403k, but the autoencoder 2.2M vs 3.9M, KNN 110k vs 129k and
  ECOD equal; batch 1 gains nothing.  In the service the second core decodes
  and produces (and runs the broker here), so ``inference.threads = 0`` means
  one thread; raise it on machines with cores to spare for tree models.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from time import perf_counter
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
        self._width = len(self.features)
        # The C session's run skips InferenceSession.run's per-call input validation
        # (1-1.5 µs, a tenth of a batch-1 call); the input was validated above.
        self._run_c = getattr(self._session, "_sess", self._session).run
        self._binding = self._session.io_binding() if self.provider == "CUDAExecutionProvider" else None
        self._no_idx = np.empty((0, self._top_k), dtype=np.intp)
        self._no_shares = np.empty((0, self._top_k), dtype=np.float32)
        self._empty = ScoredBatch(
            raw=np.empty(0, dtype=np.float32), score=np.empty(0, dtype=np.float64),
            anomaly=np.empty(0, dtype=np.bool_), severity=np.empty(0, dtype=np.int8),
            anomalous_rows=np.empty(0, dtype=np.intp), top_features=self._no_idx,
            top_shares=self._no_shares, inference_s=0.0,
        )
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
        if X.ndim != 2 or X.shape[1] != self._width:
            raise ScoringError(f"model {self.ref!r} expects {self._width} features, got shape {X.shape}")
        if not X.shape[0]:
            return self._empty
        t0 = perf_counter()
        raw, contrib = self._run(X)
        elapsed = perf_counter() - t0
        score = self.calibrate(raw)
        anomaly = score >= self.threshold
        severity = np.searchsorted(self._cuts, score, side="right").astype(np.int8)
        rows = anomaly.nonzero()[0]
        if rows.size:
            idx, shares = _top_k(contrib[rows], self._top_k)
        else:
            idx, shares = self._no_idx, self._no_shares
        return ScoredBatch(
            raw=raw, score=score, anomaly=anomaly, severity=severity, anomalous_rows=rows,
            top_features=idx, top_shares=shares, inference_s=elapsed,
        )

    def _run(self, X: NDArray[np.float32]) -> list[NDArray[np.float32]]:
        """(score, contributions) from the graph, as numpy arrays."""
        if self._binding is None:
            out: list[NDArray[np.float32]] = self._run_c(_OUTPUTS, {"features": X}, None)
            return out
        # CUDA: the input is copied to the device by the binding and the outputs are
        # bound to host memory, so they come back as numpy without a second copy call.
        io = self._binding
        io.bind_cpu_input("features", X)
        for name in _OUTPUTS:
            io.bind_output(name, "cpu")
        self._session.run_with_iobinding(io)
        outs: list[NDArray[np.float32]] = io.copy_outputs_to_cpu()
        return outs

    @staticmethod
    def severity_name(code: int) -> str:
        return SEVERITIES[code]


_OUTPUTS = ["score", "contributions"]
_SMALL_TOP_K = 128  # rows up to which one stable argsort beats argpartition + sort (measured, 32 features)


def _top_k(c: NDArray[np.float32], k: int) -> tuple[NDArray[np.intp], NDArray[np.float32]]:
    """Column indices and values of the ``k`` largest entries per row, largest first."""
    m = c.shape[0]
    r = np.arange(m)[:, None]
    if m <= _SMALL_TOP_K or c.shape[1] <= k:
        idx = np.argsort(-c, axis=1, kind="stable")[:, :k]
        return idx, c[r, idx]
    part = np.argpartition(c, -k, axis=1)[:, -k:]
    shares = c[r, part]
    order = np.argsort(-shares, axis=1, kind="stable")
    return part[r, order], shares[r, order]
