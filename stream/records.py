"""Output records: score records and dead-letter records (contract §6).

Records are built as plain dicts and encoded with orjson because their
optional keys (``imputed``, ``contributions``, ``source``) must be absent, not
``null``, when they do not apply.  The Kafka path encodes a batch's score
records in one compiled call instead (:func:`encoded_score_records`,
``stream/_native/records.c``): the same JSON once parsed, without a dict per
event.
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

try:  # the extension module built with the package (hatch_build.py)
    from stream._native import _records
except ImportError:
    _records = None  # type: ignore[assignment]

__all__ = ["Source", "dlq_record", "dumps", "encoded_score_records", "score_records"]

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
    only: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """One score record per valid event of ``decoded``, in order (of the events ``only`` lists, if given).

    ``received_at[i]`` is when event ``decoded.rows[i]`` entered the system
    (the Kafka record timestamp, or arrival time); ``keys``/``sources`` are
    indexed by input position like ``decoded.rows``.  ``only``: indices into
    ``decoded.rows`` (ascending), e.g. the anomalous rows.
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
    which = range(len(decoded.rows)) if only is None else only
    rows_, ids_, keys_, ts_ = decoded.rows, decoded.ids, decoded.keys, decoded.ts
    for i in which:
        pos, ident, key, ts = rows_[i], ids_[i], keys_[i], ts_[i]
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
        at = None if only is None else {i: k for k, i in enumerate(only)}
        for row, top in _contributions(scored, features).items():
            k = row if at is None else at.get(row)
            if k is not None:
                out[k]["contributions"] = top
    return out


def _contributions(scored: ScoredBatch, features: Sequence[str]) -> dict[int, dict[str, float]]:
    """The anomalous rows' top contributions, ``{feature: share rounded to 6 places}`` by row."""
    return {row: {features[j]: round(s, 6) for j, s in zip(idx, shares)} for row, idx, shares in zip(
        scored.anomalous_rows.tolist(), scored.top_features.tolist(), scored.top_shares.tolist())}


def encoded_score_records(
    decoded: DecodedBatch,
    scored: ScoredBatch,
    *,
    model: str,
    features: Sequence[str],
    scored_at: float,
    received_at: NDArray[np.float64],
    keys: list[str | None],
    topics: list[str],
    partitions: NDArray[np.int64],
    offsets: NDArray[np.int64],
) -> list[bytes] | None:
    """``[dumps(r) for r in score_records(...)]`` in one compiled call, with ``source`` from the messages.

    ``keys``, ``topics``, ``partitions`` and ``offsets`` are per input
    position (the messages'); the JSON parses to the same records.  None
    where the extension is not built or an id, key or ts is of a type it
    leaves to the dicts (one past 64-bit integers, say).
    """
    if _records is None:
        return None
    n = len(decoded.rows)
    contrib: list[bytes | None] = [None] * n
    for row, top in _contributions(scored, features).items():
        contrib[row] = dumps(top)
    latency_ms = np.round((scored_at - received_at) * 1000.0, 3)
    encoded: list[bytes] | None = _records.encode_scores(
        decoded.ids, decoded.keys, decoded.ts, np.asarray(decoded.rows, dtype=np.int64), keys, topics, partitions,
        offsets, model, np.ascontiguousarray(scored.score, dtype=np.float64),
        np.ascontiguousarray(scored.raw, dtype=np.float32), np.ascontiguousarray(scored.anomaly, dtype=np.bool_),
        np.ascontiguousarray(scored.severity, dtype=np.int8), SEVERITIES, scored_at,
        np.ascontiguousarray(received_at, dtype=np.float64), latency_ms, decoded.imputed, contrib,
    )
    return encoded


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
