from __future__ import annotations

import numpy as np

from models.reference import BINS, InputReference, bin_index


def test_bin_index_counts_the_edges_at_or_below_each_value() -> None:
    rng = np.random.default_rng(5)
    X = rng.integers(0, 6, size=(300, 4)).astype(np.float64)  # many values exactly on edges
    ref = InputReference.fit(X, ["a", "b", "c", "d"])
    probe = np.concatenate([X, [[np.inf, -np.inf, np.nan, 2.5]]])
    idx = bin_index(probe, ref.edges)
    want = np.stack([np.searchsorted(ref.edges[j], probe[:, j], side="right") for j in range(4)], axis=1)
    want[np.isnan(probe)] = BINS
    np.testing.assert_array_equal(idx, want)
    assert idx[-1, 0] == BINS - 1 and idx[-1, 1] == 0 and idx[-1, 2] == BINS
