"""Which anomalies become alerts: severity floor, per-key cooldown, episodes.

A plain class, driven without asyncio.  Every anomaly is accounted to its
key's episode (:mod:`stream.episodes`); an anomaly becomes an **alert** when
its severity is at least ``min_severity`` and its key had no alert in the
last ``cooldown_s`` seconds (processing time).  So an episode gives one alert
when it reaches ``min_severity``, then at most one reminder per
``cooldown_s`` while it stays open; every alert of an episode carries the same
episode id with its ``start``, ``detected_at``, ``last`` and ``count``.
Events without a key are never held back by the cooldown (there is nothing to
group them by); each is an episode of one.

Examples
--------
>>> f = AlertFilter(min_severity="medium", cooldown_s=60)
>>> f.admit(["a", "a", "b", None], [2, 3, 1, 4], now=0.0)
[True, False, False, True]
>>> f.admit(["a"], [2], now=61.0)
[True]
>>> g = AlertFilter(min_severity="medium", cooldown_s=60)
>>> recs = [{"key": "a", "ts": 10.0}, {"key": "a", "ts": 11.0}]
>>> [(i, a["episode"]["count"]) for i, a in g.select(recs, [1, 2], now=0.0)]
[(1, 2)]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from models.calibration import SEVERITIES
from stream.episodes import EpisodeTracker

__all__ = ["AlertFilter"]


class AlertFilter:
    """Admit anomalies at or above ``min_severity``, one per key per ``cooldown_s``."""

    def __init__(self, *, min_severity: str = "medium", cooldown_s: float = 60.0, max_keys: int = 100_000) -> None:
        self.min_code = SEVERITIES.index(min_severity)
        self.cooldown_s = cooldown_s
        self.max_keys = max_keys
        self._last: dict[str, float] = {}
        self.episodes = EpisodeTracker(gap_s=cooldown_s, max_keys=max_keys)

    def admit(self, keys: Sequence[str | None], severities: Sequence[int], now: float) -> list[bool]:
        """One decision per anomaly (severity codes index :data:`SEVERITIES`)."""
        out: list[bool] = []
        last = self._last
        for key, sev in zip(keys, severities):
            if sev < self.min_code:
                out.append(False)
                continue
            if key is None or self.cooldown_s <= 0:
                out.append(True)
                continue
            prev = last.get(key)
            if prev is not None and now - prev < self.cooldown_s:
                out.append(False)
                continue
            last[key] = now
            out.append(True)
        if len(last) > self.max_keys:
            horizon = now - self.cooldown_s
            self._last = {k: t for k, t in last.items() if t >= horizon}
        return out

    def select(self, anomalies: Sequence[dict[str, Any]], severities: Sequence[int],
               now: float) -> list[tuple[int, dict[str, Any]]]:
        """Account ``anomalies`` (score records) to episodes; the admitted ones as alert records.

        Returns ``(index into anomalies, alert record)`` pairs; an alert record
        is the score record plus an ``episode`` object.
        """
        admitted = self.admit([r["key"] for r in anomalies], severities, now)
        observe = self.episodes.observe
        out: list[tuple[int, dict[str, Any]]] = []
        for i, (rec, ok) in enumerate(zip(anomalies, admitted)):
            ep = observe(rec["key"], ts=rec["ts"], now=now)
            if ok:
                out.append((i, {**rec, "episode": ep.as_dict()}))
        return out
