"""A batch's score records assembled as JSON bytes from orjson-encoded columns (``records.c``)."""

from typing import Any

def encode_scores(
    columns: tuple[bytes, ...], model: bytes, scored_at: bytes, anomaly: Any, severity: Any,
    severity_names: tuple[bytes, ...], partitions: Any, offsets: Any, contributions: list[bytes | None], /,
) -> list[bytes] | None: ...
