"""Exact per-column threshold counts in ONNX: ``(thresholds < z).sum()`` for every value.

Shared by the histogram detectors (HBOS bins, LODA projection bins): a grid
lookup with one exact comparison (:class:`StepGrid`), or one comparison per
threshold (:func:`count_below`) where no grid of bounded size fits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["StepGrid", "count_below"]

_INT32 = 6  # onnx TensorProto.INT32


@dataclass(frozen=True)
class StepGrid:
    """Count the thresholds below a value with one arithmetic step and one lookup.

    Each column ``j`` of sorted ``thresholds`` [K, M] gets a uniform grid
    ``t = (z - shift_j) * scale_j`` (``scale_j`` a power of two, so the product
    is exact and ``t`` is monotone in ``z``), truncated to a cell index.  The
    grid is fine enough that each cell holds at most one distinct threshold,
    which the plan checks by computing the cells of the thresholds exactly as
    the graph does.  A value in cell ``c`` then has ``count_table[c]``
    thresholds in lower cells for sure, plus the cell's own ones exactly when it
    is above the cell's threshold: ``count = count_table[c + (z > cell_threshold[c])]``.
    The comparison is exact, so the count equals ``(thresholds < z).sum()``
    for every value of the dtype, on the edges and at infinity included.
    """

    shift: NDArray[np.floating]  # [M], the dtype of the thresholds
    scale: NDArray[np.floating]  # [M], powers of two
    cells: NDArray[np.int64]  # [K, M], the cell of each threshold
    n_cells: int
    thresholds: NDArray[np.floating]  # [K, M]

    @classmethod
    def fit(cls, thresholds: NDArray[np.floating], *, max_cells: int = 1 << 14) -> StepGrid | None:
        """The grid for ``thresholds`` [K, M] (columns non-decreasing), or None past ``max_cells``."""
        dtype = thresholds.dtype.type
        info = np.finfo(dtype)
        k, m = thresholds.shape
        shift = thresholds[0].copy()
        scale = np.ones(m, dtype=dtype)
        cells = np.zeros((k, m), dtype=np.int64)
        with np.errstate(over="ignore", invalid="ignore"):
            for j in range(m):
                col = thresholds[:, j]
                distinct = np.unique(col)
                if distinct.size == 1:
                    continue
                gap = float(np.min(np.diff(distinct.astype(np.float64))))
                p = max(int(np.ceil(-np.log2(gap))) if gap > 0 else info.maxexp, info.minexp + 1)
                while True:
                    if p >= info.maxexp:
                        return None
                    s = dtype(2.0**p)
                    prod, bias = col * s, -shift[j] * s
                    t = prod + bias  # as the graph: Mul (exact) then Add
                    exact = np.all(prod / s == col) and bias / s == -shift[j]
                    if not (exact and np.all(np.isfinite(t)) and t[-1] < max_cells):
                        return None
                    c = t.astype(np.int64)
                    c_distinct = c[np.searchsorted(col, distinct)]
                    if np.all(np.diff(c_distinct) > 0):
                        break
                    p += 1
                scale[j], cells[:, j] = s, c
        return cls(shift=shift, scale=scale, cells=cells, n_cells=int(cells.max()) + 1, thresholds=thresholds)

    def count_table(self) -> NDArray[np.int64]:
        """[n_cells + 1, M]: how many thresholds lie in cells below each index."""
        idx = np.arange(self.n_cells + 1)[:, None, None]
        return np.asarray((self.cells[None] < idx).sum(axis=1), dtype=np.int64)

    def threshold_table(self) -> NDArray[np.floating]:
        """[n_cells, M]: each cell's threshold (+inf in a cell without one)."""
        table = np.full((self.n_cells, self.cells.shape[1]), np.inf, dtype=self.thresholds.dtype)
        np.put_along_axis(table, self.cells, self.thresholds, axis=0)
        return table

    def index(self, node: Callable[..., str], init: Callable[[str, NDArray[Any]], str], z: str) -> str:
        """Nodes giving ``c + (z > cell_threshold[c])`` (int32, [N, M]) for ``z`` [N, M]: index ``count_table``."""
        dtype = self.thresholds.dtype
        # z * scale + bias as a Mul and an Add: the scale is a power of two, so the product is
        # exact and the one rounding is the Add's, as in the export-time check.  (A
        # BatchNormalization does the same in one node on the CPU, but cuDNN raises its
        # epsilon to 1e-5, which would move the cells on CUDA.)
        t = node(
            "Add",
            [
                node("Mul", [z, init("grid_scale", self.scale)], name_hint="grid_scaled"),
                init("grid_bias", -self.shift * self.scale),
            ],
            name_hint="grid_position",
        )
        t = node(
            "Clip",
            [t, init("grid_low", np.array(0, dtype=dtype)), init("grid_high", np.array(self.n_cells - 1, dtype=dtype))],
            name_hint="grid_position_clipped",
        )
        cell = node("Cast", [t], to=_INT32, name_hint="grid_cell")
        edge = node("GatherElements", [init("grid_thresholds", self.threshold_table()), cell], axis=0, name_hint="grid_edge")
        above = node("Cast", [node("Less", [edge, z], name_hint="grid_above")], to=_INT32, name_hint="grid_step")
        return node("Add", [cell, above], name_hint="grid_index")


def count_below(
    node: Callable[..., str], init: Callable[[str, NDArray[Any]], str], z: str, thresholds: NDArray[np.floating]
) -> str:
    """Nodes giving ``(thresholds < z).sum()`` per column (int32, [N, M]) by comparing with each threshold."""
    z3 = node("Unsqueeze", [z, init("axis1", np.array([1], dtype=np.int64))], name_hint="z_rows")
    below = node("Cast", [node("Less", [init("thresholds", thresholds), z3])], to=_INT32, name_hint="below")
    return node("ReduceSum", [below, init("axes1", np.array([1], dtype=np.int64))], keepdims=0, name_hint="count")
