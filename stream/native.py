"""The neighbour graphs' candidate search as compiled code, between two onnxruntime calls.

KNN's and LOF's graphs (``models.zoo.neighbours``) find each row's nearest
reference rows in two steps: a float32 distance product over every reference
row with per-group minima and two ``TopK`` selections picks ``kk``
candidates, and an exact float64 stage ranks them.  On the CPU the first
step was most of the graph's time, and not in the product: onnxruntime's
``TopK`` keeps a heap whose branches mispredict on every fresh batch, and
the 5 MB distance matrix of a 256-row batch is written out and read back
through a 1 MB cache (``docs/performance.md``).

``stream/_native/neighbours.c`` does that step in one pass per block of six
rows: the products by AVX-512 FMA, each group's minimum while the values are
in registers, then the selection in vector instructions on values still in
cache; then, where the graph's exact stage starts with them, the per-feature
squared differences to the candidates' float64 rows (the graph's ``Gather``,
``Cast``, ``Tile``, ``Sub`` and ``Mul``: element-wise, so the same bits).
:class:`NeighbourSplit` runs a graph as ``head`` (the nodes before the
searches: imputation, scaling), the kernel, and ``tail`` (the rest of the
exact stage and everything else), and quacks like onnxruntime's C session
(``run(names, feed, options)``) so the core's pieces, parts and calls take
it unchanged.

Where the CPU has AVX512-BF16, the products run first in bfloat16 pairs
(``vdpbf16ps``: twice the multiply-adds of float32 FMA per instruction) with
a bound on how far each lies from its float32 value; only the columns within
the bound of the ``kk``-th smallest get float32 products, computed in the
float32 search's order of operations, and the ``kk`` smallest are taken
from them: the same candidates (:func:`prefilter`).  On the 2-core
reference machine (Zen 4) it took the search of a 256-row batch against
5,056 reference rows from ~1.2 to ~0.95 ms for LOF's 22 candidates and from
~1.0 to ~0.8 ms for KNN's 7 (``docs/performance.md``).

For LOF (:func:`stream.serving_graph.density_stage`) the rest of the score
runs compiled too, where only the score and the neighbour weights are asked
for (the core's hand-over way): the squares summed over the features as they
are computed, then the k-th distance, the ties by row number, the
reachability and density means, node for node.  The float64 sums follow the
order onnxruntime's ``ReduceSum`` adds in, checked against the loaded
onnxruntime once per process (:func:`sums_agree`), so the scores are the
graph tail's bits; the ~30 small onnxruntime nodes of that tail took
~0.3 ms of a 256-row batch, the compiled stage ~0.05 ms.

Candidates come out in ascending row number where the graph's ``TopK``
left them in its heap's order, so float64 sums over the neighbours could
round differently in the last place (in every batch tested they did not);
which rows are neighbours does not change (the exact stage's margin covers
products that round differently, ``models/zoo/neighbours.py``).  A batch
with a NaN or an infinity reaching the search is scored by the whole graph
instead.

The shared library is built when the package is installed (``hatch_build.py``;
a C compiler is needed) and used where the CPU has AVX-512F; elsewhere the
core runs the graph alone.  No import beyond numpy and ctypes.

The grading extension (``stream/_native/grading.c``, a CPython module, any
x86-64 or other CPU; AVX-512 where present) computes other graphs or parts
of them: HBOS's grid lookup and tail (:class:`GridSplit`), PCA's and
IForest's score graphs (:class:`PcaSplit`, :class:`ForestSplit`, kept only
where their bits match the loaded onnxruntime's), and ECOD's and COPOD's
ECDF counts, which :class:`NeighbourSplit` cuts out like a search
(:func:`counts`).
"""

from __future__ import annotations

import ctypes
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from stream.serving_graph import (
    DensityStage,
    ForestCut,
    GridCut,
    NeighbourCut,
    PcaCut,
    PrefixCount,
    density_stage,
)

try:  # the extension module built with the package (hatch_build.py); stream.core grades with it too
    from stream._native import _grading as grading
except ImportError:
    grading = None  # type: ignore[assignment]

