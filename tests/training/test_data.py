"""Loading training files: every format gives the same dataset; every bad file one clear line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.data import Dataset, load_dataset, profile
from training.errors import DataError

N = 20


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    df = pd.DataFrame(rng.normal(size=(N, 3)).astype(np.float32), columns=["a", "b", "c"])
    df.loc[2, "b"] = np.nan
    df["flag"] = rng.random(N) < 0.5
    label = np.where(rng.random(N) < 0.3, 1.0, 0.0)
    label[[3, 11]] = np.nan
    df["label"] = label
    df["ts"] = rng.permutation(N) + 1_700_000_000
    return df


def _expected(df: pd.DataFrame, sort: bool = True) -> tuple[np.ndarray, np.ndarray]:
    d = df.sort_values("ts", kind="stable") if sort else df
    return d[["a", "b", "c", "flag"]].to_numpy(dtype=np.float32), d["label"].to_numpy()


def _iso(ts: int) -> str:
    return str(pd.Timestamp(ts, unit="s", tz="UTC").isoformat())


def _write_jsonl(path: Path, df: pd.DataFrame, *, as_list: bool) -> None:
    with open(path, "w") as fh:
        for i, r in df.iterrows():
            values = [None if np.isnan(r[c]) else float(r[c]) for c in ("a", "b", "c")]
            values.append(bool(r["flag"]))
            feats = values if as_list else dict(zip(("a", "b", "c", "flag"), values, strict=True))
            label = None if np.isnan(r["label"]) else int(r["label"])
            event = {
                "id": i,
                "ts": _iso(int(r["ts"])),
                "key": "k",
                "label": label,
                "features": feats,
            }
            fh.write(json.dumps(event) + "\n")


Writer = Callable[[Path, pd.DataFrame], Path]


def _csv(tmp: Path, df: pd.DataFrame) -> Path:
    df.to_csv(tmp / "d.csv", index=False)
    return tmp / "d.csv"


def _parquet(tmp: Path, df: pd.DataFrame) -> Path:
    df.to_parquet(tmp / "d.parquet")
    return tmp / "d.parquet"


def _jsonl_object(tmp: Path, df: pd.DataFrame) -> Path:
    _write_jsonl(tmp / "d.jsonl", df, as_list=False)
    return tmp / "d.jsonl"


def _jsonl_list(tmp: Path, df: pd.DataFrame) -> Path:
    _write_jsonl(tmp / "d.jsonl", df, as_list=True)
    return tmp / "d.jsonl"


@pytest.mark.parametrize(
    ("writer", "names"),
    [
        (_csv, ("a", "b", "c", "flag")),
        (_parquet, ("a", "b", "c", "flag")),
        (_jsonl_object, ("a", "b", "c", "flag")),
        (_jsonl_list, ("x0", "x1", "x2", "x3")),
    ],
    ids=["csv", "parquet", "jsonl-object", "jsonl-list"],
)
def test_formats_round_trip(
    writer: Writer, names: tuple[str, ...], frame: pd.DataFrame, tmp_path: Path
) -> None:
    path = writer(tmp_path, frame)
    ds = load_dataset(path, label_column="label", time_column="ts")
    X, y = _expected(frame)
    assert ds.features == names
    assert ds.X.dtype == np.float32
    np.testing.assert_array_equal(ds.X, X)
    assert ds.y is not None
    np.testing.assert_array_equal(ds.y, y)
    assert (ds.label_column, ds.time_column) == ("label", "ts")
    assert len(ds.sha256) == 64
    assert ds.labels.unknown == 2


def test_npz_uses_y_as_labels(frame: pd.DataFrame, tmp_path: Path) -> None:
    X, y = _expected(frame, sort=False)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    ds = load_dataset(tmp_path / "d.npz")
    assert ds.features == ("x0", "x1", "x2", "x3")
    np.testing.assert_array_equal(ds.X, X)
    assert ds.y is not None and ds.label_column == "y"
    np.testing.assert_array_equal(ds.y, y)


def test_without_label_or_time_keeps_file_order_and_drops_envelope(
    frame: pd.DataFrame, tmp_path: Path
) -> None:
    ds = load_dataset(_csv(tmp_path, frame.drop(columns=["label"])))
    assert ds.features == ("a", "b", "c", "flag")  # ts is an envelope column, never a feature
    assert ds.y is None and ds.labels.unknown == N
    np.testing.assert_array_equal(ds.X, _expected(frame, sort=False)[0])


def test_epoch_and_iso_times_sort_alike(frame: pd.DataFrame, tmp_path: Path) -> None:
    iso = frame.assign(ts=[_iso(int(t)) for t in frame["ts"]])
    a = load_dataset(_csv(tmp_path, frame), time_column="ts")
    (tmp_path / "iso").mkdir()
    b = load_dataset(_csv(tmp_path / "iso", iso), time_column="ts")
    np.testing.assert_array_equal(a.X, b.X)


def test_profile_flags_constant_columns(frame: pd.DataFrame, tmp_path: Path) -> None:
    ds = load_dataset(_csv(tmp_path, frame.assign(const=3.0)), label_column="label")
    prof = {p.name: p for p in profile(ds)}
    assert "const" in ds.features and prof["const"].constant
    assert not prof["a"].constant
    assert prof["flag"].kind == "bool" and prof["a"].kind == "float"
    assert prof["b"].missing_fraction == pytest.approx(1 / N)


def _rows(n: int = N, **cols: object) -> pd.DataFrame:
    base = pd.DataFrame({"a": np.arange(n, dtype=float), "b": np.linspace(0, 1, n)})
    for name, value in cols.items():
        base[name] = value
    return base


def _bad_csv(tmp: Path, df: pd.DataFrame) -> Path:
    df.to_csv(tmp / "bad.csv", index=False)
    return tmp / "bad.csv"


CASES: list[tuple[str, Callable[[Path], Path], dict[str, str], tuple[str, ...]]] = [
    ("missing file", lambda t: t / "nope.csv", {}, ("nope.csv", "no such file")),
    ("unknown suffix", lambda t: _write(t / "d.txt", b"a\n1\n"), {}, ("d.txt", "'.txt'", ".csv")),
    ("empty file", lambda t: _write(t / "e.csv", b""), {}, ("e.csv", "empty")),
    (
        "unreadable parquet",
        lambda t: _write(t / "g.parquet", b"not parquet"),
        {},
        ("g.parquet", "cannot be read as PARQUET"),
    ),
    (
        "bad json line",
        lambda t: _write(t / "j.jsonl", b'{"features": [1]}\n{oops\n'),
        {},
        ("j.jsonl", "line 2"),
    ),
    ("npz without X", lambda t: _npz(t / "n.npz", Z=np.zeros((12, 2))), {}, ("n.npz", "'X'", "Z")),
    (
        "non-numeric column",
        lambda t: _bad_csv(t, _rows(city=["paris"] * N)),
        {},
        ("bad.csv", "'city'", "'paris'"),
    ),
    (
        "unknown label column",
        lambda t: _bad_csv(t, _rows()),
        {"label_column": "lbl"},
        ("'lbl'", "label", "a, b"),
    ),
    (
        "unknown time column",
        lambda t: _bad_csv(t, _rows()),
        {"time_column": "when"},
        ("'when'", "time", "a, b"),
    ),
    (
        "bad label value",
        lambda t: _bad_csv(t, _rows(label=[2] * N)),
        {"label_column": "label"},
        ("'label'", "1, 0 or empty", "2"),
    ),
    (
        "bad time value",
        lambda t: _bad_csv(t, _rows(ts=["yesterday"] * N)),
        {"time_column": "ts"},
        ("'ts'", "ISO-8601", "'yesterday'"),
    ),
    ("too few rows", lambda t: _bad_csv(t, _rows(5)), {}, ("bad.csv", "5 rows", "at least 10")),
    (
        "no feature columns",
        lambda t: _bad_csv(t, pd.DataFrame({"id": range(N), "ts": range(N)})),
        {},
        ("bad.csv", "no feature columns", "id, ts"),
    ),
    ("all-NaN column", lambda t: _bad_csv(t, _rows(gone=np.nan)), {}, ("'gone'", "no values")),
]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


@pytest.mark.parametrize(("case", "make", "kwargs", "needles"), CASES, ids=[c[0] for c in CASES])
def test_unusable_input_is_one_line_naming_it(
    case: str,
    make: Callable[[Path], Path],
    kwargs: dict[str, str],
    needles: tuple[str, ...],
    tmp_path: Path,
) -> None:
    path = make(tmp_path)
    with pytest.raises(DataError) as info:
        load_dataset(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


def test_dataset_is_frozen(frame: pd.DataFrame, tmp_path: Path) -> None:
    ds: Dataset = load_dataset(_csv(tmp_path, frame))
    with pytest.raises(AttributeError):
        ds.path = Path("other")  # type: ignore[misc]


def test_jsonl_label_inside_features_is_not_a_feature(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    lines = [
        json.dumps({"ts": 100 - i, "features": {"a": float(i), "b": 1.0, "label": i % 2}})
        for i in range(12)
    ]
    path.write_text("\n".join(lines) + "\n")
    ds = load_dataset(path, label_column="label", time_column="ts")
    assert ds.features == ("a", "b")
    np.testing.assert_array_equal(ds.X[:, 0], np.arange(12)[::-1])
    assert ds.y is not None
    np.testing.assert_array_equal(ds.y, (np.arange(12) % 2)[::-1])
