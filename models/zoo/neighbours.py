"""Nearest training rows, found alike natively and in the exported graph.

The distance-based detectors (KNN, LOF, OCSVM, CBLOF) keep a reference set
of training rows (or centres, or support vectors) and score a new row by its
Euclidean distances to them.  This module holds that shared arithmetic:

- :func:`subsample` caps the reference set at ``max_train`` rows, drawn
  without replacement with a fixed seed (0), so graphs stay small and fast;
- :class:`ReferenceSet` keeps the rows as given and centred on their mean,
  in float64 (centring keeps ``|x|^2 - 2 x.t + |t|^2`` from cancelling
  badly), and finds each row's ``k`` nearest reference rows;
- its ONNX twin does the same with nodes.

How the ``k`` nearest rows are found, in both paths: squared distances by
matrix products pick ``k + margin`` candidates, then the per-feature squared
differences to the candidates are recomputed exactly in float64 from the
rows as given.  Those exact differences rank the candidates (ties broken by
the lower row number), give the distances (no cancellation) and the
contributions, so a row's neighbours do not depend on the other rows of its
batch even where a matrix product rounds differently for different batch
sizes.

The margin covers rows that the matrix products rank on the wrong side of
the ``k``-th neighbour: rows at (or within rounding of) the ``k``-th
distance.  :meth:`ReferenceSet.settle_margin` sets it from the training
rows: 8 where some training row has its ``k + 1``-th nearest row at its
``k``-th distance, up to float64 rounding (duplicates, integer grids,
discrete features: ties at the boundary are the rule, and the 8 extra
candidates let the exact stage give them to the lower row numbers), 2 where
none has (continuous data: a misranking there needs two rows within float32
rounding of the ``k``-th distance, and two extra candidates cover it).  The
narrow margin makes LOF's graph about 12% faster (fewer candidates to
select, gather and rank).

The graph finds the candidates in float32: one MatMul of the centred query,
with a column of ones appended, against ``[-2 T'; |t|^2]`` (the reference
rows as columns) gives each squared distance less the query's own ``|x|^2``,
which ranks the rows alike.  The columns are split into groups of 64; the
``k + margin`` candidates lie within the ``k + margin`` groups of smallest minimum, so
one TopK runs over the group minima and a second over the chosen groups only
(entries above the largest chosen minimum lifted just above it, which spares
TopK most of its heap updates).  Only the ``k + margin`` candidates go on to
the float64 stage.  Where more reference rows than the margin sit within
float32 rounding of the ``k``-th distance (e.g. many rows at exactly equal
distances), which of them are neighbours is not fixed natively either.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from models.onnx_graph import GraphBuilder

__all__ = ["SUBSAMPLE_SEED", "ReferenceSet", "subsample", "to_float"]

#: Seed of the draw that caps a reference set at ``max_train`` rows.
SUBSAMPLE_SEED = 0
_DOUBLE = 11  # onnx.TensorProto.DOUBLE
_FLOAT = 1  # onnx.TensorProto.FLOAT
_MARGIN = 8  # extra candidates kept before the exact re-ranking where the training rows tie
_NARROW_MARGIN = 2  # ... where they do not
_TIE_PROBE_ROWS = 1000  # training rows whose k-th and k+1-th distances are compared
_TIE_TOLERANCE = 1e-9  # a gap below this share of the squared norms is a tie (float64 rounding)
_CHUNK_CELLS = 4_000_000  # float64 cells per temporary block (32 MB)
_GROUP = 64  # reference rows per group in the graph's two-step search
_FAR = 1e30  # partial squared distance of the padding columns


def subsample(X: NDArray[np.float32], max_train: int) -> NDArray[np.float32]:
    """At most ``max_train`` rows of ``X``, drawn without replacement (seed 0), in order.

    Raises
    ------
    ValueError
        If ``max_train`` is below 2.
    """
    if not isinstance(max_train, int | np.integer) or max_train < 2:
        raise ValueError(f"max_train must be an integer >= 2, got {max_train!r}")
    if X.shape[0] <= max_train:
        return X
    rng = np.random.default_rng(SUBSAMPLE_SEED)
    return X[np.sort(rng.choice(X.shape[0], size=int(max_train), replace=False))]


class ReferenceSet:
    """Rows to measure Euclidean distances to, as given and centred on their mean, in float64.

    Parameters
    ----------
    rows : ndarray, shape (M, D)
        The reference rows (training rows, support vectors, centres).
    center : ndarray, shape (D,), optional
        The point subtracted from every row and query; the rows' mean by default.

    Examples
    --------
    >>> ref = ReferenceSet(np.array([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0]]))
    >>> sq, idx = ref.nearest(np.array([[0.0, 0.0]], dtype=np.float32), 2)
    >>> idx.tolist(), sq.sum(axis=2).tolist()
    ([[0, 2]], [[0.0, 1.0]])
    """

    def __init__(
        self, rows: NDArray[np.floating], center: NDArray[np.floating] | None = None
    ) -> None:
        self.raw = np.array(rows, dtype=np.float64)
        self.center = self.raw.mean(axis=0) if center is None else np.asarray(center, np.float64)
        self.rows = np.ascontiguousarray(self.raw - self.center)
        self.sq_norms = (self.rows**2).sum(axis=1)
        self.margin = _MARGIN

    def settle_margin(self, k: int) -> int:
        """Set and return the candidate margin for ``k`` neighbours from the rows themselves.

        Up to 1,000 rows (seed 0) each get their ``k``-th and ``k + 1``-th
        nearest other rows; if any gap is below ``1e-9`` times the row's
        squared norm plus the largest squared norm (both centred), that is
        equal up to float64 rounding, the rows tie at the boundary and the
        margin stays 8, else it is 2.
        """
        m = len(self)
        if k + 1 >= m:  # every other row is a neighbour, or nearly
            self.margin = _MARGIN
            return self.margin
        rng = np.random.default_rng(SUBSAMPLE_SEED)
        probe = np.sort(rng.choice(m, size=min(m, _TIE_PROBE_ROWS), replace=False))
        largest = self.sq_norms.max()
        tied = False
        step = max(1, _CHUNK_CELLS // m)
        for lo in range(0, probe.size, step):
            rows = probe[lo : lo + step]
            sq = self.approx_sq_distances(self.rows[rows])
            sq[np.arange(rows.size), rows] = np.inf
            part = np.partition(sq, [k - 1, k], axis=1)
            gap = part[:, k] - part[:, k - 1]
            if np.any(gap <= _TIE_TOLERANCE * (self.sq_norms[rows] + largest)):
                tied = True
                break
        self.margin = _MARGIN if tied else _NARROW_MARGIN
        return self.margin

    def _margin(self) -> int:
        """The candidate margin (8 for sets pickled before it was chosen)."""
        return int(getattr(self, "margin", _MARGIN))

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def n_candidates(self, k: int) -> int:
        """How many candidates the graph re-ranks exactly for ``k`` neighbours: ``min(k + margin, M)``."""
        return min(k + self._margin(), len(self))

    def centred(self, X: NDArray[np.floating]) -> NDArray[np.float64]:
        """Queries ``X`` moved like the reference rows, in float64."""
        return np.asarray(X, dtype=np.float64) - self.center

    def approx_sq_distances(self, Xc: NDArray[np.float64]) -> NDArray[np.float64]:
        """Squared distances [N, M] of centred queries by matrix products (may round)."""
        sq = (Xc**2).sum(axis=1)[:, None] - 2.0 * (Xc @ self.rows.T) + self.sq_norms
        return np.asarray(np.maximum(sq, 0.0), dtype=np.float64)

    def nearest(
        self, X: NDArray[np.floating], k: int, *, exclude_self: bool = False
    ) -> tuple[NDArray[np.float64], NDArray[np.intp]]:
        """The ``k`` nearest reference rows of each query, nearest first.

        Parameters
        ----------
        X : ndarray, shape (N, D)
            Queries (not centred).
        k : int
            Neighbours wanted, at most ``len(self)`` (``len(self) - 1`` with
            ``exclude_self``).
        exclude_self : bool
            The queries are the reference rows themselves, in order: row ``i``
            is not its own neighbour (duplicates of it still are).

        Returns
        -------
        sq_diff : ndarray of float64, shape (N, k, D)
            Per-feature squared differences to each neighbour.
        index : ndarray of intp, shape (N, k)
            The neighbours' row numbers; ties go to the lower number.
        """
        X64 = np.asarray(X, dtype=np.float64)
        Xc = X64 - self.center
        raw = self._raw()
        n, m = Xc.shape[0], len(self)
        kk = min(k + self._margin(), m - int(exclude_self))
        sq_diff = np.empty((n, k, Xc.shape[1]), dtype=np.float64)
        index = np.empty((n, k), dtype=np.intp)
        step = max(1, _CHUNK_CELLS // max(m, kk * Xc.shape[1]))
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            approx = self.approx_sq_distances(Xc[lo:hi])
            if exclude_self:
                approx[np.arange(hi - lo), np.arange(lo, hi)] = np.inf
            cand = np.argpartition(approx, kk - 1, axis=1)[:, :kk]
            diff = (X64[lo:hi, None, :] - raw[cand]) ** 2
            exact = diff.sum(axis=2)
            order = np.lexsort((cand, exact), axis=1)[:, :k]
            index[lo:hi] = np.take_along_axis(cand, order, axis=1)
            sq_diff[lo:hi] = np.take_along_axis(diff, order[:, :, None], axis=1)
        return sq_diff, index

    # --- the same in ONNX --------------------------------------------------

    def onnx_centred(self, g: GraphBuilder, x: str) -> str:
        """Nodes casting the float32 ``x`` [N, D] to float64 and centring it."""
        x64 = g.node("Cast", [x], to=_DOUBLE, name_hint="x64")
        return g.node("Sub", [x64, g.initializer("center", self.center)], name_hint="x_centred")

    def onnx_partial_sq_distances(
        self,
        g: GraphBuilder,
        xc: str,
        *,
        scale: float = 1.0,
        offset: NDArray[np.float64] | None = None,
    ) -> str:
        """One Gemm: ``scale * (|t|^2 - 2 x.t) + offset`` [N, M] for centred ``xc``.

        That is ``scale`` times the squared distances less each query's own
        ``|x|^2``, which ranks the reference rows alike; leaving it out (and
        folding the constants into the Gemm) saves whole [N, M] passes.
        """
        weights = g.initializer("ref_t", np.ascontiguousarray(-2.0 * scale * self.rows.T))
        bias = scale * self.sq_norms + (0.0 if offset is None else offset)
        return g.node("Gemm", [xc, weights, g.initializer("ref_bias", bias[None, :])])

    def onnx_query_sq_norms(self, g: GraphBuilder, xc: str) -> str:
        """``|x|^2`` [N, 1] of centred ``xc``."""
        axes = g.initializer("axes1", np.array([1], dtype=np.int64))
        return g.node("ReduceSum", [g.node("Mul", [xc, xc]), axes], keepdims=1, name_hint="x_sq")

    def onnx_nearest(self, g: GraphBuilder, x: str, k: int) -> tuple[str, str, str]:
        """Nodes for :meth:`nearest` of the float32 queries ``x`` (not centred).

        Returns the names of the squared distances [N, k] (float64, nearest
        first), the neighbours' row numbers [N, k] (int64) and the per-feature
        squared differences summed over the ``k`` neighbours [N, D] (float64).
        """
        kk = self.n_candidates(k)
        cand = self._onnx_candidates(g, x, kk)
        if kk > 1:  # ascending row numbers, so that exact ties go to the lower number
            cand, _ = _smallest_sorted(g, cand, kk, "n_candidates", "candidates_in_order")
        sq_diff, sq = self._onnx_exact(g, x, cand, kk)
        sq_k, pos = _smallest_sorted(g, sq, k, "k", "nearest")
        index = g.node("GatherElements", [cand, pos], axis=1, name_hint="index")
        # Per-feature sums over the k chosen candidates: a 0/1 weight per candidate, one MatMul.
        hit = g.node(
            "Equal",
            [
                g.node("Unsqueeze", [pos, _int64(g, "axes2", [2])]),
                _int64(g, "positions", list(range(kk))),
            ],
        )
        onehot = g.node("Cast", [hit], to=_DOUBLE)
        weight = g.node(
            "ReduceSum", [onehot, _int64(g, "axes1", [1])], keepdims=1, name_hint="chosen"
        )
        summed = g.node("MatMul", [weight, sq_diff])
        per_feature = g.node("Squeeze", [summed, _int64(g, "axes1", [1])], name_hint="per_feature")
        return sq_k, index, per_feature

    def onnx_nearest_set(self, g: GraphBuilder, x: str, k: int) -> tuple[str, str, str, str, str]:
        """Nodes for the set of :meth:`nearest` neighbours of the float32 queries ``x``, unordered.

        Cheaper than :meth:`onnx_nearest` where only the set matters: no sort.
        Returns the names of the candidates' squared distances [N, kk]
        (float64), their row numbers [N, kk] (int64), a float64 0/1 weight
        [N, kk] marking the ``k`` neighbours (the same rows as
        :meth:`nearest` picks, ties to the lower row number), the
        per-feature squared differences summed over them [N, D] (float64)
        and the ``k``-th smallest squared distance [N, 1] (float64; the
        same value whichever tied row is the ``k``-th), with
        ``kk = min(k + margin, M)``.

        The ``k``-th smallest exact distance ``t`` (a TopK) splits the
        candidates: those below ``t`` are all neighbours; those at ``t``
        fill the remaining places by row number, which a second TopK over
        the key ``-1`` (below ``t``), row number (at ``t``), ``inf`` (above)
        picks without a sort.  Each TopK keeps whichever side is shorter:
        the ``k`` smallest, or the ``kk - k + 1`` largest (the ``k``-th
        smallest is their minimum).
        """
        kk = self.n_candidates(k)
        cand = self._onnx_candidates(g, x, kk)
        sq_diff, sq = self._onnx_exact(g, x, cand, kk)
        if kk > k:
            kth = _kth_smallest(g, sq, k, kk, "kth")
            at_or_above = g.node(
                "Where",
                [
                    g.node("Equal", [sq, kth]),
                    g.node("Cast", [cand], to=_DOUBLE),
                    g.initializer("inf", np.array(np.inf)),
                ],
            )
            key = g.node(
                "Where",
                [g.node("Less", [sq, kth]), g.initializer("minus_one", np.array(-1.0)), at_or_above],
                name_hint="tie_key",
            )
            last = _kth_smallest(g, key, k, kk, "last_key")
            hit = g.node("LessOrEqual", [key, last])
            weight = g.node("Cast", [hit], to=_DOUBLE, name_hint="chosen")
        else:  # every candidate is a neighbour
            one = g.initializer("one64", np.array(1.0))
            weight = g.node("Expand", [one, g.node("Shape", [sq])], name_hint="chosen")
            kth = g.node("ReduceMax", [sq], axes=[1], keepdims=1, name_hint="kth")
        summed = g.node("MatMul", [g.node("Unsqueeze", [weight, _int64(g, "axes1", [1])]), sq_diff])
        per_feature = g.node("Squeeze", [summed, _int64(g, "axes1", [1])], name_hint="per_feature")
        return sq, cand, weight, per_feature, kth

    def _onnx_exact(self, g: GraphBuilder, x: str, cand: str, kk: int) -> tuple[str, str]:
        """Exact float64 per-feature squared differences [N, kk, D] to ``cand`` [N, kk] and their sums [N, kk].

        The query is tiled to ``[N, kk, D]`` before the subtraction:
        onnxruntime broadcasts ``[N, 1, D]`` against ``[N, kk, D]`` span by
        span of ``D`` values; the Tile plus a plain Sub measured 2% faster on
        LOF's score-only graph at 256 rows (paired calls), equal on the whole
        graph.
        """
        d = self.rows.shape[1]
        rows = g.node("Gather", [g.initializer("ref_raw", self._raw()), cand], axis=0)
        x64 = g.node("Cast", [x], to=_DOUBLE, name_hint="x64")
        tiled = g.node("Tile", [x64, _int64(g, "candidate_repeats", [1, kk])], name_hint="x_tiled")
        x3 = g.node("Reshape", [tiled, _int64(g, "candidate_shape", [0, kk, d])], name_hint="x_per_candidate")
        diff = g.node("Sub", [x3, rows], name_hint="diff")
        sq_diff = g.node("Mul", [diff, diff], name_hint="sq_diff")
        sq = g.node(
            "ReduceSum", [sq_diff, _int64(g, "axes2", [2])], keepdims=0, name_hint="sq_dist"
        )
        return sq_diff, sq

    def _raw(self) -> NDArray[np.float64]:
        """The rows as given (rebuilt from the centred ones for sets pickled without them)."""
        return np.asarray(
            self.rows + self.center if getattr(self, "raw", None) is None else self.raw
        )

    def _onnx_candidates(self, g: GraphBuilder, x: str, kk: int) -> str:
        """Nodes for the ``kk`` rows [N, kk] nearest ``x`` by float32 matrix products, in no order."""
        m, d = self.rows.shape
        size, groups = _GROUP, -(-m // _GROUP)
        grouped = groups >= 2 * kk
        width = groups * size if grouped else m
        center = self.center.astype(np.float32)
        rows = self._raw() - center.astype(np.float64)
        weights = np.zeros((d + 1, width))
        weights[:d, :m] = -2.0 * rows.T
        weights[d, :m] = (rows**2).sum(axis=1)
        weights[d, m:] = _FAR
        xc = g.node("Sub", [x, g.initializer("center32", center)], name_hint="x_centred")
        one = g.initializer("one32", np.array(1.0, dtype=np.float32))
        xa = g.node("Pad", [xc, _int64(g, "pad_one", [0, 0, 0, 1]), one], name_hint="x_one")
        partial = g.node(
            "MatMul",
            [xa, g.initializer("ref_weights", weights.astype(np.float32))],
            name_hint="partial_sq",
        )
        kk_t = _int64(g, "n_candidates", [kk])
        if not grouped:
            _, cand = g.node("TopK", [partial, kk_t], n_outputs=2, axis=1, largest=0, sorted=0)
            return cand
        p3 = g.node("Reshape", [partial, _int64(g, "group_shape", [0, groups, size])])
        mins = g.node("ReduceMin", [p3], axes=[2], keepdims=0, name_hint="group_min")
        g_min, gid = g.node("TopK", [mins, kk_t], n_outputs=2, axis=1, largest=0, sorted=0)
        picked = g.node(
            "GatherND", [p3, g.node("Unsqueeze", [gid, _int64(g, "axes2", [2])])], batch_dims=1
        )
        values = g.node("Reshape", [picked, _int64(g, "picked_shape", [0, kk * size])])
        # At least kk values lie at or below the largest chosen group minimum:
        # lift the rest just above it, so the TopK below rarely updates its heap.
        values = g.node(
            "Min", [values, _just_above(g, g.node("ReduceMax", [g_min], axes=[1], keepdims=1))]
        )
        _, pos = g.node("TopK", [values, kk_t], n_outputs=2, axis=1, largest=0, sorted=0)
        size_t = _int64(g, "group_size", size)
        group = g.node("GatherElements", [gid, g.node("Div", [pos, size_t])], axis=1)
        return g.node(
            "Add",
            [g.node("Mul", [group, size_t]), g.node("Mod", [pos, size_t])],
            name_hint="candidates",
        )


def _just_above(g: GraphBuilder, tau: str) -> str:
    """``tau`` (float32) nudged up by about two units in the last place, never onto ``tau``."""
    lift = g.node(
        "Mul", [g.node("Abs", [tau]), g.initializer("ulp2", np.array(2.0**-22, dtype=np.float32))]
    )
    return g.node(
        "Add",
        [tau, g.node("Add", [lift, g.initializer("tiny", np.array(1e-30, dtype=np.float32))])],
    )


def _smallest_sorted(g: GraphBuilder, t: str, k: int, k_hint: str, hint: str) -> tuple[str, str]:
    """The ``k`` smallest values of each row of ``t`` and their positions, ascending (ties: lower position first)."""
    values, pos = g.node(
        "TopK", [t, _int64(g, k_hint, [k])], n_outputs=2, axis=1, largest=0, sorted=1, name_hint=hint
    )
    return values, pos


def _kth_smallest(g: GraphBuilder, t: str, k: int, n: int, hint: str) -> str:
    """The ``k``-th smallest of the ``n`` values in each row of ``t`` [N, n], as [N, 1].

    One TopK over whichever side is shorter: the largest of the ``k``
    smallest or the smallest of the ``n - k + 1`` largest (the same value,
    ties included).  TopK's cost grows with the number of values it keeps.
    """
    if k <= n - k + 1:
        top, _ = g.node("TopK", [t, _int64(g, "k", [k])], n_outputs=2, axis=1, largest=0, sorted=0)
        return g.node("ReduceMax", [top], axes=[1], keepdims=1, name_hint=hint)
    rest = _int64(g, "n_not_below", [n - k + 1])
    top, _ = g.node("TopK", [t, rest], n_outputs=2, axis=1, largest=1, sorted=0)
    return g.node("ReduceMin", [top], axes=[1], keepdims=1, name_hint=hint)


def _int64(g: GraphBuilder, hint: str, values: list[int] | int) -> str:
    return g.initializer(hint, np.array(values, dtype=np.int64))


def to_float(g: GraphBuilder, x: str) -> str:
    """A Cast node from float64 to the float32 the graph outputs."""
    return g.node("Cast", [x], to=_FLOAT, name_hint="f32")
