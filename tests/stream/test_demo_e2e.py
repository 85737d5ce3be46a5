"""``anomstream demo``, the main job (contract §4), run for real in a subprocess.

The demo starts the embedded broker, trains a first model into an empty registry, runs ``serve``
as a child process, offers synthetic events with a drift halfway and prints a summary a second.
When the duration ends the producer stops first and the summary reads until every offered event
has its score record, so the last line accounts for each event by id.
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
DURATION_S = 12
SUMMARY = re.compile(r"^\[\s*(\d+)s\]\s+(\d+) events/s  scored\s+(\d+) .* model (\S+)$", re.M)
DONE = re.compile(
    r"^done: (\d+) events offered \((\d+) injected anomalies\), (\d+) score records read, "
    r"(\d+) of the offered events scored \((.*)\), (\d+) flagged$",
    re.M,
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
    assert re.search(r"^model: default@1 \(\w+\) at ", out, re.M), out
    assert (registry / "default" / "1" / "model.onnx").is_file()
    assert (registry / "default" / "1" / "card.json").is_file()
    assert "broker: embedded Tansu on 127.0.0.1:" in out
    assert "dashboard: http://127.0.0.1:8765/" in out
    assert f"producer: drift injected at t={DURATION_S // 2}s" in out

    lines = SUMMARY.findall(out)
    assert len(lines) >= DURATION_S // 2, out
    assert {model for *_, model in lines} - {"?"} == {"default@1"}  # "?" until the first record
    assert max(int(rate) for _, rate, _, _ in lines) > 0

    done = DONE.search(out)
    assert done, out
    sent, injected, read, scored, outcome, flagged = done.groups()
    # About 2,000 events/s offered for the whole duration, and every one came back scored.
    assert int(sent) >= DURATION_S * 2000 * 0.8
    assert int(scored) == int(sent), outcome
    assert outcome == "every one scored"
    assert int(read) >= int(sent)
    # 1% anomalies injected, and after the drift most events look anomalous to the first model.
    assert int(injected) > 0
    assert int(flagged) > int(injected)
    assert int(read) >= max(int(n) for _, _, n, _ in lines)
