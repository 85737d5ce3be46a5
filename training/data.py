"""Training data: one loader for every supported file format (contract §2).

A file becomes a :class:`Dataset`: a float32 matrix with NaN for missing values,
the feature names in column order, optional labels (1 = anomaly, 0 = normal,
NaN = unknown) and the SHA-256 of the file bytes for the model card.

=========== ==================================================================
``.csv``    header row; columns ``id``, ``ts`` and ``key`` are not features
``.parquet`` same rules as CSV
``.jsonl``  one contract §6 event per line: ``{"id", "ts", "key", "features"}``
            where ``features`` is ``{name: number}`` or ``[number, ...]``
            (names ``x0..x{D-1}``); a label or time column is looked up as a
            top-level key of the event first, then inside ``features``
``.npz``    arrays ``X`` [N, D] and optional ``y`` (the ADBench layout); names
            ``x0..x{D-1}``; ``y`` is the label column, used when present
=========== ==================================================================

Rows are sorted by the time column when one is named (epoch seconds or
ISO-8601), so that a chronological split keeps the most recent rows for
validation.  Label and time columns are never features.  Boolean columns are
features with values 0/1.  Anything else that is not numeric is rejected with
one line that names the file and the column and shows a bad value.
"""

from __future__ import annotations

import hashlib
import io
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import numpy as np
import orjson
import pandas as pd
from numpy.typing import NDArray

from training.errors import DataError

__all__ = ["SUFFIXES", "ColumnProfile", "Dataset", "LabelCounts", "load_dataset", "profile"]

log = logging.getLogger(__name__)

SUFFIXES: Final[tuple[str, ...]] = (".csv", ".parquet", ".jsonl", ".npz")
#: Event envelope fields; never features in CSV or Parquet either.
RESERVED: Final[frozenset[str]] = frozenset({"id", "ts", "key"})
MIN_ROWS: Final[int] = 10


@dataclass(frozen=True, slots=True)
class LabelCounts:
    """How many rows are known anomalies, known normals, and unlabelled."""

    anomalies: int
    normals: int
    unknown: int

    @classmethod
    def of(cls, y: NDArray[np.float64] | None, n_rows: int) -> LabelCounts:
        if y is None:
            return cls(0, 0, n_rows)
        return cls(int(np.sum(y == 1.0)), int(np.sum(y == 0.0)), int(np.sum(np.isnan(y))))

    def to_dict(self) -> dict[str, int]:
        return {"anomalies": self.anomalies, "normals": self.normals, "unknown": self.unknown}


@dataclass(frozen=True, slots=True)
class Dataset:
    """Rows ready for training.

    Parameters
    ----------
    X : ndarray of float32, shape (N, D)
        Raw feature values, NaN where missing.
    features : tuple of str
        Column names, in the order of ``X``'s columns (the model's feature order).
    y : ndarray of float64, shape (N,), or None
        1 = anomaly, 0 = normal, NaN = unknown; None when no label column.
    sha256 : str
        Hex digest of the file bytes.
    path : Path
        The file read.
    label_column, time_column : str or None
        The columns used as label and time, for the model card.
    """

    X: NDArray[np.float32]
    features: tuple[str, ...]
    y: NDArray[np.float64] | None
    sha256: str
    path: Path
    label_column: str | None = None
    time_column: str | None = None

    @property
    def n_rows(self) -> int:
        return int(self.X.shape[0])

    @property
    def labels(self) -> LabelCounts:
        return LabelCounts.of(self.y, self.n_rows)


@dataclass(frozen=True, slots=True)
class ColumnProfile:
    """Summary of one feature column; constant columns are kept but flagged."""

    name: str
    kind: Literal["bool", "int", "float"]
    missing_fraction: float
    distinct: int
    constant: bool


