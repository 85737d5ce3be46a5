"""The inference core: one onnxruntime session plus the card's decision rules.

Every path that scores (Kafka, WebSocket, ``anomstream score``) goes through
:class:`Scorer`: the ONNX graph gives raw scores and per-feature
contributions; the card's calibration maps raw scores to [0, 1]; the threshold
decides the anomaly flag and the severity scale grades it; the top three
contributions are kept for anomalies only.  All of it is vectorised per batch:
a handful of numpy calls whatever the batch size, about 15 µs per batch at
batch 256 (calibration ~6 µs of it: ``np.interp`` on the sorted scores, see
``_SORTED_ROWS``; :class:`models.calibration.KnotLookup` from 640 rows) and a
pure-Python path at batch 1 (2-core reference machine).

Where the package was built with its extension module
(``stream/_native/grading.c``, :mod:`hatch_build`), batches of 2 rows or more
take one compiled call instead: the calibration (KnotLookup's arithmetic,
np.interp's bits at every batch size), the anomaly flag, the severity and the
alerting rows, written into arrays allocated here.  Against the numpy steps
on the same raw scores, alternating (HBOS and PCA, 2026-11-23, medians of
three runs on a noisy VM): 11-13 against 3.9-4.5 µs at 256 rows (HBOS),
2.8-4.7 against 1.0-2.1 µs at 16, 48-90 against 15-35 µs at 4,096;
``Scorer.score`` as a whole took 0.83-0.86 of the numpy path's time at 16
and 256 rows, 0.87-0.90 at 4,096.  ``native="never"`` keeps the numpy path,
as does a card with a single knot.

Provider choice (``inference.providers``): ``auto`` takes CUDA when
``onnxruntime.get_available_providers()`` offers it, else the CPU; ``cuda``
insists on CUDA; ``cpu`` forces the CPU.

On the CPU plain ``run`` is kept (a binding per call measured 13.4 µs against
10.2 µs at batch 1 and equal at 256 and 4096), called on the C session
directly, skipping ``InferenceSession.run``'s per-call input validation
(1-1.5 µs).  A single row takes a pure-Python path for calibration and
severity (bisect over the knots, the same arithmetic as ``np.interp``), which
saves the fixed cost of four numpy calls on the cheapest graphs.

Contributions are only read for alerting rows (the top three per anomaly),
so where the graph's contributions are separate work from its score
(IForest's credit forest, the neighbour detectors' per-feature distances, an
ensemble's members) the core asks the graph for the score alone and, when a
batch has anomalies, for the contributions of those rows in a second call;
which way pays is timed once at load (``contributions="auto"``).

On the CPU every graph runs with its per-column affine steps on the input
side (histogram grids' ``x * 2**p + bias``, centring ``x - c``) as
``BatchNormalization`` nodes (:func:`stream.serving_graph.fused_affine`,
bit-identical): onnxruntime broadcasts a per-column operand row by row, and
the rewrite saved 15% of HBOS's graph at 256 rows, 6-7% of PCA's and CBLOF's.

On a CPU with AVX-512F, KNN's and LOF's neighbour search (and an
ensemble's) runs compiled between two calls of the graph
(:mod:`stream.native`, batches of 24 rows or more): the distance products,
group minima and candidate selection in one pass per block of rows, where
onnxruntime's ``MatMul``, ``ReduceMin`` and two ``TopK`` wrote a 5 MB
distance matrix out and read it back, and ``TopK``'s heap mispredicted its
branches.  The rest of the graph (the exact float64 stage) is unchanged;
scores came out bit-identical in every batch tested.  ``native="never"``
keeps the graph whole.

A batch of 8 rows or more without a missing value (its minimum is not NaN)
runs a graph derived at load without the imputation nodes
(:func:`stream.serving_graph.without_imputation`): a row without NaN passes
the imputation unchanged, so scores are bit-identical, and the cheapest
graphs save 12-20% at 256 rows.  It is kept where it saves 5% at load
(``imputation="auto"``).

On CUDA the session runs through IO bindings to buffers allocated once on the
device per *shape bucket* (the batch rounded up to a power of two, padded rows
scored and dropped; rows are scored independently, so padding changes
nothing).  Fixed buffers let onnxruntime capture each bucket's kernels as a
CUDA graph on its first runs and replay it afterwards with one launch
(``enable_cuda_graph``, one ``gpu_graph_id`` per bucket).  Graphs that keep
nodes on the CPU (the tree-ensemble operator has no CUDA kernel) cannot be
captured.  Bound per call instead (input copied by the binding, outputs bound
to host memory) they lost to the core on one CPU thread of the same machine
at small batches (H100 machine, 16 cores, 2026-11-23, rows/s at batch 1 / 256:
IForest 5,700 / 87k on CUDA against 37k / 221k on the CPU, LODA 3,400 / 735k
against 41k / 1.27M, the ensemble holding IForest 695 / 54k against 6,300 /
45k: only the ensemble gained on CUDA at 256 rows), so
``providers="auto"`` scores such graphs on the CPU, decided from the graph's
operators before any CUDA state is loaded (:func:`serving_graph.cuda_capturable`);
``"cuda"`` keeps them on the GPU, bound per call.

Session options, measured with ``tests/perf/bench_core.py --session-grid``
(bare session, rows/s at batch 1 / 256 / 4096, 2-core machine otherwise idle,
2026-11-22):

* graph optimisation ``ENABLE_ALL`` vs ``BASIC`` vs off: within 6% for every
  zoo graph (e.g. IForest 246k / 240k / 228k at 256); ``ENABLE_ALL`` is kept.
* ``ORT_PARALLEL`` never helped: equal with one thread, 2-5× slower with two
  (ensemble at batch 1: 1.4k vs 6.8k).  Sequential is kept.
* Threads: every CPU session runs one intra-op thread.  ``threads`` above 1
  cuts a batch into that many parts (on multiples of 64 rows) scored side by
  side on one-thread sessions; onnxruntime lets go of the GIL while it runs.
  Two intra-op threads measured slower than one for most graphs here (core
  at 256 rows, each alone in its process, 2026-11-23: KNN 110k against 277k
  rows/s on one thread, LOF 92k against 143k, the ensemble 31k against 63k,
  MCD 2.7M against 5.5M): idle workers spin, and in a scorer with several
  sessions one session's spinning worker takes the core from the next.
  One intra-op pool of two shared by all sessions (onnxruntime's global
  thread pools) did not have that problem, but against parts it lost on the
  ensemble (1.9-2.0 against 1.4-1.7 ms at 256 rows) and OCSVM, and it
  changed the last bits of IForest's and the ensemble's scores (the trees'
  sum split across threads).  Parts gave IForest 477k against 278k at 4096
  rows, KNN 316k against 236k, COPOD 469k against 326k, the ensemble 132k
  against 91k; the hand-over to
  the second thread costs ~0.1 ms here (waking an idle core of the VM), so
  the cheap graphs never pay.  The parts must give the bits of one call
  (checked at load); whether they pay is timed on served batches, in turns
  that come back every minute (``parallel``, :class:`_Cut`): at load the
  other core may be busy with something that passes.  In the service the
  second core decodes and produces (and runs the broker here), so
  ``inference.threads = 0`` means one thread; at full load the service
  with ``threads: 2`` scored as many events as with one (IForest, 41-54k
  against 43-49k events/s, alternating runs), where two intra-op threads
  had lost (26k against 51k).
* Pieces: a batch (or part) of 512 rows or more may be scored as
  consecutive calls on 128-row pieces (``pieces``).  The neighbour and
  kernel graphs hold a row's distances to the 5,000 reference rows (20 KB
  a row), which for a whole batch overflow the core's 1 MB L2 cache; in
  pieces they stay in it.  ``Scorer.score`` in pieces against one call,
  alternating, held-out rows, 2026-11-23, at 512 / 1,024 / 4,096 rows: KNN
  0.85 / 0.90 / 0.86, LOF 0.95 / 0.90 / 0.84, OCSVM 0.86 / 0.83 / 0.80; at
  256 rows 1.06, 1.01 and 0.97; the ensemble holding KNN 1.12 / 1.12 /
  1.19, HBOS's pieces 1.7 times one call.  Timed at load on rows drawn
  around the medians, the ensemble's choice flipped from load to load, so
  the first large batches served decide: each way takes 8 of them, in
  turns.
"""

