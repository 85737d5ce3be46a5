"""`anomstream train`: profile, --space, --jobs, --max-score-us, leaderboard with costs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stream import cli as cli_module
from stream.cli import main


def _run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {"a": rng.normal(size=400), "b": rng.normal(size=400) * 10, "level": rng.integers(0, 4, size=400),
         "flat": 1.0}
    )  # fmt: skip
    frame.loc[::50, "a"] = np.nan
    path = tmp_path / "data.csv"
    frame.to_csv(path, index=False)
    return path


def test_train_with_a_space_file_prints_profile_and_costs(
    capsys: pytest.CaptureFixture[str], data: Path, tmp_path: Path
) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("algorithms: [iforest, ecod]\npreprocessing: {onehot: false}\n"
                     "params: {iforest: {n_estimators: {low: 20, high: 40, step: 10}}}\n")  # fmt: skip
    code, out, err = _run(capsys, "train", data, "--label-free", "centrality", "--space", space, "--trials", "3", "--jobs", "2",
                          "--max-score-us", "100000", "--registry", tmp_path / "R")  # fmt: skip
    assert code == 0, err
    assert "400 rows × 4 features" in out
    profile = out[out.index("feature") :]
    assert "constant" in profile and "one-hot candidate" in profile and "2.0%" in profile
    header = next(line for line in out.splitlines() if "algorithm" in line and "score_us" in line)
    assert {"rank", "value", "fit_s", "score_us"} <= set(header.split())
    assert "µs/row" in out and "artifact:" in out
    board = pd.read_csv(tmp_path / "R" / "default" / "1" / "leaderboard.csv")
    assert set(board["algorithm"]) <= {"iforest", "ecod"} and len(board) == 3


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--space", "missing.yaml"], "missing.yaml"),
        (["--space", "{bad}"], "bogus"),
        (["--jobs", "0"], "--jobs"),
        (["--max-score-us", "0"], "--max-score-us"),
        (["--algorithms", "iforest,nope"], "nope"),
    ],
)
def test_bad_options_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], data: Path, tmp_path: Path, args: list[str], named: str
) -> None:
    if "{bad}" in args:
        bad = tmp_path / "bad.yaml"
        bad.write_text("bogus: 1\n")
        args = [str(bad) if a == "{bad}" else a for a in args]
    code, _, err = _run(capsys, "train", data, "--registry", tmp_path / "R", *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and named in lines[0], err
    assert "Traceback" not in err


def test_algorithm_names_come_from_the_zoo() -> None:
    from models.zoo import ALGORITHMS

    assert cli_module.ALGORITHM_NAMES == tuple(ALGORITHMS)


def test_help_lists_the_contract_algorithms(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "train", "--help")
    assert code == 0
    for name in ("iforest", "ecod", "knn", "autoencoder", "vae"):
        assert name in out
    assert "--space" in out and "--jobs" in out and "--max-score-us" in out
