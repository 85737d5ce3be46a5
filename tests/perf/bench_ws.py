"""WebSocket benchmark: ingest throughput and fan-out latency, beside a bare ``websockets`` ceiling.

Run with ``make bench``.  Two servers run as subprocesses on this machine:

* anomstream: ``anomstream serve`` with Kafka off (ingest → micro-batcher →
  ONNX IForest → replies; scored records fanned out to subscribers);
* ceiling: a bare ``websockets`` server (compression off, like anomstream) that
  echoes every ingest frame and broadcasts one small frame per ingest frame to
  its subscribers with ``websockets.broadcast``: what the library allows with
  no decoding, scoring or queueing.

The client is this process (asyncio, pre-encoded frames, a bounded window of
frames in flight per connection).  Rows: ingest events/s on one connection
sending single events, arrays of 256, and on 8 connections; fan-out latency
(record ``scored_at`` → arrival at a subscriber) p50/p99 to 100 and 500
subscribers of ``anomalies`` while 2,000 events/s (20 frames/s) are ingested.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import orjson

N_FEATURES = 32


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ----------------------------------------------------------------------------- ceiling server
async def _ceiling(port: int) -> None:
    from websockets.asyncio.server import ServerConnection, broadcast, serve

    subs: set[ServerConnection] = set()

    async def handler(ws: ServerConnection) -> None:
        path = ws.request.path if ws.request else "/"
        if path.startswith("/subscribe"):
            subs.add(ws)
            try:
                await ws.wait_closed()
            finally:
                subs.discard(ws)
            return
        async for msg in ws:
            await ws.send(msg)
            if subs:
                broadcast(subs, orjson.dumps({"stream": "anomalies", "records": [{"scored_at": time.time()}]}).decode())

    async with serve(handler, "127.0.0.1", port, compression=None, max_size=16 << 20):
        await asyncio.Future()


# ----------------------------------------------------------------------------- client side
def _events(n: int) -> list[dict[str, object]]:
    from stream.synthetic import SyntheticStream

    gen = SyntheticStream(n_features=N_FEATURES, seed=1)
    X, _ = gen.sample(n, anomaly_rate=0.02)
    names = [f"x{j}" for j in range(N_FEATURES)]
    return [{"id": i, "features": {k: float(f"{v:.6g}") for k, v in zip(names, row)}} for i, row in enumerate(X.tolist())]


async def _one_connection(url: str, frames: list[bytes], window: int) -> None:
    from websockets.asyncio.client import connect

    async with connect(url, compression=None, max_size=16 << 20, max_queue=None) as ws:
        slots = asyncio.Semaphore(window)

        async def send() -> None:
            for f in frames:
                await slots.acquire()
                await ws.send(f, text=True)

        sender = asyncio.create_task(send())
        for _ in frames:
            await ws.recv(decode=False)
            slots.release()
        await sender


async def _ingest(url: str, frames: list[bytes], per_frame: int, connections: int, window: int) -> float:
    share = [frames[i::connections] for i in range(connections)]
    t0 = time.perf_counter()
    await asyncio.gather(*(_one_connection(url, s, window) for s in share))
    return len(frames) * per_frame / (time.perf_counter() - t0)


async def _fanout(base: str, n_subs: int, ingest_frames: list[bytes], rate_hz: float) -> np.ndarray:
    from websockets.asyncio.client import ClientConnection, connect

    lat: list[float] = []

    async def listen(ws: ClientConnection) -> None:
        async for msg in ws:
            now = time.time()
            for r in orjson.loads(msg)["records"]:
                lat.append(now - r["scored_at"])

    subs = []
    for i in range(0, n_subs, 50):
        subs += await asyncio.gather(*(connect(f"{base}/subscribe?streams=anomalies", compression=None)
                                       for _ in range(min(50, n_subs - i))))
    tasks = [asyncio.create_task(listen(s)) for s in subs]
    async with connect(f"{base}/ingest", compression=None, max_size=16 << 20) as ws:
        t0 = time.perf_counter()
        for k, f in enumerate(ingest_frames):
            delay = t0 + k / rate_hz - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await ws.send(f, text=True)
            await ws.recv(decode=False)
        await asyncio.sleep(1.0)
    for s in subs:
        await s.close()
    await asyncio.gather(*tasks, return_exceptions=True)
    return np.array(lat) * 1000.0


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer in {timeout_s} s")


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="events per ingest run")
    parser.add_argument("--fanout-seconds", type=float, default=10.0)
    parser.add_argument("--ceiling-server", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ceiling_server is not None:
        asyncio.run(_ceiling(args.ceiling_server))
        return


    from perf_registry import train_iforest

    tmp = Path(tempfile.mkdtemp(prefix="anomstream-bench-ws-"))
    from stream.synthetic import SyntheticStream

    X, _ = SyntheticStream(n_features=N_FEATURES, seed=1).sample(10_000, anomaly_rate=0.01)
    train_iforest(tmp, X)

    evs = _events(args.events)
    singles = [orjson.dumps(e) for e in evs]
    arrays = [orjson.dumps(evs[i:i + 256]) for i in range(0, len(evs), 256)]
    arrays = arrays[: len(evs) // 256]
    fan_rate = 20.0
    fan_frames = [orjson.dumps(evs[(k * 100) % (len(evs) - 100):][:100]) for k in range(int(args.fanout_seconds * fan_rate))]
    print(f"model: IForest, {N_FEATURES} features; event ≈ {len(singles[0])} B; {os.cpu_count()} CPUs; "
          f"{len(evs):,} events per ingest run", flush=True)

    ws_port, ceil_port = _free_port(), _free_port()
    cfg = tmp / "service.yaml"
    cfg.write_text(json.dumps({
        "model": {"registry": str(tmp / "models"), "name": "default"},
        "kafka": {"enabled": False}, "metrics": {"enabled": False},
        "websocket": {"enabled": True, "port": ws_port, "queue": 10_000},
    }))
    log = open(tmp / "serve.log", "wb")  # noqa: SIM115 - closed below
    svc = subprocess.Popen([sys.executable, "-m", "stream", "serve", "--config", str(cfg), "--log-level", "WARNING"],
                           stdout=log, stderr=subprocess.STDOUT)
    ceil = subprocess.Popen([sys.executable, __file__, "--ceiling-server", str(ceil_port)])
    results: dict[str, dict[str, object]] = {"anomstream": {}, "ceiling": {}}
    try:
        _wait_http(f"http://127.0.0.1:{ws_port}/readyz", svc)
        _wait_port(ceil_port, ceil)
        for name, port in (("anomstream", ws_port), ("ceiling", ceil_port)):
            url = f"ws://127.0.0.1:{port}/ingest"
            r = results[name]
            asyncio.run(_ingest(url, singles[:5000], 1, 1, 256))  # warm-up
            r["single, 1 connection"] = asyncio.run(_ingest(url, singles, 1, 1, 512))
            r["arrays of 256, 1 connection"] = asyncio.run(_ingest(url, arrays, 256, 1, 8))
            r["single, 8 connections"] = asyncio.run(_ingest(url, singles, 1, 8, 128))
            r["arrays of 256, 8 connections"] = asyncio.run(_ingest(url, arrays, 256, 8, 4))
            for n in (100, 500):
                r[f"fan-out to {n}"] = asyncio.run(_fanout(f"ws://127.0.0.1:{port}", n, fan_frames, fan_rate))
            print(f"  {name}: done", flush=True)
    finally:
        for p in (svc, ceil):
            p.terminate()
            p.wait(timeout=30)
        log.close()

    print()
    print(f"{'scenario':<46} {'anomstream':>16} {'ceiling (bare websockets)':>27} {'ratio':>7}")
    for key, value in results["anomstream"].items():
        ceil_v = results["ceiling"][key]
        if isinstance(value, float) and isinstance(ceil_v, float):
            print(f"{'ingest ' + key + ', events/s':<46} {value:>16,.0f} {ceil_v:>27,.0f} {value / ceil_v:>7.2f}")
    for key, value in results["anomstream"].items():
        ceil_v = results["ceiling"][key]
        if isinstance(value, np.ndarray) and isinstance(ceil_v, np.ndarray):
            a50, a99 = np.percentile(value, [50, 99]) if value.size else (np.nan, np.nan)
            c50, c99 = np.percentile(ceil_v, [50, 99]) if ceil_v.size else (np.nan, np.nan)
            print(f"{key + ' p50/p99 ms':<46} {f'{a50:.1f} / {a99:.1f}':>16} {f'{c50:.1f} / {c99:.1f}':>27} "
                  f"{a99 / c99:>7.2f}  ({value.size:,} deliveries)")
    print(f"\nratio: anomstream / ceiling (throughput: higher is better; latency p99: lower is better). "
          f"Service log: {tmp / 'serve.log'}")


if __name__ == "__main__":
    main()