def load_dataset(
    path: str | Path, *, label_column: str | None = None, time_column: str | None = None
) -> Dataset:
    """Read a training file (``.csv``, ``.parquet``, ``.jsonl`` or ``.npz``).

    Parameters
    ----------
    path : str or Path
        The file; its suffix selects the format.
    label_column : str, optional
        Column with 1 (anomaly), 0 (normal) or empty (unknown).  For ``.npz`` the
        array ``y`` is used when present, whatever this says.
    time_column : str, optional
        Column with epoch seconds or ISO-8601 times; rows are sorted by it.

    Returns
    -------
    Dataset

    Raises
    ------
    DataError
        One line naming the file or column: missing file, unknown suffix,
        unreadable or empty file, unknown label or time column, a non-numeric
        column, bad label values, fewer than 10 rows, no feature column, or a
        column with no value at all.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(
            f"{p}: unknown file type {p.suffix or '(none)'!r}, "
            f"expected one of {', '.join(SUFFIXES)}"
        )
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{p}: no such file") from None
    except OSError as exc:
        raise DataError(f"{p}: cannot be read: {exc.strerror or exc}") from None
    if not data.strip():
        raise DataError(f"{p}: file is empty")
    if suffix == ".npz":
        top, feats = _read_npz(p, data)
        if "y" in top.columns and label_column is None:
            label_column = "y"
    elif suffix == ".jsonl":
        top, feats = _read_jsonl(p, data)
    else:
        frame = _read_table(p, data, suffix)
        frame.columns = [str(c) for c in frame.columns]
        reserved = [c for c in frame.columns if c in RESERVED]
        top, feats = frame[reserved], frame.drop(columns=reserved)

    available = [*top.columns, *(c for c in feats.columns if c not in top.columns)]
    n = len(feats)
    order = np.arange(n)
    if time_column is not None:
        t = _epoch_seconds(p, time_column, _pop(p, top, feats, time_column, "time", available))
        order = np.argsort(t, kind="stable")
    y = None
    if label_column is not None:
        y = _labels(p, label_column, _pop(p, top, feats, label_column, "label", available))[order]

    if n < MIN_ROWS:
        raise DataError(f"{p}: has {n} rows, expected at least {MIN_ROWS}")
    if feats.shape[1] == 0:
        raise DataError(f"{p}: has no feature columns (columns: {', '.join(available) or 'none'})")
    names = tuple(str(c) for c in feats.columns)
    X = np.empty((n, len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        X[:, j] = _feature(p, name, feats.iloc[:, j])
    X = X[order]
    ds = Dataset(
        X=X,
        features=names,
        y=y,
        sha256=hashlib.sha256(data).hexdigest(),
        path=p,
        label_column=label_column,
        time_column=time_column,
    )
    constant = [c.name for c in profile(ds) if c.constant]
    if constant:
        log.info("%s: constant columns kept: %s", p, ", ".join(constant))
    log.info("loaded %s: %d rows, %d features, labels %s", p, n, len(names), ds.labels.to_dict())
    return ds


def profile(dataset: Dataset) -> list[ColumnProfile]:
    """One :class:`ColumnProfile` per feature column, in feature order."""
    out: list[ColumnProfile] = []
    n = dataset.n_rows
    for j, name in enumerate(dataset.features):
        col = dataset.X[:, j]
        present = col[~np.isnan(col)]
        distinct = np.unique(present)
        kind: Literal["bool", "int", "float"]
        if np.isin(distinct, (0.0, 1.0)).all():
            kind = "bool"
        elif np.all(distinct == np.round(distinct)):
            kind = "int"
        else:
            kind = "float"
        out.append(
            ColumnProfile(
                name=name,
                kind=kind,
                missing_fraction=float(np.isnan(col).mean()) if n else 0.0,
                distinct=int(distinct.size),
                constant=bool(distinct.size <= 1),
            )
        )
    return out


def _read_table(p: Path, data: bytes, suffix: str) -> pd.DataFrame:
    kind = suffix.lstrip(".").upper()
    try:
        if suffix == ".csv":
            return pd.read_csv(io.BytesIO(data))
        return pd.read_parquet(io.BytesIO(data))
    except pd.errors.EmptyDataError:
        raise DataError(f"{p}: file is empty") from None
    except (ValueError, OSError, UnicodeDecodeError) as exc:  # pyarrow's errors are ValueErrors
        raise DataError(f"{p}: cannot be read as {kind}: {_first_line(exc)}") from None


def _read_npz(p: Path, data: bytes) -> tuple[pd.DataFrame, pd.DataFrame]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{p}: cannot be read as NPZ: {_first_line(exc)}") from None
    if "X" not in arrays:
        raise DataError(f"{p}: lacks array 'X' (arrays: {', '.join(arrays) or 'none'})")
    X = arrays["X"]
    if X.ndim != 2:
        raise DataError(f"{p}: array 'X' must be 2-d [rows, features], got shape {X.shape}")
    if not (np.issubdtype(X.dtype, np.number) or X.dtype == np.bool_):
        raise DataError(f"{p}: array 'X' must be numeric, got dtype {X.dtype}")
    feats = pd.DataFrame(X.astype(np.float64), columns=[f"x{j}" for j in range(X.shape[1])])
    top = pd.DataFrame(index=feats.index)
    if "y" in arrays:
        y = arrays["y"]
        if y.shape != (X.shape[0],):
            raise DataError(
                f"{p}: array 'y' must have shape ({X.shape[0]},) like X's rows, got {y.shape}"
            )
        top["y"] = y
    return top, feats


def _read_jsonl(p: Path, data: bytes) -> tuple[pd.DataFrame, pd.DataFrame]:
    tops: list[dict[str, object]] = []
    rows: list[object] = []
    width: int | None = None
    as_list: bool | None = None
    for lineno, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise DataError(f"{p}: line {lineno} is not valid JSON: {exc}") from None
        if not isinstance(event, dict) or "features" not in event:
            raise DataError(f"{p}: line {lineno} is not an event object with a 'features' field")
        feats = event.pop("features")
        if isinstance(feats, list):
            if as_list is False or (width is not None and len(feats) != width):
                expected = f"a list of {width} numbers" if as_list else "an object like line 1"
                raise DataError(
                    f"{p}: line {lineno} 'features' should be {expected}, "
                    f"got a list of {len(feats)}"
                )
            as_list, width = True, len(feats)
        elif isinstance(feats, dict):
            if as_list:
                raise DataError(
                    f"{p}: line {lineno} 'features' should be a list like line 1, got an object"
                )
            as_list = False
        else:
            raise DataError(
                f"{p}: line {lineno} 'features' must be an object or a list, "
                f"got {type(feats).__name__}"
            )
        tops.append(event)
        rows.append(feats)
    if not rows:
        raise DataError(f"{p}: file is empty")
    if as_list:
        frame = pd.DataFrame(rows, columns=[f"x{j}" for j in range(width or 0)], dtype=object)
    else:
        frame = pd.DataFrame.from_records(rows)
    frame.columns = [str(c) for c in frame.columns]
    return pd.DataFrame.from_records(tops, index=frame.index), frame


def _pop(
    p: Path, top: pd.DataFrame, feats: pd.DataFrame, column: str, role: str, available: list[str]
) -> pd.Series:
    """The label or time column (top-level first), removed from the features."""
    if column not in top.columns and column not in feats.columns:
        raise DataError(
            f"{p}: no {role} column {column!r} (columns: {', '.join(available) or 'none'})"
        )
    s = top[column] if column in top.columns else feats[column]
    if column in feats.columns:
        del feats[column]
    return s


def _to_float(s: pd.Series) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Values as float64 and a mask of values that are not numbers (empty means missing)."""
    if pd.api.types.is_bool_dtype(s.dtype) or pd.api.types.is_numeric_dtype(s.dtype):
        values = np.array(s.to_numpy(dtype=np.float64, na_value=np.nan), copy=True)
        return values, np.zeros(len(s), dtype=bool)
    obj = s.astype(object)
    cleaned = obj.map(
        lambda v: (
            np.nan
            if v is None or (isinstance(v, str) and not v.strip())
            else float(v)
            if isinstance(v, bool)
            else v
        )
    )
    num = pd.to_numeric(cleaned, errors="coerce")
    bad = (num.isna() & cleaned.notna()).to_numpy()
    return np.array(num.to_numpy(dtype=np.float64, na_value=np.nan), copy=True), bad


