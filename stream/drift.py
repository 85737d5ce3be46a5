"""Drift monitors: the score stream and the inputs, calibrated to a false-alarm budget.

Plain classes driven batch by batch (no asyncio); every update is vectorised
over the batch with numpy, so the cost per event is a few numpy operations
divided by the batch size.

Three signals (``anomstream_drift_events_total{signal}``):

``score``
    A two-sided CUSUM (Page's test; River's ``PageHinkley`` is the same
    statistic) on the calibrated score, standardised by its mean and standard
    deviation over a warm-up of ``warmup_events`` events.  Allowance
    ``k = 0.25`` sd (tuned to shifts of half a standard deviation); the
    threshold ``h`` solves Siegmund's approximation of the in-control run
    length, ``ARL0(h) = (exp(2k b) - 2k b - 1) / (2k²)`` with
    ``b = h + 1.166``, for ``ARL0 = 2 · SAFETY · false_alarm_events`` per side.  The
    calibrated score is bounded, so its tails are lighter than the Gaussian
    the approximation assumes: the real ARL0 is longer (conservative).
``anomaly_rate``
    A Bernoulli CUSUM of the log-likelihood ratio of "the alert rate tripled"
    against the rate ``p0`` seen during the warm-up.  Lorden's bound gives an
    in-control run length of at least ``exp(h)``, so ``h = ln(false_alarm_events)``.
``input``
    The population stability index (PSI) of each feature over a sliding window
    of ``window`` events against the reference bins (decile edges of the
    training data, plus a bin for missing values), checked every
    ``check_every`` events.  Under no drift ``PSI ≈ (1/window + 1/n_ref) · χ²(m-1)``
    (m = non-empty reference bins); the threshold is that χ² quantile
    (Wilson–Hilferty) at ``α = check_every / (SAFETY · false_alarm_events · D)`` per
    feature and check (a union bound over checks and features: conservative,
    overlapping windows are correlated).

The reference bins come from the model card (``reference``, written by the
retraining worker); when the card has none, the first ``warmup_events`` events
after start are the reference (the service logs that it did so).  After a
detection a signal is quiet for ``cooldown_events`` events, then warms up
again on the new data, so one change gives one detection per signal, and a
slow ramp gives one every ``cooldown + warm-up`` events or so.  A model swap
resets every signal (:meth:`DriftMonitor.reset`).

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> mon = ScoreMonitor(false_alarm_events=1_000_000, warmup_events=2000, cooldown_events=2000)
>>> s = rng.uniform(size=20_000)
>>> s[10_000:] = np.clip(s[10_000:] + 0.3, 0, 1)         # the scores rise at event 10,000
>>> [(d.signal, d.index) for b in range(0, 20_000, 500)
...  for d in mon.update(s[b:b + 500], s[b:b + 500] >= 0.99)][:1]
[('score', 10030)]
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
from numpy.typing import NDArray

from models.reference import InputReference, bin_index

__all__ = [
    "SIGNALS",
    "Cusum",
    "Detection",
    "DriftMonitor",
    "InputMonitor",
    "InputReference",
    "ScoreMonitor",
    "Signal",
    "chi2_quantile",
    "cusum_threshold",
    "lindley",
]

Signal = Literal["score", "anomaly_rate", "input"]
SIGNALS: Final[tuple[Signal, ...]] = ("score", "anomaly_rate", "input")
#: CUSUM allowance on the standardised score (detects shifts of about 2k sd fastest).
SCORE_K: Final[float] = 0.25
#: The alert-rate CUSUM tests p0 against RATE_RATIO · p0.
RATE_RATIO: Final[float] = 3.0
#: Margin on the score and input budgets: their in-control references are estimated from a finite
#: warm-up (measured: without it, 20 false alarms in 2M events at a budget of 1e5, i.e. at the budget).
SAFETY: Final[float] = 4.0
#: Standardisation floor and highest in-control alert rate: a warm-up on saturated scores (every event
#: scored 1.0 by a model that no longer fits) gives no usable reference; the signal waits for the next.
MIN_SD: Final[float] = 0.05
MAX_P0: Final[float] = 0.2
WINDOW: Final[int] = 1000
CHECK_EVERY: Final[int] = 250


@dataclass(frozen=True, slots=True)
class Detection:
    """One detection: ``index`` counts events seen by the monitor (1-based), ``row`` is in the batch."""

    signal: Signal
    index: int
    row: int
    statistic: float
    threshold: float
    features: tuple[str, ...] = ()


def cusum_threshold(k: float, arl: float) -> float:
    """The CUSUM threshold ``h`` whose in-control run length is ``arl`` (Siegmund).

    >>> round(cusum_threshold(0.25, 2e6), 2)
    23.69
    """
    if not (k > 0 and arl > 1):
        raise ValueError(f"need k > 0 and arl > 1, got k={k}, arl={arl}")

    def arl0(h: float) -> float:
        b = 2 * k * (h + 1.166)
        return (math.exp(b) - b - 1) / (2 * k * k)

    lo, hi = 0.0, 1.0
    while arl0(hi) < arl:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if arl0(mid) < arl else (lo, mid)
    return hi


def chi2_quantile(p: float, dof: int) -> float:
    """The ``p`` quantile of χ²(dof) (Wilson–Hilferty; within 1% in the far tail for dof ≥ 3).

    >>> round(chi2_quantile(0.99, 9), 1)
    21.7
    """
    z = statistics.NormalDist().inv_cdf(p)
    c = 2.0 / (9.0 * dof)
    return float(dof * max(0.0, 1.0 - c + z * math.sqrt(c)) ** 3)


def lindley(start: float, x: NDArray[np.float64]) -> NDArray[np.float64]:
    """All values of ``S_j = max(0, S_{j-1} + x_j)`` from ``S_0 = start``, without a Python loop.

    >>> lindley(0.0, np.array([1.0, -3.0, 2.0, 0.5])).tolist()
    [1.0, 0.0, 2.0, 2.5]
    """
    t = start + np.cumsum(x)
    low = np.minimum.accumulate(t)
    out: NDArray[np.float64] = t - np.minimum(low, 0.0)
    return out


class Cusum:
    """A one- or two-sided CUSUM on a stream of increments, reset after each alarm.

    Parameters
    ----------
    k : float
        Allowance subtracted from each (standardised) value.
    h : float
        Alarm threshold.
    two_sided : bool
        Also watch for a decrease.
    """

    def __init__(self, *, k: float, h: float, two_sided: bool = True) -> None:
        self.k, self.h, self.two_sided = k, h, two_sided
        self.up = 0.0
        self.down = 0.0

    def reset(self) -> None:
        self.up = self.down = 0.0

    def update(self, z: NDArray[np.float64]) -> tuple[int, float] | None:
        """Feed ``z``; return (first row whose statistic crossed ``h``, its value), else None.

        On an alarm the state is reset and the rows after it are not consumed.
        """
        if z.size == 0:
            return None
        up = lindley(self.up, z - self.k)
        hit = int(np.argmax(up > self.h)) if up.max() > self.h else -1
        down: NDArray[np.float64] | None = None
        if self.two_sided:
            down = lindley(self.down, -z - self.k)
            if down.max() > self.h:
                d = int(np.argmax(down > self.h))
                hit = d if hit < 0 else min(hit, d)
        if hit >= 0:
            value = max(float(up[hit]), float(down[hit]) if down is not None else 0.0)
            self.reset()
            return hit, value
        self.up = float(up[-1])
        self.down = float(down[-1]) if down is not None else 0.0
        return None


class _Phase:
    """Warm-up → active → cooldown → warm-up, counted in events."""

    def __init__(self, *, warmup_events: int, cooldown_events: int) -> None:
        self.warmup_events, self.cooldown_events = warmup_events, cooldown_events
        self.seen = 0          # events fed so far
        self.quiet_until = 0   # events before this index are cooldown
        self.buffer: list[NDArray[Any]] = []
        self.buffered = 0
        self.active = False

    def restart(self, at: int) -> None:
        self.active = False
        self.buffer, self.buffered = [], 0
        self.quiet_until = at


class ScoreMonitor:
    """Watches the calibrated score and the anomaly indicator (signals ``score``, ``anomaly_rate``).

    Parameters
    ----------
    false_alarm_events : float
        Expected events between false alarms, per signal.
    warmup_events : int
        Events that estimate the in-control mean, spread and alert rate.
    cooldown_events : int
        Events ignored after a detection before warming up again.
    """

    def __init__(self, *, false_alarm_events: float, warmup_events: int = 5000, cooldown_events: int = 5000) -> None:
        self.false_alarm_events = false_alarm_events
        self.h_score = cusum_threshold(SCORE_K, 2 * SAFETY * false_alarm_events)
        self.h_rate = math.log(false_alarm_events)
        self._phases = {
            s: _Phase(warmup_events=warmup_events, cooldown_events=cooldown_events) for s in ("score", "anomaly_rate")
        }
        self._score = Cusum(k=SCORE_K, h=self.h_score)
        self._rate = Cusum(k=0.0, h=self.h_rate, two_sided=False)
        self.mean = self.sd = self.p0 = math.nan
        self._llr = (0.0, 0.0)
        self.seen = 0

    def reset(self) -> None:
        """Forget the in-control estimates (a new model: new scores); warm up again."""
        for ph in self._phases.values():
            ph.restart(self.seen)
        self._score.reset()
        self._rate.reset()

    def update(self, score: NDArray[np.floating], anomaly: NDArray[np.bool_]) -> list[Detection]:
        """Feed one batch of calibrated scores and anomaly flags; return detections (at most one per signal)."""
        s = np.asarray(score, dtype=np.float64)
        a = np.asarray(anomaly, dtype=np.float64)
        start = self.seen
        self.seen += s.size
        out: list[Detection] = []
        d = self._feed("score", start, s, self._score_step)
        if d is not None:
            out.append(d)
        d = self._feed("anomaly_rate", start, a, self._rate_step)
        if d is not None:
            out.append(d)
        return out

    def _feed(self, signal: Signal, start: int, values: NDArray[np.float64], step: Any) -> Detection | None:
        ph = self._phases[signal]
        begin = max(0, ph.quiet_until - start)
        values = values[begin:]
        offset = begin
        while values.size:
            if not ph.active:
                take = min(values.size, ph.warmup_events - ph.buffered)
                ph.buffer.append(values[:take])
                ph.buffered += take
                values, offset = values[take:], offset + take
                if ph.buffered >= ph.warmup_events:
                    if self._fit(signal, np.concatenate(ph.buffer)):
                        ph.buffer, ph.active = [], True
                    else:  # degenerate (saturated) scores: try again after a cooldown
                        ph.restart(start + offset + ph.cooldown_events)
                        values = values[ph.cooldown_events:]
                        offset += ph.cooldown_events
                continue
            hit = step(values)
            if hit is None:
                return None
            row, value = hit
            index = start + offset + row + 1
            ph.restart(index + ph.cooldown_events)
            h = self.h_score if signal == "score" else self.h_rate
            return Detection(signal=signal, index=index, row=offset + row, statistic=value, threshold=h)
        return None

    def _fit(self, signal: Signal, values: NDArray[np.float64]) -> bool:
        if signal == "score":
            sd = float(values.std())
            if sd < MIN_SD or float(np.mean(values >= 1.0)) > MAX_P0:
                return False
            self.mean, self.sd = float(values.mean()), sd
            self._score.reset()
        else:
            n = values.size
            p0 = max(float(values.mean()), 0.5 / n)
            if p0 > MAX_P0:
                return False
            p1 = min(RATE_RATIO * p0, 0.9)
            self.p0 = p0
            self._llr = (math.log(p1 / p0), math.log((1 - p1) / (1 - p0)))
            self._rate.reset()
        return True

    def _score_step(self, v: NDArray[np.float64]) -> tuple[int, float] | None:
        return self._score.update((v - self.mean) / self.sd)

    def _rate_step(self, v: NDArray[np.float64]) -> tuple[int, float] | None:
        hit, miss = self._llr
        return self._rate.update(np.where(v > 0.5, hit, miss))


class InputMonitor:
    """Per-feature PSI of a sliding window against reference bins (signal ``input``).

    Parameters
    ----------
    features : sequence of str
    reference : InputReference, optional
        From the card; None: built from the first ``warmup_events`` events.
    false_alarm_events : float
    warmup_events, cooldown_events : int
    window, check_every : int
        Sliding-window length and how often the PSI is computed, in events.
    """

    def __init__(
        self, *, features: Sequence[str], reference: InputReference | None, false_alarm_events: float,
        warmup_events: int = 5000, cooldown_events: int = 5000, window: int = WINDOW, check_every: int = CHECK_EVERY,
    ) -> None:
        self.features = tuple(features)
        self.window, self.check_every = window, check_every
        self.false_alarm_events = false_alarm_events
        self.card_reference = reference
        self._phase = _Phase(warmup_events=warmup_events, cooldown_events=cooldown_events)
        self.seen = 0
        self._total = 0
        self.reference: InputReference | None = None
        self.reference_source = "card" if reference is not None else "warmup"
        if reference is not None:
            self._use(reference)

    def _use(self, ref: InputReference) -> None:
        self.reference = ref
        dim, nb = ref.props.shape
        self._ring = np.zeros((self.window, dim), dtype=np.intp)
        self._filled = 0
        self._pos = 0
        self._counts = np.zeros((dim, nb), dtype=np.int64)
        self._flat = np.arange(dim) * nb
        m = np.maximum((ref.props > 0).sum(axis=1), 2)
        alpha = self.check_every / (SAFETY * self.false_alarm_events * dim)
        q = np.array([chi2_quantile(1 - alpha, int(v) - 1) for v in m])
        self.thresholds = q * (1.0 / self.window + 1.0 / ref.rows)
        self._q = (ref.props * ref.rows + 0.5) / (ref.rows + 0.5 * nb)
        self._total = 0
        self._next_check = self.window
        self._phase.active = True

    def reset(self, reference: InputReference | None) -> None:
        """A new model: its reference (or a warm-up on the next events)."""
        self.card_reference = reference
        self.reference_source = "card" if reference is not None else "warmup"
        self.reference = None
        self._phase.restart(self.seen)
        if reference is not None:
            self._use(reference)

    def psi(self) -> NDArray[np.float64]:
        """The PSI of each feature over the current window."""
        n = self._filled
        nb = self._counts.shape[1]
        p = (self._counts + 0.5) / (n + 0.5 * nb)
        out: NDArray[np.float64] = ((p - self._q) * np.log(p / self._q)).sum(axis=1)
        return out

    def update(self, X: NDArray[np.floating]) -> list[Detection]:
        """Feed one batch of raw feature rows (card order, NaN = missing)."""
        rows: NDArray[np.float64] = np.asarray(X, dtype=np.float64)
        start = self.seen
        self.seen += rows.shape[0]
        ph = self._phase
        offset = max(0, ph.quiet_until - start)
        rows = rows[offset:]
        while rows.shape[0]:
            if not ph.active:
                ref = self.card_reference
                if ref is not None:
                    self._use(ref)
                    continue
                take = min(rows.shape[0], ph.warmup_events - ph.buffered)
                ph.buffer.append(rows[:take])
                ph.buffered += take
                rows, offset = rows[take:], offset + take
                if ph.buffered >= ph.warmup_events:
                    self._use(InputReference.fit(np.concatenate(ph.buffer), self.features))
                    ph.buffer = []
                continue
            # Feed up to the next check, then check.
            take = min(rows.shape[0], max(1, self._next_check - self._total))
            self._push(rows[:take])
            rows, offset = rows[take:], offset + take
            if self._total >= self._next_check:
                self._next_check += self.check_every
                psi = self.psi()
                over = psi > self.thresholds
                if over.any():
                    ratio = psi / self.thresholds
                    order = np.argsort(-ratio)
                    names = tuple(self.features[j] for j in order if over[j])
                    j = int(order[0])
                    index = start + offset
                    ph.restart(index + ph.cooldown_events)
                    self.reference = None
                    self.card_reference = None  # after a change, the old reference is stale
                    return [Detection(signal="input", index=index, row=offset - 1, statistic=float(psi[j]),
                                      threshold=float(self.thresholds[j]), features=names)]
        return []

    def _push(self, X: NDArray[np.float64]) -> None:
        ref = self.reference
        assert ref is not None
        idx = bin_index(X, ref.edges)
        n = idx.shape[0]
        w = self.window
        counts = self._counts.reshape(-1)
        if n >= w:
            idx = idx[-w:]
            counts[:] = 0
            self._ring[:] = idx
            self._pos, self._filled = 0, w
            counts += np.bincount((idx + self._flat).ravel(), minlength=counts.size)
        else:
            end = self._pos + n
            slots = np.arange(self._pos, end) % w
            if self._filled == w:
                old = self._ring[slots]
                counts -= np.bincount((old + self._flat).ravel(), minlength=counts.size)
            counts += np.bincount((idx + self._flat).ravel(), minlength=counts.size)
            self._ring[slots] = idx
            self._pos = end % w
            self._filled = min(w, self._filled + n)
        self._total += n


class DriftMonitor:
    """The score and input monitors of one model, fed one scored batch at a time.

    Parameters
    ----------
    features : sequence of str
        The model's features.
    reference : InputReference, optional
        The card's reference bins.
    false_alarm_events : float
    warmup_events, cooldown_events : int
    """

    def __init__(
        self, *, features: Sequence[str], reference: InputReference | None, false_alarm_events: float,
        warmup_events: int = 5000, cooldown_events: int = 5000,
    ) -> None:
        kw = {"false_alarm_events": false_alarm_events, "warmup_events": warmup_events, "cooldown_events": cooldown_events}
        self.scores = ScoreMonitor(**kw)  # type: ignore[arg-type]
        self.inputs = InputMonitor(features=features, reference=reference, **kw)  # type: ignore[arg-type]

    def reset(self, *, features: Sequence[str], reference: InputReference | None) -> None:
        """A new model was swapped in."""
        self.scores.reset()
        if tuple(features) != self.inputs.features:
            i = self.inputs
            self.inputs = InputMonitor(features=features, reference=reference, false_alarm_events=i.false_alarm_events,
                                       warmup_events=i._phase.warmup_events, cooldown_events=i._phase.cooldown_events,
                                       window=i.window, check_every=i.check_every)
        else:
            self.inputs.reset(reference)

    def update(self, X: NDArray[np.floating], score: NDArray[np.floating], anomaly: NDArray[np.bool_]) -> list[Detection]:
        """Feed one scored batch (rows aligned); return its detections."""
        return self.scores.update(score, anomaly) + self.inputs.update(X)
