"""Prometheus metrics (contract §8), on a registry of their own.

Label values stay bounded: sources, reject codes, severities, topic and
partition numbers, model name/version/provider, alert sinks (never a webhook
URL) and statuses; never event ids or keys.  The fixed label values below are
created at zero on start, so every series exists (and dashboards show 0, not
"no data") before the first event.
"""

from __future__ import annotations

import logging

import numpy as np
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from models.calibration import SEVERITIES
from stream.decoding import REJECT_CODES

__all__ = ["ALERT_SINKS", "ALERT_STATUSES", "Metrics"]

ALERT_SINKS = ("kafka", "webhook", "jsonl")
ALERT_STATUSES = ("sent", "failed", "dropped", "circuit_open")
_DRIFT_SIGNALS = ("score", "anomaly_rate", "input")
_RETRAIN_STATUSES = ("requested", "promoted", "rejected", "failed")
_WS_ENDPOINTS = ("ingest", "subscribe")

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_INFERENCE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


class Metrics:
    """Every service metric, registered on ``self.registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.events = Counter("anomstream_events", "Events received", ["source"], registry=r)
        self.rejected = Counter("anomstream_events_rejected", "Events sent to the dead-letter topic", ["reason"], registry=r)
        self.anomalies = Counter("anomstream_anomalies", "Anomalies scored", ["severity"], registry=r)
        self.batch_size = Histogram("anomstream_batch_size", "Events per scored batch", buckets=_BATCH_BUCKETS, registry=r)
        self.inference = Histogram("anomstream_inference_seconds", "ONNX inference time per batch", buckets=_INFERENCE_BUCKETS, registry=r)
        self.latency = Histogram("anomstream_latency_seconds", "Event in to result out", buckets=_LATENCY_BUCKETS, registry=r)
        self.model_info = Gauge("anomstream_model_info", "The model being served", ["name", "version", "provider"], registry=r)
        self.drift_events = Counter("anomstream_drift_events", "Drift events", ["signal"], registry=r)
        self.retrain = Counter("anomstream_retrain", "Retraining jobs", ["status"], registry=r)
        self.websocket_clients = Gauge("anomstream_websocket_clients", "Connected WebSocket clients", ["endpoint"], registry=r)
        self.websocket_dropped = Counter("anomstream_websocket_dropped", "Records dropped for slow subscribers", registry=r)
        self.alerts = Counter("anomstream_alerts", "Alerts delivered", ["sink", "status"], registry=r)
        self.consumer_lag = Gauge("anomstream_consumer_lag", "Records behind the end of the partition", ["topic", "partition"], registry=r)
        for source in ("kafka", "websocket"):
            self.events.labels(source=source)
        for code in REJECT_CODES:
            self.rejected.labels(reason=code)
        for sev in SEVERITIES[1:]:
            self.anomalies.labels(severity=sev)
        for signal in _DRIFT_SIGNALS:
            self.drift_events.labels(signal=signal)
        for status in _RETRAIN_STATUSES:
            self.retrain.labels(status=status)
        for endpoint in _WS_ENDPOINTS:
            self.websocket_clients.labels(endpoint=endpoint)
        self.alerts.labels(sink="kafka", status="sent")

    def record_batch(self, *, source: str, events: int, scored: int, inference_s: float,
                     latencies_s: NDArray[np.float64], severities: NDArray[np.int8]) -> None:
        """Count one scored batch: events in, batch size, inference time, per-event latency
        (as one bucket count per bucket), anomalies by severity (codes index
        :data:`models.calibration.SEVERITIES`)."""
        self.events.labels(source=source).inc(events)
        if scored:
            self.batch_size.observe(scored)
            self.inference.observe(inference_s)
            observe_many(self.latency, latencies_s)
        if severities.size:
            for code, n in enumerate(np.bincount(severities, minlength=len(SEVERITIES)).tolist()):
                if n:
                    self.anomalies.labels(severity=SEVERITIES[code]).inc(n)

    def set_model(self, name: str, version: int, provider: str) -> None:
        """Mark ``name@version`` on ``provider`` as the one model served."""
        self.model_info.clear()
        self.model_info.labels(name=name, version=str(version), provider=provider).set(1)

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        """Expose ``/metrics`` on ``port`` (a background thread)."""
        start_http_server(port, addr=host, registry=self.registry)
        log.info("metrics on http://%s:%d/metrics", host, port)


def observe_many(hist: Histogram, values: NDArray[np.float64]) -> None:
    """``hist.observe(v)`` for every value, as one bucket count per bucket.

    Observing event by event cost 3.4 µs per event (a fifth of the per-event
    work); this counts with numpy and increments each touched bucket once.
    It relies on prometheus_client's ``_upper_bounds``/``_buckets``/``_sum``
    (unchanged since 0.4); without them it falls back to ``observe``.
    """
    bounds = getattr(hist, "_upper_bounds", None)
    if bounds is None or not hasattr(hist, "_buckets") or not hasattr(hist, "_sum"):
        for v in values.tolist():
            hist.observe(v)
        return
    # observe() counts v in the first bucket with v <= bound: searchsorted side="left".
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds) + 1)
    for i, c in enumerate(counts[: len(bounds)].tolist()):
        if c:
            hist._buckets[i].inc(c)
    hist._sum.inc(float(values.sum()))