__all__ = ["MIN_ROWS", "ForestSplit", "GridSplit", "NeighbourSplit", "PcaSplit", "Prefilter", "available", "candidates",
           "counts", "counts_available", "density", "forest_available", "grading", "grid_available", "library_path",
           "pca_available", "prefilter", "sums_agree"]

log = logging.getLogger(__name__)

_LIB_NAME = "libanomstream_neighbours.so"
#: Batches below this many rows run the whole graph: the two calls around the search cost more than it
#: saves.  ``Scorer.score`` compiled ÷ whole graph, alternating (2026-11-23): KNN 1.13 at 8 rows, 1.07 at
#: 16, 0.89 at 32; LOF 1.00, 0.88, 0.75; the ensemble holding KNN 1.04, 0.99, 0.97.
MIN_ROWS = 24
MAX_KK = 64  # the most candidates a compiled search keeps (neighbours.c)
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_loaded = False
_scratch = threading.local()  # per thread: parts call the search side by side


def library_path() -> Path:
    """Where the installed package keeps the compiled search."""
    return Path(__file__).with_name("_native") / _LIB_NAME


def _library() -> ctypes.CDLL | None:
    global _lib, _loaded
    with _lock:
        if _loaded:
            return _lib
        _loaded = True
        path = library_path()
        if not path.exists():
            log.info("no compiled neighbour search at %s: neighbour graphs run whole", path)
            return None
        lib = ctypes.CDLL(str(path))
        if not lib.anomstream_native_supported():
            log.info("this CPU has no AVX-512F: neighbour graphs run whole")
            return None
        p, i = ctypes.c_void_p, ctypes.c_int
        lib.anomstream_candidates.argtypes = [p, i, i, p, p, i, i, p, p, p, p, ctypes.c_int64, p, p, p, p, p, p]
        lib.anomstream_candidates.restype = i
        lib.anomstream_reduce_sum.argtypes = [p, i, i]
        lib.anomstream_reduce_sum.restype = ctypes.c_double
        f64 = ctypes.c_double
        lib.anomstream_lof_density.argtypes = [i, i, p, p, i, i, p, p, ctypes.c_int64, f64, f64, p, p, p]
        lib.anomstream_lof_density.restype = i
        lib.anomstream_scratch_floats.argtypes = [i, i]
        lib.anomstream_scratch_floats.restype = ctypes.c_size_t
        lib.anomstream_bf16_supported.restype = i
        _lib = lib
        return lib


def available() -> bool:
    """Whether the compiled search is built and this CPU runs it."""
    return _library() is not None


class Prefilter:
    """A weight matrix's bfloat16 pairs and per-group bounds, for :func:`candidates` (see :func:`prefilter`)."""

    __slots__ = ("const", "norms", "pairs", "transposed")

    def __init__(self, pairs: NDArray[np.uint32], transposed: NDArray[np.float32], norms: NDArray[np.float32],
                 const: NDArray[np.float32]) -> None:
        self.pairs, self.transposed, self.norms, self.const = pairs, transposed, norms, const


def _bf16(a: NDArray[np.float32]) -> NDArray[np.uint32]:
    """bfloat16 bits of float32 values (nearest, ties to even), as uint32."""
    u = a.view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint32)


