"""Which anomalies become alerts: severity floor and per-key cooldown.

A plain class, driven without asyncio.  Events without a key are never held
back by the cooldown (there is nothing to group them by).

Examples
--------
>>> f = AlertFilter(min_severity="medium", cooldown_s=60)
>>> f.admit(["a", "a", "b", None], [2, 3, 1, 4], now=0.0)
[True, False, False, True]
>>> f.admit(["a"], [2], now=61.0)
[True]
"""

from __future__ import annotations

from collections.abc import Sequence

from models.calibration import SEVERITIES

__all__ = ["AlertFilter"]


class AlertFilter:
    """Admit anomalies at or above ``min_severity``, one per key per ``cooldown_s``."""

    def __init__(self, *, min_severity: str = "medium", cooldown_s: float = 60.0, max_keys: int = 100_000) -> None:
        self.min_code = SEVERITIES.index(min_severity)
        self.cooldown_s = cooldown_s
        self.max_keys = max_keys
        self._last: dict[str, float] = {}

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
