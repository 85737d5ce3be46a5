"""The WebSocket/HTTP server in-process: real connections, the real ONNX model.

Ingest (single events, arrays, bad frames), token auth, health, the dashboard
assets, and the fan-out hub (500 subscribers, a stalled subscriber).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from stream.fanout import Hub, Subscriber, parse_streams
from stream.service import Service
from tests.stream.serving import dumps, events, http_get, serving, ws_settings


def _ws(svc: Service, path: str) -> str:
    assert svc.web is not None
    return f"ws://127.0.0.1:{svc.web.port}{path}"


def _http(svc: Service, path: str) -> str:
    assert svc.web is not None
    return f"http://127.0.0.1:{svc.web.port}{path}"


def test_single_events_and_arrays_are_scored_in_order(registry: Path) -> None:
    evs = events(400)
    evs[3]["features"] = [evs[3]["features"][f] for f in sorted(evs[3]["features"])]  # list form

    async def main() -> tuple[list[Any], list[Any], Any]:
        async with serving(ws_settings(registry)) as svc, connect(_ws(svc, "/ingest"), compression=None) as ws:
            for ev in evs[:100]:  # pipelined: no waiting between sends
                await ws.send(dumps(ev), text=True)
            singles = [orjson.loads(await ws.recv()) for _ in range(100)]
            await ws.send(dumps(evs[100:400]), text=True)  # 300 events > max_batch 64: split across batches
            await ws.send(b"[]", text=True)
            array = orjson.loads(await ws.recv())
            empty = orjson.loads(await ws.recv())
            return singles, array, empty

    singles, array, empty = asyncio.run(main())
    assert [r["id"] for r in singles] == list(range(100))
    assert isinstance(array, list) and [r["id"] for r in array] == list(range(100, 400))
    assert empty == []
    for r in singles + array:
        assert r["model"] == "default@1" and 0.0 <= r["score"] <= 1.0 and "source" not in r
        assert ("contributions" in r) == r["anomaly"]
    assert any(r["anomaly"] for r in singles + array)


def test_bad_frames_are_answered_and_the_connection_stays_open(registry: Path) -> None:
    good = events(2)

    async def main() -> list[Any]:
        async with serving(ws_settings(registry)) as svc, connect(_ws(svc, "/ingest"), compression=None) as ws:
            replies = []
            for frame in (
                b'{"id": 1, "features": {',                                     # invalid JSON
                dumps({"id": 2, "features": [1.0, 2.0]}),                       # wrong feature count
                dumps([good[0], {"id": 3, "features": {"f0": 1}}, good[1]]),   # one bad event in an array
                dumps({"id": 4, "features": good[0]["features"], "blob": "x" * (3 << 19)}),  # 1.5 MiB
                b"[1, 2",                                                       # a broken array
                dumps(good[1]),
            ):
                await ws.send(frame, text=True)
                replies.append(orjson.loads(await ws.recv()))
            return replies

    bad_json, wrong, mixed, oversize, broken, ok = asyncio.run(main())
    assert bad_json["error"] == "invalid_json" and bad_json["source"] is None
    assert bad_json["payload"] == '{"id": 1, "features": {'
    assert wrong["error"] == "wrong_length" and "expects 6" in wrong["detail"]
    assert [r.get("id") for r in mixed] == [good[0]["id"], None, good[1]["id"]]
    assert mixed[1]["error"] == "missing_features" and orjson.loads(mixed[1]["payload"])["id"] == 3
    assert oversize["error"] == "too_large" and oversize["payload_truncated"] is True
    assert len(oversize["payload"]) <= 1024
    assert broken["error"] == "invalid_json"
    assert ok["id"] == good[1]["id"] and "score" in ok


def test_token_auth_answers_401_before_any_upgrade(registry: Path) -> None:
    token = "s3cret/+token"

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with serving(ws_settings(registry, token=token)) as svc:
            out["page_none"] = (await http_get(_http(svc, "/")))[0]
            out["page_wrong"] = (await http_get(_http(svc, "/?token=nope")))[0]
            out["page_header"] = (await http_get(_http(svc, "/"), {"Authorization": f"Bearer {token}"}))[0]
            status, _, body = await http_get(_http(svc, "/?token=s3cret%2F%2Btoken"))
            out["page_query"], out["page_body"] = status, body
            out["readyz_none"] = (await http_get(_http(svc, "/readyz")))[0]
            out["healthz_none"] = (await http_get(_http(svc, "/healthz")))[0]
            for name, kwargs in (("ws_none", {}), ("ws_wrong", {"additional_headers": {"Authorization": "Bearer x"}})):
                try:
                    async with connect(_ws(svc, "/ingest"), **kwargs):
                        out[name] = 101
                except InvalidStatus as exc:
                    out[name] = exc.response.status_code
            async with connect(_ws(svc, "/ingest"), additional_headers={"Authorization": f"Bearer {token}"}) as ws:
                await ws.send(dumps(events(1)[0]), text=True)
                out["ws_header"] = orjson.loads(await ws.recv())
            async with connect(_ws(svc, "/subscribe?streams=scores&token=s3cret%2F%2Btoken")) as ws:
                out["ws_query"] = ws.response.status_code if ws.response else None
        return out

    out = asyncio.run(main())
    assert out["page_none"] == 401 and out["page_wrong"] == 401 and out["readyz_none"] == 401
    assert out["page_header"] == 200 and out["page_query"] == 200 and out["healthz_none"] == 200
    assert out["ws_none"] == 401 and out["ws_wrong"] == 401
    assert out["ws_header"]["id"] == 0 and out["ws_query"] == 101
    # The page passes its token on to its assets and its WebSocket.
    assert b'src="dashboard.js?token=s3cret%2F%2Btoken"' in out["page_body"]


def test_health_ready_and_dashboard_assets(registry: Path) -> None:
    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with serving(ws_settings(registry)) as svc:
            for path in ("/healthz", "/readyz", "/", "/dashboard.js", "/uPlot.iife.min.js", "/uPlot.min.css",
                         "/dashboard.css", "/nope", "/subscribe?streams=alerts"):
                out[path] = await http_get(_http(svc, path))
        return out

    out = asyncio.run(main())
    status, headers, body = out["/healthz"]
    health = orjson.loads(body)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert health["status"] == "ok" and health["model"] == "default@1" and health["kafka"] == "disabled"
    assert isinstance(health["uptime_s"], float)
    assert out["/readyz"][0] == 200 and orjson.loads(out["/readyz"][2]) == {"ready": True, "reasons": []}
    assert out["/"][0] == 200 and out["/"][1]["Content-Type"].startswith("text/html")
    assert b'src="uPlot.iife.min.js"' in out["/"][2] and b"{{query}}" not in out["/"][2]
    assert b"https://" not in out["/"][2]  # nothing from a CDN
    assert out["/uPlot.iife.min.js"][0] == 200 and b"uPlot" in out["/uPlot.iife.min.js"][2]
    assert out["/dashboard.js"][1]["Content-Type"].startswith("text/javascript")
    assert out["/uPlot.min.css"][0] == 200 and out["/dashboard.css"][0] == 200
    assert out["/nope"][0] == 404
    assert out["/subscribe?streams=alerts"][0] == 400 and b"unknown stream 'alerts'" in out["/subscribe?streams=alerts"][2]


async def _collect_anomalies(ws: ClientConnection, want: int) -> list[Any]:
    got: list[Any] = []
    while len(got) < want:
        frame = orjson.loads(await ws.recv())
        assert frame["stream"] == "anomalies"
        got.extend(frame["records"])
    return got


def test_500_subscribers_each_receive_every_anomaly(registry: Path) -> None:
    n_subs = 500
    evs = events(2000, anomaly_rate=0.05)

    async def main() -> tuple[list[Any], list[list[Any]], dict[str, float | None]]:
        async with serving(ws_settings(registry)) as svc:
            subs = await asyncio.gather(*(connect(_ws(svc, "/subscribe?streams=anomalies"), compression=None)
                                          for _ in range(n_subs)))
            gauge = svc.metrics.registry.get_sample_value("anomstream_websocket_clients", {"endpoint": "subscribe"})
            async with connect(_ws(svc, "/ingest"), compression=None) as ws:
                replies: list[Any] = []
                for i in range(0, len(evs), 100):
                    await ws.send(dumps(evs[i:i + 100]), text=True)
                    replies.extend(orjson.loads(await ws.recv()))
            anomalies = [r for r in replies if r["anomaly"]]
            received = await asyncio.wait_for(
                asyncio.gather(*(_collect_anomalies(s, len(anomalies)) for s in subs)), timeout=120)
            for s in subs:
                await s.close()
            for _ in range(200):
                if svc.hub.subscribers("anomalies") == 0:
                    break
                await asyncio.sleep(0.01)
            left = {"gauge_open": gauge, "hub_left": float(svc.hub.subscribers("anomalies")),
                    "gauge_left": svc.metrics.registry.get_sample_value("anomstream_websocket_clients",
                                                                        {"endpoint": "subscribe"})}
            return anomalies, list(received), left

    anomalies, received, left = asyncio.run(main())
    want = [r["id"] for r in anomalies]
    assert len(want) > 20
    assert len(received) == n_subs
    for got in received:
        assert [r["id"] for r in got] == want
    assert left == {"gauge_open": float(n_subs), "hub_left": 0.0, "gauge_left": 0.0}


async def _latencies(ws: ClientConnection, want: int, out: list[float]) -> None:
    """Seconds from each record's ``scored_at`` to its arrival here, appended to ``out``."""
    while len(out) < want:
        frame = orjson.loads(await ws.recv())
        now = time.time()
        out.extend(now - r["scored_at"] for r in frame["records"])