def prefilter(weights: NDArray[np.float32]) -> Prefilter | None:
    """The bfloat16 prefilter of a search's ``[D + 1, width]`` weights, or None where it cannot run.

    The kernel then multiplies in bfloat16 pairs (twice the multiply-adds
    per instruction of float32) and recomputes in float32 only the columns
    within a bound of the kk-th smallest (``stream/_native/neighbours.c``):
    the candidates are the float32 search's.  None where the CPU has no
    AVX512-BF16, or the weights are not finite or too large for bfloat16.
    """
    lib = _library()
    if lib is None or not lib.anomstream_bf16_supported():
        return None
    w = np.ascontiguousarray(weights, dtype=np.float32)
    d, width = w.shape[0] - 1, w.shape[1]
    if d < 1 or width % 64 or not np.all(np.abs(w) < np.float32(3.3e38)):
        return None
    body = w[:d]
    if d % 2:
        body = np.vstack([body, np.zeros((1, width), dtype=np.float32)])
    pairs = _bf16(body[0::2]) | (_bf16(body[1::2]) << np.uint32(16))
    cols = np.sqrt(np.square(w[:d].astype(np.float64)).sum(axis=0)) * (1.0 + 2.0**-40)
    norms = cols.reshape(-1, 64).max(axis=1)
    bias = np.abs(w[d].astype(np.float64)).reshape(-1, 64).max(axis=1)
    const = (2.0 * d + 6.0) * 2.0**-24 * bias + d * 2.0**-120 * norms
    up = 1.0 + 2.0**-20  # rounded up to float32: each bound at least its float64 value
    pad = -len(norms) % 16  # the kernel reads the groups 16 at a time
    return Prefilter(np.ascontiguousarray(pairs), np.ascontiguousarray(w.T),
                     np.pad(norms * up, (0, pad)).astype(np.float32), np.pad(const * up, (0, pad)).astype(np.float32))


