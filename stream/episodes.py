"""Anomaly episodes: consecutive anomalies of one key, grouped.

A plain class, driven without asyncio.  Rule (the README's "Alerts" section):

- an anomaly of key *k* with no open episode for *k* **opens** one;
- an anomaly of *k* less than ``gap_s`` (the ``alerts.cooldown_s``) of
  processing time after the previous anomaly of *k* **extends** it;
- an episode **closes** once ``gap_s`` passes without an anomaly of *k*
  (checked lazily: at the next anomaly of *k*, or by :meth:`sweep`).

Two times are kept apart: ``start``/``last`` are the *event* times (the
records' ``ts``) of the first and latest anomaly, ``detected_at`` is the
processing time at which the first one was scored.  The gap is measured in
processing time because event times may be ISO strings, skewed or out of
order.  Keyless anomalies have nothing to group by: each is an episode of one.

Examples
--------
>>> t = EpisodeTracker(gap_s=60)
>>> a = t.observe("k", ts=100.0, now=1000.0)
>>> b = t.observe("k", ts=130.0, now=1030.0)
>>> (a.id == b.id, b.count, b.start, b.last, b.detected_at)
(True, 2, 100.0, 130.0, 1000.0)
>>> c = t.observe("k", ts=300.0, now=1200.0)  # 170 s later: a new episode
>>> (c.id == a.id, c.count, c.start)
(False, 1, 300.0)
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from typing import Any

__all__ = ["Episode", "EpisodeTracker"]


@dataclass(slots=True)
class Episode:
    """One open (or just closed) episode of a key."""

    id: str
    key: str | None
    start: Any
    """Event time (the record's ``ts``) of its first anomaly."""
    detected_at: float
    """Processing time at which its first anomaly was scored."""
    last: Any
    """Event time of its latest anomaly."""
    last_seen: float
    """Processing time of its latest anomaly (what the gap is measured on)."""
    count: int = 1

    def as_dict(self) -> dict[str, Any]:
        """The ``episode`` object of an alert record."""
        return {"id": self.id, "start": self.start, "detected_at": self.detected_at, "last": self.last,
                "count": self.count}


class EpisodeTracker:
    """Open, extend and close one episode per key (see the module docstring).

    Parameters
    ----------
    gap_s : float
        Processing time without an anomaly of a key that closes its episode.
    max_keys : int
        Open episodes kept; beyond it, :meth:`observe` sweeps the closed ones.
    """

    def __init__(self, *, gap_s: float = 60.0, max_keys: int = 100_000) -> None:
        self.gap_s = gap_s
        self.max_keys = max_keys
        self._open: dict[str, Episode] = {}
        self._seq = itertools.count()
        self.closed = 0

    def _new(self, key: str | None, ts: Any, now: float) -> Episode:
        digest = hashlib.blake2b(f"{key}\0{now!r}\0{next(self._seq)}".encode(), digest_size=8).hexdigest()
        return Episode(id=digest, key=key, start=ts, detected_at=now, last=ts, last_seen=now)

    def observe(self, key: str | None, *, ts: Any, now: float) -> Episode:
        """Account one anomaly of ``key`` (event time ``ts``, scored at ``now``); its episode."""
        if key is None:
            self.closed += 1  # an episode of one, closed at once
            return self._new(None, ts, now)
        ep = self._open.get(key)
        if ep is not None and now - ep.last_seen < self.gap_s:
            ep.count += 1
            ep.last = ts
            ep.last_seen = now
            return ep
        if ep is not None:
            self.closed += 1
        ep = self._open[key] = self._new(key, ts, now)
        if len(self._open) > self.max_keys:
            self.sweep(now)
        return ep

    def sweep(self, now: float) -> list[Episode]:
        """Close (forget) every episode idle for ``gap_s``; the closed ones."""
        horizon = now - self.gap_s
        done = [ep for ep in self._open.values() if ep.last_seen <= horizon]
        for ep in done:
            del self._open[ep.key]  # type: ignore[arg-type]
        self.closed += len(done)
        return done

    def open_episode(self, key: str) -> Episode | None:
        """The open episode of ``key``, if any (idle ones count as open until swept)."""
        return self._open.get(key)

    def __len__(self) -> int:
        return len(self._open)
