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
"""

from __future__ import annotations

import ctypes
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from stream.serving_graph import NeighbourCut

__all__ = ["MIN_ROWS", "NeighbourSplit", "available", "candidates", "library_path"]

log = logging.getLogger(__name__)

_LIB_NAME = "libanomstream_neighbours.so"
#: Batches below this many rows run the whole graph: the two calls around the search cost more than it
#: saves.  ``Scorer.score`` compiled ÷ whole graph, alternating (2026-11-23): KNN 1.13 at 8 rows, 1.07 at
#: 16, 0.89 at 32; LOF 1.00, 0.88, 0.75; the ensemble holding KNN 1.04, 0.99, 0.97.
MIN_ROWS = 24
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
        lib.anomstream_candidates.argtypes = [p, i, i, p, p, i, i, p, p, p, p, ctypes.c_int64, p]
        lib.anomstream_candidates.restype = i
        lib.anomstream_scratch_floats.argtypes = [i, i]
        lib.anomstream_scratch_floats.restype = ctypes.c_size_t
        _lib = lib
        return lib


def available() -> bool:
    """Whether the compiled search is built and this CPU runs it."""
    return _library() is not None


def candidates(x: NDArray[np.float32], weights: NDArray[np.float32], kk: int,
               exact: tuple[NDArray[np.float32], NDArray[np.float64]] | None = None, *,
               center: NDArray[np.float32] | None = None,
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
    else None.  Raises ``RuntimeError`` when the library is missing or the
    sizes are refused.
    """
    lib = _library()
    if lib is None:
        raise RuntimeError("the compiled neighbour search is not available")
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    width = weights.shape[1]
    if weights.shape[0] != d + 1:
        raise RuntimeError(f"weights {weights.shape} for {d} features")
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
        sq = np.empty((n, kk, d), dtype=np.float64)
    failed = lib.anomstream_candidates(
        x.ctypes.data, n, d, center.ctypes.data, weights.ctypes.data, width, kk, out.ctypes.data,
        scratch.ctypes.data, None if xs is None else xs.ctypes.data, None if rows is None else rows.ctypes.data,
        0 if rows is None else rows.shape[0], None if sq is None else sq.ctypes.data)
    if failed < 0:
        raise RuntimeError(f"compiled neighbour search refused sizes d={d}, width={width}, kk={kk}")
    return out, int(failed), sq


class NeighbourSplit:
    """A graph run as head call, compiled searches, tail call: ``run(names, feed, options)`` like a C session.

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
        if _library() is None:
            raise RuntimeError("the compiled neighbour search is not available")
        self.cut = cut
        self._head = session(cut.head) if cut.head is not None else None
        self._tail = session(cut.tail)
        self._whole = whole
        self._tail_made = {o.name for o in cut.tail.graph.output}
        self.fallbacks = 0  # batches scored whole because a search could not take them

    def run(self, names: list[str], feed: dict[str, Any], options: Any = None) -> list[Any]:
        """The outputs ``names`` for ``feed``, as the whole graph's session would return them."""
        if len(next(iter(feed.values()))) < MIN_ROWS:
            if options is None:
                return list(self._whole.run(names, feed, options))
            # The core's calls with run options shrink the sessions' memory arenas after its load-time
            # timings: every session of the split takes them.
            self._whole.run(names, feed, options)
        head = dict(zip(self.cut.head_outputs, self._head.run(self.cut.head_outputs, feed, options))) \
            if self._head is not None else {}
        found: dict[str, Any] = {}
        for s in self.cut.searches:
            x = head[s.x] if s.x in head else feed[s.x]
            exact = None
            if s.exact is not None:
                exact = (head[s.exact.x] if s.exact.x in head else feed[s.exact.x], s.exact.rows)
            out, failed, sq = candidates(x, s.weights, s.kk, exact)
            if failed:
                self.fallbacks += 1
                return list(self._whole.run(names, feed, options))
            found[s.output] = out
            if s.exact is not None:
                found[s.exact.output] = sq
        tail_names = [n for n in names if n in self._tail_made]
        tail_feed = {n: head[n] if n in head else found[n] if n in found else feed[n] for n in self.cut.tail_inputs}
        tail = dict(zip(tail_names, self._tail.run(tail_names, tail_feed, options))) if tail_names else {}
        return [tail[n] if n in tail else found[n] if n in found else head[n] for n in names]
