"""Inference-core benchmark: rows/s and per-batch latency by batch size.

For each model: PyOD's native ``decision_function`` (when PyOD is installed),
a bare ``onnxruntime.InferenceSession.run`` on the exported graph, and the
anomstream core (:class:`stream.core.Scorer`: ONNX + calibration + threshold +
severity + top-3 contributions) on the CPU, and on CUDA when onnxruntime
offers it.  Run by ``make bench``; ``--registry DIR`` reuses models trained
earlier (``iforest`` and ``ecod`` under that registry).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from models.registry import Registry
from stream.core import Scorer
from stream.synthetic import SyntheticStream

N_FEATURES = 32
BATCHES = (1, 16, 256, 4096)


def _train(root: Path) -> None:
    import optuna

    from training.automl import train
    from training.data import load_dataset

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    X, _ = SyntheticStream(n_features=N_FEATURES, seed=1).sample(10_000, anomaly_rate=0.01)
    csv = root / "train.csv"
    np.savetxt(csv, X, delimiter=",", header=",".join(f"x{i}" for i in range(N_FEATURES)), comments="", fmt="%.5g")
    for algo in ("iforest", "ecod"):
        train(load_dataset(csv), name=algo, algorithms=[algo], trials=1, contamination=0.01, registry_root=root, seed=0)


def _time(fn: Callable[[np.ndarray], Any], X: np.ndarray, batch: int, budget_s: float) -> tuple[float, float, float]:
    """rows/s, p50 ms, p99 ms per batch call."""
    n = X.shape[0]
    fn(X[:batch])  # warm-up
    times: list[float] = []
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < budget_s or len(times) < 5:
        lo = (i * batch) % max(n - batch, 1)
        chunk = X[lo:lo + batch]
        t0 = time.perf_counter()
        fn(chunk)
        times.append(time.perf_counter() - t0)
        i += 1
    t = np.array(times)
    return batch * len(t) / t.sum(), float(np.percentile(t, 50) * 1e3), float(np.percentile(t, 99) * 1e3)


def _pyod(algo: str, X_train: np.ndarray) -> Callable[[np.ndarray], Any] | None:
    try:
        if algo == "iforest":
            from pyod.models.iforest import IForest
            det: Any = IForest(random_state=0)
        else:
            from pyod.models.ecod import ECOD
            det = ECOD()
    except ImportError:
        return None
    det.fit(X_train)
    return det.decision_function  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=1.0, help="time per cell")
    args = parser.parse_args()
    root = args.registry
    if root is None:
        root = Path(tempfile.mkdtemp(prefix="anomstream-core-"))
        _train(root)
    reg = Registry(root)
    gen = SyntheticStream(n_features=N_FEATURES, seed=1)
    X_train, _ = gen.sample(10_000, anomaly_rate=0.01)
    X, _ = gen.sample(50_000, anomaly_rate=0.01)
    X = np.ascontiguousarray(X, dtype=np.float32)
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    print(f"onnxruntime {ort.__version__}, providers {ort.get_available_providers()}, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}; {N_FEATURES} features; {args.seconds:.1f} s per cell")
    rows: list[tuple[str, str, int, tuple[float, float, float]]] = []
    for algo in ("iforest", "ecod"):
        art = reg.load(algo)
        engines: list[tuple[str, Callable[[np.ndarray], Any]]] = []
        native = _pyod(algo, X_train)
        if native is not None:
            engines.append(("PyOD decision_function", native))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        bare = ort.InferenceSession(str(art.model_path), opts, providers=["CPUExecutionProvider"])
        engines.append(("bare ORT session.run, CPU 1 thread", lambda b, s=bare: s.run(None, {"features": b})))
        engines.append(("anomstream core, CPU", Scorer(art, providers="cpu").score))
        if has_cuda:
            cuda = ort.InferenceSession(str(art.model_path), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
            engines.append(("bare ORT session.run, CUDA", lambda b, s=cuda: s.run(None, {"features": b})))
            engines.append(("anomstream core, CUDA", Scorer(art, providers="cuda").score))
        for name, fn in engines:
            for batch in BATCHES:
                rows.append((algo, name, batch, _time(fn, X, batch, args.seconds)))
            print(f"  {algo}: {name} done", flush=True)
    print()
    print("| model | engine | batch | rows/s | p50 ms | p99 ms | vs PyOD |")
    print("|---|---|---|---|---|---|---|")
    base = {(a, b): r[0] for a, n, b, r in rows if n.startswith("PyOD")}
    for algo, name, batch, (rps, p50, p99) in rows:
        ratio = f"{rps / base[(algo, batch)]:.1f}×" if (algo, batch) in base else "n/a"
        print(f"| {algo} | {name} | {batch} | {rps:,.0f} | {p50:.3f} | {p99:.3f} | {ratio} |")


if __name__ == "__main__":
    main()
