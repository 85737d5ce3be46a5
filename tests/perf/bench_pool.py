"""One process or a pool: the per-event cost of the service's synchronous work, in-process and in workers.

The service's synchronous step per batch is decode (orjson) → score (ONNX
core) → build and encode the output records.  This script times that step on
prepared batches of 512 JSON events (32 features, IForest, no broker) three
ways:

* ``in-process``: the step in the calling process, as ``anomstream serve``
  runs it;
* ``pool N``: the raw payloads sent to N worker processes
  (``concurrent.futures.ProcessPoolExecutor``, 2N batches in flight), each
  running the same step and sending back the encoded records, the main
  process only submitting and collecting;
* ``pool round trip``: the same transport with workers that return their
  input unchanged (the inter-process cost alone).

It prints events/s and µs per event for each, and the share of a core the
main process spends on the transport, which is what a pool would add to the
service's event loop.  Compare with the end-to-end benchmark to decide: a pool
pays only where cores are idle beside the one running the event loop.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from models.artifact import Artifact
from stream.core import Scorer
from stream.decoding import EventDecoder
from stream.records import score_records
from stream.synthetic import SyntheticStream

N_FEATURES = 32
BATCH = 512

_worker: tuple[Scorer, EventDecoder] | None = None


def _step(scorer: Scorer, decoder: EventDecoder, values: list[bytes]) -> list[bytes]:
    decoded = decoder.decode(values)
    scored = scorer.score(decoded.X)
    now = time.time()
    records = score_records(decoded, scored, model=scorer.ref, features=scorer.features, scored_at=now,
                            received_at=np.full(len(decoded.rows), now))
    return [orjson.dumps(r) for r in records]


def _init(model_dir: str) -> None:
    global _worker  # one model per worker process
    art = Artifact.load(Path(model_dir))
    scorer = Scorer(art, providers="cpu")
    _worker = (scorer, EventDecoder(scorer.features))


def _work(values: list[bytes]) -> list[bytes]:
    assert _worker is not None
    return _step(*_worker, values)


def _echo(values: list[bytes]) -> list[bytes]:
    return values


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _pool(model_dir: str, batches: list[list[bytes]], workers: int, fn: Any) -> tuple[float, float]:
    """events/s and main-process CPU seconds per event."""
    with ProcessPoolExecutor(max_workers=workers, initializer=_init, initargs=(model_dir,)) as ex:
        list(ex.map(fn, batches[:workers * 2]))  # start and warm the workers
        inflight: list[Future[list[bytes]]] = []
        t0, c0 = time.perf_counter(), _cpu()
        n = 0
        for b in batches:
            inflight.append(ex.submit(fn, b))
            if len(inflight) >= 2 * workers:
                n += len(inflight.pop(0).result())
        for f in inflight:
            n += len(f.result())
        dt, dc = time.perf_counter() - t0, _cpu() - c0
    return n / dt, dc / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200, help="batches of 512 events per measurement")
    args = parser.parse_args()
    import warnings

    warnings.filterwarnings("ignore")
    from bench_core import _fit_models  # the same models as the core benchmark

    gen = SyntheticStream(n_features=N_FEATURES, seed=1)
    X_train, _ = gen.sample(10_000, anomaly_rate=0.01)
    root = Path(tempfile.mkdtemp(prefix="anomstream-pool-"))
    art, _ = _fit_models(root, np.ascontiguousarray(X_train, dtype=np.float32), ["iforest"])["iforest"]
    names = list(art.card.features)
    X, _ = gen.sample(args.batches * BATCH, anomaly_rate=0.01)
    rows = X.tolist()
    events = [orjson.dumps({"id": f"e{i}", "ts": 0.0, "features": dict(zip(names, r))}) for i, r in enumerate(rows)]
    batches = [events[i:i + BATCH] for i in range(0, len(events), BATCH)]
    size = sum(map(len, events)) / len(events)
    print(f"{os.cpu_count()} CPUs; {len(events):,} events of {size:.0f} B in batches of {BATCH}; IForest, "
          f"{N_FEATURES} features", flush=True)

    scorer = Scorer(art, providers="cpu")
    decoder = EventDecoder(scorer.features)
    for b in batches[:4]:
        _step(scorer, decoder, b)
    t0, c0 = time.perf_counter(), _cpu()
    n = sum(len(_step(scorer, decoder, b)) for b in batches)
    dt, dc = time.perf_counter() - t0, _cpu() - c0
    rows_out = [("in-process", n / dt, dc / n)]
    for w in (1, 2):
        rate, main_cpu = _pool(str(art.path), batches, w, _work)
        rows_out.append((f"pool {w} worker{'s' if w > 1 else ''}", rate, main_cpu))
    rate, main_cpu = _pool(str(art.path), batches, 1, _echo)
    rows_out.append(("pool round trip only (1 worker)", rate, main_cpu))

    print("\n| where the step runs | events/s | main-process CPU µs per event |")
    print("|---|---|---|")
    for name, rate, main_cpu in rows_out:
        print(f"| {name} | {rate:,.0f} | {main_cpu * 1e6:.2f} |")


if __name__ == "__main__":
    main()
