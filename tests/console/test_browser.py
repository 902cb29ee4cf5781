"""The console in a real headless Chromium (Debian's ``chromium``, driven by Playwright):
login, the overview against the API, search, a distribution, a replay from the DLQ page
delivered by the loopback sink, the read-only role, CSRF, an escaped ``<script>`` payload,
and a phone's width. Skipped, with the reason, when Chromium or Playwright is missing.

With ``MS07_CONSOLE_SCREENSHOTS=docs/console`` the run writes the screenshots the README
and docs/console.md show; otherwise they go to the test's temporary directory.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.console.conftest import OPERATOR_TOKEN, VIEWER_TOKEN, base
from tests.support import Sink, ok, status, submit_n, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"),
    pytest.mark.timeout(180),
]
SCRIPT_PAYLOAD = {"note": "<script>window.__pwned = 1</script>", "n": 1}


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    playwright = pytest.importorskip("playwright.async_api", reason="playwright is not installed (the test extra)")
    async with playwright.async_playwright() as p:
        # --no-sandbox: CI containers run as root, where Chromium's sandbox cannot start.
        chromium = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    target = Path(os.environ.get("MS07_CONSOLE_SCREENSHOTS") or tmp_path / "shots")
    target.mkdir(parents=True, exist_ok=True)
    return target


async def _page(browser: Any, width: int = 1280, height: int = 900, js: bool = True) -> tuple[Any, list[str]]:
    context = await browser.new_context(viewport={"width": width, "height": height}, java_script_enabled=js)
    page = await context.new_page()
    problems: list[str] = []
    # A CSP violation or a script error shows up on the console: none is allowed.
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    return page, problems


async def _login(page: Any, url: str, token: str) -> None:
    await page.goto(f"{url}/console/")
    assert "/console/login" in page.url
    await page.fill('input[name="token"]', token)
    await page.click('button[type="submit"]')
    await page.wait_for_load_state()
    assert page.url == f"{url}/console/", (page.url, await page.content())


async def _api(url: str, path: str) -> Any:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}) as s:
        async with s.get(f"{url}{path}") as resp:
            assert resp.status in (200, 503), await resp.text()
            return await resp.json()


async def _status_of(engine: Any, did: str) -> str:
    async with engine.pool.connection() as conn:
        cur = await conn.execute("SELECT status FROM distribution_jobs WHERE distribution_id = %s", (did,))
        row = await cur.fetchone()
    return row[0] if row else ""


async def test_an_operator_reads_the_overview_searches_and_opens_a_distribution(
        console_engine: Any, sink: Sink, browser: Any, shots: Path) -> None:
    url = base(console_engine)
    sink.on("/flaky", status(500, body='{"error": "upstream down"}'))
    delivered = await submit_n(console_engine, "hooks", 3)
    [scripted] = await submit_n(console_engine, "hooks", 1, payload=SCRIPT_PAYLOAD)
    [dead] = await submit_n(console_engine, "flaky", 1)
    for did, want in [*((d, "delivered") for d in [*delivered, scripted]), (dead, "dead")]:
        await wait_for(lambda d=did, w=want: _is(console_engine, d, w), what=f"{did} {want}")

    page, problems = await _page(browser)
    await _login(page, url, OPERATOR_TOKEN)
    # Live updates ran (the script is allowed by the CSP) and drew the chart.
    await page.wait_for_selector("body[data-updated]")
    await page.wait_for_selector("#chart canvas")
    health = await _api(url, "/health/detailed")
    found = await _api(url, "/api/v1/distributions?status=delivered&since=1h")
    assert await _field(page, "dlq_size") == str(health["dlq_size"]) == "1"
    assert await _field(page, "total_length") == str(sum(q["length"] for q in health["queues"].values()))
    assert await _field(page, "total_delayed") == str(sum(q["delayed"] for q in health["queues"].values()))
    assert await _field(page, "delivered") == str(len(found["distributions"])) == "4"
    assert await _field(page, "errors") == "1"
    for name, q in health["queues"].items():
        cell = page.locator(f'tr[data-queue="{name}"] [data-col="length"]')
        assert await cell.inner_text() == str(q["length"])
    await page.wait_for_selector("#verdict")
    # The verdict's DLQ finding links to the console's DLQ page.
    assert await page.locator('#verdict a[href="/console/dlq"]').count() == 1
    await page.screenshot(path=str(shots / "overview.png"), full_page=True)

    # Search by destination and time: the filters land in the URL, a link to paste.
    await page.click("nav >> text=Distributions")
    await page.select_option('select[name="destination"]', "hooks")
    await page.fill('input[name="since"]', "1h")
    await page.click('form.filters button[type="submit"]')
    await page.wait_for_url("**/console/distributions?destination=hooks*since=1h*")
    rows = page.locator("#results tbody tr")
    assert await rows.count() == 4
    assert dead[:8] not in await page.inner_text("#results")
    await page.screenshot(path=str(shots / "distributions.png"), full_page=True)
    pasted, _ = await _page(browser)  # the same link in another (logged-in) tab
    await pasted.context.add_cookies(await page.context.cookies())
    await pasted.goto(page.url)
    assert await pasted.locator("#results tbody tr").count() == 4

    # A distribution: every attempt, and a payload with <script> shown as text, not run.
    await page.click(f'a[href="/console/distributions/{scripted}"]')
    await page.wait_for_selector("#payload")
    assert "<script>window.__pwned = 1</script>" in await page.inner_text("#payload")
    assert await page.evaluate("window.__pwned") is None
    assert await page.locator("#payload script").count() == 0
    assert await page.locator("#attempts tbody tr").count() == 1
    await page.screenshot(path=str(shots / "distribution.png"), full_page=True)

    assert not problems, problems
    # A POST without the CSRF token is refused, even with the session cookie.
    refused = await page.evaluate(
        "fetch('/console/destinations/hooks/check', {method: 'POST'}).then(r => r.status)")
    assert refused == 403


async def test_a_dead_job_is_replayed_from_the_dlq_page_and_delivered(
        console_engine: Any, sink: Sink, browser: Any, shots: Path) -> None:
    url = base(console_engine)
    sink.on("/flaky", status(500))
    first, second = await submit_n(console_engine, "flaky", 2)
    await wait_for(lambda: _all(console_engine, [first, second], "dead"), what="both jobs dead")
    sink.on("/flaky", ok)  # the receiver is back

    page, problems = await _page(browser)
    await _login(page, url, OPERATOR_TOKEN)
    await page.click("nav >> text=DLQ")
    assert await page.locator("#parked tbody tr").count() == 2
    await page.screenshot(path=str(shots / "dlq.png"), full_page=True)
    await page.check(f'input[name="id"][value="{first}"]')
    await page.click("#replay-selected")
    assert "Replay 1 job(s)?" in await page.inner_text("h1")  # the count first
    assert await _status_of(console_engine, first) == "dead"  # nothing done yet
    await page.click("#confirm")
    await page.wait_for_selector('p.notice[role="status"]')
    await wait_for(lambda: _is(console_engine, first, "delivered"), what="the replayed job delivered")
    assert first in sink.keys("/flaky")  # the receiver got it, under its id
    assert await _status_of(console_engine, second) == "dead"

    # By filter: the dry run's count, then the run, its progress, done.
    await page.goto(f"{url}/console/dlq?destination=flaky")
    await page.click("#replay-filter")
    assert await page.inner_text("[data-matched]") == "1"
    await page.click("#run-replay")
    await page.wait_for_url("**/console/replays/*")
    await wait_for(lambda: _is(console_engine, second, "delivered"), what="the filter's job delivered")
    await page.reload()
    await page.wait_for_function("document.querySelector('[data-replay-status]').textContent === 'done'")
    await page.screenshot(path=str(shots / "replay.png"), full_page=True)

    # Destinations: the list, a destination's page, check now.
    await page.click("nav >> text=Destinations")
    row = page.locator('tr[data-destination="flaky"]')
    text = await row.inner_text()
    # Circuit, success rate of the hour (two 500s, two deliveries), the last error.
    assert "closed" in text and "50.0%" in text and "HTTP_5XX" in text
    assert "HTTP_5XX" not in await page.locator('tr[data-destination="hooks"]').inner_text()
    await page.screenshot(path=str(shots / "destinations.png"), full_page=True)
    await page.click('a[href="/console/destinations/flaky"]')
    await page.click("#check-now")
    await page.wait_for_selector("#probe")
    assert await page.locator("#recent tbody tr").count() == 4  # two 500s, two replays delivered
    await page.screenshot(path=str(shots / "destination.png"), full_page=True)
    assert not problems, problems


async def test_the_read_only_token_sees_no_action_and_is_refused_every_post(
        console_engine: Any, sink: Sink, browser: Any, shots: Path) -> None:
    url = base(console_engine)
    sink.on("/flaky", status(500))
    [dead] = await submit_n(console_engine, "flaky", 1)
    await wait_for(lambda: _is(console_engine, dead, "dead"), what="the job dead")

    page, problems = await _page(browser)
    await _login(page, url, VIEWER_TOKEN)
    assert "read-only" in await page.inner_text(".role")
    await page.goto(f"{url}/console/dlq")
    assert dead[:8] in await page.inner_text("#parked")
    for action in ('input[name="id"]', "#replay-selected", "#replay-filter"):
        assert await page.locator(action).count() == 0, action
    await page.goto(f"{url}/console/destinations/flaky")
    assert await page.locator("#check-now").count() == 0
    assert await page.locator("#pause").count() == 0 and await page.locator("#resume").count() == 0
    assert not problems, problems
    # Even with a valid CSRF token (the logout form's), every action is refused.
    for path, body in (("/console/dlq/replay", f"id={dead}&confirm=yes"), ("/console/destinations/flaky/check", ""),
                       ("/console/replays", "destination=flaky"), ("/console/destinations/flaky/pause", "")):
        code = await page.evaluate(
            """([path, body]) => fetch(path, {method: 'POST', headers: {'Content-Type':
                 'application/x-www-form-urlencoded'}, body: 'csrf=' + encodeURIComponent(
                 document.querySelector('input[name=csrf]').value) + '&' + body}).then(r => r.status)""",
            [path, body])
        assert code == 403, path
    assert await _status_of(console_engine, dead) == "dead"


async def test_everything_but_live_updates_works_with_javascript_off(
        console_engine: Any, sink: Sink, browser: Any) -> None:
    url = base(console_engine)
    sink.on("/flaky", status(500))
    [dead] = await submit_n(console_engine, "flaky", 1)
    await wait_for(lambda: _is(console_engine, dead, "dead"), what="the job dead")
    sink.on("/flaky", ok)
    page, problems = await _page(browser, js=False)
    await _login(page, url, OPERATOR_TOKEN)
    assert await _field(page, "dlq_size") == "1"  # rendered by the server, not the script
    await page.goto(f"{url}/console/dlq?destination=flaky")
    await page.check(f'input[name="id"][value="{dead}"]')
    await page.click("#replay-selected")
    await page.click("#confirm")
    await page.wait_for_selector('p.notice[role="status"]')
    await wait_for(lambda: _is(console_engine, dead, "delivered"), what="the job delivered")
    await page.goto(f"{url}/console/destinations/flaky")
    await page.click("#check-now")
    await page.wait_for_selector("#probe")
    assert not problems, problems


async def test_the_pages_fit_a_phone(console_engine: Any, browser: Any, shots: Path) -> None:
    url = base(console_engine)
    await submit_n(console_engine, "hooks", 2)
    page, problems = await _page(browser, 390, 844)
    await _login(page, url, OPERATOR_TOKEN)
    for path, shot in (("/console/", "overview-phone.png"), ("/console/distributions", None),
                       ("/console/dlq", None), ("/console/destinations", None)):
        await page.goto(f"{url}{path}")
        # Wide tables scroll inside their box; the page itself never scrolls sideways.
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390, path
        if shot:
            await page.wait_for_selector("body[data-updated]")
            await page.screenshot(path=str(shots / shot), full_page=True)
    assert not problems, problems


async def _field(page: Any, name: str) -> str:
    return (await page.locator(f'[data-field="{name}"]').first.inner_text()).strip()


async def _is(engine: Any, did: str, want: str) -> bool:
    return await _status_of(engine, did) == want


async def _all(engine: Any, ids: list[str], want: str) -> bool:
    return all([await _is(engine, d, want) for d in ids])


async def test_a_destination_is_paused_and_resumed_from_its_page(
        console_engine: Any, sink: Sink, browser: Any, shots: Path) -> None:
    """Pause: what is submitted meanwhile is held (status paused, nothing sent); resume:
    each held job is delivered once by the real sink."""
    url = base(console_engine)
    page, problems = await _page(browser)
    await _login(page, url, OPERATOR_TOKEN)
    await page.goto(f"{url}/console/destinations/hooks")
    await page.click("#pause")
    await page.wait_for_selector("#resume")
    assert "yes" in await page.locator("dt:text('paused') + dd").inner_text()

    async def paused_everywhere() -> bool:
        return "hooks" in console_engine.paused

    await wait_for(paused_everywhere, what="the engine hears of the pause")
    held = await submit_n(console_engine, "hooks", 3)
    await wait_for(lambda: _all(console_engine, held, "paused"), what="the jobs held")
    assert not [k for k in sink.keys("/in") if k in held]
    await page.screenshot(path=str(shots / "destination-paused.png"), full_page=True)
    await page.click("#resume")
    await page.wait_for_selector("#pause")
    await wait_for(lambda: _all(console_engine, held, "delivered"), what="the held jobs delivered")
    assert sorted(k for k in sink.keys("/in") if k in held) == sorted(held)
    assert not problems, problems
