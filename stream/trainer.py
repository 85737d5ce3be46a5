"""The retraining worker (``anomstream trainer``): retrain requests in, validated models out.

It consumes ``retrain_requested`` events from ``kafka.control_topic`` (consumer
group ``<kafka.group_id>.trainer``; when several requests are waiting, only the
newest per model is served), and for each:

1. reads the most recent ``window_events`` events back from the input topics:
   per partition from ``max(end - window_events, from)``, where ``from`` is
   the consumer position at the drift detection carried by the request (so a
   drift retrain sees post-change events only), until the high-water mark the
   fetches report (the embedded broker's ``end_offsets`` can lag the last
   record batch);  the newest ``window_events`` by record time are kept;
2. decodes them with the serving decoder and splits them by record time: the
   older :data:`TRAIN_FRACTION` trains, the newest part is the hold-out;
3. trains a candidate with :func:`training.automl.train` (``budget_s``,
   ``promote=False``, lineage ``trigger`` and ``parent`` = the served version),
   whose card carries the training rows' reference bins (``reference``,
   :class:`models.reference.InputReference`) for the service's input monitor;
4. scores the hold-out with the candidate and the champion through the serving
   core (:class:`stream.core.Scorer`) and applies :func:`judge`;
5. promotes the candidate if it passes and emits ``retrain_finished`` then
   ``model_promoted`` or ``model_rejected``; a failure emits
   ``retrain_finished`` with ``status: failed``.

The validation rule (label-free; :func:`judge`), on the hold-out:

* *sane*: the candidate's alert rate is at most ``max(3c, c + 4·sqrt(c(1-c)/n))``
  (c = its contamination, ``1 - threshold``), and its calibration gap — the
  Kolmogorov distance between its calibrated scores and U(0, 1), which they
  follow on data like the training data — is at most :data:`MAX_GAP`;
* *better*: without a champion (cold start) a sane candidate passes; with one,
  the candidate's gap must be smaller than the champion's by
  :data:`MIN_GAIN` (a drifted stream pushes the champion's calibrated scores
  away from uniform, typically to 1.0).  A false drift alarm therefore gives a
  candidate no better than the champion, which is rejected.

Training runs in a worker thread of this separate process: a crash, a kill or
a timeout of the worker never touches the service, which keeps serving the
version it has.  Training imports (torch, pyod, optuna, scikit-learn) happen
inside the functions that train.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from numpy.typing import NDArray

from models.artifact import Artifact
from models.errors import ModelError
from models.registry import Registry
from stream.broker import client_options, ensure_topics
from stream.control import control_event
from stream.core import Scorer
from stream.decoding import EventDecoder
from stream.kafka import FETCH_BYTES, stop_consumer
from stream.settings import Settings

__all__ = ["MAX_GAP", "MIN_GAIN", "TRAIN_FRACTION", "Trainer", "Verdict", "judge", "read_window"]

log = logging.getLogger(__name__)

TRAIN_FRACTION: Final[float] = 0.8
MAX_GAP: Final[float] = 0.15
MIN_GAIN: Final[float] = 0.05
MIN_ROWS: Final[int] = 200


@dataclass(frozen=True, slots=True)
class Verdict:
    """The validation of a candidate on the hold-out."""

    passed: bool
    reason: str
    holdout: int
    candidate_alert_rate: float
    candidate_gap: float
    champion_alert_rate: float | None
    champion_gap: float | None


def _gap(score: NDArray[np.float64]) -> float:
    """Kolmogorov distance between the scores' ECDF and U(0, 1)."""
    s = np.sort(np.clip(score, 0.0, 1.0))
    n = s.size
    i = np.arange(1, n + 1)
    return float(max(np.max(i / n - s), np.max(s - (i - 1) / n)))


def judge(candidate: NDArray[np.float64], candidate_threshold: float, champion: NDArray[np.float64] | None,
          champion_threshold: float | None) -> Verdict:
    """Apply the validation rule (module docstring) to calibrated hold-out scores.

    >>> rng = np.random.default_rng(0)
    >>> fits, drifted = rng.uniform(size=2000), np.minimum(rng.uniform(size=2000) + 0.6, 1.0)
    >>> judge(fits, 0.99, drifted, 0.99).passed, judge(fits, 0.99, fits, 0.99).passed
    (True, False)
    """
    n = candidate.size
    c = 1.0 - candidate_threshold
    rate = float(np.mean(candidate >= candidate_threshold))
    gap = _gap(candidate)
    champ_rate = champ_gap = None
    if champion is not None and champion_threshold is not None:
        champ_rate = float(np.mean(champion >= champion_threshold))
        champ_gap = _gap(champion)
    limit = max(3 * c, c + 4 * math.sqrt(c * (1 - c) / max(n, 1)))
    if rate > limit:
        passed, reason = False, f"candidate alert rate {rate:.4f} above {limit:.4f} (contamination {c:.4f})"
    elif gap > MAX_GAP:
        passed, reason = False, f"candidate calibration gap {gap:.3f} above {MAX_GAP}"
    elif champ_gap is None:
        passed, reason = True, "no champion: candidate is sane"
    elif gap + MIN_GAIN <= champ_gap:
        passed, reason = True, f"calibration gap {gap:.3f} vs champion {champ_gap:.3f}"
    else:
        passed, reason = False, f"champion still fits the recent stream (gap {champ_gap:.3f} vs candidate {gap:.3f})"
    return Verdict(passed=passed, reason=reason, holdout=n, candidate_alert_rate=round(rate, 6),
                   candidate_gap=round(gap, 6), champion_alert_rate=None if champ_rate is None else round(champ_rate, 6),
                   champion_gap=None if champ_gap is None else round(champ_gap, 6))