def candidates(x: NDArray[np.float32], weights: NDArray[np.float32], kk: int,
               exact: tuple[NDArray[np.float32], NDArray[np.float64]] | None = None, *,
               center: NDArray[np.float32] | None = None, pre: Prefilter | None = None, sums: bool = False,
               ) -> tuple[NDArray[np.int64], int, NDArray[np.float64] | None]:
    """The ``kk`` columns of smallest ``[x - center, 1] @ weights`` per row, how many rows failed, and the exact stage.

    ``x`` [N, D] float32, ``weights`` [D + 1, width] float32 (width a
    multiple of 64, ``kk`` at most 64 and at most width / 64), ``center``
    [D] float32 (zero by default: the graphs' searches take centred rows).
    Each row's columns come in ascending order (ties at the ``kk``-th
    product go to the lower column).  A row holding NaN or an infinity is
    not searched: its columns are undefined and it counts as failed.  With
    ``exact = (xs, rows)`` (xs [N, D] float32, rows [M, D] float64) the third
    value is ``(float64(xs)[:, None, :] - rows[columns]) ** 2`` [N, kk, D],
    else None.  ``pre``, from :func:`prefilter` on the same weights, makes
    the search faster with the same candidates.  With ``sums`` (and
    ``exact``) the third value is those squares summed over the features
    [N, kk] as the graph's ``ReduceSum`` adds them (the squares themselves are
    not kept).  Raises ``RuntimeError`` when the library is missing or the
    sizes are refused.
    """
    lib = _library()
    if lib is None:
        raise RuntimeError("the compiled neighbour search is not available")
    x = np.ascontiguousarray(x, dtype=np.float32)
    weights = np.ascontiguousarray(weights, dtype=np.float32)  # no copy for a graph's weights
    n, d = x.shape
    width = weights.shape[1]
    if weights.shape[0] != d + 1:
        raise RuntimeError(f"weights {weights.shape} for {d} features")
    if pre is not None and pre.pairs.shape != ((d + 1) // 2, width):
        raise RuntimeError(f"prefilter {pre.pairs.shape} for weights {weights.shape}")
    center = np.zeros(d, dtype=np.float32) if center is None else np.ascontiguousarray(center, dtype=np.float32)
    out = np.empty((n, kk), dtype=np.int64)
    size = lib.anomstream_scratch_floats(d, width)
    scratch = getattr(_scratch, "buf", None)
    if scratch is None or scratch.size < size:  # kept: a fresh 150 KB block costs page faults on every call
        scratch = _scratch.buf = np.empty(size, dtype=np.float32)
    sq = xs = rows = None
    if exact is not None:
        xs = np.ascontiguousarray(exact[0], dtype=np.float32)
        rows = np.ascontiguousarray(exact[1], dtype=np.float64)
        if xs.shape != (n, d) or rows.ndim != 2 or rows.shape[1] != d:
            raise RuntimeError(f"exact stage: rows {xs.shape} and reference {rows.shape} for {n} x {d}")
        sq = np.empty((kk, d) if sums else (n, kk, d), dtype=np.float64)
        total = np.empty((n, kk), dtype=np.float64) if sums else None
    failed = lib.anomstream_candidates(
        x.ctypes.data, n, d, center.ctypes.data, weights.ctypes.data, width, kk, out.ctypes.data,
        scratch.ctypes.data, None if xs is None else xs.ctypes.data, None if rows is None else rows.ctypes.data,
        0 if rows is None else rows.shape[0], None if sq is None else sq.ctypes.data,
        None if sq is None or total is None else total.ctypes.data,
        *((None, None, None, None) if pre is None else
          (pre.pairs.ctypes.data, pre.transposed.ctypes.data, pre.norms.ctypes.data, pre.const.ctypes.data)))
    if failed < 0:
        raise RuntimeError(f"compiled neighbour search refused sizes d={d}, width={width}, kk={kk}")
    return out, int(failed), total if sums else sq


def density(sums: NDArray[np.float64], cand: NDArray[np.int64], stage: DensityStage, *,
            unrounded: NDArray[np.float64] | None = None) -> tuple[NDArray[np.float32], NDArray[np.float64]] | None:
    """LOF's score and 0/1 neighbour weights [N, kk] from the summed squares and candidates of a search.

    The graph's bits (:class:`stream.serving_graph.DensityStage`), or None
    where a sum is NaN or a candidate lies outside the reference rows.
    ``unrounded`` [N] float64, if given, receives the score before its cast
    to float32 (the graph's ``lof_score``), where the order of its sums
    still shows.
    """
    lib = _library()
    if lib is None:
        raise RuntimeError("the compiled neighbour search is not available")
    n, kk = cand.shape
    if sums.shape != (n, kk) or sums.dtype != np.float64 or cand.dtype != np.int64 or not (
            sums.flags.c_contiguous and cand.flags.c_contiguous) or (unrounded is not None and unrounded.shape != (n,)):
        raise RuntimeError(f"density stage: sums {sums.shape} and candidates {cand.shape}")
    score = np.empty(n, dtype=np.float32)
    chosen = np.empty((n, kk), dtype=np.float64)
    failed = lib.anomstream_lof_density(
        n, kk, sums.ctypes.data, cand.ctypes.data, stage.k_sq, stage.k_key, stage.k_distance.ctypes.data,
        stage.lrd.ctypes.data, stage.lrd.shape[0], stage.inv_k, stage.eps, score.ctypes.data, chosen.ctypes.data,
        None if unrounded is None else unrounded.ctypes.data)
    return None if failed else (score, chosen)


_sums_agree: bool | None = None  # whether this process's onnxruntime adds as the compiled sums (once checked)


def sums_agree(session: Any) -> bool:
    """Whether the onnxruntime behind ``session`` (a C-session factory) adds float64 rows as the compiled stage.

    The compiled sums follow the order onnxruntime's CPU ``ReduceSum`` adds
    a row of the last axis in (Eigen's two-lane packets, from the first
    16-byte aligned value); a build that adds otherwise would round some
    scores differently in the last place, so the compiled density stage is
    used only where this check, on every row length 1-64 at both alignments,
    finds the same bits.  Checked once per process.
    """
    global _sums_agree
    lib = _library()
    if lib is None:
        return False
    if _sums_agree is not None:
        return _sums_agree
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["v", "axes"], ["total"], keepdims=0)], "reduce_sum",
        [helper.make_tensor_value_info("v", TensorProto.DOUBLE, [None, None])],
        [helper.make_tensor_value_info("total", TensorProto.DOUBLE, [None])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [1])])
    run = session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    rng = np.random.default_rng(0)
    agree = True
    for length in range(1, MAX_KK + 1):
        buf = np.exp(rng.standard_normal(8 * length + 1) * 8.0)
        for off in (0, 1):
            v = buf[off:off + 8 * length].reshape(8, length)
            got = run.run(["total"], {"v": v}, None)[0]
            for i in range(8):
                row = v[i]
                mine = lib.anomstream_reduce_sum(row.ctypes.data, length, (row.ctypes.data // 8) & 1)
                agree &= mine == got[i]
    if not agree:
        log.info("this onnxruntime adds float64 rows in another order: LOF's density stage runs in the graph")
    _sums_agree = agree
    return agree


class NeighbourSplit:
    """A graph run as head call, compiled searches and counts, tail call: ``run(names, feed, options)`` like a C session.

    The counts are ECOD's and COPOD's ECDF counts (the graph's unrolled
    binary searches over the sorted training columns, two chains of ~14
    steps of four nodes each over [N, D] tensors; :func:`counts`): their
    results are integers, so any code that counts gives the graph's.  A graph
    with counts and no search is cut at every batch size.

    Parameters
    ----------
    cut : NeighbourCut
        From :func:`stream.serving_graph.neighbour_cut`.
    session : callable
        Makes a C session (``.run(names, feed, options)``) from a graph.
    whole : object
        A C session on the uncut graph, for batches a search cannot take.
    """

    def __init__(self, cut: NeighbourCut, session: Any, whole: Any) -> None:
        if cut.searches and _library() is None:
            raise RuntimeError("the compiled neighbour search is not available")
        if cut.counts and not counts_available():
            raise RuntimeError("the compiled ECDF counts are not available")
        self.cut = cut
        self.min_rows = MIN_ROWS if cut.searches else 1
        self._head = session(cut.head) if cut.head is not None else None
        self._tail = session(cut.tail)
        self._whole = whole
        self._prefilters = [prefilter(s.weights) for s in cut.searches]
        self._tail_made = {o.name for o in cut.tail.graph.output}
        self.fallbacks = 0  # batches scored whole because a search could not take them
        stage = density_stage(cut)
        self.density = stage if stage is not None and sums_agree(session) else None
        self._density_made = {stage.score, stage.chosen, stage.candidates} if stage is not None else set()

    def run(self, names: list[str], feed: dict[str, Any], options: Any = None) -> list[Any]:
        """The outputs ``names`` for ``feed``, as the whole graph's session would return them."""
        if len(next(iter(feed.values()))) < self.min_rows:
            if options is None:
                return list(self._whole.run(names, feed, options))
            # The core's calls with run options shrink the sessions' memory arenas after its load-time
            # timings: every session of the split takes them.
            self._whole.run(names, feed, options)
        head = dict(zip(self.cut.head_outputs, self._head.run(self.cut.head_outputs, feed, options))) \
            if self._head is not None else {}
        if self.density is not None and self._density_made.issuperset(names):
            return self._compiled_density(names, feed, head, options)
        found: dict[str, Any] = {}
        for s, pre in zip(self.cut.searches, self._prefilters):
            x = head[s.x] if s.x in head else feed[s.x]
            exact = None
            if s.exact is not None:
                exact = (head[s.exact.x] if s.exact.x in head else feed[s.exact.x], s.exact.rows)
            out, failed, sq = candidates(x, s.weights, s.kk, exact, pre=pre)
            if failed:
                self.fallbacks += 1
                return list(self._whole.run(names, feed, options))
            found[s.output] = out
            if s.exact is not None:
                found[s.exact.output] = sq
        for c in self.cut.counts:
            found[c.output] = counts(head[c.x] if c.x in head else feed[c.x], c)
        tail_names = [n for n in names if n in self._tail_made]
        tail_feed = {n: head[n] if n in head else found[n] if n in found else feed[n] for n in self.cut.tail_inputs}
        tail = dict(zip(tail_names, self._tail.run(tail_names, tail_feed, options))) if tail_names else {}
        return [tail[n] if n in tail else found[n] if n in found else head[n] for n in names]

    def _compiled_density(self, names: list[str], feed: dict[str, Any], head: dict[str, Any],
                          options: Any) -> list[Any]:
        """``names`` (of the score, the weights, the candidates) with no tail call: LOF's density compiled."""
        stage, s = self.density, self.cut.searches[0]
        assert stage is not None and s.exact is not None
        x = head[s.x] if s.x in head else feed[s.x]
        out, failed, sums = candidates(x, s.weights, s.kk, (head[s.exact.x] if s.exact.x in head else feed[s.exact.x],
                                                            s.exact.rows), pre=self._prefilters[0], sums=True)
        got = density(sums, out, stage) if not failed and sums is not None else None
        if got is None:
            self.fallbacks += 1
            return list(self._whole.run(names, feed, options))
        made = {stage.score: got[0], stage.chosen: got[1], stage.candidates: out}
        return [made[n] for n in names]


def counts_available() -> bool:
    """Whether the compiled ECDF counts (:func:`counts`) were built."""
    return grading is not None and hasattr(grading, "prefix_counts")


def counts(x: NDArray[np.float32], count: PrefixCount) -> NDArray[np.int64]:
    """``count``'s output for rows ``x`` [N, D]: per cell, how many of its column's values are <= it (< if strict)."""
    out = np.empty(x.shape, dtype=np.int64)
    grading.prefix_counts(np.ascontiguousarray(x, dtype=np.float32), count.values, out, count.strict)
    return out


def grid_available() -> bool:
    """Whether the compiled step-grid lookup (:class:`GridSplit`) was built."""
    return grading is not None


class GridSplit:
    """A histogram graph run as its compiled step-grid lookup, then a tail call: ``run(names, feed, options)``.

    The lookup (:func:`stream.serving_graph.grid_cut`; HBOS's bins) takes
    nine small onnxruntime nodes per feature value, ~35 of a 256-row HBOS
    graph's ~53 µs on the 2-core reference machine; compiled (AVX-512
    gathers where the CPU has them) it takes a few, and rounds each step as
    the nodes do, so the tail (the sums, the shares) gets the graph's terms
    bit for bit.  The rows must hold no NaN: the core uses it for the graph
    without imputation, which serves only NaN-free batches.
    """

    def __init__(self, cut: GridCut, session: Any) -> None:
        if grading is None:
            raise RuntimeError("the compiled step-grid lookup is not available")
        self.cut = cut
        self._tail = session(cut.tail)
        self._tail_made = {o.name for o in cut.tail.graph.output}
        self.total: float | None = None  # the tail's constant, where the tail runs compiled too (tail_agrees)

    def _terms(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        c = self.cut
        x = np.ascontiguousarray(x, dtype=np.float32)
        terms = np.empty(x.shape, dtype=np.float32)
        grading.grid_terms(x, terms, c.pos_scale, c.pos_bias, c.flat_scale, c.flat_bias, c.low, c.high,
                           c.thresholds, c.values)
        return terms

    def _compiled_tail(self, terms: NDArray[np.float32], total: float, names: list[str]) -> list[Any]:
        score = np.empty(terms.shape[0], dtype=np.float32)
        shares = np.empty(terms.shape, dtype=np.float32) if "contributions" in names else None
        grading.grid_tail(terms, score, shares, total)
        return [score if n == "score" else shares if n == "contributions" else terms for n in names]

    def tail_agrees(self, X: NDArray[np.float32], total: float) -> bool:
        """Whether the compiled tail (``grading.grid_tail``, adding ``total``) gives the graph tail's bits on ``X``.

        Set :attr:`total` to run the tail compiled where it does.
        """
        terms = self._terms(X)
        names = [n for n in ("score", "contributions") if n in self._tail_made]
        got = self._compiled_tail(terms, total, names)
        want = self._tail.run(names, {self.cut.terms: terms}, None)
        return all(np.array_equal(a.view(np.uint32), np.asarray(b).view(np.uint32)) for a, b in zip(got, want))

    def run(self, names: list[str], feed: dict[str, Any], options: Any = None) -> list[Any]:
        """The outputs ``names`` for ``feed``, as the whole graph's session would return them."""
        c = self.cut
        terms = self._terms(feed[c.x])
        if self.total is not None and options is None and len(terms) and all(
                n in ("score", "contributions", c.terms) for n in names):
            return self._compiled_tail(terms, self.total, names)
        tail_feed = {c.terms: terms}
        for name in c.tail_inputs[1:]:
            tail_feed[name] = feed[name]
        asked = [n for n in names if n in self._tail_made]
        made = dict(zip(asked, self._tail.run(asked, tail_feed, options))) if asked else {}
        return [terms if n == c.terms else made[n] for n in names]


def pca_available() -> bool:
    """Whether PCA's compiled score graph (:class:`PcaSplit`) was built."""
    return grading is not None and hasattr(grading, "pca_scores")


class _ScoreGraph:
    """A score-only graph computed compiled: ``run(names, feed, options)`` like a C session.

    Whether the bits agree depends on the onnxruntime build, so
    :meth:`agrees` compares them with the graph's session, and the core
    keeps the split only where every one matches.  Calls with run options,
    or asking for anything but ``score``, go to the whole graph.
    """

    def __init__(self, cut: Any, whole: Any) -> None:
        self.cut = cut
        self._whole = whole

    def _scores(self, x: NDArray[np.float32]) -> NDArray[np.float32] | None:
        raise NotImplementedError

    def agrees(self, X: NDArray[np.float32]) -> bool:
        """Whether the compiled scores of ``X`` are the graph's, bit for bit."""
        got = self._scores(X)
        want = self._whole.run(["score"], {self.cut.x: X}, None)[0]
        return got is not None and got.shape == want.shape and bool(np.array_equal(got.view(np.uint32),
                                                                                   want.view(np.uint32)))

    def run(self, names: list[str], feed: dict[str, Any], options: Any = None) -> list[Any]:
        """The outputs ``names`` for ``feed``, as the whole graph's session would return them."""
        if options is None and all(n == "score" for n in names):
            out = self._scores(feed[self.cut.x])
            if out is not None:
                return [out for _ in names]
        return list(self._whole.run(names, feed, options))


class PcaSplit(_ScoreGraph):
    """PCA's score graph computed compiled (``grading.pca_scores``).

    The graph (:func:`stream.serving_graph.pca_cut`) is nine small
    onnxruntime nodes, two of them ``Gemm``; the compiled code does each step
    in onnxruntime's order of operations (MLAS's multiply-add chains for the
    products), on eight rows at a time.
    """

    def __init__(self, cut: PcaCut, whole: Any) -> None:
        if not pca_available():
            raise RuntimeError("the compiled PCA score is not available")
        super().__init__(cut, whole)

    def _scores(self, x: NDArray[np.float32]) -> NDArray[np.float32] | None:
        c = self.cut
        out = np.empty(x.shape[0], dtype=np.float32)
        ok = grading.pca_scores(np.ascontiguousarray(x, dtype=np.float32), out, c.scale, c.bias, c.w1, c.c1, c.w2,
                                c.w, c.medians)
        return out if ok else None


def forest_available() -> bool:
    """Whether IForest's compiled score graph (:class:`ForestSplit`) was built."""
    return grading is not None and hasattr(grading, "forest_scores")


class ForestSplit(_ScoreGraph):
    """IForest's score graph computed compiled (``grading.forest_scores``).

    onnxruntime's ``TreeEnsembleRegressor`` walks each row down each tree
    node by node, a branch the CPU mispredicts about every other level.
    The compiled walk holds the trees as complete binary trees
    (:func:`stream.serving_graph.forest_cut`), so a node's children are at
    ``2i + 1`` and ``2i + 2`` and a level is a comparison and an add, no
    branch; with AVX-512 it walks 16 rows at a time (gathers of the nodes'
    columns, thresholds and the rows' values) and four trees at once.  The
    leaf values are added in tree order from zero, as onnxruntime adds them
    on one thread.
    """

    def __init__(self, cut: ForestCut, whole: Any, *, portable: bool = False) -> None:
        if not forest_available():
            raise RuntimeError("the compiled forest is not available")
        super().__init__(cut, whole)
        self.portable = portable

    def _scores(self, x: NDArray[np.float32]) -> NDArray[np.float32] | None:
        c = self.cut
        out = np.empty(x.shape[0], dtype=np.float32)
        grading.forest_scores(np.ascontiguousarray(x, dtype=np.float32), out, c.feat, c.thr, c.leaf, c.depth,
                              c.factor, c.base, c.medians, self.portable)
        return out
