"""Calibration, threshold and severity of raw scores in one pass; compiled score graphs (``grading.c``)."""

from typing import Any

class Grader:
    def __init__(
        self, base_x: Any, base_y: Any, slope: Any, next_knot: Any, start: Any, inv: float, k: int,
        first: float, last: float, right: float, *, fix_right: bool, threshold: float, cuts: Any,
        alerting_only: bool,
    ) -> None: ...
    def run(self, raw: Any, score: Any, anomaly: Any, severity: Any, rows: Any, /) -> int: ...

def grid_terms(
    x: Any, out: Any, pos_scale: Any, pos_bias: Any, flat_scale: Any, flat_bias: Any, low: float, high: float,
    thresholds: Any, values: Any, portable: bool = ..., /,
) -> None: ...

def pca_scores(
    x: Any, out: Any, scale: Any, bias: Any, w1: Any, c1: Any, w2: Any, w: Any, medians: Any, /,
) -> bool: ...

def grid_tail(terms: Any, score: Any, shares: Any, total: float, /) -> None: ...

def forest_scores(
    x: Any, out: Any, feat: Any, thr: Any, leaf: Any, depth: int, factor: float, base: float, medians: Any,
    portable: bool = ..., /,
) -> None: ...

def prefix_counts(x: Any, values: Any, out: Any, strict: bool, portable: bool = ..., /) -> None: ...