from __future__ import annotations

import gc
import logging
import weakref
from bisect import bisect_right
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache, lru_cache, partial
from itertools import pairwise
from math import isnan
from time import perf_counter
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from models.artifact import Artifact, Card
from models.calibration import SEVERITIES
from stream import serving_graph
from stream.errors import ScoringError
from stream.native import (
    ForestSplit,
    GridSplit,
    NeighbourSplit,
    PcaSplit,
    counts_available,
    forest_available,
    grading,
    grid_available,
    pca_available,
)
from stream.native import available as native_available

__all__ = ["TOP_K", "ScoredBatch", "Scorer", "choose_providers"]

# np.interp's compiled function without its Python wrapper (complex and periodic inputs): 0.8 µs a call.
try:
    from numpy._core.multiarray import interp as _interp
except ImportError:  # numpy 1.26
    from numpy.core.multiarray import interp as _interp  # type: ignore[no-redef]

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


_cuda_loaded = False


def _preload_cuda() -> None:
    """Load the CUDA and cuDNN runtimes from the nvidia pip packages, once.

    onnxruntime-gpu's ``cuda``/``cudnn`` extras install them as wheels, which the
    dynamic loader does not search; ``preload_dlls`` finds them (a no-op where
    the libraries are on the loader's path already).
    """
    global _cuda_loaded  # once per process
    if not _cuda_loaded and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    _cuda_loaded = True


