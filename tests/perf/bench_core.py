"""Inference-core benchmark: rows/s and per-batch latency by batch size, every zoo detector.

For each detector of :data:`models.zoo.ALGORITHMS` and one ensemble
(IForest + ECOD + KNN, mean of member z-scores), at batch 1, 16, 256 and
4096 rows:

* PyOD's native ``decision_function`` on a PyOD model of the same kind fitted
  on the same rows (for detectors that keep a ``max_train`` subsample, on
  that subsample: both search the same reference set), with its
  BLAS/OpenMP/torch thread pools held at one
  thread like the core (and, in a second table at batch 256, at its default
  threads against the core at two, each in its own process: see
  :func:`_two_threads`) (PyOD's ECOD and COPOD re-fit their ECDFs on train + batch
  at every call, which is part of their cost; the ensemble's PyOD row calls
  three PyOD models one after the other);
* a bare ``onnxruntime.InferenceSession.run`` on the exported graph (CPU,
  one intra-op thread);
* the anomstream core (:class:`stream.core.Scorer`: ONNX + calibration +
  threshold + severity + top-3 contributions), CPU, and CUDA when
  onnxruntime offers it;
* river's ``StandardScaler | HalfSpaceTrees`` (10 trees, height 8, window
  250), ``learn_one`` + ``score_one`` per event, as the online peer.

Models are fitted here on 10,000 × 32 synthetic rows with
:class:`models.pipeline.Pipeline` at each detector's default hyperparameters
and calibrated and carded like ``anomstream train`` does (threshold from
contamination 0.01).  The engines of one detector and batch size are timed
in ten alternating slices, so a slow spell of the shared machine weighs on
all of them alike.  Prints one table of rows/s (p50 / p99 ms per batch),
then the ratios core/PyOD and core/bare per cell (the median over the slices
of the ratio between neighbouring slices) with the cells below the
targets flagged (core ≥ 5× PyOD at batch 256; core ≥ 0.8× bare).  Run by
``make bench``; about 5 minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from models.artifact import Artifact, Card
from models.calibration import Calibration, SeverityScale
from models.ensemble import Ensemble
from models.zoo import ALGORITHMS
from stream.core import Scorer
from stream.synthetic import SyntheticStream

N_FEATURES = 32
N_TRAIN = 10_000
BATCHES = (1, 16, 256, 4096)
ENSEMBLE = ("iforest", "ecod", "knn")
PYOD_TARGET = 5.0  # core vs PyOD at batch 256
BARE_TARGET = 0.8  # core vs bare session, every batch
_ROUNDS = 10  # alternating slices per cell (see _time_interleaved)
_TWO_ROUNDS = 5  # turns per engine and model in the two-thread table (see _two_threads)
_TWO_GAP_S = 0.15  # pause before each turn: the other process's idle workers stop spinning

Cell = tuple[float, float, float]  # rows/s, p50 ms, p99 ms


def _artifact(root: Path, name: str, model: Any, X: np.ndarray, features: list[str]) -> Artifact:
    """Calibrate, threshold and card a fitted pipeline or ensemble as training does."""
    threshold = 0.99
    card = Card(
        name=name, version=1, features=tuple(features),
        calibration=Calibration.fit(model.score_samples(X)), threshold=threshold,
        severity=SeverityScale.from_threshold(threshold),
        medians={f: 0.0 for f in features}, detector=model.describe(), training={}, metrics={}, parity=0.0,
    )
    return Artifact.write(root / name, model.to_onnx(features), card)


def _fit_models(root: Path, X: np.ndarray, names: list[str]) -> dict[str, tuple[Artifact, float]]:
    from training.search import pipeline
    from training.space import default_candidate

    features = [f"x{j}" for j in range(X.shape[1])]
    out: dict[str, tuple[Artifact, float]] = {}
    for algo in names:
        t0 = time.perf_counter()
        if algo == "ensemble":
            model: Any = Ensemble([pipeline(default_candidate(a, 0)) for a in ENSEMBLE]).fit(X)
        else:
            model = pipeline(default_candidate(algo, 0)).fit(X)
        out[algo] = (_artifact(root, algo, model, X, features), time.perf_counter() - t0)
    return out


def _session_grid(models: dict[str, tuple[Artifact, float]], X: np.ndarray, budget_s: float) -> None:
    """Bare-session rows/s over threads × graph optimisation × execution mode (the core's choice)."""
    levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "off": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
    modes = {"seq": ort.ExecutionMode.ORT_SEQUENTIAL, "par": ort.ExecutionMode.ORT_PARALLEL}
    grid_batches = (1, 256, 4096)
    print("\n| model | threads | graph opt | mode | " + " | ".join(f"batch {b}" for b in grid_batches) + " |")
    print("|---|---|---|---|" + "---|" * len(grid_batches))
    for name, (art, _) in models.items():
        for threads in (1, 2):
            for level, level_opt in levels.items():
                for mode, mode_opt in modes.items():
                    if mode == "par" and level != "all":
                        continue
                    opts = ort.SessionOptions()
                    opts.intra_op_num_threads = threads
                    opts.inter_op_num_threads = threads if mode == "par" else 1
                    opts.graph_optimization_level = level_opt
                    opts.execution_mode = mode_opt
                    sess = ort.InferenceSession(str(art.model_path), opts, providers=["CPUExecutionProvider"])
                    cells = [_time(lambda b, s=sess: s.run(None, {"features": b}), X, b, budget_s)[0] for b in grid_batches]
                    print(f"| {name} | {threads} | {level} | {mode} | " + " | ".join(f"{c:,.0f}" for c in cells) + " |",
                          flush=True)


def _pyod_model(algo: str) -> Any:
    """A PyOD model of the same kind at comparable defaults (None where PyOD has none)."""
    from pyod.models import cblof, copod, ecod, hbos, iforest, knn, loda, lof, mcd, ocsvm, pca

    makers: dict[str, Callable[[], Any]] = {
        "iforest": lambda: iforest.IForest(random_state=0),
        "ecod": ecod.ECOD,
        "copod": copod.COPOD,
        "hbos": hbos.HBOS,
        "pca": lambda: pca.PCA(random_state=0),
        "mcd": lambda: mcd.MCD(random_state=0),
        "loda": loda.LODA,
        "knn": lambda: knn.KNN(n_neighbors=5),
        "lof": lambda: lof.LOF(n_neighbors=20),
        "ocsvm": ocsvm.OCSVM,
        # PyOD's CBLOF refuses alpha=0.9, beta=5 (ours) on this data; a looser split, same cost.
        "cblof": lambda: cblof.CBLOF(n_clusters=8, alpha=0.8, beta=3, random_state=0),
    }
    if algo == "autoencoder":
        from pyod.models.auto_encoder import AutoEncoder

        return AutoEncoder(hidden_neuron_list=[64, 64], epoch_num=1, verbose=0)  # scoring cost only
    if algo == "vae":
        from pyod.models.vae import VAE

        return VAE(epoch_num=1, verbose=0)
    maker = makers.get(algo)
    return None if maker is None else maker()


def _pyod(algo: str, X_train: np.ndarray, detector: dict[str, Any]) -> Callable[[np.ndarray], Any] | None:
    """PyOD's ``decision_function`` for the card's ``detector``, fitted on the rows that detector keeps.

    Neighbour and kernel detectors keep a seeded subsample of ``max_train``
    training rows: PyOD's model is fitted on those same rows, so both
    engines score against the same reference set (on all 10,000 rows
    PyOD's LOF, KNN and OCSVM took 1.7-2.0x as long).
    """
    try:
        import pyod  # noqa: F401
    except ImportError:
        return None
    if algo == "ensemble":
        fns = [f for m in detector["members"] if (f := _pyod(m["algorithm"], X_train, m)) is not None]
        return lambda b: [f(b) for f in fns]
    det = _pyod_model(algo)
    if det is None:
        return None
    keep = detector.get("params", {}).get("max_train")
    if keep is not None:
        from models.zoo.neighbours import subsample

        X_train = subsample(X_train, int(keep))
    try:
        det.fit(X_train)
    except ValueError as exc:  # PyOD's CBLOF cannot split clusters on some data
        print(f"  PyOD {algo}: fit failed ({exc}); no PyOD row", flush=True)
        return None
    return det.decision_function  # type: ignore[no-any-return]


def _time(fn: Callable[[np.ndarray], Any], X: np.ndarray, batch: int, budget_s: float) -> Cell:
    """rows/s, p50 ms, p99 ms per batch call (at least 3 calls, or 2 when a call exceeds the budget)."""
    n = X.shape[0]
    t0 = time.perf_counter()
    fn(X[:batch])  # warm-up
    min_calls = 2 if time.perf_counter() - t0 > budget_s else 3
    times: list[float] = []
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < budget_s or len(times) < min_calls:
        lo = (i * batch) % max(n - batch, 1)
        chunk = X[lo:lo + batch]
        t0 = time.perf_counter()
        fn(chunk)
        times.append(time.perf_counter() - t0)
        i += 1
    t = np.array(times)
    return batch * len(t) / t.sum(), float(np.percentile(t, 50) * 1e3), float(np.percentile(t, 99) * 1e3)


def _time_interleaved(
    engines: list[tuple[str, Callable[[np.ndarray], Any]]], limits: dict[str, Callable[[], AbstractContextManager[Any]]],
    X: np.ndarray, batch: int, budget_s: float, rounds: int = _ROUNDS,
    rates: dict[int, dict[str, list[float]]] | None = None,
) -> dict[str, Cell]:
    """:func:`_time` for several engines, in ``rounds`` alternating slices of ``budget_s / rounds`` each.

    The reference machine is a shared VM whose speed flips by up to 1.6x for
    seconds to minutes at a time; timing the engines one after the other let
    such a spell land on one of them.  Alternating slices spread it over all
    alike (each engine keeps cycling through its own rows of ``X``), and each
    round's rows/s per engine go to ``rates[batch]``: the ratio tables take
    the median over rounds of the ratio within a round, whose slices ran
    side by side.
    """
    rates = {} if rates is None else rates
    n = X.shape[0]
    times: dict[str, list[float]] = {engine: [] for engine, _ in engines}
    per_round: dict[str, list[float]] = {engine: [] for engine, _ in engines}
    calls = dict.fromkeys(times, 0)
    for engine, fn in engines:  # warm-up
        with limits[engine]():
            fn(X[:batch])
    for _ in range(rounds):
        for engine, fn in engines:
            with limits[engine]():
                start = time.perf_counter()
                t = times[engine]
                first = len(t)
                while time.perf_counter() - start < budget_s / rounds or len(t) == first:
                    lo = (calls[engine] * batch) % max(n - batch, 1)
                    chunk = X[lo:lo + batch]
                    t0 = time.perf_counter()
                    fn(chunk)
                    t.append(time.perf_counter() - t0)
                    calls[engine] += 1
                per_round[engine].append(batch * (len(t) - first) / sum(t[first:]))
    rates[batch] = per_round
    out: dict[str, Cell] = {}
    for engine, t in times.items():
        a = np.array(t)
        out[engine] = batch * len(a) / a.sum(), float(np.percentile(a, 50) * 1e3), float(np.percentile(a, 99) * 1e3)
    return out


def _paired_ratio(rounds: dict[str, list[float]], a: str, b: str) -> float:
    """Median over rounds of ``a``'s rows/s over ``b``'s in the same round (see :func:`_time_interleaved`)."""
    return float(np.median(np.array(rounds[a]) / np.array(rounds[b])))


def _two_threads(root: Path, names: list[str], budget_s: float) -> dict[str, tuple[float, float, float]]:
    """PyOD at its default threads and the core at two threads, batch 256, each engine in its own process.

    Both engines then have thread pools of two, and in one process they
    disturb each other: idle workers spin for a while after a call (OpenBLAS
    ~0.1 s, libgomp and onnxruntime briefly) and take the cores from the
    next engine's slice.  Timed in alternating slices of one process, PyOD's
    LOF measured 12.8k rows/s against 54-56k alone, and the core's LOF at two
    intra-op threads 55k against 91k (2026-11-23).  So each engine lives in
    its own child process (:func:`_two_threads_child`), and per model the
    two take ``_TWO_ROUNDS`` turns of ``2 * budget_s / _TWO_ROUNDS`` each,
    with a pause of ``_TWO_GAP_S`` before every turn for the other's spinning
    workers to stop.  A slow spell of the machine thus falls on both alike,
    as in :func:`_time_interleaved`.  Returns, per model, the median rows/s of
    PyOD and of the core and the median of the ratios within a round.  Both
    may run below the one-thread table's rows/s: each turn follows ~0.5 s of
    idleness, after which the 2-core VM runs slower for a while (the core's
    HBOS: 6.0M rows/s in back-to-back turns, 3.6M after a 0.5 s pause).
    """
    turn = 2 * budget_s / _TWO_ROUNDS
    cmd = [sys.executable, __file__, "--artifacts", str(root), "--only", ",".join(names), "--two-threads-child"]
    procs = {engine: subprocess.Popen([*cmd, engine], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for engine in ("PyOD", "core")}
    try:
        ready = {engine: set(_reply(p).split()) for engine, p in procs.items()}
        out: dict[str, tuple[float, float, float]] = {}
        for name in names:
            if name not in ready["PyOD"] or name not in ready["core"]:
                continue
            rates: dict[str, list[float]] = {"PyOD": [], "core": []}
            # The core times one call against parts on its first served batches (Scorer's ``parallel``):
            # those turns run here, back to back while the PyOD process is idle, as a loaded service's would.
            core = procs["core"]
            assert core.stdin is not None
            core.stdin.write(f"{name} decide\n")
            core.stdin.flush()
            print(f"  {name}: core with 2 threads {_reply(core)}", flush=True)
            for _ in range(_TWO_ROUNDS):
                for engine, p in procs.items():
                    time.sleep(_TWO_GAP_S)
                    assert p.stdin is not None
                    p.stdin.write(f"{name} {turn}\n")
                    p.stdin.flush()
                    rates[engine].append(float(_reply(p)))
            out[name] = (float(np.median(rates["PyOD"])), float(np.median(rates["core"])),
                         float(np.median(np.array(rates["core"]) / np.array(rates["PyOD"]))))
        return out
    finally:
        for p in procs.values():
            if p.stdin is not None:
                p.stdin.close()
            p.wait()


def _reply(p: subprocess.Popen[str]) -> str:
    """The next protocol line (``@@ ...``) of a :func:`_two_threads_child`, skipping anything else it prints."""
    assert p.stdout is not None
    for line in p.stdout:
        if line.startswith("@@ "):
            return line[3:].strip()
    raise RuntimeError(f"two-thread child exited with {p.wait()}")


def _two_threads_child(
    engine: str, models: dict[str, tuple[Artifact, float]], X_train: np.ndarray, X: np.ndarray
) -> None:
    """One engine of :func:`_two_threads`: fits or loads every model, then times ``NAME SECONDS`` lines from stdin.

    Answers ``@@ NAME...`` (the models it can time) once ready, then
    ``@@ ROWS_PER_S`` per request, after untimed calls for half the time
    (pools awake, caches warm).  ``NAME decide`` (core): batches of 256 rows
    (or the scorer's ``parallel_rows``) back to back until the scorer has
    chosen between one call and parts (at most 5 s); answers the choice.
    """
    fns: dict[str, Callable[[np.ndarray], Any]] = {}
    scorers: dict[str, Scorer] = {}
    for name, (art, _) in models.items():
        if engine == "PyOD":
            fn = _pyod(name, X_train, art.card.detector)
        else:
            scorers[name] = Scorer(art, providers="cpu", threads=2)
            fn = scorers[name].score
        if fn is not None:
            fns[name] = fn
    print("@@ " + " ".join(fns), flush=True)
    for line in sys.stdin:
        name, seconds = line.split()
        if seconds == "decide":
            sc, start = scorers[name], time.perf_counter()
            while sc.parallel_rows and sc.parts_kept is None and time.perf_counter() - start < 5.0:
                sc.score(X[:max(256, sc.parallel_rows)])
            choice = "parts not tried" if not sc.parallel_rows else {
                True: f"keeps parts from {sc.parallel_rows} rows", False: "keeps one call",
                None: "undecided"}[sc.parts_kept]
            print(f"@@ {choice}", flush=True)
            continue
        fn, budget = fns[name], float(seconds)
        warm = time.perf_counter()
        while time.perf_counter() - warm < budget / 2:
            fn(X[:256])
        print(f"@@ {_time(fn, X, 256, budget)[0]:.1f}", flush=True)


def _river(X_train: np.ndarray, X: np.ndarray, budget_s: float) -> dict[int, Cell] | None:
    """StandardScaler | HalfSpaceTrees, learn_one + score_one per event, timed per batch of events."""
    try:
        from river import anomaly, preprocessing
    except ImportError:
        return None
    names = [f"x{j}" for j in range(X.shape[1])]
    model = preprocessing.StandardScaler() | anomaly.HalfSpaceTrees(n_trees=10, height=8, window_size=250, seed=0)
    for row in X_train[:2000].tolist():
        model.learn_one(dict(zip(names, row)))
    def per_event(batch: np.ndarray) -> None:
        for r in batch.tolist():
            x = dict(zip(names, r))
            model.score_one(x)
            model.learn_one(x)

    return {b: _time(per_event, X, b, budget_s) for b in BATCHES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.4, help="time per cell")
    parser.add_argument("--only", default=None, help="comma-separated model names (default: all)")
    parser.add_argument("--no-pyod", action="store_true", help="skip PyOD's native scoring")
    parser.add_argument("--export", type=Path, default=None,
                        help="fit and write the artifacts to this folder, then stop")
    parser.add_argument("--artifacts", type=Path, default=None,
                        help="score the artifacts of this folder (written by --export) instead of fitting")
    parser.add_argument("--session-grid", action="store_true",
                        help="instead: bare-session rows/s over ORT session options for the chosen models")
    parser.add_argument("--two-threads-child", choices=["PyOD", "core"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import warnings

    warnings.filterwarnings("ignore")
    gen = SyntheticStream(n_features=N_FEATURES, seed=1)
    X_train, _ = gen.sample(N_TRAIN, anomaly_rate=0.01)
    X_train = np.ascontiguousarray(X_train, dtype=np.float32)
    X, _ = gen.sample(50_000, anomaly_rate=0.01)
    X = np.ascontiguousarray(X, dtype=np.float32)
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    print(f"onnxruntime {ort.__version__}, providers {ort.get_available_providers()}, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}; {N_FEATURES} features, fitted on {N_TRAIN:,} rows; "
          f"{args.seconds:.1f} s per cell", flush=True)
    t0 = time.perf_counter()
    wanted = args.only.split(",") if args.only else [*ALGORITHMS, "ensemble"]
    if args.artifacts is not None:
        models = {name: (Artifact.load(args.artifacts / name), 0.0) for name in wanted}
        root = args.artifacts
        print(f"loaded {len(models)} models from {args.artifacts}", flush=True)
    elif args.export is not None:
        _fit_models(args.export, X_train, wanted)
        print(f"fitted and exported {len(wanted)} models in {time.perf_counter() - t0:.0f} s", flush=True)
        return
    else:
        # Fitted in a child process: training (torch, optuna) leaves threads and a grown heap
        # behind that the timings here should not share.
        root = Path(tempfile.mkdtemp(prefix="anomstream-core-"))
        subprocess.run([sys.executable, __file__, "--export", str(root), "--only", ",".join(wanted)], check=True,
                       stdout=subprocess.DEVNULL)
        models = {name: (Artifact.load(root / name), 0.0) for name in wanted}
        print(f"fitted and exported {len(models)} models in {time.perf_counter() - t0:.0f} s (child process)",
              flush=True)
    if args.session_grid:
        _session_grid(models, X, args.seconds)
        return
    if args.two_threads_child is not None:
        _two_threads_child(args.two_threads_child, models, X_train, X)
        return
    results: dict[tuple[str, str], dict[int, Cell]] = {}
    round_rates: dict[str, dict[int, dict[str, list[float]]]] = {}
    for name in wanted:
        art, _fit_s = models[name]
        engines: list[tuple[str, Callable[[np.ndarray], Any]]] = []
        native = None if args.no_pyod else _pyod(name, X_train, art.card.detector)
        if native is not None:
            engines.append(("PyOD", native))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        bare = ort.InferenceSession(str(art.model_path), opts, providers=["CPUExecutionProvider"])
        engines.append(("bare ORT", lambda b, s=bare: s.run(None, {"features": b})))
        core = Scorer(art, providers="cpu")
        if core.contributions_on_demand:
            how = f"from the score call's {', '.join(core.handed_over)}" if core.handed_over else "recomputed"
            print(f"  {name}: core asks for scores alone, contributions for alerting rows only ({how})", flush=True)
        if core.piece_rows:
            # The core times its first large batches both ways before keeping one (Scorer's ``pieces``):
            # those turns run here, on the benchmark's largest batch, before any cell is timed.
            for _ in range(64):
                if core.pieces_kept is not None:
                    break
                core.score(X[:BATCHES[-1]])
            print(f"  {name}: core keeps batches of {core.piece_rows:,} rows or more in one call"
                  if not core.pieces_kept else
                  f"  {name}: core scores batches of {core.piece_rows:,} rows or more in pieces of 128", flush=True)
        engines.append(("core", core.score))
        if has_cuda:
            cuda = ort.InferenceSession(str(art.model_path), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
            engines.append(("bare ORT CUDA", lambda b, s=cuda: s.run(None, {"features": b})))
            scorer = Scorer(art, providers="cuda")
            print(f"  {name}: core on CUDA {'replays CUDA graphs' if scorer.cuda_graphs else 'binds per call'}",
                  flush=True)
            engines.append(("core CUDA", scorer.score))
        # The core runs one intra-op thread; PyOD's BLAS/OpenMP/torch pools alike.
        limits = {engine: (lambda: _threads(1)) if engine == "PyOD" else nullcontext for engine, _ in engines}
        for b in BATCHES:
            cells = _time_interleaved(engines, limits, X, b, args.seconds, rates=round_rates.setdefault(name, {}))
            for engine, cell in cells.items():
                results.setdefault((name, engine), {})[b] = cell
        print(f"  {name} done", flush=True)
    if not args.no_pyod:
        two = _two_threads(root, [n for n in wanted if (n, "PyOD") in results], args.seconds)
    hst = _river(X_train, X, args.seconds)
    if hst is not None:
        results[("river HST", "learn+score")] = hst

    print()
    print("rows/s (p50 / p99 ms per batch call)\n")
    print("| model | engine | " + " | ".join(f"batch {b}" for b in BATCHES) + " |")
    print("|---|---|" + "---|" * len(BATCHES))
    for (name, engine), cells in results.items():
        row = " | ".join(f"{c[0]:,.0f} ({_ms(c[1])} / {_ms(c[2])})" for c in (cells[b] for b in BATCHES))
        print(f"| {name} | {engine} | {row} |")
    print()
    print(f"core / PyOD and core / bare per batch size (median of the ratios within each of the {_ROUNDS} "
          f"rounds); * marks a cell below target "
          f"(core/PyOD ≥ {PYOD_TARGET:g} at batch 256, core/bare ≥ {BARE_TARGET:g})\n")
    print("| model | " + " | ".join(f"/PyOD {b}" for b in BATCHES) + " | " + " | ".join(f"/bare {b}" for b in BATCHES) + " |")
    print("|---|" + "---|" * (2 * len(BATCHES)))
    missed: list[str] = []
    for name in wanted:
        cells = []
        for b in BATCHES:
            if (name, "PyOD") in results:
                r = _paired_ratio(round_rates[name][b], "core", "PyOD")
                low = b == 256 and r < PYOD_TARGET
                cells.append(f"{r:.1f}×{'*' if low else ''}")
                if low:
                    missed.append(f"{name} vs PyOD at {b}: {r:.1f}×")
            else:
                cells.append("n/a")
        for b in BATCHES:
            r = _paired_ratio(round_rates[name][b], "core", "bare ORT")
            low = r < BARE_TARGET
            cells.append(f"{r:.2f}{'*' if low else ''}")
            if low:
                missed.append(f"{name} vs bare at {b}: {r:.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    if hst is not None:
        print("\nriver HST is per event (no batching): core / river at batch 256: " + ", ".join(
            f"{n} {results[(n, 'core')][256][0] / hst[256][0]:.0f}×" for n in wanted))
    if not args.no_pyod and two:
        print(f"\nbatch 256 with both cores: PyOD at its default threads (BLAS/OpenMP/torch: {os.cpu_count()}) "
              f"against the core at inference.threads = 2, each engine in its own process, {_TWO_ROUNDS} alternating "
              "turns per model; rows/s and core / PyOD (within a round) are medians over them\n")
        print("| model | PyOD rows/s | core rows/s | core / PyOD |")
        print("|---|---|---|---|")
        for name, (pyod_rate, core_rate, ratio) in two.items():
            print(f"| {name} | {pyod_rate:,.0f} | {core_rate:,.0f} | {ratio:.1f}× |")
    print("\nbelow target: " + ("; ".join(missed) if missed else "none"))


@contextmanager
def _threads(n: int) -> Iterator[None]:
    """BLAS and OpenMP pools (threadpoolctl) and torch's intra-op pool at ``n`` threads."""
    from threadpoolctl import threadpool_limits

    try:
        import torch
    except ImportError:
        torch = None  # type: ignore[assignment]
    before = torch.get_num_threads() if torch is not None else 0
    with threadpool_limits(limits=n):
        if torch is not None:
            torch.set_num_threads(n)
        try:
            yield
        finally:
            if torch is not None:
                torch.set_num_threads(before)


def _ms(v: float) -> str:
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 10 else f"{v:.0f}"


if __name__ == "__main__":
    main()