def _feature(p: Path, name: str, s: pd.Series) -> NDArray[np.float64]:
    values, bad = _to_float(s)
    if bad.any():
        example = s.to_numpy(dtype=object)[bad][0]
        raise DataError(f"{p}: column {name!r} must be numeric (or boolean), got {example!r}")
    if np.isinf(values).any():
        raise DataError(f"{p}: column {name!r} must be finite, got {values[np.isinf(values)][0]}")
    if np.isnan(values).all():
        raise DataError(f"{p}: column {name!r} has no values (all {len(values)} missing)")
    return values


def _labels(p: Path, column: str, s: pd.Series) -> NDArray[np.float64]:
    values, bad = _to_float(s)
    bad |= ~(np.isnan(values) | (values == 0.0) | (values == 1.0))
    if bad.any():
        example = s.to_numpy(dtype=object)[bad][0]
        raise DataError(f"{p}: label column {column!r} must hold 1, 0 or empty, got {example!r}")
    return values


def _epoch_seconds(p: Path, column: str, s: pd.Series) -> NDArray[np.float64]:
    values, not_number = _to_float(s)
    if not_number.any():
        text = s[not_number].astype(str)
        parsed = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
        epoch = pd.Timestamp(0, tz="UTC")
        values[not_number] = ((parsed - epoch) / pd.Timedelta(seconds=1)).to_numpy(
            dtype=np.float64, na_value=np.nan
        )
    bad = np.isnan(values)
    if bad.any():
        example = s.to_numpy(dtype=object)[bad][0]
        raise DataError(
            f"{p}: time column {column!r} needs epoch seconds or ISO-8601 in every row, "
            f"got {example!r}"
        )
    return values


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
