"""Calibration: the knot lookup the core uses on large batches equals np.interp bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from models.calibration import Calibration, KnotLookup


def _training_scores(kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "gamma":
        return rng.gamma(2.0, 1.0, 10_000)
    if kind == "tiny":  # raw scores of order 1e-6, knots crowded in the body
        return (rng.normal(size=10_000) ** 2) * 1e-6
    if kind == "ties":  # few distinct values: many knots collapse
        return np.round(rng.gamma(2.0, 1.0, 10_000), 1)
    return np.concatenate([rng.normal(size=9_990), rng.uniform(50, 1e6, 10)])  # heavy upper tail


@pytest.mark.parametrize("kind", ["gamma", "tiny", "ties", "tail"])
def test_lookup_equals_np_interp_bit_for_bit(kind: str) -> None:
    rng = np.random.default_rng(1)
    scores = _training_scores(kind, rng)
    cal = Calibration.fit(scores)
    xp, fp = np.asarray(cal.raw), np.asarray(cal.calibrated)
    lookup = cal.lookup()
    assert lookup.k >= 1 and lookup.cells >= 64
    probes = np.concatenate([
        rng.choice(scores, 50_000) * rng.uniform(0.95, 1.05, 50_000), xp,
        np.nextafter(xp, np.inf), np.nextafter(xp, -np.inf),
        [np.nan, np.inf, -np.inf, -1e300, 1e300, 0.0, -0.0],
    ])
    want = np.interp(probes, xp, fp, left=0.0, right=1.0)
    got = lookup(probes)
    assert np.array_equal(got, want, equal_nan=True)
    p32 = np.clip(probes, -1e30, 1e30).astype(np.float32)  # the core's raw scores are float32
    assert np.array_equal(lookup(p32), np.interp(p32, xp, fp, left=0.0, right=1.0), equal_nan=True)


def test_lookup_honours_a_right_value_other_than_the_last_knot() -> None:
    xp, fp = np.array([0.0, 1.0, 2.0]), np.array([0.1, 0.4, 0.7])
    x = np.array([-5.0, 0.0, 0.5, 2.0, 2.5, np.inf])
    assert np.array_equal(KnotLookup(xp, fp, left=-1.0, right=9.0)(x), np.interp(x, xp, fp, left=-1.0, right=9.0))


def test_lookup_refuses_knots_that_do_not_increase() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        KnotLookup(np.array([0.0, 0.0, 1.0]), np.array([0.0, 0.5, 1.0]))
