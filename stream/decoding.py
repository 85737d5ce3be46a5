"""Decode and validate a batch of raw events into one float32 matrix.

One call takes every value of a micro-batch and returns the feature matrix of
the valid events plus a :class:`Rejection` (a dead-letter code and a sentence)
for each bad one.  Nothing is dropped silently: every input index ends up
either in ``rows`` or in ``rejected``.

A batch of plain events (bytes payloads of the contract's shape: ``id``,
``key``, ``ts`` and every card feature as a number or null, nothing escaped
or unusual) goes first through ``stream/_native/decoding.c``: one call
parses the whole batch straight into the float32 matrix, with the same
values and ids as the path below (tested against it on fuzzed events), at
~1.1 against ~2.3 µs per 490-byte event of 32 features on the 2-core
reference machine.  A batch holding any other payload takes the general path
as a whole.

On the general path each event is one call of a msgspec decoder typed for the card's
features: it parses, checks that every feature is a number or null and lays
them out in card order, all in C.  An event that decoder refuses for any
reason (a missing or non-numeric feature, a NaN literal, an integer ``id``
past int64, invalid JSON...) takes the general path: ``orjson.loads`` and checks in
Python that name the problem (or accept what the typed decoder is stricter
about).  The matrix, the imputation mask and the overflow check are numpy
calls over the whole batch.

Examples
--------
>>> dec = EventDecoder(["a", "b"])
>>> out = dec.decode([b'{"features": {"a": 1, "b": null}}', b'{"features": [1, "x"]}', b'{'])
>>> out.X.tolist(), out.rows, out.imputed
([[1.0, nan]], [0], [('b',)])
>>> [(r.index, r.code) for r in out.rejected]
[(1, 'non_numeric'), (2, 'invalid_json')]
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Annotated, Any, Final, Literal

import msgspec
import numpy as np
import orjson
from numpy.typing import NDArray

try:  # the extension module built with the package (hatch_build.py)
    from stream._native import _decoding
except ImportError:
    _decoding = None  # type: ignore[assignment]

__all__ = ["REJECT_CODES", "DecodedBatch", "EventDecoder", "RejectCode", "Rejection", "event_json", "plain_array"]

RejectCode = Literal[
    "invalid_json", "missing_features", "wrong_length", "non_numeric", "non_finite", "too_large"
]
REJECT_CODES: Final[tuple[RejectCode, ...]] = (
    "invalid_json", "missing_features", "wrong_length", "non_numeric", "non_finite", "too_large",
)
Parsed = dict[str, Any] | list[Any] | int | float | bool | None
"""A JSON value that was parsed already (an element of a JSON array frame)."""
_NUMERIC: Final = frozenset({int, float, type(None)})
_F32_MAX: Final = float(np.finfo(np.float32).max)
DEFAULT_MAX_EVENT_BYTES: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why the event at ``index`` of the batch went to the dead-letter topic."""

    index: int
    code: RejectCode
    detail: str


@dataclass(slots=True)
class DecodedBatch:
    """The valid events of a batch as a matrix, and the rejected ones.

    ``X[i]`` is the event at input index ``rows[i]``; ``ids[i]``, ``keys[i]``
    and ``ts[i]`` are its ``id``, ``key`` and ``ts`` (None where absent);
    ``imputed[i]`` names its null features.
    """

    X: NDArray[np.float32]
    rows: list[int]
    ids: list[Any]
    keys: list[Any]
    ts: list[Any]
    imputed: list[tuple[str, ...] | None]
    rejected: list[Rejection] = field(default_factory=list)


