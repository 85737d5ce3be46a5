"""``anomstream demo``, the main job (contract §4), run for real in a subprocess.

The demo starts the embedded broker, trains a first model into an empty registry, runs ``serve``
and ``trainer`` as child processes, offers synthetic events with a drift halfway and prints a
summary a second and each control event.  The drift is detected, the trainer retrains on the
shifted events and promotes ``default@2``, and the service swaps to it.  When the duration ends
the producer stops first and the summary reads until every offered event has its score record,
so the last line accounts for each event by id, across the swap.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from stream.broker import DEFAULT_PORT, port_open
from tests.conftest import python_cmd, subprocess_env

# The demo listens on fixed ports: the broker's, the metrics endpoint's and the WebSocket server's.
DEMO_PORTS = (DEFAULT_PORT, 9108, 8765)
DURATION_S = 50  # the drift at 25 s; detection, a 2 s wait for events and an 8 s training follow
SUMMARY = re.compile(
    r"^\[\s*(\d+)s\]\s+(\d+) events/s  scored\s+(\d+)  anomalies\s+\d+ \(last second\s+([\d.]+)%\).* model (\S+)$",
    re.MULTILINE,
)
DONE = re.compile(
    r"^done: (\d+) events offered \((\d+) injected anomalies\), (\d+) score records read, "
    r"(\d+) of the offered events scored \((.*)\), (\d+) flagged; scored by (.*)$",
    re.MULTILINE,
)


@pytest.mark.slow
def test_demo_trains_a_first_model_serves_and_accounts_for_every_event(tmp_path: Path) -> None:
    busy = [p for p in DEMO_PORTS if port_open("127.0.0.1", p)]
    if busy:
        pytest.skip(f"the demo's fixed ports are in use here: {busy}")
    registry = tmp_path / "var" / "models"
    result = subprocess.run(
        python_cmd("demo", "--duration", str(DURATION_S), "--registry", str(registry)),
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300, check=False,
    )
    out = result.stdout
    assert result.returncode == 0, f"exit {result.returncode}\n{out}\n{result.stderr}"

    assert f"model: none in {registry}; training a first one" in out
    assert re.search(r"^model: default@1 \(\w+\) at ", out, re.MULTILINE), out
    assert (registry / "default" / "1" / "model.onnx").is_file()
    assert (registry / "default" / "1" / "card.json").is_file()
    assert "broker: embedded Tansu on 127.0.0.1:" in out
    assert "dashboard: http://127.0.0.1:8765/" in out
    assert f"producer: drift injected at t={DURATION_S // 2}s" in out

    lines = SUMMARY.findall(out)
    assert len(lines) >= DURATION_S // 2, out
    assert {model for *_, model in lines} - {"?"} == {"default@1", "default@2"}  # "?" until the first record
    assert max(int(rate) for _, rate, *_ in lines) > 0

    # The loop the demo shows: detection, request, training, promotion, swap; in that order.
    steps = [
        out.index("producer: drift injected"),
        out.index("control: drift detected on the "),
        out.index("control: retrain requested by default@1 (drift)"),
        out.index("control: default@2 promoted over default@1"),
        out.index("control: retrain finished after"),
    ]
    assert steps[:3] == sorted(steps[:3]) and steps[2] < min(steps[3:]), out
    assert "candidate default@2 promoted" in out
    first_v2 = next(i for i, line in enumerate(lines) if line[-1] == "default@2")
    assert all(line[-1] == "default@2" for line in lines[first_v2:]), "the service went back to default@1"
    # Before the swap the first model flags most of the shifted events; the new one, trained on them, does not.
    assert max(float(line[3]) for line in lines[:first_v2]) > 30.0, out
    after = [float(line[3]) for line in lines[first_v2 + 1 :]]
    assert len(after) >= 3 and max(after) < 10.0, out

    done = DONE.search(out)
    assert done, out
    sent, injected, read, scored, outcome, flagged, by_model = done.groups()
    # About 2,000 events/s offered for the whole duration, and every one came back scored, across the swap.
    assert int(sent) >= DURATION_S * 2000 * 0.8
    assert int(scored) == int(sent), outcome
    assert outcome == "every one scored"
    assert int(read) >= int(sent)
    assert int(read) >= max(int(n) for _, _, n, *_ in lines)
    counts = dict(re.findall(r"(default@\d) \((\d+)\)", by_model))
    assert set(counts) == {"default@1", "default@2"} and sum(map(int, counts.values())) == int(read)
    # 1% anomalies injected; after the drift the first model flags most events.
    assert int(injected) > 0
    assert int(flagged) > int(injected)

    # A second demo on this registry starts again from the model trained on the unshifted rows.
    from models.registry import Registry
    from stream.demo import _ensure_model

    assert Registry(registry).current("default") == 2
    _ensure_model(registry, "default")
    assert Registry(registry).current("default") == 1
