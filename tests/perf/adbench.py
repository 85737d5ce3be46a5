"""AutoML against fixed detectors on the shared ADBench sets (ADBench's protocol).

For each data set and seed: a stratified 70/30 split; on the 70% part

* (a) every zoo detector at its defaults (standard scaling fitted on the
  training part, as in ``notes/label-free-selection.md``);
* (b) AutoML without labels;
* (c) AutoML with 5 known training anomalies, every other label unknown;
* (d) AutoML with the training part's full labels;

then test ROC-AUC and AUCPR on the 30% part.  AutoML models are scored through
their exported ONNX graph with the serving core (:class:`stream.core.Scorer`).
Beside the means: ADBench's published means for the same sets
(``../shared/anchors/adbench_unsupervised.csv``).

Run: ``python tests/perf/adbench.py [--budget S] [--seeds 0,1,2] [--sets a,b]``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import logging
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
FIT_ROWS = 20_000


@dataclass(frozen=True)
class Result:
    dataset: str
    seed: int
    method: str
    rocauc: float
    aucpr: float
    seconds: float


def _split(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(y.size)
    tr, te = train_test_split(idx, test_size=0.3, stratify=y, random_state=seed)
    return np.sort(tr), np.sort(te)


def _metrics(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    s = np.nan_to_num(np.asarray(s, dtype=np.float64), nan=0.0, posinf=1e300, neginf=-1e300)
    return float(roc_auc_score(y, s)), float(average_precision_score(y, s))


def _chunked(fn: object, X: np.ndarray, rows: int = 8192) -> np.ndarray:
    """Score in chunks: distance-based graphs build [rows, reference] matrices."""
    return np.concatenate([np.asarray(fn(X[i:i + rows]), dtype=np.float64)  # type: ignore[operator]
                           for i in range(0, X.shape[0], rows)])


def _fixed(name: str, X_tr: np.ndarray, X_te: np.ndarray, y_te: np.ndarray, seed: int) -> list[Result]:
    from models.pipeline import Pipeline
    from models.preprocessing import Preprocessor
    from models.zoo import ALGORITHMS, make_detector

    rng = np.random.default_rng(seed)
    fit = X_tr if X_tr.shape[0] <= FIT_ROWS else X_tr[rng.choice(X_tr.shape[0], FIT_ROWS, replace=False)]
    out = []
    for algo in sorted(ALGORITHMS):
        t0 = time.perf_counter()
        params = {"random_state": seed} if "random_state" in ALGORITHMS[algo]().get_params() else {}
        try:
            pipe = Pipeline(preprocessor=Preprocessor(scaler="standard"), detector=make_detector(algo, **params)).fit(fit)
            roc, pr = _metrics(y_te, _chunked(pipe.score_samples, X_te))
        except Exception as exc:  # noqa: BLE001 - a detector failing on a set is a result, not a crash
            print(f"    {algo} failed on {name}: {exc}", file=sys.stderr)
            roc, pr = float("nan"), float("nan")
        out.append(Result(name, seed, f"fixed:{algo}", roc, pr, time.perf_counter() - t0))
    return out


def _automl(name: str, X_tr: np.ndarray, y_tr: np.ndarray | None, X_te: np.ndarray, y_te: np.ndarray,
            seed: int, budget_s: float, root: Path, method: str, label_free: str = "centrality") -> Result:
    from stream.core import Scorer
    from training.data import Dataset

    features = tuple(f"x{j}" for j in range(X_tr.shape[1]))
    digest = hashlib.sha256(X_tr.tobytes()).hexdigest()
    ds = Dataset(X=X_tr, features=features, y=y_tr, sha256=digest, path=Path(f"{name}.npz"),
                 label_column=None if y_tr is None else "y")
    t0 = time.perf_counter()
    try:
        res = _train(ds, name, method, seed, budget_s, root, label_free)
    except Exception as exc:  # noqa: BLE001 - one failed run is a result, not the end of the benchmark
        print(f"    {method}: FAILED {type(exc).__name__}: {exc}", flush=True)
        return Result(name, seed, f"automl:{method}", float("nan"), float("nan"), time.perf_counter() - t0)
    scorer = Scorer(res.artifact, providers="cpu")
    raw = _chunked(lambda b: scorer.score(b).raw, np.ascontiguousarray(X_te, dtype=np.float32))
    roc, pr = _metrics(y_te, raw)
    card = res.artifact.card
    print(f"    {method}: {card.detector.get('algorithm')} ({card.training.get('selection')}) "
          f"ROC-AUC {roc:.3f}", flush=True)
    return Result(name, seed, f"automl:{method}", roc, pr, time.perf_counter() - t0)


def _train(ds: object, name: str, method: str, seed: int, budget_s: float, root: Path, label_free: str) -> Any:
    from training.automl import train

    return train(ds, name=f"{name.split('_', 1)[-1].replace('.', '-')}-{method}-{seed}",  # type: ignore[arg-type]
                 budget_s=budget_s, registry_root=root, seed=seed, label_free=label_free)  # type: ignore[arg-type]


def _read(path: Path) -> list[Result]:
    with open(path) as fh:
        return [Result(r["dataset"], int(r["seed"]), r["method"], float(r["rocauc"]), float(r["aucpr"]),
                       float(r["seconds"])) for r in csv.DictReader(fh)]


def _anchors(sets: list[str]) -> dict[str, tuple[float, float]]:
    path = SHARED / "anchors" / "adbench_unsupervised.csv"
    if not path.is_file():
        return {}
    per: dict[str, list[tuple[float, float]]] = {}
    with open(path) as fh:
        for row in csv.DictReader(fh):
            if row["adbench_file"] in sets and row["rocauc"] and row["aucpr"]:
                per.setdefault(row["detector"], []).append((float(row["rocauc"]), float(row["aucpr"])))
    return {d: (float(np.mean([r for r, _ in v])), float(np.mean([p for _, p in v])))
            for d, v in per.items() if len(v) == len(sets)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "adbench")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--budget", type=float, default=20.0, help="AutoML seconds per run")
    parser.add_argument("--sets", default=None, help="comma-separated file names (default: all)")
    parser.add_argument("--modes", default="fixed,free,five,full")
    parser.add_argument("--label-free", default="ensemble,routed,centrality",
                        help="label-free strategies to run in the `free` mode")
    parser.add_argument("--out", type=Path, default=None, help="CSV of every result, written as they come")
    parser.add_argument("--report", type=Path, default=None, help="only print the tables of an --out CSV")
    args = parser.parse_args()
    if args.report is not None:
        done = _read(args.report)
        _report(done, sorted({r.dataset for r in done}), 0.0, args.budget, sorted({r.seed for r in done}))
        return
    if not args.data.is_dir():
        print(f"skipped: {args.data} is absent (the shared ADBench sets)")
        return
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    # Smallest first, so a run cut short still covers most sets.
    files = [p.name for p in sorted(args.data.glob("*.npz"), key=lambda p: p.stat().st_size)]
    if args.sets:
        wanted = set(args.sets.split(","))
        files = [f for f in files if f in wanted or f.split("_", 1)[-1].removesuffix(".npz") in wanted]
    seeds = [int(s) for s in args.seeds.split(",")]
    modes = set(args.modes.split(","))
    root = Path(tempfile.mkdtemp(prefix="anomstream-adbench-"))
    written = 0
    results: list[Result] = []
    t_all = time.perf_counter()
    sink = open(args.out, "w", newline="") if args.out else None  # noqa: SIM115 - closed below
    writer = csv.writer(sink) if sink else None
    if writer:
        writer.writerow(["dataset", "seed", "method", "rocauc", "aucpr", "seconds"])
    for fname in files:
        d = np.load(args.data / fname, allow_pickle=True)
        X, y = d["X"].astype(np.float32), d["y"].astype(np.int64)
        for seed in seeds:
            tr, te = _split(y, seed)
            X_tr, y_tr, X_te, y_te = X[tr], y[tr], X[te], y[te]
            print(f"{fname} seed {seed}: {X_tr.shape[0]} train rows × {X.shape[1]}, "
                  f"{int(y_tr.sum())} train anomalies", flush=True)
            if "fixed" in modes:
                results += _fixed(fname, X_tr, X_te, y_te, seed)
            if "free" in modes:
                for strategy in args.label_free.split(","):
                    results.append(_automl(fname, X_tr, None, X_te, y_te, seed, args.budget, root,
                                           f"label_free_{strategy}", label_free=strategy))
            if "five" in modes:
                rng = np.random.default_rng(seed)
                partial = np.full(y_tr.size, np.nan)
                partial[rng.choice(np.flatnonzero(y_tr == 1), size=min(5, int(y_tr.sum())), replace=False)] = 1.0
                results.append(_automl(fname, X_tr, partial, X_te, y_te, seed, args.budget, root, "5_known"))
            if "full" in modes:
                results.append(_automl(fname, X_tr, y_tr.astype(np.float64), X_te, y_te, seed, args.budget,
                                       root, "full_labels"))
            if writer and sink:
                for r in results[written:]:
                    writer.writerow([r.dataset, r.seed, r.method, f"{r.rocauc:.4f}", f"{r.aucpr:.4f}", f"{r.seconds:.2f}"])
                sink.flush()
                written = len(results)
    if sink:
        sink.close()
    _report(results, files, time.perf_counter() - t_all, args.budget, seeds)


def _report(results: list[Result], files: list[str], elapsed: float, budget: float, seeds: list[int]) -> None:
    methods = sorted({r.method for r in results})
    # Mean over seeds per (set, method).
    cell: dict[tuple[str, str], tuple[float, float]] = {}
    for f in files:
        for m in methods:
            rs = [r for r in results if r.dataset == f and r.method == m]
            if rs:
                cell[(f, m)] = (float(np.nanmean([r.rocauc for r in rs])), float(np.nanmean([r.aucpr for r in rs])))
    fixed = [m for m in methods if m.startswith("fixed:")]
    print()
    print(f"per data set, test ROC-AUC (mean of seeds {seeds}); AutoML budget {budget:.0f} s per run")
    short = {m: m.split(":", 1)[1][:10] for m in methods}
    print("| set | " + " | ".join(short[m] for m in methods) + " | oracle |")
    print("|---|" + "---|" * (len(methods) + 1))
    oracle_roc, oracle_pr = [], []
    for f in files:
        vals = [cell.get((f, m), (np.nan, np.nan))[0] for m in methods]
        fixed_vals = [(cell[(f, m)][0], m) for m in fixed if (f, m) in cell and np.isfinite(cell[(f, m)][0])]
        best = max(fixed_vals) if fixed_vals else (np.nan, "")
        oracle_roc.append(best[0])
        if fixed_vals:
            oracle_pr.append(cell[(f, best[1])][1])
        print(f"| {f.removesuffix('.npz')} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {best[0]:.3f} |")
    means = {m: (float(np.nanmean([cell[(f, m)][0] for f in files if (f, m) in cell])),
                 float(np.nanmean([cell[(f, m)][1] for f in files if (f, m) in cell]))) for m in methods}
    anchors = _anchors(files)
    print()
    print(f"means over {len(files)} sets ({elapsed / 60:.0f} min in all)")
    print("| method | ROC-AUC | AUCPR | ADBench published ROC-AUC / AUCPR |")
    print("|---|---|---|---|")
    for m in methods:
        pub = anchors.get({"iforest": "IForest", "ecod": "ECOD", "copod": "COPOD", "hbos": "HBOS", "knn": "KNN",
                           "lof": "LOF", "ocsvm": "OCSVM", "pca": "PCA", "loda": "LODA", "cblof": "CBLOF",
                           "vae": "DeepSVDD?"}.get(m.split(":", 1)[1], ""), None)
        shown = f"{pub[0]:.3f} / {pub[1]:.3f}" if pub else ""
        print(f"| {m} | {means[m][0]:.3f} | {means[m][1]:.3f} | {shown} |")
    if oracle_roc:
        print(f"| oracle: best fixed per set (hindsight) | {np.nanmean(oracle_roc):.3f} | "
              f"{np.nanmean(oracle_pr):.3f} | |")
    best_fixed = max(((means[m][0], m) for m in fixed), default=(np.nan, ""))
    iforest = means.get("fixed:iforest", (np.nan, np.nan))[0]
    print()
    free = [m for m in methods if m.startswith("automl:label_free")]
    checks = [
        *[(m, best_fixed[0], f"≥ best fixed detector ({best_fixed[1]}, {best_fixed[0]:.3f})") for m in free],
        ("automl:label_free", best_fixed[0], f"≥ best fixed detector ({best_fixed[1]}, {best_fixed[0]:.3f})"),
        ("automl:5_known", iforest + 0.04, f"≥ IForest + 0.04 ({iforest + 0.04:.3f})"),
        ("automl:full_labels", float(np.nanmean(oracle_roc)) - 0.01 if oracle_roc else np.nan,
         f"≥ oracle − 0.01 ({np.nanmean(oracle_roc) - 0.01:.3f})" if oracle_roc else "oracle n/a"),
    ]
    for m, target, text in checks:
        if m in means:
            got = means[m][0]
            print(f"target {m}: {got:.3f} {text}: {'met' if got >= target else 'NOT met'}")


if __name__ == "__main__":
    main()
