"""Micro-batching: group events so the core scores many rows per call.

:class:`MicroBatcher` is the plain state machine (no asyncio): a batch closes
when it holds ``max_batch`` events or when its oldest event has waited
``max_latency_ms``.  Sources that already deliver chunks (Kafka's
``getmany``) only need :func:`split_batches`.

Examples
--------
>>> b = MicroBatcher(max_batch=3, max_latency_ms=10)
>>> b.add("a", now=0.0), b.add("b", now=0.001)
(None, None)
>>> b.due(now=0.005) is None, b.due(now=0.011)
(True, ['a', 'b'])
>>> [b.add(x, now=1.0) for x in "cde"][-1]
['c', 'd', 'e']
>>> list(split_batches(list(range(5)), 2))
[[0, 1], [2, 3], [4]]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

__all__ = ["MicroBatcher", "split_batches"]

T = TypeVar("T")


def split_batches(items: Sequence[T], max_batch: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most ``max_batch`` items."""
    for start in range(0, len(items), max_batch):
        yield items[start:start + max_batch]


class MicroBatcher(Generic[T]):
    """Collect items into batches by size and age.

    Parameters
    ----------
    max_batch : int
        A batch closes as soon as it holds this many items.
    max_latency_ms : float
        ... or when its first item is this old.
    """

    def __init__(self, *, max_batch: int, max_latency_ms: float) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.max_batch = max_batch
        self.max_latency_s = max_latency_ms / 1000.0
        self._items: list[T] = []
        self._opened = 0.0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: T, *, now: float) -> list[T] | None:
        """Add one item; returns the batch it completed, if any."""
        if not self._items:
            self._opened = now
        self._items.append(item)
        if len(self._items) >= self.max_batch:
            return self.flush()
        return None

    def deadline(self) -> float | None:
        """When the open batch is due (None when empty)."""
        return self._opened + self.max_latency_s if self._items else None

    def due(self, *, now: float) -> list[T] | None:
        """The open batch if it has waited ``max_latency_ms``, else None."""
        if self._items and now - self._opened >= self.max_latency_s:
            return self.flush()
        return None

    def flush(self) -> list[T]:
        """Close and return the open batch (possibly empty)."""
        items, self._items = self._items, []
        return items