def test_a_stalled_subscriber_does_not_slow_the_others(registry: Path) -> None:
    # ~20 MB of score records: more than the stalled client's socket buffers can absorb.
    n_events, n_readers, per_frame = 60_000, 20, 500
    evs = events(n_events, anomaly_rate=0.01)
    frames = [dumps(evs[i:i + per_frame]) for i in range(0, n_events, per_frame)]

    async def run(stalled: bool) -> tuple[list[float], int]:
        async with serving(ws_settings(registry, queue=2000)) as svc:
            readers = [await connect(_ws(svc, "/subscribe?streams=scores"), compression=None) for _ in range(n_readers)]
            # max_queue=1: the client stops reading from its socket after one frame and never reads again.
            staller = await connect(_ws(svc, "/subscribe?streams=scores"), compression=None, max_queue=1) if stalled else None
            lats: list[list[float]] = [[] for _ in readers]
            collect = [asyncio.create_task(_latencies(r, n_events, out)) for r, out in zip(readers, lats)]
            async with connect(_ws(svc, "/ingest"), compression=None) as ws:
                for i, f in enumerate(frames):
                    await ws.send(f, text=True)
                    await ws.recv()
                    # Pace the source by the readers (not by the stalled one), so only it can overflow.
                    while min(len(x) for x in lats) < (i + 1) * per_frame:
                        await asyncio.sleep(0.001)
            await asyncio.wait_for(asyncio.gather(*collect), timeout=120)
            dropped = int(svc.metrics.registry.get_sample_value("anomstream_websocket_dropped_total") or 0)
            for r in readers:
                await r.close()
            if staller is not None:
                staller.transport.abort()
            return [x for xs in lats for x in xs], dropped

    base, base_dropped = asyncio.run(run(stalled=False))
    with_stalled, dropped = asyncio.run(run(stalled=True))
    assert len(base) == len(with_stalled) == n_events * n_readers  # every reader got every record
    assert base_dropped == 0 and dropped > 0  # only the stalled one lost records (drop-oldest)

    def pct(xs: list[float], q: int) -> float:
        return statistics.quantiles(xs, n=100)[q - 1] * 1000

    print(f"\n{n_readers} readers, {n_events} records each: latency p50/p99 without a stalled subscriber "
          f"{pct(base, 50):.1f}/{pct(base, 99):.1f} ms; with one {pct(with_stalled, 50):.1f}/"
          f"{pct(with_stalled, 99):.1f} ms; the stalled one lost {dropped} records")


