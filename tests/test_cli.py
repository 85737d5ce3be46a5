"""The ``anomstream`` command line, run for real in subprocesses (contract §2–§4).

One module-scoped registry is trained through the CLI (an unlabelled ``default@1``, then a
labelled ``default@2`` with ``--no-promote``); the happy-path tests read it, and the promote /
rollback test works on a copy so that the order of the tests does not matter.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import pandas as pd
import pytest

from stream.cli import cli
from stream.synthetic import SyntheticStream
from tests.conftest import python_cmd, subprocess_env

D = 4
FEATURES = [f"f{i}" for i in range(D)]
OUTLIER_ROWS = (5, 77, 150)
CARD_FIELDS = ("name", "version", "created_at", "features", "detector", "training", "metrics",
               "calibration", "threshold", "medians", "parity", "lineage")


def run_cli(*args: str | Path, cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = subprocess_env()
    full_env.update(env or {})
    return subprocess.run(python_cmd(*map(str, args)), env=full_env, capture_output=True, check=False,
                          text=True, cwd=cwd, timeout=timeout)


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def write_csv(path: Path, X: np.ndarray, columns: list[str]) -> Path:
    np.savetxt(path, X, delimiter=",", header=",".join(columns), comments="", fmt="%.6g")
    return path


@dataclass(frozen=True)
class Workspace:
    """Inputs and the trained registry shared by the module's tests."""

    cwd: Path
    root: Path
    data: Path  # unlabelled training rows (default@1)
    labelled: Path  # the same features plus ``label`` (default@2)
    probe: Path  # rows to score, with big outliers at OUTLIER_ROWS
    train1: subprocess.CompletedProcess[str]
    current_after_train1: str
    current_after_train2: str


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    cwd = tmp_path_factory.mktemp("cli")
    gen = SyntheticStream(n_features=D, seed=11)
    X, _ = gen.sample(600, anomaly_rate=0.01)
    data = write_csv(cwd / "data.csv", X, FEATURES)
    XL, yl = gen.sample(600, anomaly_rate=0.05)
    labelled = cwd / "labelled.csv"
    frame = pd.DataFrame(XL, columns=FEATURES)
    frame["label"] = yl
    frame.to_csv(labelled, index=False)
    P, _ = gen.sample(200)
    for r in OUTLIER_ROWS:
        P[r, [0, 2]] = gen.mean[[0, 2]] + 50 * gen.scale[[0, 2]]
    probe = write_csv(cwd / "probe.csv", P, FEATURES)

    root = cwd / "R"
    current = root / "default" / "current"
    train1 = ok(run_cli("train", data, "--label-free", "centrality", "--trials", "2", "--budget", "30", "--registry", root,
                        cwd=cwd))
    after1 = current.read_text().strip()
    ok(run_cli("train", labelled, "--label-column", "label", "--trials", "2", "--budget", "30",
               "--registry", root, "--no-promote", cwd=cwd))
    after2 = current.read_text().strip()
    return Workspace(cwd, root, data, labelled, probe, train1, after1, after2)


# --------------------------------------------------------------------------- errors