async def read_window(
    bootstrap: str, topics: Sequence[str], *, window: int, start_at: Mapping[str, Mapping[str, int]] | None = None,
    timeout_s: float = 60.0, client: Mapping[str, Any] | None = None,
) -> list[tuple[float, bytes]]:
    """(record time in seconds, value) of the newest ``window`` events of ``topics`` (see module docstring).

    ``client``: the connection's security options (:func:`stream.broker.client_options`).
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                fetch_max_wait_ms=100, max_partition_fetch_bytes=FETCH_BYTES, client_id="anomstream-trainer",
                                **(client or {}))
    await consumer.start()
    out: list[tuple[float, bytes]] = []
    try:
        tps = []
        for topic in topics:
            for p in sorted(await _partitions(consumer, topic)):
                tps.append(TopicPartition(topic, p))
        if not tps:
            return []
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        for tp in tps:
            lower = (start_at or {}).get(tp.topic, {}).get(str(tp.partition), 0)
            consumer.seek(tp, max(starts[tp], ends[tp] - window, lower))
        deadline = time.monotonic() + timeout_s
        done: set[TopicPartition] = set()
        while len(done) < len(tps) and time.monotonic() < deadline:
            fetched = await consumer.getmany(timeout_ms=300, max_records=10_000)
            for tp, msgs in fetched.items():
                out.extend((m.timestamp / 1000.0, m.value or b"") for m in msgs)
            for tp in tps:
                high = consumer.highwater(tp)
                pos = await consumer.position(tp)
                if (high is not None and pos >= high) or (high is None and pos >= ends[tp] and not fetched):
                    done.add(tp)
    finally:
        await stop_consumer(consumer)
    out.sort(key=lambda r: r[0])
    return out[-window:]


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    for _ in range(50):
        await consumer._client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return set(parts)
        await asyncio.sleep(0.1)
    return set()


class Trainer:
    """Serve retrain requests until stopped (see the module docstring).

    Parameters
    ----------
    settings : Settings
        ``model``, ``kafka`` and ``drift.retrain`` sections are used.
    bootstrap : str
        Resolved Kafka bootstrap servers.
    algorithms : sequence of str, optional
        Restrict the AutoML search (default: the whole zoo).
    label_free : str, optional
        :func:`training.automl.train`'s ``label_free`` strategy.
    seed : int
    """

    def __init__(self, settings: Settings, *, bootstrap: str, algorithms: Sequence[str] | None = None,
                 label_free: str | None = None, seed: int = 0) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.client = client_options(settings.kafka)
        self.algorithms = list(algorithms) if algorithms else None
        self.label_free = label_free
        self.seed = seed
        self.registry = Registry(settings.model.registry)
        self.handled = 0

    async def run(self, stop: asyncio.Event) -> None:
        k = self.settings.kafka
        consumer = AIOKafkaConsumer(
            k.control_topic, bootstrap_servers=self.bootstrap, group_id=f"{k.group_id}.trainer",
            enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=200,
            client_id="anomstream-trainer", max_poll_interval_ms=3_600_000, **self.client,
        )
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", client_id="anomstream-trainer",
                                    **self.client)
        await ensure_topics(self.bootstrap, {k.control_topic: k.partitions}, client=self.client,
                            replication_factor=k.replication_factor)
        await producer.start()
        await consumer.start()
        log.info("trainer waiting for retrain requests on %s", k.control_topic)
        try:
            while not stop.is_set():
                fetched = await consumer.getmany(timeout_ms=500, max_records=1000)
                newest: dict[str, dict[str, Any]] = {}
                for tp in sorted(fetched):
                    for msg in fetched[tp]:
                        try:
                            ev = orjson.loads(msg.value or b"")
                        except orjson.JSONDecodeError:
                            continue
                        if isinstance(ev, dict) and ev.get("type") == "retrain_requested":
                            newest[str(ev.get("trigger"))] = ev  # the newest per trigger
                for req in newest.values():
                    for event in await self.handle(req):
                        await producer.send_and_wait(k.control_topic, orjson.dumps(event), key=event["type"].encode())
                if fetched:
                    await consumer.commit()
        finally:
            await stop_consumer(consumer)
            await producer.stop()

    async def handle(self, request: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Serve one request; the control events to emit."""
        s = self.settings
        name = s.model.name
        started = time.monotonic()
        rid = request.get("request_id")
        trigger = "coldstart" if request.get("trigger") == "coldstart" else "drift"
        current = self.registry.current(name)
        champion_ref = f"{name}@{current}" if current is not None else None
        base: dict[str, Any] = {"request_id": rid, "trigger": trigger}
        try:
            champion = self.registry.load(champion_ref) if champion_ref else None
            features = tuple(champion.card.features) if champion else tuple(request.get("features") or ())
            if not features:
                raise ValueError("the request names no features and no model is current")
            window = int(request.get("window_events") or s.drift.retrain.window_events)
            topics = request.get("topics") or list(s.kafka.input_topics)
            log.info("retrain %s (%s): reading the last %d events of %s", rid, trigger, window, ", ".join(topics))
            rows = await read_window(self.bootstrap, topics, window=window, start_at=request.get("from") or {},
                                     client=self.client)
            decoded = EventDecoder(features).decode([v for _, v in rows])
            X = decoded.X
            if X.shape[0] < MIN_ROWS:
                raise ValueError(f"only {X.shape[0]} valid events in the window, need at least {MIN_ROWS}")
            cut = int(X.shape[0] * TRAIN_FRACTION)
            X_train, X_hold = X[:cut], X[cut:]
            art = await asyncio.to_thread(self._train, X_train, features, trigger, champion_ref)
            verdict = await asyncio.to_thread(self._validate, art, champion, X_hold)
        except Exception as exc:  # noqa: BLE001 - any failure is reported on the control topic, serving goes on
            log.error("retrain %s failed: %s", rid, exc)
            return [control_event("retrain_finished", champion_ref or "none", status="failed",
                                  error=" ".join(str(exc).split())[:500], duration_s=round(time.monotonic() - started, 3),
                                  **base)]
        ref = art.card.ref
        details: dict[str, Any] = {**base, "candidate": ref, "rows": int(X_train.shape[0]), "validation": asdict(verdict),
                   "duration_s": round(time.monotonic() - started, 3)}
        if verdict.passed:
            self.registry.promote(name, art.card.version, reason="promote")
            log.info("promoted %s over %s: %s", ref, champion_ref, verdict.reason)
            return [control_event("retrain_finished", ref, status="promoted", **details),
                    control_event("model_promoted", ref, previous=champion_ref, origin="trainer", **base)]
        log.info("rejected %s: %s", ref, verdict.reason)
        return [control_event("retrain_finished", ref, status="rejected", **details),
                control_event("model_rejected", ref, champion=champion_ref, reason=verdict.reason, **base)]

    def _train(self, X: NDArray[np.float32], features: tuple[str, ...], trigger: str, parent: str | None) -> Artifact:
        from training.automl import train
        from training.data import Dataset

        r = self.settings.drift.retrain
        digest = hashlib.sha256(np.ascontiguousarray(X).tobytes()).hexdigest()
        ds = Dataset(X=X, features=features, y=None, sha256=digest, path=Path(f"kafka:{','.join(self.settings.kafka.input_topics)}"))
        kwargs: dict[str, Any] = {}
        if self.label_free:
            kwargs["label_free"] = self.label_free
        result = train(ds, name=self.settings.model.name, algorithms=self.algorithms, budget_s=r.budget_s,
                       registry_root=self.settings.model.registry, promote=False, trigger=trigger,  # type: ignore[arg-type]
                       parent=parent, seed=self.seed, **kwargs)
        return result.artifact  # its card carries the reference bins of the training rows

    def _validate(self, candidate: Artifact, champion: Artifact | None, X: NDArray[np.float32]) -> Verdict:
        inf = self.settings.inference
        cand = Scorer(candidate, providers=inf.providers, threads=inf.threads, native=inf.native).score(X).score
        champ: NDArray[np.float64] | None = None
        champ_threshold: float | None = None
        if champion is not None:
            try:
                sc = Scorer(champion, providers=inf.providers, threads=inf.threads, native=inf.native)
                champ, champ_threshold = sc.score(X).score, sc.threshold
            except ModelError as exc:
                log.warning("champion %s cannot score the hold-out: %s", champion.card.ref, exc)
        return judge(cand, candidate.card.threshold, champ, champ_threshold)
