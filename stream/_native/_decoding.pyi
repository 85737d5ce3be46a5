"""Plain JSON events straight into float32 feature rows (``decoding.c``); None where a batch needs the general path."""

from typing import Any

def decode(values: list[Any], names: tuple[str, ...], out: Any, max_bytes: int, /) -> tuple[list[Any], list[Any], list[Any]] | None: ...