def test_hub_drops_oldest_frames_and_counts_them() -> None:
    from stream.metrics import Metrics

    m = Metrics()
    hub = Hub(queue=5, metrics=m)
    sub = hub.subscribe(parse_streams("scores"))
    other = hub.subscribe(parse_streams("control"))
    for i in range(4):
        hub.publish("scores", [{"id": 2 * i}, {"id": 2 * i + 1}])
    frames = [orjson.loads(f) for f in iter(sub.pop, None)]
    assert [r["id"] for f in frames for r in f["records"]] == [4, 5, 6, 7]
    assert sub.dropped == 4 and m.registry.get_sample_value("anomstream_websocket_dropped_total") == 4.0
    assert other.pop() is None and not other.ready.is_set()
    hub.unsubscribe(sub)
    hub.publish("scores", [{"id": 9}])
    assert sub.pop() is None and hub.subscribers("scores") == 0
    big = Subscriber(["scores"], limit=1)
    assert big.push(b"x", 3) == 0 and big.pop() == b"x"  # one frame larger than the limit is kept


def test_parse_streams_rejects_unknown_names() -> None:
    assert parse_streams(None) == frozenset({"scores", "anomalies", "control"})
    with pytest.raises(ValueError, match="unknown stream 'x'"):
        parse_streams("scores,x")