@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of unusable inputs, plus one valid CSV."""
    d = tmp_path_factory.mktemp("bad")
    X, _ = SyntheticStream(n_features=D, seed=5).sample(50)
    write_csv(d / "data.csv", X, FEATURES)
    write_csv(d / "three_features.csv", X[:, :3], FEATURES[:3])
    words = pd.DataFrame(X[:, :2], columns=["f0", "f1"])
    words["colour"] = ["red", "green", "blue", "black", "white"] * 10
    words.to_csv(d / "words.csv", index=False)
    (d / "unknown_key.yaml").write_text("batching:\n  max_batch: 64\n  bogus_key: 3\n")
    return d


ERRORS = [
    # (id, args, extra environment, text the one line must contain)
    ("missing-file", ["train", "missing.csv"], {}, "missing.csv"),
    ("non-numeric-column", ["train", "words.csv"], {}, "colour"),
    ("unknown-label-column", ["train", "data.csv", "--label-column", "nope"], {}, "nope"),
    ("bad-flag", ["train", "--bogus"], {}, "--bogus"),
    ("unknown-algorithm", ["train", "data.csv", "--algorithms", "lof,xx"], {}, "xx"),
    ("negative-budget", ["train", "data.csv", "--budget", "-1"], {}, "--budget"),
    ("unusable-registry", ["train", "data.csv", "--registry", "data.csv/sub"], {}, "data.csv/sub"),
    ("unknown-model", ["score", "--model", "nosuch", "data.csv"], {}, "nosuch"),
    ("missing-feature", ["score", "--model", "{model}", "three_features.csv"], {}, "f3"),
    ("unwritable-output", ["score", "--model", "{model}", "data.csv", "-o", "nodir/out.csv"], {},
     "nodir/out.csv"),
    ("show-unknown-model", ["models", "show", "nosuch"], {}, "nosuch"),
    ("promote-unknown-version", ["models", "promote", "default", "99", "--registry", "{root}"],
     {}, "99"),
    ("missing-config", ["serve", "--config", "missing.yaml"], {}, "missing.yaml"),
    ("unknown-config-key", ["serve", "--config", "unknown_key.yaml"], {}, "bogus_key"),
    ("bad-env-override", ["serve"], {"ANOMSTREAM_BATCHING__MAX_BATCH": "abc"},
     "ANOMSTREAM_BATCHING__MAX_BATCH"),
]


@pytest.mark.parametrize(("args", "env", "named"), [e[1:] for e in ERRORS],
                         ids=[e[0] for e in ERRORS])
def test_error_exits_2_with_one_line(args: list[str], env: dict[str, str], named: str,
                                     bad_inputs: Path, ws: Workspace) -> None:
    model_dir = ws.root / "default" / "1"
    argv = [a.format(model=model_dir, root=ws.root) for a in args]
    result = run_cli(*argv, cwd=bad_inputs, env=env, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert named in lines[0]


# --------------------------------------------------------------------------- train

def test_train_prints_leaderboard_and_artifact(ws: Workspace) -> None:
    out = ws.train1.stdout
    header = next(line for line in out.splitlines() if "algorithm" in line)
    assert {"rank", "algorithm", "value"} <= set(header.split())
    artifacts = [line for line in out.splitlines() if line.startswith("artifact:")]
    assert len(artifacts) == 1
    assert Path(artifacts[0].removeprefix("artifact:").strip()) == ws.root / "default" / "1"


def test_train_registers_a_complete_artifact(ws: Workspace) -> None:
    version = ws.root / "default" / "1"
    for name in ("model.onnx", "card.json", "leaderboard.csv", "report.html"):
        assert (version / name).is_file() and (version / name).stat().st_size > 0, name
    assert ws.current_after_train1 == "1"

    card = json.loads((version / "card.json").read_text())
    assert set(CARD_FIELDS) <= card.keys()
    assert card["name"] == "default" and card["version"] == 1
    assert card["features"] == FEATURES
    assert card["detector"]
    training = card["training"]
    assert training["rows"] == 600
    assert training["data_sha256"] == hashlib.sha256(ws.data.read_bytes()).hexdigest()
    assert training["label_column"] is None
    assert training["trials"] == 2 and training["budget_s"] == 30 and training["seed"] == 0
    assert card["metrics"] == {"roc_auc": None, "aucpr": None, "f1": None}
    assert card["calibration"]
    assert 0 < card["threshold"] <= 1
    assert set(card["medians"]) == set(FEATURES)
    assert 0 <= card["parity"] < 1e-3
    assert card["lineage"] == {"parent": None, "trigger": "manual"}

    board = pd.read_csv(version / "leaderboard.csv")
    assert len(board) >= 1 and "algorithm" in board.columns


def test_labelled_training_reports_metrics(ws: Workspace) -> None:
    card = json.loads((ws.root / "default" / "2" / "card.json").read_text())
    assert card["training"]["label_column"] == "label"
    assert "label" not in card["features"]
    assert isinstance(card["metrics"]["roc_auc"], float)
    assert 0.5 < card["metrics"]["roc_auc"] <= 1


def test_no_promote_leaves_current_unchanged(ws: Workspace) -> None:
    assert ws.current_after_train2 == "1"


# --------------------------------------------------------------------------- models

def list_marks(root: Path, cwd: Path) -> dict[str, bool]:
    out = ok(run_cli("models", "list", "--registry", root, cwd=cwd)).stdout
    return {line[1:].split()[0]: line.startswith("*") for line in out.splitlines()}


def test_models_list_marks_current(ws: Workspace) -> None:
    assert list_marks(ws.root, ws.cwd) == {"default@1": True, "default@2": False}


def test_show_promote_and_rollback(ws: Workspace, tmp_path: Path) -> None:
    root = tmp_path / "R"
    shutil.copytree(ws.root, root)

    def show() -> dict[str, object]:
        return json.loads(ok(run_cli("models", "show", "default", "--registry", root,
                                     cwd=tmp_path)).stdout)

    assert show() == json.loads((root / "default" / "1" / "card.json").read_text())

    ok(run_cli("models", "promote", "default", "2", "--registry", root, cwd=tmp_path))
    assert (root / "default" / "current").read_text().strip() == "2"
    assert list_marks(root, tmp_path) == {"default@1": False, "default@2": True}
    assert show()["version"] == 2

    result = ok(run_cli("models", "rollback", "default", "--registry", root, cwd=tmp_path))
    assert "default@1" in result.stdout
    assert (root / "default" / "current").read_text().strip() == "1"
    assert show()["version"] == 1


# --------------------------------------------------------------------------- score

def score(ws: Workspace, model: str | Path, data: Path, out: Path) -> pd.DataFrame:
    ok(run_cli("score", "--model", model, data, "-o", out, "--registry", ws.root, cwd=ws.cwd))
    return pd.read_csv(out)


def test_score_writes_one_row_per_input(ws: Workspace) -> None:
    out = ws.cwd / "out.csv"
    frame = score(ws, "default", ws.probe, out)
    assert out.read_text().splitlines()[0] == "score,raw_score,anomaly"
    assert len(frame) == 200
    assert frame["score"].between(0, 1).all()
    assert set(frame["anomaly"].unique()) <= {0, 1}
    flagged = frame.index[frame["anomaly"] == 1]
    assert set(OUTLIER_ROWS) <= set(flagged)
    assert frame["score"].iloc[list(OUTLIER_ROWS)].min() > frame["score"].median()


def test_score_keeps_input_order(ws: Workspace) -> None:
    probe = pd.read_csv(ws.probe)
    reversed_csv = ws.cwd / "reversed.csv"
    probe.iloc[::-1].to_csv(reversed_csv, index=False)
    forward = score(ws, "default", ws.probe, ws.cwd / "fwd.csv")
    backward = score(ws, "default", reversed_csv, ws.cwd / "bwd.csv")
    pd.testing.assert_frame_equal(backward.iloc[::-1].reset_index(drop=True), forward)


def test_score_by_directory_and_repeat_are_identical(ws: Workspace) -> None:
    by_name = ws.cwd / "by_name.csv"
    by_dir = ws.cwd / "by_dir.csv"
    again = ws.cwd / "again.csv"
    score(ws, "default", ws.probe, by_name)
    score(ws, ws.root / "default" / "1", ws.probe, by_dir)
    score(ws, "default", ws.probe, again)
    assert by_dir.read_bytes() == by_name.read_bytes()
    assert again.read_bytes() == by_name.read_bytes()


# --------------------------------------------------------------------------- help

def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for name, command in sorted(group.commands.items()):
        paths.append((*prefix, name))
        if isinstance(command, click.Group):
            paths.extend(command_paths(command, (*prefix, name)))
    return paths


@pytest.mark.parametrize("path", [(), *command_paths(cli)], ids=lambda p: " ".join(p) or "top")
def test_help(path: tuple[str, ...], tmp_path: Path) -> None:
    result = ok(run_cli(*path, "--help", cwd=tmp_path, timeout=60))
    assert result.stdout.startswith("Usage:")


CONTRACT_COMMANDS = [("train",), ("score",), ("serve",), ("demo",), ("models", "list"),
                     ("models", "show"), ("models", "promote"), ("models", "rollback"),
                     ("broker",)]


def test_every_contract_command_exists() -> None:
    assert set(CONTRACT_COMMANDS) <= set(command_paths(cli))


def test_trainer_command_exists() -> None:
    assert ("trainer",) in command_paths(cli)