class EventDecoder:
    """Turns raw event payloads into rows in the card's feature order.

    Parameters
    ----------
    features : sequence of str
        The model card's feature names, in order.
    max_event_bytes : int
        Larger payloads are rejected as ``too_large`` before parsing.
    compiled : bool
        Try the compiled fast path first (where it was built): a batch of
        plain events (``stream/_native/decoding.c``) goes straight into the
        float32 matrix, the same values as the general path; any other batch
        takes the general path.
    """

    def __init__(self, features: Sequence[str], *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
                 compiled: bool = True) -> None:
        self.features = tuple(features)
        self.n_features = len(self.features)
        self.max_event_bytes = max_event_bytes
        getter = itemgetter(*self.features)
        self._pick = getter if self.n_features > 1 else (lambda d: (getter(d),))
        self._event_type: type | None = None
        self._typed: Any = None
        self._typed_array: Any = None
        if self.features:
            self._event_type = _event_type(self.features)
            self._typed = msgspec.json.Decoder(self._event_type).decode
            self._typed_array = msgspec.json.Decoder(list[self._event_type]).decode  # type: ignore[name-defined]
        self._compiled = _decoding.decode if compiled and _decoding is not None and self.features else None

    def parse_array(self, frame: bytes | str) -> list[Any] | None:
        """The events of a JSON array frame (a WebSocket frame), or None when it is not a JSON array.

        Where every element fits the card, the whole array is decoded at once
        by the typed decoder and :meth:`decode` takes its events as they are;
        otherwise orjson parses it and each element is checked on its own.
        """
        if self._typed_array is not None:
            try:
                events: list[Any] = self._typed_array(frame)
                return events
            except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
                pass
        return plain_array(frame)

    def decode(self, values: Sequence[bytes | str | Parsed]) -> DecodedBatch:
        """Decode and validate one batch; see the module docstring.

        A value that is not ``bytes``/``str`` is taken as already parsed JSON (an
        element of a WebSocket array frame, from :meth:`parse_array`: typed
        events or plain JSON values) and only validated; a ``str`` element of
        an array is read as the JSON text of an event.
        """
        if self._compiled is not None and type(values) is list and values:
            X = np.empty((len(values), self.n_features), dtype=np.float32)
            got = self._compiled(values, self.features, X, self.max_event_bytes)
            if got is not None:
                return DecodedBatch(X=X, rows=list(range(len(values))), ids=got[0], keys=got[1], ts=got[2],
                                    imputed=self._imputed(np.isnan(X)))
        rejected: list[Rejection] = []
        rows: list[int] = []
        ids: list[Any] = []
        keys: list[Any] = []
        stamps: list[Any] = []
        matrix: list[Sequence[Any]] = []
        d = self.n_features
        pick = self._pick
        numeric = _NUMERIC
        limit = self.max_event_bytes
        typed, event_type = self._typed, self._event_type
        astuple = msgspec.structs.astuple
        for i, raw in enumerate(values):
            tev: Any = None
            if isinstance(raw, (bytes, str)):
                if len(raw) > limit:
                    rejected.append(Rejection(i, "too_large", f"event is {len(raw)} bytes, the limit is {limit}"))
                    continue
                if typed is not None:
                    try:
                        tev = typed(raw)
                    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
                        pass  # the general path below says what is wrong, or takes what is only unusual
            elif type(raw) is event_type:
                tev = raw  # typed already: an element of an array frame (parse_array)
            if tev is not None:
                values_of = tev.features
                if type(values_of) is list:
                    if len(values_of) != d:
                        rejected.append(Rejection(i, "wrong_length", _length_detail(len(values_of), d)))
                        continue
                    row: Sequence[Any] = values_of
                else:
                    row = astuple(values_of)
                rows.append(i)
                ids.append(tev.id)
                keys.append(tev.key)
                stamps.append(tev.ts)
                matrix.append(row)
                continue
            if isinstance(raw, (bytes, str)):
                try:
                    ev = orjson.loads(raw)
                except orjson.JSONDecodeError as exc:
                    ev = _slow_parse(raw, exc)
                    if isinstance(ev, Rejection):
                        rejected.append(Rejection(i, ev.code, ev.detail))
                        continue
            elif isinstance(raw, msgspec.Struct):  # typed for another model's features (a swap in between)
                ev = msgspec.to_builtins(raw)
            else:
                ev = raw  # already parsed: an element of a JSON array frame
            if type(ev) is not dict:
                rejected.append(Rejection(i, "invalid_json", f"expected a JSON object, got {_json_type(ev)}"))
                continue
            feats: Any = ev.get("features")
            t = type(feats)
            if t is dict:
                try:
                    row = pick(feats)
                except KeyError:
                    missing = [f for f in self.features if f not in feats]
                    rejected.append(Rejection(i, "missing_features", _missing_detail(missing, d)))
                    continue
            elif t is list:
                row = feats
                if len(row) != d:
                    rejected.append(Rejection(i, "wrong_length", _length_detail(len(row), d)))
                    continue
            elif feats is None:
                rejected.append(Rejection(i, "missing_features", "the event has no 'features'"))
                continue
            else:
                rejected.append(
                    Rejection(i, "missing_features", f"'features' must be an object or a list, got {_json_type(feats)}")
                )
                continue
            if not numeric.issuperset(map(type, row)):
                rejected.append(Rejection(i, "non_numeric", _non_numeric_detail(row, self.features)))
                continue
            rows.append(i)
            ids.append(ev.get("id"))
            keys.append(ev.get("key"))
            stamps.append(ev.get("ts"))
            matrix.append(row)

        X64 = np.array(matrix, dtype=np.float64).reshape(len(matrix), d)
        nan = np.isnan(X64)
        bad = ~nan & (np.abs(X64) > _F32_MAX)
        if bad.any():
            keep = np.asarray(~bad.any(axis=1), dtype=bool)
            for r in np.flatnonzero(~keep):
                j = int(np.flatnonzero(bad[r])[0])
                rejected.append(
                    Rejection(rows[r], "non_finite", f"feature {self.features[j]!r} is {X64[r, j]!r}, outside float32 range")
                )
            X64, nan = X64[keep], nan[keep]
            kept = keep.tolist()
            rows, ids, keys, stamps = ([v for v, k in zip(col, kept) if k] for col in (rows, ids, keys, stamps))
        if rejected and len(rejected) > 1:
            rejected.sort(key=lambda rej: rej.index)
        return DecodedBatch(
            X=X64.astype(np.float32), rows=rows, ids=ids, keys=keys, ts=stamps, imputed=self._imputed(nan),
            rejected=rejected,
        )

    def _imputed(self, nan: NDArray[np.bool_]) -> list[tuple[str, ...] | None]:
        """Per row, the names of its null features (None where it has none)."""
        imputed: list[tuple[str, ...] | None] = [None] * nan.shape[0]
        if nan.any():
            for r in np.flatnonzero(nan.any(axis=1)):
                imputed[r] = tuple(self.features[j] for j in np.flatnonzero(nan[r]))
        return imputed


