"""The dashboard in real headless Chromium (Debian's ``chromium``, driven by Playwright).

Loads the page from an in-process service, streams events with anomalies
through ``/ingest``, and checks that the chart and the anomaly table updated.
The screenshot is left at ``tests/artifacts/dashboard.png``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.stream.serving import dumps, events, serving, ws_settings

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACT = Path(__file__).resolve().parents[1] / "artifacts" / "dashboard.png"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium (apt-get install -y chromium)",
                allow_module_level=True)
playwright_api = pytest.importorskip("playwright.async_api", reason="playwright is not installed (the dev extra)")


def test_dashboard_shows_live_scores_and_anomalies(registry: Path) -> None:
    token = "browser-token"
    evs = events(3000, anomaly_rate=0.05)

    async def main() -> tuple[int, int, str, str]:
        async with serving(ws_settings(registry, token=token)) as svc, playwright_api.async_playwright() as pw:
            assert svc.web is not None
            base = f"127.0.0.1:{svc.web.port}"
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1400, "height": 900})
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await page.goto(f"http://{base}/?token={token}")
                await page.wait_for_function("document.getElementById('status').textContent === 'live'", timeout=15000)
                await page.wait_for_function("document.getElementById('threshold').textContent !== '–'", timeout=15000)
                from websockets.asyncio.client import connect

                async with connect(f"ws://{base}/ingest?token={token}", compression=None) as ws:
                    for i in range(0, len(evs), 100):
                        await ws.send(dumps(evs[i:i + 100]), text=True)
                        await ws.recv()
                        await asyncio.sleep(0.02)  # a live-looking stream rather than one burst
                await page.wait_for_function(
                    "Number(document.getElementById('chart').dataset.points) > 100"
                    " && document.querySelectorAll('#anomaly-rows tr').length > 5", timeout=15000)
                await page.wait_for_timeout(600)  # one more redraw
                points = int(await page.eval_on_selector("#chart", "el => el.dataset.points"))
                rows = await page.eval_on_selector_all("#anomaly-rows tr", "rows => rows.length")
                first_row = await page.inner_text("#anomaly-rows tr")
                model = await page.inner_text("#model")
                canvas = await page.query_selector("#chart canvas")
                assert canvas is not None and not errors, errors
                ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
                await page.screenshot(path=str(ARTIFACT), full_page=True)
                return points, rows, first_row, model
            finally:
                await browser.close()

    points, rows, first_row, model = asyncio.run(main())
    assert points > 100 and rows > 5
    assert model == "default@1"
    assert any(sev in first_row for sev in ("low", "medium", "high", "critical")) and "%" in first_row
    assert ARTIFACT.stat().st_size > 10_000
