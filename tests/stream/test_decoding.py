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


_compiled = pytest.mark.skipif(EventDecoder(FEATURES)._compiled is None, reason="the decoding extension is not built")


def _number_text(rng: np.random.Generator) -> str:
    """A JSON number in one of many spellings (and, rarely, something close to one that is not)."""
    kind = int(rng.integers(12))
    if kind == 0:
        return str(int(rng.integers(-(2**62), 2**62)) >> int(rng.integers(0, 62)))
    if kind == 1:  # integers of 17-21 digits, past int64 and past 19 digits
        return ("-" if rng.random() < 0.5 else "") + str(int(rng.integers(1, 10))) + "".join(
            str(int(d)) for d in rng.integers(0, 10, int(rng.integers(16, 21))))
    if kind == 2:
        return repr(float(rng.standard_normal() * 10.0 ** rng.integers(-45, 39)))
    if kind == 3:  # long mantissas, both exponent letters and signs
        mant = "".join(str(int(d)) for d in rng.integers(0, 10, int(rng.integers(1, 30))))
        frac = "".join(str(int(d)) for d in rng.integers(0, 10, int(rng.integers(1, 30))))
        exp = f"{'eE'[int(rng.integers(2))]}{['', '+', '-'][int(rng.integers(3))]}{int(rng.integers(0, 50))}"
        return f"{'-' if rng.random() < 0.5 else ''}{mant.lstrip('0') or '0'}.{frac}{exp if rng.random() < 0.7 else ''}"
    if kind == 4:  # around float32's limits and below the smallest double
        return ["3.4028234e38", "3.4028235e38", "3.40282357e38", "-3.4028235e38", "1e-320", "2.5e-324", "1e-400",
                "1.17549435e-38", "1.4e-45", "7e-46", "0.0", "-0.0", "0", "-0", "1E+2", "1e39"][int(rng.integers(16))]
    if kind == 5:  # halfway cases of float32 rounding
        return repr(float(np.float32(rng.standard_normal())) + float(np.spacing(np.float32(1.0))) / 2)
    if kind == 6:
        return "null"
    if kind == 7:  # not numbers, or not JSON
        return ["01", "1.", ".5", "+1", "NaN", "Infinity", "-", "1e", "0x10", "true", '"1"', "[1]", "1.0.0"][
            int(rng.integers(13))]
    return f"{rng.standard_normal() * 100:.{int(rng.integers(0, 12))}f}"


def _ws(rng: np.random.Generator) -> str:
    return "".join(" \t\n\r"[int(i)] for i in rng.integers(0, 4, int(rng.integers(0, 3)))) if rng.random() < 0.3 else ""


def _fuzzed_event(rng: np.random.Generator) -> bytes:
    """One event spelled in many ways: key orders, whitespace, escapes, extra or missing parts, broken JSON."""
    w = lambda: _ws(rng)
    parts = []
    if rng.random() < 0.85:
        values = [_number_text(rng) for _ in FEATURES]
        if rng.random() < 0.5:
            body = "[" + ",".join(f"{w()}{v}{w()}" for v in values) + "]"
            if rng.random() < 0.05:
                body = body[:-1] + ",1]"
        else:
            names = list(FEATURES)
            if rng.random() < 0.5:
                rng.shuffle(names)
            items = [f'{w()}"{n}"{w()}:{w()}{v}' for n, v in zip(names, values)]
            extra = int(rng.integers(10))
            if extra == 0:
                items.append(f'"extra":{_number_text(rng)}')
            elif extra == 1:
                items.append('"extra":"x"')
            elif extra == 2:
                items.append('"\\u0061":1')  # "a" written with an escape
            elif extra == 3:
                items.append('"a":2')  # a duplicate
            elif extra == 4:
                items.pop()  # a missing feature
            elif extra == 5:
                items.append('"caf\u00e9":1')
            elif extra == 6:
                items[-1] = items[0]  # one feature twice, another missing
            elif extra == 7:
                items.append('"bad-@":1')  # a name that is not UTF-8 (below)
            body = "{" + ",".join(items) + "}"
        parts.append(f'"features"{w()}:{w()}{body}')
    for key in ("id", "key", "ts"):
        if rng.random() < 0.6:
            value = [_number_text(rng), '"ev-1"', '"h\u00e9llo"', '"a\\"b"', '"\\u00e9"', "null", "true",
                     '"2026-11-22T10:00:00Z"', "{}"][int(rng.integers(9))]
            parts.append(f'"{key}"{w()}:{w()}{value}')
    if rng.random() < 0.05:
        parts.append('"other":1')
    if rng.random() < 0.03 and parts:
        parts.append(parts[0])  # a duplicate key
    order = rng.permutation(len(parts))
    text = w() + "{" + ",".join(f"{w()}{parts[i]}{w()}" for i in order) + "}" + w()
    if rng.random() < 0.03:
        text = text[:int(rng.integers(len(text)))]
    if rng.random() < 0.02:
        text += "x"
    raw = text.encode().replace(b"bad-@", b"bad-\xff")
    if rng.random() < 0.02:
        raw = raw.replace(b"ev-1", b"ev-\xff")
    return raw


