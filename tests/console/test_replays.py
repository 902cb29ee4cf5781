"""A replay's page: its progress, and cancel from the console (plain HTTP, no browser)."""

from __future__ import annotations

import re
from typing import Any

import aiohttp

from tests.console.conftest import OPERATOR_TOKEN, base, csrf_of, log_in
from tests.support import status, submit_n, wait_for


async def _status(engine: Any, did: str) -> str:
    async with engine.pool.connection() as conn:
        cur = await conn.execute("SELECT status FROM distribution_jobs WHERE distribution_id = %s", (did,))
        return (await cur.fetchone())[0]


async def test_a_planned_replay_shows_its_progress_and_is_cancelled_from_its_page(
        console_engine: Any, sink: Any, client: aiohttp.ClientSession) -> None:
    from ms07.ops import replay

    sink.on("/flaky", status(500))
    [dead] = await submit_n(console_engine, "flaky", 1)

    async def is_dead() -> bool:
        return await _status(console_engine, dead) == "dead"

    await wait_for(is_dead, what="the job dead")
    async with console_engine.pool.connection() as conn:  # planned, not run: it waits as "running"
        planned, _ = await replay.plan(conn, replay.parse_request({"destination": "flaky"}), "test")
    rid = planned["replay_id"]
    url = base(console_engine)
    await log_in(client, url, OPERATOR_TOKEN)
    async with client.get(f"{url}/console/replays") as resp:
        listing = await resp.text()
    assert rid in listing and "0/1" in listing
    async with client.get(f"{url}/console/replays/{rid}") as resp:
        page = await resp.text()
    assert re.search(r"data-replay-status>running<", page) and 'http-equiv="refresh"' in page
    assert 'id="cancel-replay"' in page
    async with client.post(f"{url}/console/replays/{rid}/cancel", data={"csrf": csrf_of(page)},
                           allow_redirects=False) as resp:
        assert resp.status == 303 and resp.headers["Location"] == f"/console/replays/{rid}"
    async with client.get(f"{url}/console/replays/{rid}") as resp:
        page = await resp.text()
    assert "data-replay-status>cancelled<" in page and 'id="cancel-replay"' not in page
    assert 'http-equiv="refresh"' not in page
    # Cancelling again is a clear 400-class page, not a 500.
    async with client.post(f"{url}/console/replays/{rid}/cancel", data={"csrf": csrf_of(page)}) as resp:
        assert resp.status == 400 and "nothing to cancel" in await resp.text()
    async with client.get(f"{url}/console/replays/nosuch") as resp:
        assert resp.status == 404
    assert await _status(console_engine, dead) == "dead"
