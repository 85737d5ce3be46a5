"""A batch's score records straight to JSON bytes (``records.c``); None where one needs the dict path."""

from typing import Any

def encode_scores(
    ids: list[Any], keys: list[Any], ts: list[Any], rows: Any, msg_keys: list[Any], topics: list[str], partitions: Any,
    offsets: Any, model: str, score: Any, raw: Any, anomaly: Any, severity: Any, severity_names: tuple[str, ...],
    scored_at: float, received: Any, latency: Any, imputed: list[Any], contributions: list[bytes | None], /,
) -> list[bytes] | None: ...