@_compiled
def test_compiled_decoding_gives_what_the_general_path_gives() -> None:
    """Fuzzed events one by one: the same rows, values (bit for bit), ids, keys, stamps, imputations, rejections.

    Each event alone in its batch, so an event the compiled path leaves to the
    general one does not hide the others; a good share of them must be
    taken by the compiled path, or the comparison would prove nothing.
    """
    from stream._native import _decoding

    compiled, general = EventDecoder(FEATURES, max_event_bytes=400), EventDecoder(FEATURES, max_event_bytes=400,
                                                                                 compiled=False)
    rng = np.random.default_rng(17)
    taken = 0
    for i in range(40_000):
        if i % 2:
            raw = _fuzzed_event(rng)
        else:  # the numbers' spellings alone, in the plain shape
            values = [_number_text(rng) for _ in FEATURES]
            named = ",".join('"' + n + '":' + v for n, v in zip(FEATURES, values))
            raw = ('{"id":' + str(i) + ',"features":[' + ",".join(values) + "]}" if i % 4 else
                   '{"features":{' + named + '},"ts":' + str(i) + ".5}").encode()
        a, b = compiled.decode([raw]), general.decode([raw])
        assert a.rows == b.rows, raw
        assert np.array_equal(a.X.view(np.uint32), b.X.view(np.uint32)), (raw, a.X, b.X)
        assert a.ids == b.ids and a.keys == b.keys and a.ts == b.ts, raw
        assert [type(v) for v in (*a.ids, *a.keys, *a.ts)] == [type(v) for v in (*b.ids, *b.keys, *b.ts)], raw
        assert a.imputed == b.imputed and a.rejected == b.rejected, raw
        taken += _decoding.decode([raw], FEATURES, np.empty((1, 3), np.float32), 400) is not None
    assert 8_000 < taken < 38_000, taken


@_compiled
def test_a_batch_of_plain_events_is_decoded_compiled_in_one_call() -> None:
    from stream._native import _decoding

    payloads = _random_events(3000, seed=8, past_int64=False)
    payloads = [orjson.dumps(ev) for ev in map(orjson.loads, payloads)
                if not isinstance(ev["features"], dict) or "extra" not in ev["features"]]
    X = np.empty((len(payloads), 3), np.float32)
    assert _decoding.decode(payloads, FEATURES, X, 1000) is not None
    a = EventDecoder(FEATURES).decode(payloads)
    b = EventDecoder(FEATURES, compiled=False).decode(payloads)
    assert np.array_equal(a.X.view(np.uint32), b.X.view(np.uint32)) and np.array_equal(a.X.view(np.uint32), X.view(np.uint32))
    assert (a.rows, a.ids, a.keys, a.ts, a.imputed, a.rejected) == (b.rows, b.ids, b.keys, b.ts, b.imputed, b.rejected)
    # one event the compiled path does not take: the whole batch goes the general way, nothing lost
    mixed = EventDecoder(FEATURES).decode([*payloads[:10], b'{"features": [1, "x", 3]}', *payloads[10:20]])
    assert len(mixed.rows) == 20 and [r.index for r in mixed.rejected] == [10]
