"""Helpers for the WebSocket tests: an in-process service and plain HTTP requests."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import orjson

from stream.service import Service
from stream.settings import Settings
from stream.synthetic import SyntheticStream


def ws_settings(registry: Path, **websocket: Any) -> Settings:
    """Kafka off, metrics off, the WebSocket server on a free port."""
    return Settings.model_validate({
        "model": {"registry": str(registry), "name": "default"},
        "kafka": {"enabled": False},
        "metrics": {"enabled": False},
        "batching": {"max_batch": 64, "max_latency_ms": 5},
        "websocket": {"enabled": True, "port": 0, **websocket},
    })


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[Service]:
    """A running service (``svc.web.port`` is its port) until the block ends."""
    stop = asyncio.Event()
    async with Service(settings) as svc:
        task = asyncio.create_task(svc.run(stop))
        try:
            yield svc
        finally:
            stop.set()
            await task


async def http_get(url: str, headers: Mapping[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """GET ``url`` from a thread (the server may run on this event loop)."""
    def get() -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(url, headers=dict(headers or {}))
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, dict(exc.headers), exc.read()
    return await asyncio.to_thread(get)


def events(n: int, *, seed: int = 3, anomaly_rate: float = 0.05, start: int = 0) -> list[dict[str, Any]]:
    """``n`` events of the 6-feature synthetic stream the ``registry`` model was trained on."""
    gen = SyntheticStream(n_features=6, seed=seed)
    X, _ = gen.sample(n, anomaly_rate=anomaly_rate)
    return [{"id": start + i, "key": f"k{i % 4}", "features": dict(zip(gen.features, row))}
            for i, row in enumerate(X.tolist())]


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)
