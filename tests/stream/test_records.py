"""Score records: the compiled assembly (stream/_native/records.c) against the dicts orjson encodes."""

from __future__ import annotations

import numpy as np
import pytest

from stream.core import ScoredBatch
from stream.decoding import DecodedBatch
from stream.records import _records, dumps, encoded_score_records, score_records

pytestmark = pytest.mark.skipif(_records is None, reason="the records extension is not built")

FEATURES = ("a", "b", "c", "d")
_IDS = [0, -(2**63), 2**63 - 1, 12.5, -0.0, 1e-7, 1e300, float("-inf"), "ev-1", "é\u2603", 'q"b\\s', "ctl\x00\x1f\n\t", None, True, False]
_STAMPS = [None, None, "2026-11-22T10:00:00Z", 1_763_800_000, 1.7e9 + 1 / 3, float("nan")]


def _batch(rng: np.random.Generator, n: int, m: int) -> tuple[DecodedBatch, ScoredBatch, dict[str, object]]:
    """A decoded and scored batch of ``n`` events out of ``m`` messages, with every kind of value."""
    rows = sorted(rng.choice(m, n, replace=False).tolist())
    ids = [_IDS[int(i)] for i in rng.integers(0, len(_IDS), n)]
    keys = [None if rng.random() < 0.5 else f"k{i}" for i in range(n)]
    ts = [_STAMPS[int(i)] for i in rng.integers(0, len(_STAMPS), n)]
    imputed = [None if rng.random() < 0.7 else tuple(FEATURES[: int(rng.integers(1, 4))]) for _ in range(n)]
    decoded = DecodedBatch(X=np.zeros((n, 4), np.float32), rows=rows, ids=ids, keys=keys, ts=ts, imputed=imputed)
    raw = rng.standard_normal(n).astype(np.float32) * 10
    raw[:: 7] = np.nan
    score = rng.random(n)
    anomaly = score > 0.8
    alerting = np.flatnonzero(anomaly)
    top = np.stack([rng.permutation(4)[:3] for _ in alerting]) if alerting.size else np.empty((0, 3), np.intp)
    shares = rng.random((alerting.size, 3)).astype(np.float32)
    scored = ScoredBatch(raw=raw, score=score, anomaly=anomaly, severity=rng.integers(0, 5, n).astype(np.int8),
                         anomalous_rows=alerting, top_features=top, top_shares=shares, inference_s=0.001)
    msg_keys = [None if rng.random() < 0.3 else f"m\u00e9{i}" for i in range(m)]
    topics = [f"events-{i % 3}" for i in range(m)]
    parts = rng.integers(0, 8, m).astype(np.int64)
    offsets = rng.integers(0, 2**40, m).astype(np.int64)
    received = 1.7e9 + rng.random(n)
    kw = {"model": "iforest@3", "features": FEATURES, "scored_at": 1.7e9 + 2.0, "received_at": received,
          "keys": msg_keys, "topics": topics, "partitions": parts, "offsets": offsets}
    return decoded, scored, kw


def test_compiled_records_parse_to_the_dicts_orjson_encodes() -> None:
    rng = np.random.default_rng(4)
    for n, m in ((1, 1), (5, 9), (300, 300), (64, 200)):
        decoded, scored, kw = _batch(rng, n, m)
        encoded = encoded_score_records(decoded, scored, **kw)  # type: ignore[arg-type]
        assert encoded is not None and len(encoded) == n
        sources = [{"topic": t, "partition": int(p), "offset": int(o)}
                   for t, p, o in zip(kw["topics"], kw["partitions"], kw["offsets"])]  # type: ignore[call-overload]
        want = score_records(decoded, scored, model="iforest@3", features=FEATURES, scored_at=kw["scored_at"],  # type: ignore[arg-type]
                             received_at=kw["received_at"], keys=kw["keys"], sources=sources)  # type: ignore[arg-type]
        assert encoded == [dumps(rec) for rec in want]  # byte for byte
        only = scored.anomalous_rows.tolist()
        subset = score_records(decoded, scored, model="iforest@3", features=FEATURES, scored_at=kw["scored_at"],  # type: ignore[arg-type]
                               received_at=kw["received_at"], keys=kw["keys"], sources=sources, only=only)  # type: ignore[arg-type]
        assert [dumps(r) for r in subset] == [dumps(want[i]) for i in only]


def test_ids_of_any_json_type_and_rejected_messages_give_the_same_bytes() -> None:
    """Ids orjson encodes as arrays or objects (commas inside), messages left out of the scored rows."""
    rng = np.random.default_rng(5)
    decoded, scored, kw = _batch(rng, 20, 50)
    decoded.ids[3], decoded.ids[4], decoded.keys[5] = [1, "a,b", {"c": [2, 3]}], {"x": "]"}, "k,}]"
    decoded.ts[6] = 2**64 - 1
    sources = [{"topic": t, "partition": int(p), "offset": int(o)}
               for t, p, o in zip(kw["topics"], kw["partitions"], kw["offsets"])]
    want = score_records(decoded, scored, model="iforest@3", features=FEATURES, scored_at=kw["scored_at"],
                         received_at=kw["received_at"], keys=kw["keys"], sources=sources)
    assert encoded_score_records(decoded, scored, **kw) == [dumps(rec) for rec in want]


def test_a_value_orjson_refuses_leaves_the_batch_to_the_dicts() -> None:
    rng = np.random.default_rng(6)
    decoded, scored, kw = _batch(rng, 20, 20)
    assert encoded_score_records(decoded, scored, **kw) is not None
    decoded.ids[7] = 2**64  # past orjson's 64-bit integers
    assert encoded_score_records(decoded, scored, **kw) is None