@dataclass(slots=True)  # not frozen: a frozen init measured 1.0 µs per batch against 0.26 µs
class ScoredBatch:
    """Scores of one batch, row-aligned with its input matrix (treat as read-only).

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
        Threads scoring one batch; 0 picks 1.  On the CPU every session runs
        one intra-op thread and a batch of at least :attr:`parallel_rows`
        rows is cut into ``threads`` parts scored side by side (see
        ``parallel``); on CUDA, the intra-op threads of nodes left on the CPU.
    contributions : {"auto", "all", "alerting", "handover"}
        ``all`` runs the whole graph on every batch; ``alerting`` asks the
        graph for scores alone and for contributions of the alerting rows
        only, in a second call, from tensors the score call hands over where
        the graph has some (:func:`stream.serving_graph.contribution_handover`:
        KNN's and LOF's neighbours, CBLOF's squared distances) and its
        score-only graph does not run compiled, else recomputed from the
        features (never chosen by timing: see :meth:`_split_choice`);
        ``handover`` insists on the hand-over where the graph has one; ``auto`` times the ways once
        at load and splits where the score alone on 256 rows plus the
        contributions of 4 rows cost at most 95% of the whole graph on 256
        rows.  Scores, decisions and top features are the same every way
        (rows score independently of their batch, and handed-over tensors
        are the very values the second call would compute); the top shares
        agree to float32 rounding (they are normalised over batches of
        other sizes).  On CUDA the whole graph always runs.
    imputation : {"auto", "always", "skip"}
        On the CPU, a batch of at least 8 rows without NaN (its minimum is
        not NaN) can run the graph without its imputation nodes
        (:func:`stream.serving_graph.without_imputation`; bit-identical
        scores): ``skip`` does so, ``always`` never, ``auto`` where that
        saves 5% on 256 rows at load.
    max_batch : int
        On CUDA with CUDA graphs, the padded batch sizes up to this many rows
        are captured at load, so no batch of the service waits for a capture
        (0: each size on its first batch).
    parallel : {"auto", "always", "never"}
        With ``threads`` above 1 on the CPU: ``always`` cuts batches of 128
        rows or more into parts (cut on multiples of 64 rows), ``never``
        scores every batch in one call,
        ``auto`` cuts from the smallest of 128, 256, 1,024 and 4,096 rows at
        which the parts timed at most 80% of one call at load, and not at
        all where none did.  Either way the parts must give the very bits of
        one call (checked at load on rows drawn around the training medians,
        for each call on the features alone) or the batch is not cut.
    pieces : {"auto", "always", "never"}
        On the CPU, a batch (or each of its parts) of at least
        :attr:`piece_rows` (512) rows is scored as consecutive calls on
        pieces of 128 rows, whose intermediate tensors stay in the core's
        cache (the neighbour detectors' distances to 5,000 reference rows
        are 20 KB a row): ``always`` does so, ``never`` scores one call,
        ``auto`` times the first 16 such batches of each call, taking turns,
        and keeps the pieces where they took at most 95% of one call's time
        per row (:attr:`pieces_kept`).  As for parts, the pieces must give
        the very bits of one call (checked at load) or batches are not cut.
    native : {"auto", "never"}
        ``auto`` uses the compiled code where it was built: the neighbour
        search (:mod:`stream.native`) and the grading of batches (module
        docstring); ``never`` runs the graphs whole and grades in numpy.
    """

    def __init__(
        self, artifact: Artifact, *, providers: ProviderChoice = "auto", threads: int = 0,
        contributions: Literal["auto", "all", "alerting", "handover"] = "auto",
        imputation: Literal["auto", "always", "skip"] = "auto",
        max_batch: int = 0, parallel: Literal["auto", "always", "never"] = "auto",
        pieces: Literal["auto", "always", "never"] = "auto", native: Literal["auto", "never"] = "auto",
    ) -> None:
        self.artifact = artifact
        self._native = native != "never"  # each compiled path checks its own build and CPU
        self._splits: weakref.WeakSet[NeighbourSplit] = weakref.WeakSet()  # held by the run calls only
        self.card: Card = artifact.card
        self.ref = self.card.ref
        self.features = self.card.features
        self._threads = threads or 1
        chosen = choose_providers(providers)
        graph: Any = None  # the artifact's graph, read once where the load needs it
        if providers == "auto" and chosen[0] == "CUDAExecutionProvider":
            import onnx  # load time only

            graph = onnx.load(str(artifact.model_path))
            if not serving_graph.cuda_capturable(graph):
                # Known before a CUDA session is made: one would hold the CUDA context (hundreds of MiB).
                log.info("model %s: its graph cannot replay as a CUDA graph; scoring on the CPU", self.ref)
                chosen = ["CPUExecutionProvider"]
        self._cuda_graphs = chosen[0] == "CUDAExecutionProvider"
        try:
            self._session = self._open(chosen, cuda_graph=self._cuda_graphs)
        except Exception as exc:
            if not self._cuda_graphs:
                raise
            # Graphs with CPU-only nodes (the tree operator) or control flow (LODA's If), under ``cuda``
            # (``auto`` sent them to the CPU above), or another refusal.  Bound per call on CUDA such
            # graphs ran slower than the core on one CPU thread (module docstring), so ``auto`` takes
            # the CPU for them; ``cuda`` keeps the GPU.
            reason = " ".join(str(exc).split())
            self._cuda_graphs = False
            if providers == "auto":
                log.info("model %s: no CUDA graph replay (%s); scoring on the CPU", self.ref, reason)
                chosen = ["CPUExecutionProvider"]
            else:
                log.info("model %s: no CUDA graph replay (%s); binding per call", self.ref, reason)
            self._session = self._open(chosen, cuda_graph=False)
        self.provider = self._session.get_providers()[0]
        if providers == "cuda" and self.provider != "CUDAExecutionProvider":
            raise ScoringError(
                "inference.providers is 'cuda' but the CUDA provider did not load (see onnxruntime's log: "
                "the CUDA and cuDNN runtimes must match the onnxruntime-gpu build)"
            )
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
        self._lookup = cal.lookup() if len(cal.raw) > 1 else None
        sev = self.card.severity
        self._cuts = np.array([sev.low, sev.medium, sev.high, sev.critical], dtype=np.float64)
        self.threshold = self.card.threshold
        self._top_k = min(TOP_K, len(self.features))
        self._width = len(self.features)
        self._bind_session()
        self._cal_list = (tuple(float(v) for v in cal.raw), tuple(float(v) for v in cal.calibrated))
        self._cuts_list = tuple(float(v) for v in self._cuts)
        self._no_idx = np.empty((0, self._top_k), dtype=np.intp)
        self._no_shares = np.empty((0, self._top_k), dtype=np.float32)
        self._empty = ScoredBatch(
            raw=np.empty(0, dtype=np.float32), score=np.empty(0, dtype=np.float64),
            anomaly=np.empty(0, dtype=np.bool_), severity=np.empty(0, dtype=np.int8),
            anomalous_rows=np.empty(0, dtype=np.intp), top_features=self._no_idx,
            top_shares=self._no_shares, inference_s=0.0,
        )
        self._grade_alerting_only = bool(self._cuts[0] >= self.threshold)
        self._grade_c = self._compiled_grading(native)
        self._score_c: Callable[..., list[NDArray[np.float32]]] | None = None
        self._complete_c: Callable[..., list[NDArray[np.float32]]] | None = None
        self._complete_from = _COMPLETE_ROWS  # the fewest rows a batch without NaN skips the imputation from
        self._top_c: Callable[..., list[NDArray[Any]]] | None = None
        self._handover: list[str] = []  # tensors the score call hands to the alerting rows' call
        self._score_outputs = _SCORE
        self._run_c: Callable[..., list[NDArray[np.float32]]]
        if self._binding is None:
            import onnx  # load time only

            model = graph if graph is not None else onnx.load(str(artifact.model_path))
            fused = serving_graph.fused_affine(model)
            if fused is not None:  # exact, and cheaper on every batch size: no timing needed
                model = fused
                # It replaces the artifact's session, so the weights are held once.
                self._session = self._cpu_session(model, "graph with fused affine steps")
                self._bind_session()
            split = self._split(model, "graph", _c_session(self._session))
            if split is not None:
                self._run_c = split.run
            if contributions != "all":
                # onnxruntime runs every node of a graph whatever the outputs asked for, so the
                # score alone runs in a second session on the graph pruned to the score's nodes.
                score_model, smaller = serving_graph.pruned(model, ["score"])
                if contributions in ("alerting", "handover") or smaller:
                    pruned = self._session_from(score_model, "score-only graph")
                    top = self._session_from(serving_graph.top_contributions(model, self._top_k),
                                             "top-contributions graph")
                    relay = self._relay(model, score_model)
                    way = ("relay" if relay is not None else "split") if contributions == "handover" else \
                        self._split_choice(pruned, top, relay, forced=contributions == "alerting")
                    if way == "split":
                        self._score_c, self._top_c, model = pruned.run, top.run, score_model
                    elif way == "relay" and relay is not None:
                        model, relay_score, relay_top, self._handover = relay
                        self._score_c, self._top_c = relay_score.run, relay_top.run
                        self._score_outputs = ["score", *self._handover]
            if imputation != "always":
                stripped = serving_graph.without_imputation(model)
                if stripped is not None:
                    runner = self._session_from(stripped, "graph without imputation")
                    if imputation == "skip" or self._complete_pays(runner.run):
                        self._complete_c = runner.run
                        if isinstance(runner, (GridSplit, PcaSplit, ForestSplit)):
                            self._complete_from = 1  # compiled: cheaper than the imputing graph at any size
        self._piece_rows = 0
        self._pieces_kept: dict[str, bool | None] = {}  # per run call (attribute): pieces kept, None on trial
        self._cut_trials: list[tuple[_Cut, int]] = []  # wrappers whose turns start once loaded, and their trials
        if self._binding is None and pieces != "never":
            self._piece_rows = self._pieces_from(always=pieces == "always")
        self._parallel_rows = 0
        if self._binding is None and self._threads > 1 and parallel != "never":
            self._parallel_rows = self._parallel_from(always=parallel == "always")
        if self._binding is None:
            self._shrink_arenas()
        warm = np.zeros((1, len(self.features)), dtype=np.float32)
        for _ in range(3 if self._cuda_graphs else 1):  # CUDA graphs are captured after a first plain run
            self.score(warm)
        if self._cuda_graphs and max_batch > 1:
            for size in (1 << p for p in range(1, (max_batch - 1).bit_length() + 1)):
                block = np.zeros((size, self._width), dtype=np.float32)
                for _ in range(3):
                    self._run(block)
        for wrapper, trials in self._cut_trials:  # the served batches decide, not the load's probe rows
            wrapper.take_turns(trials)
        log.info(
            "model %s loaded from %s on %s%s", self.ref, artifact.path, self.provider,
            " with CUDA graphs" if self._cuda_graphs else "",
        )

    def _compiled_grading(self, native: str) -> Callable[..., int] | None:
        """``run`` of a :class:`stream._native._grading.Grader` on the card's knots and cuts, or None.

        None with ``native="never"``, without the extension or with a single knot; also where the
        extension refuses the table (cuts that are not four ascending numbers: ``np.searchsorted``
        needs them sorted, and the numpy path keeps its results for such a card).
        """
        lk = self._lookup
        if native == "never" or grading is None or lk is None:
            return None
        try:
            grader = grading.Grader(
                lk.base_x, lk.base_y, lk.slope, lk.next_knot, lk.start, lk.inv, lk.k, lk.first, lk.last,
                lk.right, fix_right=lk.fix_right, threshold=float(self.threshold), cuts=self._cuts,
                alerting_only=self._grade_alerting_only,
            )
        except ValueError as exc:
            log.info("model %s: scores graded in numpy (%s)", self.ref, exc)
            return None
        return grader.run

    def _cpu_session(self, model: Any, what: str) -> ort.InferenceSession:
        """A CPU session on an in-memory graph."""
        try:
            return ort.InferenceSession(
                model.SerializeToString(), sess_options=self._session_options(), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises untyped pybind errors
            raise ScoringError(f"model {self.ref!r}: {what}: {' '.join(str(exc).split())}") from None

    def _session_from(self, model: Any, what: str) -> Any:
        """A CPU session on an in-memory graph, the C one (no per-call input validation).

        Graphs with a neighbour search run it compiled where it can
        (:mod:`stream.native`).
        """
        whole = _c_session(self._cpu_session(model, what))
        split = self._split(model, what, whole)
        return whole if split is None else split

    def _split(self, model: Any, what: str, whole: Any) -> NeighbourSplit | GridSplit | PcaSplit | ForestSplit | None:
        """``model`` as head, compiled neighbour searches and tail, or compiled grid lookup and tail, or None.

        (:mod:`stream.native`.)  The grid lookup is taken for graphs that read
        no NaN only (the graph without imputation).
        """
        if not self._native:
            return None

        def session(part: Any) -> Any:
            return _c_session(self._cpu_session(part, what))

        searches, counting = native_available(), counts_available()
        cut = serving_graph.neighbour_cut(model, searches=searches, counts=counting) if searches or counting else None
        if cut is None:
            grid = serving_graph.grid_cut(model) if grid_available() and not serving_graph.imputes(model) else None
            if grid is not None:
                split_grid = GridSplit(grid, session)
                total = serving_graph.grid_tail_total(grid)
                if total is not None and self._agrees(lambda X: split_grid.tail_agrees(X, total), gaps=False):
                    split_grid.total = total
                log.debug("model %s: %s runs its step-grid lookup compiled%s", self.ref, what,
                          " and the rest too" if split_grid.total is not None else "")
                return split_grid
            pca = serving_graph.pca_cut(model) if pca_available() else None
            forest = serving_graph.forest_cut(model) if pca is None and forest_available() else None
            compiled: PcaSplit | ForestSplit
            if pca is not None:
                compiled, kind, imputing = PcaSplit(pca, whole), "PCA", pca.medians is not None
            elif forest is not None:
                compiled, kind, imputing = ForestSplit(forest, whole), "forest", forest.medians is not None
            else:
                return None
            if not self._agrees(compiled.agrees, gaps=imputing):
                log.info("model %s: %s: the compiled %s score differs from this onnxruntime's: the graph runs",
                         self.ref, what, kind)
                return None
            log.debug("model %s: %s runs compiled", self.ref, what)
            return compiled
        if cut.searches and cut.counts:
            # batches a search does not take (fewer than MIN_ROWS rows, a NaN or an infinity) still count compiled
            small = serving_graph.neighbour_cut(model, searches=False, counts=True)
            if small is not None:
                whole = NeighbourSplit(small, session, whole)
        split = NeighbourSplit(cut, session, whole)
        if cut.searches:
            self._splits.add(split)
        log.debug("model %s: %s runs %d neighbour search(es) and %d ECDF count(s) compiled", self.ref, what,
                  len(cut.searches), len(cut.counts))
        return split

    def _agrees(self, check: Callable[[NDArray[np.float32]], bool], *, gaps: bool) -> bool:
        """Whether ``check`` holds on rows around the training medians at three scales.

        The rows hold a few infinite or huge values (how infinities propagate)
        and, with ``gaps``, NaN (the imputation too).
        """
        rows = self._rows_around_medians(_CHECK_ROWS)
        for scale in (1.0, 1e-3, 1e3):
            X = rows * np.float32(scale)
            X[1::50, 0], X[2::50, -1], X[3::50, 0] = np.inf, -np.inf, 3e38
            if gaps:
                X[::5, ::3] = np.nan
            if not check(X):
                return False
        return True

    @property
    def native_searches(self) -> int:
        """How many of the graphs the core runs search their neighbours compiled (:mod:`stream.native`)."""
        gc.collect()  # the load's discarded sessions (other contributions ways) may sit in reference cycles
        return len(self._splits)

    def _race(self, *trials: Callable[[], object]) -> list[float]:
        """Seconds per call of each trial: the best of interleaved rounds (load-time decisions).

        The trials take turns, each called once untimed (a fresh session
        plans its memory on its first calls) and then once timed per round,
        so a slow spell of a shared machine falls on all of them alike.
        Timed one after the other with a best of five, LOF's choices flipped
        from load to load.
        """
        best = [float("inf")] * len(trials)
        try:
            for _ in range(_RACE_ROUNDS):
                for i, trial in enumerate(trials):
                    trial()
                    t0 = perf_counter()
                    trial()
                    best[i] = min(best[i], perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises untyped pybind errors
            raise ScoringError(f"model {self.ref!r}: {' '.join(str(exc).split())}") from None
        return best

    def _probe(self) -> NDArray[np.float32]:
        """A batch of training medians, the rows load-time timings run on."""
        med = np.array([self.card.medians.get(f, 0.0) for f in self.features], dtype=np.float32)
        return np.ascontiguousarray(np.broadcast_to(med, (_SPLIT_PROBE_ROWS, self._width)))

    def _complete_pays(self, complete: Callable[..., Any]) -> bool:
        """Whether skipping the imputation saves at least 5% on 256 rows (timed once at load)."""
        X = self._probe()
        run, outputs = (self._score_c, self._score_outputs) if self._score_c is not None else (self._run_c, _OUTPUTS)
        feed = {"features": X}
        t_full, t_complete = self._race(lambda: run(outputs, feed, None), lambda: complete(outputs, feed, None))
        pays = t_complete <= _SPLIT_GAIN * t_full
        log.info("model %s: per %d rows, graph with imputation %.0f µs, without %.0f µs: "
                 "complete batches skip it=%s", self.ref, _SPLIT_PROBE_ROWS, t_full * 1e6, t_complete * 1e6, pays)
        return pays

    def _relay(self, model: Any, score_model: Any) -> tuple[Any, Any, Any, list[str]] | None:
        """(score graph, its session, contributions session, handed-over tensors) for the relay way, or None.

        The score call also returns the tensors of
        :func:`stream.serving_graph.contribution_handover` (KNN's and LOF's
        candidates and neighbour weights), and the alerting rows'
        contributions are computed from them instead of searching the
        neighbours again: the same nodes on the same values.
        """
        handover = serving_graph.contribution_handover(model)
        if not handover:
            return None
        try:
            relay_model = serving_graph.with_outputs(score_model, handover)
            score = self._session_from(relay_model, "score graph handing over")
            top = self._session_from(serving_graph.top_contributions(serving_graph.with_inputs(model, handover),
                                                                     self._top_k), "contributions graph taking over")
        except (ScoringError, KeyError) as exc:
            log.info("model %s: no hand-over of %s (%s)", self.ref, handover, exc)
            return None
        return relay_model, score, top, handover

    def _split_choice(self, pruned: Any, top: Any, relay: tuple[Any, Any, Any, list[str]] | None,
                      *, forced: bool) -> str:
        """``whole``, or the score alone and the alerting rows' contributions: ``relay`` where the score call can
        hand them its costly tensors, else ``split`` (recomputed).

        Timed once at load on a batch of training medians (unless
        ``forced``): graphs whose contributions are separate work (IForest's
        credit forest, the neighbours' per-feature distances, an ensemble's
        members) qualify; graphs whose score is the sum of the contributions
        do not.  ``split`` and ``relay`` are not raced against each other:
        onnxruntime's ``ReduceSum`` of a row over the features adds in an
        order that depends on the row's place in the batch, so shares
        recomputed on the alerting rows alone can differ from the handed-over
        ones in the last place (CBLOF's, whose squared distances are handed
        over), and the served contributions would then depend on a load-time
        timing.  The hand-over is taken where the graph has one, unless the
        score-only graph runs compiled (PCA's, IForest's): then recomputing
        is the cheaper way (PCA's shares come out the same either way).
        """
        # A score-only graph computed compiled (PCA's, IForest's) is cheaper than any hand-over call, which
        # must run the graph to hand its tensors over.
        other = "relay" if relay is not None and not isinstance(pruned, (PcaSplit, ForestSplit)) else "split"
        if forced:
            return other
        X = self._probe()
        # A batch of 256 at a 1% alert rate holds a few alerting rows: their top contributions
        # are the second call, on the graph that will run it.
        feed, few = {"features": X}, {"features": X[:_SPLIT_ALERTING_ROWS]}
        trials: list[Callable[[], object]] = [lambda: self._run_c(_OUTPUTS, feed, None)]
        if other == "relay" and relay is not None:
            _, r_score, r_top, names = relay
            outputs = ["score", *names]
            handed = r_score.run(outputs, feed, None)[1:]
            r_few = dict(few, **{n: h[:_SPLIT_ALERTING_ROWS] for n, h in zip(names, handed)})
            trials += [lambda: r_score.run(outputs, feed, None), lambda: r_top.run(_TOP, r_few, None)]
        else:
            trials += [lambda: pruned.run(_SCORE, feed, None), lambda: top.run(_TOP, few, None)]
        t_full, t_score, t_top = self._race(*trials)
        way = "whole" if t_score + t_top > _SPLIT_GAIN * t_full else other
        log.info("model %s: per %d rows, whole graph %.0f µs; score alone + %d rows' contributions %s %.0f µs: %s",
                 self.ref, _SPLIT_PROBE_ROWS, t_full * 1e6, _SPLIT_ALERTING_ROWS,
                 f"(handing over {', '.join(relay[3])})" if other == "relay" and relay is not None else "(recomputed)",
                 (t_score + t_top) * 1e6, way)
        return way

    def _shrink_arenas(self) -> None:
        """Hand back what the load-time checks and timings grew the sessions' memory arenas to.

        onnxruntime keeps the largest intermediate tensors a session has
        held; timed on 1,024 rows, OCSVM's kept ~100 MiB.  One row through
        each call on the features alone, with the arena shrinking after the
        run, frees what that row does not use.
        """
        options, feed = _shrinking(), {"features": self._probe()[:1]}
        for call, outputs in self._calls_on_features():
            call(outputs, feed, options)

    def _run_calls(self) -> dict[str, Callable[..., list[NDArray[Any]]]]:
        """The run calls the score path makes (score alone, whole graph, without imputation, alerting rows)."""
        calls = {"_run_c": self._run_c, "_score_c": self._score_c, "_complete_c": self._complete_c,
                 "_top_c": self._top_c}
        return {attr: call for attr, call in calls.items() if call is not None}

    def _feature_calls(self) -> list[tuple[str, list[str]]]:
        """(attribute, outputs) of each run call on the features alone, the one a complete batch makes first."""
        score_outputs = self._score_outputs if self._score_c is not None else _OUTPUTS
        named = (("_complete_c", score_outputs), ("_score_c", self._score_outputs), ("_run_c", _OUTPUTS))
        return [(attr, outputs) for attr, outputs in named if getattr(self, attr) is not None]

    def _calls_on_features(self) -> list[tuple[Callable[..., list[NDArray[Any]]], list[str]]]:
        """(call, outputs) of each call on the features alone, the one a complete batch makes first."""
        return [(getattr(self, attr), outputs) for attr, outputs in self._feature_calls()]

    def _rows_around_medians(self, rows: int) -> NDArray[np.float32]:
        """``rows`` rows drawn around the training medians (seeded), for load-time checks and timings.

        One row in 64 lies far out on one feature, as a served batch holds a
        few anomalies: some graphs take another way for batches with values
        outside the training range (LODA's exact histogram positions), and
        that way is timed and checked too.
        """
        med = self._probe()[0].astype(np.float64)
        scale = np.maximum(np.abs(med), 1.0)
        X = med + np.random.default_rng(rows).normal(0.0, 1.0, (rows, self._width)) * scale
        far = np.arange(0, rows, _ALIGN)
        cols = far // _ALIGN % self._width
        X[far, cols] = med[cols] + _FAR_OUT * scale[cols]
        out: NDArray[np.float32] = X.astype(np.float32)
        return out

    def _cut_is_one_call(self, cut: Callable[[Callable[..., Any]], Any], X: NDArray[np.float32], what: str) -> bool:
        """Whether every call on the features alone, cut by ``cut``, gives the bits of one call on ``X``."""
        feed = {"features": X}
        for call, outputs in self._calls_on_features():
            try:
                whole, parts = call(outputs, feed, None), cut(call)(outputs, feed, None)
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises untyped pybind errors
                log.warning("model %s: %d probe rows %s failed (%s); batches are not cut",
                            self.ref, X.shape[0], what, " ".join(str(exc).split()))
                return False
            if not all(np.array_equal(a, b, equal_nan=a.dtype.kind == "f") for a, b in zip(whole, parts)):
                log.info("model %s: %d rows %s differ from one call; batches are not cut", self.ref, X.shape[0], what)
                return False
        return True

    def _pieces_from(self, *, always: bool) -> int:
        """Wrap the run calls to score batches of 512 rows or more in pieces (0 where pieces differ)."""
        what = f"in pieces of {_PIECE_ROWS}"
        if not self._cut_is_one_call(partial(_Pieces, rows=_PIECE_ROWS, min_rows=_PIECE_FROM),
                                     self._rows_around_medians(_PIECE_CHECK_ROWS), what):
            return 0
        trials = 0 if always else _PIECE_TRIALS
        for attr, call in self._run_calls().items():
            # Pieces while the model loads (the parts' checks and timings run on them); the served
            # batches take turns from the end of the load (see ``__init__``).
            wrapper = _Pieces(call, _PIECE_ROWS, _PIECE_FROM, ref=self.ref, decided=partial(self._pieces_decided, attr))
            setattr(self, attr, wrapper)
            self._pieces_kept[attr] = None if trials else True
            if trials:
                self._cut_trials.append((wrapper, trials))
        log.info("model %s: batches of %d rows or more are scored %s%s", self.ref, _PIECE_FROM, what,
                 f" where the first {2 * trials} such batches of each call find them faster" if trials else "")
        return _PIECE_FROM

    def _pieces_decided(self, attr: str, pieces: _Pieces, kept: bool) -> None:
        """Record a run call's choice; one call kept, its wrapper leaves the path (~0.25 µs a call)."""
        self._pieces_kept[attr] = kept
        if kept:
            return
        held = getattr(self, attr)
        if held is pieces:
            setattr(self, attr, pieces.run)
        elif isinstance(held, _Parts) and held.run is pieces:
            held.run = pieces.run

    def _parallel_from(self, *, always: bool) -> int:
        """The smallest batch cut into parts side by side, or tried in them (0: none), choosing per ``parallel``.

        Each call on the features alone must give the bits of one call in
        parts.  The call a complete batch makes first is timed at each size
        until the parts pay; the served batches from that size (else
        ``_PARALLEL_FROM``) then take turns between the two ways (``auto``).
        """
        pool = _workers(self._threads - 1)
        what = f"in {self._threads} parts"
        chosen = 0
        for rows in _PARALLEL_SIZES[:1] if always else _PARALLEL_SIZES:
            X = self._rows_around_medians(rows)
            if not self._cut_is_one_call(partial(_Parts, parts=self._threads, min_rows=rows, pool=pool), X, what):
                return 0
            if always:
                chosen = rows
                break
            main, outputs = self._calls_on_features()[0]
            feed = {"features": X}
            parts = _Parts(main, self._threads, rows, pool)
            t_whole, t_parts = self._race(partial(main, outputs, feed, None), partial(parts, outputs, feed, None))
            log.info("model %s: %d rows in one call %.0f µs, %s %.0f µs", self.ref, rows, t_whole * 1e6, what,
                     t_parts * 1e6)
            if t_parts <= _PARALLEL_GAIN * t_whole:
                chosen = rows
                break
        start = chosen or _PARALLEL_FROM
        for attr, call in self._run_calls().items():
            wrapper = _Parts(call, self._threads, start, pool, ref=self.ref)
            setattr(self, attr, wrapper)
            if not always:
                self._cut_trials.append((wrapper, _PARALLEL_TRIALS))
        log.info("model %s: batches of %d rows or more are scored %s%s", self.ref, start, what,
                 "" if always else f" where the served batches find them faster (turns every "
                 f"{_PARALLEL_RETRY_S:g} s)")
        return start

    @property
    def piece_rows(self) -> int:
        """Batches (or parts) of at least this many rows are scored in pieces, or tried in them (0: never)."""
        return self._piece_rows

    @property
    def pieces_kept(self) -> bool | None:
        """Whether a complete batch's call keeps pieces (None: still trying both ways, or no pieces)."""
        return self._pieces_kept.get(self._feature_calls()[0][0])

    @property
    def parallel_rows(self) -> int:
        """Batches of at least this many rows are scored in ``threads`` parts side by side, or tried in them (0: never)."""
        return self._parallel_rows

    @property
    def parts_kept(self) -> bool | None:
        """Whether a complete batch's call keeps its parts (None: taking turns, or no parts)."""
        call = getattr(self, self._feature_calls()[0][0])
        return call.kept if isinstance(call, _Parts) else None

    @property
    def complete_batches_skip_imputation(self) -> bool:
        """Whether batches without NaN run the graph without its imputation (see ``imputation``)."""
        return self._complete_c is not None

    @property
    def handed_over(self) -> tuple[str, ...]:
        """Tensors the score call hands to the alerting rows' contributions call (empty if none)."""
        return tuple(self._handover)

    @property
    def contributions_on_demand(self) -> bool:
        """Whether contributions are computed only for alerting rows (see :meth:`_split_choice`)."""
        return self._score_c is not None

    def _bind_session(self) -> None:
        # The C session's run skips InferenceSession.run's per-call input validation
        # (1-1.5 µs, a tenth of a batch-1 call); the input was validated above.
        self._run_c = _c_session(self._session).run
        self._binding: ort.IOBinding | None = (
            self._session.io_binding() if self.provider == "CUDAExecutionProvider" else None
        )
        self._buckets: dict[int, _Bucket] = {}

    def _drop_cuda_graphs(self, reason: str) -> None:
        log.warning("model %s: CUDA graph replay failed (%s); binding per call from now on", self.ref, reason)
        self._cuda_graphs = False
        self._session = self._open(self._session.get_providers(), cuda_graph=False)
        self._bind_session()

    def _session_options(self, *, cuda: bool = False) -> ort.SessionOptions:
        """The options measured best (module docstring): on the CPU one intra-op thread, parts run side by side."""
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self._threads if cuda else 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        return opts

    def _open(self, providers: list[str], *, cuda_graph: bool) -> ort.InferenceSession:
        opts = self._session_options(cuda=providers[0] == "CUDAExecutionProvider")
        if cuda_graph:  # a refused capture is reported by the caller, not as an onnxruntime error line
            opts.log_severity_level = 4
        plist: list[str | tuple[str, dict[str, str]]] = list(providers)
        if providers[0] == "CUDAExecutionProvider":
            _preload_cuda()  # here, not when choosing: a graph ``auto`` sends to the CPU loads none of it
            # TF32 matmuls drifted 2e-4 relative from the CPU scores (seen on an H100); the
            # graphs are too small for it to pay, so full float32 is kept.
            cuda_opts = {"use_tf32": "0"}
            if cuda_graph:
                cuda_opts["enable_cuda_graph"] = "1"
            plist[0] = (providers[0], cuda_opts)
        try:
            return ort.InferenceSession(str(self.artifact.model_path), sess_options=opts, providers=plist)
        except Exception as exc:
            if cuda_graph:
                raise
            raise ScoringError(
                f"cannot load {self.artifact.model_path}: {' '.join(str(exc).split())}"
            ) from None

    @property
    def cuda_graphs(self) -> bool:
        """Whether batches replay captured CUDA graphs (see module docstring)."""
        return self._cuda_graphs

    def calibrate(self, raw: NDArray[np.floating]) -> NDArray[np.float64]:
        """Raw scores → calibrated scores in [0, 1]."""
        if self._cal_x.size == 1:
            return np.where(np.asarray(raw, dtype=np.float64) > self._cal_x[0], 1.0, 0.0)
        n = raw.shape[0]
        if n >= _LOOKUP_ROWS and self._lookup is not None:
            return self._lookup(raw)
        if n >= _SORTED_ROWS:
            # np.interp searches from where the last value landed: on ascending values its branches are
            # predictable.  Each value's result does not depend on its neighbours, so this is bit for bit
            # np.interp of the batch as it came.
            order = raw.argsort()
            out: NDArray[np.float64] = np.empty(n)
            out[order] = _interp(raw.take(order), self._cal_x, self._cal_y, 0.0, 1.0)
            return out
        as_is: NDArray[np.float64] = _interp(raw, self._cal_x, self._cal_y, 0.0, 1.0)
        return as_is

    def score(self, X: NDArray[np.float32]) -> ScoredBatch:
        """Score a batch (rows in card feature order, NaN for missing)."""
        if X.ndim != 2 or X.shape[1] != self._width:
            raise ScoringError(f"model {self.ref!r} expects {self._width} features, got shape {X.shape}")
        if not X.shape[0]:
            return self._empty
        t0 = perf_counter()
        contrib: NDArray[np.float32] | None
        complete = self._complete_c
        if complete is not None and (X.shape[0] < self._complete_from or isnan(np.minimum.reduce(X, axis=None))):
            complete = None
        handed: list[NDArray[Any]] = []
        if self._score_c is not None:
            raw, *handed = (complete or self._score_c)(self._score_outputs, {"features": X}, None)
            contrib = None
        elif complete is not None:
            raw, contrib = complete(_OUTPUTS, {"features": X}, None)
        else:
            raw, contrib = self._run(X)
        elapsed = perf_counter() - t0
        n = X.shape[0]
        if n == 1:
            return self._score_one(X, raw, contrib, elapsed, handed)
        grade = self._grade_c
        if grade is not None:  # calibration, threshold and severity in one compiled pass, the same bits
            # dtype objects, positional: 0.45 against 0.76 µs for the four arrays
            score: NDArray[np.float64] = np.empty(n)
            anomaly: NDArray[np.bool_] = np.empty(n, _BOOL)
            severity: NDArray[np.int8] = np.empty(n, _INT8)
            rows: NDArray[np.intp] = np.empty(n, _INTP)
            alerts = grade(raw, score, anomaly, severity, rows)
            rows = rows[:alerts] if alerts else _NO_ROWS
        else:
            score = self.calibrate(raw)
            anomaly = score >= self.threshold
            rows = anomaly.nonzero()[0]
            severity = self._grade(score, rows)
        if not rows.size:
            idx, shares = self._no_idx, self._no_shares
        elif contrib is None:
            t0 = perf_counter()
            idx, shares = self._alerting_top(X.take(rows, axis=0), [h.take(rows, axis=0) for h in handed])
            elapsed += perf_counter() - t0
        else:
            idx, shares = _top_k(contrib.take(rows, axis=0), self._top_k)
        return ScoredBatch(
            raw=raw, score=score, anomaly=anomaly, severity=severity, anomalous_rows=rows,
            top_features=idx, top_shares=shares, inference_s=elapsed,
        )

    def _grade(self, score: NDArray[np.float64], rows: NDArray[np.intp]) -> NDArray[np.int8]:
        """Severity codes; when every graded row alerts (the usual cuts), only ``rows`` are graded."""
        if not self._grade_alerting_only:
            return np.searchsorted(self._cuts, score, side="right").astype(np.int8)
        severity = np.zeros(score.shape[0], dtype=np.int8)
        if rows.size > _FEW_ROWS:
            severity[rows] = np.searchsorted(self._cuts, score.take(rows), side="right")
        elif rows.size:  # a few alerting rows: bisect in Python (0.7 against 1.9 µs for 3 rows)
            cuts, item = self._cuts_list, score.item
            for r in rows.tolist():
                severity[r] = bisect_right(cuts, item(r))
        return severity

    def _alerting_top(
        self, X: NDArray[np.float32], handed: list[NDArray[Any]]
    ) -> tuple[NDArray[np.intp], NDArray[np.float32]]:
        """Top contributions of the given (alerting) rows, computed for them alone (from ``handed``, if any)."""
        if self._top_c is not None:
            feed: dict[str, NDArray[Any]] = {"features": X}
            if handed:
                feed.update(zip(self._handover, handed))
            shares, idx = self._top_c(_TOP, feed, None)
            return idx, shares
        return _top_k(self._run_c(_CONTRIBUTIONS, {"features": X}, None)[0], self._top_k)

    def _score_one(
        self, X: NDArray[np.float32], raw: NDArray[np.float32], contrib: NDArray[np.float32] | None, elapsed: float,
        handed: list[NDArray[Any]],
    ) -> ScoredBatch:
        """One row: the same results as the vectorised path, in plain Python."""
        s = _interp_one(float(raw[0]), *self._cal_list)
        sev = bisect_right(self._cuts_list, s)
        if s >= self.threshold:
            rows = _ROW0
            if contrib is None:
                t0 = perf_counter()
                idx, shares = self._alerting_top(X, handed)
                elapsed += perf_counter() - t0
            else:
                idx, shares = _top_k(contrib, self._top_k)
        else:
            rows, idx, shares = _NO_ROWS, self._no_idx, self._no_shares
        # The flag and the severity from shared read-only one-row arrays (0.6 µs of a ~15 µs call).
        return ScoredBatch(
            raw=raw, score=np.array([s]), anomaly=_ONE_FLAG[s >= self.threshold],
            severity=_ONE_SEVERITY[sev], anomalous_rows=rows,
            top_features=idx, top_shares=shares, inference_s=elapsed,
        )

    def _run(self, X: NDArray[np.float32]) -> list[NDArray[np.float32]]:
        """(score, contributions) from the graph, as numpy arrays."""
        if self._binding is None:
            out: list[NDArray[np.float32]] = self._run_c(_OUTPUTS, {"features": X}, None)
            return out
        if self._cuda_graphs:
            try:
                return self._run_bucket(X)
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises untyped pybind errors
                self._drop_cuda_graphs(" ".join(str(exc).split()))
        try:
            # The input is copied to the device by the binding and the outputs are bound
            # to host memory, so they come back as numpy without a second copy call.
            io = self._binding
            io.bind_cpu_input("features", X)
            for name in _OUTPUTS:
                io.bind_output(name, "cpu")
            self._session.run_with_iobinding(io)
            outs: list[NDArray[np.float32]] = io.copy_outputs_to_cpu()
            return outs
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises untyped pybind errors
            raise ScoringError(f"model {self.ref!r}: {' '.join(str(exc).split())}") from None

    def _run_bucket(self, X: NDArray[np.float32]) -> list[NDArray[np.float32]]:
        """Run on the bucket's fixed device buffers (replaying its CUDA graph)."""
        n = X.shape[0]
        size = 1 << (n - 1).bit_length()
        b = self._buckets.get(size)
        if b is None:
            b = self._buckets[size] = _Bucket(self._session, size, self._width, len(self._buckets))
        if n == size:
            b.features.update_inplace(np.ascontiguousarray(X, dtype=np.float32))
        else:
            b.host[:n] = X
            b.features.update_inplace(b.host)
        self._session.run_with_iobinding(b.binding, b.options)
        return [b.score.numpy()[:n], b.contributions.numpy()[:n]]

    @staticmethod
    def severity_name(code: int) -> str:
        return SEVERITIES[code]


_OUTPUTS = ["score", "contributions"]
_SCORE = ["score"]
_CONTRIBUTIONS = ["contributions"]
_TOP = [serving_graph.TOP_SHARE, serving_graph.TOP_INDEX]
# From this many rows a batch without NaN may skip the imputation: the NaN check (a min over the
# batch, ~0.9 µs) costs more than the two skipped nodes save on fewer rows.  Where the graph without
# imputation runs compiled (HBOS's grid, PCA's and IForest's scores), from one row.
_COMPLETE_ROWS = 8
_SPLIT_PROBE_ROWS = 256
# Rows (three scales of them) on which PCA's compiled score and HBOS's compiled tail must give the graph's bits:
# not a multiple of the eight rows it takes at a time, so its one-row path is checked too.
_CHECK_ROWS = 1_027
_RACE_ROUNDS = 7
# Calibration by batch size (scores spread like the knots, a new batch every call, 2026-11-22): below 48
# rows np.interp as it comes; from 48, np.interp on the sorted scores (argsort + interp + scatter: 3.1
# against 3.6 µs at 64 rows, 6.3 against 13.5 at 256, where the grid lookup takes 9.2); from 640 the
# grid lookup (12.6 against 9.9 at 512, 13.6 against 13.2 at 768, and argsort grows faster).  On one
# batch repeated, the branch predictor learns np.interp's path and it looks 3x faster than it is.
_SORTED_ROWS = 48
_LOOKUP_ROWS = 640
_SPLIT_ALERTING_ROWS = 4
_SPLIT_GAIN = 0.95  # split when score alone + a few rows' contributions cost at most this share of the whole
_FEW_ROWS = 16  # up to this many alerting rows are graded in Python
_BOOL, _INT8, _INTP = np.dtype(np.bool_), np.dtype(np.int8), np.dtype(np.intp)
_ROW0 = np.zeros(1, dtype=np.intp)
_NO_ROWS = np.empty(0, dtype=np.intp)
_ROW0.flags.writeable = False
_ONE_FLAG = {False: np.zeros(1, dtype=np.bool_), True: np.ones(1, dtype=np.bool_)}
_ONE_SEVERITY = [np.full(1, code, dtype=np.int8) for code in range(5)]
for _a in (*_ONE_FLAG.values(), *_ONE_SEVERITY):
    _a.flags.writeable = False
del _a
_NO_ROWS.flags.writeable = False


# Parts side by side: the batch sizes at which they are checked (same bits) and timed at load, the smallest
# of which that paid there (else _PARALLEL_FROM) is where the served batches take turns; the share of one
# call's time per row they must beat, and how long a choice holds before the served batches take turns
# again.  The load's timings alone decided before 2026-11-23: a model loaded while the other core was busy
# (another process starting) found that parts did not pay at any size and never cut a batch (KNN and LOF at
# 128 rows, the other core held by a busy loop: 388 against 326 µs, 719 against 646; idle: 244 against
# 331, 419 against 688).
_PARALLEL_SIZES = (128, 256, 1024, 4096)  # each at least 2 * _ALIGN
_PARALLEL_FROM = 256
_PARALLEL_GAIN = 0.8
_PARALLEL_TRIALS = 16
_PARALLEL_RETRY_S = 60.0
_ALIGN = 64
# Consecutive pieces: the batch size from which batches are cut, the pieces' rows, the rows of the load-time
# check, how many batches of each way the served batches are timed on, and the share of one call's time per
# row the pieces must beat.  Pieces of 128 rows, 2026-11-23, one thread, held-out rows: score-only graphs
# per 256 / 1,024 / 4,096 rows against one call, KNN 0.97 / 0.84 / 0.80, LOF 0.93 / 0.86 / 0.78, OCSVM
# - / 0.83 / 0.82; graphs without a large intermediate tensor lose (HBOS 1.70 and PCA 1.96 at 4,096, LODA
# 1.26, the ensemble 1.10).  Scorer.score at 256 / 512 rows, alternating: KNN 1.06 / 0.85, LOF 1.01 / 0.95,
# OCSVM 0.97 / 0.86.  Timed at load on rows around the medians the ensemble's choice flipped between loads
# (pieces lose 12-19% on its served rows), and KNN ran faster there than on served rows: the served
# batches decide.
_PIECE_FROM = 512  # at least 2 * _PIECE_ROWS
_PIECE_ROWS = 128  # a multiple of _ALIGN
_PIECE_CHECK_ROWS = 1024
_PIECE_TRIALS = 8
_PIECE_GAIN = 0.95
_TURN_RUN = 4  # served batches in a row taken each way while parts or pieces are timed (trials: a multiple)
_FAR_OUT = 30.0  # load-time probe rows: the far rows' distance from the medians, in the probe's scale


def _c_session(session: ort.InferenceSession) -> Any:
    """The C session under an ``InferenceSession``: its run skips the per-call input validation."""
    return getattr(session, "_sess", session)


@cache
def _workers(n: int) -> ThreadPoolExecutor:
    """``n`` threads shared by all scorers cutting batches into ``n + 1`` parts (the caller scores one)."""
    return ThreadPoolExecutor(max_workers=n, thread_name_prefix="anomstream-score")


class _Cut:
    """A session's C ``run`` that may score batches of ``min_rows`` rows or more another way, to the same bits.

    The other way (:meth:`_cut`: parts side by side, consecutive pieces) is
    taken while :attr:`kept` is True, one call while it is False.  After
    :meth:`take_turns` (``kept`` None) the next such batches take turns
    between one call and the other way in runs of ``_TURN_RUN`` batches,
    timed per row but for the first of each run (which pays for the switch:
    a part handed to a worker thread that one-call turns left idle waits for
    it to wake, ~0.1 ms on the reference VM, where back-to-back parts find
    it awake), and after ``trials`` of each the other way is kept where its
    median took at most ``gain`` of one call's (logged when the choice is new
    or changes; ``decided`` is told); once kept, one run lets the session's
    arena shrink back from what the one-call turns grew it to.  With
    ``retry_s`` the turns open again that many seconds after each choice, so
    that the choice follows the machine (a second core that other processes
    keep busy now and then).
    Both ways give the same bits, so the served results do not depend on the
    turn a batch falls on.
    """

    __slots__ = ("decided", "gain", "kept", "min_rows", "next_trial", "ref", "retry_s", "run", "said", "served",
                 "times", "trials", "what")

    def __init__(self, run: Callable[..., list[NDArray[Any]]], min_rows: int, *, what: str, gain: float,
                 ref: str = "", decided: Callable[[Any, bool], None] | None = None,
                 retry_s: float | None = None) -> None:
        self.run, self.min_rows, self.what, self.gain, self.ref, self.decided = run, min_rows, what, gain, ref, decided
        self.retry_s = retry_s
        self.trials = self.served = 0
        self.next_trial = 0.0
        self.said: bool | None = None  # the last choice logged
        self.kept: bool | None = True  # None: taking turns
        self.times: tuple[list[float], list[float]] = ([], [])  # seconds per row: one call, the other way

    def take_turns(self, trials: int) -> None:
        """Time the next ``trials`` batches of each way, in turns, then keep the faster."""
        self.trials, self.kept, self.times, self.served = trials, None, ([], []), 0

    def _cut(self, names: list[str], feed: dict[str, NDArray[Any]], options: Any, n: int) -> list[NDArray[Any]]:
        raise NotImplementedError

    def __call__(self, names: list[str], feed: dict[str, NDArray[Any]], options: Any) -> list[NDArray[Any]]:
        n = feed["features"].shape[0]
        if n < self.min_rows:
            return self.run(names, feed, options)
        if self.kept is not None:
            if self.retry_s is None or not self.trials or perf_counter() < self.next_trial:
                return self._cut(names, feed, options, n) if self.kept else self.run(names, feed, options)
            self.take_turns(self.trials)
        one, cut = self.times
        other = self.served // _TURN_RUN % 2 == 1  # runs of turns, one call first
        t0 = perf_counter()
        out = self._cut(names, feed, options, n) if other else self.run(names, feed, options)
        if self.served % _TURN_RUN:
            (cut if other else one).append((perf_counter() - t0) / n)
        self.served += 1
        if self.served >= 2 * self.trials:
            t_one, t_cut = float(np.median(one)), float(np.median(cut))
            self.kept = kept = t_cut <= self.gain * t_one
            if self.retry_s is not None:
                self.next_trial = perf_counter() + self.retry_s
            if kept != self.said:
                log.info("model %s: per row of batches of %d rows or more, one call %.2f µs, %s %.2f µs: %s",
                         self.ref, self.min_rows, t_one * 1e6, self.what, t_cut * 1e6,
                         f"{self.what} kept" if kept else "one call kept")
                self.said = kept
            if kept:
                self.run(names, {k: v[:1] for k, v in feed.items()}, _shrinking())
            if self.decided is not None:
                self.decided(self, kept)
        return out


class _Parts(_Cut):
    """A session's C ``run``, cutting batches of ``min_rows`` rows or more into ``parts`` scored side by side.

    onnxruntime lets go of the GIL while it runs, so the parts run on the
    cores at once; every input is cut along its rows and every output joined
    along its rows.  The caller scores the first part itself.  Whether the
    parts pay is timed on served batches (:class:`_Cut`).
    """

    __slots__ = ("parts", "pool")

    def __init__(self, run: Callable[..., list[NDArray[Any]]], parts: int, min_rows: int,
                 pool: ThreadPoolExecutor, **turns: Any) -> None:
        super().__init__(run, min_rows, what=f"in {parts} parts", gain=_PARALLEL_GAIN, retry_s=_PARALLEL_RETRY_S,
                         **turns)
        self.parts, self.pool = parts, pool

    def _cut(self, names: list[str], feed: dict[str, NDArray[Any]], options: Any, n: int) -> list[NDArray[Any]]:
        # Cuts on multiples of _ALIGN rows: onnxruntime's element-wise kernels treat a tensor's last few
        # values apart from its vectorised body (HBOS's rows cut at 21 and 42 of 64 differed in the last
        # bit), and aligned cuts leave every value where one call puts it.
        cuts = sorted({0, n, *(min(n, round(n * i / self.parts / _ALIGN) * _ALIGN) for i in range(1, self.parts))})
        later = [
            self.pool.submit(self.run, names, {k: v[lo:hi] for k, v in feed.items()}, options)
            for lo, hi in pairwise(cuts[1:])
        ]  # cuts[1] > 0: min_rows is at least 2 * _ALIGN
        first = self.run(names, {k: v[:cuts[1]] for k, v in feed.items()}, options)
        rest = [f.result() for f in later]
        return [np.concatenate([first[i], *(r[i] for r in rest)]) for i in range(len(names))]


def _shrinking() -> ort.RunOptions:
    """Run options that shrink the CPU arena back to what the run used."""
    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


class _Pieces(_Cut):
    """A session's C ``run``, scoring batches of ``min_rows`` rows or more as consecutive pieces of ``rows`` rows.

    Every input is cut along its rows and every output joined along its
    rows; the cuts fall on multiples of ``rows`` (see :class:`_Parts` on
    aligned cuts).  Whether the pieces pay is timed on the first served
    batches (:class:`_Cut`), once: it depends on the graph and the caches,
    not on what else the machine runs.
    """

    __slots__ = ("rows",)

    def __init__(self, run: Callable[..., list[NDArray[Any]]], rows: int, min_rows: int, **turns: Any) -> None:
        super().__init__(run, min_rows, what=f"in pieces of {rows}", gain=_PIECE_GAIN, **turns)
        self.rows = rows

    def _cut(self, names: list[str], feed: dict[str, NDArray[Any]], options: Any, n: int) -> list[NDArray[Any]]:
        run, step = self.run, self.rows
        outs = [run(names, {k: v[lo:lo + step] for k, v in feed.items()}, options) for lo in range(0, n, step)]
        return [np.concatenate([o[i] for o in outs]) for i in range(len(names))]


class _Bucket:
    """Device buffers, binding and graph id of one padded batch size."""

    __slots__ = ("binding", "contributions", "features", "host", "options", "score")

    def __init__(self, session: ort.InferenceSession, rows: int, width: int, graph_id: int) -> None:
        self.host = np.zeros((rows, width), dtype=np.float32)
        self.features = ort.OrtValue.ortvalue_from_numpy(self.host, "cuda", 0)
        self.score = ort.OrtValue.ortvalue_from_shape_and_type([rows], np.float32, "cuda", 0)
        self.contributions = ort.OrtValue.ortvalue_from_shape_and_type([rows, width], np.float32, "cuda", 0)
        self.binding = session.io_binding()
        self.binding.bind_ortvalue_input("features", self.features)
        self.binding.bind_ortvalue_output("score", self.score)
        self.binding.bind_ortvalue_output("contributions", self.contributions)
        self.options = ort.RunOptions()
        self.options.add_run_config_entry("gpu_graph_id", str(graph_id))


def _interp_one(
    x: float, xp: tuple[float, ...], fp: tuple[float, ...], left: float = 0.0, right: float = 1.0
) -> float:
    """``np.interp`` for one value, bit for bit (same search and arithmetic)."""
    if isnan(x):
        return x
    j = bisect_right(xp, x) - 1
    if j < 0:
        return left
    last = len(xp) - 1
    if j >= last:
        return fp[last] if x == xp[last] else right
    if x == xp[j]:
        return fp[j]
    slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j])
    y = slope * (x - xp[j]) + fp[j]
    if isnan(y):
        y = slope * (x - xp[j + 1]) + fp[j + 1]
        if isnan(y) and fp[j] == fp[j + 1]:
            y = fp[j]
    return y
_SMALL_TOP_K = 128  # rows whose flat offsets are cached


def _top_k(c: NDArray[np.float32], k: int) -> tuple[NDArray[np.intp], NDArray[np.float32]]:
    """Column indices and values of the ``k`` largest entries per row, largest first.

    Ties go to the lower column and NaN ranks after every number, whatever
    the number of rows (a stable sort of ``-c``; the decision graph's
    ``TopK`` orders the same way).
    """
    m, d = c.shape
    c = np.ascontiguousarray(c)
    idx = (-c).argsort(axis=1, kind="stable")[:, :k]
    return idx, c.take(idx + _row_starts(m, d))


@lru_cache(maxsize=64)
def _row_starts_all(d: int) -> NDArray[np.intp]:
    starts = np.arange(_SMALL_TOP_K, dtype=np.intp)[:, None] * d
    starts.flags.writeable = False
    return starts


def _row_starts(m: int, d: int) -> NDArray[np.intp]:
    """Flat offsets of the first ``m`` rows of a row-major [m, d] array (cached)."""
    if m <= _SMALL_TOP_K:
        return _row_starts_all(d)[:m]
    return np.arange(m, dtype=np.intp)[:, None] * d
