"""Structured logs: one JSON object per line (``anomstream serve --log-format json``).

Each line holds ``ts`` (epoch seconds), ``time`` (ISO-8601 UTC), ``level``,
``logger``, ``message`` (arguments applied) and, when there is one, ``exc``
(the formatted traceback), plus any ``extra={...}`` fields given to the call.

Examples
--------
>>> rec = logging.LogRecord("stream.kafka", logging.INFO, __file__, 1, "assigned %s", ("events[0]",), None)
>>> rec.created, rec.msecs = 0.0, 0.0
>>> JsonFormatter().format(rec)
'{"ts":0.0,"time":"1970-01-01T00:00:00.000Z","level":"INFO","logger":"stream.kafka","message":"assigned events[0]"}'
"""

from __future__ import annotations

import logging
import time

import orjson

__all__ = ["JsonFormatter"]

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Format records as one-line JSON objects (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": round(record.created, 6),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()
