"""Output records: score records and dead-letter records (contract §6).

Records are built as plain dicts and encoded with orjson because their
optional keys (``imputed``, ``contributions``, ``source``) must be absent, not
``null``, when they do not apply.  The Kafka path encodes a batch's score
records column by column instead (:func:`encoded_score_records`: orjson
encodes each column once, ``stream/_native/records.c`` assembles the
records): the same bytes, without a dict per event.
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
    """``[dumps(r) for r in score_records(...)]``, the same bytes, with ``source`` from the messages.

    ``keys``, ``topics``, ``partitions`` and ``offsets`` are per input
    position (the messages').  orjson encodes each column once and the
    extension assembles the records (``stream/_native/records.c``): no dict
    per event.  None where the extension is not built or orjson refuses a
    column (an integer id past 64 bits, say); the caller builds the dicts.
    """
    if _records is None:
        return None
    rows = decoded.rows
    n = len(rows)
    if n != len(keys) or (n and rows[-1] != n - 1):  # some messages were rejected: their columns per scored row
        pick = np.asarray(rows, dtype=np.intp)
        keys, topics = [keys[p] for p in rows], [topics[p] for p in rows]
        partitions, offsets = partitions[pick], offsets[pick]
    contrib: list[bytes | None] = [None] * n
    for row, top in _contributions(scored, features).items():
        contrib[row] = dumps(top)
    latency_ms = np.round((scored_at - received_at) * 1000.0, 3)
    # The record's key and ts: the event's, else the message's key and the arrival time.
    own_keys, stamps = decoded.keys, decoded.ts
    key_col = keys if own_keys.count(None) == n else [m if k is None else k for k, m in zip(own_keys, keys)]
    received = received_at.tolist()
    ts_col = received if stamps.count(None) == n else [r if t is None else t for t, r in zip(stamps, received)]
    try:
        columns = (dumps(decoded.ids), dumps(key_col), dumps(ts_col), dumps(scored.score.tolist()),
                   dumps(scored.raw.tolist()), dumps(latency_ms.tolist()), dumps(decoded.imputed), dumps(topics))
    except orjson.JSONEncodeError:
        return None
    encoded: list[bytes] | None = _records.encode_scores(
        columns, dumps(model), dumps(scored_at), np.ascontiguousarray(scored.anomaly, dtype=np.bool_),
        np.ascontiguousarray(scored.severity, dtype=np.int8), _SEVERITY_JSON,
        np.ascontiguousarray(partitions, dtype=np.int64), np.ascontiguousarray(offsets, dtype=np.int64), contrib,
    )
    return encoded


_SEVERITY_JSON = tuple(dumps(name) for name in SEVERITIES)


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
