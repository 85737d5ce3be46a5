from __future__ import annotations

import math

import msgspec
import numpy as np
import orjson
import pytest

from stream.decoding import REJECT_CODES, EventDecoder, event_json

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


def _random_events(n: int, seed: int, *, past_int64: bool = True) -> list[bytes]:
    """Valid events in every shape the contract allows: object or list, ints, floats, nulls, extra names.

    ``past_int64``: some ids are unsigned 64-bit integers past int64 (the typed decoder refuses those).
    """
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        values: list[object] = []
        for _ in FEATURES:
            kind = rng.integers(6)
            if kind == 0:
                values.append(None)
            elif kind == 1:
                values.append(int(rng.integers(-(2**62), 2**62)) >> int(rng.integers(0, 62)))
            elif kind == 2:
                values.append(-0.0)
            else:
                values.append(float(rng.standard_normal() * 10.0 ** rng.integers(-40, 38)))
        ev: dict[str, object] = {}
        if rng.random() < 0.8:
            ev["id"] = [i, f"ev-{i}", 2**64 - 1 - i if past_int64 else i, -(2**63)][int(rng.integers(4))]
        if rng.random() < 0.5:
            ev["ts"] = [1.7e9 + i / 7, "2026-11-22T10:00:00Z", 1_763_800_000][int(rng.integers(3))]
        if rng.random() < 0.5:
            ev["key"] = f"host-{i % 7}"
        if rng.random() < 0.5:
            ev["features"] = values
        else:
            named = dict(zip(FEATURES, values))
            if rng.random() < 0.5:
                named = dict(reversed(list(named.items()))) | {"extra": "ignored"}
            ev["features"] = named
        out.append(orjson.dumps(ev))
    return out


def test_typed_fast_path_equals_the_general_path(dec: EventDecoder) -> None:
    # Pre-parsed values (WebSocket array frames) always take the general path: the oracle.
    payloads = _random_events(3000, seed=7)
    fast = dec.decode(payloads)
    general = dec.decode([orjson.loads(p) for p in payloads])
    assert fast.rows == general.rows == list(range(3000)) and not fast.rejected
    assert np.array_equal(fast.X.view(np.uint32), general.X.view(np.uint32))  # bit for bit, -0.0 and NaN included
    assert fast.ids == general.ids and fast.keys == general.keys and fast.ts == general.ts
    assert fast.imputed == general.imputed
    assert [type(v) for v in fast.ids] == [type(v) for v in general.ids]


def test_what_the_typed_decoder_refuses_but_is_valid_still_decodes(dec: EventDecoder) -> None:
    out = dec.decode([
        b'{"id": 123456789012345678901234567890, "features": [1, 2, 3]}',  # past 64 bits: orjson's float
        b'{"id": true, "key": ["a"], "features": [1, 2, 3]}',  # not the contract's types, passed through as before
        b'{"features": {"a": NaN, "b": 2, "c": 3}}',
    ])
    assert out.rows == [0, 1, 2] and not out.rejected
    assert out.ids == [1.2345678901234568e29, True, None] and out.keys == [None, ["a"], None]
    assert orjson.dumps(out.ids) and out.imputed == [None, None, ("a",)]


def test_decoder_for_feature_names_that_are_not_identifiers() -> None:
    names = ["cpu.load", "class", "0", "naïve ü", "features"]
    out = EventDecoder(names).decode([orjson.dumps({"features": {n: i for i, n in enumerate(names)}})])
    assert out.X.tolist() == [[0.0, 1.0, 2.0, 3.0, 4.0]]


def test_array_frames_decode_typed_as_the_general_path_does(dec: EventDecoder) -> None:
    payloads = _random_events(600, seed=11, past_int64=False)
    frame = b"[" + b",".join(payloads) + b"]"
    typed = dec.parse_array(frame)
    assert typed is not None and all(isinstance(v, msgspec.Struct) for v in typed)
    general = [orjson.loads(p) for p in payloads]
    a, b = dec.decode(typed), dec.decode(general)
    assert a.rows == b.rows and not a.rejected
    assert np.array_equal(a.X.view(np.uint32), b.X.view(np.uint32))
    assert a.ids == b.ids and a.keys == b.keys and a.ts == b.ts and a.imputed == b.imputed


def test_array_frames_typed_and_not() -> None:
    dec = EventDecoder(FEATURES)
    typed = dec.parse_array(b'[{"id": 1, "features": [1, 2, 3]}, {"features": {"a": 1, "b": null, "c": 2.5}}]')
    assert typed is not None and all(isinstance(v, msgspec.Struct) for v in typed)
    # One element the card does not fit: the whole array is parsed plainly, each element checked alone.
    mixed = dec.parse_array(b'[{"features": [1, 2, 3]}, {"features": {"a": "x", "b": 1, "c": 2}}, 7]')
    assert mixed == [{"features": [1, 2, 3]}, {"features": {"a": "x", "b": 1, "c": 2}}, 7]
    out = dec.decode(mixed)
    assert out.rows == [0] and [(r.index, r.code) for r in out.rejected] == [(1, "non_numeric"), (2, "invalid_json")]
    assert dec.parse_array(b'{"features": [1, 2, 3]}') is None and dec.parse_array(b"[1, 2") is None
    # A typed element the matrix check rejects is echoed as JSON for its dead-letter record.
    wrong = dec.parse_array(b'[{"id": 5, "features": [1, 2]}, {"features": [1, 1e300, 3]}]')
    assert wrong is not None
    out = dec.decode(wrong)
    assert [(r.index, r.code) for r in out.rejected] == [(0, "wrong_length"), (1, "non_finite")]
    assert orjson.loads(event_json(wrong[0])) == {"id": 5, "features": [1.0, 2.0]}


def test_typed_events_of_another_card_take_the_general_path() -> None:
    # A model swap between a frame's parsing and its batch: the new card's decoder checks them itself.
    old = EventDecoder(["a", "b", "c"]).parse_array(b'[{"id": 1, "features": {"a": 1, "b": 2, "c": 3}}, {"features": [1, 2, 3]}]')
    assert old is not None
    out = EventDecoder(["c", "a"]).decode(old)
    assert out.rows == [0] and out.X.tolist() == [[3.0, 1.0]] and out.ids == [1]
    assert [(r.index, r.code) for r in out.rejected] == [(1, "wrong_length")]