# What the typed decoder takes as id, key and ts: the contract's string, number and null (an integer
# past int64 takes the general path, where orjson reads it as it reads every other event's).
_Int64 = Annotated[int, msgspec.Meta(ge=-(1 << 63), le=(1 << 63) - 1)]
_Scalar = _Int64 | float | str | None


def _event_type(features: Sequence[str]) -> type:
    """The msgspec struct of an event of these features (a ``features`` object or list).

    The object form decodes into a struct with one ``float | None`` field per
    feature, in card order (fields ``f0``, ``f1``... renamed to the feature
    names, so any name works); unknown names are ignored, as are unknown keys
    of the event.  JSON integers become floats (the same value as numpy's
    conversion); booleans, strings and nested values are refused.  Absent
    ``id``, ``key`` and ``ts`` are left out when an event is encoded again
    (:func:`event_json`).
    """
    names = {f"f{j}": name for j, name in enumerate(features)}
    values = msgspec.defstruct(
        "Features", [(field, float | None) for field in names], rename=names, gc=False
    )
    return msgspec.defstruct(
        "Event",
        [("features", values | list[float | None]), ("id", _Scalar, None), ("key", _Scalar, None),
         ("ts", _Scalar, None)],
        gc=False, omit_defaults=True,
    )


def plain_array(frame: bytes | str) -> list[Any] | None:
    """A JSON array frame's elements as plain JSON values, or None when the frame is not a JSON array."""
    try:
        parsed = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    return parsed if type(parsed) is list else None


def event_json(value: Any) -> bytes:
    """The JSON text of a parsed event (a typed one or plain JSON values), for dead-letter records."""
    if isinstance(value, msgspec.Struct):
        return msgspec.json.encode(value)
    return orjson.dumps(value)


def _length_detail(n: int, d: int) -> str:
    return f"'features' has {n} values, the model expects {d}"


def _slow_parse(raw: bytes | str, exc: orjson.JSONDecodeError) -> Any:
    """Second look at a payload orjson refused: NaN/Infinity literals, bad UTF-8."""
    msg = str(exc)
    if "infinity" in msg:
        return Rejection(-1, "non_finite", "a number overflows a double (infinite)")
    try:
        text = raw.decode() if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        return Rejection(-1, "invalid_json", "payload is not valid UTF-8")
    if "NaN" in text or "Infinity" in text:
        try:
            ev = json.loads(text)
        except ValueError:
            pass
        else:
            if type(ev) is dict and isinstance(ev.get("features"), (dict, list)):
                f = ev["features"]
                vals = f.values() if isinstance(f, dict) else f
                if any(isinstance(v, float) and math.isinf(v) for v in vals):
                    return Rejection(-1, "non_finite", "a feature is Infinity")
                ev["features"] = (
                    {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in f.items()}
                    if isinstance(f, dict)
                    else [None if isinstance(v, float) and math.isnan(v) else v for v in f]
                )
            return ev
    return Rejection(-1, "invalid_json", " ".join(msg.split()))


def _json_type(v: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


def _missing_detail(missing: list[str], d: int) -> str:
    shown = ", ".join(repr(m) for m in missing[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    return f"'features' lacks {len(missing)} of the model's {d} features: {shown}{more}"


def _non_numeric_detail(row: Sequence[Any], names: Sequence[str]) -> str:
    for name, v in zip(names, row):
        if type(v) not in _NUMERIC:
            return f"feature {name!r} is {_json_type(v)} ({str(v)[:40]!r}), expected a number or null"
    return "a feature is not a number"
