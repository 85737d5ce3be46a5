from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from stream.decoding import REJECT_CODES, EventDecoder

FEATURES = ("a", "b", "c")


@pytest.fixture
def dec() -> EventDecoder:
    return EventDecoder(FEATURES, max_event_bytes=1000)


def test_objects_and_lists_become_rows_in_card_order(dec: EventDecoder) -> None:
    out = dec.decode([
        orjson.dumps({"id": 1, "features": {"c": 3, "a": 1, "b": 2, "extra": "ignored"}}),
        orjson.dumps({"id": 2, "features": [4, 5.5, 6]}),
    ])
    assert out.X.dtype == np.float32 and out.X.tolist() == [[1, 2, 3], [4, 5.5, 6]]
    assert out.rows == [0, 1] and not out.rejected and out.imputed == [None, None]


def test_nulls_and_nan_literals_are_imputed_and_named(dec: EventDecoder) -> None:
    out = dec.decode([b'{"features": {"a": null, "b": 1, "c": 2}}', b'{"features": [NaN, 1, NaN]}'])
    assert out.imputed == [("a",), ("a", "c")]
    assert math.isnan(out.X[0, 0]) and math.isnan(out.X[1, 2])


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        (b"[1, 2, 3]", "invalid_json"),
        (b"", "invalid_json"),
        (b'{"id": 1}', "missing_features"),
        (b'{"features": {"a": 1, "b": 2}}', "missing_features"),
        (b'{"features": "a=1"}', "missing_features"),
        (b'{"features": [1, 2]}', "wrong_length"),
        (b'{"features": {"a": 1, "b": "2", "c": 3}}', "non_numeric"),
        (b'{"features": [1, true, 3]}', "non_numeric"),
        (b'{"features": [1, [2], 3]}', "non_numeric"),
        (b'{"features": [1, 1e999, 3]}', "non_finite"),
        (b'{"features": [1, Infinity, 3]}', "non_finite"),
        (b'{"features": [1, 1e300, 3]}', "non_finite"),
        (b'{"features": [1, 2, 3], "pad": "' + b"x" * 1000 + b'"}', "too_large"),
    ],
)
def test_each_bad_event_gets_its_code_and_the_rest_still_decode(dec: EventDecoder, payload: bytes, code: str) -> None:
    good = b'{"features": [1, 2, 3]}'
    out = dec.decode([good, payload, good])
    assert out.rows == [0, 2]
    assert [(r.index, r.code) for r in out.rejected] == [(1, code)]
    assert out.rejected[0].detail
    assert code in REJECT_CODES


def test_every_index_is_accounted_for(dec: EventDecoder) -> None:
    payloads = [b'{"features": [1, 2, 3]}', b"x", b'{"features": [1, 2]}'] * 50
    out = dec.decode(payloads)
    assert sorted(out.rows + [r.index for r in out.rejected]) == list(range(150))


def test_single_feature_model() -> None:
    out = EventDecoder(["only"]).decode([b'{"features": {"only": 2}}', b'{"features": [3]}'])
    assert out.X.tolist() == [[2.0], [3.0]]
