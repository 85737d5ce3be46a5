"""Output records: score records and dead-letter records (contract §6).

Records are built as plain dicts and encoded with orjson because their
optional keys (``imputed``, ``contributions``, ``source``) must be absent, not
``null``, when they do not apply.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from models.calibration import SEVERITIES
from stream.core import ScoredBatch
from stream.decoding import DecodedBatch, Rejection

__all__ = ["Source", "dlq_record", "dumps", "score_records"]

Source = dict[str, Any]  # {"topic": str, "partition": int, "offset": int}
dumps = orjson.dumps


def score_records(
    decoded: DecodedBatch,
    scored: ScoredBatch,
    *,
    model: str,
    features: Sequence[str],
    scored_at: float,
    received_at: Sequence[float] | NDArray[np.float64],
    keys: Sequence[str | None] | None = None,
    sources: Sequence[Source] | None = None,
) -> list[dict[str, Any]]:
    """One score record per valid event of ``decoded``, in order.

    ``received_at[i]`` is when event ``decoded.rows[i]`` entered the system
    (the Kafka record timestamp, or arrival time); ``keys``/``sources`` are
    indexed by input position like ``decoded.rows``.
    """
    raw = scored.raw.tolist()
    score = scored.score.tolist()
    anomaly = scored.anomaly.tolist()
    sev = [SEVERITIES[s] for s in scored.severity.tolist()]
    received = np.asarray(received_at, dtype=np.float64)
    # One numpy pass for the latency column; np.round and round() agree to the last digit shown.
    latency_ms = np.round((scored_at - received) * 1000.0, 3).tolist()
    received_l = received.tolist()
    imputed = decoded.imputed
    out: list[dict[str, Any]] = []
    append = out.append
    for i, (pos, ident, key, ts) in enumerate(zip(decoded.rows, decoded.ids, decoded.keys, decoded.ts)):
        if key is None and keys is not None:
            key = keys[pos]
        rec: dict[str, Any] = {
            "id": ident,
            "key": key,
            "ts": received_l[i] if ts is None else ts,
            "model": model,
            "score": score[i],
            "raw_score": raw[i],
            "anomaly": anomaly[i],
            "severity": sev[i],
            "scored_at": scored_at,
            "latency_ms": latency_ms[i],
        }
        imp = imputed[i]
        if imp is not None:
            rec["imputed"] = list(imp)
        if sources is not None:
            rec["source"] = sources[pos]
        append(rec)
    if scored.anomalous_rows.size:
        names = features
        for row, idx, shares in zip(
            scored.anomalous_rows.tolist(), scored.top_features.tolist(), scored.top_shares.tolist()
        ):
            out[row]["contributions"] = {names[j]: round(s, 6) for j, s in zip(idx, shares)}
    return out


def dlq_record(rejection: Rejection, payload: bytes | str, source: Source | None) -> dict[str, Any]:
    """The dead-letter record for one rejected event."""
    if isinstance(payload, bytes):
        try:
            text = payload.decode()
        except UnicodeDecodeError:
            text = base64.b64encode(payload).decode()
            return {"error": rejection.code, "detail": rejection.detail, "payload": text,
                    "payload_encoding": "base64", "source": source}
    else:
        text = payload
    return {"error": rejection.code, "detail": rejection.detail, "payload": text, "source": source}
